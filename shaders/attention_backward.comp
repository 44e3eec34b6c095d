#version 450
#extension GL_EXT_control_flow_attributes : require
// Fused multi-head self-attention, backward, in three race-free passes
// (shapes and head layout as attention.comp; P[t, s] = exp(scale q_t . k_s
// - lse_t), the forward's probabilities, masked ones 0):
//   MODE 0 stats:  stats[0 .. BHT)    = lse[b, h, t] = log sum_s exp(scale q_t . k_s)
//                  stats[BHT .. 2BHT) = delta[b, h, t] = sum_d dy[b, t, hD + d] y[b, t, hD + d]
//                  a thread per query row; key tiles stream through shared
//                  memory with the online max/sum of the forward.
//   MODE 1 dk, dv: dv_s = sum_t P[t, s] dy_t
//                  dk_s = scale sum_t dS[t, s] q_t,  dS = P (dy_t . v_s - delta_t)
//                  a thread per key row (k, v, dk, dv in registers); the
//                  tiles of queries that can see the keys (q, dy, lse, delta)
//                  stream through shared memory.
//   MODE 2 dq:     dq_t = scale sum_s dS[t, s] k_s
//                  a thread per query row (q, dy, dq in registers); key and
//                  value tiles stream through shared memory.
// A workgroup of BT threads takes one (b, h, tile of BT rows), grid-stride.
// Each output element has one writer that sums in a fixed order: no atomics,
// deterministic. Memory is O(B H T) for the stats; nothing [T, T] exists.
// Loops over D are unrolled once specialised (register arrays); shared reads
// are the same element for every thread at once. No subgroup size assumed.
// Bindings: 0 qkv, 1 dy, 2 y, 3 stats [2 B H T] (written by MODE 0),
// 4 dqkv [B, T, 3C] (written by MODE 1: k and v columns; MODE 2: q columns).
// Spec: 0 BT (= workgroup size), 1 D, 2 CAUSAL, 3 MODE.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint BT = 16;
layout(constant_id = 1) const uint D = 32;
layout(constant_id = 2) const uint CAUSAL = 1;
layout(constant_id = 3) const uint MODE = 0;
layout(set = 0, binding = 0) readonly buffer QKV { float qkv[]; };
layout(set = 0, binding = 1) readonly buffer DY { float dy[]; };
layout(set = 0, binding = 2) readonly buffer Yb { float y[]; };
layout(set = 0, binding = 3) buffer ST { float stats[]; };
layout(set = 0, binding = 4) writeonly buffer DQKV { float dqkv[]; };
layout(push_constant, std430) uniform PC {
  uint qkv_off, dy_off, y_off, st_off, dqkv_off;
  uint B, T, C, H;
  uint tiles;      // tiles of BT rows per (b, h): ceil(T / BT)
  float scale;
} pc;

shared float sa[BT * D];   // MODES 0, 2: keys;   MODE 1: queries
shared float sb[BT * D];   // MODE 2: values;     MODE 1: dy rows
shared float sl[BT];       // MODE 1: lse of the staged queries
shared float sd[BT];       // MODE 1: delta of the staged queries

#define NEG_INF uintBitsToFloat(0xff800000u)   // -inf

// Stages rows [r0, r0 + n) (zero past n) of a [rows, stride] matrix at src[off]
// into dst[BT * D]. Every thread calls it (uniform control flow).
#define STAGE(dst, src, off, stride, r0, n)                         \
  for (uint e = i; e < BT * D; e += BT) {                           \
    uint r_ = e / D;                                                \
    dst[e] = r_ < (n) ? src[(off) + ((r0) + r_) * (stride) + e % D] : 0.0; \
  }

