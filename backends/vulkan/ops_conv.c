/*
 * ops_conv.c - CONV2D, its two backward passes, and max/average pooling
 * with their backward passes (NCHW, parameters as in kiln/ops.h).
 *
 *   conv2d                  shaders/conv2d.comp MODE 0: implicit GEMM per group,
 *                           w [O/G, C/G*KH*KW] @ col(x) [.., N*OH*OW] (+ bias)
 *   conv2d_backward_weight  shaders/conv2d.comp MODE 1: dy [O/G, N*OH*OW] @ col(x)^T,
 *                           split over N*OH*OW into partials (split-K), then
 *                           shaders/reduce.comp adds the partials
 *   conv2d_backward_input   shaders/conv2d.comp MODE 2: w^T [C/G, O/G*KH*KW] @ the
 *                           transposed gather of dy [.., N*H*W] (zero where a
 *                           stride skips), no atomics
 *   max/avg pool (+ bwd)    shaders/pool2d.comp: a thread per output / dx element
 * Workgroups: the GEMMs' tiles are chosen per device kind (choose_tile,
 * $KILN_VK_CONV_TILE overrides); x: columns, y: rows, z: groups (x splits).
 */
#include "vk-impl.h"

#define WG 256

typedef struct conv_geom {
  const kvk_tensor *x, *w, *y;        /* forward roles, whichever are given */
  int64_t N, C, H, W, O, KH, KW, OH, OW, G;
} conv_geom;

static kiln_status conv_validate(int index, const kvk_node *n, conv_geom *g) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR], s2[KVK_SHAPE_STR];
  int fwd = n->op == KILN_OP_CONV2D;
  const char *xn, *wn, *yn;
  if (fwd) {
    g->x = &n->in[0], g->w = &n->in[1], g->y = &n->out, xn = "x", wn = "w", yn = "y";
  } else if (n->op == KILN_OP_CONV2D_BACKWARD_INPUT) {
    g->x = &n->out, g->w = &n->in[1], g->y = &n->in[0], xn = "dx", wn = "w", yn = "dy";
  } else {
    g->x = &n->in[1], g->w = &n->out, g->y = &n->in[0], xn = "x", wn = "dw", yn = "dy";
  }
  const kvk_tensor *ranked[3] = {g->x, g->w, g->y};
  const char *names[3] = {xn, wn, yn};
  for (int i = 0; i < 3; i++) {
    const kvk_tensor *t = ranked[i];
    if (t->ndim != 4)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s has rank %d; expected rank 4 (%s)",
                            names[i], KVK_SHAPE(s0, t), t->ndim,
                            i == 0 ? "N, C, H, W" : i == 1 ? "O, C/groups, KH, KW" : "N, O, OH, OW");
    for (int d = 0; d < 4; d++)
      if (t->shape[d] < 1)
        return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s has an empty dimension %d",
                              names[i], KVK_SHAPE(s0, t), d);
  }
  const int64_t *ip = n->ip;
  if (ip[0] < 1 || ip[1] < 1 || ip[2] < 0 || ip[3] < 0 || ip[4] < 1 || ip[5] < 1 || ip[6] < 1)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "bad parameters stride [%lld, %lld], padding [%lld, %lld], dilation "
                          "[%lld, %lld], groups %lld: stride, dilation and groups must be >= 1 "
                          "and padding >= 0",
                          (long long)ip[0], (long long)ip[1], (long long)ip[2], (long long)ip[3],
                          (long long)ip[4], (long long)ip[5], (long long)ip[6]);
  g->G = ip[6];
  g->N = g->x->shape[0], g->C = g->x->shape[1], g->H = g->x->shape[2], g->W = g->x->shape[3];
  g->O = g->w->shape[0], g->KH = g->w->shape[2], g->KW = g->w->shape[3];
  if (g->C % g->G != 0)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s %s has %lld channels, not divisible by groups %lld", xn,
                          KVK_SHAPE(s0, g->x), (long long)g->C, (long long)g->G);
  if (g->O % g->G != 0)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s %s has %lld output channels, not divisible by groups %lld", wn,
                          KVK_SHAPE(s1, g->w), (long long)g->O, (long long)g->G);
  if (g->w->shape[1] != g->C / g->G)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s %s and %s %s: %s expects %lld input channels per group, %s has "
                          "%lld (groups %lld)",
                          xn, KVK_SHAPE(s0, g->x), wn, KVK_SHAPE(s1, g->w), wn,
                          (long long)g->w->shape[1], xn, (long long)(g->C / g->G),
                          (long long)g->G);
  if (fwd && n->n_inputs == 3 && (n->in[2].ndim != 1 || n->in[2].shape[0] != g->O))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "bias %s does not match w %s: expected [%lld]",
                          KVK_SHAPE(s2, &n->in[2]), KVK_SHAPE(s1, g->w), (long long)g->O);
  int64_t ekh = ip[4] * (g->KH - 1) + 1, ekw = ip[5] * (g->KW - 1) + 1;
  if (g->H + 2 * ip[2] < ekh || g->W + 2 * ip[3] < ekw)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s %s padded by [%lld, %lld] is smaller than the kernel of %s %s with "
                          "dilation [%lld, %lld]",
                          xn, KVK_SHAPE(s0, g->x), (long long)ip[2], (long long)ip[3], wn,
                          KVK_SHAPE(s1, g->w), (long long)ip[4], (long long)ip[5]);
  g->OH = (g->H + 2 * ip[2] - ekh) / ip[0] + 1;
  g->OW = (g->W + 2 * ip[3] - ekw) / ip[1] + 1;
  const kvk_tensor *y = g->y;
  if (y->shape[0] != g->N || y->shape[1] != g->O || y->shape[2] != g->OH || y->shape[3] != g->OW)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s is %s, expected [%lld, %lld, %lld, %lld] for %s %s and %s %s", yn,
                          KVK_SHAPE(s2, y), (long long)g->N, (long long)g->O, (long long)g->OH,
                          (long long)g->OW, xn, KVK_SHAPE(s0, g->x), wn, KVK_SHAPE(s1, g->w));
  return KILN_OK;
}

