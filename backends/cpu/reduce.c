/*
 * reduce.c - SUM and MEAN over any set of axes, and EXPAND (broadcast).
 *
 *   sum/mean  x [d0, .., dn-1] -> y: the axes in ip[0] (bit i = axis i)
 *             summed (mean: divided by their element count); ip[1] = 1
 *             keeps them as size 1, 0 removes them.
 *   expand    x [..] -> y [..] with NumPy broadcasting of x to y's shape.
 *
 * Reductions accumulate in double, each output element over its reduced
 * elements in row-major order, by exactly one thread, so the result does
 * not depend on the pool. Size-1 axes are dropped and adjacent axes that
 * are both reduced or both kept are merged; then either
 *   - the innermost axis is kept: rows of outputs accumulate whole input
 *     rows (unit stride, vectorisable), or
 *   - the innermost axis is reduced: each output sums contiguous runs.
 * When that leaves few work items and the one reduced axis is long (a bias
 * gradient over a large batch, a full sum), the axis is cut into fixed
 * blocks summed in parallel and added in block order (see "blocked").
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"

#define RED_COLS 512      /* outputs per work item when the last axis is kept */
#define RED_GRAIN 16384   /* input elements per parallel chunk */
#define RED_FEW 64        /* fewer work items than this: block the reduced axis */
#define RED_BLOCK_ROWS 256     /* reduced rows per block (last axis kept) */
#define RED_BLOCK_RUN 16384    /* reduced elements per block (last axis reduced) */

/* ---- validation ---------------------------------------------------------- */

kiln_status kcpu_reduce_validate(int index, const kcpu_node *n) {
  const kcpu_tensor *x = &n->in[0], *y = &n->out;
  char sx[KCPU_SHAPE_STR], sy[KCPU_SHAPE_STR], sw[KCPU_SHAPE_STR];
  if (n->op == KILN_OP_EXPAND) {
    /* x broadcasts to y exactly when broadcast(x, y) is y. */
    kcpu_tensor want = {0};
    int ok = x->ndim <= y->ndim &&
             kcpu_broadcast_shape(x->ndim, x->shape, y->ndim, y->shape, &want.ndim,
                                  want.shape) == 0 &&
             kcpu_same_shape(&want, y);
    if (!ok)
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                             "x %s does not broadcast to the output %s (right-aligned, each "
                             "dimension of x must equal the output's or be 1)",
                             KCPU_SHAPE(sx, x), KCPU_SHAPE(sy, y));
    return KILN_OK;
  }
  int64_t mask = n->ip[0], keep = n->ip[1];
  if (mask < 0 || (x->ndim < 63 && (mask >> x->ndim) != 0))
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "axis mask ip[0] = 0x%llx names axes outside x %s (rank %d)",
                           (unsigned long long)mask, KCPU_SHAPE(sx, x), x->ndim);
  if (keep != 0 && keep != 1)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "keepdim ip[1] must be 0 or 1, got %lld", (long long)keep);
  kcpu_tensor want = {0};
  for (int d = 0; d < x->ndim; d++) {
    int red = (int)((mask >> d) & 1);
    if (red && !keep) continue;
    want.shape[want.ndim++] = red ? 1 : x->shape[d];
  }
  if (!kcpu_same_shape(&want, y))
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "reducing x %s over axis mask 0x%llx with keepdim %lld gives %s, but "
                           "the output is %s",
                           KCPU_SHAPE(sx, x), (unsigned long long)mask, (long long)keep,
                           KCPU_SHAPE(sw, &want), KCPU_SHAPE(sy, y));
  return KILN_OK;
}

/* ---- sum / mean ---------------------------------------------------------- */

