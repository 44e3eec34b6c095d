/*
 * test_cpu_isa.c - the CPU plugin's per-ISA kernels against its scalar
 * reference, and KILN_CPU_ISA.
 *
 * gemm_kernels: gemm.c, threads.c, isa.c and alloc.c are compiled into this
 * binary (tests/CMakeLists.txt), so every GEMM micro-kernel of the build is
 * called directly through kcpu_sgemm_with, including "avx512 tile on avx2"
 * (the AVX-512 tile and code compiled for AVX2), which runs on machines
 * without AVX-512. A kernel the machine cannot run (kcpu_isa_usable) is
 * skipped; the test insists that on x86-64 with AVX2 the AVX2 kernel and the
 * AVX-512 tile were both compared, so it cannot pass by comparing nothing.
 *
 * Bounds, with S = |alpha| sum_k |a_ik b_kj| + |beta c_ij| (the magnitude of
 * the terms): every kernel within 1e-5 S of a double-precision reference,
 * and every SIMD kernel within 1e-5 S of the scalar kernel. For one kernel,
 * results are bitwise the same with a pool of 3 threads and with none, and
 * with B packed beforehand (kcpu_sgemm_pack_b_with) or not.
 *
 * isa: the plugin through its ABI (plugin_harness.h), reading KILN_CPU_ISA
 * at device open: scalar end to end against the default (matmul, tanh,
 * sigmoid, attention forward and backward, bounds below), and the errors
 * for an unknown value, an unavailable ISA, and two devices that disagree.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"
#include "plugin_harness.h"
#include "testutil.h"

/* isa.c names the host for its errors; only kcpu_isa_acquire uses it, and
 * this binary calls the plugin's own copy for that. */
const kiln_host_api *kcpu_host;

/* ---- GEMM kernels against the scalar kernel and double precision ---------- */

typedef struct gemm_case {
  int64_t M, N, K;
} gemm_case;

/* Sizes 1, odd, around every MR (4, 6, 8, 12) and NR (8, 12, 16, 32), K
 * past KC = 384 (two and three K blocks), M past MB = 1536, N past NC = 3072. */
static const gemm_case cases[] = {
    {1, 1, 1},     {1, 17, 5},    {3, 1, 7},      {5, 7, 3},      {13, 33, 17},
    {31, 50, 97},  {50, 31, 385}, {97, 130, 33},  {130, 97, 769}, {25, 70, 400},
    {12, 32, 64},  {24, 64, 11},  {257, 300, 129}, {1600, 9, 50}, {7, 3100, 20},
};

static const float alphas[] = {1.0f, 1.0f, 0.5f, -2.0f};
static const float betas[] = {0.0f, 1.0f, 0.25f, 0.0f};
#define N_AB 4

/* op(X)[i, k] of a row-major matrix with leading dimension ld. */
static float at(const float *X, int64_t ld, int t, int64_t i, int64_t k) {
  return t ? X[k * ld + i] : X[i * ld + k];
}

/* ref = alpha op(A) op(B) + beta C0 in double, and S, the terms' magnitude. */
static void ref_gemm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, const float *C0,
                     int64_t ldc, double *ref, double *S) {
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < N; j++) {
      double s = 0, m = 0;
      for (int64_t k = 0; k < K; k++) {
        double p = (double)at(A, lda, ta, i, k) * at(B, ldb, tb, k, j);
        s += p;
        m += fabs(p);
      }
      double c = beta == 0.0f ? 0.0 : (double)beta * C0[i * ldc + j];
      ref[i * N + j] = alpha * s + c;
      S[i * N + j] = fabs(alpha) * m + fabs(c);
    }
}

/* Runs kernel gk on one case; C is filled with c0 first (ldc = N + 2). */
static float *run_kernel(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int ta, int tb, gemm_case c,
                         float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                         float beta, const float *c0) {
  int64_t ldc = c.N + 2;
  float *C = malloc((size_t)(c.M * ldc) * sizeof *C);
  cr_assert(C);
  memcpy(C, c0, (size_t)(c.M * ldc) * sizeof *C);
  kcpu_sgemm_with(gk, pool, ta, tb, c.M, c.N, c.K, alpha, A, lda, B, ldb, NULL, beta, C, ldc);
  return C;
}

static int usable(const kcpu_gemm_kernel *gk) {
  char why[160];
  return kcpu_isa_usable(gk->isa, why, sizeof why);
}

