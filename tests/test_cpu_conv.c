/*
 * test_cpu_conv.c - the CPU plugin's conv2d and pool2d kernels, driven
 * through the plugin ABI (tests/util/plugin_harness.h), against naive
 * double-precision references written here.
 *
 * Error bound: for each output element the reference also sums the
 * magnitudes of its terms (mag); a float result passes when
 * |got - ref| <= TOL_REL * mag + TOL_ABS. Every kernel accumulates in
 * float, so its error grows with the number and size of the terms, which is
 * what mag measures. A wrong index or a missed tap gives an error of the
 * order of mag itself.
 *
 * The backward references are the transposed-convolution sums written in
 * gather form (each dx element collects the output taps that read it), not
 * the scatter the kernels use, and finite differences of the double forward
 * check them again.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_harness.h"
#include "testutil.h"

#define TOL_REL 2e-5
#define TOL_ABS 1e-6

/* ---- cases --------------------------------------------------------------- */

typedef struct conv_case {
  int64_t N, C, H, W, O, KH, KW;
  int64_t sh, sw, ph, pw, dh, dw, G;
  int bias;
} conv_case;

static int64_t conv_oh(const conv_case *c) { return (c->H + 2 * c->ph - c->dh * (c->KH - 1) - 1) / c->sh + 1; }
static int64_t conv_ow(const conv_case *c) { return (c->W + 2 * c->pw - c->dw * (c->KW - 1) - 1) / c->sw + 1; }

static void conv_ip(const conv_case *c, int64_t ip[8]) {
  memset(ip, 0, 8 * sizeof ip[0]);
  ip[0] = c->sh, ip[1] = c->sw, ip[2] = c->ph, ip[3] = c->pw;
  ip[4] = c->dh, ip[5] = c->dw, ip[6] = c->G;
}

static const char *conv_case_str(const conv_case *c) {
  static char buf[256];
  snprintf(buf, sizeof buf,
           "x [%lld, %lld, %lld, %lld] w [%lld, %lld, %lld, %lld] stride %lldx%lld pad %lldx%lld "
           "dil %lldx%lld groups %lld bias %d",
           (long long)c->N, (long long)c->C, (long long)c->H, (long long)c->W, (long long)c->O,
           (long long)(c->C / c->G), (long long)c->KH, (long long)c->KW, (long long)c->sh,
           (long long)c->sw, (long long)c->ph, (long long)c->pw, (long long)c->dh,
           (long long)c->dw, (long long)c->G, c->bias);
  return buf;
}

/* N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups, bias */
static const conv_case conv_cases[] = {
    {1, 1, 7, 9, 2, 3, 3, 1, 1, 0, 0, 1, 1, 1, 0},      /* plain 3x3 */
    {3, 3, 9, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},      /* "same" padding, bias, batch 3 */
    {1, 4, 11, 13, 6, 5, 5, 2, 2, 2, 2, 1, 1, 1, 1},    /* 5x5 stride 2 pad 2 */
    {3, 3, 10, 9, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1},     /* pointwise, images batched per GEMM */
    {1, 4, 8, 8, 4, 1, 1, 2, 2, 0, 0, 1, 1, 2, 0},      /* 1x1 stride 2, groups 2 */
    {3, 4, 9, 11, 4, 3, 5, 3, 2, 1, 2, 1, 1, 2, 1},     /* non-square kernel, stride 3x2 */
    {1, 8, 13, 12, 8, 3, 3, 1, 1, 2, 2, 2, 2, 4, 0},    /* dilation 2, groups 4 */
    {3, 4, 7, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4, 1},      /* depthwise */
    {1, 3, 9, 8, 6, 3, 3, 2, 1, 0, 1, 1, 1, 3, 1},      /* depthwise, channel multiplier 2 */
    {3, 1, 28, 28, 8, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},    /* MNIST first layer, fewer filters */
    {3, 8, 12, 12, 16, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},   /* deeper 3x3 layer */
    {1, 3, 6, 5, 2, 5, 3, 1, 3, 2, 0, 2, 1, 1, 0},      /* dilated kernel fills the input */
    {3, 3, 5, 6, 2, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1},      /* stride 3, pad 2, dilation 2 */
    {1, 4, 24, 24, 3, 5, 5, 1, 1, 2, 2, 1, 1, 1, 1},    /* several im2col tiles */
    {2, 64, 12, 12, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0},   /* K = 576: two pixel tiles per image */
    {1, 6, 12, 11, 4, 1, 1, 1, 1, 0, 0, 1, 1, 2, 1},    /* pointwise, one image per GEMM */
    {3, 2, 17, 15, 3, 2, 4, 2, 1, 1, 0, 2, 2, 1, 1},    /* even kernel, mixed params */
    {1, 1, 66, 66, 5, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},    /* 4096 pixels: two packed-B panels */
    {1, 2, 60, 60, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0},    /* 3600 padded pixels, two panels */
    {2, 6, 9, 16, 4, 3, 5, 2, 1, 0, 0, 2, 1, 2, 0},     /* dx rows of 16: stride, dilation in h */
    {3, 4, 11, 6, 4, 4, 2, 3, 1, 0, 0, 2, 1, 1, 1},     /* dx rows of 6, kernel 4x2 */
};
#define N_CONV_CASES (sizeof conv_cases / sizeof conv_cases[0])

/* ---- double references --------------------------------------------------- */

/* y [N, O, OH, OW] = conv2d(x, w) + b; mag the sum of |terms| per element. */
static void ref_conv_forward(const conv_case *c, const double *x, const double *w, const double *b,
                             double *y, double *mag) {
  int64_t OH = conv_oh(c), OW = conv_ow(c), Cg = c->C / c->G, Og = c->O / c->G;
  for (int64_t n = 0; n < c->N; n++)
    for (int64_t o = 0; o < c->O; o++)
      for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
          int64_t g = o / Og;
          double acc = b ? b[o] : 0.0, m = b ? fabs(b[o]) : 0.0;
          for (int64_t ci = 0; ci < Cg; ci++)
            for (int64_t kh = 0; kh < c->KH; kh++)
              for (int64_t kw = 0; kw < c->KW; kw++) {
                int64_t ih = oh * c->sh - c->ph + kh * c->dh, iw = ow * c->sw - c->pw + kw * c->dw;
                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                double t = x[((n * c->C + g * Cg + ci) * c->H + ih) * c->W + iw] *
                           w[((o * Cg + ci) * c->KH + kh) * c->KW + kw];
                acc += t;
                m += fabs(t);
              }
          int64_t i = ((n * c->O + o) * OH + oh) * OW + ow;
          y[i] = acc;
          if (mag) mag[i] = m;
        }
}

/* dx [N, C, H, W]: each element gathers w * dy over the output taps that read it:
 * oh = (ih + ph - kh*dh) / sh when that divides exactly and lies in [0, OH). */
static void ref_conv_backward_input(const conv_case *c, const double *dy, const double *w,
                                    double *dx, double *mag) {
  int64_t OH = conv_oh(c), OW = conv_ow(c), Cg = c->C / c->G, Og = c->O / c->G;
  for (int64_t n = 0; n < c->N; n++)
    for (int64_t ch = 0; ch < c->C; ch++)
      for (int64_t ih = 0; ih < c->H; ih++)
        for (int64_t iw = 0; iw < c->W; iw++) {
          int64_t g = ch / Cg, ci = ch % Cg;
          double acc = 0.0, m = 0.0;
          for (int64_t o = g * Og; o < (g + 1) * Og; o++)
            for (int64_t kh = 0; kh < c->KH; kh++)
              for (int64_t kw = 0; kw < c->KW; kw++) {
                int64_t th = ih + c->ph - kh * c->dh, tw = iw + c->pw - kw * c->dw;
                if (th < 0 || tw < 0 || th % c->sh || tw % c->sw) continue;
                int64_t oh = th / c->sh, ow = tw / c->sw;
                if (oh >= OH || ow >= OW) continue;
                double t = w[((o * Cg + ci) * c->KH + kh) * c->KW + kw] *
                           dy[((n * c->O + o) * OH + oh) * OW + ow];
                acc += t;
                m += fabs(t);
              }
          int64_t i = ((n * c->C + ch) * c->H + ih) * c->W + iw;
          dx[i] = acc;
          if (mag) mag[i] = m;
        }
}

/* dw [O, C/G, KH, KW] = sum over n, oh, ow of dy * the input element each tap reads. */
static void ref_conv_backward_weight(const conv_case *c, const double *dy, const double *x,
                                     double *dw, double *mag) {
  int64_t OH = conv_oh(c), OW = conv_ow(c), Cg = c->C / c->G, Og = c->O / c->G;
  for (int64_t o = 0; o < c->O; o++)
    for (int64_t ci = 0; ci < Cg; ci++)
      for (int64_t kh = 0; kh < c->KH; kh++)
        for (int64_t kw = 0; kw < c->KW; kw++) {
          int64_t g = o / Og;
          double acc = 0.0, m = 0.0;
          for (int64_t n = 0; n < c->N; n++)
            for (int64_t oh = 0; oh < OH; oh++)
              for (int64_t ow = 0; ow < OW; ow++) {
                int64_t ih = oh * c->sh - c->ph + kh * c->dh, iw = ow * c->sw - c->pw + kw * c->dw;
                if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
                double t = dy[((n * c->O + o) * OH + oh) * OW + ow] *
                           x[((n * c->C + g * Cg + ci) * c->H + ih) * c->W + iw];
                acc += t;
                m += fabs(t);
              }
          int64_t i = ((o * Cg + ci) * c->KH + kh) * c->KW + kw;
          dw[i] = acc;
          if (mag) mag[i] = m;
        }
}

