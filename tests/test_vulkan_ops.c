/*
 * test_vulkan_ops.c - the Vulkan plugin against the CPU plugin, op by op.
 *
 * Every case builds the same graph on both plugins (through the plugin ABI,
 * tests/util/plugin_harness.h), writes the same random inputs, runs, reads
 * back EVERY tensor and compares within the case's stated bound:
 *     |vulkan - cpu| <= atol + rtol * |cpu|      (NaN only against NaN)
 * Bounds, per op family (inputs in [-1, 1) unless the op needs otherwise):
 *   fill, copy, reshape, transpose, expand, neg, relu, add/sub/mul/div,
 *   relu_backward:                   exact (0)
 *   exp, log, tanh, sigmoid, scale, the other backward helpers:
 *                                    atol 1e-6, rtol 1e-5 (GPU exp/log are
 *                                    a few ulp from libm)
 *   matmul (K terms):                atol 1e-6 * K, rtol 1e-5 (float sums in
 *                                    another order than the CPU's GEMM)
 *   sum/mean (R terms):              atol 1e-6 * R, rtol 1e-5
 *   softmax family, cross-entropy:   atol 1e-6, rtol 1e-5
 *   sgd, adam:                       atol 1e-6, rtol 1e-5
 *   conv2d and its backward (K terms per output, K the largest of the
 *   forward, input-gradient and weight-gradient depths): atol 1e-6 * K,
 *   rtol 1e-5
 *   pooling and its backward:        atol 1e-6, rtol 1e-5
 * Shapes include 1, odd sizes, sizes that are not multiples of any tile or
 * workgroup size (matmul tiles are 32 and 64, workgroups 32..256) and a few
 * large ones. KILN_VK_VALIDATION=1 is set before the plugin loads, so any
 * validation-layer message (synchronization included) fails the call that
 * saw it. Without a Vulkan device the suite skips, saying why.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plugin_harness.h"
#include "testutil.h"

#define VK_PLUGIN KILN_BUILD_DIR "/lib/kiln/libkiln-vulkan.so"

/* ---- a graph description both plugins build ------------------------------ */

typedef struct tspec {
  uint32_t dt;
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  float lo, hi;                 /* random range; i32: integers in [lo, hi] */
  int alias;                    /* >= 0: same bytes as tensor alias (no own buffer) */
} tspec;

typedef struct nspec {
  uint32_t op;
  int n_in;
  int in[KILN_OP_MAX_INPUTS];
  int out;
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
} nspec;

typedef struct tcase {
  int nt, nn;
  tspec t[24];
  nspec n[12];
  double atol, rtol;
  uint64_t seed;
  int shared_buffer;            /* 1: all tensors in one buffer at 4-byte-aligned offsets */
} tcase;

static ph_plugin vk, cpu;

static void open_both(void) {
  setenv("KILN_VK_VALIDATION", "1", 1);
  kiln_status st = ph_open(&vk, VK_PLUGIN);
  if (st == KILN_NO_DEVICE)
    cr_skip_test("no Vulkan device on this machine (%s); the Vulkan op suite needs one", ph_error());
  cr_assert_eq(st, KILN_OK, "opening the Vulkan plugin: %s", ph_error());
  cr_assert_eq(ph_open(&cpu, NULL), KILN_OK, "opening the CPU plugin: %s", ph_error());
}

static void close_both(void) {
  ph_close(&vk);
  ph_close(&cpu);
}

static void case_init(tcase *c, double atol, double rtol) {
  memset(c, 0, sizeof *c);
  c->atol = atol;
  c->rtol = rtol;
  c->seed = 1;
}

/* Adds a tensor; shape given as ndim values. Returns its index. */
static int T(tcase *c, uint32_t dt, int ndim, const int64_t *shape, float lo, float hi) {
  tspec *t = &c->t[c->nt];
  memset(t, 0, sizeof *t);
  t->dt = dt;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->lo = lo;
  t->hi = hi;
  t->alias = -1;
  return c->nt++;
}
#define SH(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}
#define F(c, ...) T((c), KILN_F32, SH(__VA_ARGS__), -1.0f, 1.0f)
#define SCALAR(c) T((c), KILN_F32, 0, NULL, -1.0f, 1.0f)

static int N_(tcase *c, uint32_t op, int n_in, const int *in, int out, const int64_t *ip,
              const float *fp) {
  nspec *n = &c->n[c->nn];
  memset(n, 0, sizeof *n);
  n->op = op;
  n->n_in = n_in;
  for (int i = 0; i < n_in; i++) n->in[i] = in[i];
  n->out = out;
  if (ip) memcpy(n->ip, ip, sizeof n->ip);
  if (fp) memcpy(n->fp, fp, sizeof n->fp);
  return c->nn++;
}
#define NODE(c, op, out, ip, fp, ...)                                                   \
  N_((c), (op), (int)(sizeof((int[]){__VA_ARGS__}) / sizeof(int)), (int[]){__VA_ARGS__}, \
     (out), (ip), (fp))
#define IP(...) ((const int64_t[KILN_OP_MAX_IPARAMS]){__VA_ARGS__})
#define FP(...) ((const float[KILN_OP_MAX_FPARAMS]){__VA_ARGS__})

static int64_t numel_of(const tspec *t) { return ph_numel(t->ndim, t->shape); }

/* Builds c on p into g (tensors in their own buffers, or all in one). */
static void build(const tcase *c, ph_plugin *p, ph_graph *g) {
  ph_graph_init(g, p);
  uint64_t offs[24] = {0};
  int shared = -1;
  if (c->shared_buffer) {
    uint64_t at = 4;   /* deliberately not 16- or 64-byte aligned */
    for (int i = 0; i < c->nt; i++) {
      if (c->t[i].alias >= 0) continue;
      offs[i] = at;
      at += (uint64_t)numel_of(&c->t[i]) * 4 + 4 * (uint64_t)(i + 1);
    }
    shared = ph_buffer(g, at + 64);
    cr_assert_geq(shared, 0, "%s", ph_error());
  }
  for (int i = 0; i < c->nt; i++) {
    const tspec *t = &c->t[i];
    int ti;
    if (t->alias >= 0) {
      const kiln_plugin_tensor *a = &g->tensors[t->alias];
      ti = ph_tensor_at(g, t->dt, t->ndim, t->shape, (int)a->buffer, a->offset);
    } else if (shared >= 0) {
      ti = ph_tensor_at(g, t->dt, t->ndim, t->shape, shared, offs[i]);
    } else {
      ti = ph_tensor(g, t->dt, t->ndim, t->shape);
    }
    cr_assert_eq(ti, i, "tensor %d: %s", i, ph_error());
  }
  for (int i = 0; i < c->nn; i++) {
    const nspec *n = &c->n[i];
    cr_assert_geq(ph_node(g, n->op, n->n_in, n->in, n->out, n->ip, n->fp), 0, "%s", ph_error());
  }
}

static void *random_data(const tcase *c, int i) {
  const tspec *t = &c->t[i];
  int64_t n = numel_of(t);
  void *d = malloc((size_t)(n ? n : 1) * 4);
  cr_assert_not_null(d);
  if (t->dt == KILN_I32 || t->dt == KILN_U8) {
    float *tmp = malloc((size_t)(n ? n : 1) * 4);
    cr_assert_not_null(tmp);
    tu_fill_uniform(tmp, n, c->seed * 131 + (uint64_t)i, 0.0f, 1.0f);
    int span = (int)(t->hi - t->lo) + 1;
    for (int64_t k = 0; k < n; k++) {
      int32_t v = (int32_t)t->lo + (int32_t)(tmp[k] * span) % span;
      if (t->dt == KILN_U8) ((uint8_t *)d)[k] = (uint8_t)v;
      else ((int32_t *)d)[k] = v;
    }
    free(tmp);
  } else {
    tu_fill_uniform(d, n, c->seed * 131 + (uint64_t)i, t->lo, t->hi);
  }
  return d;
}

static void compare(const tcase *c, int i, const float *v, const float *r, int64_t n,
                    const char *what) {
  const tspec *t = &c->t[i];
  for (int64_t k = 0; k < n; k++) {
    if (t->dt == KILN_I32) {
      cr_assert_eq(((const int32_t *)v)[k], ((const int32_t *)r)[k], "%s: tensor %d [%lld]", what,
                   i, (long long)k);
      continue;
    }
    if (t->dt == KILN_U8) {
      cr_assert_eq(((const uint8_t *)v)[k], ((const uint8_t *)r)[k], "%s: tensor %d [%lld]", what,
                   i, (long long)k);
      continue;
    }
    if (isnan(r[k])) {
      cr_assert(isnan(v[k]), "%s: tensor %d [%lld]: vulkan %.9g, cpu NaN", what, i, (long long)k,
                (double)v[k]);
      continue;
    }
    double err = fabs((double)v[k] - (double)r[k]);
    double bound = c->atol + c->rtol * fabs((double)r[k]);
    cr_assert(err <= bound || (isinf(r[k]) && v[k] == r[k]),
              "%s: tensor %d [%lld] of %lld: vulkan %.9g, cpu %.9g, |diff| %.3g > bound %.3g",
              what, i, (long long)k, (long long)n, (double)v[k], (double)r[k], err, bound);
  }
}

/* Runs c on both plugins `runs` times (the same inputs written before the
 * first run only when runs > 1 tests resubmission) and compares every
 * tensor after each run. */
static void run_case_n(const tcase *c, int runs) {
  ph_graph *gv = malloc(sizeof *gv), *gc = malloc(sizeof *gc);
  cr_assert(gv && gc);
  build(c, &vk, gv);
  build(c, &cpu, gc);
  cr_assert_eq(ph_compile(gc), KILN_OK, "cpu compile: %s", ph_error());
  cr_assert_eq(ph_compile(gv), KILN_OK, "vulkan compile: %s", ph_error());
  for (int i = 0; i < c->nt; i++) {
    if (c->t[i].alias >= 0) continue;
    void *d = random_data(c, i);
    cr_assert_eq(ph_write(gc, i, d), KILN_OK, "cpu write: %s", ph_error());
    cr_assert_eq(ph_write(gv, i, d), KILN_OK, "vulkan write: %s", ph_error());
    free(d);
  }
  for (int r = 0; r < runs; r++) {
    cr_assert_eq(ph_run(gc), KILN_OK, "cpu run: %s", ph_error());
    cr_assert_eq(ph_run(gv), KILN_OK, "vulkan run %d: %s", r, ph_error());
    for (int i = 0; i < c->nt; i++) {
      int64_t n = numel_of(&c->t[i]);
      float *a = malloc((size_t)(n ? n : 1) * 4), *b = malloc((size_t)(n ? n : 1) * 4);
      cr_assert(a && b);
      cr_assert_eq(ph_read(gv, i, a), KILN_OK, "vulkan read: %s", ph_error());
      cr_assert_eq(ph_read(gc, i, b), KILN_OK, "cpu read: %s", ph_error());
      char what[64];
      snprintf(what, sizeof what, "run %d", r);
      compare(c, i, a, b, n, what);
      free(a);
      free(b);
    }
  }
  ph_graph_free(gv);
  ph_graph_free(gc);
  free(gv);
  free(gc);
}

static void run_case(const tcase *c) { run_case_n(c, 1); }

TestSuite(vulkan, .init = open_both, .fini = close_both, .timeout = 600);

/* ---- plugin, devices, refusals ------------------------------------------- */

Test(vulkan, device_info) {
  uint32_t n = vk.api->device_count();
  cr_assert_geq(n, 1);
  uint32_t prev_rank = 0;
  for (uint32_t i = 0; i < n; i++) {
    kiln_device_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    cr_assert_eq(vk.api->device_info(i, &info), KILN_OK, "%s", ph_error());
    cr_assert_neq(info.name[0], '\0');
    cr_assert_neq(info.vendor[0], '\0');
    cr_assert_neq(info.driver[0], '\0');
    cr_assert_gt(info.memory_bytes, 0);
    cr_assert_not_null(strstr(info.details, "vulkan api: "), "details: %s", info.details);
    cr_assert_not_null(strstr(info.details, "max workgroup size"), "details: %s", info.details);
    cr_assert_not_null(strstr(info.details, "memory heap 0"), "details: %s", info.details);
    /* discrete (4) > integrated (3) > virtual (2) > cpu (1), others last */
    uint32_t rank = info.kind == KILN_DEVICE_OTHER ? 5 : 5 - info.kind;
    cr_assert_geq(rank, prev_rank, "device %u (%s, kind %u) is listed after a less preferred one",
                  i, info.name, info.kind);
    prev_rank = rank;
  }
  kiln_device_info info = {.struct_size = sizeof info};
  cr_assert_eq(vk.api->device_info(n, &info), KILN_NOT_FOUND);
}

