/*
 * ops_matmul.c - MATMUL: y[..., M, N] = op(a)[..., M, K] @ op(b)[..., K, N],
 * op() a transpose by ip[0] / ip[1], batch axes broadcast (kiln/ops.h).
 *
 * shaders/matmul.comp is a shared-memory tiled GEMM; the tile is chosen here
 * from the device's limits and passed as specialization constants:
 * BM x BN outputs per workgroup of (BN/TN) x (BM/TM) threads, BK deep.
 * Workgroups: x over N tiles, y over M tiles, z over batch matrices.
 */
#include <stdio.h>
#include <stdlib.h>

#include "vk-impl.h"

static kvk_tile choose_tile(const kiln_plugin_device *dev, int64_t M, int64_t N) {
  const VkPhysicalDeviceLimits *l = &dev->phys->props.limits;
  int big = l->maxComputeWorkGroupInvocations >= 256 && l->maxComputeWorkGroupSize[0] >= 16 &&
            l->maxComputeWorkGroupSize[1] >= 16;
  /* CPU drivers (lavapipe) run a workgroup's invocations as SIMD lanes and
   * pay for every barrier; fewer threads with 8 x 8 results each measured
   * about twice as fast there (512^3 on lavapipe, see docs/vulkan.md). */
  if (dev->phys->kind == KILN_DEVICE_CPU && M >= 64 && N >= 64) return (kvk_tile){64, 64, 8, 8, 8};
  /* GPUs: 16 x 16 threads each computing 4 x 4 (64 x 64 tiles) for large
   * products; 2 x 2 per thread (32 x 32 tiles) when M or N is small, so
   * fewer threads idle; 8 x 8 threads on devices with small workgroups. */
  if (big && M >= 64 && N >= 64) return (kvk_tile){64, 64, 16, 4, 4};
  if (big) return (kvk_tile){32, 32, 16, 2, 2};
  return (kvk_tile){32, 32, 8, 4, 4};
}

/* $KILN_VK_MATMUL_TILE (and ops_conv.c's $KILN_VK_CONV_TILE) =
 * "BM,BN,BK,TM,TN" overrides the choice (for tuning on a new GPU, and so the
 * tests cover every shape of the shaders). */
kiln_status kvk_tile_override(const kiln_plugin_device *dev, int index, const kvk_node *n,
                              const char *var, kvk_tile *t) {
  const char *e = getenv(var);
  if (!e || !*e) return KILN_OK;
  const VkPhysicalDeviceLimits *l = &dev->phys->props.limits;
  kvk_tile o;
  if (sscanf(e, "%u,%u,%u,%u,%u", &o.bm, &o.bn, &o.bk, &o.tm, &o.tn) != 5 || !o.bm || !o.bn ||
      !o.bk || !o.tm || !o.tn || o.bm % o.tm || o.bn % o.tn ||
      (uint64_t)(o.bm / o.tm) * (o.bn / o.tn) > l->maxComputeWorkGroupInvocations ||
      o.bn / o.tn > l->maxComputeWorkGroupSize[0] || o.bm / o.tm > l->maxComputeWorkGroupSize[1] ||
      (uint64_t)(o.bm + o.bn) * o.bk * 4 > l->maxComputeSharedMemorySize)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "%s=\"%s\" is not BM,BN,BK,TM,TN with TM | BM, TN | BN, "
                          "(BM/TM)*(BN/TN) <= %u threads and (BM+BN)*BK*4 <= %u bytes of shared "
                          "memory", var, e, l->maxComputeWorkGroupInvocations,
                          l->maxComputeSharedMemorySize);
  *t = o;
  return KILN_OK;
}

