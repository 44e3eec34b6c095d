#version 450
// cast: y[n] = a * float(x[n]) + b, x u8, i32 or f32, y f32 (KILN_OP_CAST).
// Bindings: 0 x, read as 32-bit words whatever its dtype (u8 elements are
// four to a word, little-endian, so no 8-bit storage feature is needed; the
// host binds x's range rounded up to whole words), 1 y (written).
// Spec: 0 workgroup size, 1 DT: 0 f32, 1 i32, 2 u8.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint DT = 0;
layout(set = 0, binding = 0) readonly buffer X { uint x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, y_off;   // in 32-bit words
  uint n;
  float a, b;
} pc;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    float v;
    if (DT == 2u) v = float((x[pc.x_off + (i >> 2)] >> ((i & 3u) * 8u)) & 0xffu);
    else if (DT == 1u) v = float(int(x[pc.x_off + i]));
    else v = uintBitsToFloat(x[pc.x_off + i]);
    y[pc.y_off + i] = pc.a * v + pc.b;
  }
}
