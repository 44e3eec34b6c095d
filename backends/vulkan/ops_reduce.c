/*
 * ops_reduce.c - SUM and MEAN over any set of axes, and EXPAND.
 *
 *   sum/mean  x [d0, .., dn-1] -> y: the axes of mask ip[0] summed (mean:
 *             times 1/count); keepdim ip[1] only changes y's stated shape.
 *             shaders/reduce.comp: one workgroup per output, the reduced
 *             elements split across its threads, a shared-memory tree.
 *             Size-1 axes are dropped first, so the index math is short.
 *   expand    x -> y with NumPy broadcasting: shaders/gather.comp with
 *             stride 0 on broadcast axes.
 */
#include <string.h>

#include "vk-impl.h"

#define WG 256

static kiln_status expand_plan(kvk_plan *p, int index, const kvk_node *n) {
  const kvk_tensor *x = &n->in[0], *y = &n->out;
  char sx[KVK_SHAPE_STR], sy[KVK_SHAPE_STR];
  int nd;
  int64_t shape[KILN_MAX_DIMS];
  kvk_tensor want = {0};
  if (x->ndim > y->ndim ||
      kvk_broadcast_shape(x->ndim, x->shape, y->ndim, y->shape, &nd, shape) != 0 ||
      (want.ndim = nd, memcpy(want.shape, shape, sizeof(int64_t) * (size_t)nd),
       !kvk_same_shape(&want, y)))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "x %s does not broadcast to the output %s (right-aligned, each "
                          "dimension of x must equal the output's or be 1)",
                          KVK_SHAPE(sx, x), KVK_SHAPE(sy, y));
  if (y->numel == 0) return KILN_OK;
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  uint32_t st[KILN_MAX_DIMS] = {0};
  kvk_broadcast_strides(x, y, st);
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
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, st[i]);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}

kiln_status kvk_reduce_plan(kvk_plan *p, int index, const kvk_node *n) {
  if (n->op == KILN_OP_EXPAND) return expand_plan(p, index, n);
  const kvk_tensor *x = &n->in[0], *y = &n->out;
  char sx[KVK_SHAPE_STR], sy[KVK_SHAPE_STR], sw[KVK_SHAPE_STR];
  int64_t mask = n->ip[0], keep = n->ip[1];
  if (mask < 0 || (x->ndim < 63 && (mask >> x->ndim) != 0))
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "axis mask ip[0] = 0x%llx names axes outside x %s (rank %d)",
                          (unsigned long long)mask, KVK_SHAPE(sx, x), x->ndim);
  if (keep != 0 && keep != 1)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "keepdim ip[1] must be 0 or 1, got %lld", (long long)keep);
  kvk_tensor want = {0};
  for (int d = 0; d < x->ndim; d++) {
    int red = (int)((mask >> d) & 1);
    if (red && !keep) continue;
    want.shape[want.ndim++] = red ? 1 : x->shape[d];
  }
  if (!kvk_same_shape(&want, y))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "reducing x %s over axis mask 0x%llx with keepdim %lld gives %s, but "
                          "the output is %s",
                          KVK_SHAPE(sx, x), (unsigned long long)mask, (long long)keep,
                          KVK_SHAPE(sw, &want), KVK_SHAPE(sy, y));
  if (y->numel == 0) return KILN_OK;

  /* Kept axes first, then reduced ones, each with x's stride; size-1 axes
   * add nothing to any index and are dropped. */
  uint32_t dims[KILN_MAX_DIMS], strides[KILN_MAX_DIMS];
  int64_t xs[KILN_MAX_DIMS], s = 1, R = 1;
  for (int d = x->ndim - 1; d >= 0; d--) {
    xs[d] = s;
    s *= x->shape[d];
  }
  int nk = 0, nd = 0;
  for (int pass = 0; pass < 2; pass++)
    for (int d = 0; d < x->ndim; d++) {
      int red = (int)((mask >> d) & 1);
      if (red != pass || x->shape[d] == 1) continue;
      dims[nd] = (uint32_t)x->shape[d];
      strides[nd] = (uint32_t)xs[d];
      nd++;
      if (!pass) nk++;
      else R *= x->shape[d];
    }
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  uint32_t wg = kvk_pow2_wg((uint64_t)R, 32, WG);
  d->shader = KVK_SHADER_REDUCE;
  d->n_spec = 1;
  d->spec[0] = wg;
  d->n_bind = 2;
  d->bind[0] = x;
  d->bind[1] = y;
  d->write_mask = 2;
  kvk_param_u(d, (uint64_t)y->numel);
  kvk_param_u(d, (uint64_t)R);
  kvk_param_u(d, (uint64_t)nk);
  kvk_param_u(d, (uint64_t)nd);
  /* An empty reduction sums to 0; its mean is 0 * (1/0) = NaN, as 0/0. */
  kvk_param_f(d, n->op == KILN_OP_MEAN ? (float)(1.0 / (double)R) : 1.0f);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < nd ? dims[i] : 1);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < nd ? strides[i] : 0);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, 1);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}
