/*
 * gemm_check.c - a standalone check of the CPU plugin's GEMM micro-kernels,
 * for cross builds run under an emulator (tools/cross/neon-check): every
 * kernel this build has and the machine runs, against the scalar kernel
 * and a double-precision product, all four transpose cases, alpha/beta
 * cases and sizes around the tiles and K blocks. Bound, with S the terms'
 * magnitude |alpha| sum_k |a b| + |beta c|: 1e-5 S (as tests/test_cpu_isa.c).
 * Prints one line per kernel; exits 1 on any mismatch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"

const kiln_host_api *kcpu_host;   /* isa.c's errors; unused here */

static float urand(uint64_t *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)((*s >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

static float at(const float *X, int64_t ld, int t, int64_t i, int64_t k) {
  return t ? X[k * ld + i] : X[i * ld + k];
}

int main(void) {
  static const int64_t sizes[][3] = {{1, 1, 1},    {3, 1, 7},     {5, 7, 3},      {13, 33, 17},
                                     {31, 50, 97}, {50, 31, 385}, {97, 130, 33},  {24, 64, 11},
                                     {8, 12, 40},  {16, 36, 800}, {100, 3100, 9}};
  static const float alphas[] = {1.0f, 1.0f, 0.5f}, betas[] = {0.0f, 1.0f, -0.25f};
  int nk, bad = 0;
  const kcpu_gemm_kernel *ks = kcpu_gemm_kernels(&nk);
  for (int k = 0; k < nk; k++) {
    char why[160];
    if (!kcpu_isa_usable(ks[k].isa, why, sizeof why)) {
      printf("%-28s skipped: %s\n", ks[k].name, why);
      continue;
    }
    long checked = 0;
    double worst = 0;   /* largest |err| / bound */
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
      for (int t = 0; t < 4; t++)
        for (int ab = 0; ab < 3; ab++) {
          int64_t M = sizes[si][0], N = sizes[si][1], K = sizes[si][2];
          int ta = t & 1, tb = t >> 1;
          int64_t lda = ta ? M : K, ldb = tb ? K : N;
          float *A = malloc((size_t)(M * K) * 4), *B = malloc((size_t)(K * N) * 4);
          float *C0 = malloc((size_t)(M * N) * 4), *Cs = malloc((size_t)(M * N) * 4),
                *Ck = malloc((size_t)(M * N) * 4);
          uint64_t seed = si * 16 + (uint64_t)t * 4 + (uint64_t)ab + 1;
          for (int64_t i = 0; i < M * K; i++) A[i] = urand(&seed);
          for (int64_t i = 0; i < K * N; i++) B[i] = urand(&seed);
          for (int64_t i = 0; i < M * N; i++) C0[i] = urand(&seed);
          memcpy(Cs, C0, (size_t)(M * N) * 4);
          memcpy(Ck, C0, (size_t)(M * N) * 4);
          kcpu_sgemm_with(&ks[0], NULL, ta, tb, M, N, K, alphas[ab], A, lda, B, ldb, NULL,
                          betas[ab], Cs, N);
          kcpu_sgemm_with(&ks[k], NULL, ta, tb, M, N, K, alphas[ab], A, lda, B, ldb, NULL,
                          betas[ab], Ck, N);
          for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
              double s = 0, m = 0;
              for (int64_t q = 0; q < K; q++) {
                double p = (double)at(A, lda, ta, i, q) * at(B, ldb, tb, q, j);
                s += p;
                m += fabs(p);
              }
              double c = betas[ab] == 0.0f ? 0 : (double)betas[ab] * C0[i * N + j];
              double ref = alphas[ab] * s + c, bound = 1e-5 * (fabs(alphas[ab]) * m + fabs(c));
              double e1 = fabs(Ck[i * N + j] - ref), e2 = fabs(Ck[i * N + j] - Cs[i * N + j]);
              double r = (e1 > e2 ? e1 : e2) / (bound + 1e-30);
              if (r > worst) worst = r;
              if (r > 1.0 && bad++ < 5)
                printf("%s: M %lld N %lld K %lld trans %d%d: C[%lld, %lld] = %.9g, scalar %.9g, "
                       "double %.9g\n",
                       ks[k].name, (long long)M, (long long)N, (long long)K, ta, tb, (long long)i,
                       (long long)j, Ck[i * N + j], Cs[i * N + j], ref);
              checked++;
            }
          free(A), free(B), free(C0), free(Cs), free(Ck);
        }
    printf("%-28s %ld elements checked, worst error %.3f of the bound\n", ks[k].name, checked,
           worst);
  }
  printf(bad ? "FAIL: %d elements out of bounds\n" : "ok\n", bad);
  return bad ? 1 : 0;
}
