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
  ATT("attention T 70 H 2 D 70 causal (D > 64: two packed chunks)", 1, 70, 140, 2, 1, 0.0, 37),
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
Test(gradcheck_gpt, attention_wide_head) { run_case(&att_cases[10]); }

/* ---- forward-only behaviour ---------------------------------------------- */

/* Runs attention on qkv [B, T, 3C] host data; y [B, T, C]. */
static void run_attention(kiln_device *dev, int64_t B, int64_t T, int64_t C, int H, int causal,
                          const float *qkv, float *y) {
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *in = kiln_input(g, "qkv", KILN_F32, 3, (int64_t[]){B, T, 3 * C});
  kiln_node *out = kiln_attention(g, in, H, causal, 0.0f);
  cr_assert_not_null(out, "%s", kiln_last_error());
  kiln_graph_output(g, out);
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_set_input(cc, in, qkv, (size_t)(B * T * 3 * C) * sizeof(float)), KILN_OK);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(cc, out, y, (size_t)(B * T * C) * sizeof(float)), KILN_OK);
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
}

/* Larger forwards (many tiles of both kinds; D = 24, 8 lanes three times;
 * D = 100 > 64, two packed chunks with a tail) against the naive reference. */
Test(attention, forward_large_against_naive) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  static const int64_t cfg[][4] = {{2, 200, 96, 4}, {1, 150, 200, 2}};   /* B, T, C, H */
  for (int k = 0; k < 2; k++) {
    int64_t B = cfg[k][0], T = cfg[k][1], C = cfg[k][2], H = cfg[k][3];
    float *qkv = malloc(sizeof(float) * (size_t)(B * T * 3 * C)), *y = malloc(sizeof(float) * (size_t)(B * T * C));
    double *qd = malloc(sizeof(double) * (size_t)(B * T * 3 * C)), *yd = malloc(sizeof(double) * (size_t)(B * T * C));
    tu_fill_uniform(qkv, B * T * 3 * C, 5, -2.0f, 2.0f);
    for (int64_t i = 0; i < B * T * 3 * C; i++) qd[i] = qkv[i];
    for (int causal = 0; causal < 2; causal++) {
      run_attention(dev, B, T, C, (int)H, causal, qkv, y);
      attention_ref(B, T, C, H, causal, 0.0, qd, yd);
      double worst = 0.0;
      for (int64_t i = 0; i < B * T * C; i++) worst = fmax(worst, fabs(y[i] - yd[i]));
      cr_assert_leq(worst, 1e-5 * fmax(1.0, max_abs(yd, B * T * C)), "D %lld, causal %d: max error %.3g",
                    (long long)(C / H), causal, worst);
    }
    free(qkv); free(y); free(qd); free(yd);
  }
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* Causal attention: changing positions t+1..T-1 of qkv (q, k and v) never
 * changes y[0..t]; without the mask it does. */
Test(attention, causal_never_looks_ahead) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  enum { B = 2, T = 100, C = 12, H = 3 };
  static float qkv[B * T * 3 * C], mod[B * T * 3 * C], y0[B * T * C], y1[B * T * C];
  tu_fill_uniform(qkv, B * T * 3 * C, 7, -1.0f, 1.0f);
  static const int cut[] = {0, 31, 32, 63, 64, 70, 98};
  for (size_t k = 0; k < sizeof cut / sizeof cut[0]; k++) {
    int t = cut[k];
    memcpy(mod, qkv, sizeof qkv);
    for (int b = 0; b < B; b++)
      tu_fill_uniform(mod + (b * T + t + 1) * 3 * C, (T - t - 1) * 3 * C, 100 + (uint64_t)k, -3.0f, 3.0f);
    for (int causal = 1; causal >= 0; causal--) {
      run_attention(dev, B, T, C, H, causal, qkv, y0);
      run_attention(dev, B, T, C, H, causal, mod, y1);
      int same = 1;
      for (int b = 0; b < B; b++)
        same = same && memcmp(y0 + b * T * C, y1 + b * T * C, sizeof(float) * (size_t)((t + 1) * C)) == 0;
      if (causal) cr_assert(same, "causal: changing positions > %d changed y[0..%d]", t, t);
      else cr_assert(!same, "non-causal: changing positions > %d left y[0..%d] unchanged", t, t);
    }
  }
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* nanoGPT's get_lr with it = step - 1, in double. */
static double want_lr(double step, double mx, double mn, double W, double S) {
  double i = step - 1.0;
  if (i < W) return mx * (i + 1.0) / (W + 1.0);
  if (i > S) return mn;
  double r = S == W ? 0.0 : (i - W) / (S - W);
  return mn + 0.5 * (1.0 + cos(3.14159265358979323846 * r)) * (mx - mn);
}