/* ---- plugin helpers ------------------------------------------------------ */

typedef struct tdesc {
  int ndim;
  int64_t shape[4];
} tdesc;

static int64_t tnumel(const tdesc *t) { return ph_numel(t->ndim, t->shape); }

static ph_plugin plugin;
static ph_graph *graph;

/* Opens the CPU plugin with `threads` workers. */
static void open_plugin(int threads) {
  char buf[16];
  snprintf(buf, sizeof buf, "%d", threads);
  setenv("KILN_NUM_THREADS", buf, 1);
  cr_assert_eq(ph_open(&plugin, NULL), KILN_OK, "ph_open: %s", ph_error());
  graph = calloc(1, sizeof *graph);
  cr_assert_not_null(graph);
}

static void close_plugin(void) {
  if (graph) {
    ph_graph_free(graph);
    free(graph);
    graph = NULL;
  }
  ph_close(&plugin);
}

/* Builds and compiles a one-node graph: op(ins) -> out. Returns the compile
 * status; the message is in ph_error(). */
static kiln_status compile_node(uint32_t op, int n_in, const tdesc *ins, const uint32_t *in_dtypes,
                                const tdesc *out, uint32_t out_dtype, const int64_t ip[8]) {
  ph_graph_free(graph);
  ph_graph_init(graph, &plugin);
  int idx[KILN_OP_MAX_INPUTS];
  for (int i = 0; i < n_in; i++) {
    idx[i] = ph_tensor(graph, in_dtypes ? in_dtypes[i] : KILN_F32, ins[i].ndim, ins[i].shape);
    cr_assert_geq(idx[i], 0, "ph_tensor: %s", ph_error());
  }
  int o = ph_tensor(graph, out_dtype, out->ndim, out->shape);
  cr_assert_geq(o, 0, "ph_tensor: %s", ph_error());
  cr_assert_geq(ph_node(graph, op, n_in, idx, o, ip, NULL), 0, "ph_node: %s", ph_error());
  return ph_compile(graph);
}

/* Runs op(ins) -> out on float data through the plugin; fails the test if
 * compiling or running fails. Tensor i of the graph is input i; the output
 * is tensor n_in. */
static void run_node(uint32_t op, int n_in, const tdesc *ins, const float *const *in_data,
                     const tdesc *out, float *out_data, const int64_t ip[8]) {
  kiln_status st = compile_node(op, n_in, ins, NULL, out, KILN_F32, ip);
  cr_assert_eq(st, KILN_OK, "compile op %u: %s", op, ph_error());
  for (int i = 0; i < n_in; i++) cr_assert_eq(ph_write(graph, i, in_data[i]), KILN_OK, "%s", ph_error());
  /* Poison the output so a kernel that skips elements cannot pass. */
  float *poison = malloc((size_t)tnumel(out) * sizeof(float));
  cr_assert_not_null(poison);
  for (int64_t i = 0; i < tnumel(out); i++) poison[i] = NAN;
  cr_assert_eq(ph_write(graph, n_in, poison), KILN_OK, "%s", ph_error());
  free(poison);
  cr_assert_eq(ph_run(graph), KILN_OK, "run op %u: %s", op, ph_error());
  cr_assert_eq(ph_read(graph, n_in, out_data), KILN_OK, "%s", ph_error());
}

/* Asserts |got - ref| <= TOL_REL * mag + TOL_ABS element by element. */
static void expect_close(const char *what, const char *ctx, const float *got, const double *ref,
                         const double *mag, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    double tol = TOL_REL * mag[i] + TOL_ABS;
    double err = fabs((double)got[i] - ref[i]);
    cr_assert(err <= tol, "%s (%s): element %lld is %.9g, reference %.9g (error %.3g > %.3g)", what,
              ctx, (long long)i, (double)got[i], ref[i], err, tol);
  }
}

static float *random_floats(int64_t n, uint64_t seed) {
  float *p = malloc((size_t)(n ? n : 1) * sizeof(float));
  cr_assert_not_null(p);
  tu_fill_uniform(p, n, seed, -1.0f, 1.0f);
  return p;
}

static double *to_double(const float *p, int64_t n) {
  double *d = malloc((size_t)(n ? n : 1) * sizeof(double));
  cr_assert_not_null(d);
  for (int64_t i = 0; i < n; i++) d[i] = p[i];
  return d;
}

static double *doubles(int64_t n) {
  double *d = calloc((size_t)(n ? n : 1), sizeof(double));
  cr_assert_not_null(d);
  return d;
}

/* ---- conv2d against the references ---------------------------------------- */

static void check_conv_case(const conv_case *c, uint64_t seed) {
  const char *ctx = conv_case_str(c);
  int64_t OH = conv_oh(c), OW = conv_ow(c), ip[8];
  conv_ip(c, ip);
  tdesc xd = {4, {c->N, c->C, c->H, c->W}};
  tdesc wd = {4, {c->O, c->C / c->G, c->KH, c->KW}};
  tdesc bd = {1, {c->O}};
  tdesc yd = {4, {c->N, c->O, OH, OW}};
  int64_t nx = tnumel(&xd), nw = tnumel(&wd), ny = tnumel(&yd);

  float *x = random_floats(nx, seed), *w = random_floats(nw, seed + 1);
  float *b = random_floats(c->O, seed + 2), *dy = random_floats(ny, seed + 3);
  double *xr = to_double(x, nx), *wr = to_double(w, nw), *br = to_double(b, c->O);
  double *dyr = to_double(dy, ny);
  float *got = malloc((size_t)(nx > ny ? (nx > nw ? nx : nw) : (ny > nw ? ny : nw)) * sizeof(float));
  double *ref = doubles(nx + ny + nw), *mag = doubles(nx + ny + nw);
  cr_assert_not_null(got);

  /* forward */
  tdesc fin[3] = {xd, wd, bd};
  const float *fdata[3] = {x, w, b};
  run_node(KILN_OP_CONV2D, c->bias ? 3 : 2, fin, fdata, &yd, got, ip);
  ref_conv_forward(c, xr, wr, c->bias ? br : NULL, ref, mag);
  expect_close("conv2d", ctx, got, ref, mag, ny);

  /* backward input: inputs (dy, w) -> dx */
  tdesc bin[2] = {yd, wd};
  const float *bidata[2] = {dy, w};
  run_node(KILN_OP_CONV2D_BACKWARD_INPUT, 2, bin, bidata, &xd, got, ip);
  ref_conv_backward_input(c, dyr, wr, ref, mag);
  expect_close("conv2d_backward_input", ctx, got, ref, mag, nx);

  /* backward weight: inputs (dy, x) -> dw */
  tdesc bwn[2] = {yd, xd};
  const float *bwdata[2] = {dy, x};
  run_node(KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, bwn, bwdata, &wd, got, ip);
  ref_conv_backward_weight(c, dyr, xr, ref, mag);
  expect_close("conv2d_backward_weight", ctx, got, ref, mag, nw);

  free(x), free(w), free(b), free(dy), free(xr), free(wr), free(br), free(dyr);
  free(got), free(ref), free(mag);
}

static void check_all_conv_cases(int threads) {
  open_plugin(threads);
  for (size_t i = 0; i < N_CONV_CASES; i++) check_conv_case(&conv_cases[i], 100 + 10 * i);
  close_plugin();
}

Test(conv, reference_two_threads) { check_all_conv_cases(2); }
Test(conv, reference_one_thread) { check_all_conv_cases(1); }

/* The reference CNN's layer shapes on a batch of 4: 1->32, 32->64, 3x3. */
Test(conv, reference_cnn_layers) {
  static const conv_case layers[] = {
      {4, 1, 28, 28, 32, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},
      {4, 32, 13, 13, 64, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},
  };
  open_plugin(2);
  for (size_t i = 0; i < sizeof layers / sizeof layers[0]; i++) check_conv_case(&layers[i], 7 + i);
  close_plugin();
}

/* ---- finite differences --------------------------------------------------- */

/* L(x, w) = sum of y * r with y = conv2d(x, w): dL/dx = backward_input(r, w)
 * and dL/dw = backward_weight(r, x). Central differences of the double
 * forward over every element of x and w. */
static double conv_loss(const conv_case *c, const double *x, const double *w, const double *r,
                        double *y) {
  ref_conv_forward(c, x, w, NULL, y, NULL);
  double s = 0.0;
  int64_t ny = c->N * c->O * conv_oh(c) * conv_ow(c);
  for (int64_t i = 0; i < ny; i++) s += y[i] * r[i];
  return s;
}

