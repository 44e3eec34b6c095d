/*
 * graph.c - static graphs: creation, leaves, every op builder and the shape
 * inference and validation behind them (kiln/ops.h gives the semantics).
 *
 * Every builder funnels into kiln_node_create(), which checks the arity,
 * dtypes, shapes and parameters of the op and computes the output shape.
 * Errors follow kiln.h's sticky rule: the builder returns NULL, the message
 * goes to the thread's last error, and the graph keeps its FIRST error for
 * kiln_graph_status()/kiln_graph_compile(). A NULL input node yields NULL
 * without a new message, so a formula stops at its first broken term.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

int64_t kiln__numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

/* ---- graph objects ------------------------------------------------------- */

kiln_status kiln_graph_create(kiln_graph **out) {
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_graph_create: out is NULL");
  *out = NULL;
  kiln_graph *g = kiln__calloc(1, sizeof *g);
  if (!g) return KILN_OUT_OF_MEMORY;
  g->status = KILN_OK;
  *out = g;
  return KILN_OK;
}

void kiln_graph_destroy(kiln_graph *g) {
  if (!g) return;
  for (uint32_t i = 0; i < g->n_nodes; i++) {
    free(g->nodes[i]->name);
    free(g->nodes[i]);
  }
  free(g->nodes);
  free(g);
}

kiln_status kiln_graph_status(const kiln_graph *g) {
  return g ? g->status : KILN_INVALID_ARGUMENT;
}

const char *kiln_graph_error(const kiln_graph *g) {
  if (!g) return "graph is NULL";
  return g->error;
}

kiln_node *kiln__graph_fail(kiln_graph *g, kiln_status st, const char *fmt, ...) {
  char msg[sizeof g->error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kiln__error(st, "%s", msg);
  if (g && g->status == KILN_OK) {
    g->status = st;
    snprintf(g->error, sizeof g->error, "%s", msg);
  }
  return NULL;
}

/* Appends a node whose shape is already known valid. */
static kiln_node *node_append(kiln_graph *g, kiln__node_kind kind, kiln_op op, kiln_dtype dtype,
                              int ndim, const int64_t *shape, int n_inputs,
                              kiln_node *const *inputs, const int64_t *ip, const float *fp) {
  if (g->n_nodes == UINT32_MAX)
    return kiln__graph_fail(g, KILN_OUT_OF_MEMORY, "graph: too many nodes");
  if (g->n_nodes == g->cap_nodes) {
    uint32_t cap = g->cap_nodes ? g->cap_nodes * 2 : 64;
    kiln_node **nodes = kiln__realloc(g->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes) return kiln__graph_fail(g, KILN_OUT_OF_MEMORY, "graph: out of memory adding a node");
    g->nodes = nodes;
    g->cap_nodes = cap;
  }
  kiln_node *n = kiln__calloc(1, sizeof *n);
  if (!n) return kiln__graph_fail(g, KILN_OUT_OF_MEMORY, "graph: out of memory adding a node");
  n->graph = g;
  n->id = g->n_nodes;
  n->kind = kind;
  n->op = op;
  n->dtype = dtype;
  n->ndim = ndim;
  for (int i = 0; i < KILN_MAX_DIMS; i++) n->shape[i] = i < ndim ? shape[i] : 1;
  n->n_inputs = n_inputs;
  for (int i = 0; i < n_inputs; i++) n->inputs[i] = inputs[i];
  if (ip) memcpy(n->ip, ip, sizeof n->ip);
  if (fp) memcpy(n->fp, fp, sizeof n->fp);
  g->nodes[g->n_nodes++] = n;
  return n;
}

/* ---- leaves -------------------------------------------------------------- */

static int dtype_known(kiln_dtype dt) { return kiln_dtype_size(dt) != 0; }

/* 1 if the element count of shape (dims >= 1) fits in int64_t. */
static int numel_fits(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    if (__builtin_mul_overflow(n, shape[i], &n)) return 0;
  return 1;
}

/* Checks a caller-given shape; `what` names the builder. */
static int shape_ok(kiln_graph *g, const char *what, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > KILN_MAX_DIMS) {
    kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: rank %d is outside [0, %d]", what, ndim,
                     KILN_MAX_DIMS);
    return 0;
  }
  if (ndim > 0 && !shape) {
    kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: shape is NULL for rank %d", what, ndim);
    return 0;
  }
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 1) {
      char s[160];
      kiln__graph_fail(g, KILN_SHAPE_MISMATCH, "%s: shape %s has dimension %d = %lld (must be >= 1)",
                       what, kiln__shape_str(s, sizeof s, ndim, shape), i, (long long)shape[i]);
      return 0;
    }
  }
  if (!numel_fits(ndim, shape)) {
    char s[160];
    kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: shape %s has more elements than fit in 64 bits",
                     what, kiln__shape_str(s, sizeof s, ndim, shape));
    return 0;
  }
  return 1;
}

kiln_node *kiln_input(kiln_graph *g, const char *name, kiln_dtype dtype, int ndim,
                      const int64_t *shape) {
  if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "kiln_input: graph is NULL"); return NULL; }
  const char *nm = name ? name : "(unnamed)";
  if (!dtype_known(dtype))
    return kiln__graph_fail(g, KILN_DTYPE_MISMATCH, "input '%s': unknown dtype %d", nm, (int)dtype);
  char what[128];
  snprintf(what, sizeof what, "input '%s'", nm);
  if (!shape_ok(g, what, ndim, shape)) return NULL;
  kiln_node *n = node_append(g, KILN__NODE_INPUT, KILN_OP_NONE, dtype, ndim, shape, 0, NULL, NULL,
                             NULL);
  if (n && name && !(n->name = kiln__strdup(name)))
    return kiln__graph_fail(g, KILN_OUT_OF_MEMORY, "input '%s': out of memory", nm);
  return n;
}

