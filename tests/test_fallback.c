/*
 * test_fallback.c - the CPU fallback: a graph compiled for a device that
 * lacks some of its ops runs those on the CPU plugin, with copies between.
 *
 * The device is the template plugin (add, mul, relu, relu_backward, matmul,
 * sum, fill only). A small MNIST CNN (two conv + relu + maxpool blocks, a
 * linear layer, cross-entropy, Adam) trains three steps on it: conv, pool,
 * softmax and Adam fall back to the CPU while the matmuls and relus run on
 * the template; the losses and the parameters after each step must match a
 * run on the CPU plugin alone.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/data.h"
#include "kiln/kiln.h"
#include "testutil.h"

#define TEMPLATE_PLUGIN KILN_BUILD_DIR "/lib/kiln-extra/libkiln-template.so"
#define CPU_PLUGIN KILN_BUILD_DIR "/lib/kiln/libkiln-cpu.so"

#define B 16
#define STEPS 3
#define N_PARAMS 6

static const int64_t param_shapes[N_PARAMS][4] = {
    {8, 1, 3, 3}, {8}, {16, 8, 3, 3}, {16}, {784, 10}, {10}};
static const int param_ndim[N_PARAMS] = {4, 1, 4, 1, 2, 1};

static int64_t numel(int nd, const int64_t *s) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= s[i];
  return n;
}

typedef struct run {
  float loss[STEPS];
  float *params[N_PARAMS];   /* after the last step */
  char plan[4096];
} run;

static kiln_context *open_context(void) {
  kiln_context *ctx = NULL;
  kiln_context_options opts = {.struct_size = sizeof opts, .flags = KILN_CONTEXT_NO_DISCOVERY};
  cr_assert_eq(kiln_context_create(&opts, &ctx), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_plugin_load(ctx, CPU_PLUGIN, NULL), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_plugin_load(ctx, TEMPLATE_PLUGIN, NULL), KILN_OK, "%s", kiln_last_error());
  return ctx;
}

/* Builds the CNN training graph over params/state on dev; returns the
 * graph, the x/labels inputs and the loss node. */
static kiln_graph *build(kiln_tensor **pt, kiln_tensor **mt, kiln_tensor **vt, kiln_tensor *stept,
                         kiln_node **x, kiln_node **labels, kiln_node **loss) {
  kiln_graph *g = NULL;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  *x = kiln_input(g, "x", KILN_F32, 4, (int64_t[]){B, 1, 28, 28});
  *labels = kiln_input(g, "labels", KILN_I32, 1, (int64_t[]){B});
  kiln_node *p[N_PARAMS];
  static const char *names[N_PARAMS] = {"conv1.w", "conv1.b", "conv2.w", "conv2.b", "fc.w",
                                        "fc.b"};
  for (int i = 0; i < N_PARAMS; i++) p[i] = kiln_param(g, names[i], pt[i]);
  kiln_conv2d_params cp = {.stride_h = 1, .stride_w = 1, .pad_h = 1, .pad_w = 1, .dil_h = 1,
                           .dil_w = 1, .groups = 1};
  kiln_pool2d_params pp = {.kernel_h = 2, .kernel_w = 2, .stride_h = 2, .stride_w = 2};
  kiln_node *h = kiln_maxpool2d(g, kiln_relu(g, kiln_conv2d(g, *x, p[0], p[1], &cp)), &pp);
  h = kiln_maxpool2d(g, kiln_relu(g, kiln_conv2d(g, h, p[2], p[3], &cp)), &pp);
  h = kiln_flatten(g, h);
  kiln_node *logits = kiln_add(g, kiln_matmul(g, h, p[4], 0, 0), p[5]);
  *loss = kiln_cross_entropy(g, logits, *labels);
  cr_assert_eq(kiln_graph_output(g, *loss), KILN_OK, "%s", kiln_graph_error(g));
  cr_assert_eq(kiln_graph_backward(g, *loss), KILN_OK, "%s", kiln_graph_error(g));
  kiln_node *step = kiln_increment(g, kiln_state(g, "step", stept), 1.0f);
  kiln_adam_options ao = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  for (int i = 0; i < N_PARAMS; i++) {
    kiln_node *m = kiln_state(g, "m", mt[i]), *v = kiln_state(g, "v", vt[i]);
    cr_assert_not_null(kiln_adam_update(g, p[i], kiln_grad(g, p[i]), m, v, step, NULL, &ao),
                       "%s", kiln_graph_error(g));
  }
  cr_assert_eq(kiln_graph_status(g), KILN_OK, "%s", kiln_graph_error(g));
  return g;
}