Test(gemm_kernels, every_kernel_matches_scalar_and_double_reference) {
  int nk;
  const kcpu_gemm_kernel *ks = kcpu_gemm_kernels(&nk);
  cr_assert_eq(ks[0].isa, KCPU_ISA_SCALAR, "the first kernel is the scalar reference");
  int compared_avx2 = 0, compared_tile512 = 0;
  for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
    gemm_case c = cases[ci];
    for (int t = 0; t < 4; t++) {
      int ta = t & 1, tb = t >> 1;
      /* Leading dimensions larger than the rows, so strides are exercised. */
      int64_t lda = (ta ? c.M : c.K) + 3, ldb = (tb ? c.K : c.N) + 1, ldc = c.N + 2;
      int64_t a_rows = ta ? c.K : c.M, b_rows = tb ? c.N : c.K;
      float *A = malloc((size_t)(a_rows * lda) * sizeof *A);
      float *B = malloc((size_t)(b_rows * ldb) * sizeof *B);
      float *C0 = malloc((size_t)(c.M * ldc) * sizeof *C0);
      double *ref = malloc((size_t)(c.M * c.N) * sizeof *ref);
      double *S = malloc((size_t)(c.M * c.N) * sizeof *S);
      cr_assert(A && B && C0 && ref && S);
      tu_fill_uniform(A, a_rows * lda, 10 + ci * 4 + t, -1, 1);
      tu_fill_uniform(B, b_rows * ldb, 100 + ci * 4 + t, -1, 1);
      for (int ab = 0; ab < N_AB; ab++) {
        float alpha = alphas[ab], beta = betas[ab];
        tu_fill_uniform(C0, c.M * ldc, 1000 + ci * 16 + t * 4 + ab, -1, 1);
        if (beta == 0.0f)   /* beta 0 must not read C */
          for (int64_t i = 0; i < c.M * ldc; i++) C0[i] = NAN;
        ref_gemm(ta, tb, c.M, c.N, c.K, alpha, A, lda, B, ldb, beta, C0, ldc, ref, S);
        float *Cs = run_kernel(&ks[0], NULL, ta, tb, c, alpha, A, lda, B, ldb, beta, C0);
        for (int k = 0; k < nk; k++) {
          if (!usable(&ks[k])) continue;
          float *Ck = k ? run_kernel(&ks[k], NULL, ta, tb, c, alpha, A, lda, B, ldb, beta, C0) : Cs;
          for (int64_t i = 0; i < c.M; i++) {
            for (int64_t j = 0; j < c.N; j++) {
              double got = Ck[i * ldc + j], sc = Cs[i * ldc + j], r = ref[i * c.N + j];
              double bound = 1e-5 * S[i * c.N + j] + 1e-30;
              cr_assert(fabs(got - r) <= bound && fabs(got - sc) <= bound,
                        "%s, M %lld N %lld K %lld, trans %d%d, alpha %g beta %g: C[%lld, %lld] = "
                        "%.9g, scalar %.9g, double %.9g (bound %.3g)",
                        ks[k].name, (long long)c.M, (long long)c.N, (long long)c.K, ta, tb,
                        alpha, beta, (long long)i, (long long)j, got, sc, r, bound);
            }
            /* The padding past N (ldc = N + 2) is never written. */
            for (int64_t j = c.N; j < ldc; j++)
              cr_assert(memcmp(&Ck[i * ldc + j], &C0[i * ldc + j], sizeof(float)) == 0,
                        "%s wrote C[%lld, %lld], past N = %lld", ks[k].name, (long long)i,
                        (long long)j, (long long)c.N);
          }
          if (k) free(Ck);
          if (ks[k].micro != ks[0].micro && ks[k].isa == KCPU_ISA_AVX2) {
            if (ks[k].nr == 32) compared_tile512++;
            else compared_avx2++;
          }
        }
        free(Cs);
      }
      free(A), free(B), free(C0), free(ref), free(S);
    }
  }
#if defined(__x86_64__)
  char why[160];
  if (kcpu_isa_usable(KCPU_ISA_AVX2, why, sizeof why))
    cr_assert(compared_avx2 > 0 && compared_tile512 > 0,
              "with AVX2 here, the avx2 kernel (%d cases) and the AVX-512 tile on AVX2 (%d) must "
              "both have been compared",
              compared_avx2, compared_tile512);
#endif
}

