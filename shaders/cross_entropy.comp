#version 450
#extension GL_GOOGLE_include_directive : require
// kvk-variant: subgroup KVK_SUBGROUP
// cross_entropy: loss [] = mean over the N rows of logsumexp(x[row]) -
// x[row, label[row]], with x [N, C] and labels [N] (i32). A label outside
// [0, C) adds nothing but still counts in N; N = 0 gives NaN.
// ONE workgroup walks the rows in order (a fixed summation order, so the
// result is deterministic); per row, wg_max and wg_sum (wg_reduce.glsl).
// Bindings: 0 x, 1 labels, 2 loss (written). Spec: 0 WG (a power of two).
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer L { int labels[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float loss[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, l_off, y_off;
  uint N, C;
} pc;

#include "wg_reduce.glsl"

void main() {
  const uint lid = gl_LocalInvocationID.x;
  float total = 0.0;   // meaningful in thread 0
  for (uint row = 0; row < pc.N; row++) {
    int label = labels[pc.l_off + row];
    if (label < 0 || uint(label) >= pc.C) continue;   // uniform across the workgroup
    const uint xb = pc.x_off + row * pc.C;
    float m = uintBitsToFloat(0xff800000u);
    for (uint c = lid; c < pc.C; c += WG) m = max(m, x[xb + c]);
    m = wg_max(m);
    float s = 0.0;
    for (uint c = lid; c < pc.C; c += WG) s += exp(x[xb + c] - m);
    s = wg_sum(s);
    if (lid == 0) total += m + log(s) - x[xb + uint(label)];
  }
  if (lid == 0) loss[pc.y_off] = pc.N == 0 ? uintBitsToFloat(0x7fc00000u) : total / float(pc.N);
}
