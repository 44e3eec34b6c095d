/*
 * test_gradcheck_rnn.c - the sequence-model ops (embedding, slice, dropout,
 * clip_coef, assign) and the LSTM and GRU cells of kiln/rnn.h, forward and
 * backward, against double-precision references written here, in the
 * manner of test_gradcheck.c:
 *
 * Each case's differentiable inputs are params; y = build(params) and
 * loss = sum(y * R) for a fixed random R. The compiled forward+backward
 * graph runs on the CPU device, and the test checks
 *   (a) y against the double reference forward, and
 *   (b) each param's gradient against central finite differences (eps 1e-5)
 *       of L(x) = sum(ref(x) * R) in double,
 * with max |got - want| <= tol * max(1, max |want|).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"
#include "kiln/rnn.h"
#include "testutil.h"

enum { MAXP = 6 };

typedef struct rc_case rc_case;
/* Builds y from the params p[] (and extra inputs it creates itself). */
typedef kiln_node *(*build_fn)(const rc_case *c, kiln_graph *g, kiln_node **p);
/* The double reference: y[ny] from the params x[]. */
typedef void (*ref_fn)(const rc_case *c, double *const *x, double *y);

struct rc_case {
  const char *name;
  int n_p;
  int ndim[MAXP];
  int64_t shape[MAXP][4];
  build_fn build;
  ref_fn ref;
  int64_t ip[4];          /* case parameters (slice axis, start, length; H) */
  double tol;
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

/* ---- Philox4x32-10, written independently of the plugin's ---------------- */

static void philox(uint32_t out[4], const uint32_t ctr_in[4], uint32_t k0, uint32_t k1) {
  uint32_t x[4] = {ctr_in[0], ctr_in[1], ctr_in[2], ctr_in[3]};
  uint32_t k[2] = {k0, k1};
  for (int r = 0; r < 10; r++) {
    uint64_t a = (uint64_t)x[0] * 0xD2511F53u, b = (uint64_t)x[2] * 0xCD9E8D57u;
    uint32_t y0 = (uint32_t)(b >> 32) ^ x[1] ^ k[0], y1 = (uint32_t)b;
    uint32_t y2 = (uint32_t)(a >> 32) ^ x[3] ^ k[1], y3 = (uint32_t)a;
    x[0] = y0, x[1] = y1, x[2] = y2, x[3] = y3;
    k[0] += 0x9E3779B9u;
    k[1] += 0xBB67AE85u;
  }
  memcpy(out, x, sizeof x);
}

static int kept(uint64_t seed, uint32_t stream, uint32_t counter, int64_t i, float p) {
  uint32_t c[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), stream, counter}, r[4];
  philox(r, c, (uint32_t)seed, (uint32_t)(seed >> 32));
  float u = (float)(r[0] >> 8) * (1.0f / 16777216.0f);
  return u >= p;
}

