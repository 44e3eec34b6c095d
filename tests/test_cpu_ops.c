/*
 * test_cpu_ops.c - every CPU-plugin op except conv/pool, driven through the
 * plugin ABI (plugin_harness.h) and checked against naive double-precision
 * references written here.
 *
 * Error bounds, per op (|got - ref| <= bound):
 *   add/sub/mul/div, neg/relu, copy, fill  1e-6 * |ref|  (one f32 rounding)
 *   reshape, transpose, expand  exact
 *   scale, tanh/sigmoid_backward 2e-6 * (magnitude of the terms)
 *   tanh/sigmoid/exp/log        2e-6 * |ref| + 1e-7   (libm f32, few ulp)
 *   matmul                      2e-6 * sum_k |a_ik * b_kj| + 1e-7
 *   sum/mean                    1e-6 * sum |x| (/ count for mean) + 1e-7
 *   softmax family, CE          2e-5 * |ref| + 2e-6
 *   sgd/adam (5 steps)          2e-5 * |ref| + 1e-6
 * Suites "ops" and "ops1" run the same checks with KILN_NUM_THREADS=2 and 1;
 * "determinism" checks that 1, 2 and 3 threads give bitwise-equal results.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_harness.h"
#include "testutil.h"

/* ---- shapes and tolerances ---------------------------------------------- */

typedef struct shp {
  int ndim;
  int64_t d[KILN_MAX_DIMS];
} shp;
#define SHP(...) ((shp){(int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), {__VA_ARGS__}})
#define SCALAR ((shp){0, {0}})

static int64_t numel(shp s) { return ph_numel(s.ndim, s.d); }

static const char *shape_str(shp s) {
  static char bufs[4][128];
  static int k;
  char *b = bufs[k++ & 3];
  int len = snprintf(b, 128, "[");
  for (int i = 0; i < s.ndim; i++)
    len += snprintf(b + len, 128 - len, i ? ", %lld" : "%lld", (long long)s.d[i]);
  snprintf(b + len, 128 - len, "]");
  return b;
}

/* Asserts |got[i] - ref[i]| <= rtol*scale[i] + atol, scale = |ref| if NULL. */
static void check_close(const char *what, const float *got, const double *ref, const double *scale,
                        int64_t n, double rtol, double atol) {
  for (int64_t i = 0; i < n; i++) {
    double s = scale ? scale[i] : fabs(ref[i]);
    double err = fabs((double)got[i] - ref[i]);
    if (isnan(ref[i]) && isnan(got[i])) continue;
    cr_assert(err <= rtol * s + atol, "%s: element %lld: got %.9g, want %.9g (err %.3g > %.3g)",
              what, (long long)i, (double)got[i], ref[i], err, rtol * s + atol);
  }
}

static float *rnd(int64_t n, uint64_t seed, float lo, float hi) {
  float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
  cr_assert(x);
  tu_fill_uniform(x, n, seed, lo, hi);
  return x;
}

/* ---- plugin and one-node graphs ----------------------------------------- */

static ph_plugin P;

static void open_with_threads(const char *threads) {
  setenv("KILN_NUM_THREADS", threads, 1);
  kiln_status st = ph_open(&P, NULL);
  cr_assert_eq(st, KILN_OK, "ph_open: %s", ph_error());
}
static void open2(void) { open_with_threads("2"); }
static void open1(void) { open_with_threads("1"); }
static void close_plugin(void) { ph_close(&P); }

typedef struct tin {
  uint32_t dtype;
  shp s;
  const void *data;
} tin;
#define F32IN(shape, ptr) ((tin){KILN_F32, (shape), (ptr)})

/* Builds a graph with one node op(inputs) -> output of shape `os`, runs it
 * and reads the output into `out`. Returns the compile status. */
static kiln_status run_node(uint32_t op, int n_in, const tin *in, shp os, float *out,
                            const int64_t *ip, const float *fp) {
  ph_graph g;
  ph_graph_init(&g, &P);
  int ids[KILN_OP_MAX_INPUTS];
  for (int i = 0; i < n_in; i++) {
    ids[i] = ph_tensor(&g, in[i].dtype, in[i].s.ndim, in[i].s.d);
    cr_assert_geq(ids[i], 0, "%s", ph_error());
  }
  int y = ph_tensor(&g, KILN_F32, os.ndim, os.d);
  cr_assert_geq(y, 0, "%s", ph_error());
  ph_node(&g, op, n_in, ids, y, ip, fp);
  kiln_status st = ph_compile(&g);
  if (st == KILN_OK) {
    for (int i = 0; i < n_in; i++)
      cr_assert_eq(ph_write(&g, ids[i], in[i].data), KILN_OK, "%s", ph_error());
    cr_assert_eq(ph_run(&g), KILN_OK, "run: %s", ph_error());
    cr_assert_eq(ph_read(&g, y, out), KILN_OK, "%s", ph_error());
  }
  ph_graph_free(&g);
  return st;
}

static void run_ok(uint32_t op, int n_in, const tin *in, shp os, float *out, const int64_t *ip,
                   const float *fp) {
  kiln_status st = run_node(op, n_in, in, os, out, ip, fp);
  cr_assert_eq(st, KILN_OK, "compile failed: %s", ph_error());
}

/* Offset in a (right-aligned, broadcast) of output multi-index idx. */
static int64_t bcast_index(shp in, shp out, const int64_t *idx) {
  int64_t off = 0;
  for (int d = 0; d < in.ndim; d++) {
    int od = out.ndim - in.ndim + d;
    int64_t i = in.d[d] == 1 ? 0 : idx[od];
    off = off * in.d[d] + i;
  }
  return off;
}

static void unravel(shp s, int64_t flat, int64_t *idx) {
  for (int d = s.ndim - 1; d >= 0; d--) {
    idx[d] = flat % s.d[d];
    flat /= s.d[d];
  }
}

static shp broadcast(shp a, shp b) {
  shp o = {a.ndim > b.ndim ? a.ndim : b.ndim, {0}};
  for (int i = 0; i < o.ndim; i++) {
    int ia = a.ndim - o.ndim + i, ib = b.ndim - o.ndim + i;
    int64_t da = ia >= 0 ? a.d[ia] : 1, db = ib >= 0 ? b.d[ib] : 1;
    o.d[i] = da == 1 ? db : da;
  }
  return o;
}

/* ---- elementwise --------------------------------------------------------- */

static void check_binary(uint32_t op, shp as, shp bs) {
  shp os = broadcast(as, bs);
  int64_t na = numel(as), nb = numel(bs), no = numel(os);
  float *a = rnd(na, 1 + (uint64_t)na, -2, 2), *b = rnd(nb, 7 + (uint64_t)nb, 0.5f, 2);
  for (int64_t i = 0; i < nb; i += 3) b[i] = -b[i]; /* both signs, away from 0 */
  float *y = malloc((size_t)no * sizeof *y);
  double *ref = malloc((size_t)no * sizeof *ref);
  run_ok(op, 2, (tin[]){F32IN(as, a), F32IN(bs, b)}, os, y, NULL, NULL);
  int64_t idx[KILN_MAX_DIMS];
  for (int64_t i = 0; i < no; i++) {
    unravel(os, i, idx);
    double x = a[bcast_index(as, os, idx)], z = b[bcast_index(bs, os, idx)];
    ref[i] = op == KILN_OP_ADD   ? x + z
             : op == KILN_OP_SUB ? x - z
             : op == KILN_OP_MUL ? x * z
                                 : x / z;
  }
  char what[256];
  snprintf(what, sizeof what, "op %u: %s and %s", op, shape_str(as), shape_str(bs));
  check_close(what, y, ref, NULL, no, 1e-6, 1e-30);
  free(a), free(b), free(y), free(ref);
}

static void t_binary(void) {
  static const shp pairs[][2] = {
      {{0, {0}}, {0, {0}}},                                           /* scalar, scalar */
      {{2, {3, 5}}, {2, {3, 5}}},                                     /* same shape */
      {{2, {3, 5}}, {0, {0}}},                                        /* scalar b */
      {{0, {0}}, {3, {2, 3, 4}}},                                     /* scalar a */
      {{2, {4, 7}}, {1, {7}}},                                        /* bias row */
      {{2, {4, 7}}, {2, {4, 1}}},                                     /* column */
      {{3, {2, 1, 5}}, {3, {2, 3, 1}}},                               /* both broadcast */
      {{1, {1}}, {2, {3, 1}}},                                        /* size-1 dims only */
      {{4, {1, 3, 1, 6}}, {4, {2, 1, 4, 1}}},                         /* alternating */
      {{3, {5, 1, 3}}, {2, {4, 1}}},                                  /* middle, rank differs */
      {{8, {2, 1, 2, 1, 3, 1, 2, 1}}, {8, {1, 2, 1, 2, 1, 3, 1, 2}}}, /* rank 8 */
      {{1, {100003}}, {1, {100003}}},                                 /* long row, segmented */
      {{2, {3, 40001}}, {1, {40001}}},                                /* long broadcast rows */
      {{2, {40001, 3}}, {2, {40001, 1}}},                             /* many short rows */
  };
  for (uint32_t op = KILN_OP_ADD; op <= KILN_OP_DIV; op++)
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
      check_binary(op, pairs[i][0], pairs[i][1]);
      check_binary(op, pairs[i][1], pairs[i][0]);
    }
}

static double ref_unary(uint32_t op, double x, double x2, const float *fp) {
  switch (op) {
    case KILN_OP_NEG:
      return -x;
    case KILN_OP_RELU:
      return x > 0 ? x : 0;
    case KILN_OP_TANH:
      return tanh(x);
    case KILN_OP_SIGMOID:
      return 1 / (1 + exp(-x));
    case KILN_OP_EXP:
      return exp(x);
    case KILN_OP_LOG:
      return log(x);
    case KILN_OP_SCALE:
      return (double)fp[0] * x + (double)fp[1];
    case KILN_OP_RELU_BACKWARD:
      return x2 > 0 ? x : 0;
    case KILN_OP_TANH_BACKWARD:
      return x * (1 - x2 * x2);
    case KILN_OP_SIGMOID_BACKWARD:
      return x * x2 * (1 - x2);
    case KILN_OP_COPY:
      return x;
  }
  return NAN;
}