kiln_status kvk_matmul_plan(kvk_plan *p, int index, const kvk_node *n) {
  const kvk_tensor *a = &n->in[0], *b = &n->in[1], *y = &n->out;
  char sa[KVK_SHAPE_STR], sb[KVK_SHAPE_STR], sy[KVK_SHAPE_STR], sw[KVK_SHAPE_STR];
  if ((n->ip[0] != 0 && n->ip[0] != 1) || (n->ip[1] != 0 && n->ip[1] != 1))
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "transpose flags ip[0] = %lld and ip[1] = %lld must be 0 or 1",
                          (long long)n->ip[0], (long long)n->ip[1]);
  if (a->ndim < 2 || b->ndim < 2)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "a %s and b %s must both have rank >= 2",
                          KVK_SHAPE(sa, a), KVK_SHAPE(sb, b));
  int ta = (int)n->ip[0], tb = (int)n->ip[1];
  int64_t M = a->shape[a->ndim - 2 + ta], Ka = a->shape[a->ndim - 1 - ta];
  int64_t Kb = b->shape[b->ndim - 2 + tb], N = b->shape[b->ndim - 1 - tb];
  if (Ka != Kb)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "a %s%s and b %s%s: inner dimensions %lld and %lld differ",
                          KVK_SHAPE(sa, a), ta ? " (transposed)" : "", KVK_SHAPE(sb, b),
                          tb ? " (transposed)" : "", (long long)Ka, (long long)Kb);
  int nb;
  int64_t bshape[KILN_MAX_DIMS];
  if (kvk_broadcast_shape(a->ndim - 2, a->shape, b->ndim - 2, b->shape, &nb, bshape) != 0)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "batch dimensions of a %s and b %s do not broadcast", KVK_SHAPE(sa, a),
                          KVK_SHAPE(sb, b));
  kvk_tensor want = {.ndim = nb + 2};
  for (int i = 0; i < nb; i++) want.shape[i] = bshape[i];
  want.shape[nb] = M;
  want.shape[nb + 1] = N;
  if (!kvk_same_shape(&want, y))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "a %s%s times b %s%s gives %s, but the output is %s", KVK_SHAPE(sa, a),
                          ta ? " (transposed)" : "", KVK_SHAPE(sb, b), tb ? " (transposed)" : "",
                          KVK_SHAPE(sw, &want), KVK_SHAPE(sy, y));
  if (y->numel == 0) return KILN_OK;
  int64_t K = Ka;
  if (K == 0) {
    /* An empty sum: y = 0. */
    kvk_dispatch *d = kvk_plan_add(p, index, n);
    if (!d) return KILN_OUT_OF_MEMORY;
    d->shader = KVK_SHADER_FILL;
    d->n_spec = 1;
    d->spec[0] = 256;
    d->n_bind = 1;
    d->bind[0] = y;
    d->write_mask = 1;
    kvk_param_u(d, (uint64_t)y->numel);
    kvk_param_f(d, 0.0f);
    d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)y->numel, 256);
    d->groups[1] = d->groups[2] = 1;
    return KILN_OK;
  }

  /* Matrix element strides of a and b per batch axis of y (0: broadcast). */
  uint32_t st_a[KILN_MAX_DIMS] = {0}, st_b[KILN_MAX_DIMS] = {0};
  int64_t batches = 1;
  for (int i = 0; i < nb; i++) batches *= bshape[i];
  for (int w = 0; w < 2; w++) {
    const kvk_tensor *t = w ? b : a;
    uint32_t *st = w ? st_b : st_a;
    int tnb = t->ndim - 2;
    int64_t s = t->shape[t->ndim - 1] * t->shape[t->ndim - 2];
    for (int i = nb - 1; i >= 0; i--) {
      int ti = tnb - (nb - i);
      if (ti < 0) break;
      st[i] = t->shape[ti] == 1 && bshape[i] != 1 ? 0 : (uint32_t)s;
      s *= t->shape[ti];
    }
  }

  kvk_tile tl = choose_tile(p->dev, M, N);
  kiln_status st = kvk_tile_override(p->dev, index, n, "KILN_VK_MATMUL_TILE", &tl);
  if (st != KILN_OK) return st;
  const VkPhysicalDeviceLimits *l = &p->dev->phys->props.limits;
  uint64_t gx = ((uint64_t)N + tl.bn - 1) / tl.bn, gy = ((uint64_t)M + tl.bm - 1) / tl.bm;
  if (gx > l->maxComputeWorkGroupCount[0] || gy > l->maxComputeWorkGroupCount[1])
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "output %s needs %llu x %llu workgroups of %ux%u tiles; this device "
                          "allows %u x %u",
                          KVK_SHAPE(sy, y), (unsigned long long)gx, (unsigned long long)gy,
                          tl.bm, tl.bn, l->maxComputeWorkGroupCount[0],
                          l->maxComputeWorkGroupCount[1]);
  uint64_t gz = (uint64_t)batches;
  uint64_t zcap = l->maxComputeWorkGroupCount[2] < 65535 ? l->maxComputeWorkGroupCount[2] : 65535;
  if (gz > zcap) gz = zcap;   /* the shader loops over the rest */

  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_MATMUL;
  d->n_spec = 9;
  d->spec[0] = tl.bn / tl.tn;
  d->spec[1] = tl.bm / tl.tm;
  d->spec[2] = tl.bm;
  d->spec[3] = tl.bn;
  d->spec[4] = tl.bk;
  d->spec[5] = tl.tm;
  d->spec[6] = tl.tn;
  d->spec[7] = (uint32_t)ta;
  d->spec[8] = (uint32_t)tb;
  d->n_bind = 3;
  d->bind[0] = a;
  d->bind[1] = b;
  d->bind[2] = y;
  d->write_mask = 4;
  kvk_param_u(d, (uint64_t)M);
  kvk_param_u(d, (uint64_t)N);
  kvk_param_u(d, (uint64_t)K);
  kvk_param_u(d, (uint64_t)batches);
  kvk_param_u(d, (uint64_t)nb);
  for (int i = 0; i < 6; i++) kvk_param_u(d, i < nb ? (uint64_t)bshape[i] : 1);
  for (int i = 0; i < 6; i++) kvk_param_u(d, st_a[i]);
  for (int i = 0; i < 6; i++) kvk_param_u(d, st_b[i]);
  d->groups[0] = (uint32_t)gx;
  d->groups[1] = (uint32_t)gy;
  d->groups[2] = (uint32_t)gz;
  return KILN_OK;
}