static void train(const char *backend, const kiln_mnist *data, run *r) {
  kiln_context *ctx = open_context();
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, backend, 0, &dev), KILN_OK, "%s", kiln_last_error());
  kiln_tensor *pt[N_PARAMS], *mt[N_PARAMS], *vt[N_PARAMS], *stept = NULL;
  for (int i = 0; i < N_PARAMS; i++) {
    int64_t n = numel(param_ndim[i], param_shapes[i]);
    float *init = malloc((size_t)n * sizeof *init);
    cr_assert_not_null(init);
    static const float fan_in[N_PARAMS] = {9, 9, 72, 72, 784, 784};
    float scale = 1.0f / sqrtf(fan_in[i]);
    tu_fill_uniform(init, n, 100 + (uint64_t)i, -scale, scale);
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, param_ndim[i], param_shapes[i], &pt[i]), KILN_OK);
    cr_assert_eq(kiln_tensor_upload(pt[i], init, (size_t)n * sizeof *init), KILN_OK);
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, param_ndim[i], param_shapes[i], &mt[i]), KILN_OK);
    cr_assert_eq(kiln_tensor_create(dev, KILN_F32, param_ndim[i], param_shapes[i], &vt[i]), KILN_OK);
    free(init);
  }
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 0, NULL, &stept), KILN_OK);

  kiln_node *x, *labels, *loss;
  kiln_graph *g = build(pt, mt, vt, stept, &x, &labels, &loss);
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_OK, "%s: %s", backend, kiln_last_error());
  cr_assert_eq(kiln_compiled_describe(c, r->plan, sizeof r->plan), KILN_OK);

  float xb[B * 784];
  int32_t lb[B];
  for (int s = 0; s < STEPS; s++) {
    for (int i = 0; i < B; i++) {
      int64_t k = (int64_t)s * B + i;
      for (int j = 0; j < 784; j++) xb[i * 784 + j] = data->images[k * 784 + j] / 255.0f;
      lb[i] = data->labels[k];
    }
    cr_assert_eq(kiln_compiled_set_input(c, x, xb, sizeof xb), KILN_OK, "%s", kiln_last_error());
    cr_assert_eq(kiln_compiled_set_input(c, labels, lb, sizeof lb), KILN_OK, "%s",
                 kiln_last_error());
    cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s: %s", backend, kiln_last_error());
    cr_assert_eq(kiln_compiled_get_output(c, loss, &r->loss[s], sizeof r->loss[s]), KILN_OK);
  }
  for (int i = 0; i < N_PARAMS; i++) {
    size_t nb = kiln_tensor_nbytes(pt[i]);
    r->params[i] = malloc(nb);
    cr_assert_not_null(r->params[i]);
    cr_assert_eq(kiln_tensor_download(pt[i], r->params[i], nb), KILN_OK);
  }
  kiln_compiled_destroy(c);
  kiln_graph_destroy(g);
  for (int i = 0; i < N_PARAMS; i++) {
    kiln_tensor_destroy(pt[i]);
    kiln_tensor_destroy(mt[i]);
    kiln_tensor_destroy(vt[i]);
  }
  kiln_tensor_destroy(stept);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

Test(fallback, mnist_cnn_on_the_template_matches_the_cpu, .timeout = 600) {
  kiln_mnist data;
  cr_assert_eq(kiln_mnist_load(tu_data_path("mnist"), 1, B * STEPS, &data), KILN_OK, "%s",
               kiln_last_error());
  run cpu, tpl;
  train("cpu", &data, &cpu);
  train("template", &data, &tpl);
  kiln_mnist_free(&data);

  /* The partition: more than one segment, on both plugins, conv on the CPU. */
  cr_assert_eq(strncmp(cpu.plan, "1 segment:", 10), 0, "%s", cpu.plan);
  cr_assert_neq(strncmp(tpl.plan, "1 segment:", 10), 0, "%s", tpl.plan);
  cr_assert_not_null(strstr(tpl.plan, "on template"), "%s", tpl.plan);
  cr_assert_not_null(strstr(tpl.plan, "on cpu"), "%s", tpl.plan);
  cr_assert_not_null(strstr(tpl.plan, "mirrors"), "params live on the template: %s", tpl.plan);

  for (int s = 0; s < STEPS; s++)
    cr_expect_float_eq(tpl.loss[s], cpu.loss[s], 1e-4f * fabsf(cpu.loss[s]),
                       "step %d loss: template+cpu %g, cpu %g", s, tpl.loss[s], cpu.loss[s]);
  cr_expect(cpu.loss[0] > 1.5f && cpu.loss[0] < 3.5f, "first loss %g", cpu.loss[0]);
  for (int i = 0; i < N_PARAMS; i++) {
    int64_t n = numel(param_ndim[i], param_shapes[i]);
    double maxd = 0, maxr = 0;
    for (int64_t k = 0; k < n; k++) {
      maxd = fmax(maxd, fabs((double)tpl.params[i][k] - cpu.params[i][k]));
      maxr = fmax(maxr, fabs((double)cpu.params[i][k]));
    }
    /* Adam moves each weight by ~1e-3 per step; the two runs agree far closer. */
    cr_expect(maxd <= 1e-5 * fmax(1.0, maxr), "param %d: max difference %g (max %g)", i, maxd,
              maxr);
    free(tpl.params[i]);
    free(cpu.params[i]);
  }
}