static void check_unary(uint32_t op, shp s) {
  int64_t n = numel(s);
  int helper = op >= KILN_OP_RELU_BACKWARD && op <= KILN_OP_SIGMOID_BACKWARD;
  float lo = op == KILN_OP_LOG ? 0.01f : -6, hi = op == KILN_OP_LOG ? 50 : 6;
  float *x = rnd(n, 11 + (uint64_t)n, lo, hi), *x2 = rnd(n, 13, -1, 1);
  if (op == KILN_OP_RELU || op == KILN_OP_RELU_BACKWARD) /* exact zeros: not > 0 */
    for (int64_t i = 0; i < n; i += 5) (helper ? x2 : x)[i] = 0.0f;
  float fp[8] = {op == KILN_OP_SCALE ? -1.75f : 0, op == KILN_OP_SCALE ? 0.5f : 0};
  float *y = malloc((size_t)n * sizeof *y);
  double *ref = malloc((size_t)n * sizeof *ref);
  tin in[2] = {F32IN(s, x), F32IN(s, x2)};
  run_ok(op, helper ? 2 : 1, in, s, y, NULL, fp);
  double *scale = malloc((size_t)n * sizeof *scale);
  for (int64_t i = 0; i < n; i++) {
    ref[i] = ref_unary(op, x[i], x2[i], fp);
    /* magnitude of the terms, for ops that subtract (rounding is relative
     * to them, not to a result that cancels) */
    double y2 = (double)x2[i] * x2[i];
    scale[i] = op == KILN_OP_SCALE           ? fabs(fp[0] * (double)x[i]) + fabs((double)fp[1])
               : op == KILN_OP_TANH_BACKWARD ? fabs((double)x[i]) * (1 + y2)
               : op == KILN_OP_SIGMOID_BACKWARD
                   ? fabs((double)x[i] * x2[i]) * (1 + fabs((double)x2[i]))
                   : fabs(ref[i]);
  }
  int libm = op == KILN_OP_TANH || op == KILN_OP_SIGMOID || op == KILN_OP_EXP || op == KILN_OP_LOG;
  int two_step =
      op == KILN_OP_SCALE || op == KILN_OP_TANH_BACKWARD || op == KILN_OP_SIGMOID_BACKWARD;
  char what[128];
  snprintf(what, sizeof what, "op %u on %s", op, shape_str(s));
  check_close(what, y, ref, scale, n, libm ? 2e-6 : two_step ? 2e-6 : 1e-6, libm ? 1e-7 : 1e-30);
  free(x), free(x2), free(y), free(ref), free(scale);
}

/* CAST from u8, i32 and f32: exactly a * (float)x + b in f32, every byte
 * value, sizes around the thread split; other input dtypes are refused. */
static void t_cast(void) {
  enum { N = 70001 };
  uint8_t *xb = malloc(N);
  int32_t *xi = malloc(N * sizeof *xi);
  float *xf = malloc(N * sizeof *xf), *y = malloc(N * sizeof *y);
  cr_assert(xb && xi && xf && y);
  for (int i = 0; i < N; i++) {
    xb[i] = (uint8_t)(i * 7 + 3);
    xi[i] = (i % 2 ? -1 : 1) * i * 13;
    xf[i] = (float)i * 0.37f - 900.0f;
  }
  const float a = 1.0f / 255.0f, b = -0.5f;
  int64_t sizes[] = {1, 3, 255, N};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    shp s = SHP(sizes[k]);
    int64_t n = sizes[k];
    run_ok(KILN_OP_CAST, 1, (tin[]){{KILN_U8, s, xb}}, s, y, NULL, (float[8]){a, b});
    for (int64_t i = 0; i < n; i++)
      cr_assert_eq(y[i], a * (float)xb[i] + b, "u8 [%lld]: %g", (long long)i, (double)y[i]);
    run_ok(KILN_OP_CAST, 1, (tin[]){{KILN_I32, s, xi}}, s, y, NULL, (float[8]){2.0f, 1.0f});
    for (int64_t i = 0; i < n; i++)
      cr_assert_eq(y[i], 2.0f * (float)xi[i] + 1.0f, "i32 [%lld]: %g", (long long)i, (double)y[i]);
    run_ok(KILN_OP_CAST, 1, (tin[]){F32IN(s, xf)}, s, y, NULL, (float[8]){-1.75f, 0.25f});
    for (int64_t i = 0; i < n; i++)
      cr_assert_eq(y[i], -1.75f * xf[i] + 0.25f, "f32 [%lld]: %g", (long long)i, (double)y[i]);
  }
  shp s = SHP(4);
  cr_assert_eq(run_node(KILN_OP_CAST, 1, (tin[]){{KILN_F16, s, xb}}, s, y, NULL, NULL),
               KILN_DTYPE_MISMATCH);
  cr_assert_not_null(strstr(ph_error(), "f16"), "%s", ph_error());
  cr_assert_eq(run_node(KILN_OP_CAST, 1, (tin[]){{KILN_U8, s, xb}}, s, y, NULL, (float[8]){NAN}),
               KILN_INVALID_ARGUMENT);
  free(xb), free(xi), free(xf), free(y);
}

static void t_unary(void) {
  static const uint32_t ops[] = {KILN_OP_NEG,           KILN_OP_RELU,
                                 KILN_OP_TANH,          KILN_OP_SIGMOID,
                                 KILN_OP_EXP,           KILN_OP_LOG,
                                 KILN_OP_SCALE,         KILN_OP_RELU_BACKWARD,
                                 KILN_OP_TANH_BACKWARD, KILN_OP_SIGMOID_BACKWARD,
                                 KILN_OP_COPY};
  shp shapes[] = {SCALAR, SHP(1), SHP(17), SHP(3, 1, 5), SHP(50001)};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    for (size_t j = 0; j < sizeof shapes / sizeof shapes[0]; j++) check_unary(ops[i], shapes[j]);
}

/* tanh and sigmoid over their whole range (the CPU plugin computes them
 * with its own vector code, not libm): a sweep of [-100, 100], the points
 * where the formulas switch, tiny, huge and non-finite inputs. Bound: 6e-7
 * relative (a few ulp) plus 1e-37 absolute (sigmoid far below -87 gives
 * about 1e-38 where the exact value is smaller still). */
static void t_tanh_sigmoid_range(void) {
  static const float special[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, -3e-4f, 0.625f, -0.625f,
                                  0.62499994f, 0.62500006f, 44.0f, -44.0f, 87.0f, -87.0f, 88.5f,
                                  -88.5f, 200.0f, -200.0f, 3e38f, -3e38f, INFINITY, -INFINITY, NAN};
  int64_t ns = (int64_t)(sizeof special / sizeof special[0]), n = 200001 + ns;
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  double *ref = malloc((size_t)n * sizeof *ref);
  for (int64_t i = 0; i < 200001; i++) x[i] = (float)((double)(i - 100000) * 1e-3);
  memcpy(x + 200001, special, sizeof special);
  shp s = SHP(n);
  for (int k = 0; k < 2; k++) {
    uint32_t op = k ? KILN_OP_SIGMOID : KILN_OP_TANH;
    run_ok(op, 1, (tin[]){F32IN(s, x)}, s, y, NULL, NULL);
    for (int64_t i = 0; i < n; i++) ref[i] = ref_unary(op, x[i], 0.0f, NULL);
    check_close(k ? "sigmoid range" : "tanh range", y, ref, NULL, n, 6e-7, 1e-37);
    cr_assert(isnan(y[n - 1]), "%s(NaN) = %g, want NaN", k ? "sigmoid" : "tanh", (double)y[n - 1]);
  }
  free(x), free(y), free(ref);
}

/* GELU over a sweep of [-14, 14] in steps of 1e-3 (the CPU plugin computes
 * it with its own erfc, exp and tanh, not libm), against double precision.
 * Forward: 3e-5 relative (the erfc fit is 1.2e-7; in the tail the f32
 * exponent -x^2/2 - ... itself rounds by up to an ulp of ~100, 8e-6, which
 * exp turns into that much relative error; seen: 1.3e-5 at x = -11.9, where
 * gelu is -5e-32) plus 3e-37 (exp flushes to 0 below e^-87 = 1.7e-38,
 * times |x| <= 14). Backward:
 * 1e-5 of |dy| (|x| phi(x) + Phi(x) + 1) for both forms, whose terms cancel
 * for x < 0. NaN in gives NaN out. */
static double ref_gelu(double v, int tanh_form, int grad) {
  if (tanh_form) {   /* 1 + tanh(u) = 2 / (1 + exp(-2u)): no cancellation even in double */
    double k = 0.7978845608028654, a = 0.044715, u = k * (v + a * v * v * v);
    double h = 1.0 / (1.0 + exp(-2.0 * u)), e = exp(-2.0 * fabs(u));
    double one_m_t2 = 4.0 * e / ((1.0 + e) * (1.0 + e));
    return grad ? h + 0.5 * v * one_m_t2 * k * (1 + 3 * a * v * v) : v * h;
  }
  double cdf = 0.5 * erfc(-v / sqrt(2.0)), pdf = exp(-0.5 * v * v) / sqrt(2 * M_PI);
  return grad ? cdf + v * pdf : v * cdf;
}

static void t_gelu_range(void) {
  int64_t n = 28001 + 1;
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  float *dy = malloc((size_t)n * sizeof *dy);
  double *ref = malloc((size_t)n * sizeof *ref), *mag = malloc((size_t)n * sizeof *mag);
  for (int64_t i = 0; i < n - 1; i++) x[i] = (float)((double)(i - 14000) * 1e-3);
  x[n - 1] = NAN;
  for (int64_t i = 0; i < n; i++) dy[i] = (float)(0.5 + 0.25 * sin((double)i));
  shp s = SHP(n);
  for (int form = 0; form < 2; form++) {
    int64_t ip[KILN_OP_MAX_IPARAMS] = {form};
    run_ok(KILN_OP_GELU, 1, (tin[]){F32IN(s, x)}, s, y, ip, NULL);
    for (int64_t i = 0; i < n; i++) ref[i] = ref_gelu(x[i], form, 0);
    check_close(form ? "gelu tanh range" : "gelu range", y, ref, NULL, n - 1, 3e-5, 3e-37);
    cr_assert(isnan(y[n - 1]), "gelu(NaN) = %g, want NaN", (double)y[n - 1]);
    run_ok(KILN_OP_GELU_BACKWARD, 2, (tin[]){F32IN(s, dy), F32IN(s, x)}, s, y, ip, NULL);
    for (int64_t i = 0; i < n; i++) {
      double v = x[i];
      ref[i] = dy[i] * ref_gelu(v, form, 1);
      mag[i] = fabs(dy[i]) * (fabs(v) * exp(-0.5 * v * v) + 0.5 * erfc(-v / sqrt(2.0)) + 1.0);
    }
    check_close(form ? "gelu_backward tanh range" : "gelu_backward range", y, ref, mag, n - 1,
                1e-5, 3e-37);
  }
  free(x), free(y), free(dy), free(ref), free(mag);
}

static void t_fill(void) {
  shp shapes[] = {SCALAR, SHP(1), SHP(7, 3), SHP(40000)};
  for (size_t j = 0; j < 4; j++) {
    int64_t n = numel(shapes[j]);
    float *y = malloc((size_t)n * sizeof *y);
    run_ok(KILN_OP_FILL, 0, NULL, shapes[j], y, NULL, (float[8]){-3.25f});
    for (int64_t i = 0; i < n; i++)
      cr_assert_eq(y[i], -3.25f, "fill %s: element %lld", shape_str(shapes[j]), (long long)i);
    free(y);
  }
}

/* ---- matmul -------------------------------------------------------------- */