Test(vulkan, op_support_claims_only_implemented_ops) {
  /* every op of ops.h is implemented and tested below, on f32 only */
  static const uint32_t all[] = {
      KILN_OP_ADD, KILN_OP_SUB, KILN_OP_MUL, KILN_OP_DIV, KILN_OP_NEG, KILN_OP_RELU,
      KILN_OP_TANH, KILN_OP_SIGMOID, KILN_OP_EXP, KILN_OP_LOG, KILN_OP_SCALE,
      KILN_OP_RELU_BACKWARD, KILN_OP_TANH_BACKWARD, KILN_OP_SIGMOID_BACKWARD, KILN_OP_MATMUL,
      KILN_OP_SUM, KILN_OP_MEAN, KILN_OP_EXPAND, KILN_OP_SOFTMAX, KILN_OP_LOG_SOFTMAX,
      KILN_OP_SOFTMAX_BACKWARD, KILN_OP_LOG_SOFTMAX_BACKWARD, KILN_OP_CROSS_ENTROPY,
      KILN_OP_CROSS_ENTROPY_BACKWARD, KILN_OP_RESHAPE, KILN_OP_TRANSPOSE, KILN_OP_COPY,
      KILN_OP_FILL, KILN_OP_CONV2D, KILN_OP_CONV2D_BACKWARD_INPUT,
      KILN_OP_CONV2D_BACKWARD_WEIGHT, KILN_OP_MAXPOOL2D, KILN_OP_MAXPOOL2D_BACKWARD,
      KILN_OP_AVGPOOL2D, KILN_OP_AVGPOOL2D_BACKWARD, KILN_OP_SGD, KILN_OP_ADAM,
      KILN_OP_INCREMENT, KILN_OP_CAST};
  /* ABI 1.3: these may also write over a same-sized input (their shaders
   * read and write element i in one invocation); FILL has no input and
   * CAST may read a narrower one. */
  static const uint32_t in_place[] = {
      KILN_OP_ADD, KILN_OP_SUB, KILN_OP_MUL, KILN_OP_DIV, KILN_OP_NEG, KILN_OP_RELU,
      KILN_OP_TANH, KILN_OP_SIGMOID, KILN_OP_EXP, KILN_OP_LOG, KILN_OP_SCALE,
      KILN_OP_RELU_BACKWARD, KILN_OP_TANH_BACKWARD, KILN_OP_SIGMOID_BACKWARD, KILN_OP_RESHAPE,
      KILN_OP_COPY};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    int want = KILN_OP_SUPPORT_RUNS;
    for (size_t k = 0; k < sizeof in_place / sizeof in_place[0]; k++)
      if (in_place[k] == all[i]) want |= KILN_OP_SUPPORT_IN_PLACE;
    cr_assert_eq(vk.api->op_support(0, all[i], KILN_F32), want, "op %u", all[i]);
    cr_assert_eq(vk.api->op_support(0, all[i], KILN_F16), 0, "op %u on f16", all[i]);
  }
  /* and the sequence-model and transformer ops; of them GELU and its
   * gradient (gelu.comp, element by element) may run in place */
  for (uint32_t op = KILN_OP_EMBEDDING; op <= KILN_OP_ASSIGN; op++)
    cr_assert_eq(vk.api->op_support(0, op, KILN_F32), KILN_OP_SUPPORT_RUNS, "op %u", op);
  for (uint32_t op = KILN_OP_LAYERNORM; op <= KILN_OP_LR_SCHEDULE; op++) {
    int gelu = op == KILN_OP_GELU || op == KILN_OP_GELU_BACKWARD;
    cr_assert_eq(vk.api->op_support(0, op, KILN_F32),
                 KILN_OP_SUPPORT_RUNS | (gelu ? KILN_OP_SUPPORT_IN_PLACE : 0), "op %u", op);
  }
  cr_assert_eq(vk.api->op_support(0, KILN_OP_NONE, KILN_F32), 0);
  cr_assert_eq(vk.api->op_support(0, 5, KILN_F32), 0);      /* a gap in the numbering */
  cr_assert_eq(vk.api->op_support(0, 9999, KILN_F32), 0);
  cr_assert_eq(vk.api->op_support(999, KILN_OP_ADD, KILN_F32), 0);

  /* an unknown op number, and an f16 tensor, are refused at compile */
  ph_graph g;
  ph_graph_init(&g, &vk);
  int x = ph_tensor(&g, KILN_F32, 1, (int64_t[]){4});
  int y = ph_tensor(&g, KILN_F32, 1, (int64_t[]){4});
  ph_node(&g, 9999, 1, (int[]){x}, y, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_UNSUPPORTED);
  cr_assert_not_null(strstr(ph_error(), "unknown op 9999"), "%s", ph_error());
  g.nodes[0].op = KILN_OP_RELU;
  g.tensors[x].dtype = KILN_F16;
  g.tensors[x].nbytes = 8;
  cr_assert_eq(ph_compile(&g), KILN_DTYPE_MISMATCH);
  cr_assert_not_null(strstr(ph_error(), "relu"), "%s", ph_error());
  ph_graph_free(&g);
}

Test(vulkan, shape_errors_name_op_and_shapes) {
  ph_graph g;
  ph_graph_init(&g, &vk);
  int a = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 4});
  int b = ph_tensor(&g, KILN_F32, 2, (int64_t[]){5, 6});
  int y = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 6});
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){a, b}, y, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_SHAPE_MISMATCH);
  cr_assert_not_null(strstr(ph_error(), "matmul"), "%s", ph_error());
  cr_assert_not_null(strstr(ph_error(), "[3, 4]"), "%s", ph_error());
  cr_assert_not_null(strstr(ph_error(), "[5, 6]"), "%s", ph_error());
  ph_graph_free(&g);
}

Test(vulkan, buffers_zeroed_and_round_trip) {
  ph_graph g;
  ph_graph_init(&g, &vk);
  /* larger than the 16 MiB staging buffer, so transfers go in chunks */
  int64_t n = (20 << 20) / 4 + 3;
  int t = ph_tensor(&g, KILN_F32, 1, &n);
  float *d = malloc((size_t)n * 4);
  cr_assert_not_null(d);
  cr_assert_eq(ph_read(&g, t, d), KILN_OK, "%s", ph_error());
  for (int64_t i = 0; i < n; i += 4099) cr_assert_eq(d[i], 0.0f, "new buffer not zeroed at %lld", (long long)i);
  tu_fill_uniform(d, n, 7, -5.0f, 5.0f);
  cr_assert_eq(ph_write(&g, t, d), KILN_OK, "%s", ph_error());
  float *e = malloc((size_t)n * 4);
  cr_assert_not_null(e);
  cr_assert_eq(ph_read(&g, t, e), KILN_OK, "%s", ph_error());
  cr_assert_eq(memcmp(d, e, (size_t)n * 4), 0);
  /* overlapping copy inside one buffer behaves like memmove */
  cr_assert_eq(vk.api->buffer_copy(vk.dev, g.buffers[0], 40, g.buffers[0], 0, 4000), KILN_OK, "%s",
               ph_error());
  cr_assert_eq(ph_read(&g, t, e), KILN_OK, "%s", ph_error());
  cr_assert_eq(memcmp(e + 10, d, 4000), 0);
  /* out-of-range access is refused, naming the call */
  cr_assert_eq(vk.api->buffer_write(vk.dev, g.buffers[0], (uint64_t)n * 4 - 2, d, 4),
               KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "buffer_write"), "%s", ph_error());
  free(d);
  free(e);
  ph_graph_free(&g);
}

/* Small writes return before their copy runs (an upload ring of a few
 * slots). More writes than slots, to overlapping ranges, interleaved with
 * graph runs that read the written bytes, must still take effect in call
 * order; the validation layer (synchronization included) must stay quiet. */
Test(vulkan, uploads_in_flight_keep_call_order) {
  ph_graph g;
  ph_graph_init(&g, &vk);
  int64_t n = 4096;
  int x = ph_tensor(&g, KILN_F32, 1, &n);
  int y = ph_tensor(&g, KILN_F32, 1, &n);
  cr_assert_geq(ph_node(&g, KILN_OP_NEG, 1, (int[]){x}, y, NULL, NULL), 0, "%s", ph_error());
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *d = malloc((size_t)n * 4), *e = malloc((size_t)n * 4);
  cr_assert(d && e);
  for (int k = 0; k < 11; k++) {
    for (int64_t i = 0; i < n; i++) d[i] = (float)(k * 10000 + i);
    /* the whole tensor, then a part over it (the part must win) */
    cr_assert_eq(ph_write(&g, x, d), KILN_OK, "%s", ph_error());
    for (int64_t i = 0; i < 100; i++) d[i] = -1.0f - (float)k;
    cr_assert_eq(vk.api->buffer_write(vk.dev, g.buffers[g.tensors[x].buffer],
                                      g.tensors[x].offset + 400, d, 400), KILN_OK, "%s", ph_error());
    if (k % 3 == 2) continue;   /* sometimes two rounds of writes before a run */
    cr_assert_eq(ph_run(&g), KILN_OK, "run %d: %s", k, ph_error());
    cr_assert_eq(ph_read(&g, y, e), KILN_OK, "%s", ph_error());
    for (int64_t i = 0; i < n; i++) {
      float want = i >= 100 && i < 200 ? 1.0f + (float)k : -(float)(k * 10000 + i);
      cr_assert_eq(e[i], want, "round %d: y[%lld] = %g, expected %g", k, (long long)i,
                   (double)e[i], (double)want);
    }
  }
  free(d);
  free(e);
  ph_graph_free(&g);
}

/* ---- elementwise ---------------------------------------------------------- */

static const int64_t ew_shapes[][4] = {
    /* ndim, dims... */
    {1, 1}, {1, 7}, {2, 3, 5}, {3, 2, 33, 17}, {1, 1000003},
};

Test(vulkan, fill_copy_reshape) {
  for (size_t s = 0; s < sizeof ew_shapes / sizeof ew_shapes[0]; s++) {
    tcase c;
    case_init(&c, 0, 0);
    int nd = (int)ew_shapes[s][0];
    int x = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
    int y = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
    int z = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
    int64_t flat = numel_of(&c.t[x]);
    int w = T(&c, KILN_F32, 1, &flat, -1, 1);
    N_(&c, KILN_OP_FILL, 0, NULL, y, NULL, FP(-2.5f));
    N_(&c, KILN_OP_COPY, 1, (int[]){x}, z, NULL, NULL);
    N_(&c, KILN_OP_RESHAPE, 1, (int[]){x}, w, NULL, NULL);
    run_case(&c);
  }
}

Test(vulkan, unary_ops) {
  static const uint32_t ops[] = {KILN_OP_NEG, KILN_OP_RELU, KILN_OP_TANH, KILN_OP_SIGMOID,
                                 KILN_OP_EXP, KILN_OP_LOG, KILN_OP_SCALE};
  for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++)
    for (size_t s = 0; s < sizeof ew_shapes / sizeof ew_shapes[0]; s++) {
      tcase c;
      int exact = ops[o] == KILN_OP_NEG || ops[o] == KILN_OP_RELU;
      case_init(&c, exact ? 0 : 1e-6, exact ? 0 : 1e-5);
      c.seed = o * 10 + s;
      int nd = (int)ew_shapes[s][0];
      /* log needs positive inputs; tanh/sigmoid/exp see a wide range */
      float lo = ops[o] == KILN_OP_LOG ? 1e-3f : -8.0f, hi = 8.0f;
      int x = T(&c, KILN_F32, nd, &ew_shapes[s][1], lo, hi);
      int y = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
      NODE(&c, ops[o], y, NULL, FP(0.75f, -0.25f), x);
      run_case(&c);
    }
}

