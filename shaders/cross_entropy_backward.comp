#version 450
#extension GL_GOOGLE_include_directive : require
// kvk-variant: subgroup KVK_SUBGROUP
// cross_entropy backward: dx [N, C] = dloss * (softmax(x) - onehot(label)) / N
// with dloss [], x [N, C], labels [N] (i32); rows with a label outside
// [0, C) get zeros. One workgroup per row (grid-stride), wg_max
// and wg_sum (wg_reduce.glsl). Bindings: 0 dloss, 1 x, 2 labels, 3 dx (written).
// Spec: 0 WG (a power of two).
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(set = 0, binding = 0) readonly buffer DL { float dloss[]; };
layout(set = 0, binding = 1) readonly buffer X { float x[]; };
layout(set = 0, binding = 2) readonly buffer L { int labels[]; };
layout(set = 0, binding = 3) writeonly buffer DX { float dx[]; };
layout(push_constant, std430) uniform PC {
  uint dl_off, x_off, l_off, dx_off;
  uint N, C;
} pc;

#include "wg_reduce.glsl"

void main() {
  const uint lid = gl_LocalInvocationID.x;
  const float g = dloss[pc.dl_off] / float(pc.N);
  for (uint row = gl_WorkGroupID.x; row < pc.N; row += gl_NumWorkGroups.x) {
    const uint xb = pc.x_off + row * pc.C, db = pc.dx_off + row * pc.C;
    int label = labels[pc.l_off + row];
    if (label < 0 || uint(label) >= pc.C) {
      for (uint c = lid; c < pc.C; c += WG) dx[db + c] = 0.0;
      continue;
    }
    float m = uintBitsToFloat(0xff800000u);
    for (uint c = lid; c < pc.C; c += WG) m = max(m, x[xb + c]);
    m = wg_max(m);
    float s = 0.0;
    for (uint c = lid; c < pc.C; c += WG) s += exp(x[xb + c] - m);
    s = wg_sum(s);
    float inv = 1.0 / s;
    for (uint c = lid; c < pc.C; c += WG)
      dx[db + c] = g * (exp(x[xb + c] - m) * inv - (c == uint(label) ? 1.0 : 0.0));
  }
}
