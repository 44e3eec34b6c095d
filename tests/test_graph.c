/*
 * test_graph.c - graph building (shape inference and its errors), the
 * sticky-error rule, backward's refusals, pruning, the memory planner, and
 * optimizer steps through compiled graphs on the CPU device.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"
#include "testutil.h"

static kiln_graph *g;

static void setup(void) { cr_assert_eq(kiln_graph_create(&g), KILN_OK); }
static void teardown(void) { kiln_graph_destroy(g); }

TestSuite(shape, .init = setup, .fini = teardown);
TestSuite(errors, .init = setup, .fini = teardown);

static kiln_node *in(const char *name, int ndim, const int64_t *shape) {
  kiln_node *n = kiln_input(g, name, KILN_F32, ndim, shape);
  cr_assert_not_null(n, "kiln_input(%s): %s", name, kiln_last_error());
  return n;
}
#define IN(name, ...) in(name, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

/* Asserts n's shape equals the listed dims. */
static void expect_shape(kiln_node *n, int ndim, const int64_t *want) {
  cr_assert_not_null(n, "builder failed: %s", kiln_last_error());
  int64_t s[KILN_MAX_DIMS];
  int r = kiln_node_shape(n, s);
  cr_assert_eq(r, ndim, "rank %d, want %d", r, ndim);
  for (int i = 0; i < ndim; i++) cr_assert_eq(s[i], want[i], "axis %d: %lld, want %lld", i, (long long)s[i], (long long)want[i]);
}
#define EXPECT(n, ...) expect_shape((n), (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})
#define EXPECT_SCALAR(n) expect_shape((n), 0, NULL)

/* Asserts the builder failed with status st and a message containing text. */
static void expect_error(kiln_node *n, kiln_status st, const char *text) {
  cr_assert_null(n, "builder should have failed");
  cr_assert_eq(kiln_graph_status(g), st, "status %s, want %s (%s)", kiln_status_name(kiln_graph_status(g)),
               kiln_status_name(st), kiln_graph_error(g));
  cr_assert(strstr(kiln_graph_error(g), text), "graph error \"%s\" lacks \"%s\"", kiln_graph_error(g), text);
  cr_assert(strstr(kiln_last_error(), text), "last error \"%s\" lacks \"%s\"", kiln_last_error(), text);
}

/* ---- shape inference ----------------------------------------------------- */

Test(shape, elementwise_broadcast) {
  kiln_node *a = IN("a", 2, 3), *b = IN("b", 3), *c = IN("c", 4, 1, 1), *s = in("s", 0, NULL);
  EXPECT(kiln_add(g, a, b), 2, 3);
  EXPECT(kiln_sub(g, b, a), 2, 3);
  EXPECT(kiln_mul(g, a, c), 4, 2, 3);
  EXPECT(kiln_div(g, c, s), 4, 1, 1);
  EXPECT(kiln_add(g, s, a), 2, 3);
  kiln_node *(*unary[])(kiln_graph *, kiln_node *) = {kiln_neg, kiln_relu, kiln_tanh, kiln_sigmoid,
                                                      kiln_exp, kiln_log};
  for (size_t i = 0; i < sizeof unary / sizeof *unary; i++) EXPECT(unary[i](g, a), 2, 3);
  EXPECT(kiln_scale(g, c, 2.0f, 1.0f), 4, 1, 1);
  EXPECT_SCALAR(kiln_neg(g, s));
  cr_assert_eq(kiln_graph_status(g), KILN_OK);
}

Test(shape, matmul_transposes_and_batches) {
  kiln_node *a = IN("a", 2, 3), *b = IN("b", 3, 5), *at = IN("at", 3, 2), *bt = IN("bt", 5, 3);
  EXPECT(kiln_matmul(g, a, b, 0, 0), 2, 5);
  EXPECT(kiln_matmul(g, at, b, 1, 0), 2, 5);
  EXPECT(kiln_matmul(g, a, bt, 0, 1), 2, 5);
  EXPECT(kiln_matmul(g, at, bt, 1, 1), 2, 5);
  kiln_node *ba = IN("ba", 4, 1, 2, 3), *bb = IN("bb", 6, 3, 5);
  EXPECT(kiln_matmul(g, ba, bb, 0, 0), 4, 6, 2, 5);
  EXPECT(kiln_matmul(g, ba, b, 0, 0), 4, 1, 2, 5);
  cr_assert_eq(kiln_node_op(kiln_matmul(g, a, b, 0, 0)), KILN_OP_MATMUL);
}

Test(shape, reductions_and_expand) {
  kiln_node *x = IN("x", 2, 3, 4);
  EXPECT_SCALAR(kiln_sum(g, x, 0, 0));
  EXPECT(kiln_sum(g, x, 0, 1), 1, 1, 1);
  EXPECT(kiln_sum(g, x, 1u << 1, 0), 2, 4);
  EXPECT(kiln_mean(g, x, (1u << 0) | (1u << 2), 1), 1, 3, 1);
  EXPECT(kiln_mean(g, x, 1u << 2, 0), 2, 3);
  kiln_node *b = IN("b", 3, 1);
  EXPECT(kiln_expand(g, b, 3, (int64_t[]){2, 3, 4}), 2, 3, 4);
}