static kiln_node *storage_leaf(kiln_graph *g, const char *what, kiln__node_kind kind,
                               const char *name, kiln_tensor *storage) {
  if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "%s: graph is NULL", what); return NULL; }
  const char *nm = name ? name : "(unnamed)";
  if (!storage)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s '%s': storage tensor is NULL", what, nm);
  kiln_node *n = node_append(g, kind, KILN_OP_NONE, storage->dtype, storage->ndim, storage->shape, 0,
                             NULL, NULL, NULL);
  if (!n) return NULL;
  n->storage = storage;
  if (name && !(n->name = kiln__strdup(name)))
    return kiln__graph_fail(g, KILN_OUT_OF_MEMORY, "%s '%s': out of memory", what, nm);
  return n;
}

kiln_node *kiln_param(kiln_graph *g, const char *name, kiln_tensor *storage) {
  return storage_leaf(g, "param", KILN__NODE_PARAM, name, storage);
}

kiln_node *kiln_state(kiln_graph *g, const char *name, kiln_tensor *storage) {
  return storage_leaf(g, "state", KILN__NODE_STATE, name, storage);
}

kiln_node *kiln_fill(kiln_graph *g, kiln_dtype dtype, int ndim, const int64_t *shape, float value) {
  float fp[KILN_OP_MAX_FPARAMS] = {value};
  return kiln_node_create(g, KILN_OP_FILL, 0, NULL, NULL, fp, dtype, ndim, shape);
}

/* ---- shape inference ----------------------------------------------------- */

/* What an op's inference works on: the inputs, the (normalised) params,
 * the caller's out shape if given, and the result. */
typedef struct infer_ctx {
  kiln_graph *g;
  kiln_op op;
  const char *name;        /* op name for messages */
  int n_in;
  kiln_node *const *in;
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
  kiln_dtype given_dtype;  /* KILN_DTYPE_INVALID: infer */
  int given_ndim;          /* -1: infer */
  const int64_t *given_shape;
  kiln_dtype dtype;        /* result */
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
} infer_ctx;

#define SHAPE_BUF 160
#define SHP(buf, n) kiln__shape_str((buf), sizeof(buf), (n)->ndim, (n)->shape)

static int fail(infer_ctx *c, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(infer_ctx *c, kiln_status st, const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kiln__graph_fail(c->g, st, "%s: %s", c->name, msg);
  return 0;
}

static void set_out(infer_ctx *c, kiln_dtype dt, int ndim, const int64_t *shape) {
  c->dtype = dt;
  c->ndim = ndim;
  for (int i = 0; i < ndim; i++) c->shape[i] = shape[i];
}

static int is_float(kiln_dtype dt) { return dt == KILN_F32 || dt == KILN_F16 || dt == KILN_BF16; }

static int same_shape(const kiln_node *a, const kiln_node *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

static int need_float(infer_ctx *c, int i, const char *role) {
  if (!is_float(c->in[i]->dtype))
    return fail(c, KILN_DTYPE_MISMATCH, "%s must be a floating-point tensor, got %s", role,
                kiln_dtype_name(c->in[i]->dtype));
  return 1;
}

static int need_same_dtype(infer_ctx *c, int i, int j) {
  if (c->in[i]->dtype != c->in[j]->dtype)
    return fail(c, KILN_DTYPE_MISMATCH, "inputs %d and %d have dtypes %s and %s", i, j,
                kiln_dtype_name(c->in[i]->dtype), kiln_dtype_name(c->in[j]->dtype));
  return 1;
}

static int need_same_shape(infer_ctx *c, int i, int j, const char *ri, const char *rj) {
  if (!same_shape(c->in[i], c->in[j])) {
    char a[SHAPE_BUF], b[SHAPE_BUF];
    return fail(c, KILN_SHAPE_MISMATCH, "%s %s and %s %s must have the same shape", ri,
                SHP(a, c->in[i]), rj, SHP(b, c->in[j]));
  }
  return 1;
}

int kiln__broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                           int64_t *out, int *bad_axis) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = i - (n - na), ib = i - (n - nb);
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) {
      if (bad_axis) *bad_axis = i;
      return -1;
    }
    out[i] = da == 1 ? db : da;
  }
  *nout = n;
  return 0;
}

static int infer_binary(infer_ctx *c) {
  kiln_node *a = c->in[0], *b = c->in[1];
  if (!need_same_dtype(c, 0, 1)) return 0;
  int n, axis = 0;
  int64_t out[KILN_MAX_DIMS];
  if (kiln__broadcast_shapes(a->ndim, a->shape, b->ndim, b->shape, &n, out, &axis) != 0) {
    char sa[SHAPE_BUF], sb[SHAPE_BUF];
    int n_all = a->ndim > b->ndim ? a->ndim : b->ndim;
    int ia = axis - (n_all - a->ndim), ib = axis - (n_all - b->ndim);
    return fail(c, KILN_SHAPE_MISMATCH, "shapes %s and %s do not broadcast (axis %d: %lld vs %lld)",
                SHP(sa, a), SHP(sb, b), axis, (long long)a->shape[ia], (long long)b->shape[ib]);
  }
  set_out(c, a->dtype, n, out);
  return 1;
}

static int infer_matmul(infer_ctx *c) {
  kiln_node *a = c->in[0], *b = c->in[1];
  char sa[SHAPE_BUF], sb[SHAPE_BUF];
  if (!need_same_dtype(c, 0, 1) || !need_float(c, 0, "a")) return 0;
  if ((c->ip[0] != 0 && c->ip[0] != 1) || (c->ip[1] != 0 && c->ip[1] != 1))
    return fail(c, KILN_INVALID_ARGUMENT, "transpose flags must be 0 or 1, got %lld and %lld",
                (long long)c->ip[0], (long long)c->ip[1]);
  if (a->ndim < 2 || b->ndim < 2)
    return fail(c, KILN_SHAPE_MISMATCH, "a %s and b %s: both need rank >= 2", SHP(sa, a),
                SHP(sb, b));
  int ta = (int)c->ip[0], tb = (int)c->ip[1];
  int64_t M = a->shape[a->ndim - (ta ? 1 : 2)], Ka = a->shape[a->ndim - (ta ? 2 : 1)];
  int64_t Kb = b->shape[b->ndim - (tb ? 1 : 2)], N = b->shape[b->ndim - (tb ? 2 : 1)];
  if (Ka != Kb)
    return fail(c, KILN_SHAPE_MISMATCH, "a %s%s and b %s%s: inner dimensions %lld and %lld differ",
                SHP(sa, a), ta ? " (transposed)" : "", SHP(sb, b), tb ? " (transposed)" : "",
                (long long)Ka, (long long)Kb);
  int n, axis = 0;
  int64_t out[KILN_MAX_DIMS];
  if (kiln__broadcast_shapes(a->ndim - 2, a->shape, b->ndim - 2, b->shape, &n, out, &axis) != 0)
    return fail(c, KILN_SHAPE_MISMATCH, "a %s and b %s: batch dimensions do not broadcast (batch axis %d)",
                SHP(sa, a), SHP(sb, b), axis);
  out[n] = M;
  out[n + 1] = N;
  set_out(c, a->dtype, n + 2, out);
  return 1;
}

