/*
 * test_errors.c - the rows of docs/errors.md that no other suite checks:
 * out of memory for a tensor larger than memory, a device that is lost,
 * missing data through the CLI, and an op number nobody knows at compile
 * time. Each asserts the status and the words of the message the document
 * quotes, so the document cannot drift from the code unnoticed.
 */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"
#include "testutil.h"

#define KILN_BIN KILN_BUILD_DIR "/bin/kiln"
#define SHAPED KILN_FAKE_PLUGIN_DIR "/libfake_shaped.so"

#define HAS(msg, part) cr_assert(strstr((msg), (part)) != NULL, "message '%s' lacks '%s'", (msg), (part))

Test(errors_doc, tensor_larger_than_memory_is_out_of_memory) {
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  kiln_tensor *t = NULL;
  int64_t shape[2] = {(int64_t)1 << 30, (int64_t)1 << 20};  /* 2^50 floats: 4 PiB */
  kiln_status st = kiln_tensor_create(dev, KILN_F32, 2, shape, &t);
  cr_log_info("%s: %s", kiln_status_name(st), kiln_last_error());
  cr_assert_eq(st, KILN_OUT_OF_MEMORY, "%s: %s", kiln_status_name(st), kiln_last_error());
  cr_assert_null(t);
  HAS(kiln_last_error(), "out of memory");
  /* the device still works */
  int64_t small = 4;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 1, &small, &t), KILN_OK, "%s", kiln_last_error());
  kiln_tensor_destroy(t);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* Shape of fake_shaped (see shaped_plugin.c): byte 10 = device count,
 * byte 14 >= 160 picks a failing status for buffer_alloc: 160 % 6 == 4 is
 * KILN_DEVICE_LOST in its list. */
Test(errors_doc, lost_device_is_reported_as_device_lost) {
  void *h = dlopen(SHAPED, RTLD_NOW | RTLD_LOCAL);
  cr_assert_not_null(h, "%s", dlerror());
  void (*set)(const uint8_t *, size_t);
  void *sym = dlsym(h, "fuzz_shaped_set");
  cr_assert_not_null(sym);
  memcpy(&set, &sym, sizeof set);
  uint8_t shape[32] = {0};
  shape[10] = 1;     /* one device */
  shape[14] = 165;   /* 165 % 6 == 3: KILN_DEVICE_LOST */
  set(shape, sizeof shape);

  kiln_context_options o = {.struct_size = sizeof o, .flags = KILN_CONTEXT_NO_DISCOVERY};
  kiln_context *ctx;
  cr_assert_eq(kiln_context_create(&o, &ctx), KILN_OK);
  cr_assert_eq(kiln_plugin_load(ctx, SHAPED, NULL), KILN_OK, "%s", kiln_last_error());
  kiln_device *dev;
  cr_assert_eq(kiln_device_open(ctx, "shaped", 0, &dev), KILN_OK, "%s", kiln_last_error());
  kiln_tensor *t = NULL;
  int64_t n = 4;
  kiln_status st = kiln_tensor_create(dev, KILN_F32, 1, &n, &t);
  cr_log_info("%s: %s", kiln_status_name(st), kiln_last_error());
  cr_assert_eq(st, KILN_DEVICE_LOST, "%s: %s", kiln_status_name(st), kiln_last_error());
  HAS(kiln_last_error(), "buffer_alloc");
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  dlclose(h);
}

Test(errors_doc, unknown_op_number_is_refused) {
  kiln_graph *g;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){4});
  kiln_node *y = kiln_node_create(g, (kiln_op)9999, 1, &x, NULL, NULL, KILN_F32, 1, (int64_t[]){4});
  cr_assert_null(y);
  cr_log_info("%s: %s", kiln_status_name(kiln_graph_status(g)), kiln_graph_error(g));
  cr_assert_eq(kiln_graph_status(g), KILN_UNSUPPORTED, "%s", kiln_graph_error(g));
  HAS(kiln_graph_error(g), "9999");
  kiln_graph_destroy(g);
}

