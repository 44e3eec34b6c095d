/*
 * test_gradcheck.c - every differentiable op, forward and backward, against
 * a double-precision reference written here.
 *
 * For each case: the op's inputs are params, y = op(inputs) and
 * loss = sum(y * R) with a fixed random R of y's shape. The test runs the
 * compiled forward+backward graph on the CPU device and checks
 *   (a) y against the double reference forward, and
 *   (b) each param's gradient against central finite differences of
 *       L(x) = sum(ref(x) * R), computed in double with eps = 1e-5 so that
 *       f32 roundoff does not enter the numerical gradient.
 * Errors are measured relative to the scale of the compared values:
 *   max |got - want| <= tol * max(1, max |want|),
 * with tol stated per case (f32 accumulation over longer sums needs more).
 * Kinks are kept away by construction: relu inputs are at least 0.1 from
 * zero, and pooled values are distinct by at least 1e-3 (max ties).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"
#include "testutil.h"

enum { MAXIN = 3, RANK = 6 };

/* Input value layouts. */
enum { VAL_UNIFORM = 0, VAL_AWAY_FROM_ZERO = 1, VAL_DISTINCT = 2 };

typedef struct gc_case {
  const char *name;
  kiln_op op;
  int n_in;
  int ndim[MAXIN];
  int64_t shape[MAXIN][RANK];
  int64_t ip[8];             /* the op's parameters, as in kiln/ops.h */
  float fp[2];               /* scale: a, b */
  int out_ndim;              /* reshape / expand target; -1: flatten */
  int64_t out_shape[RANK];
  float lo[MAXIN], hi[MAXIN];/* input ranges; lo == hi means [-1, 1] */
  int values;                /* VAL_* */
  int n_labels;              /* cross-entropy: labels [n_labels] */
  int32_t labels[8];
  double tol;
} gc_case;

/* ---- the double reference ------------------------------------------------ */

static int64_t numel(int ndim, const int64_t *s) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= s[i];
  return n;
}

static void unravel(int64_t i, int ndim, const int64_t *s, int64_t *co) {
  for (int d = ndim - 1; d >= 0; d--) {
    co[d] = i % s[d];
    i /= s[d];
  }
}

/* Flat index into an input of shape s (rank n) broadcast to coordinates co
 * of rank on (right-aligned). */
static int64_t bidx(const int64_t *co, int on, int n, const int64_t *s) {
  int64_t k = 0;
  for (int d = 0; d < n; d++) {
    int64_t c = co[d + on - n];
    k = k * s[d] + (s[d] == 1 ? 0 : c);
  }
  return k;
}

static void ref_conv2d(const gc_case *c, double *const *in, double *out, const int64_t *os) {
  const int64_t *xs = c->shape[0], *ws = c->shape[1], *p = c->ip;
  int64_t C = xs[1], H = xs[2], W = xs[3], O = ws[0], KH = ws[2], KW = ws[3];
  int64_t G = p[6], Cg = C / G, Og = O / G;
  for (int64_t n = 0; n < os[0]; n++)
    for (int64_t o = 0; o < O; o++)
      for (int64_t oh = 0; oh < os[2]; oh++)
        for (int64_t ow = 0; ow < os[3]; ow++) {
          double acc = c->n_in == 3 ? in[2][o] : 0.0;
          int64_t gi = o / Og;
          for (int64_t ci = 0; ci < Cg; ci++)
            for (int64_t kh = 0; kh < KH; kh++)
              for (int64_t kw = 0; kw < KW; kw++) {
                int64_t h = oh * p[0] - p[2] + kh * p[4], w = ow * p[1] - p[3] + kw * p[5];
                if (h < 0 || h >= H || w < 0 || w >= W) continue;
                acc += in[0][((n * C + gi * Cg + ci) * H + h) * W + w] *
                       in[1][((o * Cg + ci) * KH + kh) * KW + kw];
              }
          out[((n * O + o) * os[2] + oh) * os[3] + ow] = acc;
        }
}

static void ref_pool(const gc_case *c, double *const *in, double *out, const int64_t *os) {
  const int64_t *xs = c->shape[0], *p = c->ip;
  int64_t H = xs[2], W = xs[3];
  for (int64_t nc = 0; nc < xs[0] * xs[1]; nc++)
    for (int64_t oh = 0; oh < os[2]; oh++)
      for (int64_t ow = 0; ow < os[3]; ow++) {
        double best = -INFINITY, sum = 0.0;
        int count = 0;
        for (int64_t kh = 0; kh < p[0]; kh++)
          for (int64_t kw = 0; kw < p[1]; kw++) {
            int64_t h = oh * p[2] - p[4] + kh, w = ow * p[3] - p[5] + kw;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            double v = in[0][(nc * H + h) * W + w];
            if (v > best) best = v;
            sum += v;
            count++;
          }
        double div = (c->op == KILN_OP_AVGPOOL2D && p[6]) ? (double)(p[0] * p[1]) : count;
        out[(nc * os[2] + oh) * os[3] + ow] = c->op == KILN_OP_MAXPOOL2D ? best : sum / div;
      }
}

