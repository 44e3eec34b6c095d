#version 450
// sgd, in place on p, g, v [n] (torch.optim.SGD):
//   g' = g + wd * p; with momentum (HAS_V): v = momentum * v + (1 - dampening) * g',
//   g' = nesterov ? g' + momentum * v : v;  then p -= lr * g'.
// Bindings: 0 p (written), 1 g, 2 v (written when HAS_V; else p bound again,
// unused). Spec: 0 workgroup size, 1 HAS_V, 2 NESTEROV.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint HAS_V = 0;
layout(constant_id = 2) const uint NESTEROV = 0;
layout(set = 0, binding = 0) buffer P { float p[]; };
layout(set = 0, binding = 1) readonly buffer G { float grad[]; };
layout(set = 0, binding = 2) buffer V { float vel[]; };
layout(push_constant, std430) uniform PC {
  uint p_off, g_off, v_off;
  uint n;
  float lr, momentum, wd, dampening;
} pc;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    float pi = p[pc.p_off + i];
    float g = grad[pc.g_off + i] + pc.wd * pi;
    if (HAS_V != 0) {
      float v = pc.momentum * vel[pc.v_off + i] + (1.0 - pc.dampening) * g;
      vel[pc.v_off + i] = v;
      g = NESTEROV != 0 ? g + pc.momentum * v : v;
    }
    p[pc.p_off + i] = pi - pc.lr * g;
  }
}
