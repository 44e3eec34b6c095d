/*
 * transformer.c - the transformer ops' shape inference (LAYERNORM, GELU,
 * ATTENTION, LR_SCHEDULE and their backward helpers, numbers 100..; see
 * kiln/ops.h) and the builders of kiln/transformer.h. graph.c calls
 * kiln__tf_arity() and kiln__tf_infer() for these numbers; autodiff.c has
 * their gradient rules.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kiln-impl.h"
#include "kiln/transformer.h"

int kiln__tf_arity(kiln_op op, int *lo, int *hi) {
  switch (op) {
    case KILN_OP_LAYERNORM: case KILN_OP_LAYERNORM_BACKWARD: case KILN_OP_ATTENTION_BACKWARD:
      *lo = *hi = 3; return 1;
    case KILN_OP_LAYERNORM_BACKWARD_PARAMS: case KILN_OP_GELU_BACKWARD:
      *lo = *hi = 2; return 1;
    case KILN_OP_GELU: case KILN_OP_ATTENTION: case KILN_OP_LR_SCHEDULE:
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

static int same_shape(const kiln_node *a, const kiln_node *b) {
  return a->ndim == b->ndim && memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

/* Every input f32 (names: a comma-free list of roles, one per input). */
static kiln_status need_f32(int n_in, kiln_node *const *in, const char *const *role, char *msg,
                            size_t size) {
  for (int i = 0; i < n_in; i++)
    if (in[i]->dtype != KILN_F32)
      return msgf(msg, size, KILN_DTYPE_MISMATCH, "%s must be f32, got %s", role[i],
                  kiln_dtype_name(in[i]->dtype));
  return KILN_OK;
}

static void copy_shape(const kiln_node *n, kiln_dtype *dtype, int *ndim, int64_t *shape) {
  *dtype = KILN_F32;
  *ndim = n->ndim;
  memcpy(shape, n->shape, sizeof(int64_t) * (size_t)n->ndim);
}

/* x [..., C] (rank >= 1) and, if gamma != NULL, gamma [C] (beta likewise). */
static kiln_status check_rows(const char *xrole, const kiln_node *x, const kiln_node *gamma,
                              const kiln_node *beta, char *msg, size_t size) {
  char a[SB], b[SB], c[SB];
  if (x->ndim < 1) return msgf(msg, size, KILN_SHAPE_MISMATCH, "%s %s needs rank >= 1", xrole, SHS(a, x));
  int64_t C = x->shape[x->ndim - 1];
  if ((gamma && (gamma->ndim != 1 || gamma->shape[0] != C)) ||
      (beta && (beta->ndim != 1 || beta->shape[0] != C)))
    return msgf(msg, size, KILN_SHAPE_MISMATCH,
                "gamma %s%s%s must be [C] = [%lld], the last axis of %s %s", SHS(a, gamma),
                beta ? " and beta " : "", beta ? SHS(b, beta) : "", (long long)C, xrole, SHS(c, x));
  return KILN_OK;
}

static kiln_status check_eps(const float *fp, char *msg, size_t size) {
  if (!(fp[0] > 0.0f) || isinf(fp[0]))
    return msgf(msg, size, KILN_INVALID_ARGUMENT, "eps = fp[0] = %g must be finite and > 0 (LayerNorm uses 1e-5)",
                (double)fp[0]);
  return KILN_OK;
}

/* qkv [B, T, 3C] with H = ip[0] heads dividing C, causal ip[1] in {0, 1},
 * a finite scale fp[0]. Writes B, T, C. */
static kiln_status check_attention(const kiln_node *qkv, const int64_t *ip, const float *fp,
                                   int64_t *B, int64_t *T, int64_t *C, char *msg, size_t size) {
  char a[SB];
  if (qkv->ndim != 3 || qkv->shape[2] % 3 != 0)
    return msgf(msg, size, KILN_SHAPE_MISMATCH,
                "qkv %s must be [B, T, 3C]: rank 3 with a last axis that is a multiple of 3 (q, k, v side by side)",
                SHS(a, qkv));
  *B = qkv->shape[0];
  *T = qkv->shape[1];
  *C = qkv->shape[2] / 3;
  if (ip[0] < 1 || *C % ip[0] != 0)
    return msgf(msg, size, KILN_INVALID_ARGUMENT, "%lld heads (ip[0]) must be >= 1 and divide C = %lld (qkv %s)",
                (long long)ip[0], (long long)*C, SHS(a, qkv));
  if (ip[1] != 0 && ip[1] != 1)
    return msgf(msg, size, KILN_INVALID_ARGUMENT, "causal (ip[1]) must be 0 or 1, got %lld", (long long)ip[1]);
  if (!isfinite(fp[0]))
    return msgf(msg, size, KILN_INVALID_ARGUMENT, "scale (fp[0]) must be finite (0 means 1 / sqrt(D)), got %g",
                (double)fp[0]);
  return KILN_OK;
}