/* y = op(in) in double; out has kiln's output shape (on, os). */
static void ref_forward(const gc_case *c, double *const *in, double *out, int on, const int64_t *os) {
  int64_t n_out = numel(on, os), co[RANK];
  const int *nd = c->ndim;
  switch (c->op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV:
      for (int64_t i = 0; i < n_out; i++) {
        unravel(i, on, os, co);
        double a = in[0][bidx(co, on, nd[0], c->shape[0])], b = in[1][bidx(co, on, nd[1], c->shape[1])];
        out[i] = c->op == KILN_OP_ADD ? a + b : c->op == KILN_OP_SUB ? a - b : c->op == KILN_OP_MUL ? a * b : a / b;
      }
      break;
    case KILN_OP_NEG: case KILN_OP_RELU: case KILN_OP_TANH: case KILN_OP_SIGMOID:
    case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SCALE: case KILN_OP_COPY: case KILN_OP_RESHAPE:
    case KILN_OP_CAST:
      for (int64_t i = 0; i < n_out; i++) {
        double x = in[0][i];
        switch (c->op) {
          case KILN_OP_NEG: out[i] = -x; break;
          case KILN_OP_RELU: out[i] = x > 0 ? x : 0; break;
          case KILN_OP_TANH: out[i] = tanh(x); break;
          case KILN_OP_SIGMOID: out[i] = 1.0 / (1.0 + exp(-x)); break;
          case KILN_OP_EXP: out[i] = exp(x); break;
          case KILN_OP_LOG: out[i] = log(x); break;
          case KILN_OP_SCALE: case KILN_OP_CAST: out[i] = (double)c->fp[0] * x + (double)c->fp[1]; break;
          default: out[i] = x; break;
        }
      }
      break;
    case KILN_OP_MATMUL: {
      int ta = (int)c->ip[0], tb = (int)c->ip[1];
      const int64_t *as = c->shape[0], *bs = c->shape[1];
      int an = nd[0], bn = nd[1];
      int64_t M = os[on - 2], N = os[on - 1], K = ta ? as[an - 2] : as[an - 1];
      int64_t n_batch = numel(on - 2, os);
      for (int64_t bi = 0; bi < n_batch; bi++) {
        unravel(bi, on - 2, os, co);
        int64_t ao = bidx(co, on - 2, an - 2, as) * as[an - 2] * as[an - 1];
        int64_t bo = bidx(co, on - 2, bn - 2, bs) * bs[bn - 2] * bs[bn - 1];
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++)
              acc += in[0][ao + (ta ? k * M + m : m * K + k)] * in[1][bo + (tb ? n * K + k : k * N + n)];
            out[(bi * M + m) * N + n] = acc;
          }
      }
      break;
    }
    case KILN_OP_SUM: case KILN_OP_MEAN: {
      const int64_t *xs = c->shape[0];
      uint64_t mask = c->ip[0] ? (uint64_t)c->ip[0] : (1ull << nd[0]) - 1;
      int64_t count = 1;
      for (int d = 0; d < nd[0]; d++) if (mask >> d & 1) count *= xs[d];
      memset(out, 0, (size_t)n_out * sizeof *out);
      for (int64_t i = 0; i < numel(nd[0], xs); i++) {
        unravel(i, nd[0], xs, co);
        int64_t k = 0;
        for (int d = 0; d < nd[0]; d++) {
          if (mask >> d & 1) continue; /* reduced: index 0 whether kept or not */
          k = k * xs[d] + co[d];
        }
        out[k] += in[0][i] / (c->op == KILN_OP_MEAN ? (double)count : 1.0);
      }
      break;
    }
    case KILN_OP_EXPAND:
      for (int64_t i = 0; i < n_out; i++) {
        unravel(i, on, os, co);
        out[i] = in[0][bidx(co, on, nd[0], c->shape[0])];
      }
      break;
    case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX: {
      int64_t C = os[on - 1];
      for (int64_t r = 0; r < n_out / C; r++) {
        const double *x = in[0] + r * C;
        double mx = x[0], s = 0.0;
        for (int64_t j = 1; j < C; j++) mx = x[j] > mx ? x[j] : mx;
        for (int64_t j = 0; j < C; j++) s += exp(x[j] - mx);
        for (int64_t j = 0; j < C; j++)
          out[r * C + j] = c->op == KILN_OP_SOFTMAX ? exp(x[j] - mx) / s : x[j] - mx - log(s);
      }
      break;
    }
    case KILN_OP_CROSS_ENTROPY: {
      int64_t N = c->shape[0][0], C = c->shape[0][1];
      double loss = 0.0;
      for (int64_t r = 0; r < N; r++) {
        const double *x = in[0] + r * C;
        int32_t y = c->labels[r];
        if (y < 0 || y >= C) continue;
        double mx = x[0], s = 0.0;
        for (int64_t j = 1; j < C; j++) mx = x[j] > mx ? x[j] : mx;
        for (int64_t j = 0; j < C; j++) s += exp(x[j] - mx);
        loss += -(x[y] - mx - log(s));
      }
      out[0] = loss / (double)N;
      break;
    }
    case KILN_OP_TRANSPOSE: {
      int64_t ic[RANK];
      for (int64_t i = 0; i < n_out; i++) {
        unravel(i, on, os, co);
        for (int d = 0; d < on; d++) ic[c->ip[d]] = co[d];
        int64_t k = 0;
        for (int d = 0; d < nd[0]; d++) k = k * c->shape[0][d] + ic[d];
        out[i] = in[0][k];
      }
      break;
    }
    case KILN_OP_CONV2D: ref_conv2d(c, in, out, os); break;
    case KILN_OP_MAXPOOL2D: case KILN_OP_AVGPOOL2D: ref_pool(c, in, out, os); break;
    default: cr_assert_fail("%s: no reference for op %d", c->name, (int)c->op);
  }
}

