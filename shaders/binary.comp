#version 450
// binary: y[shape] = f(a, b) with NumPy broadcasting. a and b are read
// through per-axis element strides of y's shape (0 where they broadcast).
// Bindings: 0 a, 1 b, 2 y (written). Spec: 0 workgroup size, 1 OP:
//   0 add, 1 sub, 2 mul, 3 div, 4 relu_backward (a=dy, b=x),
//   5 tanh_backward (a=dy, b=y), 6 sigmoid_backward (a=dy, b=y);
//   2 BCAST: 0 when a, b and y have the same shape (strides unused).
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint OP = 0;
layout(constant_id = 2) const uint BCAST = 1;
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint a_off, b_off, y_off;
  uint n;          // elements of y
  uint ndim;       // rank of y
  uint shape[8];   // y's shape
  uint sa[8];      // a's element stride for each axis of y
  uint sb[8];
} pc;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    uint ia = i, ib = i;
    if (BCAST != 0) {
      ia = 0;
      ib = 0;
      uint rest = i;
      for (int d = int(pc.ndim) - 1; d >= 0; d--) {
        uint c = rest % pc.shape[d];
        rest /= pc.shape[d];
        ia += c * pc.sa[d];
        ib += c * pc.sb[d];
      }
    }
    float u = a[pc.a_off + ia], v = b[pc.b_off + ib], r;
    if (OP == 0) r = u + v;
    else if (OP == 1) r = u - v;
    else if (OP == 2) r = u * v;
    else if (OP == 3) r = u / v;
    else if (OP == 4) r = v > 0.0 ? u : 0.0;
    else if (OP == 5) r = u * (1.0 - v * v);
    else r = u * v * (1.0 - v);
    y[pc.y_off + i] = r;
  }
}
