#version 450
// 2-D pooling, NCHW, x [N, C, H, W], y [N, C, OH, OW], window KH x KW at
// stride (sh, sw), padding (ph, pw). One thread per output (forward) or per
// dx element (backward, a gather over the windows that contain it).
//   MODE 0 max:      y = max over the in-bounds window (padding ignored)
//   MODE 1 avg:      y = sum / (INCLUDE_PAD ? KH*KW : in-bounds count)
//   MODE 2 max bwd:  dx[h, w] = sum of dy over windows whose first maximum
//                    (row-major) is (h, w)
//   MODE 3 avg bwd:  dx[h, w] = sum of dy / divisor over windows holding (h, w)
// Bindings: 0 x (MODE 0..2; MODE 3: dy again, unused), 1 dy (MODE 2, 3; else
// x again), 2 y or dx (written). Spec: 0 workgroup size, 1 MODE.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint MODE = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer DY { float dy[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, dy_off, y_off;
  uint N, C, H, W, OH, OW, KH, KW;
  uint sh, sw, ph, pw;
  uint include_pad;
} pc;

// in-bounds rows [h0, h1) and columns [w0, w1) of window (oh, ow)
void window(uint oh, uint ow, out int h0, out int h1, out int w0, out int w1) {
  h0 = int(oh * pc.sh) - int(pc.ph);
  w0 = int(ow * pc.sw) - int(pc.pw);
  h1 = min(h0 + int(pc.KH), int(pc.H));
  w1 = min(w0 + int(pc.KW), int(pc.W));
  h0 = max(h0, 0);
  w0 = max(w0, 0);
}

float divisor(int h0, int h1, int w0, int w1) {
  return pc.include_pad != 0 ? float(pc.KH * pc.KW) : float((h1 - h0) * (w1 - w0));
}

// row-major index (h * W + w) of the first maximum of window (oh, ow) in plane
uint argmax(uint plane, uint oh, uint ow) {
  int h0, h1, w0, w1;
  window(oh, ow, h0, h1, w0, w1);
  float best = uintBitsToFloat(0xff800000u);
  uint at = uint(h0) * pc.W + uint(w0);
  for (int h = h0; h < h1; h++)
    for (int w = w0; w < w1; w++) {
      float v = x[pc.x_off + plane + uint(h) * pc.W + uint(w)];
      if (v > best) { best = v; at = uint(h) * pc.W + uint(w); }
    }
  return at;
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  if (MODE <= 1) {
    uint total = pc.N * pc.C * pc.OH * pc.OW;
    for (uint i = gl_GlobalInvocationID.x; i < total; i += stride) {
      uint ow = i % pc.OW, oh = (i / pc.OW) % pc.OH, nc = i / (pc.OW * pc.OH);
      uint plane = nc * pc.H * pc.W;
      int h0, h1, w0, w1;
      window(oh, ow, h0, h1, w0, w1);
      float r;
      if (MODE == 0) {
        r = x[pc.x_off + argmax(plane, oh, ow) + plane];
      } else {
        float s = 0.0;
        for (int h = h0; h < h1; h++)
          for (int w = w0; w < w1; w++) s += x[pc.x_off + plane + uint(h) * pc.W + uint(w)];
        r = s / divisor(h0, h1, w0, w1);
      }
      y[pc.y_off + i] = r;
    }
    return;
  }
  uint total = pc.N * pc.C * pc.H * pc.W;
  for (uint i = gl_GlobalInvocationID.x; i < total; i += stride) {
    uint w = i % pc.W, h = (i / pc.W) % pc.H, nc = i / (pc.W * pc.H);
    uint plane = nc * pc.H * pc.W;
    // windows oh with oh*sh - ph <= h < oh*sh - ph + KH
    int hi = int(h + pc.ph), wi = int(w + pc.pw);
    int oh0 = max(0, (hi - int(pc.KH)) / int(pc.sh) + (hi >= int(pc.KH) ? 1 : 0));
    int ow0 = max(0, (wi - int(pc.KW)) / int(pc.sw) + (wi >= int(pc.KW) ? 1 : 0));
    int oh1 = min(int(pc.OH) - 1, hi / int(pc.sh));
    int ow1 = min(int(pc.OW) - 1, wi / int(pc.sw));
    float s = 0.0;
    for (int oh = oh0; oh <= oh1; oh++)
      for (int ow = ow0; ow <= ow1; ow++) {
        int wh = oh * int(pc.sh) - int(pc.ph), ww = ow * int(pc.sw) - int(pc.pw);
        if (int(h) < wh || int(h) >= wh + int(pc.KH) || int(w) < ww || int(w) >= ww + int(pc.KW))
          continue;
        float g = dy[pc.dy_off + (nc * pc.OH + uint(oh)) * pc.OW + uint(ow)];
        if (MODE == 2) {
          if (argmax(plane, uint(oh), uint(ow)) == h * pc.W + w) s += g;
        } else {
          int h0, h1, w0, w1;
          window(uint(oh), uint(ow), h0, h1, w0, w1);
          s += g / divisor(h0, h1, w0, w1);
        }
      }
    y[pc.y_off + i] = s;
  }
}
