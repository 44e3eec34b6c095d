#version 450
#extension GL_EXT_control_flow_attributes : require
// conv2d and its two gradients as implicit GEMMs, NCHW, per group g:
//   MODE 0 (forward):         y[n, o, p]   = bias[o] + sum_k w[o, k] * col[k, (n, p)]
//                             rows O/G, columns N*OH*OW, depth C/G*KH*KW
//   MODE 1 (backward weight): dw[o, k]     = sum_(n, p) dy[n, o, p] * col[k, (n, p)]
//                             rows O/G, columns C/G*KH*KW, depth N*OH*OW
//   MODE 2 (backward input):  dx[n, c, q]  = sum_(o, r) w[o, c, r] * dcol[(o, r), (n, q)]
//                             rows C/G, columns N*H*W, depth O/G*KH*KW
// where k = (c', kh, kw), r = (kh, kw), p = (oh, ow), q = (h, w) and
//   col[k, (n, p)]  = x[n, g*C/G + c', oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]
//   dcol[(o, r), (n, q)] = dy[n, g*O/G + o, oh, ow] with oh = (h + ph - kh*dh) / sh
//                     where that divides exactly and lies in [0, OH) (ow alike),
// both 0 outside: gathered on the fly (no im2col buffer, no atomics).
// MODE 1's depth is long and its output small, so it is split (split-K):
// workgroup z = g * splits + s sums depth [s*chunk, (s+1)*chunk) into
// partial s of y [splits, O, C/G*KH*KW], which a reduce.comp dispatch then
// adds up. Tiling as in matmul.comp: a workgroup of WX x WY threads computes
// a BM x BN tile, BK deep, TM x TN results per thread. When the workgroup
// has a multiple of BN threads (MODE 0 and 2), each thread loads one fixed
// column of every B tile, so that column's index math is done once; the
// depth index (a kernel tap) is split by udiv(), exact below 2^24 taps
// (ops_conv.c refuses more).
// Bindings: 0 x (MODE 2: dy), 1 w (MODE 1: dy), 2 bias (HAS_BIAS; else
// binding 1 again, unused), 3 y, dw or dx (written).
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

// a / b for a < 2^24 without an integer division (which CPU drivers run
// lane by lane): the float quotient is within 1 of the true one, corrected.
uint udiv(uint a, uint b, float inv) {
  uint q = uint(float(a) * inv);
  if (q * b > a) q--;
  else if ((q + 1) * b <= a) q++;
  return q;
}

// col[k, j] of group g (MODE 1)
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

// MODE 0 and 2: B column j as (image n, a, b): MODE 0 (oh*sh - ph,
// ow*sw - pw) biased by 2^30 so that adding kh*dh stays unsigned; MODE 2
// (h + ph, w + pw).
uvec3 col_info(uint j) {
  if (MODE == 0) {
    uint P = pc.OH * pc.OW, p = j % P;
    return uvec3(j / P, (p / pc.OW) * pc.sh - pc.ph + 0x40000000u,
                 (p % pc.OW) * pc.sw - pc.pw + 0x40000000u);
  }
  uint HW = pc.H * pc.W, q = j % HW;
  return uvec3(j / HW, q / pc.W + pc.ph, q % pc.W + pc.pw);
}

