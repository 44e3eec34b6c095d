#version 450
// Layer norm over the last axis: x [rows, C], gamma [C], and
//   MODE 0 forward:  a = beta [C],  out = y [rows, C]
//                    y = (x - mean) * rstd * gamma + beta
//   MODE 1 backward: a = dy [rows, C], out = dx [rows, C]; with
//                    xhat = (x - mean) * rstd and g = dy * gamma,
//                    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// where mean and var (biased) are the row's, rstd = 1 / sqrt(var + eps).
// One workgroup per row (grid-stride); the row statistics come from
// shared-memory trees (two passes: mean, then the mean square deviation), no
// subgroup size assumed. Bindings: 0 x, 1 gamma, 2 a, 3 out (written).
// Spec: 0 workgroup size WG (a power of two), 1 MODE.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint MODE = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer G { float gamma[]; };
layout(set = 0, binding = 2) readonly buffer A { float a[]; };
layout(set = 0, binding = 3) writeonly buffer O { float o[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, g_off, a_off, o_off;
  uint rows, C;
  float eps;
} pc;

shared vec2 red[WG];

// The workgroup's sum of (v.x, v.y); every thread gets it. Uniform control flow.
vec2 wg_sum(vec2 v) {
  const uint lid = gl_LocalInvocationID.x;
  red[lid] = v;
  barrier();
  for (uint h = WG / 2; h > 0; h >>= 1) {
    if (lid < h) red[lid] += red[lid + h];
    barrier();
  }
  vec2 r = red[0];
  barrier();
  return r;
}

void main() {
  const uint lid = gl_LocalInvocationID.x, C = pc.C;
  for (uint row = gl_WorkGroupID.x; row < pc.rows; row += gl_NumWorkGroups.x) {
    const uint xb = pc.x_off + row * C, ab = pc.a_off + row * C, ob = pc.o_off + row * C;
    float s = 0.0;
    for (uint c = lid; c < C; c += WG) s += x[xb + c];
    const float mean = wg_sum(vec2(s, 0.0)).x / float(C);
    s = 0.0;
    for (uint c = lid; c < C; c += WG) {
      float d = x[xb + c] - mean;
      s += d * d;
    }
    const float rstd = 1.0 / sqrt(wg_sum(vec2(s, 0.0)).x / float(C) + pc.eps);
    if (MODE == 0) {
      for (uint c = lid; c < C; c += WG)
        o[ob + c] = (x[xb + c] - mean) * rstd * gamma[pc.g_off + c] + a[pc.a_off + c];
    } else {
      vec2 t = vec2(0.0);
      for (uint c = lid; c < C; c += WG) {
        float g = a[ab + c] * gamma[pc.g_off + c];
        t += vec2(g, g * (x[xb + c] - mean) * rstd);
      }
      t = wg_sum(t) / float(C);   // (mean(g), mean(g * xhat))
      for (uint c = lid; c < C; c += WG) {
        float g = a[ab + c] * gamma[pc.g_off + c];
        float xhat = (x[xb + c] - mean) * rstd;
        o[ob + c] = rstd * (g - t.x - xhat * t.y);
      }
    }
  }
}
