#version 450
// unary: y[n] = f(x[n]) elementwise; x and y may be the same bytes.
// Bindings: 0 x, 1 y (written). Spec: 0 workgroup size, 1 OP:
//   0 copy, 1 neg, 2 relu, 3 tanh, 4 sigmoid, 5 exp, 6 log, 7 scale (a*x + b),
//   8 clip_coef: min(1, a / (sqrt(x) + b)), NaN kept (a: max norm, b: eps)
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint OP = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, y_off;
  uint n;
  float a, b;     // scale parameters
} pc;

float stable_tanh(float v) {
  // exp of -2|v| never overflows; tanh(v) = sign(v) (1 - e) / (1 + e)
  float e = exp(-2.0 * abs(v));
  float t = (1.0 - e) / (1.0 + e);
  return v < 0.0 ? -t : t;
}

float stable_sigmoid(float v) {
  if (v >= 0.0) return 1.0 / (1.0 + exp(-v));
  float e = exp(v);
  return e / (1.0 + e);
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    float v = x[pc.x_off + i], r;
    if (OP == 0) r = v;
    else if (OP == 1) r = -v;
    else if (OP == 2) r = v > 0.0 ? v : 0.0;
    else if (OP == 3) r = stable_tanh(v);
    else if (OP == 4) r = stable_sigmoid(v);
    else if (OP == 5) r = exp(v);
    else if (OP == 6) r = log(v);
    else if (OP == 7) r = pc.a * v + pc.b;
    else {
      float c = pc.a / (sqrt(v) + pc.b);
      r = (c < 1.0 || isnan(c)) ? c : 1.0;
    }
    y[pc.y_off + i] = r;
  }
}