static int infer_reduce(infer_ctx *c) {
  kiln_node *x = c->in[0];
  char sx[SHAPE_BUF];
  uint64_t all = x->ndim ? ((1ull << x->ndim) - 1) : 0;
  if (c->ip[0] == 0) c->ip[0] = (int64_t)all;       /* 0 means every axis */
  if (c->ip[0] < 0 || ((uint64_t)c->ip[0] & ~all))
    return fail(c, KILN_INVALID_ARGUMENT, "axis mask 0x%llx names an axis outside x %s",
                (unsigned long long)c->ip[0], SHP(sx, x));
  if (c->ip[1] != 0 && c->ip[1] != 1)
    return fail(c, KILN_INVALID_ARGUMENT, "keepdim must be 0 or 1, got %lld", (long long)c->ip[1]);
  if (!need_float(c, 0, "x")) return 0;
  int n = 0;
  int64_t out[KILN_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) {
    if ((uint64_t)c->ip[0] & (1ull << i)) {
      if (c->ip[1]) out[n++] = 1;
    } else {
      out[n++] = x->shape[i];
    }
  }
  set_out(c, x->dtype, n, out);
  return 1;
}

static int need_given_shape(infer_ctx *c) {
  if (c->given_ndim < 0)
    return fail(c, KILN_INVALID_ARGUMENT, "the output shape must be given (out_ndim >= 0)");
  if (!shape_ok(c->g, c->name, c->given_ndim, c->given_shape)) return 0;
  return 1;
}

static int infer_expand(infer_ctx *c) {
  kiln_node *x = c->in[0];
  if (!need_given_shape(c)) return 0;
  char sx[SHAPE_BUF], so[SHAPE_BUF];
  int n = c->given_ndim;
  const int64_t *s = c->given_shape;
  if (x->ndim > n)
    return fail(c, KILN_SHAPE_MISMATCH, "cannot expand x %s to the lower rank %s", SHP(sx, x),
                kiln__shape_str(so, sizeof so, n, s));
  for (int i = 0; i < x->ndim; i++) {
    int o = i + (n - x->ndim);
    if (x->shape[i] != 1 && x->shape[i] != s[o])
      return fail(c, KILN_SHAPE_MISMATCH, "cannot expand x %s to %s (axis %d: %lld vs %lld)",
                  SHP(sx, x), kiln__shape_str(so, sizeof so, n, s), o, (long long)x->shape[i],
                  (long long)s[o]);
  }
  set_out(c, x->dtype, n, s);
  return 1;
}

static int infer_reshape(infer_ctx *c) {
  kiln_node *x = c->in[0];
  char sx[SHAPE_BUF], so[SHAPE_BUF];
  int n = c->given_ndim;
  if (n < 0) return fail(c, KILN_INVALID_ARGUMENT, "the output shape must be given (out_ndim >= 0)");
  if (n > KILN_MAX_DIMS)
    return fail(c, KILN_INVALID_ARGUMENT, "rank %d is above %d", n, KILN_MAX_DIMS);
  if (n > 0 && !c->given_shape) return fail(c, KILN_INVALID_ARGUMENT, "shape is NULL for rank %d", n);
  int64_t out[KILN_MAX_DIMS], known = 1;
  int infer_at = -1;
  for (int i = 0; i < n; i++) {
    out[i] = c->given_shape[i];
    if (out[i] == -1) {
      if (infer_at >= 0)
        return fail(c, KILN_INVALID_ARGUMENT, "shape %s has more than one -1",
                    kiln__shape_str(so, sizeof so, n, c->given_shape));
      infer_at = i;
    } else if (out[i] < 1) {
      return fail(c, KILN_SHAPE_MISMATCH, "shape %s has dimension %d = %lld",
                  kiln__shape_str(so, sizeof so, n, c->given_shape), i, (long long)out[i]);
    } else if (__builtin_mul_overflow(known, out[i], &known)) {
      return fail(c, KILN_INVALID_ARGUMENT, "shape %s has more elements than fit in 64 bits",
                  kiln__shape_str(so, sizeof so, n, c->given_shape));
    }
  }
  int64_t numel = kiln__numel(x->ndim, x->shape);
  if (infer_at >= 0) {
    if (numel % known != 0)
      return fail(c, KILN_SHAPE_MISMATCH, "cannot reshape x %s (%lld elements) to %s: %lld is not a multiple of %lld",
                  SHP(sx, x), (long long)numel, kiln__shape_str(so, sizeof so, n, c->given_shape),
                  (long long)numel, (long long)known);
    out[infer_at] = numel / known;
  } else if (known != numel) {
    return fail(c, KILN_SHAPE_MISMATCH, "cannot reshape x %s (%lld elements) to %s (%lld elements)",
                SHP(sx, x), (long long)numel, kiln__shape_str(so, sizeof so, n, out),
                (long long)known);
  }
  set_out(c, x->dtype, n, out);
  return 1;
}

static int infer_transpose(infer_ctx *c) {
  kiln_node *x = c->in[0];
  char sx[SHAPE_BUF];
  int seen[KILN_MAX_DIMS] = {0};
  int64_t out[KILN_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) {
    int64_t p = c->ip[i];
    if (p < 0 || p >= x->ndim || seen[p])
      return fail(c, KILN_INVALID_ARGUMENT, "perm entry %d = %lld: not a permutation of the %d axes of x %s",
                  i, (long long)p, x->ndim, SHP(sx, x));
    seen[p] = 1;
    out[i] = x->shape[p];
  }
  for (int i = x->ndim; i < KILN_OP_MAX_IPARAMS; i++)
    if (c->ip[i] != 0)
      return fail(c, KILN_INVALID_ARGUMENT, "perm has entry %d = %lld beyond the rank %d of x %s", i,
                  (long long)c->ip[i], x->ndim, SHP(sx, x));
  set_out(c, x->dtype, x->ndim, out);
  return 1;
}