Test(shape, softmax_family_and_cross_entropy) {
  kiln_node *x = IN("x", 5, 7);
  EXPECT(kiln_softmax(g, x), 5, 7);
  EXPECT(kiln_log_softmax(g, x), 5, 7);
  kiln_node *y = kiln_input(g, "y", KILN_I32, 1, (int64_t[]){5});
  kiln_node *ce = kiln_cross_entropy(g, x, y);
  EXPECT_SCALAR(ce);
  cr_assert_eq(kiln_node_dtype(ce), KILN_F32);
  EXPECT(kiln_node_create(g, KILN_OP_CROSS_ENTROPY_BACKWARD, 3, (kiln_node *[]){ce, x, y}, NULL, NULL,
                          KILN_DTYPE_INVALID, -1, NULL), 5, 7);
}

Test(shape, layout) {
  kiln_node *x = IN("x", 2, 3, 4);
  EXPECT(kiln_reshape(g, x, 2, (int64_t[]){6, 4}), 6, 4);
  EXPECT(kiln_reshape(g, x, 3, (int64_t[]){-1, 2, 2}), 6, 2, 2);
  EXPECT(kiln_reshape(g, x, 1, (int64_t[]){-1}), 24);
  EXPECT(kiln_transpose(g, x, (int[]){2, 0, 1}), 4, 2, 3);
  EXPECT(kiln_flatten(g, x), 2, 12);
  EXPECT(kiln_node_create(g, KILN_OP_COPY, 1, &x, NULL, NULL, KILN_DTYPE_INVALID, -1, NULL), 2, 3, 4);
  EXPECT(kiln_fill(g, KILN_F32, 2, (int64_t[]){3, 3}, 0.5f), 3, 3);
}

Test(shape, conv_and_pool) {
  kiln_node *x = IN("x", 2, 4, 9, 8), *w = IN("w", 6, 2, 3, 3), *b = IN("b", 6);
  kiln_conv2d_params cp = {.stride_h = 2, .stride_w = 1, .pad_h = 1, .pad_w = 2, .dil_h = 1,
                           .dil_w = 2, .groups = 2};
  /* OH = (9 + 2 - 2 - 1) / 2 + 1 = 5, OW = (8 + 4 - 4 - 1) / 1 + 1 = 8 */
  kiln_node *y = kiln_conv2d(g, x, w, b, &cp);
  EXPECT(y, 2, 6, 5, 8);
  kiln_node *w1 = IN("w1", 3, 4, 3, 3);
  EXPECT(kiln_conv2d(g, x, w1, NULL, NULL), 2, 3, 7, 6);
  int64_t ip[8] = {2, 1, 1, 2, 1, 2, 2};
  EXPECT(kiln_node_create(g, KILN_OP_CONV2D_BACKWARD_INPUT, 2, (kiln_node *[]){y, w}, ip, NULL,
                          KILN_DTYPE_INVALID, 4, (int64_t[]){2, 4, 9, 8}), 2, 4, 9, 8);
  EXPECT(kiln_node_create(g, KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, (kiln_node *[]){y, x}, ip, NULL,
                          KILN_DTYPE_INVALID, 4, (int64_t[]){6, 2, 3, 3}), 6, 2, 3, 3);
  kiln_pool2d_params pp = {.kernel_h = 3, .kernel_w = 2, .stride_h = 2, .stride_w = 2, .pad_h = 1};
  /* OH = (9 + 2 - 3) / 2 + 1 = 5, OW = (8 - 2) / 2 + 1 = 4 */
  kiln_node *mp = kiln_maxpool2d(g, x, &pp);
  EXPECT(mp, 2, 4, 5, 4);
  EXPECT(kiln_avgpool2d(g, x, &pp), 2, 4, 5, 4);
  EXPECT(kiln_node_create(g, KILN_OP_MAXPOOL2D_BACKWARD, 2, (kiln_node *[]){mp, x},
                          (int64_t[8]){3, 2, 2, 2, 1, 0}, NULL, KILN_DTYPE_INVALID, -1, NULL), 2, 4, 9, 8);
  cr_assert_eq(kiln_graph_status(g), KILN_OK, "%s", kiln_graph_error(g));
}

Test(shape, leaves_and_queries) {
  kiln_node *x = kiln_input(g, "pixels", KILN_U8, 3, (int64_t[]){2, 28, 28});
  cr_assert_str_eq(kiln_node_name(x), "pixels");
  cr_assert_eq(kiln_node_dtype(x), KILN_U8);
  cr_assert_eq(kiln_node_numel(x), 2 * 28 * 28);
  cr_assert_eq(kiln_node_op(x), KILN_OP_NONE);
  cr_assert_eq(kiln_node_shape(NULL, NULL), -1);
  cr_assert_null(kiln_node_name(kiln_fill(g, KILN_F32, 0, NULL, 1.0f)));
}

/* ---- errors -------------------------------------------------------------- */

Test(errors, broadcast_mismatch) {
  kiln_node *a = IN("a", 2, 3), *b = IN("b", 4, 3);
  expect_error(kiln_add(g, a, b), KILN_SHAPE_MISMATCH,
               "add: shapes [2, 3] and [4, 3] do not broadcast (axis 0: 2 vs 4)");
}

