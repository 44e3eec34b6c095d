#version 450
#extension GL_EXT_control_flow_attributes : require
// matmul: y[batch, M, N] = op(a)[batch, M, K] @ op(b)[batch, K, N], where
// op(a) = a ([M, K]) or a^T (a stored [K, M]) by TA, likewise b ([K, N] or
// [N, K]) by TB. Batch axes of a and b broadcast: pc.sa/sb are their matrix
// element strides per batch axis of y (0 where broadcast).
//
// Shared-memory tiled GEMM: a workgroup of WX x WY threads computes a BM x BN
// tile of y, BK columns of K at a time; each thread keeps TM x TN results
// in registers, at rows ty + i*WY and columns tx + j*WX of the tile
// (BM = WY*TM, BN = WX*TN). Every tile size is a specialization constant.
// The register loops are marked [[unroll]]: their bounds are specialization
// constants, so spirv-opt cannot unroll them at build time, and drivers that
// would otherwise keep acc[] in memory unroll them once specialised (3x on
// lavapipe).
// Bindings: 0 a, 1 b, 2 y (written).
layout(local_size_x_id = 0, local_size_y_id = 1) in;
layout(constant_id = 2) const uint BM = 64;
layout(constant_id = 3) const uint BN = 64;
layout(constant_id = 4) const uint BK = 16;
layout(constant_id = 5) const uint TM = 4;
layout(constant_id = 6) const uint TN = 4;
layout(constant_id = 7) const uint TA = 0;
layout(constant_id = 8) const uint TB = 0;
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { float b[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint a_off, b_off, y_off;
  uint M, N, K;
  uint batches;    // product of y's batch shape
  uint nb;         // batch rank (<= 6)
  uint bshape[6];  // y's batch shape
  uint sa[6];      // a's element stride per batch axis (0: broadcast)
  uint sb[6];
} pc;

shared float As[BK * BM];   // As[k * BM + m]
shared float Bs[BK * BN];   // Bs[k * BN + n]

void main() {
  const uint WX = gl_WorkGroupSize.x, WY = gl_WorkGroupSize.y;
  const uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
  const uint tid = ty * WX + tx, nthreads = WX * WY;
  const uint m0 = gl_WorkGroupID.y * BM, n0 = gl_WorkGroupID.x * BN;
  const uint M = pc.M, N = pc.N, K = pc.K;

  for (uint batch = gl_WorkGroupID.z; batch < pc.batches; batch += gl_NumWorkGroups.z) {
    uint oa = pc.a_off, ob = pc.b_off, rest = batch;
    for (int d = int(pc.nb) - 1; d >= 0; d--) {
      uint c = rest % pc.bshape[d];
      rest /= pc.bshape[d];
      oa += c * pc.sa[d];
      ob += c * pc.sb[d];
    }
    const uint oy = pc.y_off + batch * M * N;

    float acc[TM * TN];
    [[unroll]] for (uint i = 0; i < TM * TN; i++) acc[i] = 0.0;

    for (uint k0 = 0; k0 < K; k0 += BK) {
      // Load the tiles, consecutive threads along the stored fast axis.
      for (uint e = tid; e < BM * BK; e += nthreads) {
        uint m, k;
        if (TA == 0) { k = e % BK; m = e / BK; } else { m = e % BM; k = e / BM; }
        uint gm = m0 + m, gk = k0 + k;
        float v = 0.0;
        if (gm < M && gk < K) v = TA == 0 ? a[oa + gm * K + gk] : a[oa + gk * M + gm];
        As[k * BM + m] = v;
      }
      for (uint e = tid; e < BN * BK; e += nthreads) {
        uint n, k;
        if (TB == 0) { n = e % BN; k = e / BN; } else { k = e % BK; n = e / BK; }
        uint gn = n0 + n, gk = k0 + k;
        float v = 0.0;
        if (gn < N && gk < K) v = TB == 0 ? b[ob + gk * N + gn] : b[ob + gn * K + gk];
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
      [[unroll]] for (uint j = 0; j < TN; j++) {
        uint gn = n0 + tx + j * WX;
        if (gn < N) y[oy + gm * N + gn] = acc[i * TN + j];
      }
    }
  }
}