Test(lr_schedule, values) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  static const struct { float mx, mn; int64_t W, S; } sched[] = {
    {1e-3f, 1e-4f, 10, 100}, {6e-4f, 6e-5f, 0, 50}, {1.0f, 0.0f, 7, 7}};
  for (size_t k = 0; k < sizeof sched / sizeof sched[0]; k++) {
    kiln_graph *g;
    kiln_graph_create(&g);
    kiln_node *step = kiln_input(g, "step", KILN_F32, 0, NULL);
    kiln_node *lr = kiln_lr_schedule(g, step, sched[k].mx, sched[k].mn, sched[k].W, sched[k].S);
    cr_assert_not_null(lr, "%s", kiln_last_error());
    kiln_graph_output(g, lr);
    kiln_compiled *cc;
    cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
    double W = (double)sched[k].W, S = (double)sched[k].S;
    double steps[] = {1, W, W + 1, W + 1 + floor((S - W) / 2), S, S + 1, S + 2, S + 10};
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
      float t = (float)steps[s], got;
      if (t < 1) continue;
      kiln_compiled_set_input(cc, step, &t, sizeof t);
      cr_assert_eq(kiln_compiled_run(cc), KILN_OK);
      kiln_compiled_get_output(cc, lr, &got, sizeof got);
      double want = want_lr(t, sched[k].mx, sched[k].mn, W, S);
      cr_assert(fabs(got - want) <= 1e-6 * fabs(want) + 1e-12,
                "schedule %zu (W %g, S %g): step %g gives %.9g, want %.9g", k, W, S, (double)t, got, want);
    }
    /* the landmarks themselves, so the formula above cannot drift */
    float t = (float)(W + 1), got;
    kiln_compiled_set_input(cc, step, &t, sizeof t);
    kiln_compiled_run(cc);
    kiln_compiled_get_output(cc, lr, &got, sizeof got);
    cr_assert_float_eq(got, sched[k].mx, 1e-6 * sched[k].mx, "step W + 1 is the peak");
    t = (float)(S + 10);
    kiln_compiled_set_input(cc, step, &t, sizeof t);
    kiln_compiled_run(cc);
    kiln_compiled_get_output(cc, lr, &got, sizeof got);
    cr_assert_eq(got, sched[k].mn, "past S the lr is min_lr");
    kiln_compiled_destroy(cc);
    kiln_graph_destroy(g);
  }
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* Bad shapes and parameters are refused with a message naming the op and
 * the shapes. */
#define REFUSED(call, ...)                                                                  \
  do {                                                                                      \
    cr_assert_null(call);                                                                   \
    const char *words_[] = {__VA_ARGS__};                                                   \
    for (size_t w_ = 0; w_ < sizeof words_ / sizeof words_[0]; w_++)                        \
      cr_assert(strstr(kiln_last_error(), words_[w_]), "'%s' lacks '%s'", kiln_last_error(), \
                words_[w_]);                                                                \
  } while (0)