Test(errors, matmul_inner) {
  kiln_node *a = IN("a", 2, 3), *b = IN("b", 4, 5);
  expect_error(kiln_matmul(g, a, b, 0, 0), KILN_SHAPE_MISMATCH,
               "matmul: a [2, 3] and b [4, 5]: inner dimensions 3 and 4 differ");
}

Test(errors, matmul_rank_and_batch) {
  kiln_node *v = IN("v", 3), *a = IN("a", 2, 2, 3), *b = IN("b", 3, 3, 4);
  expect_error(kiln_matmul(g, v, v, 0, 0), KILN_SHAPE_MISMATCH, "need rank >= 2");
  kiln_graph_destroy(g);
  setup();
  a = IN("a", 2, 2, 3), b = IN("b", 3, 3, 4);
  expect_error(kiln_matmul(g, a, b, 0, 0), KILN_SHAPE_MISMATCH, "batch dimensions do not broadcast");
}

Test(errors, dtype_mismatch) {
  kiln_node *a = IN("a", 2, 3);
  kiln_node *i = kiln_input(g, "i", KILN_I32, 2, (int64_t[]){2, 3});
  expect_error(kiln_mul(g, a, i), KILN_DTYPE_MISMATCH, "mul: inputs 0 and 1 have dtypes f32 and i32");
}

Test(shape, cast_to_f32) {
  kiln_node *b = kiln_input(g, "bytes", KILN_U8, 3, (int64_t[]){2, 28, 28});
  kiln_node *i = kiln_input(g, "ints", KILN_I32, 1, (int64_t[]){7});
  kiln_node *y = kiln_cast(g, b, 1.0f / 255.0f, 0.0f);
  EXPECT(y, 2, 28, 28);
  cr_assert_eq(kiln_node_dtype(y), KILN_F32);
  EXPECT(kiln_cast(g, i, 2.0f, 1.0f), 7);
  EXPECT(kiln_cast(g, IN("f", 3), 2.0f, 1.0f), 3);
  cr_assert_eq(kiln_graph_status(g), KILN_OK);
}

Test(errors, cast_dtypes_and_params) {
  kiln_node *h = kiln_input(g, "h", KILN_F16, 1, (int64_t[]){4});
  expect_error(kiln_cast(g, h, 1.0f, 0.0f), KILN_DTYPE_MISMATCH, "cast: x must be u8, i32 or f32, got f16");
}

Test(errors, cast_params_finite) {
  kiln_node *b = kiln_input(g, "b", KILN_U8, 1, (int64_t[]){4});
  expect_error(kiln_cast(g, b, NAN, 0.0f), KILN_INVALID_ARGUMENT, "cast: scale nan and shift 0 must be finite");
}

Test(errors, reduce_mask) {
  kiln_node *x = IN("x", 2, 3);
  expect_error(kiln_sum(g, x, 1u << 2, 0), KILN_INVALID_ARGUMENT, "sum: axis mask 0x4 names an axis outside x [2, 3]");
}

Test(errors, expand) {
  kiln_node *x = IN("x", 2, 3);
  expect_error(kiln_expand(g, x, 2, (int64_t[]){4, 3}), KILN_SHAPE_MISMATCH,
               "cannot expand x [2, 3] to [4, 3] (axis 0: 2 vs 4)");
}

Test(errors, reshape) {
  kiln_node *x = IN("x", 2, 3);
  expect_error(kiln_reshape(g, x, 2, (int64_t[]){4, 2}), KILN_SHAPE_MISMATCH,
               "reshape: cannot reshape x [2, 3] (6 elements) to [4, 2] (8 elements)");
}

Test(errors, reshape_two_wildcards) {
  kiln_node *x = IN("x", 2, 3);
  expect_error(kiln_reshape(g, x, 2, (int64_t[]){-1, -1}), KILN_INVALID_ARGUMENT, "more than one -1");
}

Test(errors, transpose_perm) {
  kiln_node *x = IN("x", 2, 3, 4);
  expect_error(kiln_transpose(g, x, (int[]){0, 0, 1}), KILN_INVALID_ARGUMENT,
               "transpose: perm entry 1 = 0: not a permutation");
}

Test(errors, cross_entropy_labels) {
  kiln_node *x = IN("x", 5, 7);
  kiln_node *yf = IN("yf", 5);
  expect_error(kiln_cross_entropy(g, x, yf), KILN_DTYPE_MISMATCH, "cross_entropy: labels must be i32, got f32");
}

Test(errors, cross_entropy_shapes) {
  kiln_node *x = IN("x", 5, 7);
  kiln_node *y = kiln_input(g, "y", KILN_I32, 1, (int64_t[]){4});
  expect_error(kiln_cross_entropy(g, x, y), KILN_SHAPE_MISMATCH, "logits [5, 7] and labels [4]");
}

Test(errors, conv_groups) {
  kiln_node *x = IN("x", 1, 4, 8, 8), *w = IN("w", 6, 2, 3, 3);
  kiln_conv2d_params cp = {1, 1, 0, 0, 1, 1, 3};
  expect_error(kiln_conv2d(g, x, w, NULL, &cp), KILN_SHAPE_MISMATCH,
               "conv2d: groups 3 must divide both the input channels 4");
}

