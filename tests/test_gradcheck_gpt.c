/*
 * test_gradcheck_gpt.c - the transformer ops of kiln/transformer.h (layer
 * norm, GELU, fused multi-head attention, the lr schedule) on the CPU
 * device, against double-precision references written here, in the manner
 * of test_gradcheck_rnn.c:
 *
 * Each case's differentiable inputs are params; y = build(params) and
 * loss = sum(y * R) for a fixed random R. The compiled forward+backward
 * graph runs, and the test checks
 *   (a) y against the double reference forward, and
 *   (b) each param's gradient against central finite differences (eps 1e-5)
 *       of L(x) = sum(ref(x) * R) in double,
 * with max |got - want| <= tol * max(1, max |want|).
 *
 * The attention reference is the naive one: per head it materialises the
 * whole [T, T] softmax matrix. T = 130 is larger than both of the kernel's
 * tiles (32 queries, 64 keys), so several tiles, the causal diagonal tile
 * and partial tiles are all exercised.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"
#include "kiln/rnn.h"
#include "kiln/transformer.h"
#include "testutil.h"

enum { MAXP = 3 };

typedef struct tc_case tc_case;
typedef kiln_node *(*build_fn)(const tc_case *c, kiln_graph *g, kiln_node **p);
typedef void (*ref_fn)(const tc_case *c, double *const *x, double *y);

struct tc_case {
  const char *name;
  int n_p;
  int ndim[MAXP];
  int64_t shape[MAXP][4];
  build_fn build;
  ref_fn ref;
  int64_t ip[4];          /* attention: H, causal; gelu: approximate */
  double fp;              /* layer norm eps; attention scale (0: 1 / sqrt(D)) */
  float lo, hi;           /* the params' values are uniform in [lo, hi) */
  double tol;
  int64_t fd_every;       /* finite differences of every k-th element (0: all) */
};

static int64_t numel(int ndim, const int64_t *s) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= s[i];
  return n;
}

static double max_abs(const double *v, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(v[i]));
  return m;
}

/* ---- references ---------------------------------------------------------- */

/* layer norm: p0 x [..., C], p1 gamma [C], p2 beta [C]. */
static kiln_node *build_layernorm(const tc_case *c, kiln_graph *g, kiln_node **p) {
  return kiln_layernorm(g, p[0], p[1], p[2], (float)c->fp);
}
static void ref_layernorm(const tc_case *c, double *const *x, double *y) {
  int64_t C = c->shape[0][c->ndim[0] - 1], N = numel(c->ndim[0], c->shape[0]) / C;
  for (int64_t r = 0; r < N; r++) {
    const double *xr = x[0] + r * C;
    double mean = 0.0, var = 0.0;
    for (int64_t k = 0; k < C; k++) mean += xr[k];
    mean /= (double)C;
    for (int64_t k = 0; k < C; k++) var += (xr[k] - mean) * (xr[k] - mean);
    var /= (double)C;
    for (int64_t k = 0; k < C; k++)
      y[r * C + k] = (xr[k] - mean) / sqrt(var + c->fp) * x[1][k] + x[2][k];
  }
}

static kiln_node *build_gelu(const tc_case *c, kiln_graph *g, kiln_node **p) {
  return kiln_gelu(g, p[0], (int)c->ip[0]);
}
static void ref_gelu(const tc_case *c, double *const *x, double *y) {
  int64_t n = numel(c->ndim[0], c->shape[0]);
  for (int64_t i = 0; i < n; i++) {
    double v = x[0][i];
    y[i] = c->ip[0] ? 0.5 * v * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)))
                    : 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
  }
}

/* Naive attention of qkv [B, T, 3C] into y [B, T, C]: per (b, h) the full
 * [T, T] score matrix, masked, softmaxed, times v. */
static void attention_ref(int64_t B, int64_t T, int64_t C, int64_t H, int causal, double scale,
                          const double *qkv, double *y) {
  int64_t D = C / H;
  if (scale == 0.0) scale = 1.0 / sqrt((double)D);
  double *P = malloc(sizeof(double) * (size_t)(T * T));
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++) {
      const double *base = qkv + b * T * 3 * C;
      for (int64_t i = 0; i < T; i++) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < T; j++) {
          double s = 0.0;
          for (int64_t d = 0; d < D; d++)
            s += base[i * 3 * C + h * D + d] * base[j * 3 * C + C + h * D + d];
          P[i * T + j] = causal && j > i ? -INFINITY : s * scale;
          mx = fmax(mx, P[i * T + j]);
        }
        double sum = 0.0;
        for (int64_t j = 0; j < T; j++) sum += (P[i * T + j] = exp(P[i * T + j] - mx));
        for (int64_t j = 0; j < T; j++) P[i * T + j] /= sum;
      }
      for (int64_t i = 0; i < T; i++)
        for (int64_t d = 0; d < D; d++) {
          double acc = 0.0;
          for (int64_t j = 0; j < T; j++) acc += P[i * T + j] * base[j * 3 * C + 2 * C + h * D + d];
          y[(b * T + i) * C + h * D + d] = acc;
        }
    }
  free(P);
}

