/*
 * gemm-kernel.h - the SIMD GEMM micro-kernel, one instantiation per include.
 * gemm.c defines, then includes this file:
 *
 *   GK_NAME     the function's name
 *   GK_ATTR     its attributes (the target ISA, e.g. target("avx2,fma"))
 *   GK_VBYTES   vector width in bytes (16 NEON, 32 AVX2, 64 AVX-512)
 *   GK_MR       micro-tile rows
 *   GK_NR       micro-tile columns (a multiple of GK_VBYTES / 4)
 *
 * Contract (kcpu_micro_fn): P[MR][NR] = Ap [kc, MR] x Bp [kc, NR], then
 * store 0: acc = P; 1: C[MR, NR] = P; 2: C[MR, NR] += P (the full-tile
 * cases with alpha 1 and beta 0 or 1: exact copies and single adds, so they
 * round as gemm.c's store_tile would). Bp and acc are GK_VBYTES aligned; C
 * need not be. The MR x NR/VW accumulators stay in vector registers (GCC
 * vector extensions: the code is the same for every ISA, only the width
 * and tile change); a wider vector than the target has (64 bytes under
 * AVX2) is split by GCC into several registers.
 */
#define GK_CAT_(a, b) a##b
#define GK_CAT(a, b) GK_CAT_(a, b)
#define GK_V GK_CAT(GK_NAME, _v)
#define GK_VW (GK_VBYTES / 4)
#define GK_NV (GK_NR / GK_VW)

_Static_assert(GK_NR % (GK_VBYTES / 4) == 0, "the tile is whole vectors wide");
_Static_assert(MC % GK_MR == 0 && NC % GK_NR == 0, "compute tiles and B panels are whole tiles");
_Static_assert(GK_MR <= KCPU_MR_MAX && GK_NR <= KCPU_NR_MAX, "the tile fits gemm.c's buffers");

typedef float GK_V __attribute__((vector_size(GK_VBYTES), aligned(GK_VBYTES)));

GK_ATTR static void GK_NAME(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                            float *restrict acc, int store, float *restrict C, int64_t ldc) {
  GK_V c[GK_MR][GK_NV];
  for (int i = 0; i < GK_MR; i++)
    for (int v = 0; v < GK_NV; v++) c[i][v] = (GK_V){0};
  /* The C tile's lines are fetched while the products are summed: without
   * this its store (and store 2's load) waited on memory, and the kernel
   * took ~1.2x as long at sgemm 1024 (perf, avx2 6x16; docs/benchmarks.md).
   * One prefetch per 16 floats of a row and one at its end reach every
   * line it touches, whatever C's alignment. */
  if (store)
    for (int i = 0; i < GK_MR; i++) {
      for (int j = 0; j < GK_NR; j += 16) __builtin_prefetch(C + i * ldc + j, 1, 3);
      __builtin_prefetch(C + i * ldc + GK_NR - 1, 1, 3);
    }
  for (int64_t k = 0; k < kc; k++) {
    const float *restrict a = Ap + k * GK_MR;
    GK_V b[GK_NV];
    for (int v = 0; v < GK_NV; v++) b[v] = *(const GK_V *)(Bp + k * GK_NR + v * GK_VW);
    for (int i = 0; i < GK_MR; i++) {
      /* A scalar operand is broadcast straight from memory ({0} + a[i]
       * would cost an add first: 0 + x is not x for x = -0). */
      float s = a[i];
      for (int v = 0; v < GK_NV; v++) c[i][v] += s * b[v];
    }
  }
  if (store == 0) {
    for (int i = 0; i < GK_MR; i++)
      for (int v = 0; v < GK_NV; v++) *(GK_V *)(acc + i * GK_NR + v * GK_VW) = c[i][v];
    return;
  }
  for (int i = 0; i < GK_MR; i++) {
    for (int v = 0; v < GK_NV; v++) {
      GK_V x = c[i][v];
      if (store == 2) {
        GK_V old;
        memcpy(&old, C + i * ldc + v * GK_VW, sizeof old);
        x += old;
      }
      memcpy(C + i * ldc + v * GK_VW, &x, sizeof x);
    }
  }
}

#undef GK_V
#undef GK_VW
#undef GK_NV
#undef GK_NAME
#undef GK_ATTR
#undef GK_VBYTES
#undef GK_MR
#undef GK_NR
