/*
 * matmul.c - batched matrix product with broadcast batch dimensions.
 *
 *   a [..A, M, K] ([..A, K, M] with ip[0] = 1)
 *   b [..B, K, N] ([..B, N, K] with ip[1] = 1)
 *   y [..Y, M, N] = op(a) @ op(b), ..Y = broadcast(..A, ..B)
 *
 * Each batch is one kcpu_sgemm. When b is shared by every batch and a is
 * neither transposed nor broadcast, the batches are one GEMM with B*M rows
 * (a linear layer on [B, T, C]). Many small batches run in parallel, each
 * GEMM single-threaded; large ones run one after another, each threaded.
 * kcpu_sgemm's results do not depend on its pool, so neither do these.
 * A 2-D B that several nodes multiply is packed once per run (plugin.c
 * sets packed_b); the results are the same.
 */
#include <string.h>

#include "cpu-impl.h"

/* Below this many multiply-adds per batch, parallelise over batches. */
#define MM_SMALL (1 << 20)

kiln_status kcpu_matmul_validate(int index, const kcpu_node *n) {
  const kcpu_tensor *a = &n->in[0], *b = &n->in[1], *y = &n->out;
  char sa[KCPU_SHAPE_STR], sb[KCPU_SHAPE_STR], sy[KCPU_SHAPE_STR], sw[KCPU_SHAPE_STR];
  if ((n->ip[0] != 0 && n->ip[0] != 1) || (n->ip[1] != 0 && n->ip[1] != 1))
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "transpose flags ip[0] = %lld and ip[1] = %lld must be 0 or 1",
                           (long long)n->ip[0], (long long)n->ip[1]);
  if (a->ndim < 2 || b->ndim < 2)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "a %s and b %s must both have rank >= 2",
                           KCPU_SHAPE(sa, a), KCPU_SHAPE(sb, b));
  int ta = (int)n->ip[0], tb = (int)n->ip[1];
  int64_t M = a->shape[a->ndim - 2 + ta], Ka = a->shape[a->ndim - 1 - ta];
  int64_t Kb = b->shape[b->ndim - 2 + tb], N = b->shape[b->ndim - 1 - tb];
  if (Ka != Kb)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "a %s%s and b %s%s: inner dimensions %lld and %lld differ",
                           KCPU_SHAPE(sa, a), ta ? " (transposed)" : "", KCPU_SHAPE(sb, b),
                           tb ? " (transposed)" : "", (long long)Ka, (long long)Kb);
  int nd;
  int64_t shape[KILN_MAX_DIMS];
  if (kcpu_broadcast_shape(a->ndim - 2, a->shape, b->ndim - 2, b->shape, &nd, shape) != 0)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "batch dimensions of a %s and b %s do not broadcast",
                           KCPU_SHAPE(sa, a), KCPU_SHAPE(sb, b));
  kcpu_tensor want = {.ndim = nd + 2};
  for (int i = 0; i < nd; i++) want.shape[i] = shape[i];
  want.shape[nd] = M;
  want.shape[nd + 1] = N;
  if (!kcpu_same_shape(&want, y))
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "a %s%s times b %s%s gives %s, but the output is %s", KCPU_SHAPE(sa, a),
                           ta ? " (transposed)" : "", KCPU_SHAPE(sb, b),
                           tb ? " (transposed)" : "", KCPU_SHAPE(sw, &want),
                           KCPU_SHAPE(sy, y));
  return KILN_OK;
}

typedef struct mm_plan {
  const kcpu_node *n;
  int ta, tb;
  int64_t M, N, K;
  int nb;                                  /* batch rank of y */
  int64_t bshape[KILN_MAX_DIMS];           /* batch shape of y */
  int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS];   /* matrix strides per batch axis */
  kcpu_pool *inner;                        /* pool for each GEMM (NULL when parallel) */
} mm_plan;

/* Batch strides (in matrices) of t against the batch shape of y; 0 where t
 * broadcasts. */
static void batch_strides(const kcpu_tensor *t, int nb, const int64_t *bshape, int64_t *st) {
  int tb = t->ndim - 2;
  int64_t s = 1;
  for (int d = nb - 1; d >= 0; d--) {
    int td = tb - nb + d;
    int64_t dim = td >= 0 ? t->shape[td] : 1;
    st[d] = (dim == 1 && bshape[d] != 1) ? 0 : s;
    s *= dim;
  }
}