static void fd_check(const char *what, const conv_case *c, const float *grad, double *p, int64_t n,
                     const double *x, const double *w, const double *r, double *y) {
  const double eps = 1e-3;
  for (int64_t i = 0; i < n; i++) {
    double keep = p[i];
    p[i] = keep + eps;
    double lp = conv_loss(c, x, w, r, y);
    p[i] = keep - eps;
    double lm = conv_loss(c, x, w, r, y);
    p[i] = keep;
    double fd = (lp - lm) / (2 * eps);
    cr_assert(fabs(fd - grad[i]) <= 1e-4 * (1 + fabs(fd)),
              "%s (%s): element %lld is %.7g, finite difference %.7g", what, conv_case_str(c),
              (long long)i, (double)grad[i], fd);
  }
}

Test(conv, backward_matches_finite_differences) {
  static const conv_case cases[] = {
      {2, 4, 6, 7, 4, 3, 2, 2, 1, 1, 1, 1, 2, 2, 0},
      {1, 2, 5, 5, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2, 0},
      {2, 3, 7, 6, 3, 3, 3, 2, 2, 2, 1, 2, 1, 3, 0},
  };
  open_plugin(2);
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const conv_case *c = &cases[k];
    int64_t ip[8];
    conv_ip(c, ip);
    tdesc xd = {4, {c->N, c->C, c->H, c->W}};
    tdesc wd = {4, {c->O, c->C / c->G, c->KH, c->KW}};
    tdesc yd = {4, {c->N, c->O, conv_oh(c), conv_ow(c)}};
    int64_t nx = tnumel(&xd), nw = tnumel(&wd), ny = tnumel(&yd);
    float *x = random_floats(nx, 31 + k), *w = random_floats(nw, 41 + k), *r = random_floats(ny, 51 + k);
    double *xr = to_double(x, nx), *wr = to_double(w, nw), *rr = to_double(r, ny), *y = doubles(ny);
    float *dx = malloc((size_t)nx * sizeof(float)), *dw = malloc((size_t)nw * sizeof(float));
    cr_assert(dx && dw);

    run_node(KILN_OP_CONV2D_BACKWARD_INPUT, 2, (tdesc[]){yd, wd}, (const float *[]){r, w}, &xd, dx, ip);
    run_node(KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, (tdesc[]){yd, xd}, (const float *[]){r, x}, &wd, dw, ip);
    fd_check("conv2d_backward_input", c, dx, xr, nx, xr, wr, rr, y);
    fd_check("conv2d_backward_weight", c, dw, wr, nw, xr, wr, rr, y);

    free(x), free(w), free(r), free(xr), free(wr), free(rr), free(y), free(dx), free(dw);
  }
  close_plugin();
}

/* ---- determinism ------------------------------------------------------------ */

/* Two runs of the same graph give the same bits, with the batch split over
 * threads (forward, both backward passes). */
/* The forward pass may add the bias inside the GEMM (a last column of the
 * packed weights times a row of ones) instead of in a pass over y; either
 * way y must be, bit for bit, conv2d without bias, then + bias[o]: shallow
 * (fused), deep (K = 576: not fused), batched pointwise with a last
 * single-image block, padded and strided, on 1 and 3 threads. */
Test(conv, bias_adds_after_the_sum) {
  static const conv_case cases[] = {
      {5, 8, 13, 13, 16, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},   /* K 72: fused */
      {3, 64, 5, 5, 8, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},     /* K 576: two K blocks */
      {3, 3, 10, 9, 5, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1},     /* pointwise, blocks of 2 and 1 */
      {3, 4, 9, 11, 4, 3, 5, 3, 2, 1, 2, 1, 1, 2, 1},     /* padded, strided, groups 2 */
  };
  for (int threads = 1; threads <= 3; threads += 2) {
    open_plugin(threads);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
      const conv_case *c = &cases[k];
      int64_t ip[8];
      conv_ip(c, ip);
      tdesc xd = {4, {c->N, c->C, c->H, c->W}}, wd = {4, {c->O, c->C / c->G, c->KH, c->KW}};
      tdesc bd = {1, {c->O}}, yd = {4, {c->N, c->O, conv_oh(c), conv_ow(c)}};
      int64_t ny = tnumel(&yd), P = conv_oh(c) * conv_ow(c);
      float *x = random_floats(tnumel(&xd), 60 + k), *w = random_floats(tnumel(&wd), 61 + k);
      float *b = random_floats(c->O, 62 + k);
      float *yb = malloc((size_t)ny * sizeof(float)), *y = malloc((size_t)ny * sizeof(float));
      cr_assert(yb && y);
      run_node(KILN_OP_CONV2D, 3, (tdesc[]){xd, wd, bd}, (const float *[]){x, w, b}, &yd, yb, ip);
      run_node(KILN_OP_CONV2D, 2, (tdesc[]){xd, wd}, (const float *[]){x, w}, &yd, y, ip);
      for (int64_t i = 0; i < ny; i++) {
        float want = y[i] + b[(i / P) % c->O];
        cr_assert(memcmp(&yb[i], &want, sizeof want) == 0,
                  "%s, %d threads: y[%lld] is %.9g, conv2d without bias + bias is %.9g",
                  conv_case_str(c), threads, (long long)i, (double)yb[i], (double)want);
      }
      free(x), free(w), free(b), free(yb), free(y);
    }
    close_plugin();
  }
}