Test(errors, refused_with_messages) {
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 2, (int64_t[]){4, 6});
  kiln_node *g6 = kiln_input(g, "g6", KILN_F32, 1, (int64_t[]){6});
  kiln_node *g5 = kiln_input(g, "g5", KILN_F32, 1, (int64_t[]){5});
  kiln_node *g16 = kiln_input(g, "g16", KILN_F32, 2, (int64_t[]){1, 6});
  REFUSED(kiln_layernorm(g, x, g5, g6, 1e-5f), "layernorm", "gamma [5]", "[4, 6]");
  REFUSED(kiln_layernorm(g, x, g6, g16, 1e-5f), "layernorm", "beta [1, 6]");
  REFUSED(kiln_layernorm(g, x, g6, g6, 0.0f), "layernorm", "eps");
  REFUSED(kiln_gelu(g, x, 2), "gelu", "approximate");
  kiln_node *q8 = kiln_input(g, "q8", KILN_F32, 3, (int64_t[]){2, 5, 8});
  REFUSED(kiln_attention(g, q8, 1, 1, 0.0f), "attention", "[2, 5, 8]", "multiple of 3");
  kiln_node *q18 = kiln_input(g, "q18", KILN_F32, 3, (int64_t[]){2, 5, 18});
  REFUSED(kiln_attention(g, q18, 4, 1, 0.0f), "attention", "4 heads", "C = 6");
  REFUSED(kiln_attention(g, q18, 0, 1, 0.0f), "attention", "0 heads");
  REFUSED(kiln_attention(g, q18, 2, 2, 0.0f), "attention", "causal");
  REFUSED(kiln_attention(g, x, 2, 1, 0.0f), "attention", "[4, 6]", "[B, T, 3C]");
  kiln_node *dy = kiln_input(g, "dy", KILN_F32, 3, (int64_t[]){2, 5, 5});
  kiln_node *yy = kiln_input(g, "y", KILN_F32, 3, (int64_t[]){2, 5, 6});
  REFUSED(kiln_node_create(g, KILN_OP_ATTENTION_BACKWARD, 3, (kiln_node *[]){dy, q18, yy},
                           (int64_t[KILN_OP_MAX_IPARAMS]){2, 1}, NULL, KILN_DTYPE_INVALID, -1, NULL),
          "attention_backward", "dy [2, 5, 5]", "[2, 5, 6]");
  kiln_node *step = kiln_input(g, "step", KILN_F32, 1, (int64_t[]){2});
  REFUSED(kiln_lr_schedule(g, step, 1e-3f, 1e-4f, 1, 10), "lr_schedule", "single-element");
  kiln_node *s0 = kiln_input(g, "s0", KILN_F32, 0, NULL);
  REFUSED(kiln_lr_schedule(g, s0, 1e-3f, 1e-4f, 20, 10), "lr_schedule", "warmup 20", "decay_steps 10");
  cr_assert_eq(kiln_graph_status(g), KILN_SHAPE_MISMATCH, "the first error stays");
  kiln_graph_destroy(g);
}

/* ---- weight tying -------------------------------------------------------- */

/* Builds loss = sum(tanh(embedding(we, idx)) @ wm^T * R) on params we, wm
 * (the same node when tied) and returns their gradients [V, C]. */
