#version 450
// GELU, elementwise over n elements; y may be the same bytes as x or dy.
//   APPROX 0 (exact):  gelu(x) = 0.5 x (1 + erf(x / sqrt(2)))
//                      gelu'(x) = 0.5 (1 + erf(x / sqrt(2))) + x exp(-x^2 / 2) / sqrt(2 pi)
//   APPROX 1 (tanh):   u = sqrt(2 / pi) (x + 0.044715 x^3), t = tanh(u)
//                      gelu(x) = 0.5 x (1 + t)
//                      gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2 / pi) (1 + 3 0.044715 x^2)
//   BACKWARD 0: y = gelu(x);  BACKWARD 1: y = dy * gelu'(x).
// GLSL has no erf: 1 + erf(v) is computed from erfc (Numerical Recipes'
// erfcc, a Chebyshev fit with relative error below 1.2e-7 everywhere):
// erfc(|v|) for v < 0 (so the small tail keeps its relative precision),
// 2 - erfc(v) otherwise. Likewise 1 + t, 1 - t and 1 - t^2 come from
// e = exp(-2 |u|) (1 + t = 2 / (1 + e) or 2 e / (1 + e), 1 - t^2 = 4 e / (1 + e)^2),
// not from t, which would cancel for large |u|.
// Bindings: 0 x, 1 dy (forward: x again, not read), 2 y (written).
// Spec: 0 workgroup size, 1 BACKWARD, 2 APPROX.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint BACKWARD = 0;
layout(constant_id = 2) const uint APPROX = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer DY { float dy[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, dy_off, y_off;
  uint n;
} pc;

// erfc(z) for z >= 0 (Numerical Recipes in C, 2nd ed., section 6.2, erfcc).
float erfc_pos(float z) {
  float t = 1.0 / (1.0 + 0.5 * z);
  float p = -0.82215223 + t * 0.17087277;
  p = 1.48851587 + t * p;
  p = -1.13520398 + t * p;
  p = 0.27886807 + t * p;
  p = -0.18628806 + t * p;
  p = 0.09678418 + t * p;
  p = 0.37409196 + t * p;
  p = 1.00002368 + t * p;
  return t * exp(-z * z - 1.26551223 + t * p);
}

// 1 + erf(v)
float one_plus_erf(float v) {
  return v < 0.0 ? erfc_pos(-v) : 2.0 - erfc_pos(v);
}


const float SQRT1_2 = 0.70710678118654752;
const float INV_SQRT_2PI = 0.39894228040143268;
const float SQRT_2_PI = 0.79788456080286536;   // sqrt(2 / pi)
const float K3 = 0.044715;

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    float v = x[pc.x_off + i], r;
    if (APPROX == 0) {
      float cdf2 = one_plus_erf(v * SQRT1_2);   // 2 Phi(v)
      if (BACKWARD == 0) r = 0.5 * v * cdf2;
      else r = dy[pc.dy_off + i] * (0.5 * cdf2 + v * exp(-0.5 * v * v) * INV_SQRT_2PI);
    } else {
      float u = SQRT_2_PI * (v + K3 * v * v * v);
      float e = exp(-2.0 * abs(u));   // never overflows
      float opt = (u < 0.0 ? 2.0 * e : 2.0) / (1.0 + e);   // 1 + tanh(u)
      if (BACKWARD == 0) r = 0.5 * v * opt;
      else {
        float sech2 = 4.0 * e / ((1.0 + e) * (1.0 + e));  // 1 - tanh(u)^2
        r = dy[pc.dy_off + i] *
            (0.5 * opt + 0.5 * v * sech2 * SQRT_2_PI * (1.0 + 3.0 * K3 * v * v));
      }
    }
    y[pc.y_off + i] = r;
  }
}