Test(vulkan, cast_from_every_dtype) {
  /* u8 elements are read four to a word: sizes that are not multiples of
   * 4, and (in one buffer) u8 tensors at 4-byte offsets with others right
   * after them. The results are exact: a * x + b in f32 on both sides. */
  static const int64_t sizes[] = {1, 3, 5, 35, 4099};
  for (int shared = 0; shared < 2; shared++) {
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      tcase c;
      case_init(&c, 0.0, 0.0);
      c.shared_buffer = shared;
      c.seed = 7 + k;
      int64_t n = sizes[k];
      int xb = T(&c, KILN_U8, 1, &n, 0.0f, 255.0f);
      int xi = T(&c, KILN_I32, 1, &n, -100000.0f, 100000.0f);
      int xf = T(&c, KILN_F32, 1, &n, -3.0f, 3.0f);
      int yb = T(&c, KILN_F32, 1, &n, 0.0f, 0.0f);
      int yi = T(&c, KILN_F32, 1, &n, 0.0f, 0.0f);
      int yf = T(&c, KILN_F32, 1, &n, 0.0f, 0.0f);
      NODE(&c, KILN_OP_CAST, yb, NULL, FP(1.0f / 255.0f, -0.5f), xb);
      NODE(&c, KILN_OP_CAST, yi, NULL, FP(0.5f, 1.0f), xi);
      NODE(&c, KILN_OP_CAST, yf, NULL, FP(-1.75f, 0.25f), xf);
      run_case(&c);
    }
  }
  /* a [2, 3, 5] image batch of bytes, as the trainer uploads it */
  tcase c;
  case_init(&c, 0.0, 0.0);
  int x = T(&c, KILN_U8, SH(2, 3, 5), 0.0f, 255.0f);
  int y = F(&c, 2, 3, 5);
  NODE(&c, KILN_OP_CAST, y, NULL, FP(1.0f / 255.0f, 0.0f), x);
  run_case(&c);
}

Test(vulkan, unary_in_place) {
  /* y is exactly x's bytes: elementwise ops may write over their input */
  tcase c;
  case_init(&c, 1e-6, 1e-5);
  int x = F(&c, 5, 77);
  int y = F(&c, 5, 77);
  c.t[y].alias = x;
  NODE(&c, KILN_OP_TANH, y, NULL, NULL, x);
  run_case(&c);
}

Test(vulkan, binary_ops_broadcast) {
  static const uint32_t ops[] = {KILN_OP_ADD, KILN_OP_SUB, KILN_OP_MUL, KILN_OP_DIV};
  /* (a shape, b shape, y shape), rank first */
  static const int64_t cases[][3][6] = {
      {{1, 1}, {1, 1}, {1, 1}},
      {{2, 3, 5}, {2, 3, 5}, {2, 3, 5}},
      {{2, 3, 5}, {1, 5}, {2, 3, 5}},
      {{2, 3, 1}, {1, 7}, {2, 3, 7}},
      {{0}, {3, 4, 1, 6}, {3, 4, 1, 6}},                /* scalar a */
      {{4, 2, 1, 3, 1}, {3, 5, 1, 9}, {4, 2, 5, 3, 9}},
      {{2, 513, 1}, {3, 1, 1, 257}, {3, 1, 513, 257}},
      {{1, 1000003}, {1, 1000003}, {1, 1000003}},
  };
  for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++)
    for (size_t s = 0; s < sizeof cases / sizeof cases[0]; s++) {
      tcase c;
      case_init(&c, 0, ops[o] == KILN_OP_DIV ? 1e-7 : 0);
      c.seed = o * 100 + s;
      int a = T(&c, KILN_F32, (int)cases[s][0][0], &cases[s][0][1], -1, 1);
      /* b of div stays away from 0 */
      int b = T(&c, KILN_F32, (int)cases[s][1][0], &cases[s][1][1],
                ops[o] == KILN_OP_DIV ? 0.5f : -1.0f, ops[o] == KILN_OP_DIV ? 2.0f : 1.0f);
      int y = T(&c, KILN_F32, (int)cases[s][2][0], &cases[s][2][1], -1, 1);
      NODE(&c, ops[o], y, NULL, NULL, a, b);
      run_case(&c);
    }
}

Test(vulkan, unary_backward_helpers) {
  static const uint32_t ops[] = {KILN_OP_RELU_BACKWARD, KILN_OP_TANH_BACKWARD,
                                 KILN_OP_SIGMOID_BACKWARD};
  for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++)
    for (size_t s = 0; s < sizeof ew_shapes / sizeof ew_shapes[0]; s++) {
      tcase c;
      case_init(&c, 1e-6, 1e-5);
      c.seed = 7 + o * 10 + s;
      int nd = (int)ew_shapes[s][0];
      int dy = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
      int x = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
      int dx = T(&c, KILN_F32, nd, &ew_shapes[s][1], -1, 1);
      NODE(&c, ops[o], dx, NULL, NULL, dy, x);
      run_case(&c);
    }
}

/* ---- matmul --------------------------------------------------------------- */

static void matmul_case(int ta, int tb, int nba, const int64_t *ba, int nbb, const int64_t *bb,
                        int64_t M, int64_t K, int64_t N, uint64_t seed) {
  tcase c;
  case_init(&c, 1e-6 * (double)(K > 0 ? K : 1), 1e-5);
  c.seed = seed;
  int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS], sy[KILN_MAX_DIMS];
  for (int i = 0; i < nba; i++) sa[i] = ba[i];
  for (int i = 0; i < nbb; i++) sb[i] = bb[i];
  sa[nba] = ta ? K : M;
  sa[nba + 1] = ta ? M : K;
  sb[nbb] = tb ? N : K;
  sb[nbb + 1] = tb ? K : N;
  int nby;
  int64_t bshape[KILN_MAX_DIMS];
  nby = nba > nbb ? nba : nbb;
  for (int i = 0; i < nby; i++) {
    int ia = nba - nby + i, ib = nbb - nby + i;
    int64_t da = ia >= 0 ? ba[ia] : 1, db = ib >= 0 ? bb[ib] : 1;
    bshape[i] = da == 1 ? db : da;
  }
  for (int i = 0; i < nby; i++) sy[i] = bshape[i];
  sy[nby] = M;
  sy[nby + 1] = N;
  int a = T(&c, KILN_F32, nba + 2, sa, -1, 1);
  int b = T(&c, KILN_F32, nbb + 2, sb, -1, 1);
  int y = T(&c, KILN_F32, nby + 2, sy, -1, 1);
  NODE(&c, KILN_OP_MATMUL, y, IP(ta, tb), NULL, a, b);
  run_case(&c);
}

Test(vulkan, matmul_shapes_and_transposes) {
  static const int64_t mkn[][3] = {
      {1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {64, 64, 64}, {100, 1, 50},
      {129, 67, 131}, {2, 300, 3}, {65, 16, 33},
  };
  for (size_t s = 0; s < sizeof mkn / sizeof mkn[0]; s++)
    for (int t = 0; t < 4; t++)
      matmul_case(t & 1, t >> 1, 0, NULL, 0, NULL, mkn[s][0], mkn[s][1], mkn[s][2], s * 4 + t);
}

Test(vulkan, matmul_batched_broadcast) {
  matmul_case(0, 0, 1, (int64_t[]){3}, 1, (int64_t[]){3}, 5, 7, 9, 1);
  matmul_case(0, 1, 2, (int64_t[]){2, 3}, 1, (int64_t[]){3}, 33, 17, 70, 2);
  matmul_case(1, 0, 2, (int64_t[]){2, 1}, 2, (int64_t[]){1, 4}, 13, 40, 11, 3);
  matmul_case(1, 1, 0, NULL, 3, (int64_t[]){2, 1, 3}, 65, 9, 66, 4);
}

Test(vulkan, matmul_every_tile_configuration) {
  /* The tiles chosen for discrete/integrated GPUs are not the ones chosen
   * for lavapipe: force each, plus odd ones, through KILN_VK_MATMUL_TILE
   * (read at compile). Shapes cross tile borders in M, N and K. */
  static const char *const tiles[] = {"64,64,16,4,4", "32,32,16,2,2", "32,32,8,4,4",
                                      "64,64,8,8,8", "16,48,4,2,3", "8,8,1,1,1"};
  for (size_t t = 0; t < sizeof tiles / sizeof tiles[0]; t++) {
    setenv("KILN_VK_MATMUL_TILE", tiles[t], 1);
    matmul_case(0, 0, 0, NULL, 0, NULL, 130, 67, 129, t);
    matmul_case(1, 1, 1, (int64_t[]){2}, 0, NULL, 65, 33, 70, t + 10);
  }
  /* a bad override is refused at compile, naming the variable */
  setenv("KILN_VK_MATMUL_TILE", "64,64,16,3,4", 1);
  ph_graph g;
  ph_graph_init(&g, &vk);
  int a = ph_tensor(&g, KILN_F32, 2, (int64_t[]){8, 8});
  int y = ph_tensor(&g, KILN_F32, 2, (int64_t[]){8, 8});
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){a, a}, y, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "KILN_VK_MATMUL_TILE"), "%s", ph_error());
  ph_graph_free(&g);
  unsetenv("KILN_VK_MATMUL_TILE");
}

Test(vulkan, matmul_large) {
  matmul_case(0, 0, 0, NULL, 0, NULL, 300, 257, 383, 11);
  matmul_case(1, 1, 0, NULL, 0, NULL, 128, 512, 200, 12);
}

/* ---- reductions ----------------------------------------------------------- */

static void sum_mean_cases(void) {
  static const int64_t shapes[][5] = {
      {1, 1}, {1, 1001}, {2, 7, 33}, {3, 4, 1, 300}, {4, 2, 3, 5, 7},
  };
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    int nd = (int)shapes[s][0];
    for (int64_t mask = 0; mask < (1 << nd); mask++)
      for (int keep = 0; keep < 2; keep++)
        for (int op = 0; op < 2; op++) {
          tcase c;
          int64_t R = 1;
          for (int d = 0; d < nd; d++)
            if ((mask >> d) & 1) R *= shapes[s][1 + d];
          case_init(&c, 1e-6 * (double)R, 1e-5);
          c.seed = (uint64_t)(s * 1000 + mask * 4 + keep * 2 + op);
          int x = T(&c, KILN_F32, nd, &shapes[s][1], -1, 1);
          int64_t ys[KILN_MAX_DIMS];
          int ynd = 0;
          for (int d = 0; d < nd; d++) {
            int red = (int)((mask >> d) & 1);
            if (red && !keep) continue;
            ys[ynd++] = red ? 1 : shapes[s][1 + d];
          }
          int y = T(&c, KILN_F32, ynd, ys, -1, 1);
          NODE(&c, op ? KILN_OP_MEAN : KILN_OP_SUM, y, IP(mask, keep), NULL, x);
          run_case(&c);
        }
  }
}

static void sum_large_case(void) {
  tcase c;
  case_init(&c, 1e-6 * 2000000, 1e-5);
  int x = F(&c, 2000000);
  int y = SCALAR(&c);
  NODE(&c, KILN_OP_SUM, y, IP(1, 0), NULL, x);
  int x2 = F(&c, 1000, 1000);
  int y2 = F(&c, 1000);
  NODE(&c, KILN_OP_MEAN, y2, IP(1, 0), NULL, x2);   /* over the batch axis */
  run_case(&c);
}

Test(vulkan, expand_and_transpose) {
  tcase c;
  case_init(&c, 0, 0);
  int a = F(&c, 3, 1, 5);
  int ea = F(&c, 2, 3, 4, 5);
  NODE(&c, KILN_OP_EXPAND, ea, NULL, NULL, a);
  int s = SCALAR(&c);
  int es = F(&c, 7, 9);
  NODE(&c, KILN_OP_EXPAND, es, NULL, NULL, s);
  int x = F(&c, 2, 3, 5, 7);
  int t1 = F(&c, 7, 2, 5, 3);
  NODE(&c, KILN_OP_TRANSPOSE, t1, IP(3, 0, 2, 1), NULL, x);
  int m = F(&c, 129, 67);
  int mt = F(&c, 67, 129);
  NODE(&c, KILN_OP_TRANSPOSE, mt, IP(1, 0), NULL, m);
  run_case(&c);
}

/* ---- softmax family --------------------------------------------------------- */