enum { TV = 7, TC = 5, TN = 6 };
static void tied_grads(kiln_device *dev, int tied, float *g_emb, float *g_mat) {
  static const int32_t idx[TN] = {3, 0, 3, 6, 1, 3};
  float w[TV * TC], r[TN * TV];
  tu_fill_uniform(w, TV * TC, 11, -1.0f, 1.0f);
  tu_fill_uniform(r, TN * TV, 12, -1.0f, 1.0f);
  kiln_tensor *t[2];
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *p[2];
  for (int k = 0; k < 2 - tied; k++) {
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 2, (int64_t[]){TV, TC}, &t[k]), KILN_OK);
    kiln_tensor_upload(t[k], w, sizeof w);
    p[k] = kiln_param(g, k ? "wm" : "we", t[k]);
  }
  if (tied) p[1] = p[0];
  kiln_node *in = kiln_input(g, "idx", KILN_I32, 1, (int64_t[]){TN});
  kiln_node *R = kiln_input(g, "R", KILN_F32, 2, (int64_t[]){TN, TV});
  kiln_node *logits = kiln_matmul(g, kiln_tanh(g, kiln_embedding(g, p[0], in)), p[1], 0, 1);
  kiln_node *loss = kiln_sum(g, kiln_mul(g, logits, R), 0, 0);
  cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s", kiln_last_error());
  kiln_graph_output(g, kiln_grad(g, p[0]));
  if (!tied) kiln_graph_output(g, kiln_grad(g, p[1]));
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  kiln_compiled_set_input(cc, in, idx, sizeof idx);
  kiln_compiled_set_input(cc, R, r, sizeof r);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
  kiln_compiled_get_output(cc, kiln_grad(g, p[0]), g_emb, sizeof(float) * TV * TC);
  if (!tied) kiln_compiled_get_output(cc, kiln_grad(g, p[1]), g_mat, sizeof(float) * TV * TC);
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  for (int k = 0; k < 2 - tied; k++) kiln_tensor_destroy(t[k]);
}

/* A param used by an embedding and by a matmul (GPT's tied wte and lm
 * head) gets the sum of both gradients. */
Test(autodiff, weight_tying_sums_both_uses) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  float ge[TV * TC], gm[TV * TC], gt[TV * TC];
  tied_grads(dev, 0, ge, gm);
  tied_grads(dev, 1, gt, NULL);
  double ne = 0.0, nm = 0.0;
  for (int i = 0; i < TV * TC; i++) {
    ne += fabs(ge[i]);
    nm += fabs(gm[i]);
    cr_assert_float_eq(gt[i], ge[i] + gm[i], 1e-5, "element %d: tied %g, embedding %g + matmul %g", i,
                       gt[i], ge[i], gm[i]);
  }
  cr_assert(ne > 0.1 && nm > 0.1, "both uses contribute (|embedding| %g, |matmul| %g)", ne, nm);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* ---- memory -------------------------------------------------------------- */

/* The planned memory of a forward+backward graph with one attention op
 * (B = 1, C = 128, H = 4) grows linearly in T: no [T, T] tensor. */
Test(attention, memory_linear_in_t) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  static const int64_t Ts[] = {64, 256, 1024};
  uint64_t bytes[3];
  for (int k = 0; k < 3; k++) {
    int64_t T = Ts[k], C = 128;
    kiln_tensor *tq;
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 3, (int64_t[]){1, T, 3 * C}, &tq), KILN_OK);
    kiln_graph *g;
    kiln_graph_create(&g);
    kiln_node *qkv = kiln_param(g, "qkv", tq);
    kiln_node *y = kiln_attention(g, qkv, 4, 1, 0.0f);
    kiln_node *R = kiln_input(g, "R", KILN_F32, 3, (int64_t[]){1, T, C});
    kiln_node *loss = kiln_sum(g, kiln_mul(g, y, R), 0, 0);
    cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s", kiln_last_error());
    kiln_graph_output(g, kiln_grad(g, qkv));
    kiln_compiled *cc;
    cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
    kiln_memory_stats ms = {.struct_size = sizeof ms};
    cr_assert_eq(kiln_compiled_memory(cc, &ms), KILN_OK);
    bytes[k] = ms.arena_bytes + ms.persistent_bytes;
    printf("attention fwd+bwd, B 1, T %4lld, C 128, H 4: arena %llu + persistent %llu = %llu bytes "
           "(unplanned %llu)\n",
           (long long)T, (unsigned long long)ms.arena_bytes, (unsigned long long)ms.persistent_bytes,
           (unsigned long long)bytes[k], (unsigned long long)ms.unplanned_bytes);
    if (k == 2) cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
    kiln_compiled_destroy(cc);
    kiln_graph_destroy(g);
    kiln_tensor_destroy(tq);
  }
  /* linear would be 4x per step, quadratic 16x */
  cr_assert_lt((double)bytes[1] / (double)bytes[0], 5.0, "T 64 -> 256: %llu -> %llu bytes",
               (unsigned long long)bytes[0], (unsigned long long)bytes[1]);
  cr_assert_lt((double)bytes[2] / (double)bytes[1], 5.0, "T 256 -> 1024: %llu -> %llu bytes",
               (unsigned long long)bytes[1], (unsigned long long)bytes[2]);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* ---- threads ------------------------------------------------------------- */