typedef struct red_plan {
  const float *x;
  float *y;
  double scale;                 /* 1 or 1/count */
  /* merged input axes, split into kept (k*) and reduced (r*) lists, each in
   * input order with input strides */
  int nk, nr;
  int64_t kshape[KILN_MAX_DIMS], kstride[KILN_MAX_DIMS];
  int64_t rshape[KILN_MAX_DIMS], rstride[KILN_MAX_DIMS];
  int64_t count;                /* reduced elements per output */
  int64_t L;                    /* last axis kept: its length; else 0 */
  int64_t ncol;                 /* column chunks per output row (last kept) */
  int64_t nblk;                 /* blocked: blocks of the one reduced axis */
  double *part;                 /* blocked: partial sums */
} red_plan;

/* Input offset of the first element of output `o` over kept axes
 * [0, nk_outer). */
static int64_t kept_offset(const red_plan *p, int nk_outer, int64_t o) {
  int64_t off = 0;
  for (int d = nk_outer - 1; d >= 0; d--) {
    off += (o % p->kshape[d]) * p->kstride[d];
    o /= p->kshape[d];
  }
  return off;
}

/* Calls the reduced-index odometer: visits every offset over reduced axes
 * [0, nr_outer) in row-major order. Written as a macro-free loop helper. */
static int odo_next(int nr_outer, const int64_t *shape, const int64_t *stride, int64_t *idx,
                    int64_t *off) {
  for (int d = nr_outer - 1; d >= 0; d--) {
    idx[d]++;
    *off += stride[d];
    if (idx[d] < shape[d]) return 1;
    *off -= idx[d] * stride[d];
    idx[d] = 0;
  }
  return 0;
}

/* Sums of reduced rows [r0, r1) (of the single reduced axis) for columns
 * [c0, c0 + nc) of output row `row`, into acc (last axis kept, nr == 1). */
KCPU_BODY void block_rows(const red_plan *p, int64_t row, int64_t c0, int64_t nc, int64_t r0,
                       int64_t r1, double *acc) {
  const float *base = p->x + kept_offset(p, p->nk - 1, row) + c0;
  for (int64_t j = 0; j < nc; j++) acc[j] = 0.0;
  for (int64_t r = r0; r < r1; r++) {
    const float *src = base + r * p->rstride[0];
    for (int64_t j = 0; j < nc; j++) acc[j] += (double)src[j];
  }
}

/* Sum of x[0, n) in double: eight interleaved accumulators (independent,
 * so the loop vectorises and is not bound by add latency) combined in a
 * fixed order, so the result depends only on x and n. */
static double sum_run(const float *x, int64_t n) {
  double a[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) a[k] += (double)x[i + k];
  double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; i < n; i++) s += (double)x[i];
  return s;
}

/* Sum of run elements [e0, e1) of output o (last axis reduced, nr == 1). */
static double block_run(const red_plan *p, int64_t o, int64_t e0, int64_t e1) {
  return sum_run(p->x + kept_offset(p, p->nk, o) + e0, e1 - e0);
}

/* Last axis kept. Item t: output row t / ncol, columns chunk t % ncol. */
KCPU_BODY void red_rows_body(void *arg, int64_t t0, int64_t t1) {
  const red_plan *p = arg;
  double acc[RED_COLS];
  for (int64_t t = t0; t < t1; t++) {
    int64_t row = t / p->ncol, c0 = (t % p->ncol) * RED_COLS;
    int64_t nc = p->L - c0 < RED_COLS ? p->L - c0 : RED_COLS;
    const float *base = p->x + kept_offset(p, p->nk - 1, row) + c0;
    for (int64_t j = 0; j < nc; j++) acc[j] = 0.0;
    int64_t idx[KILN_MAX_DIMS] = {0}, off = 0;
    do {
      const float *src = base + off;
      for (int64_t j = 0; j < nc; j++) acc[j] += (double)src[j];
    } while (odo_next(p->nr, p->rshape, p->rstride, idx, &off));
    float *dst = p->y + row * p->L + c0;
    for (int64_t j = 0; j < nc; j++) dst[j] = (float)(acc[j] * p->scale);
  }
}
KCPU_RANGE_VARIANTS(red_rows)