static void check_matmul(shp as, shp bs, int ta, int tb) {
  int ra = as.ndim, rb = bs.ndim;
  int64_t M = as.d[ra - 2 + ta], K = as.d[ra - 1 - ta], N = bs.d[rb - 1 - tb];
  shp ab = {ra - 2, {0}}, bb = {rb - 2, {0}};
  memcpy(ab.d, as.d, sizeof(int64_t) * (size_t)(ra - 2));
  memcpy(bb.d, bs.d, sizeof(int64_t) * (size_t)(rb - 2));
  shp ob = broadcast(ab, bb), os = ob;
  os.ndim = ob.ndim + 2;
  os.d[ob.ndim] = M;
  os.d[ob.ndim + 1] = N;
  int64_t na = numel(as), nb = numel(bs), no = numel(os), batches = numel(ob);
  float *a = rnd(na, 21 + (uint64_t)na, -1, 1), *b = rnd(nb, 23 + (uint64_t)nb, -1, 1);
  float *y = malloc((size_t)no * sizeof *y);
  double *ref = malloc((size_t)no * sizeof *ref), *scale = malloc((size_t)no * sizeof *scale);
  run_ok(KILN_OP_MATMUL, 2, (tin[]){F32IN(as, a), F32IN(bs, b)}, os, y, (int64_t[8]){ta, tb}, NULL);
  int64_t idx[KILN_MAX_DIMS];
  for (int64_t bi = 0; bi < batches; bi++) {
    unravel(ob, bi, idx);
    const float *A = a + bcast_index(ab, ob, idx) * M * K,
                *B = b + bcast_index(bb, ob, idx) * K * N;
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double s = 0, sa = 0;
        for (int64_t k = 0; k < K; k++) {
          double p =
              (double)(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
          s += p;
          sa += fabs(p);
        }
        ref[bi * M * N + i * N + j] = s;
        scale[bi * M * N + i * N + j] = sa;
      }
  }
  char what[256];
  snprintf(what, sizeof what, "matmul a %s%s b %s%s", shape_str(as), ta ? "^T" : "", shape_str(bs),
           tb ? "^T" : "");
  check_close(what, y, ref, scale, no, 2e-6, 1e-7);
  free(a), free(b), free(y), free(ref), free(scale);
}

static shp mat(int64_t rows, int64_t cols, int t) { return t ? SHP(cols, rows) : SHP(rows, cols); }

static void t_matmul(void) {
  static const int64_t mnk[][3] = {{1, 1, 1},    {3, 7, 5},    {17, 9, 33},
                                   {6, 16, 256}, {7, 17, 257}, {257, 129, 300}};
  for (size_t s = 0; s < sizeof mnk / sizeof mnk[0]; s++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        int64_t M = mnk[s][0], N = mnk[s][1], K = mnk[s][2];
        check_matmul(mat(M, K, ta), mat(K, N, tb), ta, tb);
      }
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      check_matmul(ta ? SHP(2, 3, 5, 4) : SHP(2, 3, 4, 5), tb ? SHP(2, 3, 6, 5) : SHP(2, 3, 5, 6),
                   ta, tb);
      check_matmul(ta ? SHP(2, 1, 5, 4) : SHP(2, 1, 4, 5), tb ? SHP(3, 6, 5) : SHP(3, 5, 6), ta,
                   tb);
      check_matmul(ta ? SHP(3, 9, 7) : SHP(3, 7, 9), tb ? SHP(11, 9) : SHP(9, 11), ta,
                   tb); /* shared b */
      check_matmul(ta ? SHP(9, 7) : SHP(7, 9), tb ? SHP(4, 11, 9) : SHP(4, 9, 11), ta,
                   tb); /* shared a */
    }
  check_matmul(SHP(1, 2, 1, 3, 4), SHP(2, 1, 3, 4, 2), 0, 0); /* rank 5, size-1 batches */
  check_matmul(SHP(64, 40, 70), SHP(70, 300), 0, 0);          /* tall fast path, threaded */
  /* past one packed block of rows (1536) and of columns (3072) of the GEMM */
  check_matmul(SHP(1600, 10), SHP(10, 20), 0, 0);
  check_matmul(SHP(10, 1600), SHP(20, 10), 1, 1);
  check_matmul(SHP(3, 5), SHP(5, 3100), 0, 0);
  check_matmul(SHP(5, 3), SHP(3100, 5), 1, 1);
}

/* ---- reductions ---------------------------------------------------------- */

static void check_reduce(uint32_t op, shp xs, int64_t mask, int keep) {
  shp os = {0, {0}};
  for (int d = 0; d < xs.ndim; d++) {
    int r = (int)((mask >> d) & 1);
    if (r && !keep) continue;
    os.d[os.ndim++] = r ? 1 : xs.d[d];
  }
  int64_t nx = numel(xs), no = numel(os);
  float *x = rnd(nx, 31 + (uint64_t)nx, -3, 3), *y = malloc((size_t)no * sizeof *y);
  double *ref = calloc((size_t)no, sizeof *ref), *scale = calloc((size_t)no, sizeof *scale);
  run_ok(op, 1, (tin[]){F32IN(xs, x)}, os, y, (int64_t[8]){mask, keep}, NULL);
  int64_t idx[KILN_MAX_DIMS], count = 1;
  for (int d = 0; d < xs.ndim; d++)
    if ((mask >> d) & 1) count *= xs.d[d];
  for (int64_t i = 0; i < nx; i++) {
    unravel(xs, i, idx);
    int64_t o = 0;
    for (int d = 0; d < xs.ndim; d++)
      if (!((mask >> d) & 1)) o = o * xs.d[d] + idx[d];
    ref[o] += x[i];
    scale[o] += fabs(x[i]);
  }
  if (op == KILN_OP_MEAN)
    for (int64_t o = 0; o < no; o++) ref[o] /= (double)count, scale[o] /= (double)count;
  char what[128];
  snprintf(what, sizeof what, "%s %s mask 0x%llx keep %d", op == KILN_OP_SUM ? "sum" : "mean",
           shape_str(xs), (unsigned long long)mask, keep);
  check_close(what, y, ref, scale, no, 1e-6, 1e-7);
  free(x), free(y), free(ref), free(scale);
}

static void t_reduce(void) {
  for (uint32_t op = KILN_OP_SUM; op <= KILN_OP_MEAN; op++) {
    for (int64_t mask = 0; mask < 16; mask++)
      for (int keep = 0; keep < 2; keep++) check_reduce(op, SHP(2, 3, 4, 5), mask, keep);
    for (int keep = 0; keep < 2; keep++) {
      check_reduce(op, SCALAR, 0, keep);
      check_reduce(op, SHP(1), 1, keep);
      check_reduce(op, SHP(1000, 37), 1, keep);                  /* batch sum: columns */
      check_reduce(op, SHP(1000, 37), 2, keep);                  /* row sums */
      check_reduce(op, SHP(3, 600, 5), 2, keep);                 /* middle axis */
      check_reduce(op, SHP(2, 1, 3, 1), 0xa, keep);              /* only size-1 axes */
      check_reduce(op, SHP(7, 1100), 1, keep);                   /* rows longer than a chunk */
      check_reduce(op, SHP(100003), 1, keep);                    /* full reduction */
      check_reduce(op, SHP(2, 3, 4, 5, 1, 2, 3, 2), 0xb5, keep); /* rank 8 */
    }
  }
}

static void check_expand(shp xs, shp os) {
  int64_t nx = numel(xs), no = numel(os);
  float *x = rnd(nx, 41, -1, 1), *y = malloc((size_t)no * sizeof *y);
  double *ref = malloc((size_t)no * sizeof *ref);
  run_ok(KILN_OP_EXPAND, 1, (tin[]){F32IN(xs, x)}, os, y, NULL, NULL);
  int64_t idx[KILN_MAX_DIMS];
  for (int64_t i = 0; i < no; i++) {
    unravel(os, i, idx);
    ref[i] = x[bcast_index(xs, os, idx)];
  }
  char what[128];
  snprintf(what, sizeof what, "expand %s to %s", shape_str(xs), shape_str(os));
  check_close(what, y, ref, NULL, no, 0, 0);
  free(x), free(y), free(ref);
}

static void t_expand(void) {
  check_expand(SHP(3), SHP(2, 3));
  check_expand(SHP(2, 1), SHP(2, 4));
  check_expand(SCALAR, SHP(3, 2));
  check_expand(SCALAR, SCALAR);
  check_expand(SHP(1, 3, 1), SHP(2, 2, 3, 4));
  check_expand(SHP(5), SHP(5));
  check_expand(SHP(1, 20000), SHP(3, 20000));
}

/* ---- softmax family and cross-entropy ------------------------------------ */

static void ref_softmax_row(const float *x, int64_t C, double *y, int log_) {
  double m = -INFINITY, s = 0;
  for (int64_t c = 0; c < C; c++) m = x[c] > m ? x[c] : m;
  for (int64_t c = 0; c < C; c++) s += exp(x[c] - m);
  for (int64_t c = 0; c < C; c++) y[c] = log_ ? x[c] - m - log(s) : exp(x[c] - m) / s;
}

static void check_softmax(shp s) {
  int64_t n = numel(s), C = s.ndim ? s.d[s.ndim - 1] : 1, R = n / C;
  float *x = rnd(n, 51 + (uint64_t)n, -8, 8), *dy = rnd(n, 53, -1, 1);
  if (n > 1) x[0] += 1000.0f; /* stability: a huge logit */
  float *y = malloc((size_t)n * sizeof *y), *yf = malloc((size_t)n * sizeof *yf);
  double *ref = malloc((size_t)n * sizeof *ref), *yr = malloc((size_t)n * sizeof *yr);
  for (int log_ = 0; log_ < 2; log_++) {
    uint32_t op = log_ ? KILN_OP_LOG_SOFTMAX : KILN_OP_SOFTMAX;
    run_ok(op, 1, (tin[]){F32IN(s, x)}, s, y, NULL, NULL);
    for (int64_t r = 0; r < R; r++) ref_softmax_row(x + r * C, C, ref + r * C, log_);
    check_close(log_ ? "log_softmax" : "softmax", y, ref, NULL, n, 2e-5, 2e-6);
    /* backward, given y as f32 */
    for (int64_t i = 0; i < n; i++) yf[i] = (float)ref[i];
    uint32_t bop = log_ ? KILN_OP_LOG_SOFTMAX_BACKWARD : KILN_OP_SOFTMAX_BACKWARD;
    run_ok(bop, 2, (tin[]){F32IN(s, dy), F32IN(s, yf)}, s, y, NULL, NULL);
    for (int64_t r = 0; r < R; r++) {
      double acc = 0;
      for (int64_t c = 0; c < C; c++)
        acc += log_ ? dy[r * C + c] : (double)dy[r * C + c] * yf[r * C + c];
      for (int64_t c = 0; c < C; c++) {
        int64_t i = r * C + c;
        yr[i] = log_ ? dy[i] - exp(yf[i]) * acc : yf[i] * (dy[i] - acc);
      }
    }
    check_close(log_ ? "log_softmax_backward" : "softmax_backward", y, yr, NULL, n, 2e-5, 2e-6);
  }
  free(x), free(dy), free(y), free(yf), free(ref), free(yr);
}

static void t_softmax(void) {
  shp shapes[] = {SCALAR, SHP(7), SHP(3, 1), SHP(4, 10), SHP(2, 3, 1000), SHP(5000, 3)};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_softmax(shapes[i]);
}