static void conv_params(kvk_dispatch *d, const conv_geom *g, const kvk_node *n) {
  const int64_t v[] = {g->N, g->C, g->H, g->W, g->O, g->OH, g->OW, g->KH, g->KW,
                       n->ip[0], n->ip[1], n->ip[2], n->ip[3], n->ip[4], n->ip[5], g->G};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) kvk_param_u(d, (uint64_t)v[i]);
}

/* The GEMM tile for rows x cols outputs. CPU drivers (lavapipe): 64
 * threads with 8 x 8 results each, as for matmul; 32 x 128 tiles for 32
 * rows or fewer (e.g. 32 filters); a row of 8 per thread for 8 rows or
 * fewer (the input gradient of a 1-channel image); 16 columns for 16 or
 * fewer (the weight gradient of a 3 x 3 kernel on one channel). Measured on
 * lavapipe: 8 x 8 per thread beats 4 x 8 and 4 x 4 by 1.4-2x, and fewer
 * than 32 threads per workgroup are slower again (docs/vulkan.md).
 * GPUs: 16 x 16 threads with 2 x 2 each, 8 x 8 threads with 4 x 4 where
 * workgroups are small. */
static kvk_tile choose_tile(const kiln_plugin_device *dev, int64_t rows, int64_t cols) {
  const VkPhysicalDeviceLimits *l = &dev->phys->props.limits;
  if (dev->phys->kind == KILN_DEVICE_CPU) {
    if (cols <= 16) return rows > 32 ? (kvk_tile){64, 16, 16, 8, 2} : (kvk_tile){32, 16, 16, 8, 2};
    if (rows > 32) return (kvk_tile){64, 64, 8, 8, 8};
    if (rows > 8) return (kvk_tile){32, 128, 8, 8, 8};
    uint32_t bm = 1;
    while (bm < rows) bm *= 2;
    return (kvk_tile){bm, 64, 8, 1, 8};
  }
  if (l->maxComputeWorkGroupInvocations >= 256 && l->maxComputeWorkGroupSize[0] >= 16 &&
      l->maxComputeWorkGroupSize[1] >= 16)
    return (kvk_tile){32, 32, 16, 2, 2};
  return (kvk_tile){32, 32, 8, 4, 4};
}