// MODE 0 and 2: B[k, column ci] of group g, k = (c, kh, kw) in MODE 0,
// (o, kh, kw) in MODE 2.
float b_value(uint g, uint k, uvec3 ci) {
  uint KK = pc.KH * pc.KW;
  uint c = udiv(k, KK, 1.0 / float(KK)), r = k - c * KK;
  uint kh = udiv(r, pc.KW, 1.0 / float(pc.KW)), kw = r - kh * pc.KW;
  if (MODE == 0) {
    uint h = ci.y + kh * pc.dh - 0x40000000u, w = ci.z + kw * pc.dw - 0x40000000u;
    if (h >= pc.H || w >= pc.W) return 0.0;   // unsigned: negatives wrap above
    return x[pc.x_off + ((ci.x * pc.C + g * (pc.C / pc.G) + c) * pc.H + h) * pc.W + w];
  }
  int th = int(ci.y) - int(kh * pc.dh), tw = int(ci.z) - int(kw * pc.dw);
  if (th < 0 || tw < 0) return 0.0;
  uint oh = udiv(uint(th), pc.sh, 1.0 / float(pc.sh)), ow = udiv(uint(tw), pc.sw, 1.0 / float(pc.sw));
  if (oh * pc.sh != uint(th) || ow * pc.sw != uint(tw) || oh >= pc.OH || ow >= pc.OW) return 0.0;
  return x[pc.x_off + ((ci.x * pc.O + g * (pc.O / pc.G) + c) * pc.OH + oh) * pc.OW + ow];
}

void main() {
  const uint WX = gl_WorkGroupSize.x, WY = gl_WorkGroupSize.y;
  const uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
  const uint tid = ty * WX + tx, nthreads = WX * WY;
  const uint Og = pc.O / pc.G, Cg = pc.C / pc.G, KK = pc.KH * pc.KW;
  const uint Kk = Cg * KK, P = pc.OH * pc.OW, HW = pc.H * pc.W;
  const uint M = MODE == 2 ? Cg : Og;                           // GEMM rows
  const uint NC = MODE == 0 ? pc.N * P : MODE == 1 ? Kk : pc.N * HW;   // columns
  const uint KD = MODE == 0 ? Kk : MODE == 1 ? pc.N * P : Og * KK;     // depth
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  const float invKK = 1.0 / float(KK);

  // The fixed B column of this thread (MODE 0, 2 with nthreads % BN == 0).
  const bool fixed_col = MODE != 1 && nthreads % BN == 0;
  const uint bn_loc = tid % BN, bk_first = tid / BN, bk_step = nthreads / BN;
  const uint gcol = n0 + bn_loc;
  const uvec3 ci = fixed_col ? col_info(min(gcol, NC - 1)) : uvec3(0);

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
          } else if (MODE == 1) {
            uint n = gk / P, p = gk % P;
            v = wt[pc.w_off + (n * pc.O + g * Og + gm) * P + p];
          } else {
            uint o = udiv(gk, KK, invKK), r = gk - o * KK;
            v = wt[pc.w_off + ((g * Og + o) * Cg + gm) * KK + r];
          }
        }
        As[k * BM + m] = v;
      }
      if (fixed_col) {
        for (uint k = bk_first; k < BK; k += bk_step) {
          uint gk = k0 + k;
          Bs[k * BN + bn_loc] = gcol < NC && gk < ke ? b_value(g, gk, ci) : 0.0;
        }
      } else {
        for (uint e = tid; e < BN * BK; e += nthreads) {
          uint n, k;
          if (MODE == 1) { k = e % BK; n = e / BK; } else { n = e % BN; k = e / BN; }
          uint gn = n0 + n, gk = k0 + k;
          float v = 0.0;
          if (gn < NC && gk < ke)
            v = MODE == 1 ? col(g, gn, gk) : b_value(g, gk, col_info(gn));
          Bs[k * BN + n] = v;
        }
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
      [[unroll]] for (uint j = 0; j < TN; j++) {
        uint gn = n0 + tx + j * WX;
        if (gn >= NC) continue;
        if (MODE == 0) {
          uint o = g * Og + gm, n = gn / P, p = gn % P;
          y[pc.y_off + (n * pc.O + o) * P + p] =
              acc[i * TN + j] + (HAS_BIAS != 0 ? bias[pc.b_off + o] : 0.0);
        } else if (MODE == 1) {
          y[pc.y_off + (split * pc.O + g * Og + gm) * Kk + gn] = acc[i * TN + j];
        } else {
          uint n = gn / HW, q = gn % HW;
          y[pc.y_off + (n * pc.C + g * Cg + gm) * HW + q] = acc[i * TN + j];
        }
      }
    }
  }
}