Test(conv, repeated_runs_are_bitwise_identical) {
  const conv_case c = {8, 8, 14, 14, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
  int64_t ip[8];
  conv_ip(&c, ip);
  tdesc xd = {4, {c.N, c.C, c.H, c.W}}, wd = {4, {c.O, c.C, c.KH, c.KW}};
  tdesc bd = {1, {c.O}}, yd = {4, {c.N, c.O, conv_oh(&c), conv_ow(&c)}};
  int64_t nx = tnumel(&xd), nw = tnumel(&wd), ny = tnumel(&yd);
  float *x = random_floats(nx, 5), *w = random_floats(nw, 6), *b = random_floats(c.O, 7);
  float *dy = random_floats(ny, 8);
  float *a = malloc((size_t)(nx + ny + nw) * sizeof(float));
  float *z = malloc((size_t)(nx + ny + nw) * sizeof(float));
  cr_assert(a && z);
  open_plugin(2);
  for (int rep = 0; rep < 2; rep++) {
    float *o = rep ? z : a;
    run_node(KILN_OP_CONV2D, 3, (tdesc[]){xd, wd, bd}, (const float *[]){x, w, b}, &yd, o, ip);
    run_node(KILN_OP_CONV2D_BACKWARD_INPUT, 2, (tdesc[]){yd, wd}, (const float *[]){dy, w}, &xd,
             o + ny, ip);
    run_node(KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, (tdesc[]){yd, xd}, (const float *[]){dy, x}, &wd,
             o + ny + nx, ip);
  }
  cr_assert(memcmp(a, z, (size_t)(nx + ny + nw) * sizeof(float)) == 0,
            "two runs of the same conv2d graph differ");
  close_plugin();
  free(x), free(w), free(b), free(dy), free(a), free(z);
}

/* y and dx do not depend on the thread count (each element is one GEMM dot
 * product in a fixed order); only dw's chunk partials do. Batch 5 with 1
 * and 3 threads takes the per-thread-batch and the pooled-GEMM paths. */
Test(conv, forward_and_backward_input_do_not_depend_on_threads) {
  static const conv_case cases[] = {
      {5, 8, 14, 14, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},  /* one image per block */
      {5, 16, 5, 5, 8, 3, 3, 1, 1, 0, 0, 1, 1, 2, 1},    /* several images per block */
      {2, 6, 9, 9, 6, 3, 3, 2, 2, 1, 1, 1, 1, 3, 0},     /* batch below the thread count */
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const conv_case *c = &cases[k];
    int64_t ip[8];
    conv_ip(c, ip);
    tdesc xd = {4, {c->N, c->C, c->H, c->W}}, wd = {4, {c->O, c->C / c->G, c->KH, c->KW}};
    tdesc bd = {1, {c->O}}, yd = {4, {c->N, c->O, conv_oh(c), conv_ow(c)}};
    int64_t nx = tnumel(&xd), nw = tnumel(&wd), ny = tnumel(&yd);
    float *x = random_floats(nx, 90 + k), *w = random_floats(nw, 91 + k);
    float *b = random_floats(c->O, 92 + k), *dy = random_floats(ny, 93 + k);
    float *out[2];
    for (int t = 0; t < 2; t++) {
      out[t] = malloc((size_t)(ny + nx) * sizeof(float));
      cr_assert_not_null(out[t]);
      open_plugin(t ? 3 : 1);
      run_node(KILN_OP_CONV2D, 3, (tdesc[]){xd, wd, bd}, (const float *[]){x, w, b}, &yd, out[t], ip);
      run_node(KILN_OP_CONV2D_BACKWARD_INPUT, 2, (tdesc[]){yd, wd}, (const float *[]){dy, w}, &xd,
               out[t] + ny, ip);
      close_plugin();
    }
    cr_assert(memcmp(out[0], out[1], (size_t)ny * sizeof(float)) == 0,
              "conv2d (%s): 1 and 3 threads differ", conv_case_str(c));
    cr_assert(memcmp(out[0] + ny, out[1] + ny, (size_t)nx * sizeof(float)) == 0,
              "conv2d_backward_input (%s): 1 and 3 threads differ", conv_case_str(c));
    free(x), free(w), free(b), free(dy), free(out[0]), free(out[1]);
  }
}

/* ---- the small-K path ------------------------------------------------------ */

/* Convolutions with K = Cg*KH*KW <= 72 (neither pointwise nor depthwise with
 * one or two outputs per group) take conv.c's small-K path for the forward
 * pass, and with K <= 27 for the weight gradient too; $KILN_CPU_CONV=gemm
 * sends them to the GEMM.
 * N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups, bias */
#define SMALL_MAX_K_DW 27
static const conv_case small_cases[] = {
    {64, 1, 28, 28, 32, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},   /* the CNN's conv1, K 9 */
    {1, 1, 28, 28, 32, 3, 3, 1, 1, 0, 0, 1, 1, 1, 0},    /* batch 1, no bias */
    {3, 3, 9, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},       /* "same" padding, K 27 */
    {2, 3, 11, 13, 7, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0},     /* stride 2, 7 outputs */
    {2, 8, 9, 10, 11, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},     /* K 72: forward only */
    {3, 5, 12, 11, 6, 3, 3, 1, 2, 0, 1, 2, 1, 1, 0},     /* K 45: forward only */
    {3, 2, 17, 15, 3, 2, 4, 2, 1, 1, 0, 2, 2, 1, 1},     /* even kernel, dilation 2 */
    {2, 6, 10, 10, 9, 3, 3, 1, 1, 1, 1, 1, 1, 3, 1},     /* groups 3 of 2 channels */
    {3, 4, 7, 7, 12, 3, 3, 1, 1, 1, 1, 1, 1, 4, 1},      /* depthwise, multiplier 3 */
    {1, 1, 5, 5, 5, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},       /* 9 pixels: one partial vector */
    {5, 1, 33, 31, 13, 5, 5, 1, 1, 2, 2, 1, 1, 1, 1},    /* 5x5 pad 2, 1023 pixels */
    {2, 2, 9, 12, 8, 3, 2, 3, 2, 0, 1, 2, 1, 2, 0},      /* stride 3x2, dilation 2x1, groups */
    {9, 3, 8, 8, 16, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},      /* batch 9: a short last chunk */
};
#define N_SMALL_CASES (sizeof small_cases / sizeof small_cases[0])

/* Against the double references on 1 and 3 threads (the input gradient,
 * which stays on the GEMM, is checked with them). */
Test(conv, small_k_reference) {
  for (int threads = 1; threads <= 3; threads += 2) {
    open_plugin(threads);
    for (size_t i = 0; i < N_SMALL_CASES; i++) check_conv_case(&small_cases[i], 300 + 10 * i);
    close_plugin();
  }
}

/* y and dw of case c on `threads` threads, $KILN_CPU_CONV = path (NULL:
 * unset), into y [N*O*OH*OW] and dw [O*Cg*KH*KW]. */
static void run_small(const conv_case *c, int threads, const char *path, uint64_t seed, float *y,
                      float *dw) {
  int64_t ip[8];
  conv_ip(c, ip);
  tdesc xd = {4, {c->N, c->C, c->H, c->W}}, wd = {4, {c->O, c->C / c->G, c->KH, c->KW}};
  tdesc bd = {1, {c->O}}, yd = {4, {c->N, c->O, conv_oh(c), conv_ow(c)}};
  float *x = random_floats(tnumel(&xd), seed), *w = random_floats(tnumel(&wd), seed + 1);
  float *b = random_floats(c->O, seed + 2), *dy = random_floats(tnumel(&yd), seed + 3);
  if (path) setenv("KILN_CPU_CONV", path, 1);
  else unsetenv("KILN_CPU_CONV");
  open_plugin(threads);
  run_node(KILN_OP_CONV2D, c->bias ? 3 : 2, (tdesc[]){xd, wd, bd}, (const float *[]){x, w, b}, &yd,
           y, ip);
  run_node(KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, (tdesc[]){yd, xd}, (const float *[]){dy, x}, &wd, dw,
           ip);
  close_plugin();
  unsetenv("KILN_CPU_CONV");
  free(x), free(w), free(b), free(dy);
}

/* The forward pass sums each output in the GEMM's order (k by k from 0, FMA
 * where its micro-kernel uses FMA, then the bias): the same bits as the
 * GEMM path, with the default ISA's kernel and the scalar one. */
Test(conv, small_k_forward_is_the_gemm_paths_bits) {
  static const char *const isas[] = {NULL, "scalar"};
  for (size_t s = 0; s < sizeof isas / sizeof isas[0]; s++) {
    if (isas[s]) setenv("KILN_CPU_ISA", isas[s], 1);
    for (size_t i = 0; i < N_SMALL_CASES; i++) {
      const conv_case *c = &small_cases[i];
      int64_t ny = c->N * c->O * conv_oh(c) * conv_ow(c), nw = c->O * (c->C / c->G) * c->KH * c->KW;
      float *y0 = malloc((size_t)ny * sizeof(float)), *y1 = malloc((size_t)ny * sizeof(float));
      float *dw = malloc((size_t)nw * sizeof(float));
      cr_assert(y0 && y1 && dw);
      int threads = i % 2 ? 3 : 1;
      run_small(c, threads, NULL, 500 + i, y0, dw);
      run_small(c, threads, "gemm", 500 + i, y1, dw);
      for (int64_t e = 0; e < ny; e++)
        cr_assert(memcmp(&y0[e], &y1[e], sizeof(float)) == 0,
                  "%s, ISA %s, %d threads: y[%lld] is %.9g on the small-K path, %.9g on the GEMM's",
                  conv_case_str(c), isas[s] ? isas[s] : "default", threads, (long long)e,
                  (double)y0[e], (double)y1[e]);
      free(y0), free(y1), free(dw);
    }
    unsetenv("KILN_CPU_ISA");
  }
}

/* Neither y nor dw depends on the thread count on the small-K path (dw's
 * chunks are fixed by the batch alone): 1, 2 and 3 threads, same bits (dw
 * where it takes the path; the GEMM's dw depends on the thread count). */
Test(conv, small_k_does_not_depend_on_threads) {
  for (size_t i = 0; i < N_SMALL_CASES; i++) {
    const conv_case *c = &small_cases[i];
    int64_t ny = c->N * c->O * conv_oh(c) * conv_ow(c), nw = c->O * (c->C / c->G) * c->KH * c->KW;
    float *y[3], *dw[3];
    for (int t = 0; t < 3; t++) {
      y[t] = malloc((size_t)ny * sizeof(float));
      dw[t] = malloc((size_t)nw * sizeof(float));
      cr_assert(y[t] && dw[t]);
      run_small(c, t + 1, NULL, 700 + i, y[t], dw[t]);
    }
    for (int t = 1; t < 3; t++) {
      cr_assert(memcmp(y[0], y[t], (size_t)ny * sizeof(float)) == 0,
                "conv2d (%s): 1 and %d threads differ", conv_case_str(c), t + 1);
      if ((c->C / c->G) * c->KH * c->KW <= SMALL_MAX_K_DW)
        cr_assert(memcmp(dw[0], dw[t], (size_t)nw * sizeof(float)) == 0,
                  "conv2d_backward_weight (%s): 1 and %d threads differ", conv_case_str(c), t + 1);
    }
    for (int t = 0; t < 3; t++) free(y[t]), free(dw[t]);
  }
}

/* ---- conv2d validation -------------------------------------------------------- */

/* Compiles one conv node with the given shapes and params and expects
 * `want` with a message containing each of the NULL-terminated strings. */
static void expect_conv_error(uint32_t op, int n_in, const tdesc *ins, const uint32_t *dtypes,
                              tdesc out, const int64_t ip[8], kiln_status want, ...) {
  kiln_status st = compile_node(op, n_in, ins, dtypes, &out, KILN_F32, ip);
  cr_assert_eq(st, want, "op %u: status %d, expected %d (message: %s)", op, st, want, ph_error());
  va_list ap;
  va_start(ap, want);
  for (const char *s = va_arg(ap, const char *); s; s = va_arg(ap, const char *))
    cr_assert(strstr(ph_error(), s), "op %u: message \"%s\" lacks \"%s\"", op, ph_error(), s);
  va_end(ap);
}

#define IP(sh, sw, ph, pw, dh, dw, g) ((const int64_t[8]){sh, sw, ph, pw, dh, dw, g, 0})
#define T4(a, b, c, d) ((tdesc){4, {a, b, c, d}})
#define T1(a) ((tdesc){1, {a}})

Test(conv, validation_errors) {
  open_plugin(1);
  const int64_t *ok = IP(1, 1, 0, 0, 1, 1, 1);
  /* Input channels per group disagree with w. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(64, 1, 28, 28), T4(32, 3, 3, 3)}, NULL,
                    T4(64, 32, 26, 26), ok, KILN_SHAPE_MISMATCH,
                    "conv2d: x [64, 1, 28, 28] and w [32, 3, 3, 3]: w expects 3 input channels per "
                    "group, x has 1 (groups 1)",
                    NULL);
  /* C not divisible by groups. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 3, 5, 5), T4(4, 1, 3, 3)}, NULL,
                    T4(1, 4, 3, 3), IP(1, 1, 0, 0, 1, 1, 2), KILN_SHAPE_MISMATCH, "conv2d",
                    "x [1, 3, 5, 5]", "not divisible by groups 2", NULL);
  /* O not divisible by groups. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 4, 5, 5), T4(3, 2, 3, 3)}, NULL,
                    T4(1, 3, 3, 3), IP(1, 1, 0, 0, 1, 1, 2), KILN_SHAPE_MISMATCH, "conv2d",
                    "w [3, 2, 3, 3]", "output channels, not divisible by groups 2", NULL);
  /* Bias of the wrong length. */
  expect_conv_error(KILN_OP_CONV2D, 3, (tdesc[]){T4(1, 2, 5, 5), T4(4, 2, 3, 3), T1(3)}, NULL,
                    T4(1, 4, 3, 3), ok, KILN_SHAPE_MISMATCH, "conv2d", "bias [3]", "expected [4]",
                    NULL);
  /* Output shape off by one. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(2, 2, 9, 9), T4(4, 2, 3, 3)}, NULL,
                    T4(2, 4, 4, 5), IP(2, 2, 1, 1, 1, 1, 1), KILN_SHAPE_MISMATCH, "conv2d",
                    "y is [2, 4, 4, 5], expected [2, 4, 5, 5]", NULL);
  /* Dilated kernel larger than the padded input. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 1, 4, 4), T4(1, 1, 3, 3)}, NULL,
                    T4(1, 1, 1, 1), IP(1, 1, 0, 0, 2, 2, 1), KILN_SHAPE_MISMATCH, "conv2d",
                    "smaller than the kernel", "5x5 with dilation [2, 2]", NULL);
  /* Parameters below their minimums. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 1, 5, 5), T4(1, 1, 3, 3)}, NULL,
                    T4(1, 1, 3, 3), IP(0, 1, 0, 0, 1, 1, 1), KILN_INVALID_ARGUMENT, "conv2d",
                    "stride [0, 1]", NULL);
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 1, 5, 5), T4(1, 1, 3, 3)}, NULL,
                    T4(1, 1, 3, 3), IP(1, 1, -1, 0, 1, 1, 1), KILN_INVALID_ARGUMENT, "conv2d",
                    "padding [-1, 0]", NULL);
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 1, 5, 5), T4(1, 1, 3, 3)}, NULL,
                    T4(1, 1, 3, 3), IP(1, 1, 0, 0, 1, 0, 1), KILN_INVALID_ARGUMENT, "conv2d",
                    "dilation [1, 0]", NULL);
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 1, 5, 5), T4(1, 1, 3, 3)}, NULL,
                    T4(1, 1, 3, 3), IP(1, 1, 0, 0, 1, 1, 0), KILN_INVALID_ARGUMENT, "conv2d",
                    "groups 0", NULL);
  /* Wrong rank. */
  expect_conv_error(KILN_OP_CONV2D, 2, (tdesc[]){{3, {1, 5, 5}}, T4(1, 1, 3, 3)}, NULL,
                    T4(1, 1, 3, 3), ok, KILN_SHAPE_MISMATCH, "conv2d", "x [1, 5, 5] has rank 3",
                    NULL);
  /* Backward input: dy of the wrong shape for dx and w. */
  expect_conv_error(KILN_OP_CONV2D_BACKWARD_INPUT, 2, (tdesc[]){T4(2, 4, 6, 6), T4(4, 3, 3, 3)},
                    NULL, T4(2, 3, 7, 7), ok, KILN_SHAPE_MISMATCH, "conv2d_backward_input",
                    "dy is [2, 4, 6, 6], expected [2, 4, 5, 5]", "dx [2, 3, 7, 7]", NULL);
  /* Backward weight: dw's channels disagree with x. */
  expect_conv_error(KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, (tdesc[]){T4(2, 4, 5, 5), T4(2, 3, 7, 7)},
                    NULL, T4(4, 2, 3, 3), ok, KILN_SHAPE_MISMATCH, "conv2d_backward_weight",
                    "dw expects 2 input channels per group, x has 3", NULL);
  close_plugin();
}

Test(conv, validation_rejects_non_f32) {
  open_plugin(1);
  kiln_status st = compile_node(KILN_OP_CONV2D, 2, (tdesc[]){T4(1, 1, 5, 5), T4(1, 1, 3, 3)},
                                (const uint32_t[]){KILN_I32, KILN_F32}, &T4(1, 1, 3, 3), KILN_F32,
                                IP(1, 1, 0, 0, 1, 1, 1));
  cr_assert_neq(st, KILN_OK, "conv2d on an i32 x compiled");
  cr_assert(strstr(ph_error(), "conv2d") && strstr(ph_error(), "i32"),
            "message \"%s\" should name conv2d and i32", ph_error());
  close_plugin();
}

/* ---- pooling --------------------------------------------------------------------- */

typedef struct pool_case {
  int64_t N, C, H, W, KH, KW, sh, sw, ph, pw;
} pool_case;

static int64_t pool_oh(const pool_case *c) { return (c->H + 2 * c->ph - c->KH) / c->sh + 1; }
static int64_t pool_ow(const pool_case *c) { return (c->W + 2 * c->pw - c->KW) / c->sw + 1; }

static const char *pool_case_str(const pool_case *c, int include_pad) {
  static char buf[200];
  snprintf(buf, sizeof buf, "x [%lld, %lld, %lld, %lld] kernel %lldx%lld stride %lldx%lld pad %lldx%lld count_include_pad %d",
           (long long)c->N, (long long)c->C, (long long)c->H, (long long)c->W, (long long)c->KH,
           (long long)c->KW, (long long)c->sh, (long long)c->sw, (long long)c->ph, (long long)c->pw,
           include_pad);
  return buf;
}

/* N, C, H, W, KH, KW, sh, sw, ph, pw */
static const pool_case pool_cases[] = {
    {1, 1, 4, 4, 2, 2, 2, 2, 0, 0},
    {3, 3, 7, 9, 3, 3, 2, 2, 1, 1},
    {1, 4, 9, 7, 3, 2, 1, 3, 1, 0},
    {3, 2, 11, 10, 3, 3, 3, 3, 0, 1},
    {1, 3, 5, 5, 2, 3, 1, 1, 1, 1},
    {3, 32, 26, 26, 2, 2, 2, 2, 0, 0},
    {1, 1, 6, 5, 3, 3, 1, 2, 2, 2},
    {2, 3, 13, 8, 2, 2, 1, 1, 0, 0},
    {2, 3, 9, 7, 2, 2, 2, 2, 0, 0},     /* 2x2 stride 2 with a last odd row and column */
};
#define N_POOL_CASES (sizeof pool_cases / sizeof pool_cases[0])

/* Visits window (oh, ow) of plane p of x: the in-bounds elements in
 * row-major order. Returns the flat index of the first maximum, the sum and
 * the in-bounds count. */
static int64_t ref_window(const pool_case *c, const double *xp, int64_t oh, int64_t ow, double *sum,
                          int64_t *count) {
  int64_t best = -1;
  *sum = 0.0;
  *count = 0;
  for (int64_t kh = 0; kh < c->KH; kh++)
    for (int64_t kw = 0; kw < c->KW; kw++) {
      int64_t ih = oh * c->sh - c->ph + kh, iw = ow * c->sw - c->pw + kw;
      if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
      int64_t i = ih * c->W + iw;
      if (best < 0 || xp[i] > xp[best]) best = i;
      *sum += xp[i];
      (*count)++;
    }
  return best;
}

/* Forward (y) and backward (dx from dy) references for max (include_pad < 0)
 * or average pooling. */
static void ref_pool(const pool_case *c, int include_pad, const double *x, const double *dy,
                     double *y, double *dx) {
  int64_t OH = pool_oh(c), OW = pool_ow(c), HW = c->H * c->W;
  memset(dx, 0, (size_t)(c->N * c->C * HW) * sizeof(double));
  for (int64_t p = 0; p < c->N * c->C; p++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++) {
        double sum;
        int64_t count, i = (p * OH + oh) * OW + ow;
        int64_t best = ref_window(c, x + p * HW, oh, ow, &sum, &count);
        if (include_pad < 0) {
          y[i] = x[p * HW + best];
          dx[p * HW + best] += dy[i];
          continue;
        }
        double div = include_pad ? (double)(c->KH * c->KW) : (double)count;
        y[i] = sum / div;
        for (int64_t kh = 0; kh < c->KH; kh++)
          for (int64_t kw = 0; kw < c->KW; kw++) {
            int64_t ih = oh * c->sh - c->ph + kh, iw = ow * c->sw - c->pw + kw;
            if (ih < 0 || ih >= c->H || iw < 0 || iw >= c->W) continue;
            dx[p * HW + ih * c->W + iw] += dy[i] / div;
          }
      }
}

/* Max pooling on inputs with many ties (values from {0, 1, 2, 3}) checks the
 * first-maximum rule; average pooling on uniform values. */
static void check_pool_case(const pool_case *c, int include_pad, uint64_t seed) {
  const char *ctx = pool_case_str(c, include_pad);
  int is_max = include_pad < 0;
  int64_t ip[8] = {c->KH, c->KW, c->sh, c->sw, c->ph, c->pw, is_max ? 0 : include_pad, 0};
  tdesc xd = T4(c->N, c->C, c->H, c->W), yd = T4(c->N, c->C, pool_oh(c), pool_ow(c));
  int64_t nx = tnumel(&xd), ny = tnumel(&yd);
  float *x = random_floats(nx, seed), *dy = random_floats(ny, seed + 1);
  if (is_max)
    for (int64_t i = 0; i < nx; i++) x[i] = floorf((x[i] + 1.0f) * 2.0f);
  double *xr = to_double(x, nx), *dyr = to_double(dy, ny);
  double *y = doubles(ny), *dx = doubles(nx), *ymag = doubles(ny), *dxmag = doubles(nx);
  float *got = malloc((size_t)(nx > ny ? nx : ny) * sizeof(float));
  cr_assert_not_null(got);
  ref_pool(c, include_pad, xr, dyr, y, dx);
  /* Magnitudes for the error bound: the same sums over |x| and |dy|. For
   * max pooling a dx element is at most the sum of |dy| over the windows
   * holding it: KH*KW times their in-bounds mean. */
  double *ax = doubles(nx), *ady = doubles(ny);
  for (int64_t i = 0; i < nx; i++) ax[i] = fabs(xr[i]);
  for (int64_t i = 0; i < ny; i++) ady[i] = fabs(dyr[i]);
  ref_pool(c, is_max ? 0 : include_pad, ax, ady, ymag, dxmag);
  if (is_max)
    for (int64_t i = 0; i < nx; i++) dxmag[i] *= (double)(c->KH * c->KW);

  uint32_t fwd = is_max ? KILN_OP_MAXPOOL2D : KILN_OP_AVGPOOL2D;
  uint32_t bwd = is_max ? KILN_OP_MAXPOOL2D_BACKWARD : KILN_OP_AVGPOOL2D_BACKWARD;
  run_node(fwd, 1, &xd, (const float *[]){x}, &yd, got, ip);
  if (is_max) {
    for (int64_t i = 0; i < ny; i++)
      cr_assert_eq(got[i], (float)y[i], "maxpool2d (%s): element %lld is %g, reference %g", ctx,
                   (long long)i, got[i], y[i]);
  } else {
    expect_close("avgpool2d", ctx, got, y, ymag, ny);
  }
  if (is_max) run_node(bwd, 2, (tdesc[]){yd, xd}, (const float *[]){dy, x}, &xd, got, ip);
  else run_node(bwd, 1, &yd, (const float *[]){dy}, &xd, got, ip);
  expect_close(is_max ? "maxpool2d_backward" : "avgpool2d_backward", ctx, got, dx, dxmag, nx);

  free(x), free(dy), free(xr), free(dyr), free(y), free(dx), free(ymag), free(dxmag);
  free(ax), free(ady), free(got);
}

Test(pool, maxpool_reference) {
  open_plugin(2);
  for (size_t i = 0; i < N_POOL_CASES; i++) check_pool_case(&pool_cases[i], -1, 300 + 10 * i);
  close_plugin();
}

Test(pool, avgpool_reference) {
  open_plugin(2);
  for (size_t i = 0; i < N_POOL_CASES; i++) {
    check_pool_case(&pool_cases[i], 0, 500 + 10 * i);
    check_pool_case(&pool_cases[i], 1, 700 + 10 * i);
  }
  close_plugin();
}

/* The gradient goes to the first maximum: a constant plane sends each
 * window's gradient to its top-left in-bounds element. */
Test(pool, maxpool_ties_go_to_first_maximum) {
  open_plugin(1);
  const pool_case c = {1, 1, 4, 5, 3, 3, 1, 2, 1, 1};
  int64_t ip[8] = {3, 3, 1, 2, 1, 1, 0, 0};
  tdesc xd = T4(1, 1, 4, 5), yd = T4(1, 1, pool_oh(&c), pool_ow(&c));
  float x[20], dy[64], dx[20];
  for (int i = 0; i < 20; i++) x[i] = 2.5f;
  for (int i = 0; i < tnumel(&yd); i++) dy[i] = (float)(i + 1);
  run_node(KILN_OP_MAXPOOL2D_BACKWARD, 2, (tdesc[]){yd, xd}, (const float *[]){dy, x}, &xd, dx, ip);
  float want[20] = {0};
  for (int64_t oh = 0; oh < pool_oh(&c); oh++)
    for (int64_t ow = 0; ow < pool_ow(&c); ow++) {
      int64_t ih = oh - 1 < 0 ? 0 : oh - 1, iw = ow * 2 - 1 < 0 ? 0 : ow * 2 - 1;
      want[ih * 5 + iw] += dy[oh * pool_ow(&c) + ow];
    }
  for (int i = 0; i < 20; i++)
    cr_assert_eq(dx[i], want[i], "dx[%d] is %g, expected %g", i, dx[i], want[i]);
  close_plugin();
}

/* A NaN in a window makes its maximum NaN, and the gradient goes to the
 * first NaN (as in PyTorch). */
Test(pool, maxpool_propagates_nan) {
  open_plugin(1);
  int64_t ip[8] = {2, 2, 2, 2, 0, 0, 0, 0};
  tdesc xd = T4(1, 1, 4, 4), yd = T4(1, 1, 2, 2);
  float x[16], y[4], dx[16], dy[4] = {1, 2, 3, 4};
  for (int i = 0; i < 16; i++) x[i] = (float)i;
  x[1] = NAN;  /* window (0, 0): after a larger-than-x[0] value */
  x[4] = 100;  /* window (0, 0), row 1: larger, but after the NaN */
  x[15] = NAN; /* window (1, 1): the last element */
  x[14] = NAN; /* window (1, 1): the first NaN, before x[15] */
  run_node(KILN_OP_MAXPOOL2D, 1, &xd, (const float *[]){x}, &yd, y, ip);
  cr_assert(isnan(y[0]) && isnan(y[3]), "windows with a NaN give %g and %g", y[0], y[3]);
  cr_assert_eq(y[1], 7.0f);
  cr_assert_eq(y[2], 13.0f);
  run_node(KILN_OP_MAXPOOL2D_BACKWARD, 2, (tdesc[]){yd, xd}, (const float *[]){dy, x}, &xd, dx, ip);
  float want[16] = {0};
  want[1] = 1, want[7] = 2, want[13] = 3, want[14] = 4;
  for (int i = 0; i < 16; i++)
    cr_assert_eq(dx[i], want[i], "dx[%d] is %g, expected %g", i, dx[i], want[i]);
  close_plugin();
}

/* 2x2 stride-2 pooling, backward and forward, over rows wide enough for the
 * 4-window vector loops and their scalar tails (W 19: OW 9 = 2 vectors + 1,
 * a last odd column; H 9: a last odd row), with ties (values from {0, 1,
 * 2}), NaNs (each its own payload) at every window position and -0
 * gradients: bit for bit what the first-maximum rule gives (the gradient
 * to the first NaN, else the first maximum; -0 + 0 is +0). */
Test(pool, maxpool_2x2_backward_vector_rows) {
  open_plugin(3);
  const int64_t N = 2, C = 3, H = 9, W = 19, OH = 4, OW = 9;
  int64_t ip[8] = {2, 2, 2, 2, 0, 0, 0, 0};
  tdesc xd = T4(N, C, H, W), yd = T4(N, C, OH, OW);
  int64_t nx = tnumel(&xd), ny = tnumel(&yd);
  float *x = random_floats(nx, 901), *dy = random_floats(ny, 902);
  float *dx = malloc((size_t)nx * sizeof(float)), *want = calloc((size_t)nx, sizeof(float));
  cr_assert(dx && want);
  for (int64_t i = 0; i < nx; i++) x[i] = floorf((x[i] + 1.0f) * 1.5f);
  for (int64_t i = 0; i < nx; i += 7) {
    uint32_t u = 0x7fc00000u | (uint32_t)i;
    memcpy(&x[i], &u, sizeof u);
  }
  for (int64_t i = 0; i < ny; i += 5) dy[i] = -0.0f;
  run_node(KILN_OP_MAXPOOL2D_BACKWARD, 2, (tdesc[]){yd, xd}, (const float *[]){dy, x}, &xd, dx, ip);
  for (int64_t p = 0; p < N * C; p++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++) {
        int64_t best = -1;
        for (int64_t k = 0; k < 4; k++) {
          int64_t i = p * H * W + (2 * oh + k / 2) * W + 2 * ow + k % 2;
          if (best < 0 || (!isnan(x[best]) && (isnan(x[i]) || x[i] > x[best]))) best = i;
        }
        want[best] = 0.0f + dy[(p * OH + oh) * OW + ow];
      }
  for (int64_t i = 0; i < nx; i++)
    cr_assert(memcmp(&dx[i], &want[i], sizeof(float)) == 0, "dx[%lld] is %g, expected %g",
              (long long)i, dx[i], want[i]);
  /* The forward pass on the same rows: the running maximum takes v when v >
   * m or v is NaN (so the last NaN of a window), bit for bit. */
  float *y = malloc((size_t)ny * sizeof(float));
  cr_assert_not_null(y);
  run_node(KILN_OP_MAXPOOL2D, 1, &xd, (const float *[]){x}, &yd, y, ip);
  for (int64_t p = 0; p < N * C; p++)
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++) {
        const float *r = x + p * H * W + 2 * oh * W + 2 * ow;
        float m = r[0], v[3] = {r[1], r[W], r[W + 1]};
        for (int k = 0; k < 3; k++) m = (v[k] > m || isnan(v[k])) ? v[k] : m;
        int64_t i = (p * OH + oh) * OW + ow;
        cr_assert(memcmp(&y[i], &m, sizeof m) == 0, "y[%lld] is %g, expected %g", (long long)i,
                  y[i], m);
      }
  free(x), free(dy), free(dx), free(want), free(y);
  close_plugin();
}