/* ---- the kiln side --------------------------------------------------------- */

static kiln_node *build(kiln_graph *g, const gc_case *c, kiln_node **in, kiln_node *labels) {
  const int64_t *p = c->ip;
  switch (c->op) {
    case KILN_OP_ADD: return kiln_add(g, in[0], in[1]);
    case KILN_OP_SUB: return kiln_sub(g, in[0], in[1]);
    case KILN_OP_MUL: return kiln_mul(g, in[0], in[1]);
    case KILN_OP_DIV: return kiln_div(g, in[0], in[1]);
    case KILN_OP_NEG: return kiln_neg(g, in[0]);
    case KILN_OP_RELU: return kiln_relu(g, in[0]);
    case KILN_OP_TANH: return kiln_tanh(g, in[0]);
    case KILN_OP_SIGMOID: return kiln_sigmoid(g, in[0]);
    case KILN_OP_EXP: return kiln_exp(g, in[0]);
    case KILN_OP_LOG: return kiln_log(g, in[0]);
    case KILN_OP_SCALE: return kiln_scale(g, in[0], c->fp[0], c->fp[1]);
    case KILN_OP_CAST: return kiln_cast(g, in[0], c->fp[0], c->fp[1]);
    case KILN_OP_MATMUL: return kiln_matmul(g, in[0], in[1], (int)p[0], (int)p[1]);
    case KILN_OP_SUM: return kiln_sum(g, in[0], (uint32_t)p[0], (int)p[1]);
    case KILN_OP_MEAN: return kiln_mean(g, in[0], (uint32_t)p[0], (int)p[1]);
    case KILN_OP_EXPAND: return kiln_expand(g, in[0], c->out_ndim, c->out_shape);
    case KILN_OP_SOFTMAX: return kiln_softmax(g, in[0]);
    case KILN_OP_LOG_SOFTMAX: return kiln_log_softmax(g, in[0]);
    case KILN_OP_CROSS_ENTROPY: return kiln_cross_entropy(g, in[0], labels);
    case KILN_OP_RESHAPE: /* out_ndim -1: kiln_flatten, which is a reshape */
      return c->out_ndim < 0 ? kiln_flatten(g, in[0]) : kiln_reshape(g, in[0], c->out_ndim, c->out_shape);
    case KILN_OP_TRANSPOSE: {
      int perm[RANK];
      for (int i = 0; i < c->ndim[0]; i++) perm[i] = (int)p[i];
      return kiln_transpose(g, in[0], perm);
    }
    case KILN_OP_COPY:
      return kiln_node_create(g, KILN_OP_COPY, 1, in, NULL, NULL, KILN_DTYPE_INVALID, -1, NULL);
    case KILN_OP_CONV2D: {
      kiln_conv2d_params cp = {(int)p[0], (int)p[1], (int)p[2], (int)p[3], (int)p[4], (int)p[5], (int)p[6]};
      return kiln_conv2d(g, in[0], in[1], c->n_in == 3 ? in[2] : NULL, &cp);
    }
    case KILN_OP_MAXPOOL2D: case KILN_OP_AVGPOOL2D: {
      kiln_pool2d_params pp = {(int)p[0], (int)p[1], (int)p[2], (int)p[3], (int)p[4], (int)p[5], (int)p[6]};
      return c->op == KILN_OP_MAXPOOL2D ? kiln_maxpool2d(g, in[0], &pp) : kiln_avgpool2d(g, in[0], &pp);
    }
    default: return NULL;
  }
}