static void check_cross_entropy(int64_t N, int64_t C, float spread) {
  float *x = rnd(N * C, 61 + (uint64_t)N, -spread, spread);
  int32_t *labels = malloc((size_t)N * sizeof *labels);
  for (int64_t i = 0; i < N; i++)
    labels[i] = (int32_t)((i * 7 + 3) % (C + 2)) - 1; /* some -1 and C */
  float loss, dloss = 2.5f;
  tin in[] = {F32IN(SHP(N, C), x), {KILN_I32, SHP(N), labels}};
  run_ok(KILN_OP_CROSS_ENTROPY, 2, in, SCALAR, &loss, NULL, NULL);
  double total = 0, *sm = malloc((size_t)(N * C) * sizeof *sm),
         *ref = malloc((size_t)(N * C) * sizeof *ref);
  for (int64_t r = 0; r < N; r++) {
    ref_softmax_row(x + r * C, C, sm + r * C, 0);
    int32_t l = labels[r];
    for (int64_t c = 0; c < C; c++)
      ref[r * C + c] = (l < 0 || l >= C) ? 0 : dloss * (sm[r * C + c] - (c == l)) / (double)N;
    if (l >= 0 && l < C) {
      double lsm[4096];
      ref_softmax_row(x + r * C, C, lsm, 1);
      total -= lsm[l];
    }
  }
  double want = total / (double)N;
  char what[64];
  snprintf(what, sizeof what, "cross_entropy N=%lld C=%lld", (long long)N, (long long)C);
  check_close(what, &loss, &want, NULL, 1, 2e-5, 2e-6);
  float *dx = malloc((size_t)(N * C) * sizeof *dx);
  tin bin[] = {F32IN(SCALAR, &dloss), F32IN(SHP(N, C), x), {KILN_I32, SHP(N), labels}};
  run_ok(KILN_OP_CROSS_ENTROPY_BACKWARD, 3, bin, SHP(N, C), dx, NULL, NULL);
  check_close("cross_entropy_backward", dx, ref, NULL, N * C, 2e-5, 2e-6);
  for (int64_t r = 0; r < N; r++)
    if (labels[r] < 0 || labels[r] >= C)
      for (int64_t c = 0; c < C; c++)
        cr_assert_eq(dx[r * C + c], 0.0f, "row %lld with label %d must have zero gradient",
                     (long long)r, labels[r]);
  free(x), free(labels), free(sm), free(ref), free(dx);
}

static void t_cross_entropy(void) {
  check_cross_entropy(5, 7, 3);
  check_cross_entropy(1, 1, 3);
  check_cross_entropy(600, 3, 3);   /* several loss blocks */
  check_cross_entropy(37, 10, 300); /* logits far apart: stability */
  check_cross_entropy(16, 1000, 5);
}

/* ---- layout -------------------------------------------------------------- */

static void check_transpose(shp xs, const int64_t *perm) {
  shp os = {xs.ndim, {0}};
  for (int i = 0; i < xs.ndim; i++) os.d[i] = xs.d[perm[i]];
  int64_t n = numel(xs);
  float *x = rnd(n, 71 + (uint64_t)n, -1, 1), *y = malloc((size_t)n * sizeof *y);
  double *ref = malloc((size_t)n * sizeof *ref);
  int64_t ip[8] = {0};
  memcpy(ip, perm, sizeof(int64_t) * (size_t)xs.ndim);
  run_ok(KILN_OP_TRANSPOSE, 1, (tin[]){F32IN(xs, x)}, os, y, ip, NULL);
  int64_t idx[KILN_MAX_DIMS], xi[KILN_MAX_DIMS];
  for (int64_t i = 0; i < n; i++) {
    unravel(os, i, idx);
    for (int d = 0; d < xs.ndim; d++) xi[perm[d]] = idx[d];
    int64_t off = 0;
    for (int d = 0; d < xs.ndim; d++) off = off * xs.d[d] + xi[d];
    ref[i] = x[off];
  }
  char what[128];
  snprintf(what, sizeof what, "transpose %s", shape_str(xs));
  check_close(what, y, ref, NULL, n, 0, 0);
  free(x), free(y), free(ref);
}

static void t_layout(void) {
  /* every permutation of rank 4, with a size-1 axis and odd sizes */
  int64_t p[4];
  for (p[0] = 0; p[0] < 4; p[0]++)
    for (p[1] = 0; p[1] < 4; p[1]++)
      for (p[2] = 0; p[2] < 4; p[2]++)
        for (p[3] = 0; p[3] < 4; p[3]++) {
          if (p[0] == p[1] || p[0] == p[2] || p[0] == p[3] || p[1] == p[2] || p[1] == p[3] ||
              p[2] == p[3])
            continue;
          check_transpose(SHP(2, 3, 1, 5), p);
          check_transpose(SHP(3, 35, 2, 33), p);
        }
  check_transpose(SCALAR, (int64_t[]){0});
  check_transpose(SHP(7), (int64_t[]){0});
  check_transpose(SHP(300, 257), (int64_t[]){1, 0});
  check_transpose(SHP(4, 1, 65, 3, 40), (int64_t[]){4, 2, 0, 3, 1});
  /* reshape: same bytes */
  float *x = rnd(60, 81, -1, 1), y[60];
  double ref[60];
  for (int i = 0; i < 60; i++) ref[i] = x[i];
  run_ok(KILN_OP_RESHAPE, 1, (tin[]){F32IN(SHP(3, 4, 5), x)}, SHP(12, 5), y, NULL, NULL);
  check_close("reshape", y, ref, NULL, 60, 0, 0);
  run_ok(KILN_OP_RESHAPE, 1, (tin[]){F32IN(SHP(1), x)}, SCALAR, y, NULL, NULL);
  check_close("reshape to scalar", y, ref, NULL, 1, 0, 0);
  free(x);
}

/* ---- optimizers ---------------------------------------------------------- */

#define OPT_N 1003
#define OPT_STEPS 5

static void check_sgd(float lr, float mom, float wd, float damp, int nesterov) {
  ph_graph g;
  ph_graph_init(&g, &P);
  int p = ph_tensor(&g, KILN_F32, 1, (int64_t[]){OPT_N});
  int gr = ph_tensor(&g, KILN_F32, 1, (int64_t[]){OPT_N});
  int v = ph_tensor(&g, KILN_F32, 1, (int64_t[]){OPT_N});
  ph_node(&g, KILN_OP_SGD, mom != 0 ? 3 : 2, (int[]){p, gr, v}, p, (int64_t[8]){nesterov},
          (float[8]){lr, mom, wd, damp});
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *pf = rnd(OPT_N, 91, -1, 1), *vf = malloc(OPT_N * sizeof *vf);
  double rp[OPT_N], rv[OPT_N] = {0};
  for (int i = 0; i < OPT_N; i++) rp[i] = pf[i];
  cr_assert_eq(ph_write(&g, p, pf), KILN_OK);
  for (int step = 0; step < OPT_STEPS; step++) {
    float *gf = rnd(OPT_N, 100 + (uint64_t)step, -1, 1);
    cr_assert_eq(ph_write(&g, gr, gf), KILN_OK);
    cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
    for (int i = 0; i < OPT_N; i++) {
      double gg = gf[i] + (double)wd * rp[i];
      if (mom != 0) {
        rv[i] = mom * rv[i] + (1 - (double)damp) * gg;
        gg = nesterov ? gg + mom * rv[i] : rv[i];
      }
      rp[i] -= lr * gg;
    }
    free(gf);
  }
  cr_assert_eq(ph_read(&g, p, pf), KILN_OK);
  cr_assert_eq(ph_read(&g, v, vf), KILN_OK);
  check_close("sgd param", pf, rp, NULL, OPT_N, 2e-5, 1e-6);
  check_close("sgd velocity", vf, rv, NULL, OPT_N, 2e-5, 1e-6);
  free(pf), free(vf);
  ph_graph_free(&g);
}

static void check_adam(float lr, float b1, float b2, float eps, float wd, int decoupled,
                       int lr_tensor) {
  ph_graph g;
  ph_graph_init(&g, &P);
  int64_t n[1] = {OPT_N};
  int p = ph_tensor(&g, KILN_F32, 1, n), gr = ph_tensor(&g, KILN_F32, 1, n);
  int m = ph_tensor(&g, KILN_F32, 1, n), v = ph_tensor(&g, KILN_F32, 1, n);
  int t = ph_tensor(&g, KILN_F32, 0, NULL), lrt = ph_tensor(&g, KILN_F32, 0, NULL);
  /* the step counter is incremented in the graph, before the update */
  ph_node(&g, KILN_OP_INCREMENT, 1, (int[]){t}, t, NULL, (float[8]){1.0f});
  float fp[8] = {lr_tensor ? 123.0f : lr, b1, b2, eps, wd};
  ph_node(&g, KILN_OP_ADAM, lr_tensor ? 6 : 5, (int[]){p, gr, m, v, t, lrt}, p,
          (int64_t[8]){decoupled}, fp);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *pf = rnd(OPT_N, 92, -1, 1), *mf = malloc(OPT_N * sizeof *mf),
        *vf = malloc(OPT_N * sizeof *vf);
  double rp[OPT_N], rm[OPT_N] = {0}, rv[OPT_N] = {0};
  for (int i = 0; i < OPT_N; i++) rp[i] = pf[i];
  cr_assert_eq(ph_write(&g, p, pf), KILN_OK);
  cr_assert_eq(ph_write(&g, lrt, &lr), KILN_OK);
  for (int step = 1; step <= OPT_STEPS; step++) {
    float *gf = rnd(OPT_N, 200 + (uint64_t)step, -1, 1);
    cr_assert_eq(ph_write(&g, gr, gf), KILN_OK);
    cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
    double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
    for (int i = 0; i < OPT_N; i++) {
      double gg = gf[i];
      if (decoupled)
        rp[i] -= (double)lr * wd * rp[i];
      else
        gg += wd * rp[i];
      rm[i] = b1 * rm[i] + (1 - (double)b1) * gg;
      rv[i] = b2 * rv[i] + (1 - (double)b2) * gg * gg;
      rp[i] -= lr * (rm[i] / bc1) / (sqrt(rv[i] / bc2) + eps);
    }
    free(gf);
  }
  float tf;
  cr_assert_eq(ph_read(&g, t, &tf), KILN_OK);
  cr_assert_eq(tf, (float)OPT_STEPS, "step counter: %g", (double)tf);
  cr_assert_eq(ph_read(&g, p, pf), KILN_OK);
  cr_assert_eq(ph_read(&g, m, mf), KILN_OK);
  cr_assert_eq(ph_read(&g, v, vf), KILN_OK);
  check_close("adam param", pf, rp, NULL, OPT_N, 2e-5, 1e-6);
  check_close("adam m", mf, rm, NULL, OPT_N, 2e-5, 1e-6);
  check_close("adam v", vf, rv, NULL, OPT_N, 2e-5, 1e-6);
  free(pf), free(mf), free(vf);
  ph_graph_free(&g);
}

