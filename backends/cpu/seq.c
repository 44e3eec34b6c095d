/*
 * seq.c - the sequence-model ops (kiln/ops.h numbers 90..):
 *
 *   embedding           weight [V, C], idx [N...] i32 -> y [N..., C]:
 *                       y[i, :] = weight[idx[i], :] (zeros if idx[i] is out of range)
 *   embedding_backward  dy [N..., C], idx [N...] -> dw [V, C]:
 *                       dw[v, :] = sum over i with idx[i] == v of dy[i, :], in order of i
 *   slice               x [A, D, R] (axis flattened to D) -> y [A, L, R] = x[:, s:s+L, :]
 *   slice_backward      dy [A, L, R] -> dx [A, D, R]: zeros, dx[:, s:s+L, :] = dy
 *   dropout             x, counter [] -> y: x / (1 - p) where Philox4x32-10 keeps it
 *   clip_coef           sumsq [] -> min(1, max_norm / (sqrt(sumsq) + eps))
 *   assign              dst = src (in place)
 *
 * Embedding backward is deterministic: threads split the columns C, and each
 * walks the indices in order, so every sum has one fixed order.
 */
#include <math.h>
#include <string.h>

#include "cpu-impl.h"

#define SEQ_GRAIN 16384

/* ---- Philox4x32-10 (Salmon et al., SC'11), as in Random123 -------------- */

static void philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * ctr[0], p1 = (uint64_t)0xCD9E8D57u * ctr[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t c0 = hi1 ^ ctr[1] ^ k0, c2 = hi0 ^ ctr[3] ^ k1;
    ctr[0] = c0;
    ctr[1] = lo1;
    ctr[2] = c2;
    ctr[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/* ---- validation ---------------------------------------------------------- */

/* Flattens the shape around `axis`: A = prod before, D = the axis, R = prod after. */
static void around(const kcpu_tensor *t, int axis, int64_t *A, int64_t *D, int64_t *R) {
  *A = *R = 1;
  for (int i = 0; i < axis; i++) *A *= t->shape[i];
  *D = t->shape[axis];
  for (int i = axis + 1; i < t->ndim; i++) *R *= t->shape[i];
}

static kiln_status validate_slice(int index, const kcpu_node *n, const kcpu_tensor *full,
                                  const kcpu_tensor *part) {
  char sf[KCPU_SHAPE_STR], sp[KCPU_SHAPE_STR];
  int64_t axis = n->ip[0], start = n->ip[1], len = n->ip[2];
  if (axis < 0 || axis >= full->ndim || start < 0 || len < 1 || start + len > full->shape[axis])
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "axis %lld, start %lld, length %lld do not fit x %s", (long long)axis,
                           (long long)start, (long long)len, KCPU_SHAPE(sf, full));
  int ok = full->ndim == part->ndim;
  for (int i = 0; ok && i < full->ndim; i++)
    ok = part->shape[i] == (i == axis ? len : full->shape[i]);
  if (!ok)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "the slice %s is not length %lld of axis %lld of %s", KCPU_SHAPE(sp, part),
                           (long long)len, (long long)axis, KCPU_SHAPE(sf, full));
  return KILN_OK;
}