kiln_status kvk_conv_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR];
  conv_geom g = {0};
  kiln_status vst = conv_validate(index, n, &g);
  if (vst != KILN_OK) return vst;
  const VkPhysicalDeviceLimits *l = &p->dev->phys->props.limits;
  /* GEMM per group: rows, columns and depth (see shaders/conv2d.comp) */
  uint32_t mode = n->op == KILN_OP_CONV2D ? 0 : n->op == KILN_OP_CONV2D_BACKWARD_WEIGHT ? 1 : 2;
  int fwd = mode == 0;
  int64_t KK = g.KH * g.KW;
  int64_t M = mode == 2 ? g.C / g.G : g.O / g.G;
  int64_t cols = mode == 0 ? g.N * g.OH * g.OW : mode == 1 ? (g.C / g.G) * KK : g.N * g.H * g.W;
  int64_t depth = mode == 0 ? (g.C / g.G) * KK : mode == 1 ? g.N * g.OH * g.OW : (g.O / g.G) * KK;
  if (mode != 1 && depth >= (1 << 24))
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "w %s: a kernel of %lld taps per output; the Vulkan shader supports "
                          "fewer than 2^24", KVK_SHAPE(s1, g.w), (long long)depth);
  kvk_tile tl = choose_tile(p->dev, M, cols);
  kiln_status st = kvk_tile_override(p->dev, index, n, "KILN_VK_CONV_TILE", &tl);
  if (st != KILN_OK) return st;
  uint32_t bm = tl.bm, bn = tl.bn, bk = tl.bk, tm = tl.tm, tn = tl.tn;
  uint64_t gx = ((uint64_t)cols + bn - 1) / bn, gy = ((uint64_t)M + bm - 1) / bm;
  if (gx > l->maxComputeWorkGroupCount[0] || gy > l->maxComputeWorkGroupCount[1]) {
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "x %s needs %llu x %llu workgroups; this device allows %u x %u",
                          KVK_SHAPE(s0, g.x), (unsigned long long)gx, (unsigned long long)gy,
                          l->maxComputeWorkGroupCount[0], l->maxComputeWorkGroupCount[1]);
  }
  /* Split-K for the weight gradient: its depth (N*OH*OW) is long and its
   * output (O x C/G*KH*KW) small, often one or two tiles; partials over
   * depth chunks of >= 512 give the device ~256 workgroups to run, and a
   * reduce dispatch adds them up in a fixed order. */
  uint64_t tiles = gx * gy * (uint64_t)g.G, splits = 1;
  if (mode == 1 && tiles < 256) {
    splits = 256 / tiles;
    if (splits > (uint64_t)depth / 512) splits = (uint64_t)depth / 512;
    if (splits < 1) splits = 1;
  }
  uint64_t chunk = ((uint64_t)depth + splits - 1) / splits;
  chunk = (chunk + bk - 1) / bk * bk;
  splits = ((uint64_t)depth + chunk - 1) / chunk;
  const kvk_tensor *out = &n->out;
  if (splits > 1) {
    out = kvk_plan_scratch(p, index, n, splits * (uint64_t)n->out.numel);
    if (!out) return KILN_OUT_OF_MEMORY;
  }
  uint64_t gz = (uint64_t)g.G * splits;
  if (gz > l->maxComputeWorkGroupCount[2]) gz = l->maxComputeWorkGroupCount[2];
  int has_bias = fwd && n->n_inputs == 3;
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_CONV2D;
  d->n_spec = 9;
  d->spec[0] = bn / tn;
  d->spec[1] = bm / tm;
  d->spec[2] = bm;
  d->spec[3] = bn;
  d->spec[4] = bk;
  d->spec[5] = tm;
  d->spec[6] = tn;
  d->spec[7] = mode;
  d->spec[8] = (uint32_t)has_bias;
  d->n_bind = 4;
  d->bind[0] = mode == 2 ? g.y : g.x;   /* x, or dy */
  d->bind[1] = mode == 1 ? g.y : g.w;   /* w, or dy */
  d->bind[2] = has_bias ? &n->in[2] : d->bind[1];
  d->bind[3] = out;
  d->write_mask = 8;
  conv_params(d, &g, n);
  kvk_param_u(d, splits);
  kvk_param_u(d, chunk);
  d->groups[0] = (uint32_t)gx;
  d->groups[1] = (uint32_t)gy;
  d->groups[2] = (uint32_t)gz;
  if (splits == 1) return KILN_OK;

  /* dw = sum over the partials [splits, O * C/G*KH*KW] (shaders/reduce.comp) */
  uint64_t per = (uint64_t)n->out.numel;
  if (!(d = kvk_plan_add(p, index, n))) return KILN_OUT_OF_MEMORY;
  d->shader = KVK_SHADER_REDUCE;
  d->n_spec = 1;
  d->spec[0] = kvk_pow2_wg(splits, 32, 256);
  d->n_bind = 2;
  d->bind[0] = out;
  d->bind[1] = &n->out;
  d->write_mask = 2;
  kvk_param_u(d, per);       /* outputs */
  kvk_param_u(d, splits);    /* reduced elements per output */
  kvk_param_u(d, 1);         /* kept axes: [per], stride 1 */
  kvk_param_u(d, 2);         /* all axes: + [splits], stride per */
  kvk_param_f(d, 1.0f);
  kvk_param_u(d, per);
  kvk_param_u(d, splits);
  for (int i = 2; i < KILN_MAX_DIMS; i++) kvk_param_u(d, 1);
  kvk_param_u(d, 1);
  kvk_param_u(d, per);
  for (int i = 2; i < KILN_MAX_DIMS; i++) kvk_param_u(d, 0);
  d->groups[0] = kvk_groups_1d(p->dev, per, 1);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}

