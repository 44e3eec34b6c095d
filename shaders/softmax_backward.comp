#version 450
#extension GL_GOOGLE_include_directive : require
// kvk-variant: subgroup KVK_SUBGROUP
// softmax backward over the last axis: dy, y, dx [rows, C].
//   softmax:      dx = y * (dy - sum(dy * y))
//   log_softmax:  dx = dy - exp(y) * sum(dy)          (LOG = 1)
// One workgroup per row (grid-stride), wg_sum (wg_reduce.glsl) for the sum.
// Bindings: 0 dy, 1 y, 2 dx (written). Spec: 0 WG (a power of two), 1 LOG.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(constant_id = 1) const uint LOG = 0;
layout(set = 0, binding = 0) readonly buffer DY { float dy[]; };
layout(set = 0, binding = 1) readonly buffer Yb { float y[]; };
layout(set = 0, binding = 2) writeonly buffer DX { float dx[]; };
layout(push_constant, std430) uniform PC {
  uint dy_off, y_off, dx_off;
  uint rows, C;
} pc;

#include "wg_reduce.glsl"

void main() {
  const uint lid = gl_LocalInvocationID.x;
  for (uint row = gl_WorkGroupID.x; row < pc.rows; row += gl_NumWorkGroups.x) {
    const uint r = row * pc.C;
    float s = 0.0;
    for (uint c = lid; c < pc.C; c += WG)
      s += LOG != 0 ? dy[pc.dy_off + r + c] : dy[pc.dy_off + r + c] * y[pc.y_off + r + c];
    s = wg_sum(s);
    for (uint c = lid; c < pc.C; c += WG) {
      float g = dy[pc.dy_off + r + c], v = y[pc.y_off + r + c];
      dx[pc.dx_off + r + c] = LOG != 0 ? g - exp(v) * s : v * (g - s);
    }
  }
}