Test(philox, known_answers) {
  /* Random123's kat_vectors for philox4x32_10. */
  uint32_t r[4];
  philox(r, (uint32_t[]){0, 0, 0, 0}, 0, 0);
  cr_assert(r[0] == 0x6627e8d5u && r[1] == 0xe169c58du && r[2] == 0xbc57ac4cu && r[3] == 0x9b00dbd8u,
            "philox(0; 0) = %08x %08x %08x %08x", r[0], r[1], r[2], r[3]);
  philox(r, (uint32_t[]){0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffu, 0xffffffffu);
  cr_assert(r[0] == 0x408f276du && r[1] == 0x41c83b0eu && r[2] == 0xa20bc7c6u && r[3] == 0x6d5451fdu,
            "philox(~0; ~0) = %08x %08x %08x %08x", r[0], r[1], r[2], r[3]);
  philox(r, (uint32_t[]){0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, 0xa4093822u, 0x299f31d0u);
  cr_assert(r[0] == 0xd16cfe09u && r[1] == 0x94fdccebu && r[2] == 0x5001e420u && r[3] == 0x24126ea1u,
            "philox(pi; pi) = %08x %08x %08x %08x", r[0], r[1], r[2], r[3]);
}

/* ---- cases --------------------------------------------------------------- */

/* An input a builder created, fed before the run. */
static kiln_node *extra_in;
static const void *extra_data;
static size_t extra_bytes;

/* embedding: p0 = weight [5, 3]; indices [2, 4] with repeats and two out of range. */
static const int32_t emb_idx[8] = {1, 4, 1, -1, 0, 7, 4, 1};
static kiln_node *build_embedding(const rc_case *c, kiln_graph *g, kiln_node **p) {
  (void)c;
  extra_in = kiln_input(g, "idx", KILN_I32, 2, (int64_t[]){2, 4});
  extra_data = emb_idx;
  extra_bytes = sizeof emb_idx;
  return kiln_embedding(g, p[0], extra_in);
}
static void ref_embedding(const rc_case *c, double *const *x, double *y) {
  (void)c;
  for (int i = 0; i < 8; i++)
    for (int k = 0; k < 3; k++) y[i * 3 + k] = emb_idx[i] >= 0 && emb_idx[i] < 5 ? x[0][emb_idx[i] * 3 + k] : 0.0;
}

/* slice: x [3, 5, 2] (rank 3), ip = axis, start, length. */
static kiln_node *build_slice(const rc_case *c, kiln_graph *g, kiln_node **p) {
  return kiln_slice(g, p[0], (int)c->ip[0], c->ip[1], c->ip[2]);
}
static void ref_slice(const rc_case *c, double *const *x, double *y) {
  int axis = (int)(c->ip[0] < 0 ? c->ip[0] + 3 : c->ip[0]);
  const int64_t *s = c->shape[0];
  int64_t k = 0;
  for (int64_t a = 0; a < s[0]; a++)
    for (int64_t b = 0; b < s[1]; b++)
      for (int64_t d = 0; d < s[2]; d++) {
        int64_t co[3] = {a, b, d};
        if (co[axis] < c->ip[1] || co[axis] >= c->ip[1] + c->ip[2]) continue;
        y[k++] = x[0][(a * s[1] + b) * s[2] + d];
      }
}

/* dropout: x [6, 40], counter 3, p 0.3, seed 0x1234567890, stream 5. */
#define DROP_P 0.3f
#define DROP_SEED 0x1234567890ull
static kiln_node *build_dropout(const rc_case *c, kiln_graph *g, kiln_node **p) {
  (void)c;
  kiln_node *ctr = kiln_fill(g, KILN_F32, 0, NULL, 3.0f);
  return kiln_dropout(g, p[0], ctr, DROP_P, DROP_SEED, 5);
}
static void ref_dropout(const rc_case *c, double *const *x, double *y) {
  int64_t n = numel(c->ndim[0], c->shape[0]);
  for (int64_t i = 0; i < n; i++) y[i] = kept(DROP_SEED, 5, 3, i, DROP_P) ? x[0][i] / (1.0 - DROP_P) : 0.0;
}

/* Recurrent cells, two steps sharing the weights, B = 2, H = c->ip[0]:
 * p0 xw0 [B, kH], p1 xw1 [B, kH], p2 h0 [B, H], p3 w_hh [kH, H], p4 b_hh [kH],
 * LSTM also p5 c0 [B, H]. y = h2 (GRU) or h2 + c2 (LSTM) [B, H]. */
static double sig(double v) { return 1.0 / (1.0 + exp(-v)); }

static kiln_node *build_lstm(const rc_case *c, kiln_graph *g, kiln_node **p) {
  (void)c;
  kiln_node *h1, *c1, *h2, *c2;
  if (kiln_lstm_cell(g, p[0], p[2], p[5], p[3], p[4], &h1, &c1) != KILN_OK) return NULL;
  if (kiln_lstm_cell(g, p[1], h1, c1, p[3], p[4], &h2, &c2) != KILN_OK) return NULL;
  return kiln_add(g, h2, c2);
}
static void ref_lstm(const rc_case *c, double *const *x, double *y) {
  enum { B = 2 };
  int64_t H = c->ip[0];
  double h[B * 8], cs[B * 8], gt[4 * 8];
  memcpy(h, x[2], sizeof(double) * (size_t)(B * H));
  memcpy(cs, x[5], sizeof(double) * (size_t)(B * H));
  for (int t = 0; t < 2; t++) {
    double hn[B * 8];
    for (int b = 0; b < B; b++) {
      for (int64_t j = 0; j < 4 * H; j++) {
        double s = x[t][b * 4 * H + j] + x[4][j];
        for (int64_t k = 0; k < H; k++) s += h[b * H + k] * x[3][j * H + k];
        gt[j] = s;
      }
      for (int64_t j = 0; j < H; j++) {
        double i = sig(gt[j]), f = sig(gt[H + j]), gg = tanh(gt[2 * H + j]), o = sig(gt[3 * H + j]);
        cs[b * H + j] = f * cs[b * H + j] + i * gg;
        hn[b * H + j] = o * tanh(cs[b * H + j]);
      }
    }
    memcpy(h, hn, sizeof(double) * (size_t)(B * H));
  }
  for (int64_t i = 0; i < B * H; i++) y[i] = h[i] + cs[i];
}

static kiln_node *build_gru(const rc_case *c, kiln_graph *g, kiln_node **p) {
  (void)c;
  kiln_node *h1 = kiln_gru_cell(g, p[0], p[2], p[3], p[4]);
  return kiln_gru_cell(g, p[1], h1, p[3], p[4]);
}
static void ref_gru(const rc_case *c, double *const *x, double *y) {
  enum { B = 2 };
  int64_t H = c->ip[0];
  double h[B * 8], hw[3 * 8];
  memcpy(h, x[2], sizeof(double) * (size_t)(B * H));
  for (int t = 0; t < 2; t++) {
    double hn[B * 8];
    for (int b = 0; b < B; b++) {
      const double *xw = x[t] + b * 3 * H;
      for (int64_t j = 0; j < 3 * H; j++) {
        double s = x[4][j];
        for (int64_t k = 0; k < H; k++) s += h[b * H + k] * x[3][j * H + k];
        hw[j] = s;
      }
      for (int64_t j = 0; j < H; j++) {
        double r = sig(xw[j] + hw[j]), z = sig(xw[H + j] + hw[H + j]);
        double n = tanh(xw[2 * H + j] + r * hw[2 * H + j]);
        hn[b * H + j] = (1.0 - z) * n + z * h[b * H + j];
      }
    }
    memcpy(h, hn, sizeof(double) * (size_t)(B * H));
  }
  memcpy(y, h, sizeof(double) * (size_t)(B * H));
}

/* ---- the harness --------------------------------------------------------- */

static double loss_ref(const rc_case *c, double *const *x, double *y, int64_t ny, const double *r) {
  c->ref(c, x, y);
  double l = 0.0;
  for (int64_t i = 0; i < ny; i++) l += y[i] * r[i];
  return l;
}

static void run_case(const rc_case *c) {
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
    tu_fill_uniform(xf[k], n, 1000 + 17 * (uint64_t)k, -1.0f, 1.0f);
    for (int64_t i = 0; i < n; i++) xd[k][i] = xf[k][i];
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, c->ndim[k], c->shape[k], &t[k]), KILN_OK, "%s", kiln_last_error());
    cr_assert_eq(kiln_tensor_upload(t[k], xf[k], (size_t)n * sizeof(float)), KILN_OK);
    p[k] = kiln_param(g, "x", t[k]);
  }
  extra_in = NULL;
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
  if (extra_in)
    cr_assert_eq(kiln_compiled_set_input(cc, extra_in, extra_data, extra_bytes), KILN_OK, "%s",
                 kiln_last_error());
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s: run: %s", c->name, kiln_last_error());

  cr_assert_eq(kiln_compiled_get_output(cc, y, yf, (size_t)ny * sizeof *yf), KILN_OK);
  c->ref(c, xd, yd);
  double scale = fmax(1.0, max_abs(yd, ny)), worst = 0.0;
  int64_t at = 0;
  for (int64_t i = 0; i < ny; i++)
    if (fabs(yf[i] - yd[i]) > worst) worst = fabs(yf[i] - yd[i]), at = i;
  cr_assert_leq(worst, c->tol * scale, "%s: forward y[%lld] = %.8g, reference %.8g (error %.3g > %.3g)",
                c->name, (long long)at, yf[at], yd[at], worst, c->tol * scale);

  const double eps = 1e-5;
  for (int k = 0; k < c->n_p; k++) {
    int64_t n = numel(c->ndim[k], c->shape[k]);
    float *gf = malloc((size_t)n * sizeof *gf);
    double *gd = malloc((size_t)n * sizeof *gd);
    cr_assert_eq(kiln_compiled_get_output(cc, kiln_grad(g, p[k]), gf, (size_t)n * sizeof *gf), KILN_OK);
    for (int64_t i = 0; i < n; i++) {
      double keep = xd[k][i];
      xd[k][i] = keep + eps;
      double lp = loss_ref(c, xd, yd, ny, rd);
      xd[k][i] = keep - eps;
      double lm = loss_ref(c, xd, yd, ny, rd);
      xd[k][i] = keep;
      gd[i] = (lp - lm) / (2 * eps);
    }
    double gscale = fmax(1.0, max_abs(gd, n));
    worst = 0.0;
    at = 0;
    for (int64_t i = 0; i < n; i++)
      if (fabs(gf[i] - gd[i]) > worst) worst = fabs(gf[i] - gd[i]), at = i;
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

static const rc_case cases[] = {
  {"embedding", 1, {2}, {{5, 3}}, build_embedding, ref_embedding, {0}, 1e-6},
  {"slice middle axis", 1, {3}, {{3, 5, 2}}, build_slice, ref_slice, {1, 2, 3}, 1e-6},
  {"slice first axis", 1, {3}, {{3, 5, 2}}, build_slice, ref_slice, {0, 1, 1}, 1e-6},
  {"slice last axis (negative)", 1, {3}, {{3, 5, 2}}, build_slice, ref_slice, {-1, 1, 1}, 1e-6},
  {"slice whole", 1, {3}, {{3, 5, 2}}, build_slice, ref_slice, {1, 0, 5}, 1e-6},
  {"dropout", 1, {2}, {{6, 40}}, build_dropout, ref_dropout, {0}, 1e-6},
  {"lstm two steps", 6, {2, 2, 2, 2, 1, 2}, {{2, 12}, {2, 12}, {2, 3}, {12, 3}, {12}, {2, 3}},
   build_lstm, ref_lstm, {3}, 1e-4},
  {"gru two steps", 5, {2, 2, 2, 2, 1}, {{2, 12}, {2, 12}, {2, 4}, {12, 4}, {12}},
   build_gru, ref_gru, {4}, 1e-4},
};

Test(gradcheck_rnn, embedding) { run_case(&cases[0]); }
Test(gradcheck_rnn, slice_middle) { run_case(&cases[1]); }
Test(gradcheck_rnn, slice_first) { run_case(&cases[2]); }
Test(gradcheck_rnn, slice_last) { run_case(&cases[3]); }
Test(gradcheck_rnn, slice_whole) { run_case(&cases[4]); }
Test(gradcheck_rnn, dropout) { run_case(&cases[5]); }
Test(gradcheck_rnn, lstm) { run_case(&cases[6]); }
Test(gradcheck_rnn, gru) { run_case(&cases[7]); }

/* ---- forward-only behaviour ---------------------------------------------- */

/* Dropout keeps close to 1 - p of many elements, and a run after the
 * in-graph counter advances draws a different mask without rebuilding. */
Test(dropout, counter_advances_mask) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  enum { N = 20000 };
  kiln_tensor *ctr_t;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 0, NULL, &ctr_t), KILN_OK);
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *x = kiln_fill(g, KILN_F32, 1, (int64_t[]){N}, 1.0f);
  kiln_node *ctr = kiln_increment(g, kiln_state(g, "counter", ctr_t), 1.0f);
  kiln_node *y = kiln_dropout(g, x, ctr, 0.25f, 42, 0);
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK, "%s", kiln_last_error());
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  static float y1[N], y2[N];
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK);
  kiln_compiled_get_output(cc, y, y1, sizeof y1);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK);
  kiln_compiled_get_output(cc, y, y2, sizeof y2);
  int k1 = 0, k2 = 0, same = 0;
  for (int i = 0; i < N; i++) {
    cr_assert(y1[i] == 0.0f || fabsf(y1[i] - 1.0f / 0.75f) < 1e-6f, "y1[%d] = %g", i, y1[i]);
    cr_assert_eq(y1[i] != 0.0f, kept(42, 0, 1, i, 0.25f), "element %d, counter 1", i);
    cr_assert_eq(y2[i] != 0.0f, kept(42, 0, 2, i, 0.25f), "element %d, counter 2", i);
    k1 += y1[i] != 0.0f;
    k2 += y2[i] != 0.0f;
    same += (y1[i] != 0.0f) == (y2[i] != 0.0f);
  }
  /* Binomial(20000, 0.75): sd 61; 6 sd bounds (the draw is fixed, so this
   * checks the generator's quality once, it cannot flake). */
  cr_assert(abs(k1 - 15000) < 370 && abs(k2 - 15000) < 370, "kept %d and %d of %d", k1, k2, N);
  /* independent masks agree on 0.75^2 + 0.25^2 = 62.5% of elements */
  cr_assert(abs(same - 12500) < 500, "masks of counters 1 and 2 agree on %d of %d", same, N);
  float c;
  kiln_tensor_download(ctr_t, &c, sizeof c);
  cr_assert_eq(c, 2.0f);
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  kiln_tensor_destroy(ctr_t);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* Clipping: the coefficient is min(1, max_norm / (norm + 1e-6)), both sides. */
Test(clip, global_norm) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  float a[6], b[4];
  tu_fill_uniform(a, 6, 1, -2.0f, 2.0f);
  tu_fill_uniform(b, 4, 2, -2.0f, 2.0f);
  double ss = 0.0;
  for (int i = 0; i < 6; i++) ss += (double)a[i] * a[i];
  for (int i = 0; i < 4; i++) ss += (double)b[i] * b[i];
  double norm = sqrt(ss);
  for (int side = 0; side < 2; side++) {
    float max_norm = side ? (float)(norm * 2.0) : (float)(norm * 0.5);
    kiln_graph *g;
    kiln_graph_create(&g);
    kiln_node *ga = kiln_input(g, "a", KILN_F32, 2, (int64_t[]){2, 3});
    kiln_node *gb = kiln_input(g, "b", KILN_F32, 1, (int64_t[]){4});
    kiln_node *clipped[2], *sumsq;
    kiln_node *coef = kiln_clip_grad_norm(g, (kiln_node *[]){ga, gb}, 2, max_norm, clipped, &sumsq);
    cr_assert_not_null(coef, "%s", kiln_last_error());
    kiln_graph_output(g, coef);
    kiln_graph_output(g, sumsq);
    kiln_graph_output(g, clipped[0]);
    kiln_graph_output(g, clipped[1]);
    kiln_compiled *cc;
    cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
    kiln_compiled_set_input(cc, ga, a, sizeof a);
    kiln_compiled_set_input(cc, gb, b, sizeof b);
    cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
    float got_coef, got_ss, ca[6], cb[4];
    kiln_compiled_get_output(cc, coef, &got_coef, sizeof got_coef);
    kiln_compiled_get_output(cc, sumsq, &got_ss, sizeof got_ss);
    kiln_compiled_get_output(cc, clipped[0], ca, sizeof ca);
    kiln_compiled_get_output(cc, clipped[1], cb, sizeof cb);
    double want = fmin(1.0, max_norm / (norm + 1e-6));
    cr_assert_float_eq(got_ss, ss, 1e-5 * ss, "sum of squares %g, want %g", got_ss, ss);
    cr_assert_float_eq(got_coef, want, 1e-6, "coefficient %g, want %g", got_coef, want);
    for (int i = 0; i < 6; i++) cr_assert_float_eq(ca[i], a[i] * want, 1e-6);
    for (int i = 0; i < 4; i++) cr_assert_float_eq(cb[i], b[i] * want, 1e-6);
    kiln_compiled_destroy(cc);
    kiln_graph_destroy(g);
  }
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* Assign writes a state after the nodes created before it read the old
 * value; the next run sees the new one (a carried hidden state). */