/* Last axis reduced: output elements [o0, o1). */
static void red_scalars(void *arg, int64_t o0, int64_t o1) {
  const red_plan *p = arg;
  int64_t run = p->rshape[p->nr - 1];
  for (int64_t o = o0; o < o1; o++) {
    const float *base = p->x + kept_offset(p, p->nk, o);
    double acc = 0.0;
    int64_t idx[KILN_MAX_DIMS] = {0}, off = 0;
    do {
      acc += sum_run(base + off, run);
    } while (odo_next(p->nr - 1, p->rshape, p->rstride, idx, &off));
    p->y[o] = (float)(acc * p->scale);
  }
}

/* ---- blocked: one long reduced axis, few outputs ---------------------------
 * When the only reduced axis is long, it is cut into fixed blocks (of
 * RED_BLOCK_ROWS rows or RED_BLOCK_RUN elements); block sums are computed in
 * parallel into p->part and added in block order. The blocks depend only on
 * the shape, so the result does not depend on the pool. */

/* Last axis kept. Item t: block t % nblk of columns chunk (t / nblk) %
 * ncol of output row t / nblk / ncol. */
KCPU_BODY void blk_rows_body(void *arg, int64_t t0, int64_t t1) {
  const red_plan *p = arg;
  double acc[RED_COLS];
  for (int64_t t = t0; t < t1; t++) {
    int64_t b = t % p->nblk, rest = t / p->nblk;
    int64_t row = rest / p->ncol, c0 = (rest % p->ncol) * RED_COLS;
    int64_t nc = p->L - c0 < RED_COLS ? p->L - c0 : RED_COLS;
    int64_t r0 = b * RED_BLOCK_ROWS, r1 = r0 + RED_BLOCK_ROWS;
    block_rows(p, row, c0, nc, r0, r1 < p->rshape[0] ? r1 : p->rshape[0], acc);
    double *dst = p->part + (row * p->nblk + b) * p->L + c0;
    for (int64_t j = 0; j < nc; j++) dst[j] = acc[j];
  }
}
KCPU_RANGE_VARIANTS(blk_rows)

/* Last axis kept: y[o] = sum over blocks, in order, of the partials. */
static void blk_rows_combine(void *arg, int64_t o0, int64_t o1) {
  const red_plan *p = arg;
  for (int64_t o = o0; o < o1; o++) {
    int64_t row = o / p->L, c = o % p->L;
    double s = 0.0;
    for (int64_t b = 0; b < p->nblk; b++) s += p->part[(row * p->nblk + b) * p->L + c];
    p->y[o] = (float)(s * p->scale);
  }
}

/* Last axis reduced. Item t: block t % nblk of output t / nblk. */
KCPU_BODY void blk_run_body(void *arg, int64_t t0, int64_t t1) {
  const red_plan *p = arg;
  for (int64_t t = t0; t < t1; t++) {
    int64_t o = t / p->nblk, b = t % p->nblk;
    int64_t e0 = b * RED_BLOCK_RUN, e1 = e0 + RED_BLOCK_RUN;
    p->part[t] = block_run(p, o, e0, e1 < p->rshape[0] ? e1 : p->rshape[0]);
  }
}
KCPU_RANGE_VARIANTS(blk_run)

static void blk_run_combine(void *arg, int64_t o0, int64_t o1) {
  const red_plan *p = arg;
  for (int64_t o = o0; o < o1; o++) {
    double s = 0.0;
    for (int64_t b = 0; b < p->nblk; b++) s += p->part[o * p->nblk + b];
    p->y[o] = (float)(s * p->scale);
  }
}

/* The blocked sums without partial storage (no memory for it): the same
 * blocks added in the same order, one output at a time. */
