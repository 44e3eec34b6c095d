#version 450
// adam, in place on p, m, v [n], with g [n], step [] (the 1-based t) and an
// optional lr [] (HAS_LR; else pc.lr):
//   DECOUPLED: p -= lr * wd * p   else: g += wd * p
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Bindings: 0 p, 1 g, 2 m, 3 v, 4 step, 5 lr (step again when absent).
// Spec: 0 workgroup size, 1 HAS_LR, 2 DECOUPLED.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HAS_LR = 0;
layout(constant_id = 2) const uint DECOUPLED = 0;
layout(set = 0, binding = 0) buffer P { float p[]; };
layout(set = 0, binding = 1) readonly buffer G { float grad[]; };
layout(set = 0, binding = 2) buffer M { float m[]; };
layout(set = 0, binding = 3) buffer V { float v[]; };
layout(set = 0, binding = 4) readonly buffer S { float step[]; };
layout(set = 0, binding = 5) readonly buffer LR { float lr_in[]; };
layout(push_constant, std430) uniform PC {
  uint p_off, g_off, m_off, v_off, s_off, lr_off;
  uint n;
  float lr, b1, b2, eps, wd;
} pc;

void main() {
  const float t = step[pc.s_off];
  const float lr = HAS_LR != 0 ? lr_in[pc.lr_off] : pc.lr;
  const float bc1 = 1.0 - pow(pc.b1, t), bc2 = 1.0 - pow(pc.b2, t);
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    float pi = p[pc.p_off + i], g = grad[pc.g_off + i];
    if (DECOUPLED != 0) pi -= lr * pc.wd * pi;
    else g += pc.wd * pi;
    float mi = pc.b1 * m[pc.m_off + i] + (1.0 - pc.b1) * g;
    float vi = pc.b2 * v[pc.v_off + i] + (1.0 - pc.b2) * g * g;
    m[pc.m_off + i] = mi;
    v[pc.v_off + i] = vi;
    p[pc.p_off + i] = pi - lr * (mi / bc1) / (sqrt(vi / bc2) + pc.eps);
  }
}
