/*
 * ops_elementwise.c - FILL, COPY, unary ops and SCALE, binary ops with
 * broadcasting, and the unary backward helpers.
 *
 *   fill     y[..] = fp[0]                            (shaders/fill.comp)
 *   cast     y = fp[0] * x + fp[1], x u8|i32|f32 -> f32 (shaders/cast.comp)
 *   unary    y = f(x), same shape                     (shaders/unary.comp)
 *   binary   y = f(a, b), NumPy broadcast to y's shape (shaders/binary.comp);
 *            same-shaped operands take the BCAST = 0 variant (plain index)
 *   *_backward (dy, x|y) -> dx, all one shape         (shaders/binary.comp)
 */
#include <math.h>
#include <string.h>

#include "vk-impl.h"

#define WG 256

/* Shader OP codes (see the shaders' headers). */
static int unary_code(uint32_t op) {
  switch (op) {
    case KILN_OP_COPY: return 0;
    case KILN_OP_NEG: return 1;
    case KILN_OP_RELU: return 2;
    case KILN_OP_TANH: return 3;
    case KILN_OP_SIGMOID: return 4;
    case KILN_OP_EXP: return 5;
    case KILN_OP_LOG: return 6;
    case KILN_OP_SCALE: return 7;
    default: return -1;
  }
}

static int binary_code(uint32_t op) {
  switch (op) {
    case KILN_OP_ADD: return 0;
    case KILN_OP_SUB: return 1;
    case KILN_OP_MUL: return 2;
    case KILN_OP_DIV: return 3;
    case KILN_OP_RELU_BACKWARD: return 4;
    case KILN_OP_TANH_BACKWARD: return 5;
    case KILN_OP_SIGMOID_BACKWARD: return 6;
    default: return -1;
  }
}

void kvk_broadcast_strides(const kvk_tensor *t, const kvk_tensor *y, uint32_t *st) {
  int64_t s = 1;
  for (int d = y->ndim - 1; d >= 0; d--) {
    int td = t->ndim - (y->ndim - d);
    if (td < 0) {
      st[d] = 0;
      continue;
    }
    st[d] = t->shape[td] == 1 && y->shape[d] != 1 ? 0 : (uint32_t)s;
    s *= t->shape[td];
  }
}

kiln_status kvk_elementwise_plan(kvk_plan *p, int index, const kvk_node *n) {
  char sa[KVK_SHAPE_STR], sb[KVK_SHAPE_STR], sy[KVK_SHAPE_STR], sw[KVK_SHAPE_STR];
  const kvk_tensor *y = &n->out;
  kvk_dispatch *d;

  if (n->op == KILN_OP_FILL) {
    if (y->numel == 0) return KILN_OK;
    if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
    d->shader = KVK_SHADER_FILL;
    d->n_spec = 1;
    d->spec[0] = WG;
    d->n_bind = 1;
    d->bind[0] = y;
    d->write_mask = 1;
    kvk_param_u(d, (uint64_t)y->numel);
    kvk_param_f(d, n->fp[0]);
    d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
    d->groups[1] = d->groups[2] = 1;
    return KILN_OK;
  }

  int uc = unary_code(n->op);
  if (uc >= 0 || n->op == KILN_OP_CAST) {
    const kvk_tensor *x = &n->in[0];
    if (!kvk_same_shape(x, y))
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "output %s must have the input's shape %s", KVK_SHAPE(sy, y),
                            KVK_SHAPE(sa, x));
    if ((n->op == KILN_OP_SCALE || n->op == KILN_OP_CAST) &&
        (!isfinite(n->fp[0]) || !isfinite(n->fp[1])))
      return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                            "fp[0] (scale %g) and fp[1] (shift %g) must be finite",
                            (double)n->fp[0], (double)n->fp[1]);
    if (y->numel == 0) return KILN_OK;
    if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
    d->shader = n->op == KILN_OP_CAST ? KVK_SHADER_CAST : KVK_SHADER_UNARY;
    d->n_spec = 2;
    d->spec[0] = WG;
    /* cast.comp's DT (0 f32, 1 i32, 2 u8), or unary.comp's OP */
    d->spec[1] = n->op == KILN_OP_CAST ? (x->dtype == KILN_U8 ? 2 : x->dtype == KILN_I32 ? 1 : 0)
                                       : (uint32_t)uc;
    d->n_bind = 2;
    d->bind[0] = x;
    d->bind[1] = y;
    d->write_mask = 2;
    kvk_param_u(d, (uint64_t)y->numel);
    kvk_param_f(d, n->fp[0]);
    kvk_param_f(d, n->fp[1]);
    d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
    d->groups[1] = d->groups[2] = 1;
    return KILN_OK;
  }

  int bc = binary_code(n->op);
  if (bc < 0)
    return kvk_node_error(index, n, KILN_INTERNAL, "not an elementwise op");
  const kvk_tensor *a = &n->in[0], *b = &n->in[1];
  if (bc >= 4) {
    if (!kvk_same_shape(a, b) || !kvk_same_shape(a, y))
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "dy %s, %s %s and output %s must have the same shape",
                            KVK_SHAPE(sa, a), n->op == KILN_OP_RELU_BACKWARD ? "x" : "y",
                            KVK_SHAPE(sb, b), KVK_SHAPE(sy, y));
  } else {
    int nd;
    int64_t shape[KILN_MAX_DIMS];
    if (kvk_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape) != 0)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "a %s and b %s do not broadcast (each pair of right-aligned "
                            "dimensions must be equal or 1)",
                            KVK_SHAPE(sa, a), KVK_SHAPE(sb, b));
    kvk_tensor want = {.ndim = nd};
    memcpy(want.shape, shape, sizeof(int64_t) * (size_t)nd);
    if (!kvk_same_shape(&want, y))
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "a %s and b %s broadcast to %s, but the output is %s",
                            KVK_SHAPE(sa, a), KVK_SHAPE(sb, b), KVK_SHAPE(sw, &want),
                            KVK_SHAPE(sy, y));
  }
  if (y->numel == 0) return KILN_OK;
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  int same = kvk_same_shape(a, y) && kvk_same_shape(b, y);
  d->shader = KVK_SHADER_BINARY;
  d->n_spec = 3;
  d->spec[0] = WG;
  d->spec[1] = (uint32_t)bc;
  d->spec[2] = same ? 0 : 1;
  d->n_bind = 3;
  d->bind[0] = a;
  d->bind[1] = b;
  d->bind[2] = y;
  d->write_mask = 4;
  uint32_t s_a[KILN_MAX_DIMS] = {0}, s_b[KILN_MAX_DIMS] = {0};
  kvk_broadcast_strides(a, y, s_a);
  kvk_broadcast_strides(b, y, s_b);
  kvk_param_u(d, (uint64_t)y->numel);
  kvk_param_u(d, (uint64_t)y->ndim);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < y->ndim ? (uint64_t)y->shape[i] : 1);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, s_a[i]);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, s_b[i]);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}