static void blk_serial(red_plan *p, int64_t n_out) {
  double acc[RED_COLS], tot[RED_COLS];
  if (p->L) {
    for (int64_t row = 0; row < n_out / p->L; row++)
      for (int64_t c0 = 0; c0 < p->L; c0 += RED_COLS) {
        int64_t nc = p->L - c0 < RED_COLS ? p->L - c0 : RED_COLS;
        for (int64_t j = 0; j < nc; j++) tot[j] = 0.0;
        for (int64_t b = 0; b < p->nblk; b++) {
          int64_t r0 = b * RED_BLOCK_ROWS, r1 = r0 + RED_BLOCK_ROWS;
          block_rows(p, row, c0, nc, r0, r1 < p->rshape[0] ? r1 : p->rshape[0], acc);
          for (int64_t j = 0; j < nc; j++) tot[j] += acc[j];
        }
        for (int64_t j = 0; j < nc; j++) p->y[row * p->L + c0 + j] = (float)(tot[j] * p->scale);
      }
    return;
  }
  for (int64_t o = 0; o < n_out; o++) {
    double s = 0.0;
    for (int64_t b = 0; b < p->nblk; b++) {
      int64_t e0 = b * RED_BLOCK_RUN, e1 = e0 + RED_BLOCK_RUN;
      s += block_run(p, o, e0, e1 < p->rshape[0] ? e1 : p->rshape[0]);
    }
    p->y[o] = (float)(s * p->scale);
  }
}

/* Runs the blocked reduction of p (nblk set, L set iff last axis kept). */
static void blocked(kcpu_pool *pool, red_plan *p, int64_t n_out) {
  size_t n_part = (size_t)(n_out * p->nblk);
  p->part = malloc(n_part * sizeof *p->part);
  if (!p->part) {
    blk_serial(p, n_out);
    return;
  }
  if (p->L)
    kcpu_parallel_for(pool, n_out / p->L * p->ncol * p->nblk, 1, blk_rows, p);
  else
    kcpu_parallel_for(pool, n_out * p->nblk, 1, blk_run, p);
  kcpu_parallel_for(pool, n_out, RED_GRAIN / 4, p->L ? blk_rows_combine : blk_run_combine, p);
  free(p->part);
}

static void sum_mean(kcpu_pool *pool, const kcpu_node *n) {
  const kcpu_tensor *X = &n->in[0], *Y = &n->out;
  float *y = Y->data;
  if (Y->numel == 0) return;
  int mean = n->op == KILN_OP_MEAN;
  if (X->numel == 0) {   /* empty reductions: sum 0, mean 0/0 */
    for (int64_t i = 0; i < Y->numel; i++) y[i] = mean ? NAN : 0.0f;
    return;
  }
  red_plan p = {.x = X->data, .y = y};
  /* Merge axes (dropping size 1) into alternating kept/reduced groups. */
  int nd = 0, red[KILN_MAX_DIMS];
  int64_t shape[KILN_MAX_DIMS];
  for (int d = 0; d < X->ndim; d++) {
    if (X->shape[d] == 1) continue;
    int r = (int)((n->ip[0] >> d) & 1);
    if (nd > 0 && red[nd - 1] == r) {
      shape[nd - 1] *= X->shape[d];
      continue;
    }
    red[nd] = r;
    shape[nd++] = X->shape[d];
  }
  int64_t stride = 1, st[KILN_MAX_DIMS];
  for (int d = nd - 1; d >= 0; d--) {
    st[d] = stride;
    stride *= shape[d];
  }
  p.count = 1;
  for (int d = 0; d < nd; d++) {
    if (red[d]) {
      p.rshape[p.nr] = shape[d];
      p.rstride[p.nr++] = st[d];
      p.count *= shape[d];
    } else {
      p.kshape[p.nk] = shape[d];
      p.kstride[p.nk++] = st[d];
    }
  }
  p.scale = mean ? 1.0 / (double)p.count : 1.0;
  if (p.nr == 0) {   /* nothing reduced (mask 0 or only size-1 axes) */
    const float *x = X->data;
    for (int64_t i = 0; i < Y->numel; i++) y[i] = (float)((double)x[i] * p.scale);
    return;
  }
  if (nd > 0 && !red[nd - 1]) {
    p.L = shape[nd - 1];
    p.ncol = (p.L + RED_COLS - 1) / RED_COLS;
    if (p.nr == 1 && p.rshape[0] > RED_BLOCK_ROWS && Y->numel / p.L * p.ncol < RED_FEW) {
      p.nblk = (p.rshape[0] + RED_BLOCK_ROWS - 1) / RED_BLOCK_ROWS;
      blocked(pool, &p, Y->numel);
      return;
    }
    int64_t items = (Y->numel / p.L) * p.ncol;
    int64_t per_item = p.count * (p.L < RED_COLS ? p.L : RED_COLS);
    kcpu_parallel_for(pool, items, per_item >= RED_GRAIN ? 1 : RED_GRAIN / per_item, red_rows, &p);
  } else {
    if (p.nr == 1 && p.rshape[0] > RED_BLOCK_RUN && Y->numel < RED_FEW) {
      p.nblk = (p.rshape[0] + RED_BLOCK_RUN - 1) / RED_BLOCK_RUN;
      blocked(pool, &p, Y->numel);
      return;
    }
    kcpu_parallel_for(pool, Y->numel, p.count >= RED_GRAIN ? 1 : RED_GRAIN / p.count, red_scalars,
                      &p);
  }
}

