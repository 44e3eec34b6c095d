#version 450
#extension GL_GOOGLE_include_directive : require
// kvk-variant: subgroup KVK_SUBGROUP
// softmax over the last axis: x, y [rows, C]; y = exp(x - max) / sum, or with
// LOG, y = x - max - log(sum). One workgroup per row (grid-stride),
// wg_max and wg_sum (wg_reduce.glsl) for the max and the sum. Bindings: 0 x, 1 y (written).
// Spec: 0 workgroup size WG (a power of two), 1 LOG.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint LOG = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, y_off;
  uint rows, C;
} pc;

#include "wg_reduce.glsl"

void main() {
  const uint lid = gl_LocalInvocationID.x;
  for (uint row = gl_WorkGroupID.x; row < pc.rows; row += gl_NumWorkGroups.x) {
    const uint xb = pc.x_off + row * pc.C, yb = pc.y_off + row * pc.C;
    float m = uintBitsToFloat(0xff800000u);   // -inf
    for (uint c = lid; c < pc.C; c += WG) m = max(m, x[xb + c]);
    m = wg_max(m);
    float s = 0.0;
    for (uint c = lid; c < pc.C; c += WG) s += exp(x[xb + c] - m);
    s = wg_sum(s);
    if (LOG != 0) {
      float lse = m + log(s);
      for (uint c = lid; c < pc.C; c += WG) y[yb + c] = x[xb + c] - lse;
    } else {
      float inv = 1.0 / s;
      for (uint c = lid; c < pc.C; c += WG) y[yb + c] = exp(x[xb + c] - m) * inv;
    }
  }
}