static void t_optim(void) {
  check_sgd(0.1f, 0, 0, 0, 0);
  check_sgd(0.05f, 0.9f, 0.01f, 0, 0);
  check_sgd(0.05f, 0.9f, 0.0f, 0, 1);
  check_sgd(0.05f, 0.8f, 0.001f, 0.1f, 0);
  check_adam(1e-2f, 0.9f, 0.999f, 1e-8f, 0, 0, 0);
  check_adam(1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, 0, 0); /* Adam, L2 */
  check_adam(1e-2f, 0.9f, 0.99f, 1e-6f, 0.1f, 1, 0);  /* AdamW */
  check_adam(3e-3f, 0.8f, 0.9f, 1e-8f, 0.01f, 1, 1);  /* lr from a tensor */
}

/* ---- empty tensors ------------------------------------------------------- */

static void t_empty(void) {
  float x[4] = {1, 2, 3, 4}, y[16];
  /* nothing to compute, and nothing may be touched or crash */
  run_ok(KILN_OP_ADD, 2, (tin[]){F32IN(SHP(0, 3), x), F32IN(SHP(3), x)}, SHP(0, 3), y, NULL, NULL);
  run_ok(KILN_OP_TRANSPOSE, 1, (tin[]){F32IN(SHP(2, 0), x)}, SHP(0, 2), y, (int64_t[8]){1, 0},
         NULL);
  /* an empty inner dimension: the product is all zeros */
  for (int i = 0; i < 16; i++) y[i] = NAN;
  run_ok(KILN_OP_MATMUL, 2, (tin[]){F32IN(SHP(2, 0), x), F32IN(SHP(0, 3), x)}, SHP(2, 3), y, NULL,
         NULL);
  for (int i = 0; i < 6; i++) cr_assert_eq(y[i], 0.0f, "matmul with K = 0: element %d", i);
  /* reducing an empty axis: sum 0, mean NaN (0/0) */
  run_ok(KILN_OP_SUM, 1, (tin[]){F32IN(SHP(0, 2), x)}, SHP(2), y, (int64_t[8]){1, 0}, NULL);
  cr_assert(y[0] == 0.0f && y[1] == 0.0f, "sum over an empty axis: %g %g", y[0], y[1]);
  run_ok(KILN_OP_MEAN, 1, (tin[]){F32IN(SHP(0, 2), x)}, SHP(2), y, (int64_t[8]){1, 0}, NULL);
  cr_assert(isnan(y[0]) && isnan(y[1]), "mean over an empty axis: %g %g", y[0], y[1]);
}

/* ---- graphs: aliasing and chains ---------------------------------------- */

static void t_graphs(void) {
  /* One buffer: x [4, K] at 0, w [K, 8] after it; the matmul writes y over
   * x (the host may place an output over an input only if it is dead, but
   * a plugin must still read its inputs before overwriting them; K > the
   * GEMM's K block makes a naive in-place GEMM read clobbered values). Then
   * y = relu(y) in place, then z = sum(y, axis 1). */
  enum { K = 300 };
  ph_graph g;
  ph_graph_init(&g, &P);
  int buf = ph_buffer(&g, (4 * K + K * 8 + 4) * 4);
  int x = ph_tensor_at(&g, KILN_F32, 2, (int64_t[]){4, K}, buf, 0);
  int w = ph_tensor_at(&g, KILN_F32, 2, (int64_t[]){K, 8}, buf, 4 * K * 4);
  int y = ph_tensor_at(&g, KILN_F32, 2, (int64_t[]){4, 8}, buf, 0);
  int z = ph_tensor_at(&g, KILN_F32, 1, (int64_t[]){4}, buf, (4 * K + K * 8) * 4);
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){x, w}, y, NULL, NULL);
  ph_node(&g, KILN_OP_RELU, 1, (int[]){y}, y, NULL, NULL);
  ph_node(&g, KILN_OP_SUM, 1, (int[]){y}, z, (int64_t[8]){2, 0}, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *xf = rnd(4 * K, 5, -1, 1), *wf = rnd(K * 8, 6, -1, 1), zf[4];
  for (int rep = 0; rep < 2; rep++) { /* runs repeat: rewrite x each time */
    cr_assert_eq(ph_write(&g, x, xf), KILN_OK);
    cr_assert_eq(ph_write(&g, w, wf), KILN_OK);
    cr_assert_eq(ph_run(&g), KILN_OK);
    cr_assert_eq(ph_read(&g, z, zf), KILN_OK);
    double ref[4], scale[4];
    for (int i = 0; i < 4; i++) {
      ref[i] = scale[i] = 0;
      for (int j = 0; j < 8; j++) {
        double s = 0, sa = 0;
        for (int k = 0; k < K; k++)
          s += (double)xf[i * K + k] * wf[k * 8 + j],
              sa += fabs((double)xf[i * K + k] * wf[k * 8 + j]);
        ref[i] += s > 0 ? s : 0;
        scale[i] += sa;
      }
    }
    check_close("matmul over its input, relu in place, sum", zf, ref, scale, 4, 2e-6, 1e-7);
  }
  free(xf), free(wf);
  ph_graph_free(&g);

  /* A transpose whose output overlaps its input, shifted by 10 floats. */
  ph_graph_init(&g, &P);
  buf = ph_buffer(&g, (600 + 10) * 4);
  x = ph_tensor_at(&g, KILN_F32, 2, (int64_t[]){20, 30}, buf, 0);
  y = ph_tensor_at(&g, KILN_F32, 2, (int64_t[]){30, 20}, buf, 40);
  ph_node(&g, KILN_OP_TRANSPOSE, 1, (int[]){x}, y, (int64_t[8]){1, 0}, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *tx = rnd(600, 8, -1, 1), ty[600];
  cr_assert_eq(ph_write(&g, x, tx), KILN_OK);
  cr_assert_eq(ph_run(&g), KILN_OK);
  cr_assert_eq(ph_read(&g, y, ty), KILN_OK);
  for (int i = 0; i < 30; i++)
    for (int j = 0; j < 20; j++)
      cr_assert_eq(ty[i * 20 + j], tx[j * 30 + i], "overlapping transpose at [%d, %d]", i, j);
  free(tx);
  ph_graph_free(&g);
}

/* Matmuls that multiply one B share a packing of it per run (plugin.c):
 * y1 = x1 @ W^T and y2 = x2 @ W^T share; SGD then writes W, so y3 and y4
 * (x1 again) must see the new W; u = x2 @ W (not transposed) is packed on
 * its own. K = 500 is two K blocks and N = 40 pads the last sliver. Two runs
 * with different W: the packing is redone every run. Each output must equal
 * a one-node graph of the same product bit for bit. */
/* y = x [M, K] @ w^T (tb = 1) or x [M, N] @ w (tb = 0), w [N, K] (with
 * t_shared_b's N and K), as a graph of that node alone. */
static void mm_alone(const float *x, int64_t M, const float *w, int tb, float *y) {
  enum { K = 500, N = 40 };
  ph_graph g;
  ph_graph_init(&g, &P);
  int tx = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M, tb ? K : N});
  int tw = ph_tensor(&g, KILN_F32, 2, (int64_t[]){N, K});
  int ty = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M, tb ? N : K});
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){tx, tw}, ty, (int64_t[8]){0, tb}, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_write(&g, tx, x), KILN_OK);
  cr_assert_eq(ph_write(&g, tw, w), KILN_OK);
  cr_assert_eq(ph_run(&g), KILN_OK);
  cr_assert_eq(ph_read(&g, ty, y), KILN_OK);
  ph_graph_free(&g);
}

static void t_shared_b(void) {
  enum { K = 500, N = 40, M1 = 5, M2 = 7 };
  ph_graph g;
  ph_graph_init(&g, &P);
  int w = ph_tensor(&g, KILN_F32, 2, (int64_t[]){N, K});
  int gw = ph_tensor(&g, KILN_F32, 2, (int64_t[]){N, K});
  int x1 = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M1, K});
  int x2 = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M2, K});
  int x3 = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M2, N});
  int y[4], u = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M2, K});
  int64_t rows[4] = {M1, M2, M2, M1};
  for (int i = 0; i < 4; i++) y[i] = ph_tensor(&g, KILN_F32, 2, (int64_t[]){rows[i], N});
  int64_t tb[8] = {0, 1};
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){x1, w}, y[0], tb, NULL);
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){x3, w}, u, NULL, NULL);
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){x2, w}, y[1], tb, NULL);
  ph_node(&g, KILN_OP_SGD, 2, (int[]){w, gw}, w, NULL, (float[8]){0.5f});
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){x2, w}, y[2], tb, NULL);
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){x1, w}, y[3], tb, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *xf1 = rnd(M1 * K, 31, -1, 1), *xf2 = rnd(M2 * K, 32, -1, 1), *xf3 = rnd(M2 * N, 33, -1, 1);
  float *gf = rnd(N * K, 34, -1, 1), *w2 = malloc(N * K * sizeof *w2);
  float *got = malloc(M2 * K * sizeof *got), *want = malloc(M2 * K * sizeof *want);
  for (int rep = 0; rep < 2; rep++) {
    float *wf = rnd(N * K, 35 + (uint64_t)rep, -1, 1);
    for (int i = 0; i < N * K; i++) w2[i] = wf[i] - 0.5f * gf[i];
    cr_assert_eq(ph_write(&g, w, wf), KILN_OK);
    cr_assert_eq(ph_write(&g, gw, gf), KILN_OK);
    cr_assert_eq(ph_write(&g, x1, xf1), KILN_OK);
    cr_assert_eq(ph_write(&g, x2, xf2), KILN_OK);
    cr_assert_eq(ph_write(&g, x3, xf3), KILN_OK);
    cr_assert_eq(ph_run(&g), KILN_OK);
    const float *xs[4] = {xf1, xf2, xf2, xf1}, *ws[4] = {wf, wf, w2, w2};
    for (int i = 0; i < 4; i++) {
      mm_alone(xs[i], rows[i], ws[i], 1, want);
      cr_assert_eq(ph_read(&g, y[i], got), KILN_OK);
      cr_assert(memcmp(got, want, (size_t)(rows[i] * N) * sizeof *got) == 0,
                "run %d: product %d differs from the same matmul alone (a stale shared packing?)",
                rep + 1, i + 1);
    }
    mm_alone(xf3, M2, wf, 0, want);
    cr_assert_eq(ph_read(&g, u, got), KILN_OK);
    cr_assert(memcmp(got, want, (size_t)(M2 * K) * sizeof *got) == 0, "run %d: x3 @ W differs", rep + 1);
    free(wf);
  }
  free(xf1), free(xf2), free(xf3), free(gf), free(w2), free(got), free(want);
  ph_graph_free(&g);
}

/* Many small parallel jobs back to back: 60 nodes, each split across the
 * pool, run 50 times. A lost wake-up in the pool would hang here (ctest's
 * timeout then fails the test). */