kiln_status kcpu_seq_validate(int index, const kcpu_node *n) {
  char s0[KCPU_SHAPE_STR], s1[KCPU_SHAPE_STR], s2[KCPU_SHAPE_STR];
  const kcpu_tensor *a = &n->in[0], *b = &n->in[1], *y = &n->out;
  switch (n->op) {
    case KILN_OP_EMBEDDING: case KILN_OP_EMBEDDING_BACKWARD: {
      /* embedding: (w [V, C], idx) -> y; backward: (dy, idx) -> dw [V, C] */
      const kcpu_tensor *w = n->op == KILN_OP_EMBEDDING ? a : y;
      const kcpu_tensor *rows = n->op == KILN_OP_EMBEDDING ? y : a;
      int ok = w->ndim == 2 && rows->ndim == b->ndim + 1 && rows->shape[rows->ndim - 1] == w->shape[1];
      for (int i = 0; ok && i < b->ndim; i++) ok = rows->shape[i] == b->shape[i];
      if (!ok)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "table %s, indices %s and rows %s: need [V, C], [N...] and [N..., C]",
                               KCPU_SHAPE(s0, w), KCPU_SHAPE(s1, b), KCPU_SHAPE(s2, rows));
      return KILN_OK;
    }
    case KILN_OP_SLICE: return validate_slice(index, n, a, y);
    case KILN_OP_SLICE_BACKWARD: return validate_slice(index, n, y, a);
    case KILN_OP_DROPOUT:
      if (!kcpu_same_shape(a, y) || b->numel != 1)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "x %s, counter %s, output %s: need the output of x's shape and a one-element counter",
                               KCPU_SHAPE(s0, a), KCPU_SHAPE(s1, b), KCPU_SHAPE(s2, y));
      if (!(n->fp[0] >= 0.0f && n->fp[0] < 1.0f))
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "p = fp[0] = %g must lie in [0, 1)",
                               (double)n->fp[0]);
      return KILN_OK;
    case KILN_OP_CLIP_COEF:
      if (a->numel != 1 || y->numel != 1)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "sumsq %s and output %s must be one element",
                               KCPU_SHAPE(s0, a), KCPU_SHAPE(s1, y));
      if (!(n->fp[0] > 0.0f) || isinf(n->fp[0]) || !(n->fp[1] >= 0.0f))
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                               "max_norm fp[0] = %g must be finite and > 0, eps fp[1] = %g >= 0",
                               (double)n->fp[0], (double)n->fp[1]);
      return KILN_OK;
    case KILN_OP_ASSIGN:
      if (!kcpu_same_shape(a, b))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "dst %s and src %s differ",
                               KCPU_SHAPE(s0, a), KCPU_SHAPE(s1, b));
      return KILN_OK;
    default:
      return kcpu_node_error(index, n, KILN_INTERNAL, "not a sequence op");
  }
}

/* ---- kernels ------------------------------------------------------------- */

typedef struct seq_args {
  const kcpu_node *n;
  int64_t A, D, R, L, start;   /* slices */
  int64_t V, C, N;             /* embeddings: table rows, columns, lookups */
} seq_args;

static void embedding_rows(void *arg, int64_t begin, int64_t end) {
  const seq_args *s = arg;
  const float *w = s->n->in[0].data;
  const int32_t *idx = s->n->in[1].data;
  float *y = s->n->out.data;
  for (int64_t i = begin; i < end; i++) {
    int64_t v = idx[i];
    if (v >= 0 && v < s->V) memcpy(y + i * s->C, w + v * s->C, (size_t)s->C * sizeof *y);
    else memset(y + i * s->C, 0, (size_t)s->C * sizeof *y);
  }
}

/* Columns [begin, end) of dw, all rows, indices in order. */
static void embedding_backward_cols(void *arg, int64_t begin, int64_t end) {
  const seq_args *s = arg;
  const float *dy = s->n->in[0].data;
  const int32_t *idx = s->n->in[1].data;
  float *dw = s->n->out.data;
  for (int64_t v = 0; v < s->V; v++) memset(dw + v * s->C + begin, 0, (size_t)(end - begin) * sizeof *dw);
  for (int64_t i = 0; i < s->N; i++) {
    int64_t v = idx[i];
    if (v < 0 || v >= s->V) continue;
    const float *src = dy + i * s->C;
    float *dst = dw + v * s->C;
    for (int64_t c = begin; c < end; c++) dst[c] += src[c];
  }
}

/* Slabs [begin, end) of A: for each a, the L*R floats x[a, s:s+L, :] are
 * contiguous in both [A, D, R] and [A, L, R], so one copy moves them (a
 * gate of an LSTM's [B, 4H], sliced on its last axis, has R = 1). */