kiln_status kvk_pool_plan(kvk_plan *p, int index, const kvk_node *n) {
  char s0[KVK_SHAPE_STR], s1[KVK_SHAPE_STR];
  int is_max = n->op == KILN_OP_MAXPOOL2D || n->op == KILN_OP_MAXPOOL2D_BACKWARD;
  int backward = n->op == KILN_OP_MAXPOOL2D_BACKWARD || n->op == KILN_OP_AVGPOOL2D_BACKWARD;
  /* x: the forward input (dx when backward); y: the forward output (dy) */
  const kvk_tensor *x = backward ? &n->out : &n->in[0];
  const kvk_tensor *y = backward ? &n->in[0] : &n->out;
  const char *xn = backward ? "dx" : "x", *yn = backward ? "dy" : "y";
  if (x->ndim != 4 || y->ndim != 4)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s %s and %s %s must have rank 4 (N, C, H, W)", xn, KVK_SHAPE(s0, x),
                          yn, KVK_SHAPE(s1, y));
  for (int d = 0; d < 4; d++)
    if (x->shape[d] < 1)
      return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "%s %s has an empty dimension %d", xn,
                            KVK_SHAPE(s0, x), d);
  if (n->op == KILN_OP_MAXPOOL2D_BACKWARD && !kvk_same_shape(&n->in[1], x))
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH, "x %s and dx %s must have the same shape",
                          KVK_SHAPE(s0, &n->in[1]), KVK_SHAPE(s1, x));
  const int64_t *ip = n->ip;
  int64_t KH = ip[0], KW = ip[1], sh = ip[2], sw = ip[3], ph = ip[4], pw = ip[5];
  if (KH < 1 || KW < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || ph >= KH || pw >= KW)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "bad parameters kernel [%lld, %lld], stride [%lld, %lld], padding "
                          "[%lld, %lld]: kernel and stride must be >= 1, padding >= 0 and smaller "
                          "than the kernel",
                          (long long)KH, (long long)KW, (long long)sh, (long long)sw,
                          (long long)ph, (long long)pw);
  if (!is_max && ip[6] != 0 && ip[6] != 1)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "count_include_pad (ip[6]) is %lld; expected 0 or 1", (long long)ip[6]);
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  if (H + 2 * ph < KH || W + 2 * pw < KW)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s %s padded by [%lld, %lld] is smaller than the kernel %lldx%lld", xn,
                          KVK_SHAPE(s0, x), (long long)ph, (long long)pw, (long long)KH,
                          (long long)KW);
  int64_t OH = (H + 2 * ph - KH) / sh + 1, OW = (W + 2 * pw - KW) / sw + 1;
  if (y->shape[0] != N || y->shape[1] != C || y->shape[2] != OH || y->shape[3] != OW)
    return kvk_node_error(index, n, KILN_SHAPE_MISMATCH,
                          "%s is %s, expected [%lld, %lld, %lld, %lld] for %s %s", yn,
                          KVK_SHAPE(s1, y), (long long)N, (long long)C, (long long)OH,
                          (long long)OW, xn, KVK_SHAPE(s0, x));
  kvk_dispatch *d = kvk_plan_add(p, index, n);
  if (!d) return KILN_OUT_OF_MEMORY;
  uint32_t mode = n->op == KILN_OP_MAXPOOL2D ? 0 : n->op == KILN_OP_AVGPOOL2D ? 1
                  : n->op == KILN_OP_MAXPOOL2D_BACKWARD ? 2 : 3;
  d->shader = KVK_SHADER_POOL2D;
  d->n_spec = 2;
  d->spec[0] = WG;
  d->spec[1] = mode;
  d->n_bind = 3;
  d->bind[0] = mode == 2 ? &n->in[1] : &n->in[0];   /* x (avg bwd: dy, unused) */
  d->bind[1] = &n->in[0];                           /* dy (forward: x, unused) */
  d->bind[2] = &n->out;
  d->write_mask = 4;
  const int64_t v[] = {N, C, H, W, OH, OW, KH, KW, sh, sw, ph, pw, is_max ? 0 : ip[6]};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) kvk_param_u(d, (uint64_t)v[i]);
  d->groups[0] = kvk_groups_1d(p->dev, (uint64_t)n->out.numel, WG);
  d->groups[1] = d->groups[2] = 1;
  return KILN_OK;
}