static void t_many_jobs(void) {
  enum { N = 40000, NODES = 60, RUNS = 50 };
  ph_graph g;
  ph_graph_init(&g, &P);
  int t[2] = {ph_tensor(&g, KILN_F32, 1, (int64_t[]){N}), ph_tensor(&g, KILN_F32, 1, (int64_t[]){N})};
  for (int i = 0; i < NODES; i++)
    ph_node(&g, KILN_OP_SCALE, 1, (int[]){t[i & 1]}, t[(i + 1) & 1], NULL, (float[8]){1.0f, 1.0f});
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
  for (int i = 0; i < N; i++) x[i] = (float)(i % 1000);
  for (int r = 0; r < RUNS; r++) {
    cr_assert_eq(ph_write(&g, t[0], x), KILN_OK);
    cr_assert_eq(ph_run(&g), KILN_OK);
  }
  cr_assert_eq(ph_read(&g, t[NODES & 1], y), KILN_OK);
  for (int i = 0; i < N; i++)
    cr_assert_eq(y[i], x[i] + NODES, "element %d: %g after %d increments of %g", i, (double)y[i],
                 NODES, (double)x[i]);
  free(x), free(y);
  ph_graph_free(&g);
}

/* ---- validation ---------------------------------------------------------- */

static void expect_error(kiln_status got, kiln_status want, const char *const *needles) {
  cr_assert_eq(got, want, "status %d, want %d; message: %s", got, want, ph_error());
  for (; *needles; needles++)
    cr_assert(strstr(ph_error(), *needles), "message \"%s\" lacks \"%s\"", ph_error(), *needles);
}
#define EXPECT(st, want, ...) expect_error((st), (want), (const char *const[]){__VA_ARGS__, NULL})