static int infer_softmax(infer_ctx *c) {
  kiln_node *x = c->in[0];
  char sx[SHAPE_BUF];
  if (!need_float(c, 0, "x")) return 0;
  if (x->ndim < 1) return fail(c, KILN_SHAPE_MISMATCH, "x %s needs rank >= 1", SHP(sx, x));
  if (c->n_in == 2) {
    if (!need_same_dtype(c, 0, 1) || !need_same_shape(c, 0, 1, "dy", "y")) return 0;
  }
  set_out(c, x->dtype, x->ndim, x->shape);
  return 1;
}

static int check_ce_pair(infer_ctx *c, int li, int yi) {
  kiln_node *logits = c->in[li], *labels = c->in[yi];
  char sl[SHAPE_BUF], sy[SHAPE_BUF];
  if (!need_float(c, li, "logits")) return 0;
  if (labels->dtype != KILN_I32)
    return fail(c, KILN_DTYPE_MISMATCH, "labels must be i32, got %s", kiln_dtype_name(labels->dtype));
  if (logits->ndim != 2 || labels->ndim != 1 || labels->shape[0] != logits->shape[0])
    return fail(c, KILN_SHAPE_MISMATCH, "logits %s and labels %s: need logits [N, C] and labels [N]",
                SHP(sl, logits), SHP(sy, labels));
  return 1;
}

static int infer_cross_entropy(infer_ctx *c) {
  if (!check_ce_pair(c, 0, 1)) return 0;
  set_out(c, c->in[0]->dtype, 0, NULL);
  return 1;
}

static int infer_cross_entropy_backward(infer_ctx *c) {
  char sd[SHAPE_BUF];
  if (!check_ce_pair(c, 1, 2)) return 0;
  if (!need_same_dtype(c, 0, 1)) return 0;
  if (kiln__numel(c->in[0]->ndim, c->in[0]->shape) != 1)
    return fail(c, KILN_SHAPE_MISMATCH, "dloss %s must have one element", SHP(sd, c->in[0]));
  set_out(c, c->in[1]->dtype, 2, c->in[1]->shape);
  return 1;
}

/* conv2d: the output [N, O, OH, OW] of x [N, C, H, W] and w [O, C/g, KH, KW]. */
static int conv_out_shape(infer_ctx *c, int nx, const int64_t *xs, int nw, const int64_t *ws,
                          int64_t out[4]) {
  char sx[SHAPE_BUF], sw[SHAPE_BUF];
  kiln__shape_str(sx, sizeof sx, nx, xs);
  kiln__shape_str(sw, sizeof sw, nw, ws);
  if (nx != 4 || nw != 4)
    return fail(c, KILN_SHAPE_MISMATCH, "x %s and w %s: need x [N, C, H, W] and w [O, C/groups, KH, KW]",
                sx, sw);
  const int64_t *p = c->ip;
  if (p[0] < 1 || p[1] < 1 || p[2] < 0 || p[3] < 0 || p[4] < 1 || p[5] < 1 || p[6] < 1)
    return fail(c, KILN_INVALID_ARGUMENT,
                "bad parameters stride %lldx%lld (>= 1), pad %lldx%lld (>= 0), dilation %lldx%lld (>= 1), groups %lld (>= 1)",
                (long long)p[0], (long long)p[1], (long long)p[2], (long long)p[3], (long long)p[4],
                (long long)p[5], (long long)p[6]);
  int64_t G = p[6], C = xs[1], O = ws[0];
  if (C % G != 0 || O % G != 0)
    return fail(c, KILN_SHAPE_MISMATCH, "groups %lld must divide both the input channels %lld of x %s and the output channels %lld of w %s",
                (long long)G, (long long)C, sx, (long long)O, sw);
  if (ws[1] != C / G)
    return fail(c, KILN_SHAPE_MISMATCH, "w %s: axis 1 is %lld but x %s with groups %lld needs C/groups = %lld",
                sw, (long long)ws[1], sx, (long long)G, (long long)(C / G));
  int64_t eh = p[4] * (ws[2] - 1) + 1, ew = p[5] * (ws[3] - 1) + 1;
  int64_t hp = xs[2] + 2 * p[2], wp = xs[3] + 2 * p[3];
  if (hp < eh || wp < ew)
    return fail(c, KILN_SHAPE_MISMATCH, "x %s padded by %lldx%lld is smaller than the dilated kernel %lldx%lld of w %s",
                sx, (long long)p[2], (long long)p[3], (long long)eh, (long long)ew, sw);
  out[0] = xs[0];
  out[1] = O;
  out[2] = (hp - eh) / p[0] + 1;
  out[3] = (wp - ew) / p[1] + 1;
  return 1;
}

static int infer_conv2d(infer_ctx *c) {
  kiln_node *x = c->in[0], *w = c->in[1];
  int64_t out[4];
  if (!need_float(c, 0, "x") || !need_same_dtype(c, 0, 1)) return 0;
  if (!conv_out_shape(c, x->ndim, x->shape, w->ndim, w->shape, out)) return 0;
  if (c->n_in == 3) {
    kiln_node *b = c->in[2];
    char sb[SHAPE_BUF], sw[SHAPE_BUF];
    if (!need_same_dtype(c, 0, 2)) return 0;
    if (b->ndim != 1 || b->shape[0] != w->shape[0])
      return fail(c, KILN_SHAPE_MISMATCH, "bias %s must be [%lld] for w %s", SHP(sb, b),
                  (long long)w->shape[0], SHP(sw, w));
  }
  set_out(c, x->dtype, 4, out);
  return 1;
}

/* CONV2D_BACKWARD_INPUT (dy, w) -> x's shape (given), CONV2D_BACKWARD_WEIGHT
 * (dy, x) -> w's shape (given): the forward shape must reproduce dy. */