/* Runs layer norm -> attention -> loss forward+backward with `threads` CPU
 * threads; writes y and the gradients of x, gamma and beta. */
enum { DB = 2, DT = 150, DC = 48, DH = 3 };
static void block_run(const char *threads, float *y, float *gx, float *gg, float *gb) {
  setenv("KILN_NUM_THREADS", threads, 1);
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  kiln_device_info info = {.struct_size = sizeof info};
  cr_assert_eq(kiln_device_get_info(dev, &info), KILN_OK);
  cr_assert_eq(info.compute_units, (uint32_t)atoi(threads), "the pool has %u threads, not %s",
               info.compute_units, threads);
  static float x[DB * DT * 3 * DC], gam[3 * DC], bet[3 * DC], r[DB * DT * DC];
  tu_fill_uniform(x, DB * DT * 3 * DC, 21, -2.0f, 2.0f);
  tu_fill_uniform(gam, 3 * DC, 22, 0.5f, 1.5f);
  tu_fill_uniform(bet, 3 * DC, 23, -0.5f, 0.5f);
  tu_fill_uniform(r, DB * DT * DC, 24, -1.0f, 1.0f);
  kiln_tensor *t[3];
  const float *src[3] = {x, gam, bet};
  const int64_t shp[3][3] = {{DB, DT, 3 * DC}, {3 * DC}, {3 * DC}};
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *p[3];
  for (int k = 0; k < 3; k++) {
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, k ? 1 : 3, shp[k], &t[k]), KILN_OK);
    kiln_tensor_upload(t[k], src[k], sizeof(float) * (size_t)kiln_tensor_numel(t[k]));
    p[k] = kiln_param(g, "p", t[k]);
  }
  kiln_node *ya = kiln_attention(g, kiln_layernorm(g, p[0], p[1], p[2], 1e-5f), DH, 1, 0.0f);
  kiln_node *R = kiln_input(g, "R", KILN_F32, 3, (int64_t[]){DB, DT, DC});
  cr_assert_eq(kiln_graph_backward(g, kiln_sum(g, kiln_mul(g, ya, R), 0, 0)), KILN_OK, "%s", kiln_last_error());
  kiln_graph_output(g, ya);
  for (int k = 0; k < 3; k++) kiln_graph_output(g, kiln_grad(g, p[k]));
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  kiln_compiled_set_input(cc, R, r, sizeof r);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
  kiln_compiled_get_output(cc, ya, y, sizeof(float) * DB * DT * DC);
  kiln_compiled_get_output(cc, kiln_grad(g, p[0]), gx, sizeof x);
  kiln_compiled_get_output(cc, kiln_grad(g, p[1]), gg, sizeof gam);
  kiln_compiled_get_output(cc, kiln_grad(g, p[2]), gb, sizeof bet);
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  for (int k = 0; k < 3; k++) kiln_tensor_destroy(t[k]);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* The work split over threads decides only who computes what: results are
 * bit for bit those of one thread. */
