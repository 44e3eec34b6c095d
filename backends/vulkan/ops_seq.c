/*
 * ops_seq.c - the sequence-model ops that are plain data movement:
 *
 *   slice           x -> y = length ip[2] of axis ip[0] from ip[1]:
 *                   shaders/gather.comp, x's strides, base = start * stride
 *   slice_backward  dy -> dx (x's shape): zeros (fill.comp), then dy
 *                   scattered into its window (gather.comp with SCATTER)
 *   assign          (dst, src): dst = src, in place (unary.comp copy)
 *   clip_coef       sumsq [] -> min(1, fp[0] / (sqrt(sumsq) + fp[1]))
 *                   (unary.comp OP 8)
 *   embedding, embedding_backward, dropout
 *                   shaders/seq.comp (a gather of rows; a per-element sum over
 *                   the indices in order, deterministic; Philox4x32-10)
 */
#include <math.h>

#include "vk-impl.h"

#define WG 256

static kiln_status validate_slice(int index, const kvk_node *n, const kvk_tensor *full,
                                  const kvk_tensor *part) {
  char sf[KVK_SHAPE_STR], sp[KVK_SHAPE_STR];
  int64_t axis = n->ip[0], start = n->ip[1], len = n->ip[2];
  if (axis < 0 || axis >= full->ndim || start < 0 || len < 1 || start + len > full->shape[axis])
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "axis %lld, start %lld, length %lld do not fit x %s", (long long)axis,
                          (long long)start, (long long)len, KVK_SHAPE(sf, full));
  int ok = full->ndim == part->ndim;
  for (int i = 0; ok && i < full->ndim; i++)
    ok = part->shape[i] == (i == axis ? len : full->shape[i]);
  if (!ok)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "the slice %s is not length %lld of axis %lld of %s",
                          KVK_SHAPE(sp, part), (long long)len, (long long)axis,
                          KVK_SHAPE(sf, full));
  return KILN_OK;
}

static kvk_dispatch *unary(kvk_plan *p, int index, const kvk_node *n, uint32_t code,
                           const kvk_tensor *x, const kvk_tensor *y, float a, float b) {
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return NULL;
  d->shader = KVK_SHADER_UNARY;
  d->n_spec = 2;
  d->spec[0] = WG;
  d->spec[1] = code;
  d->n_bind = 2;
  d->bind[0] = x;
  d->bind[1] = y;
  d->write_mask = 2;
  kvk_param_u(d, (uint64_t)y->numel);
  kvk_param_f(d, a);
  kvk_param_f(d, b);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return d;
}