Test(errors, conv_channels) {
  kiln_node *x = IN("x", 1, 4, 8, 8), *w = IN("w", 6, 3, 3, 3);
  expect_error(kiln_conv2d(g, x, w, NULL, NULL), KILN_SHAPE_MISMATCH,
               "w [6, 3, 3, 3]: axis 1 is 3 but x [1, 4, 8, 8] with groups 1 needs C/groups = 4");
}

Test(errors, conv_params_and_bias) {
  kiln_node *x = IN("x", 1, 4, 8, 8), *w = IN("w", 6, 4, 3, 3), *b = IN("b", 5);
  kiln_conv2d_params cp = {0, 1, 0, 0, 1, 1, 1};
  expect_error(kiln_conv2d(g, x, w, NULL, &cp), KILN_INVALID_ARGUMENT, "stride 0x1 (>= 1)");
  kiln_graph_destroy(g);
  setup();
  x = IN("x", 1, 4, 8, 8), w = IN("w", 6, 4, 3, 3), b = IN("b", 5);
  expect_error(kiln_conv2d(g, x, w, b, NULL), KILN_SHAPE_MISMATCH, "bias [5] must be [6]");
}

Test(errors, conv_too_small) {
  kiln_node *x = IN("x", 1, 1, 2, 2), *w = IN("w", 1, 1, 3, 3);
  expect_error(kiln_conv2d(g, x, w, NULL, NULL), KILN_SHAPE_MISMATCH, "smaller than the dilated kernel 3x3");
}

Test(errors, pool_padding) {
  kiln_node *x = IN("x", 1, 1, 8, 8);
  kiln_pool2d_params pp = {.kernel_h = 2, .kernel_w = 2, .stride_h = 2, .stride_w = 2, .pad_h = 2};
  expect_error(kiln_maxpool2d(g, x, &pp), KILN_INVALID_ARGUMENT,
               "maxpool2d: padding 2x0 exceeds half the kernel 2x2");
}

Test(errors, pool_rank) {
  kiln_node *x = IN("x", 8, 8);
  kiln_pool2d_params pp = {.kernel_h = 2, .kernel_w = 2, .stride_h = 2, .stride_w = 2};
  expect_error(kiln_avgpool2d(g, x, &pp), KILN_SHAPE_MISMATCH, "avgpool2d: x [8, 8] must be [N, C, H, W]");
}

Test(errors, bad_leaf_shape) {
  expect_error(kiln_input(g, "x", KILN_F32, 2, (int64_t[]){3, 0}), KILN_SHAPE_MISMATCH,
               "input 'x': shape [3, 0] has dimension 1 = 0");
}

Test(errors, generic_arity_and_unknown_op) {
  kiln_node *x = IN("x", 3);
  expect_error(kiln_node_create(g, KILN_OP_ADD, 1, &x, NULL, NULL, KILN_DTYPE_INVALID, -1, NULL),
               KILN_INVALID_ARGUMENT, "add: takes 2 inputs, got 1");
  kiln_graph_destroy(g);
  setup();
  x = IN("x", 3);
  expect_error(kiln_node_create(g, (kiln_op)999, 1, &x, NULL, NULL, KILN_DTYPE_INVALID, -1, NULL),
               KILN_UNSUPPORTED, "unknown op number 999");
}

Test(errors, generic_given_shape_must_agree) {
  kiln_node *x = IN("x", 3);
  expect_error(kiln_node_create(g, KILN_OP_NEG, 1, &x, NULL, NULL, KILN_DTYPE_INVALID, 1, (int64_t[]){4}),
               KILN_SHAPE_MISMATCH, "neg: output shape [4] given, but the op produces [3]");
}

Test(errors, sticky_first_error_and_null_propagation) {
  kiln_node *a = IN("a", 2, 3), *b = IN("b", 4, 3);
  kiln_node *bad = kiln_add(g, a, b);
  cr_assert_null(bad);
  char first[1024];
  snprintf(first, sizeof first, "%s", kiln_graph_error(g));
  /* a NULL input gives NULL again and no new message */
  kiln_clear_error();
  cr_assert_null(kiln_relu(g, bad));
  cr_assert_str_eq(kiln_last_error(), "");
  /* a second, different error does not replace the first */
  cr_assert_null(kiln_matmul(g, a, b, 0, 0));
  cr_assert(strstr(kiln_last_error(), "inner dimensions"));
  cr_assert_str_eq(kiln_graph_error(g), first);
  cr_assert_eq(kiln_graph_status(g), KILN_SHAPE_MISMATCH);
  /* valid builders still work, but backward and compile refuse the graph */
  cr_assert_not_null(kiln_neg(g, a));
  cr_assert_eq(kiln_graph_backward(g, kiln_sum(g, a, 0, 0)), KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "do not broadcast"), "%s", kiln_last_error());
}

