#version 450
// fill: y[n] = value for every element.
// Bindings: 0 y (written). Spec: 0 workgroup size.
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint y_off;     // element offset of y in its binding
  uint n;         // elements
  float value;
} pc;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) y[pc.y_off + i] = pc.value;
}