static void make_values(const gc_case *c, int k, float *x, int64_t n, uint64_t seed) {
  float lo = c->lo[k], hi = c->hi[k];
  if (lo == hi) lo = -1.0f, hi = 1.0f;
  tu_fill_uniform(x, n, seed, lo, hi);
  if (c->values == VAL_AWAY_FROM_ZERO) {
    for (int64_t i = 0; i < n; i++) x[i] += x[i] < 0 ? -0.1f : 0.1f;
  } else if (c->values == VAL_DISTINCT) {
    /* a shuffled ramp: distinct values 1e-3 * (2k - n) apart by >= 2e-3 */
    for (int64_t i = 0; i < n; i++) x[i] = (float)(2 * i - n) * 1e-3f;
    uint64_t s = seed | 1;
    for (int64_t i = n - 1; i > 0; i--) {
      s ^= s << 13; s ^= s >> 7; s ^= s << 17;
      int64_t j = (int64_t)(s % (uint64_t)(i + 1));
      float t = x[i]; x[i] = x[j]; x[j] = t;
    }
  }
}

static double max_abs(const double *v, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++) m = fabs(v[i]) > m ? fabs(v[i]) : m;
  return m;
}

static double loss_ref(const gc_case *c, double *const *in, double *y, int on, const int64_t *os,
                       const double *r) {
  ref_forward(c, in, y, on, os);
  double l = 0.0;
  for (int64_t i = 0; i < numel(on, os); i++) l += y[i] * r[i];
  return l;
}

static void run_case(const gc_case *c, kiln_device *dev) {
  kiln_graph *g = NULL;
  kiln_compiled *cc = NULL;
  kiln_tensor *t[MAXIN] = {0};
  kiln_node *p[MAXIN] = {0}, *labels = NULL;
  float *xf[MAXIN] = {0};
  double *xd[MAXIN] = {0};
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  for (int k = 0; k < c->n_in; k++) {
    int64_t n = numel(c->ndim[k], c->shape[k]);
    xf[k] = malloc((size_t)n * sizeof(float));
    xd[k] = malloc((size_t)n * sizeof(double));
    make_values(c, k, xf[k], n, 1000 + 17 * (uint64_t)k);
    for (int64_t i = 0; i < n; i++) xd[k][i] = xf[k][i];
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, c->ndim[k], c->shape[k], &t[k]), KILN_OK, "%s", kiln_last_error());
    cr_assert_eq(kiln_tensor_upload(t[k], xf[k], (size_t)n * sizeof(float)), KILN_OK);
    p[k] = kiln_param(g, "x", t[k]);
  }
  if (c->n_labels) labels = kiln_input(g, "labels", KILN_I32, 1, (int64_t[]){c->n_labels});
  kiln_node *y = build(g, c, p, labels);
  cr_assert_not_null(y, "%s: build: %s", c->name, kiln_last_error());
  int64_t os[KILN_MAX_DIMS];
  int on = kiln_node_shape(y, os);
  int64_t ny = numel(on, os);
  kiln_node *r = kiln_input(g, "R", KILN_F32, on, os);
  kiln_node *loss = kiln_sum(g, kiln_mul(g, y, r), 0, 0);
  cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s: backward: %s", c->name, kiln_last_error());
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  for (int k = 0; k < c->n_in; k++) {
    cr_assert_not_null(kiln_grad(g, p[k]), "%s: input %d has no gradient", c->name, k);
    cr_assert_eq(kiln_graph_output(g, kiln_grad(g, p[k])), KILN_OK);
  }
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s: compile: %s", c->name, kiln_last_error());

  float *rf = malloc((size_t)ny * sizeof *rf), *yf = malloc((size_t)ny * sizeof *yf);
  double *rd = malloc((size_t)ny * sizeof *rd), *yd = malloc((size_t)ny * sizeof *yd);
  tu_fill_uniform(rf, ny, 99, -1.0f, 1.0f);
  for (int64_t i = 0; i < ny; i++) rd[i] = rf[i];
  cr_assert_eq(kiln_compiled_set_input(cc, r, rf, (size_t)ny * sizeof *rf), KILN_OK);
  if (labels)
    cr_assert_eq(kiln_compiled_set_input(cc, labels, c->labels, (size_t)c->n_labels * sizeof(int32_t)), KILN_OK);
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s: run: %s", c->name, kiln_last_error());

  /* (a) forward */
  cr_assert_eq(kiln_compiled_get_output(cc, y, yf, (size_t)ny * sizeof *yf), KILN_OK);
  ref_forward(c, xd, yd, on, os);
  double scale = fmax(1.0, max_abs(yd, ny)), worst = 0.0;
  int64_t at = 0;
  for (int64_t i = 0; i < ny; i++)
    if (fabs(yf[i] - yd[i]) > worst) worst = fabs(yf[i] - yd[i]), at = i;
  cr_assert_leq(worst, c->tol * scale, "%s: forward y[%lld] = %.8g, reference %.8g (error %.3g > %.3g)",
                c->name, (long long)at, yf[at], yd[at], worst, c->tol * scale);

  /* (b) gradients against central differences of the double reference */
  const double eps = 1e-5;
  for (int k = 0; k < c->n_in; k++) {
    int64_t n = numel(c->ndim[k], c->shape[k]);
    float *gf = malloc((size_t)n * sizeof *gf);
    double *gd = malloc((size_t)n * sizeof *gd);
    cr_assert_eq(kiln_compiled_get_output(cc, kiln_grad(g, p[k]), gf, (size_t)n * sizeof *gf), KILN_OK);
    for (int64_t i = 0; i < n; i++) {
      double keep = xd[k][i];
      xd[k][i] = keep + eps;
      double lp = loss_ref(c, xd, yd, on, os, rd);
      xd[k][i] = keep - eps;
      double lm = loss_ref(c, xd, yd, on, os, rd);
      xd[k][i] = keep;
      gd[i] = (lp - lm) / (2 * eps);
    }
    double gscale = fmax(1.0, max_abs(gd, n));
    worst = 0.0;
    at = 0;
    for (int64_t i = 0; i < n; i++)
      if (fabs(gf[i] - gd[i]) > worst) worst = fabs(gf[i] - gd[i]), at = i;
    cr_assert_leq(worst, c->tol * gscale,
                  "%s: d loss / d input %d [%lld] = %.8g, finite differences %.8g (error %.3g > %.3g)",
                  c->name, k, (long long)at, gf[at], gd[at], worst, c->tol * gscale);
    free(gf);
    free(gd);
  }

  free(rf); free(yf); free(rd); free(yd);
  for (int k = 0; k < c->n_in; k++) {
    free(xf[k]);
    free(xd[k]);
  }
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  for (int k = 0; k < c->n_in; k++) kiln_tensor_destroy(t[k]);
}