Test(errors, nodes_of_another_graph) {
  kiln_graph *h;
  cr_assert_eq(kiln_graph_create(&h), KILN_OK);
  kiln_node *a = IN("a", 3);
  kiln_node *b = kiln_input(h, "b", KILN_F32, 1, (int64_t[]){3});
  expect_error(kiln_add(g, a, b), KILN_INVALID_ARGUMENT, "add: input 1 belongs to another graph");
  kiln_graph_destroy(h);
}

Test(errors, backward_refusals) {
  kiln_node *x = IN("x", 2, 3);
  kiln_node *y = kiln_relu(g, x);
  kiln_status st = kiln_graph_backward(g, y);
  cr_assert_eq(st, KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "loss must be a scalar or single-element f32 node, got f32 [2, 3]"),
            "%s", kiln_last_error());
  kiln_node *s = kiln_sum(g, y, 0, 0);
  cr_assert_eq(kiln_graph_backward(g, s), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_graph_backward(g, s), KILN_INVALID_STATE);
  cr_assert(strstr(kiln_last_error(), "already called"));
  /* an input is not a param: asking for its gradient is an error */
  cr_assert_null(kiln_grad(g, x));
  cr_assert(strstr(kiln_graph_error(g), "is not a kiln_param"), "%s", kiln_graph_error(g));
}

Test(errors, optimizer_checks) {
  kiln_node *x = IN("x", 3);
  kiln_node *grad = IN("gw", 3);
  expect_error(kiln_sgd_update(g, x, grad, NULL, 0.1f, 0.0f, 0.0f, 0), KILN_INVALID_ARGUMENT,
               "sgd: param must be a kiln_param node (or an in-place update of one), got an input");
}

/* ---- compiled graphs on the CPU device ------------------------------------ */

static kiln_context *ctx;
static kiln_device *dev;

static void dev_setup(void) {
  setup();
  tu_open_cpu(&ctx, &dev);
}
static void dev_teardown(void) {
  teardown();
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}
TestSuite(compiled, .init = dev_setup, .fini = dev_teardown);

static kiln_tensor *tensor(int ndim, const int64_t *shape, const float *data) {
  kiln_tensor *t;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, ndim, shape, &t), KILN_OK, "%s", kiln_last_error());
  if (data) cr_assert_eq(kiln_tensor_upload(t, data, kiln_tensor_nbytes(t)), KILN_OK, "%s", kiln_last_error());
  return t;
}

static kiln_compiled *compile(void) {
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_OK, "compile: %s", kiln_last_error());
  return c;
}

Test(compiled, planner_reuses_memory_and_results_stay_right) {
  enum { N = 1 << 16 }; /* 256 KiB per value */
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){N});
  kiln_node *y = x;
  /* y = ten elementwise ops on x, alternating x*1.5 + 1 and -x */
  for (int i = 0; i < 10; i++) y = (i % 2) ? kiln_neg(g, y) : kiln_scale(g, y, 1.5f, 1.0f);
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  kiln_compiled *c = compile();
  kiln_memory_stats m = {.struct_size = sizeof m};
  cr_assert_eq(kiln_compiled_memory(c, &m), KILN_OK);
  /* x and y are pinned, and the 9 intermediates alternate between two
   * slots: 3 values' worth instead of 11. */
  cr_assert_eq(m.unplanned_bytes, 11ull * N * 4, "unplanned %llu", (unsigned long long)m.unplanned_bytes);
  cr_assert_leq(m.arena_bytes, 3ull * N * 4, "arena %llu", (unsigned long long)m.arena_bytes);
  cr_assert_eq(m.n_nodes, 10);
  float *xs = malloc(N * sizeof *xs), *ys = malloc(N * sizeof *ys);
  tu_fill_uniform(xs, N, 7, -1.0f, 1.0f);
  for (int run = 0; run < 2; run++) {
    cr_assert_eq(kiln_compiled_set_input(c, x, xs, N * sizeof *xs), KILN_OK, "%s", kiln_last_error());
    cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
    cr_assert_eq(kiln_compiled_get_output(c, y, ys, N * sizeof *ys), KILN_OK, "%s", kiln_last_error());
    for (int i = 0; i < N; i += 97) {
      double v = xs[i];
      for (int k = 0; k < 10; k++) v = (k % 2) ? -v : 1.5 * v + 1.0;
      cr_assert_float_eq(ys[i], v, 1e-4 * (1 + fabs(v)), "y[%d] = %g, want %g", i, ys[i], v);
    }
    for (int i = 0; i < N; i++) xs[i] = -xs[i];
  }
  free(xs);
  free(ys);
  kiln_compiled_destroy(c);
}

/* The CPU plugin takes elementwise outputs in place (KILN_OP_SUPPORT_IN_PLACE):
 * a value whose last reader is an elementwise node of its size gives that
 * node its bytes, and a value read again later does not. */
