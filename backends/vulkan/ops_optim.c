/*
 * ops_optim.c - SGD, ADAM and INCREMENT, in place on persistent tensors.
 *
 *   sgd (param, grad[, velocity])              shaders/sgd.comp
 *   adam (param, grad, m, v, step[, lr])       shaders/adam.comp
 *   increment (x): x += fp[0]                  shaders/unary.comp (scale 1, shift fp[0])
 * Formulas in kiln/ops.h; optional inputs not given are replaced by another
 * binding the shader does not touch (a specialization constant says so).
 */
#include <math.h>

#include "vk-impl.h"

#define WG 256

static kiln_status check_finite(int index, const kvk_node *n, const char *name, int slot) {
  if (isfinite(n->fp[slot])) return KILN_OK;
  return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "%s fp[%d] = %g must be finite", name,
                        slot, (double)n->fp[slot]);
}

kiln_status kvk_optim_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR];
  kiln_status st;
  kvk_dispatch *d;
  const kvk_tensor *x = &n->in[0];
  if (n->op == KILN_OP_INCREMENT) {
    if ((st = check_finite(index, n, "increment", 0)) != KILN_OK) return st;
    if (x->numel == 0) return KILN_OK;
    if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
    d->shader = KVK_SHADER_UNARY;
    d->n_spec = 2;
    d->spec[0] = WG;
    d->spec[1] = 7;   /* scale: 1 * x + fp[0] */
    d->n_bind = 2;
    d->bind[0] = x;
    d->bind[1] = x;
    d->write_mask = 2;
    kvk_param_u(d, (uint64_t)x->numel);
    kvk_param_f(d, 1.0f);
    kvk_param_f(d, n->fp[0]);
    d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)x->numel, WG);
    d->groups[1] = d->groups[2] = 1;
    return KILN_OK;
  }
  static const char *const sgd_names[] = {"param", "grad", "velocity"};
  static const char *const adam_names[] = {"param", "grad", "m", "v", "step", "lr"};
  const char *const *names = n->op == KILN_OP_SGD ? sgd_names : adam_names;
  int n_same = n->op == KILN_OP_SGD ? n->n_inputs : 4;
  for (int i = 1; i < n_same; i++)
    if (!kvk_same_shape(&n->in[0], &n->in[i]))
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s must have param's shape %s",
                            names[i], KVK_SHAPE(s0, &n->in[i]), KVK_SHAPE(s1, &n->in[0]));
  if (n->op == KILN_OP_SGD) {
    static const char *const fp_names[] = {"lr", "momentum", "weight_decay", "dampening"};
    for (int i = 0; i < 4; i++)
      if ((st = check_finite(index, n, fp_names[i], i)) != KILN_OK) return st;
    if (n->ip[0] != 0 && n->ip[0] != 1)
      return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                            "nesterov ip[0] must be 0 or 1, got %lld", (long long)n->ip[0]);
    int has_v = n->fp[1] != 0.0f;
    if (has_v && n->n_inputs < 3)
      return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                            "momentum fp[1] = %g needs a velocity input (inputs: param, grad, "
                            "velocity)", (double)n->fp[1]);
    if (x->numel == 0) return KILN_OK;
    if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
    d->shader = KVK_SHADER_SGD;
    d->n_spec = 3;
    d->spec[0] = WG;
    d->spec[1] = (uint32_t)has_v;
    d->spec[2] = (uint32_t)n->ip[0];
    d->n_bind = 3;
    d->bind[0] = x;
    d->bind[1] = &n->in[1];
    d->bind[2] = has_v ? &n->in[2] : x;
    d->write_mask = has_v ? 5 : 1;
    kvk_param_u(d, (uint64_t)x->numel);
    for (int i = 0; i < 4; i++) kvk_param_f(d, n->fp[i]);
    d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)x->numel, WG);
    d->groups[1] = d->groups[2] = 1;
    return KILN_OK;
  }
  /* adam */
  for (int i = 4; i < n->n_inputs; i++)
    if (n->in[i].numel != 1)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s must be a scalar []", names[i],
                            KVK_SHAPE(s0, &n->in[i]));
  static const char *const fp_names[] = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  for (int i = 0; i < 5; i++)
    if ((st = check_finite(index, n, fp_names[i], i)) != KILN_OK) return st;
  for (int i = 1; i <= 2; i++)
    if (n->fp[i] < 0.0f || n->fp[i] >= 1.0f)
      return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "%s fp[%d] = %g must be in [0, 1)",
                            fp_names[i], i, (double)n->fp[i]);
  if (n->fp[3] < 0.0f)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "eps fp[3] = %g must be >= 0",
                          (double)n->fp[3]);
  if (n->ip[0] != 0 && n->ip[0] != 1)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "decoupled ip[0] must be 0 or 1, got %lld", (long long)n->ip[0]);
  if (x->numel == 0) return KILN_OK;
  int has_lr = n->n_inputs > 5;
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_ADAM;
  d->n_spec = 3;
  d->spec[0] = WG;
  d->spec[1] = (uint32_t)has_lr;
  d->spec[2] = (uint32_t)n->ip[0];
  d->n_bind = 6;
  for (int i = 0; i < 5; i++) d->bind[i] = &n->in[i];
  d->bind[5] = has_lr ? &n->in[5] : &n->in[4];
  d->write_mask = 1 | 4 | 8;
  kvk_param_u(d, (uint64_t)x->numel);
  for (int i = 0; i < 5; i++) kvk_param_f(d, n->fp[i]);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)x->numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}