static void softmax_cases(void) {
  static const int64_t shapes[][4] = {{1, 1}, {2, 3, 10}, {2, 7, 1000}, {1, 65}, {3, 2, 5, 257}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    tcase c;
    case_init(&c, 1e-6, 1e-5);
    c.seed = s;
    int nd = (int)shapes[s][0];
    int x = T(&c, KILN_F32, nd, &shapes[s][1], -10, 10);
    int y = T(&c, KILN_F32, nd, &shapes[s][1], -1, 1);
    int ly = T(&c, KILN_F32, nd, &shapes[s][1], -1, 1);
    int dy = T(&c, KILN_F32, nd, &shapes[s][1], -1, 1);
    int dx = T(&c, KILN_F32, nd, &shapes[s][1], -1, 1);
    int ldx = T(&c, KILN_F32, nd, &shapes[s][1], -1, 1);
    NODE(&c, KILN_OP_SOFTMAX, y, NULL, NULL, x);
    NODE(&c, KILN_OP_LOG_SOFTMAX, ly, NULL, NULL, x);
    NODE(&c, KILN_OP_SOFTMAX_BACKWARD, dx, NULL, NULL, dy, y);
    NODE(&c, KILN_OP_LOG_SOFTMAX_BACKWARD, ldx, NULL, NULL, dy, ly);
    run_case(&c);
  }
}

static void cross_entropy_cases(void) {
  static const int64_t nc[][2] = {{1, 1}, {1, 10}, {64, 10}, {37, 65}, {300, 1000}};
  for (size_t s = 0; s < sizeof nc / sizeof nc[0]; s++) {
    tcase c;
    case_init(&c, 1e-6, 1e-5);
    c.seed = 3 + s;
    int x = T(&c, KILN_F32, 2, nc[s], -5, 5);
    /* labels in [-1, C]: the ends are out of range (zero loss, still counted) */
    int l = T(&c, KILN_I32, 1, &nc[s][0], -1, (float)nc[s][1]);
    int loss = SCALAR(&c);
    int dl = SCALAR(&c);
    int dx = T(&c, KILN_F32, 2, nc[s], -1, 1);
    NODE(&c, KILN_OP_CROSS_ENTROPY, loss, NULL, NULL, x, l);
    NODE(&c, KILN_OP_CROSS_ENTROPY_BACKWARD, dx, NULL, NULL, dl, x, l);
    run_case(&c);
  }
}

/* The reductions (sum/mean, softmax and its backward, cross-entropy and its
 * backward) run with subgroup operations on a device that has them
 * (lavapipe does), and with shared-memory trees under KILN_VK_NO_SUBGROUPS=1,
 * which also clears KILN_FEATURE_SUBGROUPS in device_info: both paths are
 * checked against the CPU plugin here. */
static int device_uses_subgroups(void) {
  kiln_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  cr_assert_eq(vk.api->device_info(0, &info), KILN_OK, "%s", ph_error());
  return (info.features & KILN_FEATURE_SUBGROUPS) != 0;
}

Test(vulkan, sum_mean) {
  cr_log_info("reductions with subgroup operations: %s", device_uses_subgroups() ? "yes" : "no");
  sum_mean_cases();
}
Test(vulkan, sum_large) { sum_large_case(); }
Test(vulkan, softmax_family) { softmax_cases(); }
Test(vulkan, cross_entropy) { cross_entropy_cases(); }

static void open_both_no_subgroups(void) {
  setenv("KILN_VK_NO_SUBGROUPS", "1", 1);
  open_both();
}

TestSuite(vulkan_no_subgroups, .init = open_both_no_subgroups, .fini = close_both, .timeout = 600);

Test(vulkan_no_subgroups, feature_cleared) {
  cr_assert_not(device_uses_subgroups(),
                "KILN_VK_NO_SUBGROUPS=1, yet device_info reports KILN_FEATURE_SUBGROUPS");
}
Test(vulkan_no_subgroups, sum_mean) { sum_mean_cases(); }
Test(vulkan_no_subgroups, sum_large) { sum_large_case(); }
Test(vulkan_no_subgroups, softmax_family) { softmax_cases(); }
Test(vulkan_no_subgroups, cross_entropy) { cross_entropy_cases(); }

/* ---- convolution and pooling ---------------------------------------------- */

/* N, C, H, W, O, KH, KW, stride h/w, pad h/w, dilation h/w, groups */
static const int64_t conv_cfgs[][14] = {
    {1, 1, 5, 5, 1, 3, 3, 1, 1, 0, 0, 1, 1, 1},
    {2, 3, 9, 7, 4, 3, 2, 2, 1, 1, 0, 1, 2, 1},
    {2, 4, 8, 8, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2},
    {3, 4, 7, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 4},     /* depthwise */
    {8, 1, 28, 28, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1},  /* the MNIST CNN's first layer */
    {4, 32, 14, 14, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1}, /* and its second */
    {2, 5, 11, 13, 7, 5, 4, 3, 2, 2, 3, 2, 1, 1},
};

static void conv_case(size_t i, uint64_t seed) {
  const int64_t *k = conv_cfgs[i];
  int64_t N = k[0], C = k[1], H = k[2], W = k[3], O = k[4], KH = k[5], KW = k[6], G = k[13];
  int64_t OH = (H + 2 * k[9] - k[11] * (KH - 1) - 1) / k[7] + 1;
  int64_t OW = (W + 2 * k[10] - k[12] * (KW - 1) - 1) / k[8] + 1;
  int64_t depth = (C / G) * KH * KW;            /* forward */
  if (N * OH * OW > depth) depth = N * OH * OW;  /* backward weight */
  if ((O / G) * KH * KW > depth) depth = (O / G) * KH * KW;   /* backward input */
  const int64_t ip[8] = {k[7], k[8], k[9], k[10], k[11], k[12], G};
  tcase c;
  case_init(&c, 1e-6 * (double)depth, 1e-5);
  c.seed = seed;
  int x = F(&c, N, C, H, W);
  int w = F(&c, O, C / G, KH, KW);
  int b = F(&c, O);
  int y = F(&c, N, O, OH, OW);
  int yb = F(&c, N, O, OH, OW);
  int dy = F(&c, N, O, OH, OW);
  int dx = F(&c, N, C, H, W);
  int dw = F(&c, O, C / G, KH, KW);
  NODE(&c, KILN_OP_CONV2D, y, ip, NULL, x, w);
  NODE(&c, KILN_OP_CONV2D, yb, ip, NULL, x, w, b);
  NODE(&c, KILN_OP_CONV2D_BACKWARD_INPUT, dx, ip, NULL, dy, w);
  NODE(&c, KILN_OP_CONV2D_BACKWARD_WEIGHT, dw, ip, NULL, dy, x);
  run_case(&c);
}

Test(vulkan, conv2d_forward_and_backward) {
  for (size_t i = 0; i < sizeof conv_cfgs / sizeof conv_cfgs[0]; i++) conv_case(i, i);
}

/* Every GEMM tile shape conv2d.comp may get (the GPU and CPU defaults, a
 * row per thread, and odd ones where a workgroup is not a multiple of the
 * tile's columns, so the shader's general B-tile load runs), on the
 * configurations with stride, padding, dilation and groups. */
Test(vulkan, conv2d_every_tile_configuration) {
  static const char *const tiles[] = {"32,32,16,2,2", "32,32,8,4,4", "64,64,8,8,8",
                                      "32,64,8,4,8", "1,64,8,1,8", "16,48,4,2,3", "8,8,1,1,1"};
  static const size_t cfgs[] = {1, 2, 3, 6};
  for (size_t t = 0; t < sizeof tiles / sizeof tiles[0]; t++) {
    setenv("KILN_VK_CONV_TILE", tiles[t], 1);
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) conv_case(cfgs[i], 100 + t * 10 + i);
  }
  unsetenv("KILN_VK_CONV_TILE");
}

Test(vulkan, pool2d_forward_and_backward) {
  /* N, C, H, W, KH, KW, stride h/w, pad h/w */
  static const int64_t cfgs[][10] = {
      {2, 3, 8, 8, 2, 2, 2, 2, 0, 0},   /* the MNIST CNN's pools */
      {1, 2, 7, 9, 3, 3, 2, 2, 1, 1},
      {2, 1, 5, 6, 3, 2, 1, 2, 1, 0},
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
      {4, 16, 28, 28, 2, 2, 2, 2, 0, 0},
  };
  for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
    for (int incl = 0; incl < 2; incl++) {
      const int64_t *k = cfgs[i];
      int64_t OH = (k[2] + 2 * k[8] - k[4]) / k[6] + 1, OW = (k[3] + 2 * k[9] - k[5]) / k[7] + 1;
      const int64_t ip[8] = {k[4], k[5], k[6], k[7], k[8], k[9], incl};
      tcase c;
      case_init(&c, 1e-6, 1e-5);
      c.seed = i * 2 + (uint64_t)incl;
      int x = F(&c, k[0], k[1], k[2], k[3]);
      int my = F(&c, k[0], k[1], OH, OW);
      int ay = F(&c, k[0], k[1], OH, OW);
      int dy = F(&c, k[0], k[1], OH, OW);
      int mdx = F(&c, k[0], k[1], k[2], k[3]);
      int adx = F(&c, k[0], k[1], k[2], k[3]);
      NODE(&c, KILN_OP_MAXPOOL2D, my, ip, NULL, x);
      NODE(&c, KILN_OP_AVGPOOL2D, ay, ip, NULL, x);
      NODE(&c, KILN_OP_MAXPOOL2D_BACKWARD, mdx, ip, NULL, dy, x);
      NODE(&c, KILN_OP_AVGPOOL2D_BACKWARD, adx, ip, NULL, dy);
      run_case(&c);
    }
}

/* ---- sequence-model data movement ------------------------------------------ */

Test(vulkan, slice_assign_clip_coef) {
  /* x [3, 5, 7]: slices along each axis, their backward, assign, clip_coef */
  static const int64_t sl[][3] = {{0, 1, 2}, {1, 0, 5}, {1, 3, 1}, {2, 2, 4}};
  for (size_t i = 0; i < sizeof sl / sizeof sl[0]; i++) {
    tcase c;
    case_init(&c, 0, 0);
    c.seed = i;
    int64_t ps[3] = {3, 5, 7};
    ps[sl[i][0]] = sl[i][2];
    int x = F(&c, 3, 5, 7);
    int y = T(&c, KILN_F32, 3, ps, -1, 1);
    int dy = T(&c, KILN_F32, 3, ps, -1, 1);
    int dx = F(&c, 3, 5, 7);
    const int64_t ip[KILN_OP_MAX_IPARAMS] = {sl[i][0], sl[i][1], sl[i][2]};
    NODE(&c, KILN_OP_SLICE, y, ip, NULL, x);
    NODE(&c, KILN_OP_SLICE_BACKWARD, dx, ip, NULL, dy);
    int dst = F(&c, 3, 5, 7);
    NODE(&c, KILN_OP_ASSIGN, dst, NULL, NULL, dst, dx);
    run_case(&c);
  }
  tcase c;
  case_init(&c, 1e-6, 1e-5);
  int big = T(&c, KILN_F32, 0, NULL, 4.0f, 100.0f);     /* norm > max: coefficient < 1 */
  int small = T(&c, KILN_F32, 0, NULL, 0.0f, 0.5f);     /* norm < max: 1 */
  int cb = SCALAR(&c), cs = SCALAR(&c);
  NODE(&c, KILN_OP_CLIP_COEF, cb, NULL, FP(1.5f, 1e-6f), big);
  NODE(&c, KILN_OP_CLIP_COEF, cs, NULL, FP(1.5f, 1e-6f), small);
  run_case(&c);
}

Test(vulkan, embedding_and_dropout) {
  for (int r = 0; r < 3; r++) {
    tcase c;
    case_init(&c, 0, 0);   /* gathers, in-order sums and a keep mask: exact */
    c.seed = (uint64_t)r;
    int64_t V = r == 2 ? 65 : 11, C = r == 1 ? 1 : 7;
    int w = T(&c, KILN_F32, 2, (int64_t[]){V, C}, -1, 1);
    /* indices in [-1, V]: both ends out of range (zero rows, no gradient) */
    int idx = T(&c, KILN_I32, 2, (int64_t[]){3, 33}, -1, (float)V);
    int y = T(&c, KILN_F32, 3, (int64_t[]){3, 33, C}, -1, 1);
    int dy = T(&c, KILN_F32, 3, (int64_t[]){3, 33, C}, -1, 1);
    int dw = T(&c, KILN_F32, 2, (int64_t[]){V, C}, -1, 1);
    NODE(&c, KILN_OP_EMBEDDING, y, NULL, NULL, w, idx);
    NODE(&c, KILN_OP_EMBEDDING_BACKWARD, dw, NULL, NULL, dy, idx);
    int x = F(&c, 1001, 3);
    int counter = T(&c, KILN_F32, 0, NULL, 5.0f + (float)r, 5.0f + (float)r);
    int dx = F(&c, 1001, 3);
    NODE(&c, KILN_OP_DROPOUT, dx, IP(0x12345678, 0x9abcdef0 + r, 2), FP(0.3f), x, counter);
    run_case(&c);
  }
}

