/*
 * rnn.c - the sequence-model ops' shape inference (EMBEDDING, SLICE,
 * DROPOUT, CLIP_COEF, ASSIGN and their backward helpers, numbers 90..; see
 * kiln/ops.h) and the builders of kiln/rnn.h, including the LSTM and GRU
 * cells composed from existing ops. graph.c calls kiln__seq_arity() and
 * kiln__seq_infer() for these numbers.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kiln-impl.h"
#include "kiln/rnn.h"

int kiln__seq_arity(kiln_op op, int *lo, int *hi) {
  switch (op) {
    case KILN_OP_EMBEDDING: case KILN_OP_EMBEDDING_BACKWARD: case KILN_OP_DROPOUT:
    case KILN_OP_ASSIGN:
      *lo = *hi = 2; return 1;
    case KILN_OP_SLICE: case KILN_OP_SLICE_BACKWARD: case KILN_OP_CLIP_COEF:
      *lo = *hi = 1; return 1;
    default: return 0;
  }
}

static kiln_status msgf(char *msg, size_t size, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static kiln_status msgf(char *msg, size_t size, kiln_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, size, fmt, ap);
  va_end(ap);
  return st;
}

#define SB 160
#define SHS(buf, n) kiln__shape_str((buf), sizeof(buf), (n)->ndim, (n)->shape)

static int single_f32(const kiln_node *n) {
  return n->dtype == KILN_F32 && kiln__numel(n->ndim, n->shape) == 1;
}

/* SLICE and SLICE_BACKWARD: normalises ip[0] (negative axis) and checks the
 * range against the full shape full[nfull]. */
static kiln_status check_slice(int64_t *ip, int nfull, const int64_t *full, char *msg,
                               size_t size) {
  char s[SB];
  kiln__shape_str(s, sizeof s, nfull, full);
  if (nfull < 1) return msgf(msg, size, KILN_SHAPE_MISMATCH, "x %s needs rank >= 1", s);
  if (ip[0] < 0) ip[0] += nfull;
  if (ip[0] < 0 || ip[0] >= nfull)
    return msgf(msg, size, KILN_INVALID_ARGUMENT, "axis %lld is outside x %s", (long long)ip[0], s);
  int64_t dim = full[ip[0]];
  if (ip[1] < 0 || ip[2] < 1 || ip[1] + ip[2] > dim)
    return msgf(msg, size, KILN_INVALID_ARGUMENT,
                "start %lld and length %lld must satisfy 0 <= start, 1 <= length, start + length <= %lld (axis %lld of x %s)",
                (long long)ip[1], (long long)ip[2], (long long)dim, (long long)ip[0], s);
  for (int i = 3; i < KILN_OP_MAX_IPARAMS; i++)
    if (ip[i] != 0)
      return msgf(msg, size, KILN_INVALID_ARGUMENT, "ip[%d] must be 0, got %lld", i, (long long)ip[i]);
  return KILN_OK;
}

