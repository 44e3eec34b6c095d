/*
 * gemm.c - single-precision GEMM: C[M, N] = alpha * op(A) @ op(B) + beta * C.
 *
 * The classic packed, cache-blocked scheme (Goto / BLIS):
 *
 *   for jc over N in NC columns            B panel [KC, NC] fits in L3
 *     for pc over K in blocks of kc <= KC  (K blocks are summed in order)
 *       pack B[pc:pc+kc, jc:jc+NC] into NR-wide slivers
 *       for ib over M in MB rows
 *         pack A[ib:ib+MB, pc:pc+kc] into MR-tall slivers
 *         for each (MC rows x NW columns) tile, in parallel
 *           for each MR x NR block: micro-kernel over kc, then store
 *
 * K is cut into equal blocks of at most KC (K = 288 is one block, 576 two
 * of 288), not KC-sized ones and a short rest: a short block costs a full
 * pass of stores over C for little work. The blocks depend only on K.
 *
 * Packing turns every transpose case into the same unit-stride micro-kernel
 * and pads the edges with zeros, so odd sizes take the same path. The
 * micro-kernel keeps a 6 x 16 accumulator in registers (12 AVX2 registers)
 * and is compiled for x86-64-v3 (AVX2 + FMA) and for the baseline ISA; the
 * loader picks one per machine (target_clones), so results on one machine
 * never change. ("avx2,fma" would make two separate clones, neither with
 * both.)
 *
 * A B that several GEMMs multiply (an RNN's weight, once per time step) can
 * be packed once, whole, by kcpu_sgemm_pack_b and passed to
 * kcpu_sgemm_packed: its blocks lie in the order the loops below visit
 * them, block (jc, pc) at Bp + jc * K + pc * (its padded width). Packing
 * is a copy, so the results are those of kcpu_sgemm.
 *
 * Determinism: every C element is sum over K blocks in order of
 * (sum over k in order of a*b), computed by one thread. Tiling across
 * threads only decides which thread computes it, so results do not depend
 * on the pool or its size.
 */
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"

#define MR 6        /* micro-tile rows */
#define NR 16       /* micro-tile columns */
#define KC 384      /* most depth of one packed block */
#define MC 96       /* rows of one compute tile (a multiple of MR) */
#define MB 1536     /* rows of A packed at once (a multiple of MC) */
#define NC 3072     /* columns of one packed B panel (a multiple of NR) */

/* Eight floats, in one AVX register or two SSE registers (GCC vector
 * extension: portable across the clones, and the accumulators provably stay
 * in registers, which plain loops here did not). */
typedef float kcpu_v8 __attribute__((vector_size(32), aligned(32)));

/* The product P[MR][NR] = Ap [kc, MR] (sliver) x Bp [kc, NR] (sliver),
 * then, with store = 0: acc = P; store = 1: C[MR, NR] = P; store = 2:
 * C[MR, NR] += P (the full-tile cases with alpha 1 and beta 0 or 1: exact
 * copies and single adds, so they round as store_tile would). C has leading
 * dimension ldc. Bp and acc are 32-byte aligned; C need not be. Storing
 * from the registers saves a round trip through acc and a scalar loop,
 * which weigh most when kc is short (conv1's K = 9). */
