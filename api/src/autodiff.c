/*
 * autodiff.c - reverse-mode differentiation of a static graph.
 *
 * kiln_graph_backward(loss) walks the nodes in reverse creation order (a
 * valid reverse topological order, since a node's inputs always exist
 * before it) and appends, for each node on a path from a param to the loss,
 * the nodes computing the gradients of its inputs. Contributions to one
 * node are accumulated with ADD. Broadcast inputs get their gradient summed
 * back to their own shape (reduce_to). Only f32 is differentiated.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"
#include "kiln/rnn.h"

typedef struct backward_ctx {
  kiln_graph *g;
  kiln_node **grad;   /* [n_fwd]: gradient accumulated for each forward node */
  char *needs;        /* [n_fwd]: 1 if the node depends on a param and feeds the loss */
  uint32_t n_fwd;     /* nodes that existed before backward started */
} backward_ctx;

/* Sums dy over the axes along which `like` was broadcast to dy's shape and
 * reshapes the result to like's shape. */
static kiln_node *reduce_to(kiln_graph *g, kiln_node *dy, const kiln_node *like) {
  if (!dy) return NULL;
  if (dy->ndim == like->ndim && memcmp(dy->shape, like->shape, sizeof dy->shape) == 0) return dy;
  uint32_t mask = 0;
  int off = dy->ndim - like->ndim;
  for (int i = 0; i < dy->ndim; i++) {
    int li = i - off;
    if (li < 0 || (like->shape[li] == 1 && dy->shape[i] != 1)) mask |= 1u << i;
  }
  kiln_node *r = mask ? kiln_sum(g, dy, mask, 1) : dy;
  return kiln_reshape(g, r, like->ndim, like->shape);
}

/* Adds contribution d to the gradient of forward node x. */
static void accumulate(backward_ctx *b, kiln_node *x, kiln_node *d) {
  if (!d || !b->needs[x->id]) return;
  kiln_node **slot = &b->grad[x->id];
  *slot = *slot ? kiln_add(b->g, *slot, d) : d;
}

static kiln_node *make(kiln_graph *g, kiln_op op, int n, kiln_node *const *in, const int64_t *ip,
                       const kiln_node *shape_of) {
  return kiln_node_create(g, op, n, in, ip, NULL, KILN_DTYPE_INVALID,
                          shape_of ? shape_of->ndim : -1, shape_of ? shape_of->shape : NULL);
}

