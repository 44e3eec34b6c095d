/*
 * ops_transformer.c - the transformer ops (kiln/ops.h 100..107).
 *
 *   layernorm (x [..., C], gamma [C], beta [C]) -> y
 *                         shaders/layernorm.comp MODE 0, a workgroup per row
 *   layernorm_backward (dy, x, gamma) -> dx
 *                         shaders/layernorm.comp MODE 1, a workgroup per row
 *   layernorm_backward_params (dy, x) -> [2, C] (dgamma; dbeta)
 *                         shaders/layernorm_params.comp: per-chunk column sums
 *                         of R rows into a scratch [chunks, 2, C], then
 *                         reduce.comp adds the chunks in order (one chunk:
 *                         written straight to the output)
 *   gelu, gelu_backward   shaders/gelu.comp, elementwise
 *   attention (qkv [B, T, 3C]) -> y [B, T, C]
 *                         shaders/attention.comp: a workgroup per (b, h, tile
 *                         of BT queries), key/value tiles streamed through
 *                         shared memory with an online softmax
 *   attention_backward (dy, qkv, y) -> dqkv
 *                         shaders/attention_backward.comp, three passes:
 *                         row stats (lse, delta = rowsum(dy * y)) into a
 *                         scratch [2, B, H, T]; dk and dv per key tile; dq per
 *                         query tile. graph.c's byte-range tracking puts the
 *                         barriers between them (stats written then read;
 *                         dqkv written by both later passes).
 *   lr_schedule (step []) -> lr []
 *                         shaders/lr_schedule.comp, one thread
 *
 * Attention keeps a row's q (or k, v) and its accumulators in registers, a
 * thread per row, so the head size D is at most ATTN_MAX_D. The tile BT (rows
 * of queries and of keys per tile, and threads per workgroup) is chosen so
 * the shared arrays fit maxComputeSharedMemorySize (forward 2 BT D floats,
 * backward 2 BT D + 2 BT); $KILN_VK_ATTENTION_TILE = "BT" overrides the
 * choice (tuning, and so the tests reach every tile edge).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "vk-impl.h"

#define WG 256
#define LN_CHUNK 32          /* rows per workgroup of layernorm_params */

/* ---- layer norm ----------------------------------------------------------- */

static kiln_status ln_check(int index, const kvk_node *n, const kvk_tensor *x) {
  char s[KVK_SHAPE_STR];
  if (x->ndim < 1)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "x %s must have rank >= 1 [..., C]",
                          KVK_SHAPE(s, x));
  if (!(n->fp[0] > 0.0f) || isinf(n->fp[0]))
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "eps fp[0] = %g must be finite and > 0",
                          (double)n->fp[0]);
  return KILN_OK;
}

static int is_vec(const kvk_tensor *t, int64_t C) { return t->ndim == 1 && t->shape[0] == C; }

static kiln_status layernorm_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR], s2[KVK_SHAPE_STR], s3[KVK_SHAPE_STR];
  const kvk_tensor *y = &n->out;
  int bwd = n->op == KILN_OP_LAYERNORM_BACKWARD;
  /* forward (x, gamma, beta); backward (dy, x, gamma) */
  const kvk_tensor *x = &n->in[bwd], *gamma = &n->in[bwd + 1], *a = bwd ? &n->in[0] : &n->in[2];
  kiln_status st = ln_check(index, n, x);
  if (st != KILN_OK) return st;
  int64_t C = x->shape[x->ndim - 1];
  if (!is_vec(gamma, C) || (!bwd && !is_vec(a, C)) || (bwd && !kvk_same_shape(a, x)) ||
      !kvk_same_shape(y, x))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          bwd ? "dy %s, x %s, gamma %s, output %s: need dy, x and the output of one "
                                "shape [..., C] and gamma [C]"
                              : "beta %s, x %s, gamma %s, output %s: need x and the output of one "
                                "shape [..., C] and gamma, beta [C]",
                          KVK_SHAPE(s0, a), KVK_SHAPE(s1, x), KVK_SHAPE(s2, gamma),
                          KVK_SHAPE(s3, y));
  if (y->numel == 0) return KILN_OK;
  uint64_t rows = (uint64_t)(y->numel / C);
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_LAYERNORM;
  d->n_spec = 2;
  d->spec[0] = kvk_pow2_wg((uint64_t)C, 32, WG);
  d->spec[1] = (uint32_t)bwd;
  d->n_bind = 4;
  d->bind[0] = x;
  d->bind[1] = gamma;
  d->bind[2] = a;
  d->bind[3] = y;
  d->write_mask = 8;
  kvk_param_u(d, rows);
  kvk_param_u(d, (uint64_t)C);
  kvk_param_f(d, n->fp[0]);
  d->groups[0] = kvk_groups_1d(p->dev, rows, 1);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}

