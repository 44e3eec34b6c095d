#version 450
// Layer norm backward, parameter gradients, first pass: dy, x [rows, C] ->
// part [chunks, 2, C], chunk k covering rows [k R, min((k + 1) R, rows)):
//   part[k, 0, c] = sum over its rows of dy * xhat   (dgamma's share)
//   part[k, 1, c] = sum over its rows of dy          (dbeta's share)
// with xhat = (x - mean) * rstd, the row statistics computed exactly as
// layernorm.comp does. With one chunk, part is the [2, C] result; otherwise
// reduce.comp adds the chunks in order (deterministic: no atomics).
// One workgroup per chunk (grid-stride): first the R rows' statistics into
// shared memory (a tree per row), then each thread sums its columns over the
// rows in order. Bindings: 0 dy, 1 x, 2 part (written).
// Spec: 0 workgroup size WG (a power of two), 1 R rows per chunk.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint R = 32;
layout(set = 0, binding = 0) readonly buffer DY { float dy[]; };
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 2) writeonly buffer P { float part[]; };
layout(push_constant, std430) uniform PC {
  uint dy_off, x_off, p_off;
  uint rows, C, chunks;
  float eps;
} pc;

shared float red[WG];
shared float mean_s[R];
shared float rstd_s[R];

float wg_sum(float v) {
  const uint lid = gl_LocalInvocationID.x;
  red[lid] = v;
  barrier();
  for (uint h = WG / 2; h > 0; h >>= 1) {
    if (lid < h) red[lid] += red[lid + h];
    barrier();
  }
  float r = red[0];
  barrier();
  return r;
}

void main() {
  const uint lid = gl_LocalInvocationID.x, C = pc.C;
  for (uint k = gl_WorkGroupID.x; k < pc.chunks; k += gl_NumWorkGroups.x) {
    const uint r0 = k * R, nr = min(R, pc.rows - r0);
    for (uint r = 0; r < nr; r++) {
      const uint xb = pc.x_off + (r0 + r) * C;
      float s = 0.0;
      for (uint c = lid; c < C; c += WG) s += x[xb + c];
      const float mean = wg_sum(s) / float(C);
      s = 0.0;
      for (uint c = lid; c < C; c += WG) {
        float d = x[xb + c] - mean;
        s += d * d;
      }
      const float rstd = 1.0 / sqrt(wg_sum(s) / float(C) + pc.eps);
      if (lid == 0) {
        mean_s[r] = mean;
        rstd_s[r] = rstd;
      }
    }
    barrier();
    for (uint c = lid; c < C; c += WG) {
      float sg = 0.0, sb = 0.0;
      for (uint r = 0; r < nr; r++) {
        float g = dy[pc.dy_off + (r0 + r) * C + c];
        sg += g * (x[pc.x_off + (r0 + r) * C + c] - mean_s[r]) * rstd_s[r];
        sb += g;
      }
      part[pc.p_off + k * 2 * C + c] = sg;
      part[pc.p_off + k * 2 * C + C + c] = sb;
    }
    barrier();
  }
}