static int run(const char *cmd, char *out, size_t size) {
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  size_t n = fread(out, 1, size - 1, p);
  out[n] = '\0';
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(errors_doc, cli_missing_data_says_how_to_fetch_it) {
  char out[8192];
  int rc = run("'" KILN_BIN "' train mnist-cnn --backend cpu --epochs 1 --data /nonexistent/kiln-data 2>&1",
               out, sizeof out);
  cr_log_info("exit %d: %s", rc, out);
  cr_assert_eq(rc, 1, "exit %d: %s", rc, out);
  HAS(out, "MNIST file not found: tried /nonexistent/kiln-data/train-images-idx3-ubyte.gz");
  HAS(out, "kiln fetch mnist");
}

Test(errors_doc, cli_missing_vulkan_driver_is_named) {
  char out[8192], cmd[4096];
  /* the loader finds no driver: the Vulkan plugin's init fails, so the
   * backend is refused and the CLI says why */
  snprintf(cmd, sizeof cmd,
           "VK_ICD_FILENAMES=/nonexistent/icd.json VK_DRIVER_FILES=/nonexistent/icd.json '" KILN_BIN
           "' train mnist-cnn --backend vulkan --epochs 1 --train-samples 32 --test-samples 32 "
           "--data '%s' 2>&1",
           tu_data_path(""));
  int rc = run(cmd, out, sizeof out);
  cr_log_info("exit %d: %s", rc, out);
  cr_assert_neq(rc, 0, "%s", out);
  HAS(out, "no Vulkan driver found");
}

/* Found by fuzz_graph: a reshape target whose dimensions multiply past
 * 2^63 overflowed (undefined behaviour) instead of being refused. */
Test(errors_doc, reshape_to_an_overflowing_shape_is_refused) {
  kiln_graph *g;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *x = kiln_input(g, "x", KILN_F32, 1, (int64_t[]){4});
  int64_t big = (int64_t)1 << 40;
  cr_assert_null(kiln_reshape(g, x, 3, (int64_t[]){big, big, 4}));
  cr_assert_eq(kiln_graph_status(g), KILN_INVALID_ARGUMENT, "%s", kiln_graph_error(g));
  HAS(kiln_graph_error(g), "more elements than fit in 64 bits");
  kiln_graph_destroy(g);
}

/* Also found by fuzz_graph: leaves and broadcasts whose element count
 * overflows were accepted, and later counts overflowed. */
Test(errors_doc, overflowing_leaf_and_broadcast_shapes_are_refused) {
  int64_t big = (int64_t)1 << 40;
  kiln_graph *g;
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  cr_assert_null(kiln_input(g, "x", KILN_F32, 2, (int64_t[]){big, big}));
  cr_assert_eq(kiln_graph_status(g), KILN_INVALID_ARGUMENT, "%s", kiln_graph_error(g));
  HAS(kiln_graph_error(g), "more elements than fit in 64 bits");
  kiln_graph_destroy(g);
  cr_assert_eq(kiln_graph_create(&g), KILN_OK);
  kiln_node *a = kiln_input(g, "a", KILN_F32, 2, (int64_t[]){big, 1});
  kiln_node *b = kiln_input(g, "b", KILN_F32, 2, (int64_t[]){1, big});
  cr_assert_not_null(a, "%s", kiln_graph_error(g));
  cr_assert_not_null(b, "%s", kiln_graph_error(g));
  cr_assert_null(kiln_add(g, a, b));
  cr_assert_eq(kiln_graph_status(g), KILN_INVALID_ARGUMENT, "%s", kiln_graph_error(g));
  HAS(kiln_graph_error(g), "add: output shape [1099511627776, 1099511627776] has more elements");
  kiln_graph_destroy(g);
}