#if defined(__clang__)
#define KCPU_FP_CONTRACT /* clang contracts with -ffp-contract=on by default */
#else
#define KCPU_FP_CONTRACT , optimize("fp-contract=fast")
#endif
__attribute__((target_clones("arch=x86-64-v3", "default") KCPU_FP_CONTRACT))
static void micro_kernel(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                         float *restrict acc, int store, float *restrict C, int64_t ldc) {
  kcpu_v8 c[MR][2];
  for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = (kcpu_v8){0};
  for (int64_t k = 0; k < kc; k++) {
    const float *restrict a = Ap + k * MR;
    kcpu_v8 b0 = *(const kcpu_v8 *)(Bp + k * NR);
    kcpu_v8 b1 = *(const kcpu_v8 *)(Bp + k * NR + 8);
    for (int i = 0; i < MR; i++) {
      /* A broadcast straight from memory ({0} + a[i] costs an add first:
       * 0 + x is not x for x = -0). */
      float s = a[i];
      kcpu_v8 ai = {s, s, s, s, s, s, s, s};
      c[i][0] += ai * b0;
      c[i][1] += ai * b1;
    }
  }
  if (store == 0) {
    for (int i = 0; i < MR; i++) {
      *(kcpu_v8 *)(acc + i * NR) = c[i][0];
      *(kcpu_v8 *)(acc + i * NR + 8) = c[i][1];
    }
    return;
  }
  for (int i = 0; i < MR; i++) {
    kcpu_v8 lo = c[i][0], hi = c[i][1];
    if (store == 2) {
      kcpu_v8 c0, c1;
      memcpy(&c0, C + i * ldc, sizeof c0);
      memcpy(&c1, C + i * ldc + 8, sizeof c1);
      lo += c0;
      hi += c1;
    }
    memcpy(C + i * ldc, &lo, sizeof lo);
    memcpy(C + i * ldc + 8, &hi, sizeof hi);
  }
}

/* C[m, n] (leading dimension ldc) = alpha * acc + beta * C; beta == 0 does
 * not read C. */
static void store_tile(float *C, int64_t ldc, int m, int n, const float *acc, float alpha,
                       float beta) {
  for (int i = 0; i < m; i++) {
    float *c = C + i * ldc;
    const float *a = acc + i * NR;
    if (beta == 0.0f)
      for (int j = 0; j < n; j++) c[j] = alpha * a[j];
    else
      for (int j = 0; j < n; j++) c[j] = alpha * a[j] + beta * c[j];
  }
}

typedef struct gemm_job {
  int trans_a, trans_b;
  int64_t M, N, K;
  float alpha, beta_eff;      /* beta for the first K block, 1 after */
  const float *A;
  int64_t lda;
  const float *B;
  int64_t ldb;
  float *C;
  int64_t ldc;
  /* current block */
  int64_t jc, nc, pc, kc, ib, mb;
  float *Ap, *Bp;
  int64_t tiles_n, nw;        /* compute tiles: columns per tile */
} gemm_job;

/* Packs rows [ib + s*MR, +MR) of op(A)[:, pc:pc+kc] for slivers [s0, s1). */
static void pack_a(void *arg, int64_t s0, int64_t s1) {
  const gemm_job *j = arg;
  for (int64_t s = s0; s < s1; s++) {
    float *dst = j->Ap + s * MR * j->kc;
    int64_t i0 = j->ib + s * MR;
    int rows = (int)(j->ib + j->mb - i0 < MR ? j->ib + j->mb - i0 : MR);
    if (!j->trans_a) {
      for (int r = 0; r < rows; r++) {
        const float *src = j->A + (i0 + r) * j->lda + j->pc;
        for (int64_t k = 0; k < j->kc; k++) dst[k * MR + r] = src[k];
      }
    } else {
      for (int64_t k = 0; k < j->kc; k++) {
        const float *src = j->A + (j->pc + k) * j->lda + i0;
        for (int r = 0; r < rows; r++) dst[k * MR + r] = src[r];
      }
    }
    for (int r = rows; r < MR; r++)
      for (int64_t k = 0; k < j->kc; k++) dst[k * MR + r] = 0.0f;
  }
}

/* Packs columns [jc + s*NR, +NR) of op(B)[pc:pc+kc, :] for slivers [s0, s1). */
static void pack_b(void *arg, int64_t s0, int64_t s1) {
  const gemm_job *j = arg;
  for (int64_t s = s0; s < s1; s++) {
    float *dst = j->Bp + s * NR * j->kc;
    int64_t j0 = j->jc + s * NR;
    int cols = (int)(j->jc + j->nc - j0 < NR ? j->jc + j->nc - j0 : NR);
    if (!j->trans_b) {
      for (int64_t k = 0; k < j->kc; k++) {
        const float *src = j->B + (j->pc + k) * j->ldb + j0;
        float *d = dst + k * NR;
        int c = 0;
        for (; c < cols; c++) d[c] = src[c];
        for (; c < NR; c++) d[c] = 0.0f;
      }
    } else {
      for (int c = 0; c < cols; c++) {
        const float *src = j->B + (j0 + c) * j->ldb + j->pc;
        for (int64_t k = 0; k < j->kc; k++) dst[k * NR + c] = src[k];
      }
      for (int c = cols; c < NR; c++)
        for (int64_t k = 0; k < j->kc; k++) dst[k * NR + c] = 0.0f;
    }
  }
}

