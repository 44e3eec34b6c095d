#version 450
// Fused multi-head self-attention, forward (flash-attention style).
//   qkv [B, T, 3C]: q, k, v are the column blocks [0, C), [C, 2C), [2C, 3C);
//   head h of each is that block's columns [h D, (h + 1) D), D = C / H.
//   y [B, T, C]:    y[b, t, h D + d] = sum_s P[t, s] v[b, s, h D + d],
//                   P[t, :] = softmax_s(scale q_t . k_s), s <= t when CAUSAL.
// One workgroup per (b, h, tile of BT queries), grid-stride over all of them.
// The query tile is staged in shared memory once; key and value tiles of BT
// rows follow one at a time (the causal ones only up to the tile's last
// query). An online softmax keeps a running max m and sum l per query and
// rescales the output accumulator by exp(m_old - m_new), so the memory is
// O(BT D) per workgroup and nothing [T, T] exists. Tiles are zero-padded past
// T; masked and padded scores are -inf and weigh exactly 0.
// Work inside a tile is split over the WG threads by flat index, with
// barriers between phases (no subgroup size assumed).
// Bindings: 0 qkv, 1 y (written).
// Spec: 0 workgroup size WG, 1 tile rows BT, 2 head size D, 3 CAUSAL.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint BT = 16;
layout(constant_id = 2) const uint D = 32;
layout(constant_id = 3) const uint CAUSAL = 1;
layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint qkv_off, y_off;
  uint B, T, C, H;
  uint tiles;      // query tiles per (b, h): ceil(T / BT)
  float scale;
} pc;

shared float qs[BT * D];   // queries of the tile, qs[i * D + d]
shared float ks[BT * D];   // keys of the current key tile
shared float vs[BT * D];   // values of the current key tile
shared float os[BT * D];   // output accumulators (unnormalised)
shared float ps[BT * BT];  // scores, then probabilities, ps[i * BT + j]
shared float ms[BT];       // running max per query
shared float ls[BT];       // running sum per query
shared float as_[BT];      // this tile's rescale factor per query

#define NEG_INF uintBitsToFloat(0xff800000u)   // -inf

void main() {
  const uint lid = gl_LocalInvocationID.x;
  const uint T = pc.T, C = pc.C, C3 = 3 * pc.C;
  const uint n_work = pc.B * pc.H * pc.tiles;
  for (uint w = gl_WorkGroupID.x; w < n_work; w += gl_NumWorkGroups.x) {
    const uint qt = w % pc.tiles, h = (w / pc.tiles) % pc.H, b = w / (pc.tiles * pc.H);
    const uint q0 = qt * BT, nq = min(BT, T - q0);
    const uint base = pc.qkv_off + b * T * C3 + h * D;   // q of (b, t = 0, head h)
    for (uint e = lid; e < BT * D; e += WG) {
      uint i = e / D;
      qs[e] = i < nq ? qkv[base + (q0 + i) * C3 + e % D] : 0.0;
      os[e] = 0.0;
    }
    for (uint i = lid; i < BT; i += WG) {
      ms[i] = NEG_INF;
      ls[i] = 0.0;
    }
    const uint kend = CAUSAL != 0 ? q0 + nq : T;
    for (uint k0 = 0; k0 < kend; k0 += BT) {
      const uint nk = min(BT, kend - k0);
      barrier();   // the previous tile's readers are done with ks, vs, ps
      for (uint e = lid; e < BT * D; e += WG) {
        uint j = e / D, at = base + (k0 + j) * C3 + e % D;
        ks[e] = j < nk ? qkv[at + C] : 0.0;
        vs[e] = j < nk ? qkv[at + 2 * C] : 0.0;
      }
      barrier();
      // scores
      for (uint e = lid; e < BT * BT; e += WG) {
        uint i = e / BT, j = e % BT;
        float s = NEG_INF;
        if (i < nq && j < nk && (CAUSAL == 0 || k0 + j <= q0 + i)) {
          float dot = 0.0;
          for (uint d = 0; d < D; d++) dot += qs[i * D + d] * ks[j * D + d];
          s = pc.scale * dot;
        }
        ps[e] = s;
      }
      barrier();
      // online softmax: new max, rescale factor, probabilities, running sum
      for (uint i = lid; i < BT; i += WG) {
        float m_old = ms[i], mx = m_old;
        for (uint j = 0; j < BT; j++) mx = max(mx, ps[i * BT + j]);
        float alpha = 1.0, sum = 0.0;
        if (mx != NEG_INF) {
          alpha = m_old == NEG_INF ? 0.0 : exp(m_old - mx);
          for (uint j = 0; j < BT; j++) {
            float s = ps[i * BT + j];
            float p = s == NEG_INF ? 0.0 : exp(s - mx);
            ps[i * BT + j] = p;
            sum += p;
          }
        } else {
          for (uint j = 0; j < BT; j++) ps[i * BT + j] = 0.0;
        }
        ms[i] = mx;
        ls[i] = ls[i] * alpha + sum;
        as_[i] = alpha;
      }
      barrier();
      // o = o * alpha + P v
      for (uint e = lid; e < BT * D; e += WG) {
        uint i = e / D, d = e % D;
        float acc = os[e] * as_[i];
        for (uint j = 0; j < BT; j++) acc += ps[i * BT + j] * vs[j * D + d];
        os[e] = acc;
      }
    }
    barrier();
    for (uint e = lid; e < BT * D; e += WG) {
      uint i = e / D;
      if (i < nq) y[pc.y_off + (b * T + q0 + i) * C + h * D + e % D] = os[e] / ls[i];
    }
    barrier();   // before the next work item overwrites qs, os, ms, ls
  }
}