/* Appends the gradient nodes of the inputs of op node y, given dy. */
static kiln_status backprop(backward_ctx *b, kiln_node *y, kiln_node *dy) {
  kiln_graph *g = b->g;
  kiln_node *const *in = y->inputs;
  kiln_node *x = in[0], *w = y->n_inputs > 1 ? in[1] : NULL;
  int nx = b->needs[x->id], nw = w && b->needs[w->id];
  switch (y->op) {
    case KILN_OP_ADD:
      if (nx) accumulate(b, x, reduce_to(g, dy, x));
      if (nw) accumulate(b, w, reduce_to(g, dy, w));
      break;
    case KILN_OP_SUB:
      if (nx) accumulate(b, x, reduce_to(g, dy, x));
      if (nw) accumulate(b, w, reduce_to(g, kiln_neg(g, dy), w));
      break;
    case KILN_OP_MUL:
      if (nx) accumulate(b, x, reduce_to(g, kiln_mul(g, dy, w), x));
      if (nw) accumulate(b, w, reduce_to(g, kiln_mul(g, dy, x), w));
      break;
    case KILN_OP_DIV: /* y = a / b: da = dy / b, db = -dy * y / b */
      if (nx) accumulate(b, x, reduce_to(g, kiln_div(g, dy, w), x));
      if (nw) accumulate(b, w, reduce_to(g, kiln_neg(g, kiln_div(g, kiln_mul(g, dy, y), w)), w));
      break;
    case KILN_OP_NEG: accumulate(b, x, kiln_neg(g, dy)); break;
    case KILN_OP_RELU: {
      /* y > 0 exactly where x > 0 (NaN and -0 included: relu makes them
       * 0), so the mask is read from y: x need not live until the backward
       * pass (a conv's output, often the largest value of a CNN), and the
       * CPU plugin's fused maxpool2d_backward + relu_backward finds y in
       * cache, as the pooling just read it. */
      kiln_node *a[2] = {dy, y};
      accumulate(b, x, make(g, KILN_OP_RELU_BACKWARD, 2, a, NULL, NULL));
      break;
    }
    case KILN_OP_TANH: case KILN_OP_SIGMOID: {
      kiln_node *a[2] = {dy, y};
      kiln_op op = y->op == KILN_OP_TANH ? KILN_OP_TANH_BACKWARD : KILN_OP_SIGMOID_BACKWARD;
      accumulate(b, x, make(g, op, 2, a, NULL, NULL));
      break;
    }
    case KILN_OP_EXP: accumulate(b, x, kiln_mul(g, dy, y)); break;
    case KILN_OP_LOG: accumulate(b, x, kiln_div(g, dy, x)); break;
    case KILN_OP_SCALE: accumulate(b, x, kiln_scale(g, dy, y->fp[0], 0.0f)); break;
    case KILN_OP_CAST:   /* integers carry no gradient (needs[] is 0 for them) */
      if (x->dtype == KILN_F32) accumulate(b, x, kiln_scale(g, dy, y->fp[0], 0.0f));
      break;
    case KILN_OP_MATMUL: {
      /* C = op(a) op(b); dA = dC B^T, dB = A^T dC, written on the stored
       * (possibly transposed) a and b; batch broadcasting summed back. */
      int ta = (int)y->ip[0], tb = (int)y->ip[1];
      if (nx) {
        kiln_node *da = ta ? kiln_matmul(g, w, dy, tb, 1) : kiln_matmul(g, dy, w, 0, !tb);
        accumulate(b, x, reduce_to(g, da, x));
      }
      if (nw) {
        kiln_node *db = tb ? kiln_matmul(g, dy, x, 1, ta) : kiln_matmul(g, x, dy, !ta, 0);
        accumulate(b, w, reduce_to(g, db, w));
      }
      break;
    }
    case KILN_OP_SUM: case KILN_OP_MEAN: {
      uint32_t mask = (uint32_t)y->ip[0];
      kiln_node *d = dy;
      int64_t kshape[KILN_MAX_DIMS], count = 1;
      for (int i = 0; i < x->ndim; i++) {
        int reduced = (mask >> i) & 1u;
        kshape[i] = reduced ? 1 : x->shape[i];
        if (reduced) count *= x->shape[i];
      }
      if (!y->ip[1]) d = kiln_reshape(g, d, x->ndim, kshape);
      d = kiln_expand(g, d, x->ndim, x->shape);
      if (y->op == KILN_OP_MEAN) d = kiln_scale(g, d, (float)(1.0 / (double)count), 0.0f);
      accumulate(b, x, d);
      break;
    }
    case KILN_OP_EXPAND: accumulate(b, x, reduce_to(g, dy, x)); break;
    case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX: {
      kiln_node *a[2] = {dy, y};
      kiln_op op = y->op == KILN_OP_SOFTMAX ? KILN_OP_SOFTMAX_BACKWARD : KILN_OP_LOG_SOFTMAX_BACKWARD;
      accumulate(b, x, make(g, op, 2, a, NULL, NULL));
      break;
    }
    case KILN_OP_CROSS_ENTROPY: { /* labels (input 1) get no gradient */
      kiln_node *a[3] = {dy, x, w};
      accumulate(b, x, make(g, KILN_OP_CROSS_ENTROPY_BACKWARD, 3, a, NULL, NULL));
      break;
    }
    case KILN_OP_RESHAPE: accumulate(b, x, kiln_reshape(g, dy, x->ndim, x->shape)); break;
    case KILN_OP_TRANSPOSE: {
      int inv[KILN_MAX_DIMS];
      for (int i = 0; i < x->ndim; i++) inv[y->ip[i]] = i;
      accumulate(b, x, kiln_transpose(g, dy, inv));
      break;
    }
    case KILN_OP_COPY: accumulate(b, x, dy); break;
    case KILN_OP_CONV2D: {
      if (nx) {
        kiln_node *a[2] = {dy, w};
        accumulate(b, x, make(g, KILN_OP_CONV2D_BACKWARD_INPUT, 2, a, y->ip, x));
      }
      if (nw) {
        kiln_node *a[2] = {dy, x};
        accumulate(b, w, make(g, KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, a, y->ip, w));
      }
      if (y->n_inputs == 3 && b->needs[in[2]->id])
        accumulate(b, in[2], kiln_sum(g, dy, (1u << 0) | (1u << 2) | (1u << 3), 0));
      break;
    }
    case KILN_OP_MAXPOOL2D: {
      kiln_node *a[2] = {dy, x};
      accumulate(b, x, make(g, KILN_OP_MAXPOOL2D_BACKWARD, 2, a, y->ip, NULL));
      break;
    }
    case KILN_OP_AVGPOOL2D:
      accumulate(b, x, make(g, KILN_OP_AVGPOOL2D_BACKWARD, 1, &dy, y->ip, x));
      break;
    case KILN_OP_EMBEDDING: { /* indices (input 1) get no gradient */
      kiln_node *a[2] = {dy, w};
      accumulate(b, x, make(g, KILN_OP_EMBEDDING_BACKWARD, 2, a, NULL, x));
      break;
    }
    case KILN_OP_SLICE:
      accumulate(b, x, make(g, KILN_OP_SLICE_BACKWARD, 1, &dy, y->ip, x));
      break;
    case KILN_OP_DROPOUT: { /* the same mask: dropout of dy with y's params */
      kiln_node *a[2] = {dy, w};
      accumulate(b, x, kiln_node_create(g, KILN_OP_DROPOUT, 2, a, y->ip, y->fp, KILN_DTYPE_INVALID,
                                        -1, NULL));
      break;
    }
    case KILN_OP_LAYERNORM: { /* dx by LAYERNORM_BACKWARD; dgamma, dbeta: rows of one [2, C] */
      kiln_node *gamma = in[1], *beta = in[2];
      if (nx) {
        kiln_node *a[3] = {dy, x, gamma};
        accumulate(b, x, kiln_node_create(g, KILN_OP_LAYERNORM_BACKWARD, 3, a, NULL, y->fp,
                                          KILN_DTYPE_INVALID, -1, NULL));
      }
      if (b->needs[gamma->id] || b->needs[beta->id]) {
        kiln_node *a[2] = {dy, x};
        kiln_node *p = kiln_node_create(g, KILN_OP_LAYERNORM_BACKWARD_PARAMS, 2, a, NULL, y->fp,
                                        KILN_DTYPE_INVALID, -1, NULL);
        if (b->needs[gamma->id])
          accumulate(b, gamma, kiln_reshape(g, kiln_slice(g, p, 0, 0, 1), gamma->ndim, gamma->shape));
        if (b->needs[beta->id])
          accumulate(b, beta, kiln_reshape(g, kiln_slice(g, p, 0, 1, 1), beta->ndim, beta->shape));
      }
      break;
    }
    case KILN_OP_GELU: {
      kiln_node *a[2] = {dy, x};
      accumulate(b, x, make(g, KILN_OP_GELU_BACKWARD, 2, a, y->ip, NULL));
      break;
    }
    case KILN_OP_ATTENTION: {
      kiln_node *a[3] = {dy, x, y};
      accumulate(b, x, kiln_node_create(g, KILN_OP_ATTENTION_BACKWARD, 3, a, y->ip, y->fp,
                                        KILN_DTYPE_INVALID, -1, NULL));
      break;
    }
    default:
      kiln__graph_fail(g, KILN_UNSUPPORTED,
                       "backward: node %u (%s) lies between a param and the loss but has no gradient rule",
                       y->id, kiln_op_name(y->op));
      return KILN_UNSUPPORTED;
  }
  return g->status;
}

