/*
 * softmax.c - softmax and log-softmax over the last axis, their backward
 * passes, and mean cross-entropy with integer labels.
 *
 * With x viewed as rows [R, C] (C = last dimension, 1 for a scalar):
 *   softmax              y = exp(x - max) / sum(exp(x - max))
 *   log_softmax          y = x - max - log(sum(exp(x - max)))
 *   softmax_backward     dx = y * (dy - sum(dy * y))            (dy, y [R, C])
 *   log_softmax_backward dx = dy - exp(y) * sum(dy)             (dy, y [R, C])
 *   cross_entropy        logits [N, C], labels [N] i32 -> loss []:
 *                        mean over N of logsumexp(x_n) - x_n[label_n]
 *                        (a label outside [0, C) adds 0 but counts in N)
 *   cross_entropy_bwd    dloss [], logits [N, C], labels [N] -> dx [N, C]:
 *                        dloss * (softmax(x_n) - onehot(label_n)) / N
 *                        (zero rows for labels outside [0, C))
 * Row sums accumulate in double. Each row is one thread's work; the loss is
 * summed per fixed block of rows and the block sums are added in order, so
 * nothing depends on the pool.
 */
#include <math.h>
#include <stdlib.h>

#include "cpu-impl.h"

#define SM_GRAIN 8192      /* elements per parallel chunk */
#define CE_BLOCK 256       /* rows per loss partial sum */

/* ---- validation ---------------------------------------------------------- */

kiln_status kcpu_softmax_validate(int index, const kcpu_node *n) {
  char s0[KCPU_SHAPE_STR], s1[KCPU_SHAPE_STR], s2[KCPU_SHAPE_STR];
  const kcpu_tensor *y = &n->out;
  switch (n->op) {
    case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX:
      if (!kcpu_same_shape(&n->in[0], y))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "output %s must have the input's shape %s", KCPU_SHAPE(s0, y),
                               KCPU_SHAPE(s1, &n->in[0]));
      return KILN_OK;
    case KILN_OP_SOFTMAX_BACKWARD: case KILN_OP_LOG_SOFTMAX_BACKWARD:
      if (!kcpu_same_shape(&n->in[0], &n->in[1]) || !kcpu_same_shape(&n->in[0], y))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "dy %s, y %s and output %s must have the same shape",
                               KCPU_SHAPE(s0, &n->in[0]), KCPU_SHAPE(s1, &n->in[1]),
                               KCPU_SHAPE(s2, y));
      return KILN_OK;
    default: break;
  }
  /* cross-entropy and its backward */
  int bwd = n->op == KILN_OP_CROSS_ENTROPY_BACKWARD;
  const kcpu_tensor *logits = &n->in[bwd], *labels = &n->in[bwd + 1];
  if (logits->ndim != 2)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "logits %s must have rank 2 [N, C]",
                           KCPU_SHAPE(s0, logits));
  if (labels->ndim != 1 || labels->shape[0] != logits->shape[0])
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "labels %s must be [N] for logits %s", KCPU_SHAPE(s0, labels),
                           KCPU_SHAPE(s1, logits));
  if (bwd) {
    if (n->in[0].ndim != 0)
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "dloss %s must be a scalar []",
                             KCPU_SHAPE(s0, &n->in[0]));
    if (!kcpu_same_shape(logits, y))
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                             "output %s must have the logits' shape %s", KCPU_SHAPE(s0, y),
                             KCPU_SHAPE(s1, logits));
  } else if (y->ndim != 0) {
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "output %s must be a scalar []",
                           KCPU_SHAPE(s0, y));
  }
  return KILN_OK;
}

/* ---- kernels ------------------------------------------------------------- */

typedef struct sm_plan {
  const kcpu_node *n;
  int64_t C;                  /* row length */
  double *partials;           /* cross-entropy block sums (may be NULL) */
} sm_plan;

/* max and sum(exp(x - max)) of one row. */
static void row_stats(const float *x, int64_t C, float *max, double *sum) {
  float m = -INFINITY;
  for (int64_t c = 0; c < C; c++) m = x[c] > m ? x[c] : m;
  double s = 0.0;
  for (int64_t c = 0; c < C; c++) s += (double)expf(x[c] - m);
  *max = m;
  *sum = s;
}

static void sm_rows(void *arg, int64_t r0, int64_t r1) {
  const sm_plan *p = arg;
  const kcpu_node *n = p->n;
  int64_t C = p->C;
  for (int64_t r = r0; r < r1; r++) {
    float *y = (float *)n->out.data + r * C;
    const float *a = (const float *)n->in[0].data + r * C;
    switch (n->op) {
      case KILN_OP_SOFTMAX: {
        float m = -INFINITY;
        for (int64_t c = 0; c < C; c++) m = a[c] > m ? a[c] : m;
        double s = 0.0;
        for (int64_t c = 0; c < C; c++) {
          y[c] = expf(a[c] - m);
          s += (double)y[c];
        }
        float inv = (float)(1.0 / s);
        for (int64_t c = 0; c < C; c++) y[c] *= inv;
        break;
      }
      case KILN_OP_LOG_SOFTMAX: {
        float m;
        double s;
        row_stats(a, C, &m, &s);
        float lse = m + (float)log(s);
        for (int64_t c = 0; c < C; c++) y[c] = a[c] - lse;
        break;
      }
      case KILN_OP_SOFTMAX_BACKWARD: {   /* a = dy, b = y */
        const float *b = (const float *)n->in[1].data + r * C;
        double dot = 0.0;
        for (int64_t c = 0; c < C; c++) dot += (double)a[c] * (double)b[c];
        float d = (float)dot;
        for (int64_t c = 0; c < C; c++) y[c] = b[c] * (a[c] - d);
        break;
      }
      case KILN_OP_LOG_SOFTMAX_BACKWARD: {
        const float *b = (const float *)n->in[1].data + r * C;
        double sum = 0.0;
        for (int64_t c = 0; c < C; c++) sum += (double)a[c];
        float s = (float)sum;
        for (int64_t c = 0; c < C; c++) y[c] = a[c] - expf(b[c]) * s;
        break;
      }
    }
  }
}

