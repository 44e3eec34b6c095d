/*
 * mlp.c - the smallest complete kiln training program, through the graph API.
 *
 * Task: three interleaved spirals in the plane (300 points, 100 per class,
 * a little noise, fixed seed). A linear model cannot separate them; a small
 * MLP can:
 *
 *   x [N, 2] -> Linear(2, 64) -> tanh -> Linear(64, 64) -> tanh
 *            -> Linear(64, 3) -> logits [N, 3] -> cross-entropy with labels [N]
 *
 * How kiln trains it: the forward graph is written once; kiln_graph_backward()
 * appends the gradients; one kiln_adam_update() per parameter appends the
 * in-place updates. So ONE graph is one whole training step. It is compiled
 * once (memory planned, handed to the backend) and run many times.
 *
 * usage: example-mlp [--steps N] [--backend NAME] [--help]
 * Prints the loss as it trains and, at the end,
 *   final_loss=0.0xyz accuracy=0.9xy
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"

enum { N_PER_CLASS = 100, N_CLASSES = 3, N = N_PER_CLASS * N_CLASSES, HIDDEN = 64 };

#define CHECK(call)                                                  \
  do {                                                               \
    if ((call) != KILN_OK) {                                         \
      fprintf(stderr, "example-mlp: %s\n", kiln_last_error());      \
      goto done;                                                     \
    }                                                                \
  } while (0)

/* A small deterministic generator (xorshift64*), so every run is the same. */
static uint64_t rng_state = 0x853c49e6748fea9bull;
static double rng_uniform(void) { /* [0, 1) */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
}
static double rng_normal(void) { /* Box-Muller */
  double u = rng_uniform() + 1e-12, v = rng_uniform();
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Class k's points lie on an arm turning through 1.5 revolutions, rotated by
 * k/3 of a turn: x [N, 2] in roughly [-1, 1], labels [N]. */
static void make_spirals(float *x, int32_t *labels) {
  for (int k = 0; k < N_CLASSES; k++) {
    for (int i = 0; i < N_PER_CLASS; i++) {
      double r = (double)i / N_PER_CLASS;
      double t = 3.0 * 3.141592653589793 * r + 2.0 * 3.141592653589793 * k / N_CLASSES;
      t += 0.15 * rng_normal();
      int n = k * N_PER_CLASS + i;
      x[2 * n + 0] = (float)(r * sin(t));
      x[2 * n + 1] = (float)(r * cos(t));
      labels[n] = k;
    }
  }
}

/* A parameter tensor [rows, cols] (or [cols] when rows == 0) initialised
 * uniform in +-sqrt(6 / (fan_in + fan_out)) (Glorot); biases start at 0. */
static kiln_status make_param(kiln_device *dev, int rows, int cols, kiln_tensor **out) {
  int64_t shape[2] = {rows, cols};
  int ndim = rows ? 2 : 1;
  const int64_t *s = rows ? shape : shape + 1;
  kiln_status st = kiln_tensor_create(dev, KILN_F32, ndim, s, out);
  if (st != KILN_OK || !rows) return st;
  size_t n = (size_t)rows * (size_t)cols;
  float *w = malloc(n * sizeof *w);
  if (!w) return KILN_OUT_OF_MEMORY;
  double limit = sqrt(6.0 / (rows + cols));
  for (size_t i = 0; i < n; i++) w[i] = (float)((2.0 * rng_uniform() - 1.0) * limit);
  st = kiln_tensor_upload(*out, w, n * sizeof *w);
  free(w);
  return st;
}

static void usage(FILE *f, const char *argv0) {
  fprintf(f,
          "usage: %s [--steps N] [--backend NAME]\n"
          "Trains a 2-64-64-3 tanh MLP with Adam on three interleaved spirals.\n"
          "  --steps N        training steps (full batch of %d points), default 1000\n"
          "  --backend NAME   cpu, vulkan or auto (default auto)\n",
          argv0, N);
}

int main(int argc, char **argv) {
  int steps = 1000;
  const char *backend = "auto";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout, argv[0]);
      return 0;
    } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
      steps = atoi(argv[++i]);
      if (steps < 1) {
        fprintf(stderr, "example-mlp: --steps must be >= 1\n");
        return 2;
      }
    } else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
      backend = argv[++i];
    } else {
      usage(stderr, argv[0]);
      return 2;
    }
  }

  int rc = 1;
  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  kiln_graph *g = NULL;
  kiln_compiled *c = NULL;
  enum { N_PARAMS = 6 };
  kiln_tensor *params[N_PARAMS] = {0}, *m[N_PARAMS] = {0}, *v[N_PARAMS] = {0}, *step_t = NULL;
  static float x_data[N * 2], logits_data[N * N_CLASSES];
  static int32_t label_data[N];
  make_spirals(x_data, label_data);

  CHECK(kiln_context_create(NULL, &ctx));
  CHECK(kiln_device_open(ctx, backend, -1, &dev));
  kiln_device_info info = {.struct_size = sizeof info};
  CHECK(kiln_device_get_info(dev, &info));
  printf("device: %s (%s)\n", info.name, kiln_plugin_name(kiln_device_plugin(dev)));

  /* Parameters W1 [2, 64], b1 [64], W2 [64, 64], b2 [64], W3 [64, 3], b3 [3],
   * and for each its Adam moments m and v (zero-filled state). */
  const int dims[N_PARAMS][2] = {{2, HIDDEN}, {0, HIDDEN}, {HIDDEN, HIDDEN},
                                 {0, HIDDEN}, {HIDDEN, N_CLASSES}, {0, N_CLASSES}};
  const char *names[N_PARAMS] = {"W1", "b1", "W2", "b2", "W3", "b3"};
  for (int i = 0; i < N_PARAMS; i++) {
    CHECK(make_param(dev, dims[i][0], dims[i][1], &params[i]));
    int64_t shape[KILN_MAX_DIMS];
    int ndim = kiln_tensor_shape(params[i], shape);
    CHECK(kiln_tensor_create(dev, KILN_F32, ndim, shape, &m[i]));
    CHECK(kiln_tensor_create(dev, KILN_F32, ndim, shape, &v[i]));
  }
  CHECK(kiln_tensor_create(dev, KILN_F32, 0, NULL, &step_t)); /* Adam's step counter t */

  /* The forward graph. Builders return NULL on error and the graph keeps
   * the first error, so the formula needs no checks until the end. */
  CHECK(kiln_graph_create(&g));
  const int64_t x_shape[2] = {N, 2}, y_shape[1] = {N};
  kiln_node *x = kiln_input(g, "x", KILN_F32, 2, x_shape);
  kiln_node *labels = kiln_input(g, "labels", KILN_I32, 1, y_shape);
  kiln_node *p[N_PARAMS];
  for (int i = 0; i < N_PARAMS; i++) p[i] = kiln_param(g, names[i], params[i]);
  kiln_node *h1 = kiln_tanh(g, kiln_add(g, kiln_matmul(g, x, p[0], 0, 0), p[1]));
  kiln_node *h2 = kiln_tanh(g, kiln_add(g, kiln_matmul(g, h1, p[2], 0, 0), p[3]));
  kiln_node *logits = kiln_add(g, kiln_matmul(g, h2, p[4], 0, 0), p[5]);
  kiln_node *loss = kiln_cross_entropy(g, logits, labels);
  CHECK(kiln_graph_status(g));

  /* Backward, then one Adam update per parameter, all in the same graph. */
  CHECK(kiln_graph_backward(g, loss));
  kiln_node *t = kiln_increment(g, kiln_state(g, "step", step_t), 1.0f);
  kiln_adam_options adam = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
  for (int i = 0; i < N_PARAMS; i++) {
    kiln_node *mi = kiln_state(g, "m", m[i]), *vi = kiln_state(g, "v", v[i]);
    kiln_adam_update(g, p[i], kiln_grad(g, p[i]), mi, vi, t, NULL, &adam);
  }
  CHECK(kiln_graph_status(g));
  CHECK(kiln_graph_output(g, loss));
  CHECK(kiln_graph_output(g, logits));

  /* Compile once; the data is one full batch, so it is uploaded once. */
  CHECK(kiln_graph_compile(g, dev, &c));
  kiln_memory_stats mem = {.struct_size = sizeof mem};
  CHECK(kiln_compiled_memory(c, &mem));
  printf("compiled: %u nodes, arena %.1f KiB (%.1f KiB without reuse)\n", mem.n_nodes,
         mem.arena_bytes / 1024.0, mem.unplanned_bytes / 1024.0);
  CHECK(kiln_compiled_set_input(c, x, x_data, sizeof x_data));
  CHECK(kiln_compiled_set_input(c, labels, label_data, sizeof label_data));

  float loss_value = 0.0f;
  for (int s = 1; s <= steps; s++) {
    CHECK(kiln_compiled_run(c));
    if (s % 100 == 0 || s == 1 || s == steps) {
      CHECK(kiln_compiled_get_output(c, loss, &loss_value, sizeof loss_value));
      printf("step %5d  loss %.4f\n", s, loss_value);
    }
  }

  /* The last run's logits (computed before its update) give the accuracy. */
  CHECK(kiln_compiled_get_output(c, logits, logits_data, sizeof logits_data));
  int correct = 0;
  for (int n = 0; n < N; n++) {
    int best = 0;
    for (int k = 1; k < N_CLASSES; k++)
      if (logits_data[n * N_CLASSES + k] > logits_data[n * N_CLASSES + best]) best = k;
    correct += best == label_data[n];
  }
  printf("final_loss=%.4f accuracy=%.3f\n", loss_value, (double)correct / N);
  rc = 0;

done:
  kiln_compiled_destroy(c);
  kiln_graph_destroy(g);
  for (int i = 0; i < N_PARAMS; i++) {
    kiln_tensor_destroy(params[i]);
    kiln_tensor_destroy(m[i]);
    kiln_tensor_destroy(v[i]);
  }
  kiln_tensor_destroy(step_t);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return rc;
}