kiln_status kiln__seq_infer(kiln_op op, int n_in, kiln_node *const *in, int64_t *ip,
                            const float *fp, int given_ndim, const int64_t *given_shape,
                            kiln_dtype *dtype, int *ndim, int64_t *shape, char *msg, size_t size) {
  char a[SB], b[SB];
  kiln_status st;
  (void)n_in;
  switch (op) {
    case KILN_OP_EMBEDDING: {
      kiln_node *w = in[0], *idx = in[1];
      if (w->dtype != KILN_F32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "weight must be f32, got %s", kiln_dtype_name(w->dtype));
      if (idx->dtype != KILN_I32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "indices must be i32, got %s",
                    kiln_dtype_name(idx->dtype));
      if (w->ndim != 2 || idx->ndim + 1 > KILN_MAX_DIMS)
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "weight %s must be [V, C] and indices %s of rank < %d",
                    SHS(a, w), SHS(b, idx), KILN_MAX_DIMS);
      *dtype = KILN_F32;
      *ndim = idx->ndim + 1;
      for (int i = 0; i < idx->ndim; i++) shape[i] = idx->shape[i];
      shape[idx->ndim] = w->shape[1];
      return KILN_OK;
    }
    case KILN_OP_EMBEDDING_BACKWARD: {
      kiln_node *dy = in[0], *idx = in[1];
      if (dy->dtype != KILN_F32 || idx->dtype != KILN_I32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "dy must be f32 and indices i32, got %s and %s",
                    kiln_dtype_name(dy->dtype), kiln_dtype_name(idx->dtype));
      if (given_ndim != 2 || !given_shape || given_shape[0] < 1)
        return msgf(msg, size, KILN_INVALID_ARGUMENT, "the output shape [V, C] must be given");
      int ok = dy->ndim == idx->ndim + 1 && dy->shape[dy->ndim - 1] == given_shape[1];
      for (int i = 0; ok && i < idx->ndim; i++) ok = dy->shape[i] == idx->shape[i];
      if (!ok)
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "dy %s must be indices %s plus a last axis of %lld",
                    SHS(a, dy), SHS(b, idx), (long long)given_shape[1]);
      *dtype = KILN_F32;
      *ndim = 2;
      shape[0] = given_shape[0];
      shape[1] = given_shape[1];
      return KILN_OK;
    }
    case KILN_OP_SLICE: {
      kiln_node *x = in[0];
      if (x->dtype != KILN_F32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "x must be f32, got %s", kiln_dtype_name(x->dtype));
      if ((st = check_slice(ip, x->ndim, x->shape, msg, size))) return st;
      *dtype = x->dtype;
      *ndim = x->ndim;
      memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
      shape[ip[0]] = ip[2];
      return KILN_OK;
    }
    case KILN_OP_SLICE_BACKWARD: {
      kiln_node *dy = in[0];
      if (dy->dtype != KILN_F32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "dy must be f32, got %s", kiln_dtype_name(dy->dtype));
      if (given_ndim < 0 || (given_ndim > 0 && !given_shape))
        return msgf(msg, size, KILN_INVALID_ARGUMENT, "the output shape (x's) must be given");
      if ((st = check_slice(ip, given_ndim, given_shape, msg, size))) return st;
      int ok = dy->ndim == given_ndim;
      for (int i = 0; ok && i < given_ndim; i++)
        ok = dy->shape[i] == (i == ip[0] ? ip[2] : given_shape[i]);
      if (!ok)
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "dy %s is not the slice of length %lld on axis %lld of %s",
                    SHS(a, dy), (long long)ip[2], (long long)ip[0],
                    kiln__shape_str(b, sizeof b, given_ndim, given_shape));
      *dtype = KILN_F32;
      *ndim = given_ndim;
      memcpy(shape, given_shape, sizeof(int64_t) * (size_t)given_ndim);
      return KILN_OK;
    }
    case KILN_OP_DROPOUT: {
      kiln_node *x = in[0], *ctr = in[1];
      if (x->dtype != KILN_F32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "x must be f32, got %s", kiln_dtype_name(x->dtype));
      if (!single_f32(ctr))
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "counter must be a single-element f32 node, got %s %s",
                    kiln_dtype_name(ctr->dtype), SHS(a, ctr));
      if (!(fp[0] >= 0.0f && fp[0] < 1.0f))
        return msgf(msg, size, KILN_INVALID_ARGUMENT, "p = %g must lie in [0, 1)", (double)fp[0]);
      for (int i = 0; i < 3; i++)
        if (ip[i] < 0 || ip[i] > (int64_t)UINT32_MAX)
          return msgf(msg, size, KILN_INVALID_ARGUMENT, "ip[%d] = %lld must be a 32-bit unsigned value", i,
                      (long long)ip[i]);
      *dtype = KILN_F32;
      *ndim = x->ndim;
      memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
      return KILN_OK;
    }
    case KILN_OP_CLIP_COEF:
      if (!single_f32(in[0]))
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "sumsq must be a single-element f32 node, got %s %s",
                    kiln_dtype_name(in[0]->dtype), SHS(a, in[0]));
      if (!(fp[0] > 0.0f) || !(fp[1] >= 0.0f) || isinf(fp[0]))
        return msgf(msg, size, KILN_INVALID_ARGUMENT, "max_norm %g must be finite and > 0, eps %g >= 0",
                    (double)fp[0], (double)fp[1]);
      *dtype = KILN_F32;
      *ndim = 0;
      return KILN_OK;
    case KILN_OP_ASSIGN: {
      kiln_node *dst = in[0], *src = in[1];
      kiln_node *root = kiln__storage_root(dst);
      if (!root || root->kind != KILN__NODE_STATE)
        return msgf(msg, size, KILN_INVALID_ARGUMENT,
                    "dst must be a kiln_state node (or an in-place update of one)");
      if (dst->dtype != src->dtype || dst->ndim != src->ndim ||
          memcmp(dst->shape, src->shape, sizeof dst->shape) != 0)
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "dst '%s' %s %s and src %s %s differ",
                    root->name ? root->name : "(unnamed)", kiln_dtype_name(dst->dtype), SHS(a, dst),
                    kiln_dtype_name(src->dtype), SHS(b, src));
      if (dst->dtype != KILN_F32)
        return msgf(msg, size, KILN_DTYPE_MISMATCH, "dst must be f32, got %s", kiln_dtype_name(dst->dtype));
      *dtype = dst->dtype;
      *ndim = dst->ndim;
      memcpy(shape, dst->shape, sizeof(int64_t) * (size_t)dst->ndim);
      return KILN_OK;
    }
    default:
      return msgf(msg, size, KILN_INTERNAL, "not a sequence op");
  }
}