static kiln_status layernorm_params_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR], s2[KVK_SHAPE_STR];
  const kvk_tensor *dy = &n->in[0], *x = &n->in[1], *y = &n->out;
  kiln_status st = ln_check(index, n, x);
  if (st != KILN_OK) return st;
  int64_t C = x->shape[x->ndim - 1];
  if (!kvk_same_shape(dy, x) || y->ndim != 2 || y->shape[0] != 2 || y->shape[1] != C)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "dy %s, x %s, output %s: need dy and x of one shape [..., C] and the "
                          "output [2, C]",
                          KVK_SHAPE(s0, dy), KVK_SHAPE(s1, x), KVK_SHAPE(s2, y));
  if (y->numel == 0) return KILN_OK;
  uint64_t rows = (uint64_t)(x->numel / C), chunks = (rows + LN_CHUNK - 1) / LN_CHUNK;
  kvk_dispatch *d;
  if (rows == 0) {   /* sums over no rows: zeros */
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
    return KILN_OK;
  }
  const kvk_tensor *part = y;
  if (chunks > 1 && !(part = kvk_plan_scratch(p, index, n, chunks * 2 * (uint64_t)C)))
    return KILN_OUT_OF_MEMORY;
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_LAYERNORM_PARAMS;
  d->n_spec = 2;
  d->spec[0] = kvk_pow2_wg((uint64_t)C, 32, WG);
  d->spec[1] = LN_CHUNK;
  d->n_bind = 3;
  d->bind[0] = dy;
  d->bind[1] = x;
  d->bind[2] = part;
  d->write_mask = 4;
  kvk_param_u(d, rows);
  kvk_param_u(d, (uint64_t)C);
  kvk_param_u(d, chunks);
  kvk_param_f(d, n->fp[0]);
  d->groups[0] = kvk_groups_1d(p->dev, chunks, 1);
  d->groups[1] = d->groups[2] = 1;
  if (chunks == 1) return KILN_OK;
  /* y[2C] = sum over chunks of part[chunk, 2C] (reduce.comp: kept axis 2C,
   * stride 1; reduced axis chunks, stride 2C) */
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_REDUCE;
  d->n_spec = 1;
  d->spec[0] = kvk_pow2_wg(chunks, 32, WG);
  d->n_bind = 2;
  d->bind[0] = part;
  d->bind[1] = y;
  d->write_mask = 2;
  kvk_param_u(d, 2 * (uint64_t)C);
  kvk_param_u(d, chunks);
  kvk_param_u(d, 1);
  kvk_param_u(d, 2);
  kvk_param_f(d, 1.0f);
  uint64_t dims[KILN_MAX_DIMS] = {2 * (uint64_t)C, chunks}, strides[KILN_MAX_DIMS] = {1, 2 * (uint64_t)C};
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < 2 ? dims[i] : 1);
  for (int i = 0; i < KILN_MAX_DIMS; i++) kvk_param_u(d, i < 2 ? strides[i] : 0);
  d->groups[0] = kvk_groups_1d(p->dev, 2 * (uint64_t)C, 1);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}

/* ---- GELU ----------------------------------------------------------------- */

static kiln_status gelu_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR], s2[KVK_SHAPE_STR];
  int bwd = n->op == KILN_OP_GELU_BACKWARD;
  const kvk_tensor *x = &n->in[bwd], *dy = &n->in[0], *y = &n->out;
  if (n->ip[0] != 0 && n->ip[0] != 1)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "approximate ip[0] = %lld must be 0 (erf) or 1 (tanh)",
                          (long long)n->ip[0]);
  if (!kvk_same_shape(x, y) || (bwd && !kvk_same_shape(dy, x)))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          bwd ? "dy %s, x %s and output %s must have one shape"
                              : "x %s and output %s must have one shape%s",
                          KVK_SHAPE(s0, bwd ? dy : x), KVK_SHAPE(s1, bwd ? x : y),
                          bwd ? KVK_SHAPE(s2, y) : "");
  if (y->numel == 0) return KILN_OK;
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_GELU;
  d->n_spec = 3;
  d->spec[0] = WG;
  d->spec[1] = (uint32_t)bwd;
  d->spec[2] = (uint32_t)n->ip[0];
  d->n_bind = 3;
  d->bind[0] = x;
  d->bind[1] = dy;   /* forward: x again, not read */
  d->bind[2] = y;
  d->write_mask = 4;
  kvk_param_u(d, (uint64_t)y->numel);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}

/* ---- attention ------------------------------------------------------------ */

#define ATTN_MAX_D 256   /* register arrays of D floats per thread */

static uint64_t attn_shared_bytes(int bwd, uint64_t bt, uint64_t D) {
  return 4 * (2 * bt * D + (bwd ? 2 * bt : 0));
}