static void mm_batches(void *arg, int64_t b0, int64_t b1) {
  const mm_plan *p = arg;
  const float *A = p->n->in[0].data, *B = p->n->in[1].data;
  float *Y = p->n->out.data;
  int64_t lda = p->ta ? p->M : p->K, ldb = p->tb ? p->K : p->N;
  for (int64_t bi = b0; bi < b1; bi++) {
    int64_t r = bi, ia = 0, ib = 0;
    for (int d = p->nb - 1; d >= 0; d--) {
      int64_t i = r % p->bshape[d];
      r /= p->bshape[d];
      ia += i * p->sa[d];
      ib += i * p->sb[d];
    }
    kcpu_sgemm(p->inner, p->ta, p->tb, p->M, p->N, p->K, 1.0f, A + ia * p->M * p->K, lda,
               B + ib * p->K * p->N, ldb, 0.0f, Y + bi * p->M * p->N, p->N);
  }
}

int kcpu_matmul_shares_b(const kcpu_node *n) {
  return n->op == KILN_OP_MATMUL && n->out.ndim == 2 && n->in[0].ndim == 2 && n->in[1].ndim == 2;
}

void kcpu_matmul(kcpu_pool *pool, const kcpu_node *n) {
  const kcpu_tensor *a = &n->in[0], *b = &n->in[1], *y = &n->out;
  mm_plan p = {.n = n, .ta = (int)n->ip[0], .tb = (int)n->ip[1]};
  p.M = y->shape[y->ndim - 2];
  p.N = y->shape[y->ndim - 1];
  p.K = a->shape[a->ndim - 1 - p.ta];
  float *Y = y->data, beta = 0.0f;
  if (n->acc_out) {    /* y = this product + acc_in, into acc_out (2-D only) */
    if (n->acc_in->data != n->acc_out->data)
      memcpy(n->acc_out->data, n->acc_in->data, (size_t)y->numel * sizeof(float));
    Y = n->acc_out->data;
    beta = 1.0f;
  }
  if (n->packed_b) {   /* B shared with other matmuls of the graph (plugin.c) */
    if (y->numel == 0) return;
    if (n->pack_b) kcpu_sgemm_pack_b(pool, p.tb, p.N, p.K, b->data, p.tb ? p.K : p.N, n->packed_b);
    kcpu_sgemm_packed(pool, p.ta, p.M, p.N, p.K, 1.0f, a->data, p.ta ? p.M : p.K, n->packed_b, beta,
                      Y, p.N);
    return;
  }
  if (n->acc_out) {
    if (y->numel == 0) return;
    kcpu_sgemm(pool, p.ta, p.tb, p.M, p.N, p.K, 1.0f, a->data, p.ta ? p.M : p.K, b->data,
               p.tb ? p.K : p.N, beta, Y, p.N);
    return;
  }
  p.nb = y->ndim - 2;
  int64_t batches = 1, a_batches = 1, b_batches = 1;
  for (int d = 0; d < p.nb; d++) {
    p.bshape[d] = y->shape[d];
    batches *= y->shape[d];
  }
  for (int d = 0; d < a->ndim - 2; d++) a_batches *= a->shape[d];
  for (int d = 0; d < b->ndim - 2; d++) b_batches *= b->shape[d];
  if (y->numel == 0) return;
  if (batches > 1 && b_batches == 1 && a_batches == batches && !p.ta) {
    /* b shared, a's batches contiguous: one tall GEMM. */
    kcpu_sgemm(pool, 0, p.tb, batches * p.M, p.N, p.K, 1.0f, a->data, p.K, b->data,
               p.tb ? p.K : p.N, 0.0f, y->data, p.N);
    return;
  }
  batch_strides(a, p.nb, p.bshape, p.sa);
  batch_strides(b, p.nb, p.bshape, p.sb);
  if (batches > 1 && p.M * p.N * p.K < MM_SMALL && kcpu_pool_size(pool) > 1) {
    p.inner = NULL;
    int64_t work = p.M * p.N * (p.K > 0 ? p.K : 1);
    kcpu_parallel_for(pool, batches, work >= (1 << 16) ? 1 : (1 << 16) / work, mm_batches, &p);
  } else {
    p.inner = pool;
    mm_batches(&p, 0, batches);
  }
}