Test(compiled, in_place_outputs_take_dead_inputs_bytes) {
  enum { N = 1 << 14 };
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){N});
  kiln_node *a = kiln_scale(g, x, 2.0f, 0.5f);
  kiln_node *b = kiln_neg(g, a);            /* a dies here: b may take its bytes */
  kiln_node *r = kiln_reshape(g, b, 2, (int64_t[]){N / 4, 4});
  kiln_node *t = kiln_tanh(g, r);           /* r dies here */
  kiln_node *u = kiln_reshape(g, t, 1, (int64_t[]){N});
  kiln_node *k = kiln_mul(g, u, u);
  kiln_node *keep = kiln_exp(g, x);         /* read again below: not taken */
  kiln_node *e = kiln_neg(g, keep);
  kiln_node *y = kiln_add(g, k, kiln_mul(g, e, keep));
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  kiln_compiled *c = compile();
  kiln_memory_stats m = {.struct_size = sizeof m};
  cr_assert_eq(kiln_compiled_memory(c, &m), KILN_OK);
  /* x and y are pinned; a, b, r, t, u and k share one slot, keep and e
   * (then e * keep, on e's bytes) the others: 4 values (5 when every
   * output takes bytes of its own). */
  cr_assert_leq(m.arena_bytes, 4ull * N * 4, "arena %llu", (unsigned long long)m.arena_bytes);
  float *xs = malloc(N * sizeof *xs), *ys = malloc(N * sizeof *ys);
  tu_fill_uniform(xs, N, 11, -1.0f, 1.0f);
  cr_assert_eq(kiln_compiled_set_input(c, x, xs, N * sizeof *xs), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(c, y, ys, N * sizeof *ys), KILN_OK, "%s", kiln_last_error());
  for (int i = 0; i < N; i++) {
    double tv = tanh(-(2.0 * xs[i] + 0.5)), ev = exp(xs[i]);
    double want = tv * tv - ev * ev;
    cr_assert_float_eq(ys[i], want, 1e-5 * (1 + fabs(want)), "y[%d] = %.9g, want %.9g", i, ys[i],
                       want);
  }
  free(xs);
  free(ys);
  kiln_compiled_destroy(c);
}

Test(compiled, pruning_keeps_only_what_outputs_need) {
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){8});
  kiln_node *unused_input = kiln_input(g, "unused", KILN_F32, 1, (int64_t[]){8});
  kiln_node *a = kiln_exp(g, x);
  kiln_node *dead1 = kiln_tanh(g, a);
  kiln_node *dead2 = kiln_mul(g, dead1, unused_input);
  (void)dead2;
  kiln_node *out = kiln_neg(g, a);
  cr_assert_eq(kiln_graph_output(g, out), KILN_OK);
  kiln_compiled *c = compile();
  kiln_memory_stats m = {.struct_size = sizeof m};
  cr_assert_eq(kiln_compiled_memory(c, &m), KILN_OK);
  cr_assert_eq(m.n_nodes, 2, "n_nodes %u: exp and neg only", m.n_nodes);
  float xs[8] = {0, 1, -1, 0.5f, 2, -2, 0.25f, 3}, ys[8];
  /* a pruned input may still be set (size-checked) */
  cr_assert_eq(kiln_compiled_set_input(c, unused_input, xs, sizeof xs), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_set_input(c, x, xs, sizeof xs), KILN_OK);
  cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(c, out, ys, sizeof ys), KILN_OK);
  for (int i = 0; i < 8; i++) cr_assert_float_eq(ys[i], -expf(xs[i]), 1e-5f * expf(xs[i]));
  /* a dead node is not an output */
  cr_assert_eq(kiln_compiled_get_output(c, dead1, ys, sizeof ys), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "is not an output of this compiled graph"), "%s", kiln_last_error());
  kiln_compiled_destroy(c);
}

Test(compiled, nothing_to_run_is_refused) {
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){8});
  kiln_neg(g, x);
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_INVALID_ARGUMENT);
  cr_assert_null(c);
  cr_assert(strstr(kiln_last_error(), "no outputs"), "%s", kiln_last_error());
}

Test(compiled, broken_graph_is_refused_with_its_first_error) {
  kiln_node *a = kiln_input(g, "a", KILN_F32, 1, (int64_t[]){2});
  kiln_node *b = kiln_input(g, "b", KILN_F32, 1, (int64_t[]){3});
  kiln_graph_output(g, kiln_neg(g, a));
  cr_assert_null(kiln_add(g, a, b));
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "compile: the graph has an error: add: shapes [2] and [3]"), "%s",
            kiln_last_error());
}

Test(compiled, io_size_errors) {
  kiln_node *x = kiln_input(g, "x", KILN_F32, 2, (int64_t[]){2, 3});
  kiln_node *y = kiln_relu(g, x);
  kiln_graph_output(g, y);
  kiln_compiled *c = compile();
  float buf[6] = {0};
  cr_assert_eq(kiln_compiled_set_input(c, x, buf, 20), KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "set_input: input 'x' [2, 3] f32 takes 24 bytes, got 20"), "%s",
            kiln_last_error());
  cr_assert_eq(kiln_compiled_set_input(c, y, buf, 24), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "is not an input"), "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_set_input(c, x, buf, 24), KILN_OK);
  cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(c, y, buf, 28), KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "get_output: node 1 (relu) [2, 3] f32 takes 24 bytes, got 28"), "%s",
            kiln_last_error());
  kiln_compiled_destroy(c);
}