Test(threads, results_do_not_depend_on_the_pool) {
  static float y1[DB * DT * DC], x1[DB * DT * 3 * DC], g1[3 * DC], b1[3 * DC];
  static float y3[DB * DT * DC], x3[DB * DT * 3 * DC], g3[3 * DC], b3[3 * DC];
  block_run("1", y1, x1, g1, b1);
  block_run("3", y3, x3, g3, b3);
  cr_assert(memcmp(y1, y3, sizeof y1) == 0, "y differs between 1 and 3 threads");
  cr_assert(memcmp(x1, x3, sizeof x1) == 0, "dx differs between 1 and 3 threads");
  cr_assert(memcmp(g1, g3, sizeof g1) == 0, "dgamma differs between 1 and 3 threads");
  cr_assert(memcmp(b1, b3, sizeof b1) == 0, "dbeta differs between 1 and 3 threads");
  double n = 0.0;
  for (int i = 0; i < DB * DT * 3 * DC; i++) n += fabs(x1[i]);
  cr_assert(n > 1.0, "the gradient is not trivially zero (sum |dx| = %g)", n);
}

/* ---- out of memory ------------------------------------------------------- */

/* dgamma and dbeta of layer norm over x [600, 5] (three chunks of rows),
 * with plugin allocation fail_at failing ("" for none). */
static kiln_status ln_params_run(const char *fail_at, float *out) {
  if (*fail_at) setenv("KILN_FAULT_ALLOC_CPU", fail_at, 1);
  else unsetenv("KILN_FAULT_ALLOC_CPU");
  kiln_context *ctx;
  kiln_device *dev;
  kiln_status st = kiln_context_create(NULL, &ctx);
  cr_assert_eq(st, KILN_OK, "%s", kiln_last_error());
  if ((st = kiln_device_open(ctx, "cpu", 0, &dev)) != KILN_OK) {
    kiln_context_destroy(ctx);
    return st;
  }
  static float x[600 * 5], r[600 * 5];
  tu_fill_uniform(x, 600 * 5, 31, -2.0f, 2.0f);
  tu_fill_uniform(r, 600 * 5, 32, -1.0f, 1.0f);
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *in = kiln_input(g, "x", KILN_F32, 2, (int64_t[]){600, 5});
  kiln_node *R = kiln_input(g, "R", KILN_F32, 2, (int64_t[]){600, 5});
  kiln_node *dp = kiln_node_create(g, KILN_OP_LAYERNORM_BACKWARD_PARAMS, 2, (kiln_node *[]){R, in}, NULL,
                                   (float[KILN_OP_MAX_FPARAMS]){1e-5f}, KILN_DTYPE_INVALID, -1, NULL);
  cr_assert_not_null(dp, "%s", kiln_last_error());
  kiln_graph_output(g, dp);
  kiln_compiled *cc = NULL;
  st = kiln_graph_compile(g, dev, &cc);
  if (st == KILN_OK) {
    kiln_compiled_set_input(cc, in, x, sizeof x);
    kiln_compiled_set_input(cc, R, r, sizeof r);
    st = kiln_compiled_run(cc);
    if (st == KILN_OK) st = kiln_compiled_get_output(cc, dp, out, sizeof(float) * 10);
  }
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  unsetenv("KILN_FAULT_ALLOC_CPU");
  return st;
}

/* Without memory for its partial sums, layernorm_backward_params sums the
 * same chunks in the same order: the same bits. The first failing
 * allocation that compile survives is the kernel's own, at run time. */
Test(layernorm, params_without_scratch_give_the_same_bits) {
  float ref[10], got[10];
  cr_assert_eq(ln_params_run("", ref), KILN_OK, "%s", kiln_last_error());
  int absorbed = 0;
  for (int n = 1; n <= 200 && !absorbed; n++) {
    char num[16];
    snprintf(num, sizeof num, "%d", n);
    kiln_status st = ln_params_run(num, got);
    if (st != KILN_OK) {
      cr_assert_eq(st, KILN_OUT_OF_MEMORY, "allocation %d: %s", n, kiln_last_error());
      continue;
    }
    absorbed = 1;
    for (int i = 0; i < 10; i++)
      cr_assert(got[i] == ref[i], "allocation %d failed: [%d] = %.9g, with scratch %.9g", n, i, got[i], ref[i]);
  }
  cr_assert(absorbed, "no run got through");
}