static int infer_conv2d_backward(infer_ctx *c) {
  kiln_node *dy = c->in[0], *other = c->in[1];
  if (!need_float(c, 0, "dy") || !need_same_dtype(c, 0, 1) || !need_given_shape(c)) return 0;
  int64_t out[4];
  int ok = c->op == KILN_OP_CONV2D_BACKWARD_INPUT
               ? conv_out_shape(c, c->given_ndim, c->given_shape, other->ndim, other->shape, out)
               : conv_out_shape(c, other->ndim, other->shape, c->given_ndim, c->given_shape, out);
  if (!ok) return 0;
  char sd[SHAPE_BUF], so[SHAPE_BUF];
  if (dy->ndim != 4 || memcmp(dy->shape, out, sizeof out) != 0)
    return fail(c, KILN_SHAPE_MISMATCH, "dy %s does not match the forward output %s", SHP(sd, dy),
                kiln__shape_str(so, sizeof so, 4, out));
  set_out(c, dy->dtype, c->given_ndim, c->given_shape);
  return 1;
}

static int pool_out_shape(infer_ctx *c, int nx, const int64_t *xs, int64_t out[4]) {
  char sx[SHAPE_BUF];
  kiln__shape_str(sx, sizeof sx, nx, xs);
  if (nx != 4) return fail(c, KILN_SHAPE_MISMATCH, "x %s must be [N, C, H, W]", sx);
  const int64_t *p = c->ip;
  if (p[0] < 1 || p[1] < 1 || p[2] < 1 || p[3] < 1 || p[4] < 0 || p[5] < 0)
    return fail(c, KILN_INVALID_ARGUMENT, "bad parameters kernel %lldx%lld (>= 1), stride %lldx%lld (>= 1), pad %lldx%lld (>= 0)",
                (long long)p[0], (long long)p[1], (long long)p[2], (long long)p[3], (long long)p[4],
                (long long)p[5]);
  if (p[4] > p[0] / 2 || p[5] > p[1] / 2)
    return fail(c, KILN_INVALID_ARGUMENT, "padding %lldx%lld exceeds half the kernel %lldx%lld",
                (long long)p[4], (long long)p[5], (long long)p[0], (long long)p[1]);
  if (c->op == KILN_OP_AVGPOOL2D || c->op == KILN_OP_AVGPOOL2D_BACKWARD) {
    if (p[6] != 0 && p[6] != 1)
      return fail(c, KILN_INVALID_ARGUMENT, "count_include_pad must be 0 or 1, got %lld", (long long)p[6]);
  } else if (p[6] != 0) {
    return fail(c, KILN_INVALID_ARGUMENT, "ip[6] must be 0 for max pooling, got %lld", (long long)p[6]);
  }
  int64_t hp = xs[2] + 2 * p[4], wp = xs[3] + 2 * p[5];
  if (hp < p[0] || wp < p[1])
    return fail(c, KILN_SHAPE_MISMATCH, "x %s padded by %lldx%lld is smaller than the kernel %lldx%lld",
                sx, (long long)p[4], (long long)p[5], (long long)p[0], (long long)p[1]);
  out[0] = xs[0];
  out[1] = xs[1];
  out[2] = (hp - p[0]) / p[2] + 1;
  out[3] = (wp - p[1]) / p[3] + 1;
  return 1;
}

static int infer_pool(infer_ctx *c) {
  kiln_node *x = c->in[0];
  int64_t out[4];
  if (!need_float(c, 0, "x")) return 0;
  if (!pool_out_shape(c, x->ndim, x->shape, out)) return 0;
  set_out(c, x->dtype, 4, out);
  return 1;
}

/* MAXPOOL2D_BACKWARD (dy, x) -> x's shape; AVGPOOL2D_BACKWARD (dy) -> given. */
static int infer_pool_backward(infer_ctx *c) {
  kiln_node *dy = c->in[0];
  int nx;
  const int64_t *xs;
  if (!need_float(c, 0, "dy")) return 0;
  if (c->op == KILN_OP_MAXPOOL2D_BACKWARD) {
    if (!need_same_dtype(c, 0, 1)) return 0;
    nx = c->in[1]->ndim;
    xs = c->in[1]->shape;
  } else {
    if (!need_given_shape(c)) return 0;
    nx = c->given_ndim;
    xs = c->given_shape;
  }
  int64_t out[4];
  if (!pool_out_shape(c, nx, xs, out)) return 0;
  char sd[SHAPE_BUF], so[SHAPE_BUF];
  if (dy->ndim != 4 || memcmp(dy->shape, out, sizeof out) != 0)
    return fail(c, KILN_SHAPE_MISMATCH, "dy %s does not match the forward output %s", SHP(sd, dy),
                kiln__shape_str(so, sizeof so, 4, out));
  set_out(c, dy->dtype, nx, xs);
  return 1;
}

static int infer_fill(infer_ctx *c) {
  if (c->given_dtype == KILN_DTYPE_INVALID || !dtype_known(c->given_dtype))
    return fail(c, KILN_DTYPE_MISMATCH, "an output dtype is required, got %d", (int)c->given_dtype);
  if (!need_given_shape(c)) return 0;
  set_out(c, c->given_dtype, c->given_ndim, c->given_shape);
  return 1;
}

