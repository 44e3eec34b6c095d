/*
 * test_fault_alloc.c - every allocation of a small training step fails in
 * turn, in libkiln (kiln__fault_alloc_arm) and in the CPU plugin
 * ($KILN_FAULT_ALLOC_CPU). Each failure must come back as KILN_OUT_OF_MEMORY
 * with a message, never a crash; everything made before it is freed (the
 * sanitizer stage of tools/test runs this under LeakSanitizer); and the same
 * step run again with memory back gives exactly the reference result.
 *
 * The step: context, CPU device, conv2d -> relu -> dense -> cross-entropy,
 * backward, Adam with a step counter, compile, upload, two runs, download.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"
#include "kiln/kiln.h"
#include "testutil.h"

enum { N = 4, C = 2, H = 5, W = 5, O = 3, K = 3, CLASSES = 4 };

typedef struct step_result {
  float loss[2];
  float fc[O * 3 * 3 * CLASSES];
} step_result;

/* One training step from scratch; everything is released before returning.
 * Returns the first failing status; *where names the failing call. */
static kiln_status train_step(step_result *r, const char **where) {
  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  kiln_graph *g = NULL;
  kiln_compiled *c = NULL;
  kiln_tensor *t[6] = {0};
  kiln_status st;
  static const int64_t shapes[6][4] = {{O, C, K, K}, {O}, {O * 3 * 3, CLASSES}, {0}, {0}, {0}};
  static const int ranks[6] = {4, 1, 2, 0, 4, 2};
  float xs[N * C * H * W], w0[O * C * K * K], fc0[O * 3 * 3 * CLASSES];
  int32_t labels[N] = {0, 1, 2, 3};
  tu_fill_uniform(xs, N * C * H * W, 1, -1.0f, 1.0f);
  tu_fill_uniform(w0, O * C * K * K, 2, -0.5f, 0.5f);
  tu_fill_uniform(fc0, O * 3 * 3 * CLASSES, 3, -0.5f, 0.5f);

#define STEP(name, call)     \
  do {                       \
    *where = name;           \
    if ((st = (call)) != KILN_OK) goto fail; \
  } while (0)
  STEP("kiln_context_create", kiln_context_create(NULL, &ctx));
  STEP("kiln_device_open", kiln_device_open(ctx, "cpu", 0, &dev));
  for (int i = 0; i < 3; i++)
    STEP("kiln_tensor_create", kiln_tensor_create(dev, KILN_F32, ranks[i], shapes[i], &t[i]));
  /* Adam moments for the dense weight, and the step counter */
  STEP("kiln_tensor_create", kiln_tensor_create(dev, KILN_F32, 2, shapes[2], &t[3]));
  STEP("kiln_tensor_create", kiln_tensor_create(dev, KILN_F32, 2, shapes[2], &t[4]));
  STEP("kiln_tensor_create", kiln_tensor_create(dev, KILN_F32, 0, NULL, &t[5]));
  STEP("kiln_tensor_upload", kiln_tensor_upload(t[0], w0, sizeof w0));
  STEP("kiln_tensor_upload", kiln_tensor_upload(t[2], fc0, sizeof fc0));
  STEP("kiln_graph_create", kiln_graph_create(&g));

  *where = "graph builders";
  kiln_node *x = kiln_input(g, "x", KILN_F32, 4, (int64_t[]){N, C, H, W});
  kiln_node *y = kiln_input(g, "labels", KILN_I32, 1, (int64_t[]){N});
  kiln_node *w = kiln_param(g, "conv.w", t[0]);
  kiln_node *b = kiln_param(g, "conv.b", t[1]);
  kiln_node *fc = kiln_param(g, "fc.w", t[2]);
  kiln_node *h = kiln_relu(g, kiln_conv2d(g, x, w, b, NULL));
  kiln_node *logits = kiln_matmul(g, kiln_flatten(g, h), fc, 0, 0);
  kiln_node *loss = kiln_cross_entropy(g, logits, y);
  if ((st = kiln_graph_status(g)) != KILN_OK) goto fail;
  STEP("kiln_graph_backward", kiln_graph_backward(g, loss));
  *where = "optimizer builders";
  kiln_node *count = kiln_increment(g, kiln_state(g, "step", t[5]), 1.0f);
  kiln_adam_options o = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  kiln_adam_update(g, fc, kiln_grad(g, fc), kiln_state(g, "fc.m", t[3]), kiln_state(g, "fc.v", t[4]),
                   count, NULL, &o);
  kiln_sgd_update(g, w, kiln_grad(g, w), NULL, 0.1f, 0.0f, 0.0f, 0);
  kiln_sgd_update(g, b, kiln_grad(g, b), NULL, 0.1f, 0.0f, 0.0f, 0);
  if ((st = kiln_graph_status(g)) != KILN_OK) goto fail;
  STEP("kiln_graph_output", kiln_graph_output(g, loss));
  STEP("kiln_graph_compile", kiln_graph_compile(g, dev, &c));
  for (int it = 0; it < 2; it++) {
    STEP("kiln_compiled_set_input", kiln_compiled_set_input(c, x, xs, sizeof xs));
    STEP("kiln_compiled_set_input", kiln_compiled_set_input(c, y, labels, sizeof labels));
    STEP("kiln_compiled_run", kiln_compiled_run(c));
    STEP("kiln_compiled_get_output",
         kiln_compiled_get_output(c, loss, &r->loss[it], sizeof r->loss[it]));
  }
  STEP("kiln_tensor_download", kiln_tensor_download(t[2], r->fc, sizeof r->fc));
#undef STEP
  *where = NULL;
  st = KILN_OK;

fail:
  kiln_compiled_destroy(c);
  kiln_graph_destroy(g);
  for (int i = 0; i < 6; i++) kiln_tensor_destroy(t[i]);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return st;
}

