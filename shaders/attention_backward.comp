#version 450
// Fused multi-head self-attention, backward, in three race-free passes
// (shapes and head layout as attention.comp; P[t, s] = exp(scale q_t . k_s
// - lse_t) the forward's probabilities, masked ones 0):
//   MODE 0 stats:  stats[0 .. BHT)    = lse[b, h, t] = log sum_s exp(scale q_t . k_s)
//                  stats[BHT .. 2BHT) = delta[b, h, t] = sum_d dy[b, t, hD + d] y[b, t, hD + d]
//                  one workgroup per (b, h, query tile); the online max/sum
//                  over key tiles as in the forward.
//   MODE 1 dk, dv: dv_s = sum_t P[t, s] dy_t
//                  dk_s = scale sum_t dS[t, s] q_t,  dS = P (dy_t . v_s - delta_t)
//                  one workgroup per (b, h, key tile) owning those rows of
//                  dk and dv: the query tiles that can see the keys stream
//                  through shared memory.
//   MODE 2 dq:     dq_t = scale sum_s dS[t, s] k_s
//                  one workgroup per (b, h, query tile); key tiles stream.
// Each output element has one writer and sums in a fixed order: no atomics,
// deterministic. Memory is O(B H T) for the stats; nothing [T, T] exists.
// Bindings: 0 qkv, 1 dy, 2 y, 3 stats [2 B H T] (written by MODE 0),
// 4 dqkv [B, T, 3C] (written by MODE 1: k and v columns; MODE 2: q columns).
// Spec: 0 workgroup size WG, 1 tile rows BT, 2 head size D, 3 CAUSAL, 4 MODE.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 1) const uint BT = 16;
layout(constant_id = 2) const uint D = 32;
layout(constant_id = 3) const uint CAUSAL = 1;
layout(constant_id = 4) const uint MODE = 0;
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

shared float qs[BT * D];    // query rows of the tile, qs[i * D + d]
shared float gs[BT * D];    // dy rows of the query tile
shared float ks[BT * D];    // key rows
shared float vs[BT * D];    // value rows
shared float acc0[BT * D];  // MODE 1: dk; MODE 2: dq
shared float acc1[BT * D];  // MODE 1: dv
shared float ps[BT * BT];   // scores / probabilities, ps[i * BT + j] (query i, key j)
shared float dss[BT * BT];  // dS
shared float rs0[BT];       // MODE 0: running max;  MODES 1, 2: lse of the query rows
shared float rs1[BT];       // MODE 0: running sum;  MODES 1, 2: delta of the query rows

#define NEG_INF uintBitsToFloat(0xff800000u)   // -inf

// Stages rows [r0, r0 + n) of column block `part` (0 q, 1 k, 2 v) of head h,
// zero past n, in dst (call from uniform control flow; no barrier here).
#define STAGE(dst, src, off, stride, r0, n)                                 \
  for (uint e = lid; e < BT * D; e += WG) {                                 \
    uint r_ = e / D;                                                        \
    dst[e] = r_ < (n) ? src[(off) + ((r0) + r_) * (stride) + e % D] : 0.0; \
  }

bool visible(uint t, uint s) { return CAUSAL == 0 || s <= t; }

float qk(uint i, uint j) {
  float dot = 0.0;
  for (uint d = 0; d < D; d++) dot += qs[i * D + d] * ks[j * D + d];
  return pc.scale * dot;
}

float gv(uint i, uint j) {
  float dot = 0.0;
  for (uint d = 0; d < D; d++) dot += gs[i * D + d] * vs[j * D + d];
  return dot;
}