/* ---- the cases ------------------------------------------------------------- */

#define POS {0.5f, 0.5f, 0.5f}, .hi = {2.0f, 2.0f, 2.0f}
#define TOL_ELEM 1e-5
#define TOL_SUMS 1e-4

static const gc_case elementwise[] = {
  {"add same", KILN_OP_ADD, 2, {2, 2}, {{3, 4}, {3, 4}}, .tol = TOL_ELEM},
  {"add row", KILN_OP_ADD, 2, {2, 1}, {{3, 4}, {4}}, .tol = TOL_ELEM},
  {"add first broadcast", KILN_OP_ADD, 2, {1, 3}, {{4}, {2, 3, 4}}, .tol = TOL_ELEM},
  {"add outer", KILN_OP_ADD, 2, {2, 2}, {{3, 1}, {1, 4}}, .tol = TOL_ELEM},
  {"sub scalar", KILN_OP_SUB, 2, {2, 0}, {{3, 4}, {0}}, .tol = TOL_ELEM},
  {"sub scalar first", KILN_OP_SUB, 2, {0, 2}, {{0}, {3, 4}}, .tol = TOL_ELEM},
  {"sub middle", KILN_OP_SUB, 2, {3, 2}, {{2, 3, 4}, {3, 1}}, .tol = TOL_ELEM},
  {"mul same", KILN_OP_MUL, 2, {2, 2}, {{3, 4}, {3, 4}}, .tol = TOL_ELEM},
  {"mul column", KILN_OP_MUL, 2, {2, 2}, {{3, 4}, {3, 1}}, .tol = TOL_ELEM},
  {"mul leading", KILN_OP_MUL, 2, {3, 3}, {{1, 3, 4}, {2, 1, 4}}, .tol = TOL_ELEM},
  {"div same", KILN_OP_DIV, 2, {2, 2}, {{3, 4}, {3, 4}}, .lo = {-1, 0.5f}, .hi = {1, 2}, .tol = TOL_ELEM},
  {"div row", KILN_OP_DIV, 2, {2, 1}, {{3, 4}, {4}}, .lo = {-1, 0.5f}, .hi = {1, 2}, .tol = TOL_ELEM},
  {"div numerator broadcast", KILN_OP_DIV, 2, {1, 2}, {{4}, {3, 4}}, .lo = {-1, 0.5f}, .hi = {1, 2}, .tol = TOL_ELEM},
  {"div scalar", KILN_OP_DIV, 2, {2, 0}, {{3, 4}, {0}}, .lo = {-1, 0.5f}, .hi = {1, 2}, .tol = TOL_ELEM},
  {"neg", KILN_OP_NEG, 1, {2}, {{3, 4}}, .tol = TOL_ELEM},
  {"relu", KILN_OP_RELU, 1, {2}, {{4, 5}}, .values = VAL_AWAY_FROM_ZERO, .tol = TOL_ELEM},
  {"tanh", KILN_OP_TANH, 1, {2}, {{3, 4}}, .lo = {-2}, .hi = {2}, .tol = TOL_ELEM},
  {"sigmoid", KILN_OP_SIGMOID, 1, {2}, {{3, 4}}, .lo = {-3}, .hi = {3}, .tol = TOL_ELEM},
  {"exp", KILN_OP_EXP, 1, {2}, {{3, 4}}, .tol = TOL_ELEM},
  {"log", KILN_OP_LOG, 1, {2}, {{3, 4}}, .lo = POS, .tol = TOL_ELEM},
  {"scale", KILN_OP_SCALE, 1, {3}, {{2, 3, 2}}, .fp = {-1.75f, 0.5f}, .tol = TOL_ELEM},
  {"copy", KILN_OP_COPY, 1, {2}, {{3, 4}}, .tol = TOL_ELEM},
  {"cast f32", KILN_OP_CAST, 1, {2}, {{3, 5}}, .fp = {0.75f, -2.0f}, .tol = TOL_ELEM},
};

