/*
 * optim.c - optimizer updates, IN-PLACE on persistent tensors (kiln/ops.h).
 *
 *   sgd        param, grad [, velocity], all [..] with one shape:
 *              g = grad + wd*p; if momentum: v = momentum*v + (1-dampening)*g,
 *              g = nesterov ? g + momentum*v : v; p -= lr*g
 *   adam       param, grad, m, v [..], step [] (t, 1-based) [, lr []]:
 *              AdamW (ip[0] = 1): p -= lr*wd*p; Adam: g += wd*p;
 *              m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
 *              p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 *   increment  x [..]: x += fp[0]
 *
 * Elementwise in f32 in the order written above (bias corrections in
 * double, then rounded once), so results never depend on the threads.
 */
#include <math.h>

#include "cpu-impl.h"

#define OPT_GRAIN 8192

static kiln_status check_finite(int index, const kcpu_node *n, const char *what, int slot) {
  if (!isfinite(n->fp[slot]))
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "%s fp[%d] = %g must be finite", what,
                           slot, (double)n->fp[slot]);
  return KILN_OK;
}

kiln_status kcpu_optim_validate(int index, const kcpu_node *n) {
  char s0[KCPU_SHAPE_STR], s1[KCPU_SHAPE_STR];
  kiln_status st;
  if (n->op == KILN_OP_INCREMENT) return check_finite(index, n, "increment", 0);
  static const char *const sgd_names[] = {"param", "grad", "velocity"};
  static const char *const adam_names[] = {"param", "grad", "m", "v", "step", "lr"};
  const char *const *names = n->op == KILN_OP_SGD ? sgd_names : adam_names;
  int n_same = n->op == KILN_OP_SGD ? n->n_inputs : 4;
  for (int i = 1; i < n_same; i++)
    if (!kcpu_same_shape(&n->in[0], &n->in[i]))
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s must have param's shape %s",
                             names[i], KCPU_SHAPE(s0, &n->in[i]), KCPU_SHAPE(s1, &n->in[0]));
  if (n->op == KILN_OP_SGD) {
    static const char *const fp_names[] = {"lr", "momentum", "weight_decay", "dampening"};
    for (int i = 0; i < 4; i++)
      if ((st = check_finite(index, n, fp_names[i], i)) != KILN_OK) return st;
    if (n->ip[0] != 0 && n->ip[0] != 1)
      return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                             "nesterov ip[0] must be 0 or 1, got %lld", (long long)n->ip[0]);
    if (n->fp[1] != 0.0f && n->n_inputs < 3)
      return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                             "momentum fp[1] = %g needs a velocity input (inputs: param, grad, "
                             "velocity)",
                             (double)n->fp[1]);
    return KILN_OK;
  }
  /* adam */
  for (int i = 4; i < n->n_inputs; i++)
    if (n->in[i].numel != 1)
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s must be a scalar []", names[i],
                             KCPU_SHAPE(s0, &n->in[i]));
  static const char *const fp_names[] = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  for (int i = 0; i < 5; i++)
    if ((st = check_finite(index, n, fp_names[i], i)) != KILN_OK) return st;
  for (int i = 1; i <= 2; i++)
    if (n->fp[i] < 0.0f || n->fp[i] >= 1.0f)
      return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "%s fp[%d] = %g must be in [0, 1)",
                             fp_names[i], i, (double)n->fp[i]);
  if (n->fp[3] < 0.0f)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "eps fp[3] = %g must be >= 0",
                           (double)n->fp[3]);
  if (n->ip[0] != 0 && n->ip[0] != 1)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "decoupled ip[0] must be 0 (Adam) or 1 (AdamW), got %lld",
                           (long long)n->ip[0]);
  return KILN_OK;
}

typedef struct opt_plan {
  const kcpu_node *n;
  float lr, bc1, bc2;   /* adam: learning rate and bias corrections */
} opt_plan;

KCPU_BODY void sgd_range_body(void *arg, int64_t i0, int64_t i1) {
  const kcpu_node *n = ((const opt_plan *)arg)->n;
  float *restrict p = n->in[0].data;
  const float *restrict grad = n->in[1].data;
  float *restrict vel = n->n_inputs > 2 ? n->in[2].data : NULL;
  const float lr = n->fp[0], mom = n->fp[1], wd = n->fp[2], damp = n->fp[3];
  const int nesterov = (int)n->ip[0];
  if (mom == 0.0f) {
    for (int64_t i = i0; i < i1; i++) {
      float g = grad[i] + wd * p[i];
      p[i] -= lr * g;
    }
    return;
  }
  for (int64_t i = i0; i < i1; i++) {
    float g = grad[i] + wd * p[i];
    float v = mom * vel[i] + (1.0f - damp) * g;
    vel[i] = v;
    g = nesterov ? g + mom * v : v;
    p[i] -= lr * g;
  }
}
KCPU_RANGE_VARIANTS(sgd_range)

KCPU_BODY void adam_range_body(void *arg, int64_t i0, int64_t i1) {
  const opt_plan *o = arg;
  const kcpu_node *n = o->n;
  float *restrict p = n->in[0].data;
  const float *restrict grad = n->in[1].data;
  float *restrict m = n->in[2].data;
  float *restrict v = n->in[3].data;
  const float lr = o->lr, b1 = n->fp[1], b2 = n->fp[2], eps = n->fp[3], wd = n->fp[4];
  const float bc1 = o->bc1, bc2 = o->bc2;
  const int decoupled = (int)n->ip[0];
  for (int64_t i = i0; i < i1; i++) {
    float g = grad[i];
    if (decoupled)
      p[i] -= lr * wd * p[i];
    else
      g += wd * p[i];
    float mi = b1 * m[i] + (1.0f - b1) * g;
    float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] -= lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
  }
}
KCPU_RANGE_VARIANTS(adam_range)

static void increment_range(void *arg, int64_t i0, int64_t i1) {
  const kcpu_node *n = ((const opt_plan *)arg)->n;
  float *x = n->in[0].data;
  const float d = n->fp[0];
  for (int64_t i = i0; i < i1; i++) x[i] += d;
}

void kcpu_optim(kcpu_pool *pool, const kcpu_node *n) {
  opt_plan o = {.n = n};
  int64_t count = n->in[0].numel;
  switch (n->op) {
    case KILN_OP_SGD:
      kcpu_parallel_for(pool, count, OPT_GRAIN, sgd_range, &o);
      break;
    case KILN_OP_ADAM: {
      double t = *(const float *)n->in[4].data;
      o.lr = n->n_inputs > 5 ? *(const float *)n->in[5].data : n->fp[0];
      o.bc1 = (float)(1.0 - pow((double)n->fp[1], t));
      o.bc2 = (float)(1.0 - pow((double)n->fp[2], t));
      kcpu_parallel_for(pool, count, OPT_GRAIN, adam_range, &o);
      break;
    }
    case KILN_OP_INCREMENT:
      kcpu_parallel_for(pool, count, OPT_GRAIN, increment_range, &o);
      break;
  }
}