/* ---- optimizers ------------------------------------------------------------- */

Test(vulkan, sgd_variants) {
  static const float fps[][4] = {
      /* lr, momentum, weight_decay, dampening */
      {0.1f, 0.0f, 0.0f, 0.0f}, {0.05f, 0.9f, 0.0f, 0.0f}, {0.05f, 0.9f, 1e-2f, 0.1f},
  };
  for (size_t v = 0; v < 3; v++)
    for (int nesterov = 0; nesterov < 2; nesterov++) {
      tcase c;
      case_init(&c, 1e-6, 1e-5);
      c.seed = v * 2 + (uint64_t)nesterov;
      int p = F(&c, 33, 17);
      int g = F(&c, 33, 17);
      int vel = F(&c, 33, 17);
      NODE(&c, KILN_OP_SGD, p, IP(nesterov), FP(fps[v][0], fps[v][1], fps[v][2], fps[v][3]), p,
           g, vel);
      /* twice, so the velocity is used */
      NODE(&c, KILN_OP_SGD, p, IP(nesterov), FP(fps[v][0], fps[v][1], fps[v][2], fps[v][3]), p,
           g, vel);
      run_case(&c);
    }
  tcase c;
  case_init(&c, 1e-6, 1e-5);
  int p = F(&c, 1001);
  int g = F(&c, 1001);
  NODE(&c, KILN_OP_SGD, p, NULL, FP(0.1f, 0.0f, 1e-3f), p, g);
  run_case(&c);
}

Test(vulkan, adam_and_increment) {
  for (int decoupled = 0; decoupled < 2; decoupled++)
    for (int lr_input = 0; lr_input < 2; lr_input++) {
      tcase c;
      case_init(&c, 1e-6, 1e-5);
      c.seed = (uint64_t)(decoupled * 2 + lr_input);
      int p = F(&c, 257, 3);
      int g = F(&c, 257, 3);
      int m = F(&c, 257, 3);
      int v = T(&c, KILN_F32, SH(257, 3), 0.0f, 1.0f);   /* second moments are >= 0 */
      int step = T(&c, KILN_F32, 0, NULL, 1.0f, 1.0f);
      int lr = T(&c, KILN_F32, 0, NULL, 1e-3f, 1e-2f);
      NODE(&c, KILN_OP_INCREMENT, step, NULL, FP(1.0f), step);
      if (lr_input)
        NODE(&c, KILN_OP_ADAM, p, IP(decoupled), FP(1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f), p, g, m,
             v, step, lr);
      else
        NODE(&c, KILN_OP_ADAM, p, IP(decoupled), FP(1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f), p, g, m,
             v, step);
      run_case(&c);
    }
}

/* ---- transformers ------------------------------------------------------------ */

/* Each case below is checked against a double-precision reference written
 * here (itself checked against central finite differences where it is a
 * gradient) and against the CPU plugin (run_case), within one bound per
 * test:
 *   layernorm, its backward:         atol 1e-5, rtol 1e-4 (float row statistics)
 *   layernorm_backward_params (R rows summed): atol 1e-6 * R, rtol 1e-4
 *   gelu, gelu_backward:             atol 1e-6, rtol 1e-5 (erfc fit < 1.2e-7)
 *   attention:                       atol 1e-5, rtol 1e-4
 *   attention_backward (T terms):    atol 1e-6 * T + 1e-5, rtol 1e-4
 *   lr_schedule:                     atol 1e-6 * max_lr, rtol 1e-5 */

/* Runs c once on Vulkan alone; returns every tensor as read back (inputs as
 * written). Free with free_all(). */
static float **vk_run(const tcase *c) {
  ph_graph *g = malloc(sizeof *g);
  float **t = calloc((size_t)c->nt, sizeof *t);
  cr_assert(g && t);
  build(c, &vk, g);
  cr_assert_eq(ph_compile(g), KILN_OK, "vulkan compile: %s", ph_error());
  for (int i = 0; i < c->nt; i++) {
    if (c->t[i].alias >= 0) continue;
    void *d = random_data(c, i);
    cr_assert_eq(ph_write(g, i, d), KILN_OK, "vulkan write: %s", ph_error());
    free(d);
  }
  cr_assert_eq(ph_run(g), KILN_OK, "vulkan run: %s", ph_error());
  for (int i = 0; i < c->nt; i++) {
    int64_t n = numel_of(&c->t[i]);
    t[i] = malloc((size_t)(n ? n : 1) * 4);
    cr_assert_not_null(t[i]);
    cr_assert_eq(ph_read(g, i, t[i]), KILN_OK, "vulkan read: %s", ph_error());
  }
  ph_graph_free(g);
  free(g);
  return t;
}

static void free_all(const tcase *c, float **t) {
  for (int i = 0; i < c->nt; i++) free(t[i]);
  free(t);
}

static void compare_ref(const tcase *c, int i, const float *v, const double *r, const char *what) {
  int64_t n = numel_of(&c->t[i]);
  for (int64_t k = 0; k < n; k++) {
    double err = fabs((double)v[k] - r[k]), bound = c->atol + c->rtol * fabs(r[k]);
    cr_assert(err <= bound,
              "%s: tensor %d [%lld] of %lld: vulkan %.9g, double reference %.9g, |diff| %.3g > "
              "bound %.3g",
              what, i, (long long)k, (long long)n, (double)v[k], r[k], err, bound);
  }
}

static double *dalloc(int64_t n) {
  double *d = calloc((size_t)(n ? n : 1), sizeof *d);
  cr_assert_not_null(d);
  return d;
}

/* central finite difference of f at x[k] (x restored), step h */
#define FD(f, x, k, h) \
  ((x)[k] += (h), fp_ = (f), (x)[k] -= 2 * (h), fm_ = (f), (x)[k] += (h), (fp_ - fm_) / (2 * (h)))

/* y = layernorm(x) [rows, C]; optionally the mean and rstd per row */
static void ref_layernorm(const double *x, const double *g, const double *b, int64_t rows,
                          int64_t C, double eps, double *y) {
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x + r * C;
    double m = 0, v = 0;
    for (int64_t c = 0; c < C; c++) m += xr[c];
    m /= (double)C;
    for (int64_t c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
    double rstd = 1.0 / sqrt(v / (double)C + eps);
    for (int64_t c = 0; c < C; c++) y[r * C + c] = (xr[c] - m) * rstd * g[c] + b[c];
  }
}

/* L = sum(dy * layernorm(x)), for finite differences */
static double ln_loss(const double *dy, const double *x, const double *g, const double *b,
                      int64_t rows, int64_t C, double eps, double *tmp) {
  ref_layernorm(x, g, b, rows, C, eps, tmp);
  double L = 0;
  for (int64_t k = 0; k < rows * C; k++) L += dy[k] * tmp[k];
  return L;
}

/* dx [rows, C] and dparams [2, C] of L = sum(dy * layernorm(x)) */
static void ref_layernorm_backward(const double *dy, const double *x, const double *g,
                                   int64_t rows, int64_t C, double eps, double *dx, double *dp) {
  for (int64_t c = 0; c < 2 * C; c++) dp[c] = 0;
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x + r * C, *gr = dy + r * C;
    double m = 0, v = 0, sg = 0, sgx = 0;
    for (int64_t c = 0; c < C; c++) m += xr[c];
    m /= (double)C;
    for (int64_t c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
    double rstd = 1.0 / sqrt(v / (double)C + eps);
    for (int64_t c = 0; c < C; c++) {
      double xh = (xr[c] - m) * rstd;
      sg += gr[c] * g[c];
      sgx += gr[c] * g[c] * xh;
      dp[c] += gr[c] * xh;
      dp[C + c] += gr[c];
    }
    sg /= (double)C;
    sgx /= (double)C;
    for (int64_t c = 0; c < C; c++)
      dx[r * C + c] = rstd * (gr[c] * g[c] - sg - (xr[c] - m) * rstd * sgx);
  }
}

static double *to_double(const float *f, int64_t n) {
  double *d = dalloc(n);
  for (int64_t k = 0; k < n; k++) d[k] = f[k];
  return d;
}

static void layernorm_case(int64_t rows, int64_t C, float eps, uint64_t seed) {
  tcase c;
  case_init(&c, 1e-5, 1e-4);
  c.seed = seed;
  int x = T(&c, KILN_F32, SH(rows, C), -2.0f, 3.0f);
  int g = T(&c, KILN_F32, SH(C), 0.5f, 1.5f);
  int b = F(&c, C);
  int y = F(&c, rows, C);
  int dy = F(&c, rows, C);
  int dx = F(&c, rows, C);
  int dp = F(&c, 2, C);
  NODE(&c, KILN_OP_LAYERNORM, y, NULL, FP(eps), x, g, b);
  NODE(&c, KILN_OP_LAYERNORM_BACKWARD, dx, NULL, FP(eps), dy, x, g);
  NODE(&c, KILN_OP_LAYERNORM_BACKWARD_PARAMS, dp, NULL, FP(eps), dy, x);
  float **v = vk_run(&c);
  int64_t n = rows * C;
  double *X = to_double(v[x], n), *G = to_double(v[g], C), *Bb = to_double(v[b], C);
  double *DY = to_double(v[dy], n), *Y = dalloc(n), *DX = dalloc(n), *DP = dalloc(2 * C);
  ref_layernorm(X, G, Bb, rows, C, eps, Y);
  ref_layernorm_backward(DY, X, G, rows, C, eps, DX, DP);
  compare_ref(&c, y, v[y], Y, "layernorm");
  compare_ref(&c, dx, v[dx], DX, "layernorm_backward");
  c.atol = 1e-6 * (double)rows;
  compare_ref(&c, dp, v[dp], DP, "layernorm_backward_params");
  /* the reference gradients against finite differences */
  double fp_, fm_, *tmp = dalloc(n);
  for (int k = 0; k < (n ? 6 : 0); k++) {   /* no rows: dgamma, dbeta are zeros */
    int64_t i = (int64_t)(((uint64_t)k * 2654435761u + seed) % (uint64_t)n), j = i % C;
    double fd = FD(ln_loss(DY, X, G, Bb, rows, C, eps, tmp), X, i, 1e-5);
    cr_assert(fabs(fd - DX[i]) <= 1e-6 + 1e-6 * fabs(fd), "dx[%lld]: fd %.9g, ref %.9g",
              (long long)i, fd, DX[i]);
    fd = FD(ln_loss(DY, X, G, Bb, rows, C, eps, tmp), G, j, 1e-5);
    cr_assert(fabs(fd - DP[j]) <= 1e-6 * (double)rows, "dgamma[%lld]: fd %.9g, ref %.9g",
              (long long)j, fd, DP[j]);
    fd = FD(ln_loss(DY, X, G, Bb, rows, C, eps, tmp), Bb, j, 1e-5);
    cr_assert(fabs(fd - DP[C + j]) <= 1e-6 * (double)rows, "dbeta[%lld]: fd %.9g, ref %.9g",
              (long long)j, fd, DP[C + j]);
  }
  free(tmp);
  free(X), free(G), free(Bb), free(DY), free(Y), free(DX), free(DP);
  free_all(&c, v);
  c.atol = 1e-5;
  run_case(&c);
}