/* Arity of each op: {min, max} inputs; {-1, -1} for numbers not in ops.h. */
static void op_arity(kiln_op op, int *lo, int *hi) {
  *lo = *hi = -1;
  switch (op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV:
    case KILN_OP_RELU_BACKWARD: case KILN_OP_TANH_BACKWARD: case KILN_OP_SIGMOID_BACKWARD:
    case KILN_OP_MATMUL: case KILN_OP_SOFTMAX_BACKWARD: case KILN_OP_LOG_SOFTMAX_BACKWARD:
    case KILN_OP_CROSS_ENTROPY: case KILN_OP_CONV2D_BACKWARD_INPUT:
    case KILN_OP_CONV2D_BACKWARD_WEIGHT: case KILN_OP_MAXPOOL2D_BACKWARD:
      *lo = *hi = 2; break;
    case KILN_OP_NEG: case KILN_OP_RELU: case KILN_OP_TANH: case KILN_OP_SIGMOID:
    case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SCALE: case KILN_OP_SUM: case KILN_OP_MEAN:
    case KILN_OP_EXPAND: case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX: case KILN_OP_RESHAPE:
    case KILN_OP_TRANSPOSE: case KILN_OP_COPY: case KILN_OP_MAXPOOL2D: case KILN_OP_AVGPOOL2D:
    case KILN_OP_AVGPOOL2D_BACKWARD: case KILN_OP_INCREMENT: case KILN_OP_CAST:
      *lo = *hi = 1; break;
    case KILN_OP_CROSS_ENTROPY_BACKWARD: *lo = *hi = 3; break;
    case KILN_OP_CONV2D: *lo = 2; *hi = 3; break;
    case KILN_OP_FILL: *lo = *hi = 0; break;
    case KILN_OP_SGD: *lo = 2; *hi = 3; break;
    case KILN_OP_ADAM: *lo = 5; *hi = 6; break;
    default: if (!kiln__seq_arity(op, lo, hi)) kiln__tf_arity(op, lo, hi); break;
  }
}

static int infer(infer_ctx *c) {
  switch (c->op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV:
      return infer_binary(c);
    case KILN_OP_NEG: case KILN_OP_RELU: case KILN_OP_TANH: case KILN_OP_SIGMOID:
    case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SCALE:
      if (!need_float(c, 0, "x")) return 0;
      set_out(c, c->in[0]->dtype, c->in[0]->ndim, c->in[0]->shape);
      return 1;
    case KILN_OP_COPY:
      set_out(c, c->in[0]->dtype, c->in[0]->ndim, c->in[0]->shape);
      return 1;
    case KILN_OP_CAST: {
      kiln_dtype d = c->in[0]->dtype;
      if (d != KILN_U8 && d != KILN_I32 && d != KILN_F32)
        return fail(c, KILN_DTYPE_MISMATCH, "x must be u8, i32 or f32, got %s", kiln_dtype_name(d));
      if (c->given_dtype != KILN_DTYPE_INVALID && c->given_dtype != KILN_F32)
        return fail(c, KILN_DTYPE_MISMATCH, "the output is f32, not %s",
                    kiln_dtype_name(c->given_dtype));
      if (!isfinite(c->fp[0]) || !isfinite(c->fp[1]))
        return fail(c, KILN_INVALID_ARGUMENT, "scale %g and shift %g must be finite",
                    (double)c->fp[0], (double)c->fp[1]);
      set_out(c, KILN_F32, c->in[0]->ndim, c->in[0]->shape);
      return 1;
    }
    case KILN_OP_RELU_BACKWARD:
      if (!need_float(c, 0, "dy") || !need_same_dtype(c, 0, 1) ||
          !need_same_shape(c, 0, 1, "dy", "x"))
        return 0;
      set_out(c, c->in[0]->dtype, c->in[0]->ndim, c->in[0]->shape);
      return 1;
    case KILN_OP_TANH_BACKWARD: case KILN_OP_SIGMOID_BACKWARD:
      if (!need_float(c, 0, "dy") || !need_same_dtype(c, 0, 1) ||
          !need_same_shape(c, 0, 1, "dy", "y"))
        return 0;
      set_out(c, c->in[0]->dtype, c->in[0]->ndim, c->in[0]->shape);
      return 1;
    case KILN_OP_MATMUL: return infer_matmul(c);
    case KILN_OP_SUM: case KILN_OP_MEAN: return infer_reduce(c);
    case KILN_OP_EXPAND: return infer_expand(c);
    case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX:
    case KILN_OP_SOFTMAX_BACKWARD: case KILN_OP_LOG_SOFTMAX_BACKWARD:
      return infer_softmax(c);
    case KILN_OP_CROSS_ENTROPY: return infer_cross_entropy(c);
    case KILN_OP_CROSS_ENTROPY_BACKWARD: return infer_cross_entropy_backward(c);
    case KILN_OP_RESHAPE: return infer_reshape(c);
    case KILN_OP_TRANSPOSE: return infer_transpose(c);
    case KILN_OP_FILL: return infer_fill(c);
    case KILN_OP_CONV2D: return infer_conv2d(c);
    case KILN_OP_CONV2D_BACKWARD_INPUT: case KILN_OP_CONV2D_BACKWARD_WEIGHT:
      return infer_conv2d_backward(c);
    case KILN_OP_MAXPOOL2D: case KILN_OP_AVGPOOL2D: return infer_pool(c);
    case KILN_OP_MAXPOOL2D_BACKWARD: case KILN_OP_AVGPOOL2D_BACKWARD:
      return infer_pool_backward(c);
    case KILN_OP_SGD: case KILN_OP_ADAM: case KILN_OP_INCREMENT: {
      char msg[900];
      kiln_status st = kiln__optim_infer(c->op, c->n_in, c->in, c->ip, c->fp, msg, sizeof msg);
      if (st != KILN_OK) return fail(c, st, "%s", msg);
      set_out(c, c->in[0]->dtype, c->in[0]->ndim, c->in[0]->shape);
      return 1;
    }
    default: {
      int lo, hi;
      if (kiln__tf_arity(c->op, &lo, &hi)) {
        char msg[900];
        kiln_status st = kiln__tf_infer(c->op, c->n_in, c->in, c->ip, c->fp, &c->dtype, &c->ndim,
                                        c->shape, msg, sizeof msg);
        if (st != KILN_OK) return fail(c, st, "%s", msg);
        return 1;
      }
      if (!kiln__seq_arity(c->op, &lo, &hi))
        return fail(c, KILN_UNSUPPORTED, "unknown op number %d", (int)c->op);
      char msg[900];
      kiln_status st = kiln__seq_infer(c->op, c->n_in, c->in, c->ip, c->fp, c->given_ndim,
                                       c->given_shape, &c->dtype, &c->ndim, c->shape, msg, sizeof msg);
      if (st != KILN_OK) return fail(c, st, "%s", msg);
      return 1;
    }
  }
}

