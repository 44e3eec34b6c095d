/*
 * cmd_plan.c - `kiln plan [mnist-cnn] [--backend NAME] [--device N]
 * [--plugin FILE] [--batch N]`: compiles the model's training step (forward,
 * cross-entropy, backward, Adam) for a device without running it, and
 * prints how it would run: one segment when the device supports every op,
 * else the partition with the CPU fallback (which nodes run where, what is
 * copied between segments), and the memory plan.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "kiln/kiln.h"
#include "kiln/nn.h"

static void plan_usage(FILE *f) {
  fprintf(f,
          "usage: kiln plan [mnist-cnn] [--backend NAME] [--device N] [--plugin FILE] [--batch N]\n"
          "\n"
          "Compiles one training step of the model (forward, cross-entropy, backward,\n"
          "Adam) for a device and prints the plan: which plugin runs which nodes, and\n"
          "what the CPU fallback copies when the device lacks some ops. Runs nothing.\n"
          "\n"
          "  --backend NAME  plugin name (cpu, vulkan, ...) or auto (default)\n"
          "  --device N      device index within the plugin (default: its best)\n"
          "  --plugin FILE   load this plugin file too (e.g. one built from\n"
          "                  plugins/template) before choosing the device\n"
          "  --batch N       batch size (default 64)\n");
}

int kiln_cmd_plan(int argc, char **argv) {
  const char *backend = "auto", *plugin_file = NULL, *model = "mnist-cnn";
  int device = -1;
  long batch = 64;
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    char *end = NULL;
    if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
      plan_usage(stdout);
      return 0;
    } else if (!strcmp(s, "--backend") && i + 1 < argc) {
      backend = argv[++i];
    } else if (!strcmp(s, "--plugin") && i + 1 < argc) {
      plugin_file = argv[++i];
    } else if (!strcmp(s, "--device") && i + 1 < argc) {
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 0 || v > 65535) {
        fprintf(stderr, "kiln plan: --device wants a device index, got '%s'\n", argv[i]);
        return 2;
      }
      device = (int)v;
    } else if (!strcmp(s, "--batch") && i + 1 < argc) {
      batch = strtol(argv[++i], &end, 10);
      if (*end || batch < 1 || batch > 1 << 20) {
        fprintf(stderr, "kiln plan: --batch wants 1..%d, got '%s'\n", 1 << 20, argv[i]);
        return 2;
      }
    } else if (s[0] != '-' && i == 1) {
      model = s;
    } else {
      fprintf(stderr, "kiln plan: unknown or incomplete option '%s'\n\n", s);
      plan_usage(stderr);
      return 2;
    }
  }
  if (strcmp(model, "mnist-cnn") != 0) {
    fprintf(stderr, "kiln plan: unknown model '%s' (known: mnist-cnn)\n", model);
    return 2;
  }

  int rc = 1;
  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  kiln_model *m = NULL;
  kiln_graph *g = NULL;
  kiln_compiled *c = NULL;
  kiln_tensor **state = NULL, *step_t = NULL;
  kiln_node **params = NULL;
  size_t n_params = 0;
  char *plan = NULL;

  if (kiln_context_create(NULL, &ctx) != KILN_OK) goto fail;
  if (plugin_file && kiln_plugin_load(ctx, plugin_file, NULL) != KILN_OK) goto fail;
  if (kiln_device_open(ctx, backend, device, &dev) != KILN_OK) goto fail;
  if (kiln_model_mnist_cnn(dev, 1, &m) != KILN_OK) goto fail;
  n_params = kiln_model_param_count(m);
  state = calloc(2 * n_params + 1, sizeof *state);
  params = calloc(n_params + 1, sizeof *params);
  plan = malloc(1 << 16);
  if (!state || !params || !plan) {
    fprintf(stderr, "kiln plan: out of memory\n");
    goto done;
  }
  if (kiln_graph_create(&g) != KILN_OK) goto fail;
  int64_t xshape[4] = {batch, 1, 28, 28}, yshape[1] = {batch};
  kiln_node *x = kiln_input(g, "x", KILN_F32, 4, xshape);
  kiln_node *y = kiln_input(g, "labels", KILN_I32, 1, yshape);
  kiln_node *loss = kiln_cross_entropy(g, kiln_model_forward(m, g, x, 0, params), y);
  if (kiln_graph_output(g, loss) != KILN_OK || kiln_graph_backward(g, loss) != KILN_OK) goto fail;
  if (kiln_tensor_create(dev, KILN_F32, 0, NULL, &step_t) != KILN_OK) goto fail;
  kiln_node *step = kiln_increment(g, kiln_state(g, "optimizer.step", step_t), 1.0f);
  kiln_adam_options ao = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  for (size_t i = 0; i < n_params; i++) {
    const char *name;
    kiln_tensor *p;
    int64_t shape[8];
    if (kiln_model_param(m, i, &name, &p) != KILN_OK) goto fail;
    int nd = kiln_tensor_shape(p, shape);
    for (int k = 0; k < 2; k++)
      if (kiln_tensor_create(dev, KILN_F32, nd, shape, &state[2 * i + k]) != KILN_OK) goto fail;
    kiln_node *grad = kiln_grad(g, params[i]);
    if (grad)
      kiln_adam_update(g, params[i], grad, kiln_state(g, "m", state[2 * i]),
                       kiln_state(g, "v", state[2 * i + 1]), step, NULL, &ao);
  }
  if (kiln_graph_status(g) != KILN_OK) {
    fprintf(stderr, "kiln plan: building the graph: %s\n", kiln_graph_error(g));
    goto done;
  }
  if (kiln_graph_compile(g, dev, &c) != KILN_OK) goto fail;
  kiln_device_info info = {.struct_size = sizeof info};
  kiln_device_get_info(dev, &info);
  kiln_memory_stats ms = {.struct_size = sizeof ms};
  kiln_compiled_memory(c, &ms);
  kiln_compiled_describe(c, plan, 1 << 16);
  printf("model %s, batch %ld, Adam; device: %s (%s)\n", model, batch,
         kiln_plugin_name(kiln_device_plugin(dev)), info.name);
  printf("%s", plan);
  printf("memory: %.2f MiB of intermediates (%.2f MiB without reuse), %.2f MiB of params and "
         "state, %u nodes\n",
         ms.arena_bytes / 1048576.0, ms.unplanned_bytes / 1048576.0,
         ms.persistent_bytes / 1048576.0, ms.n_nodes);
  rc = 0;
  goto done;

fail:
  fprintf(stderr, "kiln plan: %s\n", kiln_last_error());
done:
  kiln_compiled_destroy(c);
  kiln_graph_destroy(g);
  if (state)
    for (size_t i = 0; i < 2 * n_params; i++) kiln_tensor_destroy(state[i]);
  kiln_tensor_destroy(step_t);
  kiln_model_destroy(m);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  free(state);
  free(params);
  free(plan);
  return rc;
}