/* The tile BT (rows of queries and of keys; also the workgroup size, a
 * thread per row): 8 on CPU drivers (lavapipe runs 8 lanes at once; 8 beat
 * 16 and 32 there), 32 on GPUs; no more than T needs (rounded up to a power
 * of two so a few pipelines serve every T); halved until the unrolled
 * tile loops (BT D) stay within 2048 terms and the shared arrays fit. */
static kiln_status attn_tile(const kiln_plugin_device *dev, int index, const kvk_node *n, int bwd,
                             uint64_t T, uint64_t D, uint32_t *bt) {
  const VkPhysicalDeviceLimits *l = &dev->phys->props.limits;
  uint32_t cap = dev->phys->kind == KILN_DEVICE_CPU ? 8 : 32, t = 1;
  if (cap > l->maxComputeWorkGroupSize[0]) cap = l->maxComputeWorkGroupSize[0];
  while (t < cap && t < T) t *= 2;
  while (t > 1 && ((uint64_t)t * D > 2048 ||
                   attn_shared_bytes(bwd, t, D) > l->maxComputeSharedMemorySize))
    t /= 2;
  const char *e = getenv("KILN_VK_ATTENTION_TILE");
  if (e && *e) {
    char *end;
    unsigned long o = strtoul(e, &end, 10);
    if (*end || !o || o > l->maxComputeWorkGroupInvocations || o > l->maxComputeWorkGroupSize[0] ||
        attn_shared_bytes(bwd, o, D) > l->maxComputeSharedMemorySize)
      return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                            "KILN_VK_ATTENTION_TILE=\"%s\" is not a tile of BT rows with 1 <= BT "
                            "<= %u and its shared arrays (%s, head size %llu) within %u bytes",
                            e, l->maxComputeWorkGroupSize[0],
                            bwd ? "2 BT D + 2 BT floats" : "2 BT D floats", (unsigned long long)D,
                            l->maxComputeSharedMemorySize);
    t = (uint32_t)o;
  }
  if (attn_shared_bytes(bwd, t, D) > l->maxComputeSharedMemorySize)
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "head size D = %llu needs %llu bytes of shared memory even with 1-row "
                          "tiles; this device has %u (use more heads, so each is smaller, or "
                          "the cpu backend)",
                          (unsigned long long)D, (unsigned long long)attn_shared_bytes(bwd, t, D),
                          l->maxComputeSharedMemorySize);
  *bt = t;
  return KILN_OK;
}