/* Ops whose output shape the caller must give. */
static int shape_is_given(kiln_op op) {
  return op == KILN_OP_EXPAND || op == KILN_OP_FILL || op == KILN_OP_RESHAPE ||
         op == KILN_OP_AVGPOOL2D_BACKWARD || op == KILN_OP_CONV2D_BACKWARD_INPUT ||
         op == KILN_OP_CONV2D_BACKWARD_WEIGHT || op == KILN_OP_EMBEDDING_BACKWARD ||
         op == KILN_OP_SLICE_BACKWARD;
}

kiln_node *kiln_node_create(kiln_graph *g, kiln_op op, int n_inputs, kiln_node *const *inputs,
                            const int64_t *ip, const float *fp, kiln_dtype out_dtype, int out_ndim,
                            const int64_t *out_shape) {
  if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "kiln_node_create: graph is NULL"); return NULL; }
  const char *name = kiln_op_name(op);
  int lo, hi;
  op_arity(op, &lo, &hi);
  if (lo < 0)
    return kiln__graph_fail(g, KILN_UNSUPPORTED, "kiln_node_create: unknown op number %d", (int)op);
  if (n_inputs < lo || n_inputs > hi) {
    if (lo == hi)
      return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: takes %d inputs, got %d", name, lo,
                              n_inputs);
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: takes %d to %d inputs, got %d", name,
                            lo, hi, n_inputs);
  }
  if (n_inputs > 0 && !inputs)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: inputs array is NULL", name);
  for (int i = 0; i < n_inputs; i++) {
    if (!inputs[i]) return NULL; /* an earlier error; its message stands */
    if (inputs[i]->graph != g)
      return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: input %d belongs to another graph",
                              name, i);
  }
  infer_ctx c;
  memset(&c, 0, sizeof c);
  c.g = g;
  c.op = op;
  c.name = name;
  c.n_in = n_inputs;
  c.in = inputs;
  if (ip) memcpy(c.ip, ip, sizeof c.ip);
  if (fp) memcpy(c.fp, fp, sizeof c.fp);
  c.given_dtype = out_dtype;
  c.given_ndim = out_ndim;
  c.given_shape = out_shape;
  if (!infer(&c)) return NULL;
  if (!numel_fits(c.ndim, c.shape)) {   /* e.g. broadcasting [2^40, 1] with [1, 2^40] */
    char a[SHAPE_BUF];
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: output shape %s has more elements than fit in 64 bits",
                            name, kiln__shape_str(a, sizeof a, c.ndim, c.shape));
  }
  /* A dtype or shape given for an op that infers its own must agree. */
  if (op != KILN_OP_FILL && out_dtype != KILN_DTYPE_INVALID && out_dtype != c.dtype)
    return kiln__graph_fail(g, KILN_DTYPE_MISMATCH, "%s: output dtype %s given, but the op produces %s",
                            name, kiln_dtype_name(out_dtype), kiln_dtype_name(c.dtype));
  if (!shape_is_given(op) && out_ndim >= 0) {
    int same = out_ndim == c.ndim && (out_ndim == 0 || out_shape);
    for (int i = 0; same && i < out_ndim; i++) same = out_shape[i] == c.shape[i];
    if (!same) {
      char a[SHAPE_BUF], b[SHAPE_BUF];
      return kiln__graph_fail(g, KILN_SHAPE_MISMATCH, "%s: output shape %s given, but the op produces %s",
                              name, out_shape ? kiln__shape_str(a, sizeof a, out_ndim, out_shape) : "(NULL)",
                              kiln__shape_str(b, sizeof b, c.ndim, c.shape));
    }
  }
  kiln_node *n = node_append(g, KILN__NODE_OP, op, c.dtype, c.ndim, c.shape, n_inputs, inputs,
                             c.ip, c.fp);
  if (n && (op == KILN_OP_SGD || op == KILN_OP_ADAM || op == KILN_OP_INCREMENT ||
            op == KILN_OP_ASSIGN))
    n->inplace = kiln__storage_root(inputs[0]);
  return n;
}

kiln_node *kiln__storage_root(kiln_node *n) {
  while (n && n->inplace) n = n->inplace;
  return n && (n->kind == KILN__NODE_PARAM || n->kind == KILN__NODE_STATE) ? n : NULL;
}

/* ---- convenience builders ------------------------------------------------ */

static kiln_node *build1(kiln_graph *g, kiln_op op, kiln_node *x, const int64_t *ip,
                         const float *fp) {
  return kiln_node_create(g, op, 1, &x, ip, fp, KILN_DTYPE_INVALID, -1, NULL);
}

static kiln_node *build2(kiln_graph *g, kiln_op op, kiln_node *a, kiln_node *b, const int64_t *ip) {
  kiln_node *in[2] = {a, b};
  return kiln_node_create(g, op, 2, in, ip, NULL, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_add(kiln_graph *g, kiln_node *a, kiln_node *b) { return build2(g, KILN_OP_ADD, a, b, NULL); }
kiln_node *kiln_sub(kiln_graph *g, kiln_node *a, kiln_node *b) { return build2(g, KILN_OP_SUB, a, b, NULL); }
kiln_node *kiln_mul(kiln_graph *g, kiln_node *a, kiln_node *b) { return build2(g, KILN_OP_MUL, a, b, NULL); }
kiln_node *kiln_div(kiln_graph *g, kiln_node *a, kiln_node *b) { return build2(g, KILN_OP_DIV, a, b, NULL); }
kiln_node *kiln_neg(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_NEG, x, NULL, NULL); }
kiln_node *kiln_relu(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_RELU, x, NULL, NULL); }
kiln_node *kiln_tanh(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_TANH, x, NULL, NULL); }
kiln_node *kiln_sigmoid(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_SIGMOID, x, NULL, NULL); }
kiln_node *kiln_exp(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_EXP, x, NULL, NULL); }
kiln_node *kiln_log(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_LOG, x, NULL, NULL); }

kiln_node *kiln_cast(kiln_graph *g, kiln_node *x, float a, float b) {
  float fp[KILN_OP_MAX_FPARAMS] = {a, b};
  return build1(g, KILN_OP_CAST, x, NULL, fp);
}

kiln_node *kiln_scale(kiln_graph *g, kiln_node *x, float a, float b) {
  float fp[KILN_OP_MAX_FPARAMS] = {a, b};
  return build1(g, KILN_OP_SCALE, x, NULL, fp);
}