/* Finite differences of the double forward. Max pooling uses well separated
 * distinct values so no step changes a window's maximum. */
Test(pool, backward_matches_finite_differences) {
  open_plugin(2);
  const pool_case c = {2, 2, 7, 6, 3, 2, 2, 1, 1, 1};
  tdesc xd = T4(c.N, c.C, c.H, c.W), yd = T4(c.N, c.C, pool_oh(&c), pool_ow(&c));
  int64_t nx = tnumel(&xd), ny = tnumel(&yd);
  float *x = malloc((size_t)nx * sizeof(float)), *r = random_floats(ny, 77);
  float *got = malloc((size_t)nx * sizeof(float));
  cr_assert(x && got);
  for (int64_t i = 0; i < nx; i++) x[i] = (float)((i * 37) % nx) * 0.01f; /* distinct */
  double *xr = to_double(x, nx), *rr = to_double(r, ny), *y = doubles(ny), *scratch = doubles(nx);
  for (int mode = -1; mode <= 1; mode++) {
    int64_t ip[8] = {c.KH, c.KW, c.sh, c.sw, c.ph, c.pw, mode < 0 ? 0 : mode, 0};
    if (mode < 0)
      run_node(KILN_OP_MAXPOOL2D_BACKWARD, 2, (tdesc[]){yd, xd}, (const float *[]){r, x}, &xd, got, ip);
    else
      run_node(KILN_OP_AVGPOOL2D_BACKWARD, 1, &yd, (const float *[]){r}, &xd, got, ip);
    const double eps = 1e-4;
    for (int64_t i = 0; i < nx; i++) {
      double keep = xr[i], lp = 0, lm = 0;
      xr[i] = keep + eps;
      ref_pool(&c, mode, xr, rr, y, scratch);
      for (int64_t j = 0; j < ny; j++) lp += y[j] * rr[j];
      xr[i] = keep - eps;
      ref_pool(&c, mode, xr, rr, y, scratch);
      for (int64_t j = 0; j < ny; j++) lm += y[j] * rr[j];
      xr[i] = keep;
      double fd = (lp - lm) / (2 * eps);
      cr_assert(fabs(fd - got[i]) <= 1e-4 * (1 + fabs(fd)),
                "%s: dx[%lld] is %.7g, finite difference %.7g", pool_case_str(&c, mode),
                (long long)i, (double)got[i], fd);
    }
  }
  free(x), free(r), free(got), free(xr), free(rr), free(y), free(scratch);
  close_plugin();
}