/* The same bits with 3 threads as with none, and with B packed beforehand. */
Test(gemm_kernels, threads_and_prepacked_a_or_b_give_the_same_bits) {
  int nk;
  const kcpu_gemm_kernel *ks = kcpu_gemm_kernels(&nk);
  /* 3 and 2 threads: gemm.c cuts blocks into k * threads units. */
  kcpu_pool *pool = kcpu_pool_create(3), *pool2 = kcpu_pool_create(2);
  cr_assert(pool && pool2);
  /* 1601 rows: more than one packed block of A (MB = 1536). */
  static const gemm_case big[] = {{257, 300, 129}, {130, 97, 769}, {7, 3100, 20}, {5, 7, 3},
                                  {1601, 19, 401}, {64, 700, 300}, {300, 64, 1000}};
  for (size_t ci = 0; ci < sizeof big / sizeof big[0]; ci++) {
    gemm_case c = big[ci];
    for (int t = 0; t < 4; t++) {
      int ta = t & 1, tb = t >> 1;
      int64_t lda = ta ? c.M : c.K, ldb = tb ? c.K : c.N, ldc = c.N + 2;
      float *A = malloc((size_t)(c.M * c.K) * sizeof *A), *B = malloc((size_t)(c.K * c.N) * sizeof *B);
      float *C0 = calloc((size_t)(c.M * ldc), sizeof *C0);
      cr_assert(A && B && C0);
      tu_fill_uniform(A, c.M * c.K, 7 + ci, -1, 1);
      tu_fill_uniform(B, c.K * c.N, 77 + ci, -1, 1);
      tu_fill_uniform(C0, c.M * ldc, 777 + ci, -1, 1);
      for (int k = 0; k < nk; k++) {
        if (!usable(&ks[k])) continue;
        float *C1 = run_kernel(&ks[k], NULL, ta, tb, c, 1.0f, A, lda, B, ldb, 0.5f, C0);
        float *C3 = run_kernel(&ks[k], pool, ta, tb, c, 1.0f, A, lda, B, ldb, 0.5f, C0);
        cr_assert(memcmp(C1, C3, (size_t)(c.M * ldc) * sizeof *C1) == 0,
                  "%s: 1 and 3 threads differ (M %lld N %lld K %lld trans %d%d)", ks[k].name,
                  (long long)c.M, (long long)c.N, (long long)c.K, ta, tb);
        float *C2 = run_kernel(&ks[k], pool2, ta, tb, c, 1.0f, A, lda, B, ldb, 0.5f, C0);
        cr_assert(memcmp(C1, C2, (size_t)(c.M * ldc) * sizeof *C1) == 0,
                  "%s: 1 and 2 threads differ (M %lld N %lld K %lld trans %d%d)", ks[k].name,
                  (long long)c.M, (long long)c.N, (long long)c.K, ta, tb);
        free(C2);
        float *Bp = kcpu_aligned_alloc(
            64, (size_t)kcpu_sgemm_packed_b_floats_with(&ks[k], c.N, c.K) * sizeof *Bp);
        cr_assert(Bp);
        kcpu_sgemm_pack_b_with(&ks[k], pool, tb, c.N, c.K, B, ldb, Bp);
        memcpy(C3, C0, (size_t)(c.M * ldc) * sizeof *C3);
        kcpu_sgemm_with(&ks[k], pool, ta, 0, c.M, c.N, c.K, 1.0f, A, lda, NULL, 0, Bp, 0.5f, C3,
                        ldc);
        cr_assert(memcmp(C1, C3, (size_t)(c.M * ldc) * sizeof *C1) == 0,
                  "%s: prepacked B differs (M %lld N %lld K %lld trans %d%d)", ks[k].name,
                  (long long)c.M, (long long)c.N, (long long)c.K, ta, tb);
        float *Ap = kcpu_aligned_alloc(
            64, (size_t)kcpu_sgemm_packed_a_floats_with(&ks[k], c.M, c.K) * sizeof *Ap);
        cr_assert(Ap);
        kcpu_sgemm_pack_a_with(&ks[k], pool, ta, c.M, c.K, A, lda, Ap);
        memcpy(C3, C0, (size_t)(c.M * ldc) * sizeof *C3);
        kcpu_sgemm_apacked_with(&ks[k], pool, c.M, c.N, c.K, 1.0f, Ap, tb, B, ldb, 0.5f, C3, ldc);
        cr_assert(memcmp(C1, C3, (size_t)(c.M * ldc) * sizeof *C1) == 0,
                  "%s: prepacked A differs (M %lld N %lld K %lld trans %d%d)", ks[k].name,
                  (long long)c.M, (long long)c.N, (long long)c.K, ta, tb);
        free(Ap), free(Bp), free(C1), free(C3);
      }
      free(A), free(B), free(C0);
    }
  }
  kcpu_pool_destroy(pool);
  kcpu_pool_destroy(pool2);
}

/* kcpu_gemm_kernel_for: among an ISA's kernels of its own NR, the one that
 * pads M least (its own on ties); and those kernels give the same bits, so
 * the choice is free to follow M. */
