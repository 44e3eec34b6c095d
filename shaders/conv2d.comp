#version 450
#extension GL_EXT_control_flow_attributes : require
// conv2d as an implicit GEMM, NCHW, per group g (workgroup z):
//   MODE 0 (forward):         y[n, o, p]  = bias[o] + sum_k w[o, k] * col[k, (n, p)]
//                             M = O/G, columns = N*OH*OW, depth = C/G*KH*KW
//   MODE 1 (backward weight): dw[o, k]    = sum_(n, p) dy[n, o, p] * col[k, (n, p)]
//                             M = O/G, columns = C/G*KH*KW, depth = N*OH*OW
// where k = (c', kh, kw), p = (oh, ow) and col[k, (n, p)] =
// x[n, g*C/G + c', oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] (0 in the padding),
// gathered on the fly (no im2col buffer). MODE 1's depth is long and its
// output small, so it is split (split-K): workgroup z = g * splits + s sums
// depth [s*chunk, (s+1)*chunk) into partial s of y [splits, O, C/G*KH*KW],
// which a reduce.comp dispatch then adds up. Tiling as in matmul.comp: a
// workgroup of WX x WY threads computes a BM x BN tile, BK deep, TM x TN
// results per thread. Bindings: 0 x, 1 w (MODE 0) or dy (MODE 1),
// 2 bias (HAS_BIAS; else binding 1 again, unused), 3 y or dw (written).
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 2) const uint BM = 32;
layout(constant_id = 3) const uint BN = 32;
layout(constant_id = 4) const uint BK = 16;
layout(constant_id = 5) const uint TM = 2;
layout(constant_id = 6) const uint TN = 2;
layout(constant_id = 7) const uint MODE = 0;
layout(constant_id = 8) const uint HAS_BIAS = 0;
layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) readonly buffer Wt { float wt[]; };
layout(set = 0, binding = 2) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = 3) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint x_off, w_off, b_off, y_off;
  uint N, C, H, W, O, OH, OW, KH, KW;
  uint sh, sw, ph, pw, dh, dw, G;
  uint splits, chunk;   // split-K: partials and depth per partial (a multiple of BK)
} pc;

shared float As[BK * BM];
shared float Bs[BK * BN];

// col[k, j] of group g
float col(uint g, uint k, uint j) {
  uint KK = pc.KH * pc.KW, P = pc.OH * pc.OW;
  uint c = k / KK, r = k % KK, kh = r / pc.KW, kw = r % pc.KW;
  uint n = j / P, p = j % P, oh = p / pc.OW, ow = p % pc.OW;
  int h = int(oh * pc.sh + kh * pc.dh) - int(pc.ph);
  int w = int(ow * pc.sw + kw * pc.dw) - int(pc.pw);
  if (h < 0 || w < 0 || h >= int(pc.H) || w >= int(pc.W)) return 0.0;
  uint cg = pc.C / pc.G;
  return x[pc.x_off + ((n * pc.C + g * cg + c) * pc.H + uint(h)) * pc.W + uint(w)];
}

void main() {
  const uint WX = gl_WorkGroupSize.x, WY = gl_WorkGroupSize.y;
  const uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
  const uint tid = ty * WX + tx, nthreads = WX * WY;
  const uint Og = pc.O / pc.G, Kk = (pc.C / pc.G) * pc.KH * pc.KW, P = pc.OH * pc.OW;
  const uint M = Og;
  const uint NC = MODE == 0 ? pc.N * P : Kk;     // GEMM columns
  const uint KD = MODE == 0 ? Kk : pc.N * P;     // GEMM depth
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;

  for (uint z = gl_WorkGroupID.z; z < pc.G * pc.splits; z += gl_NumWorkGroups.z) {
    const uint g = z / pc.splits, split = z % pc.splits;
    const uint kb = split * pc.chunk, ke = min(KD, kb + pc.chunk);
    float acc[TM * TN];
    [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;
    for (uint k0 = kb; k0 < ke; k0 += BK) {
      for (uint e = tid; e < BM * BK; e += nthreads) {
        uint m = e / BK, k = e % BK;
        uint gm = m0 + m, gk = k0 + k;
        float v = 0.0;
        if (gm < M && gk < ke) {
          if (MODE == 0) {
            v = wt[pc.w_off + (g * Og + gm) * Kk + gk];
          } else {
            uint n = gk / P, p = gk % P;
            v = wt[pc.w_off + (n * pc.O + g * Og + gm) * P + p];
          }
        }
        As[k * BM + m] = v;
      }
      for (uint e = tid; e < BN * BK; e += nthreads) {
        uint n, k;
        if (MODE == 0) { n = e % BN; k = e / BN; } else { k = e % BK; n = e / BK; }
        uint gn = n0 + n, gk = k0 + k;
        float v = 0.0;
        if (gn < NC && gk < ke) v = MODE == 0 ? col(g, gk, gn) : col(g, gn, gk);
        Bs[k * BN + n] = v;
      }
      barrier();
      [[unroll]] for (uint k = 0; k < BK; k++) {
        float ar[TM], br[TN];
        [[unroll]] for (uint i = 0; i < TM; i++) ar[i] = As[k * BM + ty + i * WY];
        [[unroll]] for (uint j = 0; j < TN; j++) br[j] = Bs[k * BN + tx + j * WX];
        [[unroll]] for (uint i = 0; i < TM; i++)
          [[unroll]] for (uint j = 0; j < TN; j++) acc[i * TN + j] = fma(ar[i], br[j], acc[i * TN + j]);
      }
      barrier();
    }
    [[unroll]] for (uint i = 0; i < TM; i++) {
      uint gm = m0 + ty + i * WY;
      if (gm >= M) continue;
      uint o = g * Og + gm;
      [[unroll]] for (uint j = 0; j < TN; j++) {
        uint gn = n0 + tx + j * WX;
        if (gn >= NC) continue;
        if (MODE == 0) {
          uint n = gn / P, p = gn % P;
          y[pc.y_off + (n * pc.O + o) * P + p] =
              acc[i * TN + j] + (HAS_BIAS != 0 ? bias[pc.b_off + o] : 0.0);
        } else {
          y[pc.y_off + (split * pc.O + o) * Kk + gn] = acc[i * TN + j];
        }
      }
    }
  }
}