void main() {
  const uint i = gl_LocalInvocationID.x;
  const uint T = pc.T, C = pc.C, C3 = 3 * pc.C, BHT = pc.B * pc.H * pc.T;
  const uint n_work = pc.B * pc.H * pc.tiles;
  for (uint w = gl_WorkGroupID.x; w < n_work; w += gl_NumWorkGroups.x) {
    const uint tile = w % pc.tiles, bh = w / pc.tiles, h = bh % pc.H, b = bh / pc.H;
    const uint r0 = tile * BT, nr = min(BT, T - r0), r = r0 + i;   // this thread's row r
    const uint qbase = pc.qkv_off + b * T * C3 + h * D;  // q of (b, t = 0, head h)
    const uint gbase = pc.dy_off + b * T * C + h * D;    // dy of (b, t = 0, head h)
    const uint sbase = pc.st_off + bh * T;               // stats of (b, h, t = 0)
    const bool mine = i < nr;

    if (MODE == 0) {
      float q[D];
      [[unroll]] for (uint d = 0; d < D; d++) q[d] = mine ? pc.scale * qkv[qbase + r * C3 + d] : 0.0;
      float m = NEG_INF, l = 0.0;
      const uint kend = CAUSAL != 0 ? r0 + nr : T;
      for (uint k0 = 0; k0 < kend; k0 += BT) {
        const uint nk = min(BT, kend - k0);
        barrier();
        STAGE(sa, qkv, qbase + C, C3, k0, nk)
        barrier();
        float s[BT];
        float mx = m;
        [[unroll]] for (uint j = 0; j < BT; j++) {
          float dot = 0.0;
          [[unroll]] for (uint d = 0; d < D; d++) dot += q[d] * sa[j * D + d];
          s[j] = j < nk && (CAUSAL == 0 || k0 + j <= r) ? dot : NEG_INF;
          mx = max(mx, s[j]);
        }
        if (mx != NEG_INF) {
          float sum = 0.0;
          [[unroll]] for (uint j = 0; j < BT; j++) sum += s[j] == NEG_INF ? 0.0 : exp(s[j] - mx);
          l = (m == NEG_INF ? 0.0 : l * exp(m - mx)) + sum;
          m = mx;
        }
      }
      if (mine) {
        const uint yb = b * T * C + r * C + h * D;
        float dl = 0.0;
        [[unroll]] for (uint d = 0; d < D; d++) dl += dy[pc.dy_off + yb + d] * y[pc.y_off + yb + d];
        stats[sbase + r] = m + log(l);
        stats[sbase + BHT + r] = dl;
      }
    } else if (MODE == 1) {
      // thread i owns key row r: k, v and the dk, dv accumulators
      float k[D], v[D], dk[D], dv[D];
      [[unroll]] for (uint d = 0; d < D; d++) {
        k[d] = mine ? pc.scale * qkv[qbase + r * C3 + C + d] : 0.0;
        v[d] = mine ? qkv[qbase + r * C3 + 2 * C + d] : 0.0;
        dk[d] = 0.0;
        dv[d] = 0.0;
      }
      const uint qstart = CAUSAL != 0 ? r0 : 0;   // earlier queries see none of these keys
      for (uint q0 = qstart; q0 < T; q0 += BT) {
        const uint nq = min(BT, T - q0);
        barrier();
        STAGE(sa, qkv, qbase, C3, q0, nq)
        STAGE(sb, dy, gbase, C, q0, nq)
        if (i < nq) {
          sl[i] = stats[sbase + q0 + i];
          sd[i] = stats[sbase + BHT + q0 + i];
        }
        barrier();
        for (uint j = 0; j < nq; j++) {   // query q0 + j
          if (CAUSAL != 0 && r > q0 + j) continue;
          float s = 0.0, dp = 0.0;
          [[unroll]] for (uint d = 0; d < D; d++) {
            s += sa[j * D + d] * k[d];
            dp += sb[j * D + d] * v[d];
          }
          float p = exp(s - sl[j]), ds = p * (dp - sd[j]);
          [[unroll]] for (uint d = 0; d < D; d++) {
            dv[d] += p * sb[j * D + d];
            dk[d] += ds * sa[j * D + d];
          }
        }
      }
      if (mine) {
        const uint at = pc.dqkv_off + (b * T + r) * C3 + h * D;
        [[unroll]] for (uint d = 0; d < D; d++) {
          dqkv[at + C + d] = pc.scale * dk[d];
          dqkv[at + 2 * C + d] = dv[d];
        }
      }
    } else {
      // thread i owns query row r: q, dy and the dq accumulator
      float q[D], g[D], dq[D];
      [[unroll]] for (uint d = 0; d < D; d++) {
        q[d] = mine ? pc.scale * qkv[qbase + r * C3 + d] : 0.0;
        g[d] = mine ? dy[gbase + r * C + d] : 0.0;
        dq[d] = 0.0;
      }
      const float lse = mine ? stats[sbase + r] : 0.0, delta = mine ? stats[sbase + BHT + r] : 0.0;
      const uint kend = CAUSAL != 0 ? r0 + nr : T;
      for (uint k0 = 0; k0 < kend; k0 += BT) {
        const uint nk = min(BT, kend - k0);
        barrier();
        STAGE(sa, qkv, qbase + C, C3, k0, nk)
        STAGE(sb, qkv, qbase + 2 * C, C3, k0, nk)
        barrier();
        for (uint j = 0; j < nk; j++) {   // key k0 + j
          if (!mine || (CAUSAL != 0 && k0 + j > r)) continue;
          float s = 0.0, dp = 0.0;
          [[unroll]] for (uint d = 0; d < D; d++) {
            s += q[d] * sa[j * D + d];
            dp += g[d] * sb[j * D + d];
          }
          float ds = exp(s - lse) * (dp - delta);
          [[unroll]] for (uint d = 0; d < D; d++) dq[d] += ds * sa[j * D + d];
        }
      }
      if (mine) {
        const uint at = pc.dqkv_off + (b * T + r) * C3 + h * D;
        [[unroll]] for (uint d = 0; d < D; d++) dqkv[at + d] = pc.scale * dq[d];
      }
    }
  }
}