static void expect_pool_error(uint32_t op, int n_in, const tdesc *ins, tdesc out,
                              const int64_t ip[8], kiln_status want, const char *s1,
                              const char *s2) {
  kiln_status st = compile_node(op, n_in, ins, NULL, &out, KILN_F32, ip);
  cr_assert_eq(st, want, "op %u: status %d, expected %d (message: %s)", op, st, want, ph_error());
  cr_assert(strstr(ph_error(), s1) && strstr(ph_error(), s2), "op %u: message \"%s\" lacks \"%s\" or \"%s\"",
            op, ph_error(), s1, s2);
}

#define PIP(kh, kw, sh, sw, ph, pw, inc) ((const int64_t[8]){kh, kw, sh, sw, ph, pw, inc, 0})

Test(pool, validation_errors) {
  open_plugin(1);
  tdesc x = T4(2, 3, 8, 8);
  /* Padding as large as the kernel would make all-padding windows. */
  expect_pool_error(KILN_OP_MAXPOOL2D, 1, &x, T4(2, 3, 5, 5), PIP(2, 2, 2, 2, 2, 0, 0),
                    KILN_INVALID_ARGUMENT, "maxpool2d", "padding [2, 0]");
  expect_pool_error(KILN_OP_AVGPOOL2D, 1, &x, T4(2, 3, 4, 4), PIP(2, 2, 0, 2, 0, 0, 0),
                    KILN_INVALID_ARGUMENT, "avgpool2d", "stride [0, 2]");
  expect_pool_error(KILN_OP_AVGPOOL2D, 1, &x, T4(2, 3, 4, 4), PIP(2, 2, 2, 2, 0, 0, 2),
                    KILN_INVALID_ARGUMENT, "avgpool2d", "count_include_pad");
  /* Output shape disagrees with the formula. */
  expect_pool_error(KILN_OP_AVGPOOL2D, 1, &x, T4(2, 3, 4, 3), PIP(2, 2, 2, 2, 0, 0, 1),
                    KILN_SHAPE_MISMATCH, "avgpool2d", "y is [2, 3, 4, 3], expected [2, 3, 4, 4]");
  expect_pool_error(KILN_OP_MAXPOOL2D, 1, &x, T4(2, 4, 4, 4), PIP(2, 2, 2, 2, 0, 0, 0),
                    KILN_SHAPE_MISMATCH, "maxpool2d", "expected [2, 3, 4, 4]");
  /* Kernel larger than the padded input. */
  expect_pool_error(KILN_OP_MAXPOOL2D, 1, &x, T4(2, 3, 1, 1), PIP(11, 2, 1, 1, 1, 0, 0),
                    KILN_SHAPE_MISMATCH, "maxpool2d", "smaller than the kernel 11x2");
  /* Backward: x and dx differ; dy wrong for dx. */
  expect_pool_error(KILN_OP_MAXPOOL2D_BACKWARD, 2, (tdesc[]){T4(2, 3, 4, 4), T4(2, 3, 8, 9)}, x,
                    PIP(2, 2, 2, 2, 0, 0, 0), KILN_SHAPE_MISMATCH, "maxpool2d_backward",
                    "x [2, 3, 8, 9] and dx [2, 3, 8, 8]");
  expect_pool_error(KILN_OP_AVGPOOL2D_BACKWARD, 1, (tdesc[]){T4(2, 3, 3, 4)}, x,
                    PIP(2, 2, 2, 2, 0, 0, 0), KILN_SHAPE_MISMATCH, "avgpool2d_backward",
                    "dy is [2, 3, 3, 4], expected [2, 3, 4, 4]");
  /* Wrong rank. */
  expect_pool_error(KILN_OP_MAXPOOL2D, 1, (tdesc[]){{3, {3, 8, 8}}}, T4(2, 3, 4, 4),
                    PIP(2, 2, 2, 2, 0, 0, 0), KILN_SHAPE_MISMATCH, "maxpool2d", "has rank 3");
  close_plugin();
}

