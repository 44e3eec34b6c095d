/*
 * optimizer.c - optimizer update nodes: SGD, Adam/AdamW and the step counter
 * increment. Each is an IN-PLACE node (kiln/ops.h): its output is the
 * persistent tensor it writes, so the compiled graph updates the parameter
 * and the optimizer state in their own storage, once per run.
 */
#include <stdio.h>
#include <string.h>

#include "kiln-impl.h"

static const char *kind_word(const kiln_node *n) {
  switch (n->kind) {
    case KILN__NODE_INPUT: return "an input";
    case KILN__NODE_PARAM: return "a param";
    case KILN__NODE_STATE: return "a state";
    default: return n->inplace ? "an in-place update" : "a computed node";
  }
}

static const char *leaf_name(const kiln_node *n) { return n && n->name ? n->name : "(unnamed)"; }

/* `n` must be persistent storage whose root is of `kind`, f32, and (if
 * like != NULL) of like's shape. */
static kiln_status check_persistent(const char *role, kiln_node *n, kiln__node_kind kind,
                                    const kiln_node *like, char *msg, size_t size) {
  kiln_node *root = kiln__storage_root(n);
  const char *want = kind == KILN__NODE_PARAM ? "kiln_param" : "kiln_state";
  if (!root || root->kind != kind) {
    snprintf(msg, size, "%s must be a %s node (or an in-place update of one), got %s", role, want,
             kind_word(n));
    return KILN_INVALID_ARGUMENT;
  }
  if (n->dtype != KILN_F32) {
    snprintf(msg, size, "%s '%s' must be f32, got %s", role, leaf_name(root), kiln_dtype_name(n->dtype));
    return KILN_DTYPE_MISMATCH;
  }
  if (like && (like->ndim != n->ndim || memcmp(like->shape, n->shape, sizeof n->shape) != 0)) {
    char a[160], b[160];
    snprintf(msg, size, "%s '%s' %s must have the param's shape %s", role, leaf_name(root),
             kiln__shape_str(a, sizeof a, n->ndim, n->shape),
             kiln__shape_str(b, sizeof b, like->ndim, like->shape));
    return KILN_SHAPE_MISMATCH;
  }
  return KILN_OK;
}

static kiln_status check_grad(kiln_node *grad, const kiln_node *param, char *msg, size_t size) {
  if (grad->dtype != param->dtype) {
    snprintf(msg, size, "grad dtype %s differs from the param's %s", kiln_dtype_name(grad->dtype),
             kiln_dtype_name(param->dtype));
    return KILN_DTYPE_MISMATCH;
  }
  if (grad->ndim != param->ndim || memcmp(grad->shape, param->shape, sizeof grad->shape) != 0) {
    char a[160], b[160];
    snprintf(msg, size, "grad %s and param '%s' %s differ in shape",
             kiln__shape_str(a, sizeof a, grad->ndim, grad->shape),
             leaf_name(kiln__storage_root((kiln_node *)param)),
             kiln__shape_str(b, sizeof b, param->ndim, param->shape));
    return KILN_SHAPE_MISMATCH;
  }
  return KILN_OK;
}

static kiln_status check_scalar(const char *role, const kiln_node *n, char *msg, size_t size) {
  if (n->dtype != KILN_F32 || kiln__numel(n->ndim, n->shape) != 1) {
    char a[160];
    snprintf(msg, size, "%s must be a single-element f32 node, got %s %s", role,
             kiln_dtype_name(n->dtype), kiln__shape_str(a, sizeof a, n->ndim, n->shape));
    return n->dtype != KILN_F32 ? KILN_DTYPE_MISMATCH : KILN_SHAPE_MISMATCH;
  }
  return KILN_OK;
}