static void t_validation(void) {
  float buf[64] = {0};
  int32_t ibuf[8] = {0};
  float out[64];
  EXPECT(run_node(KILN_OP_MATMUL, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(4, 5), buf)},
                  SHP(2, 5), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "cpu: node 0 (matmul)", "a [2, 3] and b [4, 5]",
         "inner dimensions 3 and 4 differ");
  EXPECT(run_node(KILN_OP_MATMUL, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(3, 5), buf)},
                  SHP(2, 4), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(matmul)", "gives [2, 5]", "output is [2, 4]");
  EXPECT(run_node(KILN_OP_MATMUL, 2, (tin[]){F32IN(SHP(3), buf), F32IN(SHP(3, 5), buf)}, SHP(5),
                  out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(matmul)", "rank >= 2");
  EXPECT(run_node(KILN_OP_MATMUL, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(3, 5), buf)},
                  SHP(2, 5), out, (int64_t[8]){2}, NULL),
         KILN_INVALID_ARGUMENT, "(matmul)", "transpose flags");
  EXPECT(run_node(KILN_OP_MATMUL, 2, (tin[]){F32IN(SHP(2, 2, 3), buf), F32IN(SHP(3, 3, 5), buf)},
                  SHP(3, 2, 5), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(matmul)", "batch dimensions");
  EXPECT(run_node(KILN_OP_ADD, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(4), buf)}, SHP(2, 3),
                  out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "cpu: node 0 (add)", "a [2, 3] and b [4] do not broadcast");
  EXPECT(run_node(KILN_OP_SUB, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(3), buf)}, SHP(3, 2),
                  out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(sub)", "broadcast to [2, 3]", "output is [3, 2]");
  EXPECT(run_node(KILN_OP_ADD, 1, (tin[]){F32IN(SHP(2), buf)}, SHP(2), out, NULL, NULL),
         KILN_INVALID_ARGUMENT, "(add)", "expects 2 inputs, got 1");
  EXPECT(run_node(KILN_OP_RELU, 1, (tin[]){{KILN_I32, SHP(2), ibuf}}, SHP(2), out, NULL, NULL),
         KILN_DTYPE_MISMATCH, "(relu)", "dtype i32", "expected f32");
  EXPECT(run_node(KILN_OP_RELU, 1, (tin[]){{KILN_F16, SHP(2), ibuf}}, SHP(2), out, NULL, NULL),
         KILN_DTYPE_MISMATCH, "(relu)", "f16");
  EXPECT(run_node(KILN_OP_TANH, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(3, 2), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(tanh)", "[3, 2]", "[2, 3]");
  EXPECT(run_node(KILN_OP_TANH_BACKWARD, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(3), buf)},
                  SHP(2, 3), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(tanh_backward)", "same shape");
  EXPECT(run_node(KILN_OP_CROSS_ENTROPY, 2, (tin[]){F32IN(SHP(2, 3), buf), F32IN(SHP(2), buf)},
                  SCALAR, out, NULL, NULL),
         KILN_DTYPE_MISMATCH, "(cross_entropy)", "input 1", "expected i32");
  EXPECT(
      run_node(KILN_OP_CROSS_ENTROPY, 2, (tin[]){F32IN(SHP(2, 3), buf), {KILN_I32, SHP(3), ibuf}},
               SCALAR, out, NULL, NULL),
      KILN_SHAPE_MISMATCH, "(cross_entropy)", "labels [3]", "logits [2, 3]");
  EXPECT(
      run_node(KILN_OP_CROSS_ENTROPY, 2, (tin[]){F32IN(SHP(2, 3), buf), {KILN_I32, SHP(2), ibuf}},
               SHP(1), out, NULL, NULL),
      KILN_SHAPE_MISMATCH, "(cross_entropy)", "scalar");
  EXPECT(run_node(KILN_OP_CROSS_ENTROPY_BACKWARD, 3,
                  (tin[]){F32IN(SHP(1), buf), F32IN(SHP(2, 3), buf), {KILN_I32, SHP(2), ibuf}},
                  SHP(2, 3), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(cross_entropy_backward)", "dloss [1]");
  EXPECT(run_node(KILN_OP_SOFTMAX, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(6), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(softmax)");
  EXPECT(run_node(KILN_OP_SUM, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(2), out, (int64_t[8]){4, 0},
                  NULL),
         KILN_INVALID_ARGUMENT, "(sum)", "axis mask", "outside x [2, 3]");
  EXPECT(run_node(KILN_OP_MEAN, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(3), out, (int64_t[8]){2, 0},
                  NULL),
         KILN_SHAPE_MISMATCH, "(mean)", "gives [2]", "output is [3]");
  EXPECT(run_node(KILN_OP_MEAN, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(2), out, (int64_t[8]){2, 2},
                  NULL),
         KILN_INVALID_ARGUMENT, "(mean)", "keepdim");
  EXPECT(run_node(KILN_OP_EXPAND, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(3, 3), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(expand)", "x [2, 3]", "[3, 3]");
  EXPECT(run_node(KILN_OP_EXPAND, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(3), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(expand)");
  EXPECT(run_node(KILN_OP_RESHAPE, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(5), out, NULL, NULL),
         KILN_SHAPE_MISMATCH, "(reshape)", "6 elements", "has 5");
  EXPECT(run_node(KILN_OP_TRANSPOSE, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(3, 2), out,
                  (int64_t[8]){1, 1}, NULL),
         KILN_INVALID_ARGUMENT, "(transpose)", "permutation", "repeated");
  EXPECT(run_node(KILN_OP_TRANSPOSE, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(3, 2), out,
                  (int64_t[8]){0, 2}, NULL),
         KILN_INVALID_ARGUMENT, "(transpose)", "out of range");
  EXPECT(run_node(KILN_OP_TRANSPOSE, 1, (tin[]){F32IN(SHP(2, 3), buf)}, SHP(2, 3), out,
                  (int64_t[8]){1, 0}, NULL),
         KILN_SHAPE_MISMATCH, "(transpose)", "output axis 0");
  EXPECT(
      run_node(KILN_OP_SCALE, 1, (tin[]){F32IN(SHP(2), buf)}, SHP(2), out, NULL, (float[8]){NAN}),
      KILN_INVALID_ARGUMENT, "(scale)", "finite");
  EXPECT(
      run_node(KILN_OP_INCREMENT, 1, (tin[]){F32IN(SHP(2), buf)}, SHP(2), out, NULL, (float[8]){1}),
      KILN_INVALID_ARGUMENT, "(increment)", "in-place");
  EXPECT(run_node(99, 1, (tin[]){F32IN(SHP(2), buf)}, SHP(2), out, NULL, NULL), KILN_UNSUPPORTED,
         "cpu: node 0", "unknown op 99");
  EXPECT(run_node(5, 1, (tin[]){F32IN(SHP(2), buf)}, SHP(2), out, NULL, NULL), KILN_UNSUPPORTED,
         "unknown op 5");
  EXPECT(run_node(0xffffffffu, 0, NULL, SHP(2), out, NULL, NULL), KILN_UNSUPPORTED,
         "unknown op 4294967295");
  /* elementwise ops and reshape may run in place (ABI 1.3), the rest not */
  cr_assert_eq(P.api->op_support(0, KILN_OP_ADD, KILN_F32),
               KILN_OP_SUPPORT_RUNS | KILN_OP_SUPPORT_IN_PLACE);
  cr_assert_eq(P.api->op_support(0, KILN_OP_RESHAPE, KILN_F32),
               KILN_OP_SUPPORT_RUNS | KILN_OP_SUPPORT_IN_PLACE);
  cr_assert_eq(P.api->op_support(0, KILN_OP_CAST, KILN_F32), KILN_OP_SUPPORT_RUNS);
  cr_assert_eq(P.api->op_support(0, KILN_OP_CROSS_ENTROPY, KILN_F32), 1);
  cr_assert_eq(P.api->op_support(0, KILN_OP_INCREMENT, KILN_F32), 1);
  cr_assert_eq(P.api->op_support(0, KILN_OP_ADD, KILN_F16), 0);
  cr_assert_eq(P.api->op_support(0, 99, KILN_F32), 0);
  cr_assert_eq(P.api->op_support(0, 5, KILN_F32), 0);
  cr_assert_eq(P.api->op_support(0, KILN_OP_NONE, KILN_F32), 0);
  cr_assert_eq(P.api->op_support(1, KILN_OP_ADD, KILN_F32), 0);
}

static void t_validation_optim(void) {
  ph_graph g;
  ph_graph_init(&g, &P);
  int64_t n[1] = {4};
  int p = ph_tensor(&g, KILN_F32, 1, n), gr = ph_tensor(&g, KILN_F32, 1, n);
  int m = ph_tensor(&g, KILN_F32, 1, n), v = ph_tensor(&g, KILN_F32, 1, (int64_t[]){5});
  int t = ph_tensor(&g, KILN_F32, 0, NULL);
  int node = ph_node(&g, KILN_OP_SGD, 2, (int[]){p, gr}, p, NULL, (float[8]){0.1f, 0.9f});
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(sgd)", "momentum", "velocity");
  g.nodes[node].n_inputs = 3;
  g.nodes[node].inputs[2] = (uint32_t)v;
  EXPECT(ph_compile(&g), KILN_SHAPE_MISMATCH, "(sgd)", "velocity [5]", "param's shape [4]");
  g.nodes[node] = (kiln_plugin_node){.op = KILN_OP_ADAM,
                                     .n_inputs = 5,
                                     .inputs = {p, gr, m, (uint32_t)m, t},
                                     .output = p,
                                     .fp = {0.1f, 1.0f, 0.999f, 1e-8f}};
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(adam)", "beta1", "[0, 1)");
  g.nodes[node].fp[1] = 0.9f;
  g.nodes[node].inputs[4] = (uint32_t)m;
  EXPECT(ph_compile(&g), KILN_SHAPE_MISMATCH, "(adam)", "step [4]", "scalar");
  g.nodes[node].inputs[4] = (uint32_t)t;
  g.nodes[node].output = gr;
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(adam)", "in-place");
  g.nodes[node].output = p;
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  /* the output must describe param itself, not other bytes at its offset */
  int p2 = ph_tensor_at(&g, KILN_F32, 1, (int64_t[]){2}, (int)g.tensors[p].buffer, 0);
  g.nodes[node].output = (uint32_t)p2;
  EXPECT(ph_compile(&g), KILN_SHAPE_MISMATCH, "(adam)", "output [2]", "input 0 [4]");
  ph_graph_free(&g);
}

static void t_validation_tensors(void) {
  ph_graph g;
  ph_graph_init(&g, &P);
  int buf = ph_buffer(&g, 64);
  int x = ph_tensor_at(&g, KILN_F32, 1, (int64_t[]){8}, buf, 0);
  int y = ph_tensor_at(&g, KILN_F32, 1, (int64_t[]){8}, buf, 32);
  ph_node(&g, KILN_OP_RELU, 1, (int[]){x}, y, NULL, NULL);
  int n1 = ph_node(&g, KILN_OP_NEG, 1, (int[]){y}, x, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  g.tensors[x].offset = 36; /* [36, 68) exceeds the 64-byte buffer */
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "cpu: node 0 (relu)",
         "outside buffer 0 of 64 bytes");
  g.tensors[x].offset = UINT64_MAX - 8; /* overflow must not wrap */
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(relu)", "outside buffer");
  g.tensors[x].offset = 2;
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(relu)", "not a multiple");
  g.tensors[x].offset = 0;
  g.tensors[x].nbytes = 28;
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(relu)", "28 bytes", "needs 32");
  g.tensors[x].nbytes = 32;
  g.tensors[x].buffer = 3;
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(relu)", "buffer 3");
  g.tensors[x].buffer = 0;
  g.nodes[n1].output = 17;
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "cpu: node 1 (neg)", "tensor 17");
  g.nodes[n1].output = (uint32_t)x;
  g.tensors[y].shape[0] = -8;
  EXPECT(ph_compile(&g), KILN_INVALID_ARGUMENT, "(relu)", "invalid shape");
  g.tensors[y].shape[0] = 8;
  g.tensors[y].dtype = 77;
  EXPECT(ph_compile(&g), KILN_UNSUPPORTED, "unknown dtype 77");
  g.tensors[y].dtype = KILN_F32;
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());

  /* buffer calls refuse out-of-range bytes */
  char tmp[128];
  kiln_plugin_buffer *b = g.buffers[buf];
  EXPECT(P.api->buffer_read(P.dev, b, 60, tmp, 8), KILN_INVALID_ARGUMENT, "buffer_read",
         "64 bytes");
  EXPECT(P.api->buffer_write(P.dev, b, UINT64_MAX, tmp, 2), KILN_INVALID_ARGUMENT, "buffer_write");
  EXPECT(P.api->buffer_copy(P.dev, b, 0, b, 40, 32), KILN_INVALID_ARGUMENT, "buffer_copy");
  cr_assert_eq(P.api->buffer_copy(P.dev, b, 0, b, 32, 32), KILN_OK);
  kiln_plugin_buffer *nb = NULL;
  EXPECT(P.api->buffer_alloc(P.dev, 0, &nb), KILN_INVALID_ARGUMENT, "buffer_alloc", "size is 0");
  ph_graph_free(&g);
}

static void t_buffers(void) {
  kiln_plugin_buffer *b;
  cr_assert_eq(P.api->buffer_alloc(P.dev, 1000, &b), KILN_OK);
  unsigned char bytes[1000];
  cr_assert_eq(P.api->buffer_read(P.dev, b, 0, bytes, 1000), KILN_OK);
  for (int i = 0; i < 1000; i++) cr_assert_eq(bytes[i], 0, "buffers are zero-filled");
  for (int i = 0; i < 1000; i++) bytes[i] = (unsigned char)i;
  cr_assert_eq(P.api->buffer_write(P.dev, b, 0, bytes, 1000), KILN_OK);
  cr_assert_eq(P.api->buffer_copy(P.dev, b, 1, b, 0, 999), KILN_OK); /* overlapping */
  unsigned char back[1000];
  cr_assert_eq(P.api->buffer_read(P.dev, b, 0, back, 1000), KILN_OK);
  cr_assert_eq(back[0], 0);
  for (int i = 1; i < 1000; i++) cr_assert_eq(back[i], (unsigned char)(i - 1));
  P.api->buffer_free(P.dev, b);
}

/* ---- device -------------------------------------------------------------- */

Test(device, info_and_thread_count) {
  setenv("KILN_NUM_THREADS", "3", 1);
  cr_assert_eq(ph_open(&P, NULL), KILN_OK, "%s", ph_error());
  cr_assert_str_eq(P.info->name, "cpu");
  cr_assert_str_eq(P.info->version, "0.1.0");
  cr_assert_eq(P.api->device_count(), 1);
  kiln_device_info info;
  memset(&info, 0x5a, sizeof info);
  info.struct_size = sizeof info;
  cr_assert_eq(P.api->device_info(0, &info), KILN_OK, "%s", ph_error());
  cr_assert_eq(info.kind, KILN_DEVICE_CPU);
  cr_assert_eq(info.compute_units, 3);
  cr_assert_gt(strlen(info.name), 0);
  cr_assert_gt(info.memory_bytes, 0);
  cr_assert(strstr(info.details, "threads: 3"), "details: %s", info.details);
  /* an older, smaller struct: nothing past its struct_size is written */
  memset(&info, 0x5a, sizeof info);
  info.struct_size = (uint32_t)offsetof(kiln_device_info, vendor);
  cr_assert_eq(P.api->device_info(0, &info), KILN_OK);
  cr_assert_eq(info.kind, KILN_DEVICE_CPU);
  cr_assert_eq((unsigned char)info.vendor[0], 0x5a);
  cr_assert_eq(info.struct_size, (uint32_t)offsetof(kiln_device_info, vendor));
  EXPECT(P.api->device_info(1, &info), KILN_NOT_FOUND, "no device 1");
  kiln_plugin_device *d2;
  EXPECT(P.api->device_open(4, &d2), KILN_NOT_FOUND, "no device 4");
  ph_close(&P);
}

/* ---- determinism across thread counts ----------------------------------- */

/* Runs a graph of a large GEMM, a batch sum, a softmax and a cross-entropy
 * with KILN_NUM_THREADS = threads; returns the concatenated outputs. */
static float *determinism_run(const char *threads, int64_t *count) {
  open_with_threads(threads);
  const int64_t M = 257, K = 300, N = 129;
  ph_graph g;
  ph_graph_init(&g, &P);
  int a = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M, K}),
      b = ph_tensor(&g, KILN_F32, 2, (int64_t[]){K, N});
  int c = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M, N});
  int s = ph_tensor(&g, KILN_F32, 1, (int64_t[]){N});
  int sm = ph_tensor(&g, KILN_F32, 2, (int64_t[]){M, N});
  int lab = ph_tensor(&g, KILN_I32, 1, (int64_t[]){M});
  int loss = ph_tensor(&g, KILN_F32, 0, NULL);
  int tot = ph_tensor(&g, KILN_F32, 0, NULL);
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){a, b}, c, NULL, NULL);
  ph_node(&g, KILN_OP_SUM, 1, (int[]){c}, s, (int64_t[8]){1, 0}, NULL);
  ph_node(&g, KILN_OP_SOFTMAX, 1, (int[]){c}, sm, NULL, NULL);
  ph_node(&g, KILN_OP_CROSS_ENTROPY, 2, (int[]){c, lab}, loss, NULL, NULL);
  ph_node(&g, KILN_OP_SUM, 1, (int[]){c}, tot, (int64_t[8]){3, 0}, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *af = rnd(M * K, 1, -1, 1), *bf = rnd(K * N, 2, -1, 1);
  int32_t *lf = malloc((size_t)M * sizeof *lf);
  for (int64_t i = 0; i < M; i++) lf[i] = (int32_t)(i % N);
  ph_write(&g, a, af), ph_write(&g, b, bf), ph_write(&g, lab, lf);
  cr_assert_eq(ph_run(&g), KILN_OK);
  *count = M * N * 2 + N + 2;
  float *out = malloc((size_t)*count * sizeof *out);
  ph_read(&g, c, out);
  ph_read(&g, sm, out + M * N);
  ph_read(&g, s, out + 2 * M * N);
  ph_read(&g, loss, out + 2 * M * N + N);
  ph_read(&g, tot, out + 2 * M * N + N + 1);
  free(af), free(bf), free(lf);
  ph_graph_free(&g);
  ph_close(&P);
  return out;
}

Test(determinism, same_bits_for_1_2_and_3_threads) {
  int64_t n1, n2, n3;
  float *r1 = determinism_run("1", &n1), *r2 = determinism_run("2", &n2),
        *r3 = determinism_run("3", &n3);
  cr_assert_eq(n1, n2);
  cr_assert(memcmp(r1, r2, (size_t)n1 * sizeof *r1) == 0, "1 and 2 threads differ");
  cr_assert(memcmp(r1, r3, (size_t)n1 * sizeof *r1) == 0, "1 and 3 threads differ");
  free(r1), free(r2), free(r3);
}

/* ---- $KILN_PROFILE ------------------------------------------------------- */

/* Compiles relu(x) + x, runs it `runs` times and frees it with stderr sent
 * to a file; returns what was written there (malloc'd). */
static char *profile_run(const char *env, int runs) {
  if (env) setenv("KILN_PROFILE", env, 1);
  else unsetenv("KILN_PROFILE");
  open_with_threads("1");
  ph_graph g;
  ph_graph_init(&g, &P);
  int x = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 5});
  int r = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 5});
  int y = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 5});
  ph_node(&g, KILN_OP_RELU, 1, (int[]){x}, r, NULL, NULL);
  ph_node(&g, KILN_OP_ADD, 2, (int[]){r, x}, y, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float xs[15];
  for (int i = 0; i < 15; i++) xs[i] = (float)i - 7.0f;
  ph_write(&g, x, xs);
  for (int i = 0; i < runs; i++) cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
  tu_capture cap;
  tu_stderr_begin(&cap);
  ph_graph_free(&g);
  char *out = tu_stderr_end(&cap);
  ph_close(&P);
  return out;
}

Test(profile, per_op_table_when_asked) {
  char *out = profile_run("1", 3);
  cr_assert(strstr(out, "profile: graph of 2 nodes, 3 run(s)"), "profile header missing:\n%s", out);
  cr_assert(strstr(out, "relu") && strstr(out, "add"), "op rows missing:\n%s", out);
  cr_assert(strstr(out, "slowest nodes") && strstr(out, "out [3, 5]"),
            "node rows missing:\n%s", out);
  free(out);
}

Test(profile, silent_without_the_variable) {
  char *out = profile_run(NULL, 2);
  cr_assert(strstr(out, "profile") == NULL, "printed without KILN_PROFILE:\n%s", out);
  free(out);
  out = profile_run("0", 2);
  cr_assert(strstr(out, "profile") == NULL, "printed with KILN_PROFILE=0:\n%s", out);
  free(out);
}