/* ---- expand -------------------------------------------------------------- */

typedef struct exp_plan {
  const float *x;
  float *y;
  int nd;
  int64_t shape[KILN_MAX_DIMS], sx[KILN_MAX_DIMS];   /* merged output shape, x strides */
} exp_plan;

/* Output rows [r0, r1) of length shape[nd-1]. */
KCPU_BODY void exp_rows_body(void *arg, int64_t r0, int64_t r1) {
  const exp_plan *p = arg;
  int nd = p->nd;
  int64_t len = p->shape[nd - 1], ls = p->sx[nd - 1];
  int64_t idx[KILN_MAX_DIMS] = {0}, off = 0, r = r0;
  for (int d = nd - 2; d >= 0; d--) {
    idx[d] = r % p->shape[d];
    r /= p->shape[d];
    off += idx[d] * p->sx[d];
  }
  for (int64_t row = r0; row < r1; row++) {
    float *dst = p->y + row * len;
    const float *src = p->x + off;
    if (ls)
      memcpy(dst, src, (size_t)len * sizeof *dst);
    else
      for (int64_t j = 0; j < len; j++) dst[j] = src[0];
    odo_next(nd - 1, p->shape, p->sx, idx, &off);
  }
}
KCPU_RANGE_VARIANTS(exp_rows)

static void expand(kcpu_pool *pool, const kcpu_node *n) {
  const kcpu_tensor *X = &n->in[0], *Y = &n->out;
  if (Y->numel == 0) return;
  exp_plan p = {.x = X->data, .y = Y->data};
  int64_t s = 1;
  int64_t sx[KILN_MAX_DIMS];
  for (int d = Y->ndim - 1; d >= 0; d--) {
    int xd = X->ndim - Y->ndim + d;
    int64_t dim = xd >= 0 ? X->shape[xd] : 1;
    sx[d] = (dim == 1 && Y->shape[d] != 1) ? 0 : s;
    s *= dim;
  }
  for (int d = 0; d < Y->ndim; d++) {
    if (Y->shape[d] == 1) continue;
    if (p.nd > 0 && p.sx[p.nd - 1] == sx[d] * Y->shape[d]) {
      p.shape[p.nd - 1] *= Y->shape[d];
      p.sx[p.nd - 1] = sx[d];
      continue;
    }
    p.shape[p.nd] = Y->shape[d];
    p.sx[p.nd++] = sx[d];
  }
  if (p.nd == 0) {
    p.nd = 1;
    p.shape[0] = 1;
    p.sx[0] = 1;
  }
  int64_t len = p.shape[p.nd - 1];
  kcpu_parallel_for(pool, Y->numel / len, len >= RED_GRAIN ? 1 : RED_GRAIN / len, exp_rows, &p);
}

void kcpu_reduce(kcpu_pool *pool, const kcpu_node *n) {
  if (n->op == KILN_OP_EXPAND)
    expand(pool, n);
  else
    sum_mean(pool, n);
}
