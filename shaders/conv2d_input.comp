#version 450
// conv2d backward input, NCHW: one thread per dx element (grid-stride),
//   dx[n, c, h, w] = sum over o in c's group, kh, kw of
//                    dy[n, o, oh, ow] * w[o, c - g*C/G, kh, kw]
// where oh = (h + ph - kh*dh) / sh when that divides exactly and lies in
// [0, OH) (ow likewise): the transpose of the forward gather, so no atomics.
// Bindings: 0 dy, 1 w, 2 dx (written). Spec: 0 workgroup size.
layout(local_size_x_id = 0) in;
layout(set = 0, binding = 0) readonly buffer DY { float dy[]; };
layout(set = 0, binding = 1) readonly buffer Wt { float wt[]; };
layout(set = 0, binding = 2) writeonly buffer DX { float dx[]; };
layout(push_constant, std430) uniform PC {
  uint dy_off, w_off, dx_off;
  uint N, C, H, W, O, OH, OW, KH, KW;
  uint sh, sw, ph, pw, dh, dw, G;
} pc;

void main() {
  const uint total = pc.N * pc.C * pc.H * pc.W;
  const uint Cg = pc.C / pc.G, Og = pc.O / pc.G;
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < total; i += stride) {
    uint w = i % pc.W, h = (i / pc.W) % pc.H, c = (i / (pc.W * pc.H)) % pc.C;
    uint n = i / (pc.W * pc.H * pc.C);
    uint g = c / Cg, cl = c % Cg;
    float s = 0.0;
    for (uint kh = 0; kh < pc.KH; kh++) {
      int th = int(h + pc.ph) - int(kh * pc.dh);
      if (th < 0 || th % int(pc.sh) != 0) continue;
      uint oh = uint(th) / pc.sh;
      if (oh >= pc.OH) continue;
      for (uint kw = 0; kw < pc.KW; kw++) {
        int tw = int(w + pc.pw) - int(kw * pc.dw);
        if (tw < 0 || tw % int(pc.sw) != 0) continue;
        uint ow = uint(tw) / pc.sw;
        if (ow >= pc.OW) continue;
        for (uint m = 0; m < Og; m++) {
          uint o = g * Og + m;
          s += dy[pc.dy_off + ((n * pc.O + o) * pc.OH + oh) * pc.OW + ow] *
               wt[pc.w_off + ((o * Cg + cl) * pc.KH + kh) * pc.KW + kw];
        }
      }
    }
    dx[pc.dx_off + i] = s;
  }
}