/* ---- attention backward: fused and three-pass ---------------------------- */

/* dqkv of attention_backward on qkv [2, T, 9 D] (3 heads of D) with
 * `threads` CPU threads. The CPU plugin fuses the three backward passes
 * per (batch, head) when B * H >= 4 * threads: one thread takes the fused
 * path, four the three passes. */
static void att_bwd_run(const char *threads, int64_t T, int64_t D, int causal, float *dqkv) {
  setenv("KILN_NUM_THREADS", threads, 1);
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  int64_t n_qkv = 2 * T * 9 * D, n_y = 2 * T * 3 * D;
  float *qkv = malloc((size_t)n_qkv * sizeof *qkv), *dy = malloc((size_t)n_y * sizeof *dy);
  cr_assert(qkv && dy);
  tu_fill_uniform(qkv, n_qkv, 41, -2.0f, 2.0f);
  tu_fill_uniform(dy, n_y, 42, -1.0f, 1.0f);
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *q = kiln_input(g, "qkv", KILN_F32, 3, (int64_t[]){2, T, 9 * D});
  kiln_node *d = kiln_input(g, "dy", KILN_F32, 3, (int64_t[]){2, T, 3 * D});
  kiln_node *y = kiln_attention(g, q, 3, causal, 0.0f);
  kiln_node *dq = kiln_node_create(g, KILN_OP_ATTENTION_BACKWARD, 3, (kiln_node *[]){d, q, y},
                                   (int64_t[KILN_OP_MAX_IPARAMS]){3, causal}, NULL,
                                   KILN_DTYPE_INVALID, -1, NULL);
  cr_assert_not_null(dq, "%s", kiln_last_error());
  kiln_graph_output(g, dq);
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  kiln_compiled_set_input(cc, q, qkv, sizeof(float) * (size_t)n_qkv);
  kiln_compiled_set_input(cc, d, dy, sizeof(float) * (size_t)n_y);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(cc, dq, dqkv, sizeof(float) * (size_t)n_qkv), KILN_OK);
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  free(qkv), free(dy);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* The fused passes give the three passes' bits: T = 40 and 64 (every query
 * tile sees one key tile, so L comes from the tile's own scores) and 100
 * (several key tiles), causal or not, D = 6 (no block of 32: the narrow
 * loops only) and 40 (one block of 32 and the rest). */
Test(attention, fused_backward_gives_the_three_passes_bits) {
  static const int64_t Ts[] = {40, 64, 100}, Ds[] = {6, 40};
  for (int k = 0; k < 3; k++)
    for (int e = 0; e < 2; e++)
      for (int causal = 0; causal < 2; causal++) {
        int64_t n = 2 * Ts[k] * 9 * Ds[e];
        float *f = malloc((size_t)n * sizeof *f), *t = malloc((size_t)n * sizeof *t);
        cr_assert(f && t);
        att_bwd_run("1", Ts[k], Ds[e], causal, f);
        att_bwd_run("4", Ts[k], Ds[e], causal, t);
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) {
          cr_assert(memcmp(&f[i], &t[i], sizeof f[i]) == 0,
                    "T %lld D %lld causal %d: dqkv[%lld] fused %.9g, three passes %.9g", (long long)Ts[k],
                    (long long)Ds[e], causal, (long long)i, (double)f[i], (double)t[i]);
          s += fabs(f[i]);
        }
        cr_assert(s > 1.0, "T %lld D %lld causal %d: dqkv is not trivially zero (sum |dqkv| = %g)",
                  (long long)Ts[k], (long long)Ds[e], causal, s);
        free(f), free(t);
      }
}