/* ---- builders ------------------------------------------------------------ */

kiln_node *kiln_embedding(kiln_graph *g, kiln_node *weight, kiln_node *indices) {
  kiln_node *in[2] = {weight, indices};
  return kiln_node_create(g, KILN_OP_EMBEDDING, 2, in, NULL, NULL, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_slice(kiln_graph *g, kiln_node *x, int axis, int64_t start, int64_t length) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {axis, start, length};
  return kiln_node_create(g, KILN_OP_SLICE, 1, &x, ip, NULL, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_dropout(kiln_graph *g, kiln_node *x, kiln_node *counter, float p, uint64_t seed,
                        uint32_t stream) {
  if (g && x && p == 0.0f) return x;
  int64_t ip[KILN_OP_MAX_IPARAMS] = {(int64_t)(seed & 0xffffffffu), (int64_t)(seed >> 32), stream};
  float fp[KILN_OP_MAX_FPARAMS] = {p};
  kiln_node *in[2] = {x, counter};
  return kiln_node_create(g, KILN_OP_DROPOUT, 2, in, ip, fp, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_assign(kiln_graph *g, kiln_node *dst, kiln_node *src) {
  kiln_node *in[2] = {dst, src};
  return kiln_node_create(g, KILN_OP_ASSIGN, 2, in, NULL, NULL, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_clip_grad_norm(kiln_graph *g, kiln_node *const *grads, int n, float max_norm,
                               kiln_node **clipped, kiln_node **sumsq) {
  if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "clip_grad_norm: graph is NULL"); return NULL; }
  if (n < 1 || !grads || !clipped)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT,
                            "clip_grad_norm: need n >= 1 gradients and a clipped array, got n = %d", n);
  kiln_node *total = NULL;
  for (int i = 0; i < n; i++) {
    if (!grads[i]) continue;
    kiln_node *s = kiln_sum(g, kiln_mul(g, grads[i], grads[i]), 0, 0);
    total = total ? kiln_add(g, total, s) : s;
    if (!total) return NULL;
  }
  if (!total)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "clip_grad_norm: every gradient is NULL");
  float fp[KILN_OP_MAX_FPARAMS] = {max_norm, 1e-6f};
  kiln_node *coef = kiln_node_create(g, KILN_OP_CLIP_COEF, 1, &total, NULL, fp, KILN_DTYPE_INVALID,
                                     -1, NULL);
  if (!coef) return NULL;
  for (int i = 0; i < n; i++) clipped[i] = grads[i] ? kiln_mul(g, grads[i], coef) : NULL;
  if (sumsq) *sumsq = total;
  return g->status == KILN_OK ? coef : NULL;
}

/* gates [B, k*H] -> the j-th [B, H] block. */
static kiln_node *gate(kiln_graph *g, kiln_node *gates, int j, int64_t H) {
  return kiln_slice(g, gates, 1, j * H, H);
}

/* h @ w^T (+ b): [B, H] x [kH, H] -> [B, kH]. */
static kiln_node *hidden_proj(kiln_graph *g, kiln_node *h, kiln_node *w, kiln_node *b) {
  kiln_node *y = kiln_matmul(g, h, w, 0, 1);
  return b ? kiln_add(g, y, b) : y;
}

/* Checks that x [B, k*H] and h [B, H] fit w_hh [k*H, H]. */
static int check_cell(kiln_graph *g, const char *what, int k, kiln_node *xw, kiln_node *h,
                      kiln_node *w_hh) {
  char a[SB], b[SB], c[SB];
  if (xw->ndim != 2 || h->ndim != 2 || w_hh->ndim != 2 || h->shape[1] * k != w_hh->shape[0] ||
      w_hh->shape[1] != h->shape[1] || xw->shape[0] != h->shape[0] || xw->shape[1] != w_hh->shape[0]) {
    kiln__graph_fail(g, KILN_SHAPE_MISMATCH,
                     "%s: xw %s, h %s and w_hh %s: need xw [B, %d*H], h [B, H], w_hh [%d*H, H]", what,
                     SHS(a, xw), SHS(b, h), SHS(c, w_hh), k, k);
    return 0;
  }
  return 1;
}

kiln_status kiln_lstm_cell(kiln_graph *g, kiln_node *xw, kiln_node *h, kiln_node *c,
                           kiln_node *w_hh, kiln_node *b_hh, kiln_node **h_out,
                           kiln_node **c_out) {
  if (!g) return kiln__error(KILN_INVALID_ARGUMENT, "lstm_cell: graph is NULL");
  if (!h_out || !c_out) {
    kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "lstm_cell: h_out and c_out must not be NULL");
    return g->status;
  }
  *h_out = *c_out = NULL;
  if (!xw || !h || !c || !w_hh) {
    if (g->status == KILN_OK)
      kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "lstm_cell: xw, h, c and w_hh must not be NULL");
    return g->status;
  }
  if (!check_cell(g, "lstm_cell", 4, xw, h, w_hh)) return g->status;
  int64_t H = h->shape[1];
  kiln_node *gates = kiln_add(g, xw, hidden_proj(g, h, w_hh, b_hh));
  kiln_node *i = kiln_sigmoid(g, gate(g, gates, 0, H));
  kiln_node *f = kiln_sigmoid(g, gate(g, gates, 1, H));
  kiln_node *gg = kiln_tanh(g, gate(g, gates, 2, H));
  kiln_node *o = kiln_sigmoid(g, gate(g, gates, 3, H));
  kiln_node *c2 = kiln_add(g, kiln_mul(g, f, c), kiln_mul(g, i, gg));
  kiln_node *h2 = kiln_mul(g, o, kiln_tanh(g, c2));
  if (g->status != KILN_OK) return g->status;
  *h_out = h2;
  *c_out = c2;
  return KILN_OK;
}

kiln_node *kiln_gru_cell(kiln_graph *g, kiln_node *xw, kiln_node *h, kiln_node *w_hh,
                         kiln_node *b_hh) {
  if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "gru_cell: graph is NULL"); return NULL; }
  if (!xw || !h || !w_hh) {
    if (g->status == KILN_OK)
      kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "gru_cell: xw, h and w_hh must not be NULL");
    return NULL;
  }
  if (!check_cell(g, "gru_cell", 3, xw, h, w_hh)) return NULL;
  int64_t H = h->shape[1];
  kiln_node *hw = hidden_proj(g, h, w_hh, b_hh);
  kiln_node *r = kiln_sigmoid(g, kiln_add(g, gate(g, xw, 0, H), gate(g, hw, 0, H)));
  kiln_node *z = kiln_sigmoid(g, kiln_add(g, gate(g, xw, 1, H), gate(g, hw, 1, H)));
  kiln_node *n = kiln_tanh(g, kiln_add(g, gate(g, xw, 2, H), kiln_mul(g, r, gate(g, hw, 2, H))));
  return kiln_add(g, n, kiln_mul(g, z, kiln_sub(g, h, n)));
}
