#version 450
#extension GL_GOOGLE_include_directive : require
// kvk-variant: subgroup KVK_SUBGROUP
// reduce: y[outputs] = scale * sum of x over the reduced axes (SUM: scale 1,
// MEAN: 1 / count). x's axes are listed kept first (dims[0, nk), in order)
// then reduced (dims[nk, nd)), each with its element stride in x.
// One workgroup per output element (grid-stride); each thread sums a strided
// share of the R reduced elements, then wg_sum adds the partials
// (wg_reduce.glsl: subgroup operations in the _subgroup variant, a
// shared-memory tree otherwise). Bindings: 0 x, 1 y (written).
// Spec: 0 workgroup size WG (a power of two).
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 256;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, y_off;
  uint n_out;      // output elements
  uint R;          // reduced elements per output
  uint nk, nd;     // kept axes, all axes
  float scale;
  uint dims[8];
  uint strides[8];
} pc;

#include "wg_reduce.glsl"

void main() {
  const uint lid = gl_LocalInvocationID.x;
  for (uint o = gl_WorkGroupID.x; o < pc.n_out; o += gl_NumWorkGroups.x) {
    uint base = pc.x_off, rest = o;
    for (int d = int(pc.nk) - 1; d >= 0; d--) {
      base += (rest % pc.dims[d]) * pc.strides[d];
      rest /= pc.dims[d];
    }
    float s = 0.0;
    for (uint r = lid; r < pc.R; r += WG) {
      uint off = 0, rr = r;
      for (int d = int(pc.nd) - 1; d >= int(pc.nk); d--) {
        off += (rr % pc.dims[d]) * pc.strides[d];
        rr /= pc.dims[d];
      }
      s += x[base + off];
    }
    s = wg_sum(s);
    if (lid == 0) y[pc.y_off + o] = s * pc.scale;
  }
}