static kiln_node *build_attention(const tc_case *c, kiln_graph *g, kiln_node **p) {
  return kiln_attention(g, p[0], (int)c->ip[0], (int)c->ip[1], (float)c->fp);
}
static void ref_attention(const tc_case *c, double *const *x, double *y) {
  const int64_t *s = c->shape[0];
  attention_ref(s[0], s[1], s[2] / 3, c->ip[0], (int)c->ip[1], c->fp, x[0], y);
}

/* ---- the harness --------------------------------------------------------- */

static double loss_ref(const tc_case *c, double *const *x, double *y, int64_t ny, const double *r) {
  c->ref(c, x, y);
  double l = 0.0;
  for (int64_t i = 0; i < ny; i++) l += y[i] * r[i];
  return l;
}

static void run_case(const tc_case *c) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  kiln_graph *g = NULL;
  kiln_compiled *cc = NULL;
  kiln_tensor *t[MAXP] = {0};
  kiln_node *p[MAXP] = {0};
  float *xf[MAXP] = {0};
  double *xd[MAXP] = {0};
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  for (int k = 0; k < c->n_p; k++) {
    int64_t n = numel(c->ndim[k], c->shape[k]);
    xf[k] = malloc((size_t)n * sizeof(float));
    xd[k] = malloc((size_t)n * sizeof(double));
    tu_fill_uniform(xf[k], n, 1000 + 17 * (uint64_t)k, c->lo, c->hi);
    for (int64_t i = 0; i < n; i++) xd[k][i] = xf[k][i];
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, c->ndim[k], c->shape[k], &t[k]), KILN_OK, "%s",
                 kiln_last_error());
    cr_assert_eq(kiln_tensor_upload(t[k], xf[k], (size_t)n * sizeof(float)), KILN_OK);
    p[k] = kiln_param(g, "x", t[k]);
  }
  kiln_node *y = c->build(c, g, p);
  cr_assert_not_null(y, "%s: build: %s", c->name, kiln_last_error());
  int64_t os[KILN_MAX_DIMS];
  int on = kiln_node_shape(y, os);
  int64_t ny = numel(on, os);
  kiln_node *r = kiln_input(g, "R", KILN_F32, on, os);
  kiln_node *loss = kiln_sum(g, kiln_mul(g, y, r), 0, 0);
  cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s: backward: %s", c->name, kiln_last_error());
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  for (int k = 0; k < c->n_p; k++) {
    cr_assert_not_null(kiln_grad(g, p[k]), "%s: param %d has no gradient", c->name, k);
    cr_assert_eq(kiln_graph_output(g, kiln_grad(g, p[k])), KILN_OK);
  }
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s: compile: %s", c->name, kiln_last_error());
  float *rf = malloc((size_t)ny * sizeof *rf), *yf = malloc((size_t)ny * sizeof *yf);
  double *rd = malloc((size_t)ny * sizeof *rd), *yd = malloc((size_t)ny * sizeof *yd);
  tu_fill_uniform(rf, ny, 99, -1.0f, 1.0f);
  for (int64_t i = 0; i < ny; i++) rd[i] = rf[i];
  cr_assert_eq(kiln_compiled_set_input(cc, r, rf, (size_t)ny * sizeof *rf), KILN_OK);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s: run: %s", c->name, kiln_last_error());

  cr_assert_eq(kiln_compiled_get_output(cc, y, yf, (size_t)ny * sizeof *yf), KILN_OK);
  c->ref(c, xd, yd);
  double scale = fmax(1.0, max_abs(yd, ny)), worst = 0.0;
  int64_t at = 0;
  for (int64_t i = 0; i < ny; i++)
    if (!(fabs(yf[i] - yd[i]) <= worst)) worst = fabs(yf[i] - yd[i]), at = i;
  cr_assert_leq(worst, c->tol * scale, "%s: forward y[%lld] = %.8g, reference %.8g (error %.3g > %.3g)",
                c->name, (long long)at, yf[at], yd[at], worst, c->tol * scale);

  const double eps = 1e-5;
  for (int k = 0; k < c->n_p; k++) {
    int64_t n = numel(c->ndim[k], c->shape[k]);
    float *gf = malloc((size_t)n * sizeof *gf);
    double *gd = malloc((size_t)n * sizeof *gd);
    cr_assert_eq(kiln_compiled_get_output(cc, kiln_grad(g, p[k]), gf, (size_t)n * sizeof *gf), KILN_OK);
    int64_t every = c->fd_every > 0 ? c->fd_every : 1;
    for (int64_t i = 0; i < n; i += every) {
      double keep = xd[k][i];
      xd[k][i] = keep + eps;
      double lp = loss_ref(c, xd, yd, ny, rd);
      xd[k][i] = keep - eps;
      double lm = loss_ref(c, xd, yd, ny, rd);
      xd[k][i] = keep;
      gd[i] = (lp - lm) / (2 * eps);
    }
    double gscale = 1.0;
    for (int64_t i = 0; i < n; i += every) gscale = fmax(gscale, fabs(gd[i]));
    worst = 0.0;
    at = 0;
    for (int64_t i = 0; i < n; i += every)
      if (!(fabs(gf[i] - gd[i]) <= worst)) worst = fabs(gf[i] - gd[i]), at = i;
    cr_assert_leq(worst, c->tol * gscale,
                  "%s: d loss / d param %d [%lld] = %.8g, finite differences %.8g (error %.3g > %.3g)",
                  c->name, k, (long long)at, gf[at], gd[at], worst, c->tol * gscale);
    free(gf);
    free(gd);
  }
  free(rf); free(yf); free(rd); free(yd);
  for (int k = 0; k < c->n_p; k++) {
    free(xf[k]);
    free(xd[k]);
  }
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  for (int k = 0; k < c->n_p; k++) kiln_tensor_destroy(t[k]);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