static void reference(step_result *ref) {
  const char *where;
  kiln__fault_alloc_arm(0);
  memset(ref, 0, sizeof *ref);
  cr_assert_eq(train_step(ref, &where), KILN_OK, "reference step: %s: %s", where,
               kiln_last_error());
}

/* Runs the step with failure n armed (by arm); returns 1 while n still hit an
 * allocation, 0 once the step got through with n past the last one. */
static int step_with_failure(long n, int in_plugin, const step_result *ref) {
  step_result r;
  const char *where = "?";
  memset(&r, 0, sizeof r);
  char num[32];
  snprintf(num, sizeof num, "%ld", n);
  if (in_plugin)
    setenv("KILN_FAULT_ALLOC_CPU", num, 1);
  else
    kiln__fault_alloc_arm(n);
  kiln_clear_error();
  kiln_status st = train_step(&r, &where);
  int fired = in_plugin ? st != KILN_OK : kiln__fault_alloc_fired();
  unsetenv("KILN_FAULT_ALLOC_CPU");
  kiln__fault_alloc_arm(0);
  if (st != KILN_OK) {
    const char *msg = kiln_last_error();
    cr_assert_eq(st, KILN_OUT_OF_MEMORY, "%s allocation %ld: %s returned %s, not out of memory: %s",
                 in_plugin ? "plugin" : "libkiln", n, where, kiln_status_name(st), msg);
    cr_assert(strstr(msg, "memory") != NULL, "%s allocation %ld: %s: message '%s' says nothing "
              "about memory", in_plugin ? "plugin" : "libkiln", n, where, msg);
  } else {
    /* the failure was absorbed (a fallback) or past the end: same result */
    cr_assert_eq(memcmp(&r, ref, sizeof r), 0,
                 "%s allocation %ld: the step succeeded but its result differs "
                 "(loss %g %g, reference %g %g)", in_plugin ? "plugin" : "libkiln", n,
                 (double)r.loss[0], (double)r.loss[1], (double)ref->loss[0], (double)ref->loss[1]);
  }
  /* memory is back: the same step works and gives the reference result */
  memset(&r, 0, sizeof r);
  cr_assert_eq(train_step(&r, &where), KILN_OK, "after %s allocation %ld failed: %s: %s",
               in_plugin ? "plugin" : "libkiln", n, where, kiln_last_error());
  cr_assert_eq(memcmp(&r, ref, sizeof r), 0, "after %s allocation %ld: result differs",
               in_plugin ? "plugin" : "libkiln", n);
  return fired;
}

Test(fault_alloc, every_libkiln_allocation_of_a_training_step, .timeout = 600) {
  step_result ref;
  reference(&ref);
  kiln__fault_alloc_arm(0);
  train_step(&(step_result){0}, &(const char *){0});
  long total = kiln__fault_alloc_count();
  cr_assert_gt(total, 50, "a training step makes only %ld allocations through libkiln?", total);
  long n = 1;
  for (; n <= total; n++)
    cr_assert(step_with_failure(n, 0, &ref), "allocation %ld of %ld was never made", n, total);
  cr_assert_not(step_with_failure(total + 1, 0, &ref), "allocation %ld failed past the end", n);
  cr_log_info("libkiln: %ld allocations, each failed once", total);
}

Test(fault_alloc, every_cpu_plugin_allocation_of_a_training_step, .timeout = 600) {
  step_result ref;
  reference(&ref);
  long n = 1;
  while (step_with_failure(n, 1, &ref)) {
    n++;
    cr_assert_lt(n, 10000, "the CPU plugin failed 10000 allocations in a row");
  }
  /* device + pool (2), 6 tensors + the graph's buffers (2 each), executable (2) */
  cr_assert_gt(n - 1, 14, "only %ld CPU plugin allocations were made and failed", n - 1);
  cr_log_info("cpu plugin: %ld allocations, each failed once", n - 1);
}

Test(fault_alloc, environment_arms_the_nth_allocation) {
  /* $KILN_FAULT_ALLOC is read at the first allocation only; a test arm
   * overrides it, so here we just check arming by count and its report. */
  kiln__fault_alloc_arm(3);
  kiln_graph *g = NULL;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *a = kiln_input(g, "a", KILN_F32, 1, (int64_t[]){2});
  kiln_node *b = kiln_input(g, "b", KILN_F32, 1, (int64_t[]){2});
  cr_assert(kiln_graph_status(g) != KILN_OK || !a || !b, "the third allocation did not fail");
  cr_assert_eq(kiln_graph_status(g), KILN_OUT_OF_MEMORY, "%s", kiln_graph_error(g));
  cr_assert(kiln__fault_alloc_fired());
  kiln_graph_destroy(g);
  kiln__fault_alloc_arm(0);
}