static const gc_case matmuls[] = {
  {"matmul nn", KILN_OP_MATMUL, 2, {2, 2}, {{3, 4}, {4, 5}}, .tol = TOL_SUMS},
  {"matmul tn", KILN_OP_MATMUL, 2, {2, 2}, {{4, 3}, {4, 5}}, .ip = {1, 0}, .tol = TOL_SUMS},
  {"matmul nt", KILN_OP_MATMUL, 2, {2, 2}, {{3, 4}, {5, 4}}, .ip = {0, 1}, .tol = TOL_SUMS},
  {"matmul tt", KILN_OP_MATMUL, 2, {2, 2}, {{4, 3}, {5, 4}}, .ip = {1, 1}, .tol = TOL_SUMS},
  {"matmul batched", KILN_OP_MATMUL, 2, {3, 3}, {{2, 3, 4}, {2, 4, 5}}, .tol = TOL_SUMS},
  {"matmul broadcast batch", KILN_OP_MATMUL, 2, {4, 3}, {{2, 1, 3, 4}, {3, 4, 2}}, .tol = TOL_SUMS},
  {"matmul 2d by batch", KILN_OP_MATMUL, 2, {2, 3}, {{3, 4}, {2, 4, 5}}, .tol = TOL_SUMS},
  {"matmul batch by 2d tt", KILN_OP_MATMUL, 2, {3, 2}, {{2, 4, 3}, {5, 4}}, .ip = {1, 1}, .tol = TOL_SUMS},
  {"matmul broadcast tn", KILN_OP_MATMUL, 2, {3, 3}, {{1, 4, 3}, {3, 4, 2}}, .ip = {1, 0}, .tol = TOL_SUMS},
};

static const gc_case reductions[] = {
  {"sum all", KILN_OP_SUM, 1, {3}, {{2, 3, 4}}, .ip = {0, 0}, .tol = TOL_SUMS},
  {"sum all keepdim", KILN_OP_SUM, 1, {3}, {{2, 3, 4}}, .ip = {0, 1}, .tol = TOL_SUMS},
  {"sum axis 0", KILN_OP_SUM, 1, {3}, {{2, 3, 4}}, .ip = {1, 0}, .tol = TOL_SUMS},
  {"sum axis 1 keepdim", KILN_OP_SUM, 1, {3}, {{2, 3, 4}}, .ip = {2, 1}, .tol = TOL_SUMS},
  {"sum axes 0,2", KILN_OP_SUM, 1, {3}, {{2, 3, 4}}, .ip = {5, 0}, .tol = TOL_SUMS},
  {"sum axes 1,2 keepdim", KILN_OP_SUM, 1, {3}, {{2, 3, 4}}, .ip = {6, 1}, .tol = TOL_SUMS},
  {"mean all", KILN_OP_MEAN, 1, {3}, {{2, 3, 4}}, .ip = {0, 0}, .tol = TOL_SUMS},
  {"mean last", KILN_OP_MEAN, 1, {3}, {{2, 3, 4}}, .ip = {4, 0}, .tol = TOL_SUMS},
  {"mean axes 0,2 keepdim", KILN_OP_MEAN, 1, {3}, {{2, 3, 4}}, .ip = {5, 1}, .tol = TOL_SUMS},
  {"mean axis 0 of 2d", KILN_OP_MEAN, 1, {2}, {{5, 3}}, .ip = {1, 0}, .tol = TOL_SUMS},
  {"expand column", KILN_OP_EXPAND, 1, {2}, {{3, 1}}, .out_ndim = 3, .out_shape = {2, 3, 4}, .tol = TOL_SUMS},
  {"expand row", KILN_OP_EXPAND, 1, {1}, {{4}}, .out_ndim = 2, .out_shape = {3, 4}, .tol = TOL_SUMS},
  {"expand scalar", KILN_OP_EXPAND, 1, {0}, {{0}}, .out_ndim = 2, .out_shape = {2, 3}, .tol = TOL_SUMS},
};