static kiln_status attention_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR], s2[KVK_SHAPE_STR], s3[KVK_SHAPE_STR];
  int bwd = n->op == KILN_OP_ATTENTION_BACKWARD;
  const kvk_tensor *qkv = &n->in[bwd], *y = &n->out;
  int64_t H = n->ip[0], causal = n->ip[1];
  if (qkv->ndim != 3 || qkv->shape[2] % 3 != 0)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "qkv %s must be [B, T, 3C]",
                          KVK_SHAPE(s0, qkv));
  int64_t B = qkv->shape[0], T = qkv->shape[1], C = qkv->shape[2] / 3;
  if (H < 1 || C % H != 0 || (causal != 0 && causal != 1))
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "heads ip[0] = %lld must be >= 1 and divide C = %lld; causal ip[1] = "
                          "%lld must be 0 or 1",
                          (long long)H, (long long)C, (long long)causal);
  if (!isfinite(n->fp[0]))
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "scale fp[0] = %g must be finite",
                          (double)n->fp[0]);
  if (bwd) {
    const kvk_tensor *dy = &n->in[0], *yf = &n->in[2];
    int ok = dy->ndim == 3 && dy->shape[0] == B && dy->shape[1] == T && dy->shape[2] == C &&
             kvk_same_shape(dy, yf) && kvk_same_shape(y, qkv);
    if (!ok)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                            "dy %s, qkv %s, y %s, output %s: need dy and y [B, T, C] and qkv and "
                            "the output [B, T, 3C]",
                            KVK_SHAPE(s0, dy), KVK_SHAPE(s1, qkv), KVK_SHAPE(s2, yf),
                            KVK_SHAPE(s3, y));
  } else if (y->ndim != 3 || y->shape[0] != B || y->shape[1] != T || y->shape[2] != C) {
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "qkv %s needs the output [%lld, %lld, "
                          "%lld], got %s", KVK_SHAPE(s0, qkv), (long long)B, (long long)T,
                          (long long)C, KVK_SHAPE(s1, y));
  }
  if (y->numel == 0) return KILN_OK;
  int64_t D = C / H;
  if (D > ATTN_MAX_D)
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "head size D = C / H = %lld exceeds %d, the most the Vulkan attention "
                          "kernels keep in registers per thread; use more heads or the cpu "
                          "backend", (long long)D, ATTN_MAX_D);
  float scale = n->fp[0] != 0.0f ? n->fp[0] : (float)(1.0 / sqrt((double)D));
  uint32_t bt = 1;
  kiln_status st = attn_tile(p->dev, index, n, bwd, (uint64_t)T, (uint64_t)D, &bt);
  if (st != KILN_OK) return st;
  uint64_t tiles = ((uint64_t)T + bt - 1) / bt, work = (uint64_t)B * (uint64_t)H * tiles;
  if (work > UINT32_MAX)
    return kvk_node_error(index, n, KILN_UNSUPPORTED, "%llu (b, h, tile) work items exceed the "
                          "shader's 32-bit count", (unsigned long long)work);
  const kvk_tensor *stats = NULL;
  if (bwd && !(stats = kvk_plan_scratch(p, index, n, 2 * (uint64_t)B * (uint64_t)H * (uint64_t)T)))
    return KILN_OUT_OF_MEMORY;
  for (int mode = 0; mode < (bwd ? 3 : 1); mode++) {
    kvk_dispatch *d = kvk_plan_add(p, index, n);
    if (!d) return KILN_OUT_OF_MEMORY;
    d->spec[0] = bt;
    d->spec[1] = (uint32_t)D;
    d->spec[2] = (uint32_t)causal;
    if (bwd) {
      d->shader = KVK_SHADER_ATTENTION_BACKWARD;
      d->n_spec = 4;
      d->spec[3] = (uint32_t)mode;
      d->n_bind = 5;
      d->bind[0] = qkv;
      d->bind[1] = &n->in[0];
      d->bind[2] = &n->in[2];
      d->bind[3] = stats;
      d->bind[4] = y;
      d->write_mask = mode == 0 ? 8 : 16;
    } else {
      d->shader = KVK_SHADER_ATTENTION;
      d->n_spec = 3;
      d->n_bind = 2;
      d->bind[0] = qkv;
      d->bind[1] = y;
      d->write_mask = 2;
    }
    kvk_param_u(d, (uint64_t)B);
    kvk_param_u(d, (uint64_t)T);
    kvk_param_u(d, (uint64_t)C);
    kvk_param_u(d, (uint64_t)H);
    kvk_param_u(d, tiles);
    kvk_param_f(d, scale);
    d->groups[0] = kvk_groups_1d(p->dev, work, 1);
    d->groups[1] = d->groups[2] = 1;
  }
  return KILN_OK;
}

/* ---- learning-rate schedule ------------------------------------------------ */

static kiln_status lr_schedule_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR];
  const kvk_tensor *step = &n->in[0], *y = &n->out;
  int64_t W = n->ip[0], S = n->ip[1];
  if (step->numel != 1 || y->numel != 1)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "step %s and output %s must be one element", KVK_SHAPE(s0, step),
                          KVK_SHAPE(s1, y));
  if (W < 0 || S < W || !isfinite(n->fp[0]) || !isfinite(n->fp[1]))
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "warmup ip[0] = %lld and decay steps ip[1] = %lld need 0 <= warmup <= "
                          "decay; max lr fp[0] = %g and min lr fp[1] = %g must be finite",
                          (long long)W, (long long)S, (double)n->fp[0], (double)n->fp[1]);
  if (S > (1 << 24))
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "decay steps ip[1] = %lld exceed 2^24: the step is an f32 and the "
                          "schedule is computed in f32", (long long)S);
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_LR_SCHEDULE;
  d->n_bind = 2;
  d->bind[0] = step;
  d->bind[1] = y;
  d->write_mask = 2;
  kvk_param_f(d, n->fp[0]);
  kvk_param_f(d, n->fp[1]);
  kvk_param_f(d, (float)W);
  kvk_param_f(d, (float)S);
  d->groups[0] = d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}

kiln_status kvk_transformer_plan(kvk_plan *p, int index, const kvk_node *n) {
  switch (n->op) {
    case KILN_OP_LAYERNORM: case KILN_OP_LAYERNORM_BACKWARD: return layernorm_plan(p, index, n);
    case KILN_OP_LAYERNORM_BACKWARD_PARAMS: return layernorm_params_plan(p, index, n);
    case KILN_OP_GELU: case KILN_OP_GELU_BACKWARD: return gelu_plan(p, index, n);
    case KILN_OP_ATTENTION: case KILN_OP_ATTENTION_BACKWARD: return attention_plan(p, index, n);
    case KILN_OP_LR_SCHEDULE: return lr_schedule_plan(p, index, n);
    default: return kvk_node_error(index, n, KILN_INTERNAL, "not a transformer op this file handles");
  }
}