void main() {
  const uint lid = gl_LocalInvocationID.x;
  const uint T = pc.T, C = pc.C, C3 = 3 * pc.C, BHT = pc.B * pc.H * pc.T;
  const uint n_work = pc.B * pc.H * pc.tiles;
  for (uint w = gl_WorkGroupID.x; w < n_work; w += gl_NumWorkGroups.x) {
    const uint tile = w % pc.tiles, bh = w / pc.tiles, h = bh % pc.H, b = bh / pc.H;
    const uint r0 = tile * BT, nr = min(BT, T - r0);   // this workgroup's rows
    const uint qbase = pc.qkv_off + b * T * C3 + h * D;  // q of (b, t = 0, head h)
    const uint ybase = b * T * C + h * D;                // dy, y of (b, t = 0, head h)
    const uint sbase = pc.st_off + bh * T;               // stats of (b, h, t = 0)

    if (MODE == 0) {
      STAGE(qs, qkv, qbase, C3, r0, nr)
      for (uint i = lid; i < BT; i += WG) {
        rs0[i] = NEG_INF;
        rs1[i] = 0.0;
      }
      const uint kend = CAUSAL != 0 ? r0 + nr : T;
      for (uint k0 = 0; k0 < kend; k0 += BT) {
        const uint nk = min(BT, kend - k0);
        barrier();
        STAGE(ks, qkv, qbase + C, C3, k0, nk)
        barrier();
        for (uint e = lid; e < BT * BT; e += WG) {
          uint i = e / BT, j = e % BT;
          ps[e] = i < nr && j < nk && visible(r0 + i, k0 + j) ? qk(i, j) : NEG_INF;
        }
        barrier();
        for (uint i = lid; i < BT; i += WG) {
          float m_old = rs0[i], mx = m_old;
          for (uint j = 0; j < BT; j++) mx = max(mx, ps[i * BT + j]);
          if (mx == NEG_INF) continue;
          float sum = 0.0;
          for (uint j = 0; j < BT; j++) {
            float s = ps[i * BT + j];
            sum += s == NEG_INF ? 0.0 : exp(s - mx);
          }
          rs1[i] = (m_old == NEG_INF ? 0.0 : rs1[i] * exp(m_old - mx)) + sum;
          rs0[i] = mx;
        }
      }
      barrier();
      for (uint i = lid; i < nr; i += WG) {
        float dl = 0.0;
        for (uint d = 0; d < D; d++)
          dl += dy[pc.dy_off + ybase + (r0 + i) * C + d] * y[pc.y_off + ybase + (r0 + i) * C + d];
        stats[sbase + r0 + i] = rs0[i] + log(rs1[i]);
        stats[sbase + BHT + r0 + i] = dl;
      }
      barrier();
    } else if (MODE == 1) {
      // this workgroup owns key rows [r0, r0 + nr)
      STAGE(ks, qkv, qbase + C, C3, r0, nr)
      STAGE(vs, qkv, qbase + 2 * C, C3, r0, nr)
      for (uint e = lid; e < BT * D; e += WG) {
        acc0[e] = 0.0;
        acc1[e] = 0.0;
      }
      const uint qstart = CAUSAL != 0 ? r0 : 0;   // earlier queries see none of these keys
      for (uint q0 = qstart; q0 < T; q0 += BT) {
        const uint nq = min(BT, T - q0);
        barrier();
        STAGE(qs, qkv, qbase, C3, q0, nq)
        STAGE(gs, dy, pc.dy_off + ybase, C, q0, nq)
        for (uint i = lid; i < nq; i += WG) {
          rs0[i] = stats[sbase + q0 + i];
          rs1[i] = stats[sbase + BHT + q0 + i];
        }
        barrier();
        for (uint e = lid; e < BT * BT; e += WG) {
          uint i = e / BT, j = e % BT;
          float p = 0.0, ds = 0.0;
          if (i < nq && j < nr && visible(q0 + i, r0 + j)) {
            p = exp(qk(i, j) - rs0[i]);
            ds = p * (gv(i, j) - rs1[i]);
          }
          ps[e] = p;
          dss[e] = ds;
        }
        barrier();
        for (uint e = lid; e < BT * D; e += WG) {
          uint j = e / D, d = e % D;
          float a0 = acc0[e], a1 = acc1[e];
          for (uint i = 0; i < BT; i++) {
            a0 += dss[i * BT + j] * qs[i * D + d];
            a1 += ps[i * BT + j] * gs[i * D + d];
          }
          acc0[e] = a0;
          acc1[e] = a1;
        }
      }
      barrier();
      for (uint e = lid; e < BT * D; e += WG) {
        uint j = e / D;
        if (j < nr) {
          uint at = pc.dqkv_off + (b * T + r0 + j) * C3 + h * D + e % D;
          dqkv[at + C] = pc.scale * acc0[e];
          dqkv[at + 2 * C] = acc1[e];
        }
      }
      barrier();
    } else {
      // this workgroup owns query rows [r0, r0 + nr)
      STAGE(qs, qkv, qbase, C3, r0, nr)
      STAGE(gs, dy, pc.dy_off + ybase, C, r0, nr)
      for (uint e = lid; e < BT * D; e += WG) acc0[e] = 0.0;
      for (uint i = lid; i < nr; i += WG) {
        rs0[i] = stats[sbase + r0 + i];
        rs1[i] = stats[sbase + BHT + r0 + i];
      }
      const uint kend = CAUSAL != 0 ? r0 + nr : T;
      for (uint k0 = 0; k0 < kend; k0 += BT) {
        const uint nk = min(BT, kend - k0);
        barrier();
        STAGE(ks, qkv, qbase + C, C3, k0, nk)
        STAGE(vs, qkv, qbase + 2 * C, C3, k0, nk)
        barrier();
        for (uint e = lid; e < BT * BT; e += WG) {
          uint i = e / BT, j = e % BT;
          float ds = 0.0;
          if (i < nr && j < nk && visible(r0 + i, k0 + j))
            ds = exp(qk(i, j) - rs0[i]) * (gv(i, j) - rs1[i]);
          dss[e] = ds;
        }
        barrier();
        for (uint e = lid; e < BT * D; e += WG) {
          uint i = e / D, d = e % D;
          float a = acc0[e];
          for (uint j = 0; j < BT; j++) a += dss[i * BT + j] * ks[j * D + d];
          acc0[e] = a;
        }
      }
      barrier();
      for (uint e = lid; e < BT * D; e += WG) {
        uint i = e / D;
        if (i < nr) dqkv[pc.dqkv_off + (b * T + r0 + i) * C3 + h * D + e % D] = pc.scale * acc0[e];
      }
      barrier();
    }
  }
}