static const gc_case softmaxes[] = {
  {"softmax", KILN_OP_SOFTMAX, 1, {2}, {{3, 5}}, .lo = {-2}, .hi = {2}, .tol = TOL_SUMS},
  {"softmax 3d", KILN_OP_SOFTMAX, 1, {3}, {{2, 2, 4}}, .lo = {-2}, .hi = {2}, .tol = TOL_SUMS},
  {"log_softmax", KILN_OP_LOG_SOFTMAX, 1, {2}, {{3, 5}}, .lo = {-2}, .hi = {2}, .tol = TOL_SUMS},
  {"log_softmax 3d", KILN_OP_LOG_SOFTMAX, 1, {3}, {{2, 2, 4}}, .lo = {-2}, .hi = {2}, .tol = TOL_SUMS},
  {"cross_entropy", KILN_OP_CROSS_ENTROPY, 1, {2}, {{4, 5}}, .lo = {-2}, .hi = {2}, .n_labels = 4,
   .labels = {0, 3, 4, 1}, .tol = TOL_SUMS},
  {"cross_entropy ignored labels", KILN_OP_CROSS_ENTROPY, 1, {2}, {{4, 3}}, .lo = {-2}, .hi = {2},
   .n_labels = 4, .labels = {2, -1, 3, 0}, .tol = TOL_SUMS},
};

static const gc_case layouts[] = {
  {"reshape", KILN_OP_RESHAPE, 1, {3}, {{2, 3, 4}}, .out_ndim = 2, .out_shape = {6, -1}, .tol = TOL_ELEM},
  {"reshape to scalar-like", KILN_OP_RESHAPE, 1, {2}, {{1, 1}}, .out_ndim = 0, .tol = TOL_ELEM},
  {"flatten", KILN_OP_RESHAPE, 1, {4}, {{2, 3, 2, 2}}, .out_ndim = -1, .tol = TOL_ELEM},
  {"transpose 201", KILN_OP_TRANSPOSE, 1, {3}, {{2, 3, 4}}, .ip = {2, 0, 1}, .tol = TOL_ELEM},
  {"transpose 2d", KILN_OP_TRANSPOSE, 1, {2}, {{3, 5}}, .ip = {1, 0}, .tol = TOL_ELEM},
  {"transpose 4d", KILN_OP_TRANSPOSE, 1, {4}, {{2, 3, 2, 2}}, .ip = {0, 2, 3, 1}, .tol = TOL_ELEM},
};

/* conv ip: stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups */
static const gc_case convs[] = {
  {"conv2d plain", KILN_OP_CONV2D, 2, {4, 4}, {{2, 3, 5, 5}, {4, 3, 3, 3}}, .ip = {1, 1, 0, 0, 1, 1, 1}, .tol = 2e-4},
  {"conv2d bias", KILN_OP_CONV2D, 3, {4, 4, 1}, {{2, 3, 5, 5}, {4, 3, 3, 3}, {4}}, .ip = {1, 1, 0, 0, 1, 1, 1}, .tol = 2e-4},
  {"conv2d stride 2 pad 1", KILN_OP_CONV2D, 3, {4, 4, 1}, {{2, 2, 7, 6}, {3, 2, 3, 3}, {3}}, .ip = {2, 2, 1, 1, 1, 1, 1}, .tol = 2e-4},
  {"conv2d stride 2x1 pad 1x2", KILN_OP_CONV2D, 2, {4, 4}, {{1, 2, 6, 5}, {3, 2, 3, 2}}, .ip = {2, 1, 1, 2, 1, 1, 1}, .tol = 2e-4},
  {"conv2d dilation 2", KILN_OP_CONV2D, 3, {4, 4, 1}, {{2, 2, 7, 7}, {2, 2, 3, 3}, {2}}, .ip = {1, 1, 1, 1, 2, 2, 1}, .tol = 2e-4},
  {"conv2d groups 2", KILN_OP_CONV2D, 3, {4, 4, 1}, {{2, 4, 5, 5}, {6, 2, 3, 3}, {6}}, .ip = {1, 1, 1, 1, 1, 1, 2}, .tol = 2e-4},
  {"conv2d depthwise", KILN_OP_CONV2D, 2, {4, 4}, {{1, 3, 5, 5}, {3, 1, 3, 3}}, .ip = {1, 1, 1, 1, 1, 1, 3}, .tol = 2e-4},
  {"conv2d everything", KILN_OP_CONV2D, 3, {4, 4, 1}, {{2, 4, 8, 7}, {4, 2, 3, 2}, {4}}, .ip = {2, 1, 2, 1, 2, 1, 2}, .tol = 2e-4},
  {"conv2d 1x1", KILN_OP_CONV2D, 2, {4, 4}, {{2, 3, 3, 3}, {5, 3, 1, 1}}, .ip = {1, 1, 0, 0, 1, 1, 1}, .tol = 2e-4},
};

