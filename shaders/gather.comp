#version 450
// gather: y[shape] = x at per-axis element strides, for TRANSPOSE (x's
// strides permuted) and EXPAND (stride 0 on broadcast axes).
// Bindings: 0 x, 1 y (written). Spec: 0 workgroup size.
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, y_off;
  uint n;          // elements of y
  uint ndim;       // rank of y
  uint shape[8];   // y's shape
  uint sx[8];      // x's element stride for each axis of y
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
    y[pc.y_off + i] = x[pc.x_off + ix];
  }
}