/* kiln_compiled_get_output_back: the CPU plugin keeps one run (its runs
 * finish before they return), so back 0 reads and back 1 is refused with
 * the depth; a node that is no output is named. (The Vulkan plugin's two
 * runs are tested in test_vulkan_ops and by the trainer in test_train_cnn.) */
Test(compiled, output_history_on_the_cpu) {
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){3});
  kiln_node *y = kiln_relu(g, x);
  kiln_graph_output(g, y);
  kiln_compiled *c = compile();
  cr_assert_eq(kiln_compiled_output_depth(c, y), 1);
  cr_assert_eq(kiln_compiled_output_depth(c, x), 1, "not an output: depth 1");
  float in[3] = {-1, 2, -3}, out[3];
  cr_assert_eq(kiln_compiled_set_input(c, x, in, sizeof in), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output_back(c, y, 0, out, sizeof out), KILN_OK, "%s",
               kiln_last_error());
  cr_assert(out[0] == 0 && out[1] == 2 && out[2] == 0, "%g %g %g", out[0], out[1], out[2]);
  cr_assert_eq(kiln_compiled_get_output_back(c, y, 1, out, sizeof out), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "run 1 back is out of reach: this output keeps the last 1 run"),
            "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output_back(c, x, 0, out, sizeof out), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "is not an output"), "%s", kiln_last_error());
  kiln_compiled_destroy(c);
}

/* One SGD step with momentum, weight decay and nesterov on loss = sum(w*x):
 * grad = x, so the update can be written by hand. */
Test(compiled, sgd_step_matches_hand_computation) {
  const float w0[4] = {0.5f, -1.0f, 2.0f, 0.25f}, xv[4] = {1.0f, 2.0f, -3.0f, 0.5f};
  kiln_tensor *wt = tensor(1, (int64_t[]){4}, w0), *vt = tensor(1, (int64_t[]){4}, NULL);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){4});
  kiln_node *w = kiln_param(g, "w", wt);
  kiln_node *loss = kiln_sum(g, kiln_mul(g, w, x), 0, 0);
  cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s", kiln_last_error());
  kiln_node *gw = kiln_grad(g, w);
  cr_assert_not_null(gw);
  const float lr = 0.1f, mom = 0.9f, wd = 0.01f;
  cr_assert_not_null(kiln_sgd_update(g, w, gw, kiln_state(g, "v", vt), lr, mom, wd, 1), "%s", kiln_last_error());
  kiln_compiled *c = compile();
  double wr[4], vr[4] = {0};
  for (int i = 0; i < 4; i++) wr[i] = w0[i];
  for (int step = 0; step < 3; step++) {
    cr_assert_eq(kiln_compiled_set_input(c, x, xv, sizeof xv), KILN_OK);
    cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
    for (int i = 0; i < 4; i++) {
      double gr = xv[i] + wd * wr[i];
      vr[i] = mom * vr[i] + gr;
      wr[i] -= lr * (gr + mom * vr[i]);
    }
  }
  float got[4], gotv[4];
  cr_assert_eq(kiln_tensor_download(wt, got, sizeof got), KILN_OK);
  cr_assert_eq(kiln_tensor_download(vt, gotv, sizeof gotv), KILN_OK);
  for (int i = 0; i < 4; i++) {
    cr_assert_float_eq(got[i], wr[i], 1e-5, "w[%d] = %g, want %g", i, got[i], wr[i]);
    cr_assert_float_eq(gotv[i], vr[i], 1e-5, "v[%d] = %g, want %g", i, gotv[i], vr[i]);
  }
  kiln_compiled_destroy(c);
  kiln_tensor_destroy(wt);
  kiln_tensor_destroy(vt);
}

