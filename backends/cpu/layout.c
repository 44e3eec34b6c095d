/*
 * layout.c - RESHAPE and TRANSPOSE.
 *
 *   reshape    x [..] -> y [..] with the same element count: the same bytes
 *   transpose  x [d0, .., dn-1] -> y with y.shape[i] = x.shape[ip[i]]:
 *              y[i0, .., in-1] = x[j] where j[ip[k]] = ik
 *
 * Transpose drops size-1 axes and merges output axes that stay adjacent in
 * x, then walks the output as tiles: 32 x 32 blocks over the output's last
 * axis and the axis that is contiguous in x, so both sides are read and
 * written a cache line at a time. Pure data movement: no rounding, nothing
 * depends on the threads.
 */
#include <string.h>

#include "cpu-impl.h"

#define TR_TILE 32
#define TR_GRAIN 16384

kiln_status kcpu_layout_validate(int index, const kcpu_node *n) {
  const kcpu_tensor *x = &n->in[0], *y = &n->out;
  char sx[KCPU_SHAPE_STR], sy[KCPU_SHAPE_STR];
  if (n->op == KILN_OP_RESHAPE) {
    if (x->numel != y->numel)
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                             "x %s has %lld elements, but the output %s has %lld",
                             KCPU_SHAPE(sx, x), (long long)x->numel, KCPU_SHAPE(sy, y),
                             (long long)y->numel);
    return KILN_OK;
  }
  if (x->ndim != y->ndim)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "x %s and output %s must have the same rank", KCPU_SHAPE(sx, x),
                           KCPU_SHAPE(sy, y));
  int seen[KILN_MAX_DIMS] = {0};
  for (int i = 0; i < x->ndim; i++) {
    int64_t a = n->ip[i];
    if (a < 0 || a >= x->ndim || seen[a])
      return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                             "ip[0..%d] must be a permutation of 0..%d; ip[%d] = %lld is %s",
                             x->ndim - 1, x->ndim - 1, i, (long long)a,
                             a < 0 || a >= x->ndim ? "out of range" : "repeated");
    seen[a] = 1;
  }
  for (int i = 0; i < x->ndim; i++) {
    int64_t a = n->ip[i];
    if (y->shape[i] != x->shape[a])
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                             "output axis %d takes x axis %lld of size %lld, but the output %s "
                             "has size %lld there (x is %s)",
                             i, (long long)a, (long long)x->shape[a], KCPU_SHAPE(sy, y),
                             (long long)y->shape[i], KCPU_SHAPE(sx, x));
  }
  return KILN_OK;
}

typedef struct tr_plan {
  const float *x;
  float *y;
  int nd;                           /* merged rank, >= 1 */
  int64_t shape[KILN_MAX_DIMS];     /* merged output shape */
  int64_t sx[KILN_MAX_DIMS];        /* x stride of each output axis */
  int64_t sy[KILN_MAX_DIMS];        /* y stride of each output axis */
  int u;                            /* output axis contiguous in x, or -1 */
  /* Items: every output index over the axes other than the last and u, by
   * tiles of TR_TILE along u (if any). */
  int64_t ntu;                      /* tiles along u (1 if none) */
} tr_plan;

static void tr_items(void *arg, int64_t t0, int64_t t1) {
  const tr_plan *p = arg;
  int last = p->nd - 1;
  int64_t L = p->shape[last], lsx = p->sx[last];
  for (int64_t t = t0; t < t1; t++) {
    int64_t rest = t, ox = 0, oy = 0, u0 = 0, ulen = 1;
    if (p->u >= 0) {
      int64_t tu = rest % p->ntu;
      rest /= p->ntu;
      u0 = tu * TR_TILE;
      ulen = p->shape[p->u] - u0 < TR_TILE ? p->shape[p->u] - u0 : TR_TILE;
      ox += u0 * p->sx[p->u];
      oy += u0 * p->sy[p->u];
    }
    for (int d = last - 1; d >= 0; d--) {
      if (d == p->u) continue;
      int64_t i = rest % p->shape[d];
      rest /= p->shape[d];
      ox += i * p->sx[d];
      oy += i * p->sy[d];
    }
    const float *xs = p->x + ox;
    float *ys = p->y + oy;
    if (p->u < 0) {
      if (lsx == 1)
        memcpy(ys, xs, (size_t)L * sizeof *ys);
      else
        for (int64_t j = 0; j < L; j++) ys[j] = xs[j * lsx];
      continue;
    }
    /* A tile of ulen rows (along u, contiguous in x) by L columns, a
     * TR_TILE x TR_TILE block at a time through a local buffer: x is read
     * and y written along contiguous runs. (Writing y with a stride
     * directly thrashes the cache when strides are powers of two.) */
    int64_t usy = p->sy[p->u];
    float tile[TR_TILE][TR_TILE];
    for (int64_t j0 = 0; j0 < L; j0 += TR_TILE) {
      int64_t jn = L - j0 < TR_TILE ? L - j0 : TR_TILE;
      for (int64_t j = 0; j < jn; j++) {
        const float *src = xs + (j0 + j) * lsx;
        for (int64_t i = 0; i < ulen; i++) tile[i][j] = src[i];
      }
      for (int64_t i = 0; i < ulen; i++) {
        float *dst = ys + i * usy + j0;
        for (int64_t j = 0; j < jn; j++) dst[j] = tile[i][j];
      }
    }
  }
}

static void transpose(kcpu_pool *pool, const kcpu_node *n) {
  const kcpu_tensor *X = &n->in[0], *Y = &n->out;
  if (Y->numel == 0) return;
  int64_t xst[KILN_MAX_DIMS], s = 1;
  for (int d = X->ndim - 1; d >= 0; d--) {
    xst[d] = s;
    s *= X->shape[d];
  }
  tr_plan p = {.x = X->data, .y = Y->data, .u = -1, .ntu = 1};
  for (int i = 0; i < Y->ndim; i++) {
    if (Y->shape[i] == 1) continue;
    int64_t st = xst[n->ip[i]];
    if (p.nd > 0 && p.sx[p.nd - 1] == st * Y->shape[i]) {
      p.shape[p.nd - 1] *= Y->shape[i];
      p.sx[p.nd - 1] = st;
      continue;
    }
    p.shape[p.nd] = Y->shape[i];
    p.sx[p.nd++] = st;
  }
  if (p.nd == 0) {
    p.nd = 1;
    p.shape[0] = 1;
    p.sx[0] = 1;
  }
  s = 1;
  for (int d = p.nd - 1; d >= 0; d--) {
    p.sy[d] = s;
    s *= p.shape[d];
  }
  int last = p.nd - 1;
  if (p.sx[last] != 1) {
    for (int d = 0; d < last; d++)
      if (p.sx[d] == 1) p.u = d;
    if (p.u >= 0) p.ntu = (p.shape[p.u] + TR_TILE - 1) / TR_TILE;
  }
  int64_t items = Y->numel / p.shape[last];
  int64_t per_item = p.shape[last];
  if (p.u >= 0) {
    items = items / p.shape[p.u] * p.ntu;
    per_item *= TR_TILE;
  }
  kcpu_parallel_for(pool, items, per_item >= TR_GRAIN ? 1 : TR_GRAIN / per_item, tr_items, &p);
}

void kcpu_layout(kcpu_pool *pool, const kcpu_node *n) {
  if (n->op == KILN_OP_TRANSPOSE) {
    transpose(pool, n);
    return;
  }
  if (n->out.data != n->in[0].data)   /* reshape */
    memcpy(n->out.data, n->in[0].data, (size_t)n->out.numel * sizeof(float));
}