Test(vulkan, layernorm_forward_and_backward) {
  /* C from 1 to past the 256-thread workgroup; rows past the 32-row chunk
   * of the parameter gradient (one chunk, several, a partial last one) */
  static const int64_t shapes[][2] = {{1, 1}, {3, 5}, {1, 32}, {17, 33}, {65, 3},
                                      {7, 300}, {130, 64}, {96, 1000}, {0, 5}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    layernorm_case(shapes[i][0], shapes[i][1], i % 2 ? 1e-5f : 1e-3f, i);
}

static double ref_gelu(double x, int approx) {
  if (!approx) return 0.5 * x * (1 + erf(x / sqrt(2.0)));
  return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

static double ref_gelu_grad(double x, int approx) {
  if (!approx) return 0.5 * (1 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
  double k = sqrt(2 / M_PI), t = tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
}

Test(vulkan, gelu_forward_and_backward) {
  static const int64_t sizes[] = {1, 1001, 65537};
  for (int approx = 0; approx < 2; approx++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      tcase c;
      case_init(&c, 1e-6, 1e-5);
      c.seed = (uint64_t)(approx * 3) + s;
      int64_t n = sizes[s];
      int x = T(&c, KILN_F32, SH(n), -8.0f, 8.0f);   /* both tails and the middle */
      int y = F(&c, n);
      int dy = F(&c, n);
      int dx = F(&c, n);
      int xi = T(&c, KILN_F32, SH(n), -4.0f, 4.0f);   /* in place: y over x */
      NODE(&c, KILN_OP_GELU, y, IP(approx), NULL, x);
      NODE(&c, KILN_OP_GELU_BACKWARD, dx, IP(approx), NULL, dy, x);
      NODE(&c, KILN_OP_GELU, xi, IP(approx), NULL, xi);
      float **v = vk_run(&c);
      float *xin = random_data(&c, xi);
      double *Y = dalloc(n), *DX = dalloc(n), *YI = dalloc(n), fp_, fm_;
      for (int64_t k = 0; k < n; k++) {
        double X = v[x][k];
        Y[k] = ref_gelu(X, approx);
        DX[k] = v[dy][k] * ref_gelu_grad(X, approx);
        YI[k] = ref_gelu(xin[k], approx);
        if (k % 97 == 0) {   /* the reference derivative against finite differences */
          double fd = FD(ref_gelu(X, approx), &X, 0, 1e-6);
          cr_assert(fabs(fd - ref_gelu_grad(X, approx)) <= 1e-8, "gelu'(%g): fd %.12g, ref %.12g",
                    X, fd, ref_gelu_grad(X, approx));
        }
      }
      compare_ref(&c, y, v[y], Y, "gelu");
      compare_ref(&c, dx, v[dx], DX, "gelu_backward");
      compare_ref(&c, xi, v[xi], YI, "gelu in place");
      free(Y), free(DX), free(YI), free(xin);
      free_all(&c, v);
      run_case(&c);
    }
}

/* y [B, T, C] = attention(qkv [B, T, 3C]) in double, with the full P matrix */
typedef struct attn_dims {
  int64_t B, T, C, H;
  int causal;
  double scale;
} attn_dims;

static void ref_attention(const attn_dims *a, const double *qkv, double *y, double *P) {
  int64_t B = a->B, Tn = a->T, C = a->C, H = a->H, D = C / H;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < Tn; t++) {
        const double *q = qkv + (b * Tn + t) * 3 * C + h * D;
        double *p = P + ((b * H + h) * Tn + t) * Tn, m = -INFINITY, sum = 0;
        int64_t send = a->causal ? t + 1 : Tn;
        for (int64_t s = 0; s < send; s++) {
          const double *k = qkv + (b * Tn + s) * 3 * C + C + h * D;
          double dot = 0;
          for (int64_t d = 0; d < D; d++) dot += q[d] * k[d];
          p[s] = a->scale * dot;
          if (p[s] > m) m = p[s];
        }
        for (int64_t s = 0; s < send; s++) sum += (p[s] = exp(p[s] - m));
        for (int64_t s = 0; s < Tn; s++) p[s] = s < send ? p[s] / sum : 0;
        for (int64_t d = 0; d < D; d++) {
          double acc = 0;
          for (int64_t s = 0; s < send; s++)
            acc += p[s] * qkv[(b * Tn + s) * 3 * C + 2 * C + h * D + d];
          y[(b * Tn + t) * C + h * D + d] = acc;
        }
      }
}

static double attn_loss(const attn_dims *a, const double *dy, const double *qkv, double *y,
                        double *P) {
  ref_attention(a, qkv, y, P);
  double L = 0;
  for (int64_t k = 0; k < a->B * a->T * a->C; k++) L += dy[k] * y[k];
  return L;
}

/* dqkv of L = sum(dy * y), given P from ref_attention */
static void ref_attention_backward(const attn_dims *a, const double *dy, const double *qkv,
                                   const double *P, double *dqkv) {
  int64_t B = a->B, Tn = a->T, C = a->C, H = a->H, D = C / H;
  double *dp = dalloc(Tn);
  for (int64_t k = 0; k < B * Tn * 3 * C; k++) dqkv[k] = 0;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < Tn; t++) {
        const double *p = P + ((b * H + h) * Tn + t) * Tn, *g = dy + (b * Tn + t) * C + h * D;
        double dot_pdp = 0;
        for (int64_t s = 0; s < Tn; s++) {
          const double *v = qkv + (b * Tn + s) * 3 * C + 2 * C + h * D;
          dp[s] = 0;
          for (int64_t d = 0; d < D; d++) dp[s] += g[d] * v[d];
          dot_pdp += p[s] * dp[s];
          for (int64_t d = 0; d < D; d++) dqkv[(b * Tn + s) * 3 * C + 2 * C + h * D + d] += p[s] * g[d];
        }
        for (int64_t s = 0; s < Tn; s++) {
          double ds = p[s] * (dp[s] - dot_pdp) * a->scale;
          for (int64_t d = 0; d < D; d++) {
            dqkv[(b * Tn + t) * 3 * C + h * D + d] += ds * qkv[(b * Tn + s) * 3 * C + C + h * D + d];
            dqkv[(b * Tn + s) * 3 * C + C + h * D + d] += ds * qkv[(b * Tn + t) * 3 * C + h * D + d];
          }
        }
      }
  free(dp);
}

/* attention and its backward on one graph (the backward reads the forward's
 * y, as a training graph does), against the double reference and the CPU */
static void attention_case(int64_t B, int64_t Tn, int64_t C, int64_t H, int causal, float scale,
                           int n_fd, uint64_t seed) {
  tcase c;
  case_init(&c, 1e-5, 1e-4);
  c.seed = seed;
  int qkv = T(&c, KILN_F32, SH(B, Tn, 3 * C), -2.0f, 2.0f);
  int y = F(&c, B, Tn, C);
  int dy = F(&c, B, Tn, C);
  int dqkv = F(&c, B, Tn, 3 * C);
  NODE(&c, KILN_OP_ATTENTION, y, IP(H, causal), FP(scale), qkv);
  NODE(&c, KILN_OP_ATTENTION_BACKWARD, dqkv, IP(H, causal), FP(scale), dy, qkv, y);
  float **v = vk_run(&c);
  attn_dims a = {B, Tn, C, H, causal, scale != 0.0f ? scale : 1.0 / sqrt((double)(C / H))};
  int64_t n3 = B * Tn * 3 * C, n1 = B * Tn * C;
  double *QKV = to_double(v[qkv], n3), *DY = to_double(v[dy], n1), *Y = dalloc(n1);
  double *P = dalloc(B * H * Tn * Tn), *DQKV = dalloc(n3);
  ref_attention(&a, QKV, Y, P);
  ref_attention_backward(&a, DY, QKV, P, DQKV);
  char what[96];
  snprintf(what, sizeof what, "attention B %lld T %lld C %lld H %lld causal %d",
           (long long)B, (long long)Tn, (long long)C, (long long)H, causal);
  compare_ref(&c, y, v[y], Y, what);
  c.atol = 1e-6 * (double)Tn + 1e-5;
  compare_ref(&c, dqkv, v[dqkv], DQKV, what);
  /* the reference gradient against finite differences */
  double fp_, fm_, *tmpy = dalloc(n1);
  for (int k = 0; k < n_fd; k++) {
    int64_t i = (int64_t)(((uint64_t)k * 2654435761u + seed) % (uint64_t)n3);
    double fd = FD(attn_loss(&a, DY, QKV, tmpy, P), QKV, i, 1e-5);
    cr_assert(fabs(fd - DQKV[i]) <= 1e-7 + 1e-6 * fabs(fd), "%s: dqkv[%lld]: fd %.9g, ref %.9g",
              what, (long long)i, fd, DQKV[i]);
  }
  free(tmpy), free(QKV), free(DY), free(Y), free(P), free(DQKV);
  free_all(&c, v);
  c.atol = 1e-5;
  run_case(&c);
}

Test(vulkan, attention_forward_and_backward) {
  /* T = 1, odd, and past one and two 32-row tiles; head sizes 3, 5 and 32;
   * 1, 2 and 4 heads; causal and not; the default and a given scale. Head
   * size 32 (a GPT's) only causal: each head size is a pipeline, and
   * lavapipe takes seconds to compile one with D = 32 (registers unrolled). */
  attention_case(1, 1, 3, 1, 1, 0.0f, 9, 1);
  attention_case(2, 17, 6, 2, 1, 0.0f, 12, 2);
  attention_case(1, 17, 12, 4, 0, 0.7f, 12, 3);
  attention_case(1, 65, 20, 4, 0, 0.0f, 8, 4);
  attention_case(2, 65, 64, 2, 1, 0.0f, 8, 5);
  attention_case(1, 130, 32, 1, 1, 0.0f, 4, 6);
  attention_case(3, 130, 128, 4, 1, 0.0f, 2, 7);   /* large-ish */
}

Test(vulkan, attention_every_tile_edge) {
  /* the tile (rows, and threads per workgroup) forced through
   * $KILN_VK_ATTENTION_TILE: 1-row tiles, odd ones that divide no T here,
   * and tiles larger than T */
  static const char *tiles[] = {"1", "5", "64"};
  for (size_t t = 0; t < sizeof tiles / sizeof tiles[0]; t++) {
    setenv("KILN_VK_ATTENTION_TILE", tiles[t], 1);
    if (t != 0) attention_case(2, 17, 6, 2, 1, 0.0f, 0, 10 + t);
    if (t != 2) attention_case(1, 33, 12, 4, 0, 0.0f, 0, 20 + t);
  }
  setenv("KILN_VK_ATTENTION_TILE", "0", 1);
  ph_graph g;
  ph_graph_init(&g, &vk);
  int qkv = ph_tensor(&g, KILN_F32, 3, (int64_t[]){1, 4, 6});
  int y = ph_tensor(&g, KILN_F32, 3, (int64_t[]){1, 4, 2});
  ph_node(&g, KILN_OP_ATTENTION, 1, (int[]){qkv}, y, IP(1, 1), NULL);
  cr_assert_eq(ph_compile(&g), KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "KILN_VK_ATTENTION_TILE"), "%s", ph_error());
  ph_graph_free(&g);
  unsetenv("KILN_VK_ATTENTION_TILE");
}

