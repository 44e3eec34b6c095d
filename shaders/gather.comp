#version 450
// gather: y[i] = x[base + sum_d idx_d(i) * s[d]] over y's shape, for
// TRANSPOSE (x's strides permuted), EXPAND (stride 0 on broadcast axes) and
// SLICE (x's strides, base = start * stride of the axis).
// With SCATTER: y[base + sum_d idx_d(i) * s[d]] = x[i] over x's shape, for
// SLICE_BACKWARD (writing dy into its window of dx).
// Bindings: 0 x, 1 y (written). Spec: 0 workgroup size, 1 SCATTER.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint SCATTER = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, y_off;
  uint n;          // elements of y (SCATTER: of x)
  uint ndim;       // rank of that shape
  uint base;       // element offset added to the strided side
  uint shape[8];   // y's shape (SCATTER: x's)
  uint sx[8];      // the strided side's element stride for each axis
} pc;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    uint ix = 0, rest = i;
    for (int d = int(pc.ndim) - 1; d >= 0; d--) {
      uint c = rest % pc.shape[d];
      rest /= pc.shape[d];
      ix += c * pc.sx[d];
    }
    if (SCATTER != 0)
      y[pc.y_off + pc.base + ix] = x[pc.x_off + i];
    else
      y[pc.y_off + i] = x[pc.x_off + pc.base + ix];
  }
}