kiln_status kiln__tf_infer(kiln_op op, int n_in, kiln_node *const *in, int64_t *ip,
                           const float *fp, kiln_dtype *dtype, int *ndim, int64_t *shape,
                           char *msg, size_t size) {
  char a[SB], b[SB], c[SB], d[SB];
  kiln_status st;
  switch (op) {
    case KILN_OP_LAYERNORM: {
      static const char *const role[] = {"x", "gamma", "beta"};
      if ((st = need_f32(n_in, in, role, msg, size))) return st;
      if ((st = check_rows("x", in[0], in[1], in[2], msg, size))) return st;
      if ((st = check_eps(fp, msg, size))) return st;
      copy_shape(in[0], dtype, ndim, shape);
      return KILN_OK;
    }
    case KILN_OP_LAYERNORM_BACKWARD: case KILN_OP_LAYERNORM_BACKWARD_PARAMS: {
      static const char *const role[] = {"dy", "x", "gamma"};
      if ((st = need_f32(n_in, in, role, msg, size))) return st;
      if (!same_shape(in[0], in[1]))
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "dy %s and x %s must have one shape", SHS(a, in[0]),
                    SHS(b, in[1]));
      if ((st = check_rows("x", in[1], n_in == 3 ? in[2] : NULL, NULL, msg, size))) return st;
      if ((st = check_eps(fp, msg, size))) return st;
      if (op == KILN_OP_LAYERNORM_BACKWARD) {
        copy_shape(in[1], dtype, ndim, shape);
      } else {
        *dtype = KILN_F32;
        *ndim = 2;
        shape[0] = 2;
        shape[1] = in[1]->shape[in[1]->ndim - 1];
      }
      return KILN_OK;
    }
    case KILN_OP_GELU: case KILN_OP_GELU_BACKWARD: {
      const char *const role[] = {op == KILN_OP_GELU ? "x" : "dy", "x"};
      if ((st = need_f32(n_in, in, role, msg, size))) return st;
      if (n_in == 2 && !same_shape(in[0], in[1]))
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "dy %s and x %s must have one shape", SHS(a, in[0]),
                    SHS(b, in[1]));
      if (ip[0] != 0 && ip[0] != 1)
        return msgf(msg, size, KILN_INVALID_ARGUMENT,
                    "approximate (ip[0]) must be 0 (erf) or 1 (tanh), got %lld", (long long)ip[0]);
      copy_shape(in[n_in - 1], dtype, ndim, shape);
      return KILN_OK;
    }
    case KILN_OP_ATTENTION: case KILN_OP_ATTENTION_BACKWARD: {
      static const char *const role[] = {"qkv"}, *const role_b[] = {"dy", "qkv", "y"};
      int64_t B = 0, T = 0, C = 0;
      if ((st = need_f32(n_in, in, op == KILN_OP_ATTENTION ? role : role_b, msg, size))) return st;
      kiln_node *qkv = in[op == KILN_OP_ATTENTION ? 0 : 1];
      if ((st = check_attention(qkv, ip, fp, &B, &T, &C, msg, size))) return st;
      *dtype = KILN_F32;
      *ndim = 3;
      shape[0] = B;
      shape[1] = T;
      shape[2] = op == KILN_OP_ATTENTION ? C : 3 * C;
      if (op == KILN_OP_ATTENTION_BACKWARD) {
        int64_t want[3] = {B, T, C};
        kiln_node *dy = in[0], *y = in[2];
        int ok = dy->ndim == 3 && y->ndim == 3 && !memcmp(dy->shape, want, sizeof want) &&
                 !memcmp(y->shape, want, sizeof want);
        if (!ok)
          return msgf(msg, size, KILN_SHAPE_MISMATCH, "dy %s and y %s must both be [B, T, C] = %s for qkv %s",
                      SHS(a, dy), SHS(b, y), kiln__shape_str(c, sizeof c, 3, want), SHS(d, qkv));
      }
      return KILN_OK;
    }
    case KILN_OP_LR_SCHEDULE: {
      kiln_node *step = in[0];
      if (step->dtype != KILN_F32 || kiln__numel(step->ndim, step->shape) != 1)
        return msgf(msg, size, KILN_SHAPE_MISMATCH, "step must be a single-element f32 node, got %s %s",
                    kiln_dtype_name(step->dtype), SHS(a, step));
      if (!isfinite(fp[0]) || !isfinite(fp[1]))
        return msgf(msg, size, KILN_INVALID_ARGUMENT, "max_lr %g and min_lr %g must be finite",
                    (double)fp[0], (double)fp[1]);
      if (ip[0] < 0 || ip[1] < ip[0])
        return msgf(msg, size, KILN_INVALID_ARGUMENT,
                    "need 0 <= warmup (ip[0]) <= decay_steps (ip[1]), got warmup %lld and decay_steps %lld",
                    (long long)ip[0], (long long)ip[1]);
      *dtype = KILN_F32;
      *ndim = 0;
      return KILN_OK;
    }
    default:
      return msgf(msg, size, KILN_INTERNAL, "not a transformer op");
  }
}

/* ---- builders ------------------------------------------------------------ */

kiln_node *kiln_layernorm(kiln_graph *g, kiln_node *x, kiln_node *gamma, kiln_node *beta,
                          float eps) {
  float fp[KILN_OP_MAX_FPARAMS] = {eps};
  kiln_node *in[3] = {x, gamma, beta};
  return kiln_node_create(g, KILN_OP_LAYERNORM, 3, in, NULL, fp, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_gelu(kiln_graph *g, kiln_node *x, int approximate) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {approximate};
  return kiln_node_create(g, KILN_OP_GELU, 1, &x, ip, NULL, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_attention(kiln_graph *g, kiln_node *qkv, int n_head, int causal, float scale) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {n_head, causal};
  float fp[KILN_OP_MAX_FPARAMS] = {scale};
  return kiln_node_create(g, KILN_OP_ATTENTION, 1, &qkv, ip, fp, KILN_DTYPE_INVALID, -1, NULL);
}

kiln_node *kiln_lr_schedule(kiln_graph *g, kiln_node *step, float max_lr, float min_lr,
                            int64_t warmup, int64_t decay_steps) {
  int64_t ip[KILN_OP_MAX_IPARAMS] = {warmup, decay_steps};
  float fp[KILN_OP_MAX_FPARAMS] = {max_lr, min_lr};
  return kiln_node_create(g, KILN_OP_LR_SCHEDULE, 1, &step, ip, fp, KILN_DTYPE_INVALID, -1, NULL);
}
