/*
 * ops_layout.c - RESHAPE and TRANSPOSE.
 *
 *   reshape    x -> y, same element count: a copy (shaders/unary.comp, OP 0),
 *              or nothing when y is x's very bytes
 *   transpose  y axis i = x axis ip[i]: a gather with x's strides permuted
 *              (shaders/gather.comp)
 */
#include "vk-impl.h"

#define WG 256

kiln_status kvk_layout_plan(kvk_plan *p, int index, const kvk_node *n) {
  const kvk_tensor *x = &n->in[0], *y = &n->out;
  char sx[KVK_SHAPE_STR], sy[KVK_SHAPE_STR];
  kvk_dispatch *d;
  if (n->op == KILN_OP_RESHAPE) {
    if (x->numel != y->numel)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "x %s has %lld elements, but the output %s has %lld",
                            KVK_SHAPE(sx, x), (long long)x->numel, KVK_SHAPE(sy, y),
                            (long long)y->numel);
    if (y->numel == 0 || (x->buffer == y->buffer && x->offset == y->offset)) return KILN_OK;
    if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
    d->shader = KVK_SHADER_UNARY;
    d->n_spec = 2;
    d->spec[0] = WG;
    d->spec[1] = 0;   /* copy */
    d->n_bind = 2;
    d->bind[0] = x;
    d->bind[1] = y;
    d->write_mask = 2;
    kvk_param_u(d, (uint64_t)y->numel);
    kvk_param_f(d, 0.0f);
    kvk_param_f(d, 0.0f);
    d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
    d->groups[1] = d->groups[2] = 1;
    return KILN_OK;
  }

  /* transpose */
  if (x->ndim != y->ndim)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "x %s and output %s must have the same rank", KVK_SHAPE(sx, x),
                          KVK_SHAPE(sy, y));
  int seen[KILN_MAX_DIMS] = {0};
  for (int i = 0; i < x->ndim; i++) {
    int64_t a = n->ip[i];
    if (a < 0 || a >= x->ndim || seen[a])
      return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                            "ip[0..%d] must be a permutation of 0..%d; ip[%d] = %lld is %s",
                            x->ndim - 1, x->ndim - 1, i, (long long)a,
                            a < 0 || a >= x->ndim ? "out of range" : "repeated");
    seen[a] = 1;
  }
  for (int i = 0; i < x->ndim; i++) {
    int64_t a = n->ip[i];
    if (y->shape[i] != x->shape[a])
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "output axis %d takes x axis %lld of size %lld, but the output %s "
                            "has size %lld there (x is %s)",
                            i, (long long)a, (long long)x->shape[a], KVK_SHAPE(sy, y),
                            (long long)y->shape[i], KVK_SHAPE(sx, x));
  }
  if (y->numel == 0) return KILN_OK;
  int64_t xs[KILN_MAX_DIMS];
  int64_t s = 1;
  for (int i = x->ndim - 1; i >= 0; i--) {
    xs[i] = s;
    s *= x->shape[i];
  }
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_GATHER;
  d->n_spec = 1;
  d->spec[0] = WG;
  d->n_bind = 2;
  d->bind[0] = x;
  d->bind[1] = y;
  d->write_mask = 2;
  kvk_param_u(d, (uint64_t)y->numel);
  kvk_param_u(d, (uint64_t)y->ndim);
  kvk_param_u(d, 0);   /* base */
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < y->ndim ? (uint64_t)y->shape[i] : 1);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < y->ndim ? (uint64_t)xs[n->ip[i]] : 0);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}