Test(vulkan, attention_refusals) {
  /* shapes and parameters the op cannot take name the problem */
  static const struct {
    int64_t qkv[3], y[3], H, causal;
    kiln_status st;
    const char *msg;
  } bad[] = {
      {{1, 4, 7}, {1, 4, 2}, 1, 1, KILN_SHAPE_MISMATCH, "[B, T, 3C]"},
      {{1, 4, 6}, {1, 4, 2}, 3, 1, KILN_INVALID_ARGUMENT, "divide C = 2"},
      {{1, 4, 6}, {1, 4, 2}, 1, 2, KILN_INVALID_ARGUMENT, "causal ip[1] = 2"},
      {{1, 4, 6}, {1, 5, 2}, 1, 1, KILN_SHAPE_MISMATCH, "[1, 4, 2]"},
      {{1, 2, 771}, {1, 2, 257}, 1, 1, KILN_UNSUPPORTED, "D = C / H = 257 exceeds 256"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ph_graph g;
    ph_graph_init(&g, &vk);
    int qkv = ph_tensor(&g, KILN_F32, 3, bad[i].qkv);
    int y = ph_tensor(&g, KILN_F32, 3, bad[i].y);
    ph_node(&g, KILN_OP_ATTENTION, 1, (int[]){qkv}, y, IP(bad[i].H, bad[i].causal), NULL);
    cr_assert_eq(ph_compile(&g), bad[i].st, "case %zu: %s", i, ph_error());
    cr_assert_not_null(strstr(ph_error(), bad[i].msg), "case %zu: %s", i, ph_error());
    cr_assert_not_null(strstr(ph_error(), "attention"), "case %zu: %s", i, ph_error());
    ph_graph_free(&g);
  }
}

static double ref_lr(double t, double max, double min, int64_t W, int64_t S) {
  double i = t - 1;
  if (i < (double)W) return max * (i + 1) / (double)(W + 1);
  if (i > (double)S) return min;
  double r = S == W ? 0 : (i - (double)W) / (double)(S - W);
  return min + 0.5 * (1 + cos(M_PI * r)) * (max - min);
}

Test(vulkan, lr_schedule) {
  /* every branch: warmup, its last step, the decay, its end, past it; and
   * no warmup, and warmup == decay */
  static const struct { int64_t W, S; float t; } cases[] = {
      {10, 100, 1}, {10, 100, 10}, {10, 100, 11}, {10, 100, 12}, {10, 100, 57}, {10, 100, 101},
      {10, 100, 102}, {10, 100, 5000}, {0, 50, 1}, {0, 50, 26}, {7, 7, 8}, {7, 7, 9}, {0, 0, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tcase c;
    case_init(&c, 1e-6 * 6e-4, 1e-5);
    int step = T(&c, KILN_F32, 0, NULL, cases[i].t, cases[i].t);
    int lr = SCALAR(&c);
    NODE(&c, KILN_OP_LR_SCHEDULE, lr, IP(cases[i].W, cases[i].S), FP(6e-4f, 6e-5f), step);
    float **v = vk_run(&c);
    cr_assert_eq(v[step][0], cases[i].t);
    double want = ref_lr(cases[i].t, (double)6e-4f, (double)6e-5f, cases[i].W, cases[i].S);
    compare_ref(&c, lr, v[lr], &want, "lr_schedule");
    free_all(&c, v);
    run_case(&c);
  }
  ph_graph g;
  ph_graph_init(&g, &vk);
  int s = ph_tensor(&g, KILN_F32, 0, NULL);
  int y = ph_tensor(&g, KILN_F32, 0, NULL);
  ph_node(&g, KILN_OP_LR_SCHEDULE, 1, (int[]){s}, y, IP(10, 5), FP(1e-3f, 1e-4f));
  cr_assert_eq(ph_compile(&g), KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "lr_schedule"), "%s", ph_error());
  ph_graph_free(&g);
}

/* ---- graphs: record once, run many; barriers; offsets ------------------------ */

/* A small MLP step: matmul -> add bias -> relu -> log_softmax -> loss. */
static void mlp_case(tcase *c) {
  case_init(c, 1e-5, 1e-5);
  int x = F(c, 37, 20);
  int w = F(c, 20, 33);
  int b = F(c, 33);
  int h = F(c, 37, 33);
  int hb = F(c, 37, 33);
  int r = F(c, 37, 33);
  int l = T(c, KILN_I32, SH(37), 0, 32);
  int loss = SCALAR(c);
  int dl = SCALAR(c);
  int dr = F(c, 37, 33);
  int dh = F(c, 37, 33);
  int dw = F(c, 20, 33);
  int db = F(c, 33);
  NODE(c, KILN_OP_MATMUL, h, NULL, NULL, x, w);
  NODE(c, KILN_OP_ADD, hb, NULL, NULL, h, b);
  NODE(c, KILN_OP_RELU, r, NULL, NULL, hb);
  NODE(c, KILN_OP_CROSS_ENTROPY, loss, NULL, NULL, r, l);
  N_(c, KILN_OP_FILL, 0, NULL, dl, NULL, FP(1.0f));
  NODE(c, KILN_OP_CROSS_ENTROPY_BACKWARD, dr, NULL, NULL, dl, r, l);
  NODE(c, KILN_OP_RELU_BACKWARD, dh, NULL, NULL, dr, hb);
  NODE(c, KILN_OP_MATMUL, dw, IP(1, 0), NULL, x, dh);
  NODE(c, KILN_OP_SUM, db, IP(1, 0), NULL, dh);
  NODE(c, KILN_OP_SGD, w, NULL, FP(0.1f), w, dw);
  NODE(c, KILN_OP_SGD, b, NULL, FP(0.1f), b, db);
}

Test(vulkan, resubmitted_graph_matches_every_run) {
  /* One compile, five runs: the parameters move each run (SGD in place),
   * and the CPU plugin, run alongside, must agree after every run. */
  tcase c;
  mlp_case(&c);
  run_case_n(&c, 5);
}

Test(vulkan, resubmitted_graph_same_inputs_same_outputs) {
  ph_graph g;
  ph_graph_init(&g, &vk);
  int a = ph_tensor(&g, KILN_F32, 2, (int64_t[]){70, 90});
  int b = ph_tensor(&g, KILN_F32, 2, (int64_t[]){90, 50});
  int y = ph_tensor(&g, KILN_F32, 2, (int64_t[]){70, 50});
  int z = ph_tensor(&g, KILN_F32, 2, (int64_t[]){70, 50});
  ph_node(&g, KILN_OP_MATMUL, 2, (int[]){a, b}, y, NULL, NULL);
  ph_node(&g, KILN_OP_SOFTMAX, 1, (int[]){y}, z, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  float *da = malloc(70 * 90 * 4), *dbuf = malloc(90 * 50 * 4), *first = malloc(70 * 50 * 4),
        *again = malloc(70 * 50 * 4);
  cr_assert(da && dbuf && first && again);
  tu_fill_uniform(da, 70 * 90, 1, -1, 1);
  tu_fill_uniform(dbuf, 90 * 50, 2, -1, 1);
  cr_assert_eq(ph_write(&g, a, da), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_write(&g, b, dbuf), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_read(&g, z, first), KILN_OK, "%s", ph_error());
  for (int r = 0; r < 4; r++) {
    /* graph_run twice without a wait in between: in-order execution */
    cr_assert_eq(vk.api->graph_run(vk.dev, g.exec), KILN_OK, "%s", ph_error());
    cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
    cr_assert_eq(ph_read(&g, z, again), KILN_OK, "%s", ph_error());
    cr_assert_eq(memcmp(first, again, 70 * 50 * 4), 0, "run %d differs from the first", r + 2);
  }
  /* a new input between runs is seen by the next run */
  tu_fill_uniform(da, 70 * 90, 3, -1, 1);
  cr_assert_eq(ph_write(&g, a, da), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_read(&g, z, again), KILN_OK, "%s", ph_error());
  cr_assert_neq(memcmp(first, again, 70 * 50 * 4), 0, "the run did not see the new input");
  free(da);
  free(dbuf);
  free(first);
  free(again);
  ph_graph_free(&g);
}

Test(vulkan, hazards_through_shared_bytes) {
  /* All tensors in ONE buffer at 4-byte (not 16/64) offsets, so every
   * binding takes the element-offset path; and tensors placed over dead
   * ones: write-after-read and write-after-write on the same bytes. */
  tcase c;
  case_init(&c, 1e-6, 1e-5);
  c.shared_buffer = 1;
  int x = F(&c, 17, 31);
  int r = F(&c, 17, 31);
  int x2 = F(&c, 17, 31);
  c.t[x2].alias = x;            /* over x, which node 0 read: WAR */
  int s = F(&c, 17, 31);
  int r2 = F(&c, 17, 31);
  c.t[r2].alias = r;            /* over r, after it was read by nodes 1 and 2: WAR, WAW */
  NODE(&c, KILN_OP_RELU, r, NULL, NULL, x);
  NODE(&c, KILN_OP_SCALE, x2, NULL, FP(2.0f, 1.0f), r);
  NODE(&c, KILN_OP_ADD, s, NULL, NULL, x2, r);
  NODE(&c, KILN_OP_EXP, r2, NULL, NULL, s);
  NODE(&c, KILN_OP_MUL, s, NULL, NULL, r2, x2);   /* s again, after node 3 read it: WAR, WAW */
  run_case(&c);
}

Test(vulkan, mlp_in_one_buffer) {
  tcase c;
  mlp_case(&c);
  c.shared_buffer = 1;
  run_case_n(&c, 3);
}

Test(vulkan, long_graphs_split_into_batches) {
  /* $KILN_VK_SUBMIT_CHUNK cuts the recorded graph into command buffers of
   * that many dispatches, each its own batch of the run's submit: results
   * must not change, and the barriers at the cuts must satisfy the
   * validation layer (synchronization included). */
  setenv("KILN_VK_SUBMIT_CHUNK", "1", 1);
  tcase c;
  mlp_case(&c);
  run_case_n(&c, 3);
  setenv("KILN_VK_SUBMIT_CHUNK", "3", 1);
  mlp_case(&c);
  c.shared_buffer = 1;
  run_case_n(&c, 2);
  setenv("KILN_VK_SUBMIT_CHUNK", "0", 1);
  ph_graph g;
  ph_graph_init(&g, &vk);
  int x = ph_tensor(&g, KILN_F32, 1, (int64_t[]){5});
  int y = ph_tensor(&g, KILN_F32, 1, (int64_t[]){5});
  ph_node(&g, KILN_OP_RELU, 1, (int[]){x}, y, NULL, NULL);
  kiln_status st = ph_compile(&g);
  unsetenv("KILN_VK_SUBMIT_CHUNK");
  cr_assert_eq(st, KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "KILN_VK_SUBMIT_CHUNK='0'"), "%s", ph_error());
  ph_graph_free(&g);
}

/* ---- exec_write / exec_read (ABI 1.1): a step's io folded into its submit --- */

/* y = relu(x) * 2 + b with x, b inputs (INPUT only, so staged) and y an
 * output (OUTPUT only, so mirrored); r an intermediate. */
typedef struct io_graph {
  ph_graph g;
  int x, b, r, y;
} io_graph;

enum { IO_M = 37, IO_N = 29 };

static void io_graph_make(io_graph *ig) {
  ph_graph_init(&ig->g, &vk);
  ig->x = ph_tensor(&ig->g, KILN_F32, 2, (int64_t[]){IO_M, IO_N});
  ig->b = ph_tensor(&ig->g, KILN_F32, 1, (int64_t[]){IO_N});
  ig->r = ph_tensor(&ig->g, KILN_F32, 2, (int64_t[]){IO_M, IO_N});
  ig->y = ph_tensor(&ig->g, KILN_F32, 2, (int64_t[]){IO_M, IO_N});
  ig->g.tensors[ig->x].flags = KILN_PTENSOR_INPUT;
  ig->g.tensors[ig->b].flags = KILN_PTENSOR_INPUT;
  ig->g.tensors[ig->r].flags = 0;
  ig->g.tensors[ig->y].flags = KILN_PTENSOR_OUTPUT;
  ph_node(&ig->g, KILN_OP_RELU, 1, (int[]){ig->x}, ig->r, NULL, NULL);
  ph_node(&ig->g, KILN_OP_SCALE, 1, (int[]){ig->r}, ig->r, NULL, FP(2.0f, 0.0f));
  ph_node(&ig->g, KILN_OP_ADD, 2, (int[]){ig->r, ig->b}, ig->y, NULL, NULL);
  cr_assert_eq(ph_compile(&ig->g), KILN_OK, "%s", ph_error());
}

static void io_expect(const float *x, const float *b, const float *y, const char *what) {
  for (int i = 0; i < IO_M * IO_N; i++) {
    float want = (x[i] > 0 ? x[i] : 0.0f) * 2.0f + b[i % IO_N];
    cr_assert_eq(y[i], want, "%s: y[%d] = %g, want %g", what, i, (double)y[i], (double)want);
  }
}

static kiln_status io_write(io_graph *ig, int t, const float *data) {
  return vk.api->exec_write(vk.dev, ig->g.exec, (uint32_t)t, data, ig->g.tensors[t].nbytes);
}

static kiln_status io_read(io_graph *ig, int back, float *data) {
  return vk.api->exec_read(vk.dev, ig->g.exec, (uint32_t)ig->y, (uint32_t)back, data,
                           ig->g.tensors[ig->y].nbytes);
}

Test(vulkan, exec_io_each_run_sees_its_inputs) {
  cr_assert(vk.api->struct_size >= offsetof(kiln_plugin_api, exec_history) + sizeof(void *) &&
                vk.api->exec_write && vk.api->exec_read && vk.api->exec_history,
            "the Vulkan plugin offers ABI 1.1's exec_write, exec_read and exec_history");
  io_graph ig;
  io_graph_make(&ig);
  uint32_t depth = vk.api->exec_history(vk.dev, ig.g.exec, (uint32_t)ig.y);
  cr_assert_eq(depth, 4, "the outputs of the last 4 runs (4 frames)");
  cr_assert_eq(vk.api->exec_history(vk.dev, ig.g.exec, (uint32_t)ig.x), 1, "x is no output");
  enum { RUNS = 6, E = IO_M * IO_N };
  static float x[RUNS][E], y[E];
  float b[IO_N];
  tu_fill_uniform(b, IO_N, 99, -1, 1);
  cr_assert_eq(io_write(&ig, ig.b, b), KILN_OK, "%s", ph_error());   /* once, for every run */
  for (int k = 0; k < RUNS; k++) tu_fill_uniform(x[k], E, (uint64_t)k + 1, -1, 1);
  /* Pipelined as a training loop: write run k's input and submit run k
   * while run k - 1 may still execute, then read run k - 1 (back 1). */
  for (int k = 0; k < RUNS; k++) {
    cr_assert_eq(io_write(&ig, ig.x, x[k]), KILN_OK, "%s", ph_error());
    cr_assert_eq(vk.api->graph_run(vk.dev, ig.g.exec), KILN_OK, "%s", ph_error());
    if (k == 0) continue;
    cr_assert_eq(io_read(&ig, 1, y), KILN_OK, "%s", ph_error());
    char what[32];
    snprintf(what, sizeof what, "run %d read back 1", k - 1);
    io_expect(x[k - 1], b, y, what);
  }
  /* every run still in reach, newest first, as the trainer reads a batch
   * of them after one wait */
  for (uint32_t back = 0; back < depth; back++) {
    cr_assert_eq(io_read(&ig, (int)back, y), KILN_OK, "%s", ph_error());
    char what[32];
    snprintf(what, sizeof what, "run %u read back %u", RUNS - 1 - back, back);
    io_expect(x[RUNS - 1 - back], b, y, what);
  }
  /* with more runs in flight than outputs kept, writing the next input
   * waits for the frame it reuses */
  for (int k = 0; k < RUNS; k++) {
    cr_assert_eq(io_write(&ig, ig.x, x[k]), KILN_OK, "%s", ph_error());
    cr_assert_eq(vk.api->graph_run(vk.dev, ig.g.exec), KILN_OK, "%s", ph_error());
  }
  for (uint32_t back = 0; back < depth; back++) {
    cr_assert_eq(io_read(&ig, (int)back, y), KILN_OK, "%s", ph_error());
    io_expect(x[RUNS - 1 - back], b, y, "six runs queued, then read");
  }
  /* Inputs written once stay for every later run, whichever frame it uses. */
  for (int k = 0; k < 3; k++) {
    cr_assert_eq(vk.api->graph_run(vk.dev, ig.g.exec), KILN_OK, "%s", ph_error());
    cr_assert_eq(io_read(&ig, 0, y), KILN_OK, "%s", ph_error());
    io_expect(x[RUNS - 1], b, y, "a rerun without new inputs");
  }
  /* A new b only: x keeps its last value. */
  tu_fill_uniform(b, IO_N, 100, -1, 1);
  cr_assert_eq(io_write(&ig, ig.b, b), KILN_OK, "%s", ph_error());
  cr_assert_eq(vk.api->graph_run(vk.dev, ig.g.exec), KILN_OK, "%s", ph_error());
  cr_assert_eq(io_read(&ig, 0, y), KILN_OK, "%s", ph_error());
  io_expect(x[RUNS - 1], b, y, "a new b");
  cr_assert_eq(vk.api->synchronize(vk.dev), KILN_OK, "%s", ph_error());
  ph_graph_free(&ig.g);
}

Test(vulkan, exec_io_buffer_write_inputs_still_work) {
  /* An ABI 1.0 host flags inputs but writes them with buffer_write: the
   * frames must not copy stale staged bytes over them. */
  io_graph ig;
  io_graph_make(&ig);
  static float x[IO_M * IO_N], y[IO_M * IO_N];
  float b[IO_N];
  for (int k = 0; k < 3; k++) {
    tu_fill_uniform(x, IO_M * IO_N, (uint64_t)k + 7, -1, 1);
    tu_fill_uniform(b, IO_N, (uint64_t)k + 70, -1, 1);
    cr_assert_eq(ph_write(&ig.g, ig.x, x), KILN_OK, "%s", ph_error());
    cr_assert_eq(ph_write(&ig.g, ig.b, b), KILN_OK, "%s", ph_error());
    cr_assert_eq(ph_run(&ig.g), KILN_OK, "%s", ph_error());
    cr_assert_eq(ph_read(&ig.g, ig.y, y), KILN_OK, "%s", ph_error());
    io_expect(x, b, y, "buffer_write inputs, buffer_read output");
    cr_assert_eq(io_read(&ig, 0, y), KILN_OK, "%s", ph_error());
    io_expect(x, b, y, "buffer_write inputs, exec_read output");
  }
  ph_graph_free(&ig.g);
}

Test(vulkan, exec_io_refusals) {
  io_graph ig;
  io_graph_make(&ig);
  float y[IO_M * IO_N], x[IO_M * IO_N] = {0};
  uint64_t ny = ig.g.tensors[ig.y].nbytes;
  ph_clear_error();
  cr_assert_eq(io_read(&ig, 1, y), KILN_INVALID_ARGUMENT, "back 1 before any run");
  cr_assert_not_null(strstr(ph_error(), "out of reach"), "%s", ph_error());
  cr_assert_eq(vk.api->exec_read(vk.dev, ig.g.exec, (uint32_t)ig.y, 4, y, ny),
               KILN_INVALID_ARGUMENT, "back 4 with four frames");
  cr_assert_eq(vk.api->exec_read(vk.dev, ig.g.exec, (uint32_t)ig.r, 0, y, ny),
               KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "is not an output"), "%s", ph_error());
  cr_assert_eq(vk.api->exec_write(vk.dev, ig.g.exec, (uint32_t)ig.y, x, ny), KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "is not an input"), "%s", ph_error());
  cr_assert_eq(vk.api->exec_write(vk.dev, ig.g.exec, (uint32_t)ig.x, x, 12), KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(ph_error(), "has 4292 bytes; got 12"), "%s", ph_error());
  cr_assert_eq(vk.api->exec_history(vk.dev, ig.g.exec, 1000), 1, "unknown tensor");
  /* before any run, back 0 reads the bytes as they are (zeros) */
  cr_assert_eq(io_read(&ig, 0, y), KILN_OK, "%s", ph_error());
  for (int i = 0; i < IO_M * IO_N; i++) cr_assert_eq(y[i], 0.0f);
  /* five runs later, back 4 is still one past the four frames kept */
  for (int k = 0; k < 5; k++)
    cr_assert_eq(vk.api->graph_run(vk.dev, ig.g.exec), KILN_OK, "%s", ph_error());
  cr_assert_eq(io_read(&ig, 3, y), KILN_OK, "%s", ph_error());
  cr_assert_eq(io_read(&ig, 4, y), KILN_INVALID_ARGUMENT, "back 4 after 5 runs, 4 frames");
  cr_assert_not_null(strstr(ph_error(), "keeps the last 4"), "%s", ph_error());
  ph_graph_free(&ig.g);
}