kiln_node *kiln_matmul(kiln_graph *g, kiln_node *a, kiln_node *b, int transpose_a, int transpose_b) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {transpose_a, transpose_b};
  return build2(g, KILN_OP_MATMUL, a, b, ip);
}

kiln_node *kiln_sum(kiln_graph *g, kiln_node *x, uint32_t axes_mask, int keepdim) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {axes_mask, keepdim};
  return build1(g, KILN_OP_SUM, x, ip, NULL);
}

kiln_node *kiln_mean(kiln_graph *g, kiln_node *x, uint32_t axes_mask, int keepdim) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {axes_mask, keepdim};
  return build1(g, KILN_OP_MEAN, x, ip, NULL);
}

kiln_node *kiln_expand(kiln_graph *g, kiln_node *x, int ndim, const int64_t *shape) {
  return kiln_node_create(g, KILN_OP_EXPAND, 1, &x, NULL, NULL, KILN_DTYPE_INVALID, ndim, shape);
}

kiln_node *kiln_softmax(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_SOFTMAX, x, NULL, NULL); }
kiln_node *kiln_log_softmax(kiln_graph *g, kiln_node *x) { return build1(g, KILN_OP_LOG_SOFTMAX, x, NULL, NULL); }

kiln_node *kiln_cross_entropy(kiln_graph *g, kiln_node *logits, kiln_node *labels) {
  return build2(g, KILN_OP_CROSS_ENTROPY, logits, labels, NULL);
}

kiln_node *kiln_reshape(kiln_graph *g, kiln_node *x, int ndim, const int64_t *shape) {
  if (g && !x) return NULL;
  if (g && ndim < 0)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "reshape: rank %d is negative", ndim);
  return kiln_node_create(g, KILN_OP_RESHAPE, 1, &x, NULL, NULL, KILN_DTYPE_INVALID, ndim, shape);
}

kiln_node *kiln_transpose(kiln_graph *g, kiln_node *x, const int *perm) {
  if (!g || !x) {
    if (!g) kiln__error(KILN_INVALID_ARGUMENT, "transpose: graph is NULL");
    return NULL;
  }
  if (!perm && x->ndim > 0)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "transpose: perm is NULL");
  int64_t ip[KILN_OP_MAX_IPARAMS] = {0};
  for (int i = 0; i < x->ndim; i++) ip[i] = perm[i];
  return build1(g, KILN_OP_TRANSPOSE, x, ip, NULL);
}

kiln_node *kiln_flatten(kiln_graph *g, kiln_node *x) {
  if (!g || !x) {
    if (!g) kiln__error(KILN_INVALID_ARGUMENT, "flatten: graph is NULL");
    return NULL;
  }
  if (x->ndim < 1) {
    char s[SHAPE_BUF];
    return kiln__graph_fail(g, KILN_SHAPE_MISMATCH, "flatten: x %s needs rank >= 1", SHP(s, x));
  }
  int64_t shape[2] = {x->shape[0], kiln__numel(x->ndim - 1, x->shape + 1)};
  return kiln_reshape(g, x, 2, shape);
}

kiln_node *kiln_conv2d(kiln_graph *g, kiln_node *x, kiln_node *w, kiln_node *bias,
                       const kiln_conv2d_params *params) {
  kiln_conv2d_params d = {1, 1, 0, 0, 1, 1, 1};
  const kiln_conv2d_params *p = params ? params : &d;
  int64_t ip[KILN_OP_MAX_IPARAMS] = {p->stride_h, p->stride_w, p->pad_h, p->pad_w,
                                     p->dil_h,    p->dil_w,    p->groups};
  kiln_node *in[3] = {x, w, bias};
  return kiln_node_create(g, KILN_OP_CONV2D, bias ? 3 : 2, in, ip, NULL, KILN_DTYPE_INVALID, -1,
                          NULL);
}

static kiln_node *pool(kiln_graph *g, kiln_op op, kiln_node *x, const kiln_pool2d_params *p) {
  if (g && !x) return NULL;
  if (!p) {
    if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "%s: graph is NULL", kiln_op_name(op)); return NULL; }
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "%s: params is NULL (the kernel size is required)",
                            kiln_op_name(op));
  }
  int64_t ip[KILN_OP_MAX_IPARAMS] = {p->kernel_h, p->kernel_w, p->stride_h, p->stride_w,
                                     p->pad_h,    p->pad_w,
                                     op == KILN_OP_AVGPOOL2D ? p->count_include_pad : 0};
  return build1(g, op, x, ip, NULL);
}

kiln_node *kiln_maxpool2d(kiln_graph *g, kiln_node *x, const kiln_pool2d_params *params) {
  return pool(g, KILN_OP_MAXPOOL2D, x, params);
}

kiln_node *kiln_avgpool2d(kiln_graph *g, kiln_node *x, const kiln_pool2d_params *params) {
  return pool(g, KILN_OP_AVGPOOL2D, x, params);
}

/* ---- queries ------------------------------------------------------------- */

kiln_dtype kiln_node_dtype(const kiln_node *n) { return n ? n->dtype : KILN_DTYPE_INVALID; }

int kiln_node_shape(const kiln_node *n, int64_t *shape) {
  if (!n) return -1;
  if (shape)
    for (int i = 0; i < KILN_MAX_DIMS; i++) shape[i] = i < n->ndim ? n->shape[i] : 1;
  return n->ndim;
}

int64_t kiln_node_numel(const kiln_node *n) { return n ? kiln__numel(n->ndim, n->shape) : 0; }
kiln_op kiln_node_op(const kiln_node *n) { return n ? n->op : KILN_OP_NONE; }
const char *kiln_node_name(const kiln_node *n) { return n ? n->name : NULL; }

kiln_status kiln_graph_output(kiln_graph *g, kiln_node *n) {
  if (!g) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_graph_output: graph is NULL");
  if (!n) {
    if (g->status != KILN_OK)
      return kiln__error(g->status, "kiln_graph_output: node is NULL after an earlier error: %s",
                         g->error);
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_graph_output: node is NULL");
  }
  if (n->graph != g)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_graph_output: node %u belongs to another graph",
                       n->id);
  n->is_output = 1;
  return KILN_OK;
}