/* ---- fused epilogues (plugin.c, fuse_epilogues) ------------------------------------
 * A conv2d or pooling node followed by an elementwise node that reads its
 * output runs that node over each finished range of its output. The values
 * must be those of the two nodes run one after the other (bit for bit:
 * KILN_CPU_FUSE=0 turns the fusion off), the profile must say the fusion
 * happened (else these tests would pass without testing it), and a layout
 * where the epilogue would overwrite what the producer still reads must not
 * be fused. */

#define FUSED_NOTE "fused into the node before"

typedef struct fuse_graph {
  int in[3], mid, out;     /* tensor indices: producer inputs, its output, the epilogue's */
  int n_in;
} fuse_graph;

/* Builds producer(ins) -> mid, then epi(mid[, extra]) -> out into `graph`.
 * out_on_input >= 0 places out over producer input out_on_input (same
 * bytes); extra >= 0 makes epi read producer input `extra` as its second
 * input (relu_backward's x). */
static fuse_graph build_fused(uint32_t op, int n_in, const tdesc *ins, const tdesc *mid,
                              const int64_t ip[8], uint32_t epi, int extra, int out_on_input) {
  ph_graph_free(graph);
  ph_graph_init(graph, &plugin);
  fuse_graph f = {.n_in = n_in};
  for (int i = 0; i < n_in; i++) {
    f.in[i] = ph_tensor(graph, KILN_F32, ins[i].ndim, ins[i].shape);
    cr_assert_geq(f.in[i], 0, "ph_tensor: %s", ph_error());
  }
  f.mid = ph_tensor(graph, KILN_F32, mid->ndim, mid->shape);
  if (out_on_input >= 0) {
    const kiln_plugin_tensor *t = &graph->tensors[f.in[out_on_input]];
    f.out = ph_tensor_at(graph, KILN_F32, mid->ndim, mid->shape, (int)t->buffer, t->offset);
  } else {
    f.out = ph_tensor(graph, KILN_F32, mid->ndim, mid->shape);
  }
  cr_assert(f.mid >= 0 && f.out >= 0, "ph_tensor: %s", ph_error());
  cr_assert_geq(ph_node(graph, op, n_in, f.in, f.mid, ip, NULL), 0, "%s", ph_error());
  int e_in[2] = {f.mid, extra >= 0 ? f.in[extra] : -1};
  cr_assert_geq(ph_node(graph, epi, extra >= 0 ? 2 : 1, e_in, f.out, NULL, NULL), 0, "%s",
                ph_error());
  return f;
}