Test(fallback, off_with_KILN_NO_FALLBACK) {
  setenv("KILN_NO_FALLBACK", "1", 1);
  kiln_context *ctx = open_context();
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "template", 0, &dev), KILN_OK, "%s", kiln_last_error());
  kiln_graph *g = NULL;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 2, (int64_t[]){2, 3});
  kiln_node *y = kiln_relu(g, kiln_tanh(g, x));
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_UNSUPPORTED);
  cr_assert_not_null(strstr(kiln_last_error(), "tanh"), "%s", kiln_last_error());
  kiln_graph_destroy(g);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* A value made on the template, used on the CPU, then on the template
 * again; an input read by segments on both; outputs from both. */
Test(fallback, values_cross_segments_both_ways) {
  kiln_context *ctx = open_context();
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "template", 0, &dev), KILN_OK, "%s", kiln_last_error());
  kiln_graph *g = NULL;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 2, (int64_t[]){3, 4});
  kiln_node *a = kiln_mul(g, x, x);                 /* template */
  kiln_node *t = kiln_tanh(g, a);                   /* cpu */
  kiln_node *y = kiln_add(g, kiln_relu(g, t), x);   /* template, reads x again */
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  cr_assert_eq(kiln_graph_output(g, t), KILN_OK);
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, dev, &c), KILN_OK, "%s", kiln_last_error());
  char plan[2048];
  cr_assert_eq(kiln_compiled_describe(c, plan, sizeof plan), KILN_OK);
  cr_assert_eq(strncmp(plan, "3 segments", 10), 0, "%s", plan);
  float xv[12], yv[12], tv[12];
  tu_fill_uniform(xv, 12, 7, -2, 2);
  cr_assert_eq(kiln_compiled_set_input(c, x, xv, sizeof xv), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_set_input(c, x, xv, 8), KILN_SHAPE_MISMATCH);
  cr_assert_eq(kiln_compiled_run(c), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(c, y, yv, sizeof yv), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(c, t, tv, sizeof tv), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(c, a, tv, sizeof tv), KILN_INVALID_ARGUMENT);
  for (int i = 0; i < 12; i++) {
    float tt = tanhf(xv[i] * xv[i]);
    cr_expect_float_eq(tv[i], tt, 1e-6f, "t[%d]", i);
    cr_expect_float_eq(yv[i], (tt > 0 ? tt : 0) + xv[i], 1e-6f, "y[%d]", i);
  }
  kiln_memory_stats ms = {.struct_size = sizeof ms};
  cr_assert_eq(kiln_compiled_memory(c, &ms), KILN_OK);
  cr_assert_eq(ms.n_nodes, 4);
  kiln_compiled_destroy(c);
  kiln_graph_destroy(g);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* `kiln plan` prints the partition for the template and one segment for
 * the CPU. */
Test(fallback, kiln_plan_prints_the_partition, .timeout = 600) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' plan --plugin '%s' --backend template --batch 8 2>&1",
           KILN_BUILD_DIR, TEMPLATE_PLUGIN);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  static char out[1 << 16];
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  cr_assert_eq(st, 0, "%s\n%s", cmd, out);
  cr_assert_not_null(strstr(out, "segments (CPU fallback"), "%s", out);
  cr_assert_not_null(strstr(out, "on template"), "%s", out);
  cr_assert_not_null(strstr(out, "conv2d"), "%s", out);

  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' plan --backend cpu --batch 8 2>&1", KILN_BUILD_DIR);
  p = popen(cmd, "r");
  cr_assert_not_null(p);
  n = fread(out, 1, sizeof out - 1, p);
  out[n] = '\0';
  cr_assert_eq(pclose(p), 0, "%s\n%s", cmd, out);
  cr_assert_not_null(strstr(out, "1 segment:\n  segment 0 on cpu"), "%s", out);
}

/* A param stored on another device is refused, as without the fallback. */
Test(fallback, params_must_live_on_the_chosen_device) {
  kiln_context *ctx = open_context();
  kiln_device *tpl = NULL, *cpu = NULL;
  cr_assert_eq(kiln_device_open(ctx, "template", 0, &tpl), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_device_open(ctx, "cpu", 0, &cpu), KILN_OK, "%s", kiln_last_error());
  kiln_tensor *w = NULL;
  cr_assert_eq(kiln_tensor_create(cpu, KILN_F32, 1, (int64_t[]){4}, &w), KILN_OK);
  kiln_graph *g = NULL;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *y = kiln_tanh(g, kiln_param(g, "w", w));
  cr_assert_eq(kiln_graph_output(g, y), KILN_OK);
  kiln_compiled *c = NULL;
  cr_assert_eq(kiln_graph_compile(g, tpl, &c), KILN_INVALID_ARGUMENT);
  cr_assert_not_null(strstr(kiln_last_error(), "param 'w' lives on device"), "%s",
                     kiln_last_error());
  kiln_graph_destroy(g);
  kiln_tensor_destroy(w);
  kiln_device_close(cpu);
  kiln_device_close(tpl);
  kiln_context_destroy(ctx);
}
