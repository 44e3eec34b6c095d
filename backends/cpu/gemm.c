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
 * micro-kernel keeps an MR x NR accumulator in registers; it is chosen per
 * instruction set (isa.c, KILN_CPU_ISA), and MR and NR, hence the packing,
 * follow it:
 *
 *   scalar   4 x 8,   plain loops: the reference
 *   avx2     6 x 16,  12 ymm accumulators (AVX2 + FMA)
 *   avx512   12 x 32, 24 zmm accumulators (AVX-512F); 8 x 32 where it pads
 *            M less (kcpu_gemm_kernel_for; same bits)
 *   neon     8 x 12,  24 q accumulators (aarch64)
 *
 * The SIMD ones are one source, gemm-kernel.h, instantiated per ISA with
 * its own vector width and tile. "avx512 tile on avx2" is the AVX-512 one
 * compiled for AVX2, for tests on machines without AVX-512.
 *
 * A B that several GEMMs multiply (an RNN's weight, once per time step) can
 * be packed once, whole, by kcpu_sgemm_pack_b and passed to
 * kcpu_sgemm_packed: its blocks lie in the order the loops below visit
 * them, block (jc, pc) at Bp + jc * K + pc * (its padded width). Packing
 * is a copy, so the results are those of kcpu_sgemm.
 *
 * Determinism: every C element is sum over K blocks in order of
 * (sum over k in order of a*b), computed by one thread. Tiling across
 * threads only decides which thread computes it, so for one kernel results
 * do not depend on the pool or its size. Kernels differ in rounding (FMA
 * or not), not in order.
 */
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"

#define KC 384      /* most depth of one packed block */
#define MC 96       /* rows of one compute tile (a multiple of every MR) */
#define MB 1536     /* rows of A packed at once (a multiple of MC) */
#define NC 3072     /* columns of one packed B panel (a multiple of every NR) */


/* The reference: plain loops, no vector types, baseline ISA. */
#define SC_MR 4
#define SC_NR 8
_Static_assert(MC % SC_MR == 0 && NC % SC_NR == 0, "compute tiles and B panels are whole tiles");
static void micro_scalar(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                         float *restrict acc, int store, float *restrict C, int64_t ldc) {
  float c[SC_MR][SC_NR];
  for (int i = 0; i < SC_MR; i++)
    for (int j = 0; j < SC_NR; j++) c[i][j] = 0.0f;
  for (int64_t k = 0; k < kc; k++)
    for (int i = 0; i < SC_MR; i++)
      for (int j = 0; j < SC_NR; j++) c[i][j] += Ap[k * SC_MR + i] * Bp[k * SC_NR + j];
  for (int i = 0; i < SC_MR; i++)
    for (int j = 0; j < SC_NR; j++) {
      if (store == 0) acc[i * SC_NR + j] = c[i][j];
      else if (store == 1) C[i * ldc + j] = c[i][j];
      else C[i * ldc + j] += c[i][j];
    }
}

#if defined(__x86_64__)
#define GK_NAME micro_avx2
#define GK_ATTR __attribute__((target("avx2,fma") KCPU_FP_CONTRACT))
#define GK_VBYTES 32
#define GK_MR 6
#define GK_NR 16
#include "gemm-kernel.h"

#define GK_NAME micro_avx512
#define GK_ATTR __attribute__((target("avx512f,avx2,fma") KCPU_FP_CONTRACT))
#define GK_VBYTES 64
#define GK_MR 12
#define GK_NR 32
#include "gemm-kernel.h"

/* The same width with 8 rows: for M = 32 or 64 (a CNN's output channels),
 * where 12-row slivers compute 36 or 72 rows. Same order of sums, so the
 * same bits as the 12-row tile. */
#define GK_NAME micro_avx512_8
#define GK_ATTR __attribute__((target("avx512f,avx2,fma") KCPU_FP_CONTRACT))
#define GK_VBYTES 64
#define GK_MR 8
#define GK_NR 32
#include "gemm-kernel.h"

#define GK_NAME micro_avx512_on_avx2
#define GK_ATTR __attribute__((target("avx2,fma") KCPU_FP_CONTRACT))
#define GK_VBYTES 64
#define GK_MR 12
#define GK_NR 32
#include "gemm-kernel.h"
#endif

#if defined(__aarch64__)
#define GK_NAME micro_neon
#define GK_ATTR __attribute__((unused KCPU_FP_CONTRACT))
#define GK_VBYTES 16
#define GK_MR 8
#define GK_NR 12
#include "gemm-kernel.h"
#endif

static const kcpu_gemm_kernel kernels[] = {
    {"scalar 4x8", KCPU_ISA_SCALAR, SC_MR, SC_NR, micro_scalar},
#if defined(__x86_64__)
    {"avx2 6x16", KCPU_ISA_AVX2, 6, 16, micro_avx2},
    {"avx512 12x32", KCPU_ISA_AVX512, 12, 32, micro_avx512},
    {"avx512 8x32", KCPU_ISA_AVX512, 8, 32, micro_avx512_8},
    {"avx512 tile on avx2 12x32", KCPU_ISA_AVX2, 12, 32, micro_avx512_on_avx2},
#endif
#if defined(__aarch64__)
    {"neon 8x12", KCPU_ISA_NEON, 8, 12, micro_neon},
#endif
};
#define N_KERNELS (int)(sizeof kernels / sizeof kernels[0])

const kcpu_gemm_kernel *kcpu_gemm_kernels(int *count) {
  *count = N_KERNELS;
  return kernels;
}

const kcpu_gemm_kernel *kcpu_gemm_kernel_of(kcpu_isa isa) {
  for (int i = 0; i < N_KERNELS; i++)   /* the first of an ISA is its own */
    if (kernels[i].isa == isa) return &kernels[i];
  return &kernels[0];
}

/* The kernel of isa for a product with M rows: among the ISA's kernels of
 * its own NR (so B's packing stays the same), the one that pads M the
 * least, the ISA's own on ties. All sum in the same order, so the choice
 * changes speed, never bits. Measured on an AVX-512 EPYC, 1 thread: at
 * M = 64 the 8-row tile ran 83-95 GFLOP/s where the 12-row one ran 71-89
 * (it computes 72 rows); at 1024 the two were within 1%. */
const kcpu_gemm_kernel *kcpu_gemm_kernel_for(kcpu_isa isa, int64_t M) {
  const kcpu_gemm_kernel *own = kcpu_gemm_kernel_of(isa), *best = own;
  int64_t best_rows = (M + own->mr - 1) / own->mr * own->mr;
  for (int i = 0; i < N_KERNELS; i++) {
    const kcpu_gemm_kernel *k = &kernels[i];
    if (k->isa != isa || k->nr != own->nr) continue;
    int64_t rows = (M + k->mr - 1) / k->mr * k->mr;
    if (rows < best_rows) best = k, best_rows = rows;
  }
  return best;
}

/* C[m, n] (leading dimension ldc) = alpha * acc + beta * C, acc's rows nr
 * apart; beta == 0 does not read C. */
static void store_tile(float *C, int64_t ldc, int m, int n, const float *acc, int nr, float alpha,
                       float beta) {
  for (int i = 0; i < m; i++) {
    float *c = C + i * ldc;
    const float *a = acc + i * nr;
    if (beta == 0.0f)
      for (int j = 0; j < n; j++) c[j] = alpha * a[j];
    else
      for (int j = 0; j < n; j++) c[j] = alpha * a[j] + beta * c[j];
  }
}

typedef struct gemm_job {
  const kcpu_gemm_kernel *gk;
  int mr, nr;                 /* gk's tile */
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
  int64_t slivers_m, slivers_n;   /* of the current block */
  int64_t units_m, units_n;       /* its parallel units: a grid over the slivers */
  int pack_a_in_units;            /* each unit packs its own A slivers first */
} gemm_job;

/* Packs rows [ib + s*mr, +mr) of op(A)[:, pc:pc+kc] for slivers [s0, s1). */
/* dst[k * MR + r] = src[r * lda + k]: a whole sliver of an untransposed A,
 * k outermost so the writes are sequential. MR is a constant at each call
 * (the compiler unrolls r); with the run-time MR of the general loop below
 * the writes were strided scatters, 6-9% of an LSTM or GPT step. */
static inline __attribute__((always_inline)) void pack_a_rows(float *restrict dst,
                                                              const float *restrict src,
                                                              int64_t lda, int64_t kc, int MR) {
  for (int64_t k = 0; k < kc; k++)
    for (int r = 0; r < MR; r++) dst[k * MR + r] = src[r * lda + k];
}

static void pack_a(void *arg, int64_t s0, int64_t s1) {
  const gemm_job *j = arg;
  const int mr = j->mr;
  for (int64_t s = s0; s < s1; s++) {
    float *dst = j->Ap + s * mr * j->kc;
    int64_t i0 = j->ib + s * mr;
    int rows = (int)(j->ib + j->mb - i0 < mr ? j->ib + j->mb - i0 : mr);
    if (!j->trans_a && rows == mr && (mr == 4 || mr == 6 || mr == 8 || mr == 12)) {
      const float *src = j->A + i0 * j->lda + j->pc;
      switch (mr) {
        case 4: pack_a_rows(dst, src, j->lda, j->kc, 4); break;
        case 6: pack_a_rows(dst, src, j->lda, j->kc, 6); break;
        case 8: pack_a_rows(dst, src, j->lda, j->kc, 8); break;
        default: pack_a_rows(dst, src, j->lda, j->kc, 12); break;
      }
      continue;
    }
    if (!j->trans_a) {
      for (int r = 0; r < rows; r++) {
        const float *src = j->A + (i0 + r) * j->lda + j->pc;
        for (int64_t k = 0; k < j->kc; k++) dst[k * mr + r] = src[k];
      }
    } else {
      for (int64_t k = 0; k < j->kc; k++) {
        const float *src = j->A + (j->pc + k) * j->lda + i0;
        for (int r = 0; r < rows; r++) dst[k * mr + r] = src[r];
      }
    }
    for (int r = rows; r < mr; r++)
      for (int64_t k = 0; k < j->kc; k++) dst[k * mr + r] = 0.0f;
  }
}

/* Packs columns [jc + s*nr, +nr) of op(B)[pc:pc+kc, :] for slivers [s0, s1).
 * An untransposed B is read row by row, k outermost, each row once across
 * all the slivers: sliver by sliver, the reads were 64 bytes from each of
 * kc rows ldb apart (at N = 1024 every read another page and the same L1
 * set), about 1 GB/s and 10% of an sgemm 1024. */
static void pack_b(void *arg, int64_t s0, int64_t s1) {
  const gemm_job *j = arg;
  const int nr = j->nr;
  if (!j->trans_b) {
    for (int64_t k = 0; k < j->kc; k++) {
      const float *src = j->B + (j->pc + k) * j->ldb + j->jc;
      for (int64_t s = s0; s < s1; s++) {
        float *d = j->Bp + s * nr * j->kc + k * nr;
        const float *r = src + s * nr;
        int64_t left = j->nc - s * nr;
        if (left >= nr) {
          for (int c = 0; c < nr; c++) d[c] = r[c];
        } else {
          int c = 0;
          for (; c < left; c++) d[c] = r[c];
          for (; c < nr; c++) d[c] = 0.0f;
        }
      }
    }
    return;
  }
  for (int64_t s = s0; s < s1; s++) {
    float *dst = j->Bp + s * nr * j->kc;
    int64_t j0 = j->jc + s * nr;
    int cols = (int)(j->jc + j->nc - j0 < nr ? j->jc + j->nc - j0 : nr);
    for (int c = 0; c < cols; c++) {
      const float *src = j->B + (j0 + c) * j->ldb + j->pc;
      for (int64_t k = 0; k < j->kc; k++) dst[k * nr + c] = src[k];
    }
    for (int c = cols; c < nr; c++)
      for (int64_t k = 0; k < j->kc; k++) dst[k * nr + c] = 0.0f;
  }
}

/* Runs parallel units [u0, u1). Unit u is cell (u / units_n, u % units_n)
 * of a grid over the block's MR-row and NR-column slivers, cut as evenly as
 * whole slivers allow; its rows go in sub-blocks of at most MC (the A rows
 * one B sliver meets in turn, kept in L2), again cut evenly. */
static void compute_tiles(void *arg, int64_t u0, int64_t u1) {
  const gemm_job *j = arg;
  const int mr = j->mr, nr = j->nr;
  const kcpu_micro_fn micro = j->gk->micro;
  float acc[KCPU_MR_MAX * KCPU_NR_MAX] __attribute__((aligned(64)));
  for (int64_t u = u0; u < u1; u++) {
    int64_t um = u / j->units_n, un = u % j->units_n;
    int64_t s0 = um * j->slivers_m / j->units_m, s1 = (um + 1) * j->slivers_m / j->units_m;
    int64_t c0 = un * j->slivers_n / j->units_n * nr;
    int64_t c1 = (un + 1) * j->slivers_n / j->units_n * nr;
    if (c1 > j->nc) c1 = j->nc;
    if (j->pack_a_in_units) pack_a(arg, s0, s1);
    int64_t subs = ((s1 - s0) * mr + MC - 1) / MC;
    for (int64_t sb = 0; sb < subs; sb++) {
      int64_t r0 = (s0 + sb * (s1 - s0) / subs) * mr;
      int64_t r1 = (s0 + (sb + 1) * (s1 - s0) / subs) * mr;
      if (r1 > j->mb) r1 = j->mb;
      for (int64_t jr = c0; jr < c1; jr += nr) {
        const float *bp = j->Bp + (jr / nr) * nr * j->kc;
        int n = (int)(c1 - jr < nr ? c1 - jr : nr);
        for (int64_t ir = r0; ir < r1; ir += mr) {
          const float *ap = j->Ap + (ir / mr) * mr * j->kc;
          int m = (int)(r1 - ir < mr ? r1 - ir : mr);
          float *c = j->C + (j->ib + ir) * j->ldc + j->jc + jr;
          if (m == mr && n == nr && j->alpha == 1.0f &&
              (j->beta_eff == 0.0f || j->beta_eff == 1.0f)) {
            micro(j->kc, ap, bp, acc, j->beta_eff == 0.0f ? 1 : 2, c, j->ldc);
          } else {
            micro(j->kc, ap, bp, acc, 0, NULL, 0);
            store_tile(c, j->ldc, m, n, acc, nr, j->alpha, j->beta_eff);
          }
        }
      }
    }
  }
}

/* Cuts a block of sm x sn micro-tiles into units_m x units_n parallel
 * units for `threads` threads. The pool hands units out one at a time, so
 * the block takes about (units / threads, rounded up) x (the largest unit's
 * micro-tiles): the grid is chosen to make that smallest, among grids of
 * k * threads units (k = 1..4; more units let a thread that was slowed by
 * the machine give work away, so ties go to the larger k; k is capped so
 * that a unit keeps about 2^16 multiply-adds). Fixed MC-row
 * tiles had 11 tiles for 1024 rows (MR 12), handed out as 6 chunks of up
 * to 2 on 2 threads: one thread did 576 rows, the other 448. */
static void choose_units(int threads, int64_t sm, int64_t sn, int64_t macs, int64_t *units_m,
                         int64_t *units_n) {
  *units_m = *units_n = 1;
  if (threads <= 1) return;
  int64_t best = INT64_MAX;
  int64_t k_max = macs / ((int64_t)threads << 16);
  for (int k = k_max < 4 ? (k_max < 1 ? 1 : (int)k_max) : 4; k >= 1; k--) {
    int64_t units = (int64_t)k * threads;
    for (int64_t m = units; m >= 1; m--) {   /* ties: more row units, each A block meets all of B */
      if (units % m || m > sm || units / m > sn) continue;
      int64_t n = units / m;
      int64_t cost = (int64_t)k * ((sm + m - 1) / m) * ((sn + n - 1) / n);
      if (cost < best) {
        best = cost;
        *units_m = m;
        *units_n = n;
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

int64_t kcpu_sgemm_packed_b_floats_with(const kcpu_gemm_kernel *gk, int64_t N, int64_t K) {
  return (N + gk->nr - 1) / gk->nr * gk->nr * K;
}

void kcpu_sgemm_pack_b_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_b, int64_t N,
                            int64_t K, const float *B, int64_t ldb, float *Bp) {
  if (N <= 0 || K <= 0) return;
  const int nr = gk->nr;
  int64_t k_blocks = (K + KC - 1) / KC;
  int64_t kc_max = (K + k_blocks - 1) / k_blocks;
  int64_t nc_blk = N < NC ? (N + nr - 1) / nr * nr : NC;
  gemm_job j = {.gk = gk, .mr = gk->mr, .nr = nr, .trans_b = trans_b, .N = N, .K = K, .B = B,
                .ldb = ldb};
  for (j.jc = 0; j.jc < N; j.jc += nc_blk) {
    j.nc = N - j.jc < nc_blk ? N - j.jc : nc_blk;
    int64_t slivers_b = (j.nc + nr - 1) / nr;
    for (j.pc = 0; j.pc < K; j.pc += kc_max) {
      j.kc = K - j.pc < kc_max ? K - j.pc : kc_max;
      j.Bp = Bp + j.jc * K + j.pc * slivers_b * nr;
      kcpu_parallel_for(pool, slivers_b, 16, pack_b, &j);
    }
  }
}

/* A packed whole: the blocks (ib, pc) that sgemm_core packs one at a
 * time, block (ib, pc) at Ap + ib * K + pc * (its rows padded to mr). The
 * row blocks and K blocks depend only on M, K and the kernel. */
int64_t kcpu_sgemm_packed_a_floats_with(const kcpu_gemm_kernel *gk, int64_t M, int64_t K) {
  return (M + gk->mr - 1) / gk->mr * gk->mr * K;
}

static int64_t a_block_rows(const kcpu_gemm_kernel *gk, int64_t M) {
  return M < MB ? (M + gk->mr - 1) / gk->mr * gk->mr : MB;
}

void kcpu_sgemm_pack_a_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_a, int64_t M,
                            int64_t K, const float *A, int64_t lda, float *Ap) {
  if (M <= 0 || K <= 0) return;
  const int mr = gk->mr;
  int64_t k_blocks = (K + KC - 1) / KC;
  int64_t kc_max = (K + k_blocks - 1) / k_blocks;
  int64_t mb_blk = a_block_rows(gk, M);
  gemm_job j = {.gk = gk, .mr = mr, .nr = gk->nr, .trans_a = trans_a, .M = M, .K = K, .A = A,
                .lda = lda};
  for (j.ib = 0; j.ib < M; j.ib += mb_blk) {
    j.mb = M - j.ib < mb_blk ? M - j.ib : mb_blk;
    int64_t slivers = (j.mb + mr - 1) / mr;
    for (j.pc = 0; j.pc < K; j.pc += kc_max) {
      j.kc = K - j.pc < kc_max ? K - j.pc : kc_max;
      j.Ap = Ap + j.ib * K + j.pc * slivers * mr;
      kcpu_parallel_for(pool, slivers, 16, pack_a, &j);
    }
  }
}

/* kcpu_sgemm_with, with A packed beforehand when Apre is not NULL. */
static void sgemm_core(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_a, int trans_b,
                       int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                       const float *Apre, const float *B, int64_t ldb, const float *Bpre,
                       float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const int mr = gk->mr, nr = gk->nr;
  int64_t k_blocks = (K + KC - 1) / KC;
  int64_t kc_max = (K + k_blocks - 1) / k_blocks;
  int64_t mb_blk = a_block_rows(gk, M);
  int64_t nc_blk = N < NC ? (N + nr - 1) / nr * nr : NC;
  /* Packing buffers for this call, so pool == NULL callers may run several
   * GEMMs at once. Without memory for them, fall back to one micro-tile
   * per block in stack buffers: slow, but kernels cannot fail, and the
   * micro-kernel and K blocking (hence every result) stay the same. */
  float *Ap = Apre ? NULL : alloc64((size_t)(mb_blk * kc_max) * sizeof(float));
  float *Bp = Bpre ? NULL : alloc64((size_t)(nc_blk * kc_max) * sizeof(float));
  float a_small[KCPU_MR_MAX * KC] __attribute__((aligned(64)));
  float b_small[KCPU_NR_MAX * KC] __attribute__((aligned(64)));
  if ((!Ap && !Apre) || (!Bp && !Bpre)) {
    free(Ap);
    free(Bp);
    Ap = Bp = NULL;
    if (!Apre) mb_blk = mr;   /* a prepacked operand keeps its own blocks */
    if (!Bpre) nc_blk = nr;
  }
  gemm_job j = {.gk = gk, .mr = mr, .nr = nr, .trans_a = trans_a, .trans_b = trans_b, .M = M,
                .N = N, .K = K, .alpha = alpha, .A = A, .lda = lda, .B = B, .ldb = ldb, .C = C,
                .ldc = ldc, .Ap = Ap ? Ap : a_small, .Bp = Bp ? Bp : b_small};
  int threads = kcpu_pool_size(pool);
  for (j.jc = 0; j.jc < N; j.jc += nc_blk) {
    j.nc = N - j.jc < nc_blk ? N - j.jc : nc_blk;
    int64_t slivers_b = (j.nc + nr - 1) / nr;
    for (j.pc = 0; j.pc < K; j.pc += kc_max) {
      j.kc = K - j.pc < kc_max ? K - j.pc : kc_max;
      j.beta_eff = j.pc == 0 ? beta : 1.0f;
      if (Bpre) j.Bp = (float *)Bpre + j.jc * K + j.pc * slivers_b * nr;   /* read only */
      else kcpu_parallel_for(pool, slivers_b, 16, pack_b, &j);
      for (j.ib = 0; j.ib < M; j.ib += mb_blk) {
        j.mb = M - j.ib < mb_blk ? M - j.ib : mb_blk;
        j.slivers_m = (j.mb + mr - 1) / mr;
        j.slivers_n = slivers_b;
        /* Under about 2^18 multiply-adds a block is not worth a second thread. */
        int64_t macs = j.mb * j.nc * j.kc;
        choose_units(macs < (1 << 18) ? 1 : threads, j.slivers_m, j.slivers_n, macs, &j.units_m,
                     &j.units_n);
        /* Units that own whole rows pack their own A: one hand-off fewer,
         * and the slivers are still in the core's cache when used. */
        j.pack_a_in_units = !Apre && j.units_n == 1;
        if (Apre) j.Ap = (float *)Apre + j.ib * K + j.pc * ((j.mb + mr - 1) / mr * mr);
        else if (!j.pack_a_in_units) kcpu_parallel_for(pool, j.slivers_m, 16, pack_a, &j);
        kcpu_parallel_for(pool, j.units_m * j.units_n, 1, compute_tiles, &j);
      }
    }
  }
  free(Ap);
  free(Bp);
}

void kcpu_sgemm_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_a, int trans_b,
                     int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                     const float *B, int64_t ldb, const float *Bpre, float beta, float *C,
                     int64_t ldc) {
  sgemm_core(gk, pool, trans_a, trans_b, M, N, K, alpha, A, lda, NULL, B, ldb, Bpre, beta, C, ldc);
}

void kcpu_sgemm_apacked_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int64_t M, int64_t N,
                             int64_t K, float alpha, const float *Ap, int trans_b, const float *B,
                             int64_t ldb, float beta, float *C, int64_t ldc) {
  sgemm_core(gk, pool, 0, trans_b, M, N, K, alpha, NULL, 0, Ap, B, ldb, NULL, beta, C, ldc);
}

/* ---- the kernel of kcpu_isa_active --------------------------------------- */

int64_t kcpu_sgemm_kc(void) { return KC; }

int64_t kcpu_sgemm_packed_a_floats(int64_t M, int64_t K) {
  return kcpu_sgemm_packed_a_floats_with(kcpu_gemm_kernel_for(kcpu_isa_active, M), M, K);
}

void kcpu_sgemm_pack_a(kcpu_pool *pool, int trans_a, int64_t M, int64_t K, const float *A,
                       int64_t lda, float *Ap) {
  kcpu_sgemm_pack_a_with(kcpu_gemm_kernel_for(kcpu_isa_active, M), pool, trans_a, M, K, A, lda,
                         Ap);
}

void kcpu_sgemm_apacked(kcpu_pool *pool, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *Ap, int trans_b, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc) {
  kcpu_sgemm_apacked_with(kcpu_gemm_kernel_for(kcpu_isa_active, M), pool, M, N, K, alpha, Ap,
                          trans_b, B, ldb, beta, C, ldc);
}

int64_t kcpu_sgemm_packed_b_floats(int64_t N, int64_t K) {
  return kcpu_sgemm_packed_b_floats_with(kcpu_gemm_kernel_of(kcpu_isa_active), N, K);
}

void kcpu_sgemm_pack_b(kcpu_pool *pool, int trans_b, int64_t N, int64_t K, const float *B,
                       int64_t ldb, float *Bp) {
  kcpu_sgemm_pack_b_with(kcpu_gemm_kernel_of(kcpu_isa_active), pool, trans_b, N, K, B, ldb, Bp);
}

void kcpu_sgemm(kcpu_pool *pool, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc) {
  kcpu_sgemm_with(kcpu_gemm_kernel_for(kcpu_isa_active, M), pool, trans_a, trans_b, M, N, K, alpha,
                  A, lda, B, ldb, NULL, beta, C, ldc);
}

void kcpu_sgemm_packed(kcpu_pool *pool, int trans_a, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *Bp, float beta, float *C,
                       int64_t ldc) {
  kcpu_sgemm_with(kcpu_gemm_kernel_for(kcpu_isa_active, M), pool, trans_a, 0, M, N, K, alpha, A,
                  lda, NULL, 0, Bp, beta, C, ldc);
}

/* ---- packing done by the caller ------------------------------------------
 * For callers that produce op(B) themselves (a convolution's im2col) and can
 * write it straight into the packed layout instead of into a matrix that is
 * then packed: the layout is kcpu_sgemm_pack_b_with's (panels of NC columns,
 * each cut into the K blocks, each block into slivers of nr columns, rows nr
 * floats apart), and kcpu_sgemm_packed / kcpu_sgemm_abpacked compute what
 * kcpu_sgemm would from the same op(B), bit for bit. */

int kcpu_sgemm_nr(void) { return kcpu_gemm_kernel_of(kcpu_isa_active)->nr; }

int64_t kcpu_sgemm_k_block(int64_t K) {
  int64_t k_blocks = (K + KC - 1) / KC;
  return (K + k_blocks - 1) / k_blocks;
}

int64_t kcpu_sgemm_packed_b_sliver(int64_t N, int64_t K, int64_t k, int64_t j, int64_t *k_end) {
  const int nr = kcpu_gemm_kernel_of(kcpu_isa_active)->nr;
  int64_t k_blocks = (K + KC - 1) / KC;
  int64_t kc_max = (K + k_blocks - 1) / k_blocks;
  int64_t nc_blk = N < NC ? (N + nr - 1) / nr * nr : NC;
  int64_t jc = j / nc_blk * nc_blk, nc = N - jc < nc_blk ? N - jc : nc_blk;
  int64_t pc = k / kc_max * kc_max, kc = K - pc < kc_max ? K - pc : kc_max;
  int64_t slivers_b = (nc + nr - 1) / nr;
  *k_end = pc + kc;
  return jc * K + pc * slivers_b * nr + (j - jc) / nr * nr * kc + (k - pc) * nr + (j - jc) % nr;
}

void kcpu_sgemm_abpacked(kcpu_pool *pool, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *Ap, const float *Bp, float beta, float *C, int64_t ldc) {
  sgemm_core(kcpu_gemm_kernel_for(kcpu_isa_active, M), pool, 0, 0, M, N, K, alpha, NULL, 0, Ap,
             NULL, 0, Bp, beta, C, ldc);
}