/* pool ip: KH, KW, stride_h, stride_w, pad_h, pad_w, count_include_pad */
static const gc_case pools[] = {
  {"maxpool 2x2", KILN_OP_MAXPOOL2D, 1, {4}, {{2, 2, 6, 6}}, .ip = {2, 2, 2, 2, 0, 0}, .values = VAL_DISTINCT, .tol = TOL_ELEM},
  {"maxpool 3x3 s2 pad 1", KILN_OP_MAXPOOL2D, 1, {4}, {{1, 3, 7, 6}}, .ip = {3, 3, 2, 2, 1, 1}, .values = VAL_DISTINCT, .tol = TOL_ELEM},
  {"maxpool overlapping 3x2 s1", KILN_OP_MAXPOOL2D, 1, {4}, {{2, 1, 5, 5}}, .ip = {3, 2, 1, 1, 1, 0}, .values = VAL_DISTINCT, .tol = TOL_ELEM},
  {"avgpool 2x2", KILN_OP_AVGPOOL2D, 1, {4}, {{2, 2, 6, 6}}, .ip = {2, 2, 2, 2, 0, 0, 1}, .tol = TOL_ELEM},
  {"avgpool 3x3 s2 pad 1 include pad", KILN_OP_AVGPOOL2D, 1, {4}, {{1, 3, 7, 6}}, .ip = {3, 3, 2, 2, 1, 1, 1}, .tol = TOL_ELEM},
  {"avgpool 3x3 s2 pad 1 exclude pad", KILN_OP_AVGPOOL2D, 1, {4}, {{1, 3, 7, 6}}, .ip = {3, 3, 2, 2, 1, 1, 0}, .tol = TOL_ELEM},
  {"avgpool 3x2 s1x2 pad 1x1", KILN_OP_AVGPOOL2D, 1, {4}, {{2, 1, 5, 6}}, .ip = {3, 2, 1, 2, 1, 1, 0}, .tol = TOL_ELEM},
};

static kiln_context *ctx;
static kiln_device *dev;
static void open_cpu(void) { tu_open_cpu(&ctx, &dev); }
static void close_cpu(void) {
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}
TestSuite(gradcheck, .init = open_cpu, .fini = close_cpu);

#define RUN_ALL(cases) \
  for (size_t i = 0; i < sizeof(cases) / sizeof *(cases); i++) run_case(&(cases)[i], dev)

Test(gradcheck, elementwise) { RUN_ALL(elementwise); }
Test(gradcheck, matmul) { RUN_ALL(matmuls); }
Test(gradcheck, reductions_and_expand) { RUN_ALL(reductions); }
Test(gradcheck, softmax_and_cross_entropy) { RUN_ALL(softmaxes); }
Test(gradcheck, layout) { RUN_ALL(layouts); }
Test(gradcheck, conv2d) { RUN_ALL(convs); }
Test(gradcheck, pooling) { RUN_ALL(pools); }

/* A composite: the gradient flows through a chain with a shared input
 * (accumulation by ADD) and broadcasting, as a real layer does. */
Test(gradcheck, accumulation_through_shared_inputs) {
  /* loss = sum(x*x + tanh(x)): x reaches the loss three times, so its
   * gradient 2x + 1 - tanh(x)^2 needs every contribution added. */
  const int64_t shape[2] = {3, 4};
  kiln_graph *g;
  kiln_tensor *t;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 2, shape, &t), KILN_OK);
  float x[12];
  tu_fill_uniform(x, 12, 5, -1.0f, 1.0f);
  cr_assert_eq(kiln_tensor_upload(t, x, sizeof x), KILN_OK);
  kiln_node *p = kiln_param(g, "x", t);
  kiln_node *y = kiln_add(g, kiln_mul(g, p, p), kiln_tanh(g, p));
  kiln_node *loss = kiln_sum(g, y, 0, 0);
  cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s", kiln_last_error());
  kiln_node *gx = kiln_grad(g, p);
  cr_assert_eq(kiln_graph_output(g, gx), KILN_OK);
  kiln_compiled *cc;
  cr_assert_eq(kiln_graph_compile(g, dev, &cc), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_run(cc), KILN_OK, "%s", kiln_last_error());
  float got[12];
  cr_assert_eq(kiln_compiled_get_output(cc, gx, got, sizeof got), KILN_OK);
  for (int i = 0; i < 12; i++) {
    double th = tanh((double)x[i]), want = 2.0 * x[i] + 1.0 - th * th;
    cr_assert_float_eq(got[i], want, 1e-5, "dx[%d] = %g, want %g", i, got[i], want);
  }
  kiln_compiled_destroy(cc);
  kiln_graph_destroy(g);
  kiln_tensor_destroy(t);
}
