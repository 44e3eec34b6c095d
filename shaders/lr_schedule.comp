#version 450
// Learning rate: linear warmup, then cosine decay (nanoGPT's get_lr).
// step [] (the 1-based step t, f32) -> lr []. With i = t - 1, W warmup steps
// and S decay steps (S >= W):
//   i < W:  lr = max_lr (i + 1) / (W + 1)
//   i > S:  lr = min_lr
//   else:   r = (i - W) / (S - W) (0 when S == W),
//           lr = min_lr + 0.5 (1 + cos(pi r)) (max_lr - min_lr)
// One thread. Bindings: 0 step, 1 lr (written).
layout(local_size_x = 1) in;
layout(set = 0, binding = 0) readonly buffer S { float step[]; };
layout(set = 0, binding = 1) writeonly buffer L { float lr[]; };
layout(push_constant, std430) uniform PC {
  uint s_off, l_off;
  float max_lr, min_lr;
  float W, S;       // warmup and decay steps, as floats (exact up to 2^24)
} pc;

const float PI = 3.14159265358979324;

void main() {
  float i = step[pc.s_off] - 1.0, r;
  if (i < pc.W) {
    r = pc.max_lr * (i + 1.0) / (pc.W + 1.0);
  } else if (i > pc.S) {
    r = pc.min_lr;
  } else {
    float f = pc.S > pc.W ? (i - pc.W) / (pc.S - pc.W) : 0.0;
    r = pc.min_lr + 0.5 * (1.0 + cos(PI * f)) * (pc.max_lr - pc.min_lr);
  }
  lr[pc.l_off] = r;
}