/* Loss of rows [r0, r1) in double (out-of-range labels add 0). */
static double ce_block(const sm_plan *p, int64_t r0, int64_t r1) {
  const float *x = p->n->in[0].data;
  const int32_t *labels = p->n->in[1].data;
  double total = 0.0;
  for (int64_t r = r0; r < r1; r++) {
    int32_t l = labels[r];
    if (l < 0 || l >= p->C) continue;
    const float *row = x + r * p->C;
    float m;
    double s;
    row_stats(row, p->C, &m, &s);
    total += (double)m + log(s) - (double)row[l];
  }
  return total;
}

static void ce_blocks(void *arg, int64_t b0, int64_t b1) {
  const sm_plan *p = arg;
  int64_t N = p->n->in[0].shape[0];
  for (int64_t b = b0; b < b1; b++) {
    int64_t r1 = (b + 1) * CE_BLOCK < N ? (b + 1) * CE_BLOCK : N;
    p->partials[b] = ce_block(p, b * CE_BLOCK, r1);
  }
}

static void cross_entropy(kcpu_pool *pool, sm_plan *p) {
  const kcpu_node *n = p->n;
  int64_t N = n->in[0].shape[0];
  float *loss = n->out.data;
  if (N == 0) {
    *loss = NAN;   /* mean over no rows */
    return;
  }
  int64_t nblocks = (N + CE_BLOCK - 1) / CE_BLOCK;
  p->partials = nblocks > 1 ? malloc((size_t)nblocks * sizeof(double)) : NULL;
  double total = 0.0;
  if (p->partials) {
    int64_t per_block = CE_BLOCK * (p->C > 0 ? p->C : 1);
    int64_t grain = per_block >= SM_GRAIN ? 1 : SM_GRAIN / per_block;
    kcpu_parallel_for(pool, nblocks, grain, ce_blocks, p);
    for (int64_t b = 0; b < nblocks; b++) total += p->partials[b];
    free(p->partials);
  } else {
    /* Same blocks, same order, one thread (one block, or no memory). */
    for (int64_t b = 0; b < nblocks; b++) {
      int64_t r1 = (b + 1) * CE_BLOCK < N ? (b + 1) * CE_BLOCK : N;
      total += ce_block(p, b * CE_BLOCK, r1);
    }
  }
  *loss = (float)(total / (double)N);
}

static void ce_backward_rows(void *arg, int64_t r0, int64_t r1) {
  const sm_plan *p = arg;
  const kcpu_node *n = p->n;
  int64_t C = p->C, N = n->in[1].shape[0];
  float dloss = *(const float *)n->in[0].data;
  const float *x = n->in[1].data;
  const int32_t *labels = n->in[2].data;
  float *dx = n->out.data;
  float g = (float)((double)dloss / (double)N);
  for (int64_t r = r0; r < r1; r++) {
    const float *row = x + r * C;
    float *d = dx + r * C;
    int32_t l = labels[r];
    if (l < 0 || l >= C) {
      for (int64_t c = 0; c < C; c++) d[c] = 0.0f;
      continue;
    }
    float m;
    double s;
    row_stats(row, C, &m, &s);
    float inv = (float)(1.0 / s);
    for (int64_t c = 0; c < C; c++) d[c] = g * (expf(row[c] - m) * inv);
    d[l] = g * (expf(row[l] - m) * inv - 1.0f);
  }
}

void kcpu_softmax(kcpu_pool *pool, const kcpu_node *n) {
  sm_plan p = {.n = n};
  if (n->op == KILN_OP_CROSS_ENTROPY) {
    p.C = n->in[0].shape[1];
    cross_entropy(pool, &p);
    return;
  }
  if (n->op == KILN_OP_CROSS_ENTROPY_BACKWARD) {
    p.C = n->in[1].shape[1];
    int64_t N = n->in[1].shape[0];
    if (N == 0 || p.C == 0) return;
    kcpu_parallel_for(pool, N, p.C >= SM_GRAIN ? 1 : SM_GRAIN / p.C, ce_backward_rows, &p);
    return;
  }
  const kcpu_tensor *y = &n->out;
  p.C = y->ndim > 0 ? y->shape[y->ndim - 1] : 1;
  if (y->numel == 0) return;
  int64_t rows = y->numel / p.C;
  kcpu_parallel_for(pool, rows, p.C >= SM_GRAIN ? 1 : SM_GRAIN / p.C, sm_rows, &p);
}