#define LN(name, nd, ...) {name, 3, {nd, 1, 1}, __VA_ARGS__, build_layernorm, ref_layernorm, {0}, 1e-5, -1.0f, 1.0f, 1e-4, 0}
/* qkv [B, T, 3C], H heads, causal, scale */
#define ATT(name, B, T, C, H, causal, scale, every) \
  {name, 1, {3}, {{B, T, 3 * (C)}}, build_attention, ref_attention, {H, causal}, scale, -1.0f, 1.0f, 2e-4, every}

static const tc_case ln_cases[] = {
  LN("layernorm [3, 5]", 2, {{3, 5}, {5}, {5}}),
  LN("layernorm [2, 3, 7]", 3, {{2, 3, 7}, {7}, {7}}),
  LN("layernorm [4, 1] (C = 1)", 2, {{4, 1}, {1}, {1}}),
  LN("layernorm [33] (one row, C not a multiple of 8)", 1, {{33}, {33}, {33}}),
  LN("layernorm [600, 5] (three row chunks)", 2, {{600, 5}, {5}, {5}}),
};

static const tc_case gelu_cases[] = {
  {"gelu exact", 1, {2}, {{5, 7}}, build_gelu, ref_gelu, {0}, 0, -4.0f, 4.0f, 1e-5, 0},
  {"gelu tanh", 1, {2}, {{5, 7}}, build_gelu, ref_gelu, {1}, 0, -4.0f, 4.0f, 1e-5, 0},
  {"gelu exact, big values", 1, {1}, {{64}}, build_gelu, ref_gelu, {0}, 0, -12.0f, 12.0f, 1e-5, 0},
  {"gelu tanh, big values", 1, {1}, {{64}}, build_gelu, ref_gelu, {1}, 0, -12.0f, 12.0f, 1e-5, 0},
};

static const tc_case att_cases[] = {
  ATT("attention T 1 H 1 D 3 causal", 2, 1, 3, 1, 1, 0.0, 0),
  ATT("attention T 3 H 2 D 3", 2, 3, 6, 2, 0, 0.0, 0),
  ATT("attention T 3 H 2 D 3 causal", 2, 3, 6, 2, 1, 0.0, 0),
  ATT("attention T 17 H 4 D 3 causal", 1, 17, 12, 4, 1, 0.0, 0),
  ATT("attention T 17 H 4 D 3", 1, 17, 12, 4, 0, 0.0, 0),
  ATT("attention T 65 H 2 D 4 causal", 2, 65, 8, 2, 1, 0.0, 0),
  ATT("attention T 65 H 1 D 9", 1, 65, 9, 1, 0, 0.0, 0),
  ATT("attention T 130 H 1 D 3 causal", 1, 130, 3, 1, 1, 0.0, 0),
  ATT("attention T 130 H 2 D 3", 1, 130, 6, 2, 0, 0.0, 0),
  ATT("attention T 130 H 4 D 10 causal scale 0.5", 1, 130, 40, 4, 1, 0.5, 37),
};

Test(gradcheck_gpt, layernorm) {
  for (size_t i = 0; i < sizeof ln_cases / sizeof ln_cases[0]; i++) run_case(&ln_cases[i]);
}
Test(gradcheck_gpt, gelu) {
  for (size_t i = 0; i < sizeof gelu_cases / sizeof gelu_cases[0]; i++) run_case(&gelu_cases[i]);
}
Test(gradcheck_gpt, attention_small) { for (int i = 0; i < 5; i++) run_case(&att_cases[i]); }
Test(gradcheck_gpt, attention_t65) { run_case(&att_cases[5]); run_case(&att_cases[6]); }
Test(gradcheck_gpt, attention_t130_causal) { run_case(&att_cases[7]); }
Test(gradcheck_gpt, attention_t130) { run_case(&att_cases[8]); }
Test(gradcheck_gpt, attention_t130_scale) { run_case(&att_cases[9]); }