kiln_status kiln_graph_backward(kiln_graph *g, kiln_node *loss) {
  if (!g) return kiln__error(KILN_INVALID_ARGUMENT, "backward: graph is NULL");
  if (g->status != KILN_OK)
    return kiln__error(g->status, "backward: the graph has an earlier error: %s", g->error);
  if (!loss) return kiln__error(KILN_INVALID_ARGUMENT, "backward: loss is NULL");
  if (loss->graph != g)
    return kiln__error(KILN_INVALID_ARGUMENT, "backward: loss belongs to another graph");
  if (g->has_backward)
    return kiln__error(KILN_INVALID_STATE, "backward: already called on this graph (call it at most once)");
  if (loss->dtype != KILN_F32 || kiln__numel(loss->ndim, loss->shape) != 1) {
    char s[160];
    return kiln__error(loss->dtype != KILN_F32 ? KILN_DTYPE_MISMATCH : KILN_SHAPE_MISMATCH,
                       "backward: loss must be a scalar or single-element f32 node, got %s %s",
                       kiln_dtype_name(loss->dtype), kiln__shape_str(s, sizeof s, loss->ndim, loss->shape));
  }

  backward_ctx b = {g, NULL, NULL, g->n_nodes};
  kiln_status st = KILN_OK;
  char *feeds = NULL;
  b.grad = kiln__calloc(b.n_fwd, sizeof *b.grad);
  b.needs = kiln__calloc(b.n_fwd, 1);
  feeds = kiln__calloc(b.n_fwd, 1);
  if (!b.grad || !b.needs || !feeds) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  /* depends[i]: node i depends on some param (forward sweep). */
  for (uint32_t i = 0; i <= loss->id; i++) {
    kiln_node *n = g->nodes[i];
    char dep = n->kind == KILN__NODE_PARAM;
    for (int k = 0; k < n->n_inputs && !dep; k++) dep = b.needs[n->inputs[k]->id];
    b.needs[i] = dep;
  }
  /* feeds[i]: the loss depends on node i (backward sweep). */
  feeds[loss->id] = 1;
  for (uint32_t i = loss->id + 1; i-- > 0;) {
    if (!feeds[i]) continue;
    kiln_node *n = g->nodes[i];
    for (int k = 0; k < n->n_inputs; k++) feeds[n->inputs[k]->id] = 1;
  }
  for (uint32_t i = 0; i <= loss->id; i++) b.needs[i] = b.needs[i] && feeds[i];

  g->has_backward = 1;
  if (!b.needs[loss->id]) goto done; /* the loss depends on no param */

  b.grad[loss->id] = kiln_fill(g, KILN_F32, loss->ndim, loss->shape, 1.0f);
  for (uint32_t i = loss->id + 1; i-- > 0;) {
    kiln_node *n = g->nodes[i];
    kiln_node *dy = b.grad[i];
    if (!b.needs[i] || !dy) continue;
    if (n->kind == KILN__NODE_PARAM) {
      n->grad = dy;
      continue;
    }
    if (n->kind != KILN__NODE_OP) continue;
    if (backprop(&b, n, dy) != KILN_OK) break;
  }
done:
  st = g->status;
  if (st != KILN_OK) kiln__error(st, "backward: %s", g->error);
fail:
  free(feeds);
  free(b.needs);
  free(b.grad);
  return st;
}

kiln_node *kiln_grad(kiln_graph *g, kiln_node *param) {
  if (!g) { kiln__error(KILN_INVALID_ARGUMENT, "kiln_grad: graph is NULL"); return NULL; }
  if (!param) return NULL;
  if (param->graph != g)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT, "kiln_grad: node %u belongs to another graph",
                            param->id);
  if (param->kind != KILN__NODE_PARAM)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT,
                            "kiln_grad: node %u (%s) is not a kiln_param; only params have gradients",
                            param->id, param->op ? kiln_op_name(param->op) : "leaf");
  if (!g->has_backward)
    return kiln__graph_fail(g, KILN_INVALID_STATE,
                            "kiln_grad: call kiln_graph_backward() before asking for '%s''s gradient",
                            param->name ? param->name : "(unnamed)");
  return param->grad;
}