/* Runs compute tiles [t0, t1): tile t covers rows (t / tiles_n) * MC and
 * columns (t % tiles_n) * nw of the current packed block. */
static void compute_tiles(void *arg, int64_t t0, int64_t t1) {
  const gemm_job *j = arg;
  float acc[MR * NR] __attribute__((aligned(64)));
  for (int64_t t = t0; t < t1; t++) {
    int64_t r0 = (t / j->tiles_n) * MC, c0 = (t % j->tiles_n) * j->nw;
    int64_t r1 = r0 + MC < j->mb ? r0 + MC : j->mb;
    int64_t c1 = c0 + j->nw < j->nc ? c0 + j->nw : j->nc;
    for (int64_t jr = c0; jr < c1; jr += NR) {
      const float *bp = j->Bp + (jr / NR) * NR * j->kc;
      int n = (int)(c1 - jr < NR ? c1 - jr : NR);
      for (int64_t ir = r0; ir < r1; ir += MR) {
        const float *ap = j->Ap + (ir / MR) * MR * j->kc;
        int m = (int)(r1 - ir < MR ? r1 - ir : MR);
        float *c = j->C + (j->ib + ir) * j->ldc + j->jc + jr;
        if (m == MR && n == NR && j->alpha == 1.0f && (j->beta_eff == 0.0f || j->beta_eff == 1.0f)) {
          micro_kernel(j->kc, ap, bp, acc, j->beta_eff == 0.0f ? 1 : 2, c, j->ldc);
        } else {
          micro_kernel(j->kc, ap, bp, acc, 0, NULL, 0);
          store_tile(c, j->ldc, m, n, acc, j->alpha, j->beta_eff);
        }
      }
    }
  }
}

/* 64-byte aligned memory (C11 wants the size a multiple of the alignment). */
static void *alloc64(size_t size) { return aligned_alloc(64, (size + 63) & ~(size_t)63); }

/* C = beta * C for K == 0 (no product to add). */
static void scale_c(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
  for (int64_t i = 0; i < M; i++) {
    float *c = C + i * ldc;
    if (beta == 0.0f)
      memset(c, 0, (size_t)N * sizeof *c);
    else
      for (int64_t j = 0; j < N; j++) c[j] *= beta;
  }
}

int64_t kcpu_sgemm_packed_b_floats(int64_t N, int64_t K) { return (N + NR - 1) / NR * NR * K; }

void kcpu_sgemm_pack_b(kcpu_pool *pool, int trans_b, int64_t N, int64_t K, const float *B,
                       int64_t ldb, float *Bp) {
  if (N <= 0 || K <= 0) return;
  int64_t k_blocks = (K + KC - 1) / KC;
  int64_t kc_max = (K + k_blocks - 1) / k_blocks;
  int64_t nc_blk = N < NC ? (N + NR - 1) / NR * NR : NC;
  gemm_job j = {.trans_b = trans_b, .N = N, .K = K, .B = B, .ldb = ldb};
  for (j.jc = 0; j.jc < N; j.jc += nc_blk) {
    j.nc = N - j.jc < nc_blk ? N - j.jc : nc_blk;
    int64_t slivers_b = (j.nc + NR - 1) / NR;
    for (j.pc = 0; j.pc < K; j.pc += kc_max) {
      j.kc = K - j.pc < kc_max ? K - j.pc : kc_max;
      j.Bp = Bp + j.jc * K + j.pc * slivers_b * NR;
      kcpu_parallel_for(pool, slivers_b, 16, pack_b, &j);
    }
  }
}

