#version 450
#extension GL_EXT_control_flow_attributes : require
// Fused multi-head self-attention, forward (flash-attention style).
//   qkv [B, T, 3C]: q, k, v are the column blocks [0, C), [C, 2C), [2C, 3C);
//   head h of each is that block's columns [h D, (h + 1) D), D = C / H.
//   y [B, T, C]:    y[b, t, h D + d] = sum_s P[t, s] v[b, s, h D + d],
//                   P[t, :] = softmax_s(scale q_t . k_s), s <= t when CAUSAL.
// One workgroup of BT threads per (b, h, tile of BT queries), grid-stride
// over all of them; thread i owns query row q0 + i: its q (pre-scaled) and
// its output accumulator o live in registers (arrays of D, the loops over D
// unrolled once specialised). Key and value tiles of BT rows are staged in
// shared memory one at a time (the causal ones only up to the tile's last
// query), so every thread reads the same shared element at once (a
// broadcast). An online softmax keeps the running max m and sum l and
// rescales o by exp(m_old - m_new) once per tile: memory is O(BT D) per
// workgroup and nothing [T, T] exists. Masked and padded scores are -inf and
// weigh exactly 0. No subgroup size is assumed.
// Bindings: 0 qkv, 1 y (written). Spec: 0 BT (= workgroup size), 1 D, 2 CAUSAL.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint BT = 16;
layout(constant_id = 1) const uint D = 32;
layout(constant_id = 2) const uint CAUSAL = 1;
layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint qkv_off, y_off;
  uint B, T, C, H;
  uint tiles;      // query tiles per (b, h): ceil(T / BT)
  float scale;
} pc;

shared float ks[BT * D];   // keys of the current tile, ks[j * D + d]
shared float vs[BT * D];   // values of the current tile

#define NEG_INF uintBitsToFloat(0xff800000u)   // -inf

void main() {
  const uint i = gl_LocalInvocationID.x;
  const uint T = pc.T, C = pc.C, C3 = 3 * pc.C;
  const uint n_work = pc.B * pc.H * pc.tiles;
  for (uint w = gl_WorkGroupID.x; w < n_work; w += gl_NumWorkGroups.x) {
    const uint qt = w % pc.tiles, h = (w / pc.tiles) % pc.H, b = w / (pc.tiles * pc.H);
    const uint q0 = qt * BT, nq = min(BT, T - q0), t = q0 + i;
    const uint base = pc.qkv_off + b * T * C3 + h * D;   // q of (b, t = 0, head h)
    float q[D], o[D];
    [[unroll]] for (uint d = 0; d < D; d++) {
      q[d] = i < nq ? pc.scale * qkv[base + t * C3 + d] : 0.0;
      o[d] = 0.0;
    }
    float m = NEG_INF, l = 0.0;
    const uint kend = CAUSAL != 0 ? q0 + nq : T;
    for (uint k0 = 0; k0 < kend; k0 += BT) {
      const uint nk = min(BT, kend - k0);
      barrier();   // everyone is done with the previous tile
      for (uint e = i; e < BT * D; e += BT) {
        uint j = e / D, at = base + (k0 + j) * C3 + e % D;
        ks[e] = j < nk ? qkv[at + C] : 0.0;
        vs[e] = j < nk ? qkv[at + 2 * C] : 0.0;
      }
      barrier();
      float s[BT];
      float mx = m;
      [[unroll]] for (uint j = 0; j < BT; j++) {
        float dot = 0.0;
        [[unroll]] for (uint d = 0; d < D; d++) dot += q[d] * ks[j * D + d];
        s[j] = j < nk && (CAUSAL == 0 || k0 + j <= t) ? dot : NEG_INF;
        mx = max(mx, s[j]);
      }
      if (mx != NEG_INF) {   // else nothing visible yet (padding rows only)
        float alpha = m == NEG_INF ? 0.0 : exp(m - mx);
        l *= alpha;
        [[unroll]] for (uint d = 0; d < D; d++) o[d] *= alpha;
        [[unroll]] for (uint j = 0; j < BT; j++) {
          float p = s[j] == NEG_INF ? 0.0 : exp(s[j] - mx);
          l += p;
          [[unroll]] for (uint d = 0; d < D; d++) o[d] += p * vs[j * D + d];
        }
        m = mx;
      }
    }
    if (i < nq) {
      const uint yb = pc.y_off + (b * T + t) * C + h * D;
      [[unroll]] for (uint d = 0; d < D; d++) y[yb + d] = o[d] / l;
    }
  }
}