/* ---- a node fused with the add of its result (plugin.c, fuse_accumulate) ---
 * t = a @ b (or t = slice_backward(a), a zero-padded into t) then out =
 * t + acc (or acc + t), t read by nothing else: the node adds into out
 * itself. The bits must be those of the two nodes (KILN_CPU_FUSE=0 runs
 * them apart; acc holds negative zeros, which acc + 0 turns into +0), the
 * profile must say the add was fused (else this would pass without testing
 * it), and the layouts that must not be fused are not: K past one GEMM
 * pass, t read later or read by the host. */

typedef struct acc_case {
  const char *what;
  int64_t M, N, K;      /* t [M, N]; matmul: a [M, K] @ b [K, N] */
  int ta;               /* matmul: a is [K, M] (dW = h^T dgates) */
  int slice_axis;       /* 0 or 1: t = slice_backward(a) along it, at K, of length L */
  int64_t L;
  int acc_first;        /* out = acc + t */
  int in_place;         /* out is acc's bytes */
  int t_output;         /* t flagged OUTPUT: the host reads it */
  int t_read_later;     /* a third node reads t */
  int want_fused;
} acc_case;

static int acc_is_slice(const acc_case *c) { return c->L > 0; }

/* a's shape: [M, K] or [K, M] (matmul), the slice of t (slice_backward). */
static void acc_a_shape(const acc_case *c, int64_t sh[2]) {
  if (acc_is_slice(c)) {
    sh[0] = c->slice_axis == 0 ? c->L : c->M;
    sh[1] = c->slice_axis == 0 ? c->N : c->L;
  } else {
    sh[0] = c->ta ? c->K : c->M;
    sh[1] = c->ta ? c->M : c->K;
  }
}

/* Builds and runs the case (fuse 0: under KILN_CPU_FUSE=0) on a, b, acc;
 * reads out into `out` (and t into `t` when the host may read it).
 * Returns whether the profile reported a fused node. */
static int acc_run(const acc_case *c, int fuse, const float *a, const float *b, const float *acc,
                   float *out, float *t) {
  ph_graph g;
  ph_graph_init(&g, &P);
  int64_t ash[2], mn[2] = {c->M, c->N};
  acc_a_shape(c, ash);
  int ia = ph_tensor(&g, KILN_F32, 2, ash);
  int ib = acc_is_slice(c) ? -1 : ph_tensor(&g, KILN_F32, 2, (int64_t[]){c->K, c->N});
  int iacc = ph_tensor(&g, KILN_F32, 2, mn);
  int it = ph_tensor(&g, KILN_F32, 2, mn);
  int iout = c->in_place ? iacc : ph_tensor(&g, KILN_F32, 2, mn);
  int ir = c->t_read_later ? ph_tensor(&g, KILN_F32, 2, mn) : -1;
  g.tensors[it].flags = c->t_output ? KILN_PTENSOR_OUTPUT : 0;
  if (acc_is_slice(c))
    ph_node(&g, KILN_OP_SLICE_BACKWARD, 1, (int[]){ia}, it, (int64_t[8]){c->slice_axis, c->K, c->L},
            NULL);
  else
    ph_node(&g, KILN_OP_MATMUL, 2, (int[]){ia, ib}, it, (int64_t[8]){c->ta, 0}, NULL);
  ph_node(&g, KILN_OP_ADD, 2, c->acc_first ? (int[]){iacc, it} : (int[]){it, iacc}, iout, NULL,
          NULL);
  if (ir >= 0) ph_node(&g, KILN_OP_RELU, 1, (int[]){it}, ir, NULL, NULL);
  if (!fuse) setenv("KILN_CPU_FUSE", "0", 1);
  setenv("KILN_PROFILE", "1", 1);
  kiln_status st = ph_compile(&g);
  unsetenv("KILN_PROFILE");
  unsetenv("KILN_CPU_FUSE");
  cr_assert_eq(st, KILN_OK, "%s: compile: %s", c->what, ph_error());
  cr_assert_eq(ph_write(&g, ia, a), KILN_OK, "%s", ph_error());
  if (ib >= 0) cr_assert_eq(ph_write(&g, ib, b), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_write(&g, iacc, acc), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_run(&g), KILN_OK, "%s: run: %s", c->what, ph_error());
  cr_assert_eq(ph_read(&g, iout, out), KILN_OK, "%s", ph_error());
  if (c->t_output || c->t_read_later)
    cr_assert_eq(ph_read(&g, it, t), KILN_OK, "%s", ph_error());
  tu_capture cap;
  tu_stderr_begin(&cap);
  ph_graph_free(&g);   /* prints the profile */
  char *report = tu_stderr_end(&cap);
  cr_assert_not_null(report);
  int fused = strstr(report, "fused into the node before") != NULL;
  free(report);
  return fused;
}

/* t's element (i, j) as the two nodes define it, in double. */
static double acc_t_ref(const acc_case *c, const float *a, const float *b, int64_t i, int64_t j,
                        double *mag) {
  if (acc_is_slice(c)) {
    int64_t r = c->slice_axis == 0 ? i - c->K : j - c->K;
    if (r < 0 || r >= c->L) return *mag = 0;
    double v = c->slice_axis == 0 ? a[r * c->N + j] : a[i * c->L + r];
    *mag = fabs(v);
    return v;
  }
  double s = 0, m = 0;
  for (int64_t k = 0; k < c->K; k++) {
    double x = c->ta ? a[k * c->M + i] : a[i * c->K + k];
    s += x * b[k * c->N + j];
    m += fabs(x * b[k * c->N + j]);
  }
  *mag = m;
  return s;
}

static void check_acc(const acc_case *c) {
  int64_t ash[2];
  acc_a_shape(c, ash);
  int64_t na = ash[0] * ash[1], nb = acc_is_slice(c) ? 1 : c->K * c->N, nc = c->M * c->N;
  float *a = rnd(na, 501, -1, 1), *b = rnd(nb, 502, -1, 1), *acc = rnd(nc, 503, -4, 4);
  for (int64_t i = 0; i < nc; i += 7) acc[i] = -0.0f;
  float *out[2], *t[2];
  for (int k = 0; k < 2; k++) {
    out[k] = malloc((size_t)nc * sizeof(float));
    t[k] = malloc((size_t)nc * sizeof(float));
    cr_assert(out[k] && t[k]);
  }
  int fused = acc_run(c, 1, a, b, acc, out[0], t[0]);
  cr_assert_eq(fused, c->want_fused, "%s: the profile %s the add fused", c->what,
               c->want_fused ? "does not say" : "says");
  cr_assert_not(acc_run(c, 0, a, b, acc, out[1], t[1]), "%s: fused under KILN_CPU_FUSE=0",
                c->what);
  cr_assert_eq(memcmp(out[0], out[1], (size_t)nc * sizeof(float)), 0,
               "%s: fused and unfused sums differ", c->what);
  if (c->t_output || c->t_read_later)
    cr_assert_eq(memcmp(t[0], t[1], (size_t)nc * sizeof(float)), 0, "%s: t differs", c->what);
  double *ref = malloc((size_t)nc * sizeof *ref), *scale = malloc((size_t)nc * sizeof *scale);
  cr_assert(ref && scale);
  for (int64_t i = 0; i < c->M; i++)
    for (int64_t j = 0; j < c->N; j++) {
      double m, v = acc_t_ref(c, a, b, i, j, &m);
      ref[i * c->N + j] = v + acc[i * c->N + j];
      scale[i * c->N + j] = m + fabs(acc[i * c->N + j]);
    }
  check_close(c->what, out[0], ref, scale, nc, 1e-5, 1e-6);
  free(ref), free(scale), free(a), free(b), free(acc);
  for (int k = 0; k < 2; k++) free(out[k]), free(t[k]);
}

static void check_add_fusion(void) {
  /* what, M, N, K, ta, slice_axis, L, acc_first, in_place, t_output, t_read_later, fused */
  static const acc_case cases[] = {
      {"matmul in place, t + acc", 37, 45, 29, 0, 0, 0, 0, 1, 0, 0, 1},
      {"matmul in place, acc + t, a transposed (dW)", 64, 48, 50, 1, 0, 0, 1, 1, 0, 0, 1},
      {"matmul, out apart from acc", 50, 128, 384, 0, 0, 0, 0, 0, 0, 0, 1},
      {"matmul, K past one pass (385)", 13, 17, 385, 0, 0, 0, 0, 1, 0, 0, 0},
      {"matmul, t read by a later node", 9, 11, 7, 0, 0, 0, 0, 1, 0, 1, 0},
      {"matmul, t read by the host", 9, 11, 7, 0, 0, 0, 0, 1, 1, 0, 0},
      {"slice_backward in place, a gate of [50, 4x128]", 50, 512, 256, 0, 1, 128, 0, 1, 0, 0, 1},
      {"slice_backward, acc + t, out apart, axis 0", 23, 19, 5, 0, 0, 11, 1, 0, 0, 0, 1},
      {"slice_backward at the start, odd sizes", 7, 33, 0, 0, 1, 13, 0, 1, 0, 0, 1},
      {"slice_backward, t read by a later node", 7, 33, 20, 0, 1, 13, 0, 1, 0, 1, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_acc(&cases[i]);
}

/* ---- suites: the same checks with 2 threads and with 1 ------------------- */

#define OP_TEST(suite, name, fn, opener) \
  Test(suite, name, .init = opener, .fini = close_plugin) { fn(); }
#define OP_TESTS(suite, opener)                                     \
  OP_TEST(suite, binary_broadcast, t_binary, opener)                \
  OP_TEST(suite, unary_and_helpers, t_unary, opener)                \
  OP_TEST(suite, cast, t_cast, opener)                              \
  OP_TEST(suite, fill, t_fill, opener)                              \
  OP_TEST(suite, tanh_sigmoid_range, t_tanh_sigmoid_range, opener)  \
  OP_TEST(suite, gelu_range, t_gelu_range, opener)                  \
  OP_TEST(suite, matmul, t_matmul, opener)                          \
  OP_TEST(suite, sum_mean, t_reduce, opener)                        \
  OP_TEST(suite, expand, t_expand, opener)                          \
  OP_TEST(suite, softmax_family, t_softmax, opener)                 \
  OP_TEST(suite, cross_entropy, t_cross_entropy, opener)            \
  OP_TEST(suite, transpose_reshape, t_layout, opener)               \
  OP_TEST(suite, optimizers, t_optim, opener)                       \
  OP_TEST(suite, graph_aliasing, t_graphs, opener)                  \
  OP_TEST(suite, shared_packed_b, t_shared_b, opener)               \
  OP_TEST(suite, add_fusion, check_add_fusion, opener)              \
  OP_TEST(suite, validation_ops, t_validation, opener)              \
  OP_TEST(suite, validation_optimizers, t_validation_optim, opener) \
  OP_TEST(suite, validation_tensors, t_validation_tensors, opener)  \
  OP_TEST(suite, buffers, t_buffers, opener)                        \
  OP_TEST(suite, empty_tensors, t_empty, opener)                    \
  OP_TEST(suite, many_small_jobs, t_many_jobs, opener)

OP_TESTS(ops, open2)
OP_TESTS(ops1, open1)