/* kcpu_sgemm, with B packed beforehand when Bpre is not NULL. */
static void sgemm(kcpu_pool *pool, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                  float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                  const float *Bpre, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  int64_t k_blocks = (K + KC - 1) / KC;
  int64_t kc_max = (K + k_blocks - 1) / k_blocks;
  int64_t mb_blk = M < MB ? (M + MR - 1) / MR * MR : MB;
  int64_t nc_blk = N < NC ? (N + NR - 1) / NR * NR : NC;
  /* Packing buffers for this call, so pool == NULL callers may run several
   * GEMMs at once. Without memory for them, fall back to one micro-tile
   * per block in stack buffers: slow, but kernels cannot fail, and the
   * micro-kernel and K blocking (hence every result) stay the same. */
  float *Ap = alloc64((size_t)(mb_blk * kc_max) * sizeof(float));
  float *Bp = Bpre ? NULL : alloc64((size_t)(nc_blk * kc_max) * sizeof(float));
  float a_small[MR * KC] __attribute__((aligned(64)));
  float b_small[NR * KC] __attribute__((aligned(64)));
  if (!Ap || (!Bp && !Bpre)) {
    free(Ap);
    free(Bp);
    Ap = Bp = NULL;
    mb_blk = MR;
    if (!Bpre) nc_blk = NR;   /* a prepacked B keeps its own blocks */
  }
  gemm_job j = {.trans_a = trans_a, .trans_b = trans_b, .M = M, .N = N, .K = K,
                .alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb, .C = C, .ldc = ldc,
                .Ap = Ap ? Ap : a_small, .Bp = Bp ? Bp : b_small};
  int threads = kcpu_pool_size(pool);
  for (j.jc = 0; j.jc < N; j.jc += nc_blk) {
    j.nc = N - j.jc < nc_blk ? N - j.jc : nc_blk;
    int64_t slivers_b = (j.nc + NR - 1) / NR;
    for (j.pc = 0; j.pc < K; j.pc += kc_max) {
      j.kc = K - j.pc < kc_max ? K - j.pc : kc_max;
      j.beta_eff = j.pc == 0 ? beta : 1.0f;
      if (Bpre) j.Bp = (float *)Bpre + j.jc * K + j.pc * slivers_b * NR;   /* read only */
      else kcpu_parallel_for(pool, slivers_b, 16, pack_b, &j);
      for (j.ib = 0; j.ib < M; j.ib += mb_blk) {
        j.mb = M - j.ib < mb_blk ? M - j.ib : mb_blk;
        kcpu_parallel_for(pool, (j.mb + MR - 1) / MR, 16, pack_a, &j);
        int64_t tiles_m = (j.mb + MC - 1) / MC;
        int64_t want = (int64_t)threads * 4;
        int64_t tiles_n = tiles_m >= want ? 1 : (want + tiles_m - 1) / tiles_m;
        if (tiles_n > slivers_b) tiles_n = slivers_b;
        j.nw = ((slivers_b + tiles_n - 1) / tiles_n) * NR;
        j.tiles_n = (j.nc + j.nw - 1) / j.nw;
        /* A tile is worth a thread from about 2^17 multiply-adds. */
        int64_t flops_per_tile = MC * j.nw * j.kc;
        int64_t grain = flops_per_tile >= (1 << 17) ? 1 : (1 << 17) / flops_per_tile;
        kcpu_parallel_for(pool, tiles_m * j.tiles_n, grain, compute_tiles, &j);
      }
    }
  }
  free(Ap);
  free(Bp);
}

void kcpu_sgemm(kcpu_pool *pool, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc) {
  sgemm(pool, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, NULL, beta, C, ldc);
}

void kcpu_sgemm_packed(kcpu_pool *pool, int trans_a, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *Bp, float beta, float *C,
                       int64_t ldc) {
  sgemm(pool, trans_a, 0, M, N, K, alpha, A, lda, NULL, 0, Bp, beta, C, ldc);
}
