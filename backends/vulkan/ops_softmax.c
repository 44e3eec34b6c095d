/*
 * ops_softmax.c - SOFTMAX, LOG_SOFTMAX, their backward, CROSS_ENTROPY and
 * its backward. All work on rows of the last axis (x [rows, C]).
 *
 *   softmax / log_softmax            shaders/softmax.comp, a workgroup per row
 *   *_backward (dy, y) -> dx         shaders/softmax_backward.comp
 *   cross_entropy (x [N, C], labels [N] i32) -> []
 *                                    shaders/cross_entropy.comp, ONE workgroup
 *                                    over the rows in order (deterministic)
 *   cross_entropy_backward (dloss [], x, labels) -> dx [N, C]
 *                                    shaders/cross_entropy_backward.comp
 * Workgroups are a power of two up to 256, no wider than the row needs.
 */
#include "vk-impl.h"

static void rows_dispatch(kvk_plan *p, kvk_dispatch *d, uint64_t rows, uint64_t C) {
  d->spec[0] = kvk_pow2_wg(C, 32, 256);
  d->groups[0] = kvk_groups_1d(p->dev, rows, 1);
  d->groups[1] = d->groups[2] = 1;
}

kiln_status kvk_softmax_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR], s2[KVK_SHAPE_STR];
  const kvk_tensor *y = &n->out;
  kvk_dispatch *d;
  switch (n->op) {
    case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX: {
      if (!kvk_same_shape(&n->in[0], y))
        return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                              "output %s must have the input's shape %s", KVK_SHAPE(s0, y),
                              KVK_SHAPE(s1, &n->in[0]));
      if (y->numel == 0) return KILN_OK;
      int64_t C = y->ndim > 0 ? y->shape[y->ndim - 1] : 1;
      if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
      d->shader = KVK_SHADER_SOFTMAX;
      d->n_spec = 2;
      d->spec[1] = n->op == KILN_OP_LOG_SOFTMAX;
      d->n_bind = 2;
      d->bind[0] = &n->in[0];
      d->bind[1] = y;
      d->write_mask = 2;
      kvk_param_u(d, (uint64_t)(y->numel / C));
      kvk_param_u(d, (uint64_t)C);
      rows_dispatch(p, d, (uint64_t)(y->numel / C), (uint64_t)C);
      return KILN_OK;
    }
    case KILN_OP_SOFTMAX_BACKWARD: case KILN_OP_LOG_SOFTMAX_BACKWARD: {
      if (!kvk_same_shape(&n->in[0], &n->in[1]) || !kvk_same_shape(&n->in[0], y))
        return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                              "dy %s, y %s and output %s must have the same shape",
                              KVK_SHAPE(s0, &n->in[0]), KVK_SHAPE(s1, &n->in[1]),
                              KVK_SHAPE(s2, y));
      if (y->numel == 0) return KILN_OK;
      int64_t C = y->ndim > 0 ? y->shape[y->ndim - 1] : 1;
      if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
      d->shader = KVK_SHADER_SOFTMAX_BACKWARD;
      d->n_spec = 2;
      d->spec[1] = n->op == KILN_OP_LOG_SOFTMAX_BACKWARD;
      d->n_bind = 3;
      d->bind[0] = &n->in[0];
      d->bind[1] = &n->in[1];
      d->bind[2] = y;
      d->write_mask = 4;
      kvk_param_u(d, (uint64_t)(y->numel / C));
      kvk_param_u(d, (uint64_t)C);
      rows_dispatch(p, d, (uint64_t)(y->numel / C), (uint64_t)C);
      return KILN_OK;
    }
    default: break;
  }
  /* cross-entropy and its backward */
  int bwd = n->op == KILN_OP_CROSS_ENTROPY_BACKWARD;
  const kvk_tensor *logits = &n->in[bwd], *labels = &n->in[bwd + 1];
  if (logits->ndim != 2)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "logits %s must have rank 2 [N, C]",
                          KVK_SHAPE(s0, logits));
  if (labels->ndim != 1 || labels->shape[0] != logits->shape[0])
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "labels %s must be [N] for logits %s",
                          KVK_SHAPE(s0, labels), KVK_SHAPE(s1, logits));
  int64_t N = logits->shape[0], C = logits->shape[1];
  if (bwd) {
    if (n->in[0].ndim != 0)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "dloss %s must be a scalar []",
                            KVK_SHAPE(s0, &n->in[0]));
    if (!kvk_same_shape(logits, y))
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "output %s must have the logits' shape %s", KVK_SHAPE(s0, y),
                            KVK_SHAPE(s1, logits));
    if (y->numel == 0) return KILN_OK;
    if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
    d->shader = KVK_SHADER_CROSS_ENTROPY_BACKWARD;
    d->n_spec = 1;
    d->n_bind = 4;
    d->bind[0] = &n->in[0];
    d->bind[1] = logits;
    d->bind[2] = labels;
    d->bind[3] = y;
    d->write_mask = 8;
    kvk_param_u(d, (uint64_t)N);
    kvk_param_u(d, (uint64_t)C);
    rows_dispatch(p, d, (uint64_t)N, (uint64_t)C);
    return KILN_OK;
  }
  if (y->ndim != 0)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "output %s must be a scalar []",
                          KVK_SHAPE(s0, y));
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_CROSS_ENTROPY;
  d->n_spec = 1;
  d->spec[0] = kvk_pow2_wg((uint64_t)C, 32, 256);
  d->n_bind = 3;
  d->bind[0] = logits;
  d->bind[1] = labels;
  d->bind[2] = y;
  d->write_mask = 4;
  kvk_param_u(d, (uint64_t)N);
  kvk_param_u(d, (uint64_t)C);
  d->groups[0] = d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}