/* $KILN_VK_FRAMES sets how many runs' outputs an executable keeps; a value
 * out of range fails the compile naming it. */
Test(vulkan, frames_env) {
  io_graph ig;
  setenv("KILN_VK_FRAMES", "2", 1);
  io_graph_make(&ig);
  cr_assert_eq(vk.api->exec_history(vk.dev, ig.g.exec, (uint32_t)ig.y), 2);
  ph_graph_free(&ig.g);
  static const char *bad[] = {"1", "5", "two", "3x"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    setenv("KILN_VK_FRAMES", bad[i], 1);
    ph_graph_init(&ig.g, &vk);
    int x = ph_tensor(&ig.g, KILN_F32, 1, (int64_t[]){3});
    int y = ph_tensor(&ig.g, KILN_F32, 1, (int64_t[]){3});
    ig.g.tensors[x].flags = KILN_PTENSOR_INPUT;
    ig.g.tensors[y].flags = KILN_PTENSOR_OUTPUT;
    ph_node(&ig.g, KILN_OP_RELU, 1, (int[]){x}, y, NULL, NULL);
    ph_clear_error();
    cr_assert_eq(ph_compile(&ig.g), KILN_INVALID_ARGUMENT, "KILN_VK_FRAMES=%s", bad[i]);
    cr_assert_not_null(strstr(ph_error(), "KILN_VK_FRAMES"), "%s", ph_error());
    ph_graph_free(&ig.g);
  }
  unsetenv("KILN_VK_FRAMES");
}

/* ---- $KILN_PROFILE ------------------------------------------------------------ */

/* Compiles relu(x) + x with KILN_PROFILE = env (NULL: unset), runs it
 * `runs` times and frees it with stderr sent to a file; returns what was
 * written there (malloc'd). The timestamps (reset, writes, read-back) must
 * not draw a validation message. */
static char *vk_profile_run(const char *env, int runs) {
  if (env)
    setenv("KILN_PROFILE", env, 1);
  else
    unsetenv("KILN_PROFILE");
  ph_graph g;
  ph_graph_init(&g, &vk);
  int x = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 5});
  int r = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 5});
  int y = ph_tensor(&g, KILN_F32, 2, (int64_t[]){3, 5});
  ph_node(&g, KILN_OP_RELU, 1, (int[]){x}, r, NULL, NULL);
  ph_node(&g, KILN_OP_ADD, 2, (int[]){r, x}, y, NULL, NULL);
  cr_assert_eq(ph_compile(&g), KILN_OK, "%s", ph_error());
  unsetenv("KILN_PROFILE");
  float xs[15], ys[15];
  for (int i = 0; i < 15; i++) xs[i] = (float)i - 7.0f;
  cr_assert_eq(ph_write(&g, x, xs), KILN_OK, "%s", ph_error());
  for (int i = 0; i < runs; i++) cr_assert_eq(ph_run(&g), KILN_OK, "%s", ph_error());
  cr_assert_eq(ph_read(&g, y, ys), KILN_OK, "%s", ph_error());
  for (int i = 0; i < 15; i++)
    cr_assert_eq(ys[i], (xs[i] > 0 ? xs[i] : 0.0f) + xs[i], "y[%d] = %g", i, (double)ys[i]);
  tu_capture cap;
  tu_stderr_begin(&cap);
  ph_graph_free(&g);
  char *out = tu_stderr_end(&cap);
  /* graph_free returns nothing: a message it drew fails the next call */
  cr_assert_eq(vk.api->synchronize(vk.dev), KILN_OK, "%s", ph_error());
  return out;
}

Test(vulkan, profile_without_timestamps_says_so) {
  /* a queue without timestamps (forced): the graph runs and computes as
   * ever (vk_profile_run checks y), and the profile says why it has no table */
  setenv("KILN_VK_NO_TIMESTAMPS", "1", 1);
  char *out = vk_profile_run("1", 2);
  unsetenv("KILN_VK_NO_TIMESTAMPS");
  cr_assert(strstr(out, "kiln[vulkan] profile: not supported on this device (") &&
                strstr(out, "KILN_VK_NO_TIMESTAMPS"),
            "no 'not supported' line:\n%s", out);
  cr_assert_null(strstr(out, "ms/run"), "a table was printed without timestamps:\n%s", out);
  free(out);
}

Test(vulkan, profile_table_when_asked) {
  char *out = vk_profile_run("1", 3);
  if (strstr(out, "kiln[vulkan] profile: not supported on this device")) {
    free(out);
    cr_skip_test("this device's compute queue has no timestamps");
  }
  const char *h = strstr(out, "kiln[vulkan] profile: graph of 2 nodes, 3 run(s), ");
  cr_assert(h, "profile header missing:\n%s", out);
  double ms = -1;
  cr_assert_eq(sscanf(h, "kiln[vulkan] profile: graph of 2 nodes, 3 run(s), %lf ms", &ms), 1);
  cr_assert(ms > 0 && ms < 1e4, "node time %g ms per run is not a measured time:\n%s", ms, out);
  cr_assert(strstr(out, "\n  relu ") && strstr(out, "\n  add "), "op rows missing:\n%s", out);
  cr_assert(strstr(out, "slowest nodes") && strstr(out, "out [3, 5]"), "node rows missing:\n%s",
            out);
  free(out);
}

Test(vulkan, profile_silent_without_the_variable) {
  char *out = vk_profile_run(NULL, 2);
  cr_assert(strstr(out, "profile") == NULL, "printed without KILN_PROFILE:\n%s", out);
  free(out);
  out = vk_profile_run("0", 2);
  cr_assert(strstr(out, "profile") == NULL, "printed with KILN_PROFILE=0:\n%s", out);
  free(out);
}

/* ---- no driver --------------------------------------------------------------- */

Test(vulkan_nodriver, bogus_icd_gives_clear_init_failure) {
  setenv("VK_ICD_FILENAMES", "/nonexistent/kiln_no_such_icd.json", 1);
  setenv("VK_DRIVER_FILES", "/nonexistent/kiln_no_such_icd.json", 1);
  ph_plugin p;
  kiln_status st = ph_open(&p, VK_PLUGIN);
  cr_assert_eq(st, KILN_NO_DEVICE, "status %d: %s", st, ph_error());
  cr_assert_not_null(strstr(ph_error(), "no Vulkan driver found"), "%s", ph_error());
}