/* Two Adam steps on loss = mean((w - target)^2) with a step counter. */
Test(compiled, adam_step_matches_hand_computation) {
  const float w0[3] = {1.0f, -2.0f, 0.5f}, tv[3] = {0.0f, 1.0f, 0.5f};
  kiln_tensor *wt = tensor(1, (int64_t[]){3}, w0);
  kiln_tensor *mt = tensor(1, (int64_t[]){3}, NULL), *vt = tensor(1, (int64_t[]){3}, NULL);
  kiln_tensor *st = tensor(0, NULL, NULL);
  kiln_node *target = kiln_input(g, "target", KILN_F32, 1, (int64_t[]){3});
  kiln_node *w = kiln_param(g, "w", wt);
  kiln_node *d = kiln_sub(g, w, target);
  kiln_node *loss = kiln_mean(g, kiln_mul(g, d, d), 0, 0);
  cr_assert_eq(kiln_graph_backward(g, loss), KILN_OK, "%s", kiln_last_error());
  kiln_node *t = kiln_increment(g, kiln_state(g, "step", st), 1.0f);
  kiln_adam_options o = {.lr = 0.05f, .beta1 = 0.9f, .beta2 = 0.99f, .eps = 1e-8f, .weight_decay = 0.1f,
                         .decoupled = 1};
  cr_assert_not_null(kiln_adam_update(g, w, kiln_grad(g, w), kiln_state(g, "m", mt), kiln_state(g, "v", vt),
                                      t, NULL, &o), "%s", kiln_last_error());
  cr_assert_eq(kiln_graph_output(g, loss), KILN_OK);
  kiln_compiled *c = compile();
  double wr[3], m[3] = {0}, v[3] = {0};
  for (int i = 0; i < 3; i++) wr[i] = w0[i];
  for (int step = 1; step <= 2; step++) {
    cr_assert_eq(kiln_compiled_set_input(c, target, tv, sizeof tv), KILN_OK);
    cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
    for (int i = 0; i < 3; i++) {
      double gr = 2.0 * (wr[i] - tv[i]) / 3.0;
      wr[i] -= o.lr * o.weight_decay * wr[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * gr;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * gr * gr;
      double mh = m[i] / (1 - pow(o.beta1, step)), vh = v[i] / (1 - pow(o.beta2, step));
      wr[i] -= o.lr * mh / (sqrt(vh) + o.eps);
    }
  }
  float got[3], gs;
  cr_assert_eq(kiln_tensor_download(wt, got, sizeof got), KILN_OK);
  cr_assert_eq(kiln_tensor_download(st, &gs, sizeof gs), KILN_OK);
  cr_assert_float_eq(gs, 2.0f, 0.0f, "step counter %g", gs);
  for (int i = 0; i < 3; i++) cr_assert_float_eq(got[i], wr[i], 1e-5, "w[%d] = %.7g, want %.7g", i, got[i], wr[i]);
  kiln_compiled_destroy(c);
  kiln_tensor_destroy(wt);
  kiln_tensor_destroy(mt);
  kiln_tensor_destroy(vt);
  kiln_tensor_destroy(st);
}

Test(compiled, adam_checks_moments_are_state) {
  kiln_tensor *wt = tensor(1, (int64_t[]){3}, NULL), *st = tensor(0, NULL, NULL);
  kiln_tensor *mt = tensor(1, (int64_t[]){4}, NULL);
  kiln_node *w = kiln_param(g, "w", wt);
  kiln_node *t = kiln_increment(g, kiln_state(g, "step", st), 1.0f);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){3});
  /* m is an input, not state */
  cr_assert_null(kiln_adam_update(g, w, x, x, x, t, NULL, NULL));
  cr_assert(strstr(kiln_graph_error(g), "adam: m must be a kiln_state node"), "%s", kiln_graph_error(g));
  kiln_graph_destroy(g);
  setup();
  w = kiln_param(g, "w", wt);
  t = kiln_increment(g, kiln_state(g, "step", st), 1.0f);
  x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){3});
  kiln_node *m = kiln_state(g, "m", mt);
  cr_assert_null(kiln_adam_update(g, w, x, m, m, t, NULL, NULL));
  cr_assert(strstr(kiln_graph_error(g), "adam: m 'm' [4] must have the param's shape [3]"), "%s",
            kiln_graph_error(g));
  kiln_tensor_destroy(wt);
  kiln_tensor_destroy(st);
  kiln_tensor_destroy(mt);
}

Test(compiled, unsupported_op_dtype_is_refused_before_the_plugin_compiles) {
  /* the CPU device computes f32 only; an i32 add passes graph validation */
  kiln_node *a = kiln_input(g, "a", KILN_I32, 1, (int64_t[]){4});
  kiln_node *s = kiln_add(g, a, a);
  cr_assert_not_null(s, "%s", kiln_last_error());
  cr_assert_eq(kiln_graph_output(g, s), KILN_OK);
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_UNSUPPORTED);
  cr_assert_null(c);
  cr_assert(strstr(kiln_last_error(), "compile: device 'cpu' does not support add on i32"), "%s",
            kiln_last_error());
}

Test(compiled, params_on_shared_storage_and_outputs_of_state) {
  /* two param nodes on one tensor are one plugin tensor; a state output
   * reads the updated storage */
  kiln_tensor *wt = tensor(1, (int64_t[]){2}, (float[]){1.0f, 2.0f}), *st = tensor(0, NULL, NULL);
  kiln_node *w1 = kiln_param(g, "w", wt), *w2 = kiln_param(g, "w again", wt);
  kiln_node *y = kiln_add(g, w1, w2);
  kiln_node *t = kiln_increment(g, kiln_state(g, "t", st), 2.5f);
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  cr_assert_eq(kiln_graph_output(g, t), KILN_OK);
  kiln_compiled *c = compile();
  kiln_memory_stats m = {.struct_size = sizeof m};
  cr_assert_eq(kiln_compiled_memory(c, &m), KILN_OK);
  cr_assert_eq(m.persistent_bytes, 8 + 4, "persistent %llu", (unsigned long long)m.persistent_bytes);
  for (int run = 1; run <= 2; run++) {
    cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
    float ys[2], tv;
    cr_assert_eq(kiln_compiled_get_output(c, y, ys, sizeof ys), KILN_OK);
    cr_assert_eq(kiln_compiled_get_output(c, t, &tv, sizeof tv), KILN_OK, "%s", kiln_last_error());
    cr_assert(ys[0] == 2.0f && ys[1] == 4.0f, "y = %g %g", ys[0], ys[1]);
    cr_assert(tv == 2.5f * run, "t = %g after run %d", tv, run);
  }
  kiln_compiled_destroy(c);
  kiln_tensor_destroy(wt);
  kiln_tensor_destroy(st);
}