kiln_status kvk_seq_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR];
  const kvk_tensor *a = &n->in[0], *y = &n->out;
  kiln_status st;
  kvk_dispatch *d;
  switch (n->op) {
    case KILN_OP_ASSIGN: {
      const kvk_tensor *src = &n->in[1];
      if (!kvk_same_shape(a, src))
        return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "dst %s and src %s differ",
                              KVK_SHAPE(s0, a), KVK_SHAPE(s1, src));
      if (a->numel == 0 || (src->buffer == a->buffer && src->offset == a->offset)) return KILN_OK;
      if (src->buffer == a->buffer && src->offset < a->offset + a->nbytes &&
          a->offset < src->offset + src->nbytes)
        return kvk_node_error(index, n, KILN_UNSUPPORTED,
                              "src and dst overlap without being the same bytes");
      return unary(p, index, n, 0, src, y, 0.0f, 0.0f) ? KILN_OK : KILN_OUT_OF_MEMORY;
    }
    case KILN_OP_CLIP_COEF:
      if (a->numel != 1 || y->numel != 1)
        return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                              "sumsq %s and output %s must be one element", KVK_SHAPE(s0, a),
                              KVK_SHAPE(s1, y));
      if (!(n->fp[0] > 0.0f) || isinf(n->fp[0]) || !(n->fp[1] >= 0.0f))
        return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                              "max_norm fp[0] = %g must be finite and > 0, eps fp[1] = %g >= 0",
                              (double)n->fp[0], (double)n->fp[1]);
      return unary(p, index, n, 8, a, y, n->fp[0], n->fp[1]) ? KILN_OK : KILN_OUT_OF_MEMORY;
    case KILN_OP_SLICE: case KILN_OP_SLICE_BACKWARD: {
      int fwd = n->op == KILN_OP_SLICE;
      const kvk_tensor *full = fwd ? a : y, *part = fwd ? y : a;
      if ((st = validate_slice(index, n, full, part)) != KILN_OK) return st;
      int64_t fs[KILN_MAX_DIMS], s = 1;
      for (int i = full->ndim - 1; i >= 0; i--) {
        fs[i] = s;
        s *= full->shape[i];
      }
      if (!fwd) {
        if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
        d->shader = KVK_SHADER_FILL;
        d->n_spec = 1;
        d->spec[0] = WG;
        d->n_bind = 1;
        d->bind[0] = y;
        d->write_mask = 1;
        kvk_param_u(d, (uint64_t)y->numel);
        kvk_param_f(d, 0.0f);
        d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
        d->groups[1] = d->groups[2] = 1;
      }
      if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
      d->shader = KVK_SHADER_GATHER;
      d->n_spec = 2;
      d->spec[0] = WG;
      d->spec[1] = fwd ? 0 : 1;
      d->n_bind = 2;
      d->bind[0] = a;
      d->bind[1] = y;
      d->write_mask = 2;
      kvk_param_u(d, (uint64_t)part->numel);
      kvk_param_u(d, (uint64_t)part->ndim);
      kvk_param_u(d, (uint64_t)(n->ip[1] * fs[n->ip[0]]));
      for (int i = 0; i < KILN_MAX_DIMS; i++)
        kvk_param_u(d, i < part->ndim ? (uint64_t)part->shape[i] : 1);
      for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < part->ndim ? (uint64_t)fs[i] : 0);
      d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)part->numel, WG);
      d->groups[1] = d->groups[2] = 1;
      return KILN_OK;
    }
    case KILN_OP_EMBEDDING: case KILN_OP_EMBEDDING_BACKWARD: case KILN_OP_DROPOUT: {
      const kvk_tensor *b = &n->in[1];
      int64_t V = 0, C = 0, N = b->numel;
      if (n->op == KILN_OP_DROPOUT) {
        if (!kvk_same_shape(a, y) || b->numel != 1)
          return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                                "x %s, counter %s, output %s: need the output of x's shape and "
                                "a one-element counter",
                                KVK_SHAPE(s0, a), KVK_SHAPE(s1, b), KVK_SHAPE(s0, y));
        if (!(n->fp[0] >= 0.0f && n->fp[0] < 1.0f))
          return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                                "p = fp[0] = %g must lie in [0, 1)", (double)n->fp[0]);
      } else {
        /* embedding: (w [V, C], idx) -> rows; backward: (dy rows, idx) -> dw [V, C] */
        const kvk_tensor *w = n->op == KILN_OP_EMBEDDING ? a : y;
        const kvk_tensor *rows = n->op == KILN_OP_EMBEDDING ? y : a;
        int ok = w->ndim == 2 && rows->ndim == b->ndim + 1 &&
                 rows->shape[rows->ndim - 1] == w->shape[1];
        for (int i = 0; ok && i < b->ndim; i++) ok = rows->shape[i] == b->shape[i];
        if (!ok) {
          char s2[KVK_SHAPE_STR];
          return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                                "table %s, indices %s and rows %s: need [V, C], [N...] and "
                                "[N..., C]",
                                KVK_SHAPE(s0, w), KVK_SHAPE(s1, b), KVK_SHAPE(s2, rows));
        }
        V = w->shape[0];
        C = w->shape[1];
      }
      if (y->numel == 0) return KILN_OK;
      if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
      d->shader = KVK_SHADER_SEQ;
      d->n_spec = 2;
      d->spec[0] = WG;
      d->spec[1] = n->op == KILN_OP_EMBEDDING ? 0 : n->op == KILN_OP_EMBEDDING_BACKWARD ? 1 : 2;
      d->n_bind = 3;
      d->bind[0] = a;
      d->bind[1] = b;
      d->bind[2] = y;
      d->write_mask = 4;
      float p_drop = n->fp[0], keep_scale = 1.0f / (1.0f - p_drop);   /* as the CPU plugin */
      kvk_param_u(d, (uint64_t)y->numel);
      kvk_param_u(d, (uint64_t)V);
      kvk_param_u(d, (uint64_t)(C ? C : 1));
      kvk_param_u(d, (uint64_t)N);
      kvk_param_f(d, n->op == KILN_OP_DROPOUT ? p_drop : 0.0f);
      kvk_param_f(d, n->op == KILN_OP_DROPOUT ? keep_scale : 0.0f);
      kvk_param_u(d, (uint32_t)n->ip[0]);
      kvk_param_u(d, (uint32_t)n->ip[1]);
      kvk_param_u(d, (uint32_t)n->ip[2]);
      d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
      d->groups[1] = d->groups[2] = 1;
      return KILN_OK;
    }
    default:
      return kvk_node_error(index, n, KILN_INTERNAL, "not a sequence op this file handles");
  }
}