Test(assign, carries_state_between_runs) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  kiln_tensor *st;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 1, (int64_t[]){3}, &st), KILN_OK);
  float init[3] = {1, 2, 3};
  kiln_tensor_upload(st, init, sizeof init);
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *s = kiln_state(g, "h", st);
  kiln_node *old = kiln_scale(g, s, 1.0f, 0.0f);      /* reads the old value */
  kiln_node *next = kiln_scale(g, s, 2.0f, 1.0f);     /* h' = 2h + 1 */
  cr_assert_not_null(kiln_assign(g, s, next), "%s", kiln_last_error());
  kiln_graph_output(g, old);
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  float o[3], h[3];
  kiln_compiled_run(cc);
  kiln_compiled_get_output(cc, old, o, sizeof o);
  cr_assert(o[0] == 1 && o[1] == 2 && o[2] == 3);
  kiln_compiled_run(cc);
  kiln_compiled_get_output(cc, old, o, sizeof o);
  cr_assert(o[0] == 3 && o[1] == 5 && o[2] == 7, "second run read %g %g %g", o[0], o[1], o[2]);
  kiln_tensor_download(st, h, sizeof h);
  cr_assert(h[0] == 7 && h[1] == 11 && h[2] == 15);
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  kiln_tensor_destroy(st);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* Refusals name the op, the shapes and what is wrong. */
Test(errors, messages) {
  kiln_graph *g;
  kiln_graph_create(&g);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 2, (int64_t[]){4, 6});
  cr_assert_null(kiln_slice(g, x, 1, 4, 3));
  cr_assert(strstr(kiln_last_error(), "slice") && strstr(kiln_last_error(), "[4, 6]"), "%s",
            kiln_last_error());
  cr_assert_null(kiln_slice(g, x, 2, 0, 1));
  cr_assert(strstr(kiln_last_error(), "axis 2"), "%s", kiln_last_error());
  kiln_node *fidx = kiln_input(g, "f", KILN_F32, 1, (int64_t[]){3});
  cr_assert_null(kiln_embedding(g, x, fidx));
  cr_assert(strstr(kiln_last_error(), "embedding: indices must be i32"), "%s", kiln_last_error());
  cr_assert_null(kiln_dropout(g, x, x, 0.5f, 1, 0));
  cr_assert(strstr(kiln_last_error(), "counter"), "%s", kiln_last_error());
  kiln_node *one = kiln_fill(g, KILN_F32, 0, NULL, 1.0f);
  cr_assert_null(kiln_dropout(g, x, one, 1.0f, 1, 0));
  cr_assert(strstr(kiln_last_error(), "p = 1"), "%s", kiln_last_error());
  cr_assert_null(kiln_assign(g, x, x));
  cr_assert(strstr(kiln_last_error(), "kiln_state"), "%s", kiln_last_error());
  kiln_node *h = kiln_input(g, "h", KILN_F32, 2, (int64_t[]){4, 5});
  kiln_node *w = kiln_input(g, "w", KILN_F32, 2, (int64_t[]){20, 5});
  kiln_node *ho, *co;
  cr_assert_neq(kiln_lstm_cell(g, x, h, h, w, NULL, &ho, &co), KILN_OK);
  cr_assert(strstr(kiln_last_error(), "lstm_cell") && strstr(kiln_last_error(), "[4, 6]"), "%s",
            kiln_last_error());
  cr_assert_eq(kiln_graph_status(g), KILN_INVALID_ARGUMENT, "the first error stays");
  kiln_graph_destroy(g);
}