kiln_status kiln__optim_infer(kiln_op op, int n_in, kiln_node *const *in, const int64_t *ip,
                              const float *fp, char *msg, size_t size) {
  kiln_status st;
  (void)fp;
  switch (op) {
    case KILN_OP_INCREMENT:
      return check_persistent("x", in[0], KILN__NODE_STATE, NULL, msg, size);
    case KILN_OP_SGD:
      if ((st = check_persistent("param", in[0], KILN__NODE_PARAM, NULL, msg, size))) return st;
      if ((st = check_grad(in[1], in[0], msg, size))) return st;
      if (n_in == 3 && (st = check_persistent("velocity", in[2], KILN__NODE_STATE, in[0], msg, size)))
        return st;
      if (n_in == 2 && fp[1] != 0.0f) {
        snprintf(msg, size, "momentum %g needs a velocity state", (double)fp[1]);
        return KILN_INVALID_ARGUMENT;
      }
      if (ip[0] != 0 && ip[0] != 1) {
        snprintf(msg, size, "nesterov must be 0 or 1, got %lld", (long long)ip[0]);
        return KILN_INVALID_ARGUMENT;
      }
      return KILN_OK;
    case KILN_OP_ADAM:
      if ((st = check_persistent("param", in[0], KILN__NODE_PARAM, NULL, msg, size))) return st;
      if ((st = check_grad(in[1], in[0], msg, size))) return st;
      if ((st = check_persistent("m", in[2], KILN__NODE_STATE, in[0], msg, size))) return st;
      if ((st = check_persistent("v", in[3], KILN__NODE_STATE, in[0], msg, size))) return st;
      if ((st = check_persistent("step", in[4], KILN__NODE_STATE, NULL, msg, size))) return st;
      if ((st = check_scalar("step", in[4], msg, size))) return st;
      if (n_in == 6 && (st = check_scalar("lr", in[5], msg, size))) return st;
      if (kiln__storage_root(in[2]) == kiln__storage_root(in[3])) {
        snprintf(msg, size, "m and v are the same state '%s'", leaf_name(kiln__storage_root(in[2])));
        return KILN_INVALID_ARGUMENT;
      }
      if (ip[0] != 0 && ip[0] != 1) {
        snprintf(msg, size, "decoupled must be 0 or 1, got %lld", (long long)ip[0]);
        return KILN_INVALID_ARGUMENT;
      }
      if (!(fp[1] >= 0.0f && fp[1] < 1.0f) || !(fp[2] >= 0.0f && fp[2] < 1.0f) || !(fp[3] > 0.0f)) {
        snprintf(msg, size, "beta1 %g and beta2 %g must lie in [0, 1) and eps %g must be > 0",
                 (double)fp[1], (double)fp[2], (double)fp[3]);
        return KILN_INVALID_ARGUMENT;
      }
      return KILN_OK;
    default:
      snprintf(msg, size, "not an optimizer op");
      return KILN_INTERNAL;
  }
}

kiln_node *kiln_sgd_update(kiln_graph *g, kiln_node *param, kiln_node *grad, kiln_node *velocity,
                           float lr, float momentum, float weight_decay, int nesterov) {
  if (g && (!param || !grad)) return NULL; /* an earlier error, or no gradient */
  if (g && !velocity && momentum != 0.0f)
    return kiln__graph_fail(g, KILN_INVALID_ARGUMENT,
                            "sgd: momentum %g needs a velocity state (pass a kiln_state of the param's shape)",
                            (double)momentum);
  int64_t ip[KILN_OP_MAX_IPARAMS] = {nesterov};
  float fp[KILN_OP_MAX_FPARAMS] = {lr, momentum, weight_decay, 0.0f};
  kiln_node *in[3] = {param, grad, velocity};
  return kiln_node_create(g, KILN_OP_SGD, velocity ? 3 : 2, in, ip, fp, KILN_DTYPE_INVALID, -1,
                          NULL);
}

kiln_node *kiln_adam_update(kiln_graph *g, kiln_node *param, kiln_node *grad, kiln_node *m,
                            kiln_node *v, kiln_node *step, kiln_node *lr,
                            const kiln_adam_options *opts) {
  kiln_adam_options d = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0};
  const kiln_adam_options *o = opts ? opts : &d;
  int64_t ip[KILN_OP_MAX_IPARAMS] = {o->decoupled};
  float fp[KILN_OP_MAX_FPARAMS] = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay};
  kiln_node *in[6] = {param, grad, m, v, step, lr};
  return kiln_node_create(g, KILN_OP_ADAM, lr ? 6 : 5, in, ip, fp, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_increment(kiln_graph *g, kiln_node *state, float amount) {
  float fp[KILN_OP_MAX_FPARAMS] = {amount};
  return kiln_node_create(g, KILN_OP_INCREMENT, 1, &state, NULL, fp, KILN_DTYPE_INVALID, -1, NULL);
}