Test(gemm_kernels, the_kernel_for_m_pads_least_and_gives_the_same_bits) {
  int nk;
  const kcpu_gemm_kernel *ks = kcpu_gemm_kernels(&nk);
#if defined(__x86_64__)
  static const struct { int64_t M; int mr; } want[] = {{64, 8}, {32, 8}, {1024, 8}, {1, 8},
                                                       {12, 12}, {24, 12}, {288, 12}, {100, 8}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    cr_assert_eq(kcpu_gemm_kernel_for(KCPU_ISA_AVX512, want[i].M)->mr, want[i].mr,
                 "avx512, M %lld: MR %d, expected %d", (long long)want[i].M,
                 kcpu_gemm_kernel_for(KCPU_ISA_AVX512, want[i].M)->mr, want[i].mr);
  cr_assert_eq(kcpu_gemm_kernel_for(KCPU_ISA_AVX2, 64)->mr, 6, "avx2 has one kernel of its NR");
#endif
  static const gemm_case shapes[] = {{64, 70, 300}, {33, 129, 17}, {97, 40, 801}};
  int compared = 0;
  for (int own = 0; own < nk; own++) {
    const kcpu_gemm_kernel *o = &ks[own];
    if (o != kcpu_gemm_kernel_of(o->isa) || !usable(o)) continue;
    for (int k = 0; k < nk; k++) {
      if (k == own || ks[k].isa != o->isa || ks[k].nr != o->nr) continue;
      for (size_t ci = 0; ci < sizeof shapes / sizeof shapes[0]; ci++) {
        gemm_case c = shapes[ci];
        float *A = malloc((size_t)(c.M * c.K) * sizeof *A);
        float *B = malloc((size_t)(c.K * c.N) * sizeof *B);
        float *C0 = calloc((size_t)(c.M * (c.N + 2)), sizeof *C0);
        cr_assert(A && B && C0);
        tu_fill_uniform(A, c.M * c.K, 5 + ci, -1, 1);
        tu_fill_uniform(B, c.K * c.N, 55 + ci, -1, 1);
        float *Co = run_kernel(o, NULL, 0, 1, c, 1.0f, A, c.K, B, c.K, 0.0f, C0);
        float *Ck = run_kernel(&ks[k], NULL, 0, 1, c, 1.0f, A, c.K, B, c.K, 0.0f, C0);
        cr_assert(memcmp(Co, Ck, (size_t)(c.M * (c.N + 2)) * sizeof *Co) == 0,
                  "%s and %s differ (M %lld N %lld K %lld)", o->name, ks[k].name, (long long)c.M,
                  (long long)c.N, (long long)c.K);
        compared++;
        free(A), free(B), free(C0), free(Co), free(Ck);
      }
    }
  }
  if (!compared) cr_log_info("no ISA with a second kernel is usable here; bits not compared");
}

/* ---- detection ------------------------------------------------------------ */

Test(isa, detection_agrees_with_the_compiler_runtime) {
  char why[160];
  cr_assert(kcpu_isa_usable(KCPU_ISA_SCALAR, why, sizeof why));
#if defined(__x86_64__)
  __builtin_cpu_init();
  int avx2 = kcpu_isa_usable(KCPU_ISA_AVX2, why, sizeof why);
  if (avx2)
    cr_assert(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  else
    cr_assert(strlen(why) > 0, "an unusable ISA says why");
  if (kcpu_isa_usable(KCPU_ISA_AVX512, why, sizeof why))
    cr_assert(avx2 && __builtin_cpu_supports("avx512f"));
  else
    cr_assert(strstr(why, "not present") || strstr(why, "does not enable"), "why: %s", why);
  cr_assert(!kcpu_isa_usable(KCPU_ISA_NEON, why, sizeof why));
  cr_assert(strstr(why, "aarch64"), "why: %s", why);
#elif defined(__aarch64__)
  cr_assert(kcpu_isa_usable(KCPU_ISA_NEON, why, sizeof why));
  cr_assert(!kcpu_isa_usable(KCPU_ISA_AVX2, why, sizeof why));
#endif
}

/* ---- the plugin with KILN_CPU_ISA ----------------------------------------- */

static ph_plugin P;

/* Opens the plugin with KILN_CPU_ISA = isa (NULL: unset); returns the status. */
static kiln_status open_isa(const char *isa) {
  setenv("KILN_NUM_THREADS", "2", 1);
  if (isa) setenv("KILN_CPU_ISA", isa, 1);
  else unsetenv("KILN_CPU_ISA");
  return ph_open(&P, NULL);
}

#define AT_B 2
#define AT_T 70     /* past one 64-key tile and two 32-query tiles */
#define AT_C 24
#define AT_H 3
#define MM_M 37
#define MM_K 300
#define MM_N 45
#define EW_N 1003   /* a partial 8-lane group at the end */

typedef struct e2e_out {
  float mm[MM_M * MM_N], th[EW_N], sg[EW_N];
  float gelu[2][EW_N], gelu_bw[2][EW_N];   /* [0] exact, [1] tanh form */
  float y[AT_B * AT_T * AT_C], dqkv[AT_B * AT_T * 3 * AT_C];
} e2e_out;

/* matmul, tanh, sigmoid, GELU (both forms, forward and backward), causal
 * attention and its backward, one graph. */
static void e2e_run(const char *isa, e2e_out *o) {
  cr_assert_eq(open_isa(isa), KILN_OK, "KILN_CPU_ISA=%s: %s", isa ? isa : "(unset)", ph_error());
  ph_graph g;
  ph_graph_init(&g, &P);
  int a = ph_tensor(&g, KILN_F32, 2, (int64_t[]){MM_M, MM_K});
  int b = ph_tensor(&g, KILN_F32, 2, (int64_t[]){MM_K, MM_N});
  int mm = ph_tensor(&g, KILN_F32, 2, (int64_t[]){MM_M, MM_N});
  int x = ph_tensor(&g, KILN_F32, 1, (int64_t[]){EW_N});
  int th = ph_tensor(&g, KILN_F32, 1, (int64_t[]){EW_N});
  int sg = ph_tensor(&g, KILN_F32, 1, (int64_t[]){EW_N});
  int gdy = ph_tensor(&g, KILN_F32, 1, (int64_t[]){EW_N}), ge[2], gb[2];
  for (int k = 0; k < 2; k++) {
    ge[k] = ph_tensor(&g, KILN_F32, 1, (int64_t[]){EW_N});
    gb[k] = ph_tensor(&g, KILN_F32, 1, (int64_t[]){EW_N});
  }
  int qkv = ph_tensor(&g, KILN_F32, 3, (int64_t[]){AT_B, AT_T, 3 * AT_C});
  int y = ph_tensor(&g, KILN_F32, 3, (int64_t[]){AT_B, AT_T, AT_C});
  int dy = ph_tensor(&g, KILN_F32, 3, (int64_t[]){AT_B, AT_T, AT_C});
  int dqkv = ph_tensor(&g, KILN_F32, 3, (int64_t[]){AT_B, AT_T, 3 * AT_C});
  int64_t ip[KILN_OP_MAX_IPARAMS] = {AT_H, 1};
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){a, b}, mm, NULL, NULL);
  ph_node(&g, KILN_OP_TANH, 1, (int[]){x}, th, NULL, NULL);
  ph_node(&g, KILN_OP_SIGMOID, 1, (int[]){x}, sg, NULL, NULL);
  for (int k = 0; k < 2; k++) {
    int64_t gp[KILN_OP_MAX_IPARAMS] = {k};
    ph_node(&g, KILN_OP_GELU, 1, (int[]){x}, ge[k], gp, NULL);
    ph_node(&g, KILN_OP_GELU_BACKWARD, 2, (int[]){gdy, x}, gb[k], gp, NULL);
  }
  ph_node(&g, KILN_OP_ATTENTION, 1, (int[]){qkv}, y, ip, NULL);
  ph_node(&g, KILN_OP_ATTENTION_BACKWARD, 3, (int[]){dy, qkv, y}, dqkv, ip, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *af = malloc(MM_M * MM_K * sizeof *af), *bf = malloc(MM_K * MM_N * sizeof *bf);
  float *xf = malloc(EW_N * sizeof *xf), *qf = malloc(sizeof o->dqkv), *dyf = malloc(sizeof o->y);
  cr_assert(af && bf && xf && qf && dyf);
  tu_fill_uniform(af, MM_M * MM_K, 1, -1, 1);
  tu_fill_uniform(bf, MM_K * MM_N, 2, -1, 1);
  tu_fill_uniform(xf, EW_N, 3, -12, 12);
  tu_fill_uniform(qf, AT_B * AT_T * 3 * AT_C, 4, -1, 1);
  tu_fill_uniform(dyf, AT_B * AT_T * AT_C, 5, -1, 1);
  ph_write(&g, a, af), ph_write(&g, b, bf), ph_write(&g, x, xf);
  tu_fill_uniform(xf, EW_N, 6, -1, 1);
  ph_write(&g, gdy, xf);
  ph_write(&g, qkv, qf), ph_write(&g, dy, dyf);
  cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
  ph_read(&g, mm, o->mm), ph_read(&g, th, o->th), ph_read(&g, sg, o->sg);
  for (int k = 0; k < 2; k++) ph_read(&g, ge[k], o->gelu[k]), ph_read(&g, gb[k], o->gelu_bw[k]);
  ph_read(&g, y, o->y), ph_read(&g, dqkv, o->dqkv);
  free(af), free(bf), free(xf), free(qf), free(dyf);
  ph_graph_free(&g);
  ph_close(&P);
}

/* |a - b| <= rtol * (|b| + floor) elementwise. */
static void close_to(const char *what, const float *a, const float *b, int64_t n, double rtol,
                     double floor) {
  for (int64_t i = 0; i < n; i++)
    cr_assert(fabs((double)a[i] - b[i]) <= rtol * (fabs((double)b[i]) + floor),
              "%s[%lld]: scalar %.9g, default %.9g", what, (long long)i, (double)a[i],
              (double)b[i]);
}

/* Bounds: matmul 1e-5 * K (|a|, |b| <= 1, so S <= K); tanh/sigmoid 2e-6
 * relative (a few ulp; FMA or not in the polynomials); GELU 2e-5 relative
 * (its tail is exp(-x^2/2 + ...) at x up to 12: one ulp of the argument,
 * fused or not, is 8e-6 of the result), its backward with a floor of
 * 1e-2 (for x < 0 it is a difference of terms of order |dy|, 0.5 (1 + t)
 * and x phi(x), where |dy| <= 1); attention y and
 * dqkv 1e-4 relative to |value| + 1e-2 (sums over up to 70 keys and
 * 24-wide dots of values in [-1, 1], the floor for values near 0). */
Test(isa, scalar_end_to_end_matches_the_default) {
  e2e_out *s = malloc(sizeof *s), *d = malloc(sizeof *d);
  cr_assert(s && d);
  e2e_run("scalar", s);
  e2e_run(NULL, d);
  for (int64_t i = 0; i < MM_M * MM_N; i++)
    cr_assert(fabs((double)s->mm[i] - d->mm[i]) <= 1e-5 * MM_K, "matmul[%lld]: %.9g vs %.9g",
              (long long)i, (double)s->mm[i], (double)d->mm[i]);
  close_to("tanh", s->th, d->th, EW_N, 2e-6, 1e-7);
  close_to("sigmoid", s->sg, d->sg, EW_N, 2e-6, 1e-30);
  close_to("gelu", s->gelu[0], d->gelu[0], EW_N, 2e-5, 1e-30);
  close_to("gelu tanh", s->gelu[1], d->gelu[1], EW_N, 2e-5, 1e-30);
  close_to("gelu_backward", s->gelu_bw[0], d->gelu_bw[0], EW_N, 2e-5, 1e-2);
  close_to("gelu_backward tanh", s->gelu_bw[1], d->gelu_bw[1], EW_N, 2e-5, 1e-2);
  close_to("attention y", s->y, d->y, AT_B * AT_T * AT_C, 1e-4, 1e-2);
  close_to("attention dqkv", s->dqkv, d->dqkv, AT_B * AT_T * 3 * AT_C, 1e-4, 1e-2);
  free(s), free(d);
}

/* The plain-loop kernels (elementwise, reductions, pooling, optimizers)
 * have an AVX2 and a baseline variant built from one body
 * (KCPU_RANGE_VARIANTS) without reordering or fused multiply-adds, so
 * KILN_CPU_ISA=scalar and the default must agree bit for bit. */
#define BW_N 4   /* images */
#define BW_C 3
#define BW_H 13  /* odd: 2x2 pooling leaves a row and a column */
#define BW_W 11
#define BW_X (BW_N * BW_C * BW_H * BW_W)
#define BW_Y (BW_N * BW_C * (BW_H / 2) * (BW_W / 2))

typedef struct bw_out {
  float relu[BW_X], relu_bw[BW_X], add[BW_X], mul[BW_X], sum[BW_C], pool[BW_Y], pool_bw[BW_X];
  float adam_p[BW_X], adam_m[BW_X], adam_v[BW_X];
} bw_out;

static void bitwise_run(const char *isa, bw_out *o) {
  cr_assert_eq(open_isa(isa), KILN_OK, "KILN_CPU_ISA=%s: %s", isa ? isa : "(unset)", ph_error());
  ph_graph g;
  ph_graph_init(&g, &P);
  int64_t xs[4] = {BW_N, BW_C, BW_H, BW_W}, ys[4] = {BW_N, BW_C, BW_H / 2, BW_W / 2};
  int64_t bs[4] = {1, BW_C, 1, 1}, ss[1] = {BW_C}, one[1] = {1};
  int x = ph_tensor(&g, KILN_F32, 4, xs), dy = ph_tensor(&g, KILN_F32, 4, xs);
  int b = ph_tensor(&g, KILN_F32, 4, bs), py = ph_tensor(&g, KILN_F32, 4, ys);
  int relu = ph_tensor(&g, KILN_F32, 4, xs), relu_bw = ph_tensor(&g, KILN_F32, 4, xs);
  int add = ph_tensor(&g, KILN_F32, 4, xs), mul = ph_tensor(&g, KILN_F32, 4, xs);
  int sum = ph_tensor(&g, KILN_F32, 1, ss), pool = ph_tensor(&g, KILN_F32, 4, ys);
  int pool_bw = ph_tensor(&g, KILN_F32, 4, xs);
  int p = ph_tensor(&g, KILN_F32, 4, xs), m = ph_tensor(&g, KILN_F32, 4, xs);
  int v = ph_tensor(&g, KILN_F32, 4, xs), t = ph_tensor(&g, KILN_F32, 0, one);
  int64_t pip[KILN_OP_MAX_IPARAMS] = {2, 2, 2, 2, 0, 0}, sip[KILN_OP_MAX_IPARAMS] = {1 | 4 | 8, 0};
  ph_node(&g, KILN_OP_RELU, 1, (int[]){x}, relu, NULL, NULL);
  ph_node(&g, KILN_OP_RELU_BACKWARD, 2, (int[]){dy, x}, relu_bw, NULL, NULL);
  ph_node(&g, KILN_OP_ADD, 2, (int[]){x, b}, add, NULL, NULL);
  ph_node(&g, KILN_OP_MUL, 2, (int[]){x, dy}, mul, NULL, NULL);
  ph_node(&g, KILN_OP_SUM, 1, (int[]){x}, sum, sip, NULL);
  ph_node(&g, KILN_OP_MAXPOOL2D, 1, (int[]){x}, pool, pip, NULL);
  ph_node(&g, KILN_OP_MAXPOOL2D_BACKWARD, 2, (int[]){py, x}, pool_bw, pip, NULL);
  float afp[KILN_OP_MAX_FPARAMS] = {1e-2f, 0.9f, 0.999f, 1e-7f, 0.01f};
  ph_node(&g, KILN_OP_ADAM, 5, (int[]){p, dy, m, v, t}, p, NULL, afp);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  static float buf[BW_X];
  tu_fill_uniform(buf, BW_X, 11, -2, 2), ph_write(&g, x, buf);
  tu_fill_uniform(buf, BW_X, 12, -1, 1), ph_write(&g, dy, buf);
  tu_fill_uniform(buf, BW_C, 13, -1, 1), ph_write(&g, b, buf);
  tu_fill_uniform(buf, BW_Y, 14, -1, 1), ph_write(&g, py, buf);
  tu_fill_uniform(buf, BW_X, 15, -1, 1), ph_write(&g, p, buf);
  tu_fill_uniform(buf, BW_X, 16, -1, 1), ph_write(&g, m, buf);
  tu_fill_uniform(buf, BW_X, 17, 0, 1), ph_write(&g, v, buf);
  ph_write(&g, t, (float[]){3.0f});
  cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
  ph_read(&g, relu, o->relu), ph_read(&g, relu_bw, o->relu_bw), ph_read(&g, add, o->add);
  ph_read(&g, mul, o->mul), ph_read(&g, sum, o->sum), ph_read(&g, pool, o->pool);
  ph_read(&g, pool_bw, o->pool_bw), ph_read(&g, p, o->adam_p), ph_read(&g, m, o->adam_m);
  ph_read(&g, v, o->adam_v);
  ph_graph_free(&g);
  ph_close(&P);
}

Test(isa, plain_loop_kernels_give_the_same_bits_on_every_isa) {
  bw_out *s = malloc(sizeof *s), *d = malloc(sizeof *d);
  cr_assert(s && d);
  bitwise_run("scalar", s);
  bitwise_run(NULL, d);
  static const struct { const char *name; size_t off, n; } f[] = {
      {"relu", offsetof(bw_out, relu), BW_X}, {"relu_backward", offsetof(bw_out, relu_bw), BW_X},
      {"add", offsetof(bw_out, add), BW_X}, {"mul", offsetof(bw_out, mul), BW_X},
      {"sum", offsetof(bw_out, sum), BW_C}, {"maxpool2d", offsetof(bw_out, pool), BW_Y},
      {"maxpool2d_backward", offsetof(bw_out, pool_bw), BW_X},
      {"adam param", offsetof(bw_out, adam_p), BW_X}, {"adam m", offsetof(bw_out, adam_m), BW_X},
      {"adam v", offsetof(bw_out, adam_v), BW_X}};
  for (size_t k = 0; k < sizeof f / sizeof f[0]; k++) {
    const float *a = (const float *)((const char *)s + f[k].off);
    const float *b = (const float *)((const char *)d + f[k].off);
    for (size_t i = 0; i < f[k].n; i++)
      cr_assert(memcmp(&a[i], &b[i], sizeof a[i]) == 0, "%s[%zu]: scalar %.9g, default %.9g",
                f[k].name, i, (double)a[i], (double)b[i]);
  }
  free(s), free(d);
}

static const char *details(void) {
  static kiln_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  cr_assert_eq(P.api->device_info(0, &info), KILN_OK, "%s", ph_error());
  return info.details;
}

Test(isa, info_names_the_kernels_and_why) {
  cr_assert_eq(open_isa("scalar"), KILN_OK, "%s", ph_error());
  cr_assert(strstr(details(), "kernels: scalar (KILN_CPU_ISA=scalar)"), "%s", details());
  ph_close(&P);
  cr_assert_eq(open_isa(NULL), KILN_OK, "%s", ph_error());
  const char *d = details();
  cr_assert(strstr(d, "kernels: ") && strstr(d, "(auto"), "%s", d);
  cr_assert(strstr(d, "isa: "), "the feature list stays: %s", d);
  char why[160];
#if defined(__x86_64__)
  if (kcpu_isa_usable(KCPU_ISA_AVX512, why, sizeof why))
    cr_assert(strstr(d, "kernels: avx512 (auto)"), "%s", d);
  else if (kcpu_isa_usable(KCPU_ISA_AVX2, why, sizeof why))
    cr_assert(strstr(d, "kernels: avx2 (auto; ") && strstr(d, "avx512f"), "%s", d);
  else
    cr_assert(strstr(d, "kernels: scalar (auto; "), "%s", d);
#else
  (void)why;
#endif
  ph_close(&P);
}

Test(isa, unknown_value_is_an_error) {
  cr_assert_eq(open_isa("avx3"), KILN_INVALID_ARGUMENT);
  const char *e = ph_error();
  cr_assert(strstr(e, "KILN_CPU_ISA=\"avx3\"") && strstr(e, "auto, scalar, avx2, avx512 or neon"),
            "%s", e);
}

/* avx512 where the machine lacks it (and neon on x86-64, avx2 on aarch64):
 * a clear error at device open, naming the value, what is missing and the
 * choices; where the machine has it, it opens. */
Test(isa, unavailable_isa_is_an_error) {
  static const char *const names[] = {"avx512", "avx2", "neon"};
  static const kcpu_isa isas[] = {KCPU_ISA_AVX512, KCPU_ISA_AVX2, KCPU_ISA_NEON};
  int refused = 0;
  for (int i = 0; i < 3; i++) {
    char why[160], want[64];
    kiln_status st = open_isa(names[i]);
    if (kcpu_isa_usable(isas[i], why, sizeof why)) {
      cr_assert_eq(st, KILN_OK, "%s: %s", names[i], ph_error());
      ph_close(&P);
      continue;
    }
    refused++;
    cr_assert_eq(st, KILN_UNSUPPORTED, "KILN_CPU_ISA=%s opened on a machine without it", names[i]);
    const char *e = ph_error();
    snprintf(want, sizeof want, "KILN_CPU_ISA=%s", names[i]);
    cr_assert(strstr(e, want) && strstr(e, why) && strstr(e, "auto, scalar, avx2, avx512, neon"),
              "%s", e);
  }
  cr_assert(refused > 0, "no machine runs all of avx512, avx2 and neon");
}

Test(isa, open_devices_must_agree) {
  cr_assert_eq(open_isa("scalar"), KILN_OK, "%s", ph_error());
  setenv("KILN_CPU_ISA", "auto", 1);
  kiln_plugin_device *d2 = NULL;
  kiln_status st = P.api->device_open(0, &d2);
  char why[160];
  int auto_is_scalar = !kcpu_isa_usable(KCPU_ISA_AVX2, why, sizeof why) &&
                       !kcpu_isa_usable(KCPU_ISA_NEON, why, sizeof why);
  if (auto_is_scalar) {
    cr_assert_eq(st, KILN_OK, "%s", ph_error());
    P.api->device_close(d2);
  } else {
    cr_assert_eq(st, KILN_INVALID_ARGUMENT);
    cr_assert(strstr(ph_error(), "process-wide") && strstr(ph_error(), "uses scalar"), "%s",
              ph_error());
  }
  setenv("KILN_CPU_ISA", "scalar", 1);   /* the same choice: fine */
  cr_assert_eq(P.api->device_open(0, &d2), KILN_OK, "%s", ph_error());
  P.api->device_close(d2);
  ph_close(&P);
}