static void slice_slabs(void *arg, int64_t begin, int64_t end) {
  const seq_args *s = arg;
  const float *x = s->n->in[0].data;
  float *y = s->n->out.data;
  int fwd = s->n->op == KILN_OP_SLICE;
  size_t bytes = (size_t)(s->L * s->R) * sizeof *y;
  if (s->n->acc_out) {
    /* fused with the ADD after it (plugin.c, fuse_accumulate): acc + dx,
     * element by element as the ADD did (acc + 0 outside the slice) */
    const float *acc = s->n->acc_in->data;
    float *out = s->n->acc_out->data;
    int64_t row = s->D * s->R, lo = s->start * s->R, hi = (s->start + s->L) * s->R;
    for (int64_t a = begin; a < end; a++) {
      const float *ar = acc + a * row, *d = x + a * s->L * s->R;
      float *o = out + a * row;
      for (int64_t j = 0; j < lo; j++) o[j] = ar[j] + 0.0f;
      for (int64_t j = lo; j < hi; j++) o[j] = ar[j] + d[j - lo];
      for (int64_t j = hi; j < row; j++) o[j] = ar[j] + 0.0f;
    }
    return;
  }
  for (int64_t a = begin; a < end; a++) {
    float *full = (float *)(fwd ? x : y) + (a * s->D + s->start) * s->R;
    float *part = (float *)(fwd ? y : x) + a * s->L * s->R;
    if (fwd) {
      memcpy(part, full, bytes);
    } else {   /* dx[a] = zeros around the slice */
      float *row = y + a * s->D * s->R;
      memset(row, 0, (size_t)(s->start * s->R) * sizeof *y);
      memcpy(full, part, bytes);
      memset(full + s->L * s->R, 0, (size_t)((s->D - s->start - s->L) * s->R) * sizeof *y);
    }
  }
}

static void dropout_range(void *arg, int64_t begin, int64_t end) {
  const seq_args *s = arg;
  const kcpu_node *n = s->n;
  const float *x = n->in[0].data;
  float *y = n->out.data;
  float p = n->fp[0], keep_scale = 1.0f / (1.0f - p);
  uint32_t k0 = (uint32_t)n->ip[0], k1 = (uint32_t)n->ip[1], stream = (uint32_t)n->ip[2];
  uint32_t counter = (uint32_t)(int64_t) * (const float *)n->in[1].data;
  for (int64_t i = begin; i < end; i++) {
    uint32_t c[4] = {(uint32_t)i, (uint32_t)((uint64_t)i >> 32), stream, counter};
    philox4x32_10(c, k0, k1);
    float u = (float)(c[0] >> 8) * (1.0f / 16777216.0f);
    y[i] = u >= p ? x[i] * keep_scale : 0.0f;
  }
}

void kcpu_seq(kcpu_pool *pool, const kcpu_node *n) {
  seq_args s = {n, 0, 0, 0, 0, 0, 0, 0, 0};
  switch (n->op) {
    case KILN_OP_EMBEDDING:
      s.V = n->in[0].shape[0];
      s.C = n->in[0].shape[1];
      s.N = n->in[1].numel;
      kcpu_parallel_for(pool, s.N, SEQ_GRAIN / (s.C ? s.C : 1) + 1, embedding_rows, &s);
      break;
    case KILN_OP_EMBEDDING_BACKWARD:
      s.V = n->out.shape[0];
      s.C = n->out.shape[1];
      s.N = n->in[1].numel;
      kcpu_parallel_for(pool, s.C, 16, embedding_backward_cols, &s);
      break;
    case KILN_OP_SLICE: case KILN_OP_SLICE_BACKWARD: {
      const kcpu_tensor *full = n->op == KILN_OP_SLICE ? &n->in[0] : &n->out;
      around(full, (int)n->ip[0], &s.A, &s.D, &s.R);
      s.start = n->ip[1];
      s.L = n->ip[2];
      kcpu_parallel_for(pool, s.A, SEQ_GRAIN / (s.D * s.R) + 1, slice_slabs, &s);
      break;
    }
    case KILN_OP_DROPOUT:
      kcpu_parallel_for(pool, n->out.numel, SEQ_GRAIN, dropout_range, &s);
      break;
    case KILN_OP_CLIP_COEF: {
      float sumsq = *(const float *)n->in[0].data;
      double norm = sqrt((double)sumsq), coef = (double)n->fp[0] / (norm + (double)n->fp[1]);
      /* a NaN norm gives a NaN coefficient, so the caller sees it */
      *(float *)n->out.data = (float)(coef < 1.0 || coef != coef ? coef : 1.0);
      break;
    }
    case KILN_OP_ASSIGN:
      if (n->in[0].data != n->in[1].data)
        memmove(n->in[0].data, n->in[1].data, (size_t)n->in[0].numel * sizeof(float));
      break;
    default: break;
  }
}