/* Compiles and runs the graph of build_fused on `data` (one array per
 * producer input); reads mid and out. With fuse 0 under KILN_CPU_FUSE=0.
 * Returns whether the profile reported a fused node. */
static int run_fused(const fuse_graph *f, const tdesc *ins, float *const *data, int fuse,
                     float *mid, float *out) {
  if (!fuse) setenv("KILN_CPU_FUSE", "0", 1);
  setenv("KILN_PROFILE", "1", 1);
  kiln_status st = ph_compile(graph);
  unsetenv("KILN_PROFILE");
  unsetenv("KILN_CPU_FUSE");
  cr_assert_eq(st, KILN_OK, "compile: %s", ph_error());
  for (int i = 0; i < f->n_in; i++)
    cr_assert_eq(ph_write(graph, f->in[i], data[i]), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_run(graph), KILN_OK, "run: %s", ph_error());
  cr_assert_eq(ph_read(graph, f->mid, mid), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_read(graph, f->out, out), KILN_OK, "%s", ph_error());
  (void)ins;
  tu_capture cap;
  tu_stderr_begin(&cap);
  graph->p->api->graph_free(graph->p->dev, graph->exec);   /* prints the profile */
  graph->exec = NULL;
  char *report = tu_stderr_end(&cap);
  cr_assert_not_null(report);
  int fused = strstr(report, FUSED_NOTE) != NULL;
  free(report);
  return fused;
}

/* Runs producer -> epi fused and not, on random data; checks both agree bit
 * for bit, that the epilogue's values are right (relu: max(mid, 0);
 * relu_backward: mid where x > 0), and that fusion happened iff
 * want_fused. */
static void check_fused(const char *what, uint32_t op, int n_in, const tdesc *ins,
                        const tdesc *mid, const int64_t ip[8], uint32_t epi, int extra,
                        int out_on_input, int want_fused, uint64_t seed) {
  fuse_graph f = build_fused(op, n_in, ins, mid, ip, epi, extra, out_on_input);
  int64_t n = tnumel(mid);
  float *data[3] = {0}, *m[2], *o[2];
  for (int i = 0; i < n_in; i++) data[i] = random_floats(tnumel(&ins[i]), seed + (uint64_t)i);
  for (int k = 0; k < 2; k++) {
    m[k] = malloc((size_t)n * sizeof(float));
    o[k] = malloc((size_t)n * sizeof(float));
    cr_assert(m[k] && o[k]);
  }
  int fused = run_fused(&f, ins, data, 1, m[0], o[0]);
  cr_assert_eq(fused, want_fused, "%s: the profile %s \"" FUSED_NOTE "\"", what,
               want_fused ? "lacks" : "says");
  cr_assert_not(run_fused(&f, ins, data, 0, m[1], o[1]), "%s: fused under KILN_CPU_FUSE=0", what);
  cr_assert_eq(memcmp(m[0], m[1], (size_t)n * sizeof(float)), 0, "%s: the producer's output differs",
               what);
  cr_assert_eq(memcmp(o[0], o[1], (size_t)n * sizeof(float)), 0,
               "%s: fused and unfused epilogues differ", what);
  const float *x = extra >= 0 ? data[extra] : NULL;
  for (int64_t i = 0; i < n; i++) {
    float want = epi == KILN_OP_RELU ? (m[0][i] > 0.0f ? m[0][i] : 0.0f)
                                     : (x[i] > 0.0f ? m[0][i] : 0.0f);
    cr_assert(memcmp(&want, &o[0][i], sizeof want) == 0, "%s: element %lld is %.9g, want %.9g",
              what, (long long)i, (double)o[0][i], (double)want);
  }
  for (int i = 0; i < n_in; i++) free(data[i]);
  for (int k = 0; k < 2; k++) free(m[k]), free(o[k]);
}

Test(fusion, conv2d_then_relu_every_path) {
  /* N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups, bias */
  static const conv_case cases[] = {
      {6, 1, 12, 11, 8, 3, 3, 1, 1, 0, 0, 1, 1, 1, 1},    /* small K (9) */
      {5, 9, 9, 10, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},    /* GEMM, whole images, padded */
      {2, 4, 40, 37, 6, 3, 3, 1, 1, 0, 0, 1, 1, 1, 0},    /* GEMM, pixel tiles of one image */
      {3, 6, 7, 7, 6, 3, 3, 2, 2, 1, 1, 1, 1, 6, 1},      /* depthwise: direct loops */
      {4, 8, 6, 6, 8, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0},      /* pointwise */
  };
  for (int threads = 1; threads <= 2; threads++) {
    open_plugin(threads);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
      const conv_case *c = &cases[k];
      tdesc ins[3] = {T4(c->N, c->C, c->H, c->W), T4(c->O, c->C / c->G, c->KH, c->KW),
                      {1, {c->O}}};
      tdesc y = T4(c->N, c->O, conv_oh(c), conv_ow(c));
      int64_t ip[8];
      conv_ip(c, ip);
      char what[320];
      snprintf(what, sizeof what, "conv2d %s, then relu, %d thread(s)", conv_case_str(c), threads);
      check_fused(what, KILN_OP_CONV2D, c->bias ? 3 : 2, ins, &y, ip, KILN_OP_RELU, -1, -1, 1,
                  40 + k);
    }
    close_plugin();
  }
}

Test(fusion, maxpool2d_backward_then_relu_backward_in_place) {
  /* relu_backward(dx, x) written over x itself, as a planner may place it
   * when x dies there: pooling reads x plane by plane, so this fuses. */
  static const pool_case cases[] = {
      {4, 5, 26, 26, 2, 2, 2, 2, 0, 0},   /* the 2x2 path (the CNN's) */
      {3, 4, 11, 11, 2, 2, 2, 2, 0, 0},   /* odd: a row and column no window reads */
      {2, 3, 9, 8, 3, 3, 2, 2, 1, 1},     /* overlapping, padded windows */
  };
  for (int threads = 1; threads <= 2; threads++) {
    open_plugin(threads);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
      const pool_case *c = &cases[k];
      tdesc ins[2] = {T4(c->N, c->C, pool_oh(c), pool_ow(c)), T4(c->N, c->C, c->H, c->W)};
      int64_t ip[8] = {c->KH, c->KW, c->sh, c->sw, c->ph, c->pw, 0, 0};
      char what[160];
      snprintf(what, sizeof what, "maxpool2d_backward case %zu, then relu_backward over x, %d "
               "thread(s)", k, threads);
      check_fused(what, KILN_OP_MAXPOOL2D_BACKWARD, 2, ins, &ins[1], ip, KILN_OP_RELU_BACKWARD,
                  1, 1, 1, 60 + k);
    }
    close_plugin();
  }
}

Test(fusion, refused_where_the_epilogue_would_overwrite_a_conv_input) {
  /* relu's output over the conv's x: another work item (or thread) still
   * reads x after an item's epilogue would have run, so no fusion. */
  open_plugin(2);
  conv_case c = {6, 4, 8, 8, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0};   /* y has x's shape */
  tdesc ins[2] = {T4(c.N, c.C, c.H, c.W), T4(c.O, c.C, 1, 1)};
  tdesc y = T4(c.N, c.O, c.H, c.W);
  int64_t ip[8];
  conv_ip(&c, ip);
  check_fused("conv2d, then relu over x", KILN_OP_CONV2D, 2, ins, &y, ip, KILN_OP_RELU, -1, 0, 0,
              80);
  close_plugin();
}
