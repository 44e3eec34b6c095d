/*
 * cmd_bench.c - `kiln bench`: how fast a backend runs the work kiln exists
 * for, measured through the public graph API exactly as a user would run it.
 *
 *   kiln bench [--backend cpu|vulkan|auto] [--device N] [--threads N]
 *              [--quick] [--cases LIST] [--json FILE]
 *
 * Cases:
 *   sgemm N        C[N, N] = A[N, N] @ B[N, N] for N = 256, 512, 1024, 2048;
 *                  GFLOP/s counting 2*N^3 flops
 *   convL fwd/dx/dw  each convolution of the reference MNIST CNN at batch 64:
 *                  forward, input gradient and weight gradient, each a
 *                  one-node graph; GFLOP/s counting 2*N*O*OH*OW*C*KH*KW
 *   train step     full training steps of the reference CNN (batch 64, Adam,
 *                  cross-entropy) through kiln_trainer_fit_epoch on synthetic
 *                  data; images/s
 *   char-lstm step full training steps of `kiln train char-lstm`'s default
 *                  model (2 x 128 LSTM, batch 50 x 50, Adam, clipping) on
 *                  random characters; tokens/s
 *   char-gpt step  the same for `kiln train char-gpt`'s default (4 layers,
 *                  4 heads, 128 wide, block 64, batch 12, AdamW); tokens/s
 *   host floor, host cnn, host mlp-2, host mlp-20
 *                  the host's share of a training step (batch 64, Adam,
 *                  through kiln_trainer_fit_epoch): CPU time of the calling
 *                  thread (CLOCK_THREAD_CPUTIME_ID) per step, next to the
 *                  wall time. Sleeping in a fence wait costs no CPU time, so
 *                  on a device that runs the work elsewhere (a GPU, or
 *                  lavapipe's own threads) this is the cost of launching a
 *                  step: gathering the batch, uploads, submit, read-back. On
 *                  the CPU plugin the calling thread is one of the workers,
 *                  so there it includes its share of the work (the other
 *                  threads' is not counted). On lavapipe the driver's
 *                  threads run the work on the same cores as the calling
 *                  thread, which slows it. "host floor" is a one-node graph
 *                  fed, run and read per step: the cost of the round trip
 *                  alone. The MLPs (64 wide, 2 and 20 dense layers, 64
 *                  inputs) show how the launch cost grows with the number
 *                  of ops in the graph.
 *
 * Each case is warmed up, then timed in `reps` repetitions of `iters`
 * back-to-back runs (iters chosen so that one repetition lasts at least the
 * target time); the figure reported is the median repetition, with the
 * fastest and slowest shown so the noise of a shared machine is visible.
 *
 * --threads N sets KILN_NUM_THREADS for the CPU plugin before it loads.
 * --json FILE writes the figures for tools/bench-compare; its layout:
 *   {"kiln_version", "backend", "device", "threads" (0: the plugin's default), "quick",
 *    "cases": [{"name", "kind": "sgemm"|"conv"|"train"|"tokens"|"host", "n" |
 *               "layer"+"pass" | "batch" | "model" (tokens, host), "seconds" (median
 *               per run), "min_seconds", "max_seconds", "iters", "reps", "gflops" |
 *               "images_per_s" | "tokens_per_s" | "host_seconds"+"host_us_per_step"
 *               (median host CPU time per step)}]}
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "char_model.h"
#include "commands.h"
#include "gpt_model.h"
#include "kiln/kiln.h"
#include "kiln/nn.h"
#include "loss_lag.h"

#define BENCH_MAX_CASES 32

typedef struct bench_opts {
  const char *backend;  /* "auto" */
  int device;           /* -1: the backend's best */
  int threads;          /* 0: the plugin's default */
  int quick;
  const char *json;
  unsigned cases;       /* BENCH_* bits */
} bench_opts;

enum { BENCH_SGEMM = 1, BENCH_CONV = 2, BENCH_CNN = 4, BENCH_LSTM = 8, BENCH_GPT = 16,
       BENCH_HOST = 32 };
static const struct { const char *name; unsigned bit; } bench_case_names[] = {
    {"sgemm", BENCH_SGEMM}, {"conv", BENCH_CONV}, {"cnn", BENCH_CNN},
    {"char-lstm", BENCH_LSTM}, {"char-gpt", BENCH_GPT}, {"host", BENCH_HOST}};

/* One measured case. */
typedef struct bench_result {
  char name[48];
  const char *kind;     /* "sgemm", "conv", "train" (images), "tokens", "host" */
  const char *model;    /* tokens: "char-lstm", "char-gpt"; host: "mnist-cnn", "mlp-2".. */
  int n;                /* sgemm size */
  const char *layer;    /* conv: "conv1".. */
  const char *pass;     /* conv: "forward", "backward_input", "backward_weight" */
  char shape[96];       /* human-readable problem shape */
  double seconds, min_s, max_s;   /* per run: median, fastest, slowest repetition */
  int iters, reps;
  double work;          /* flops (sgemm, conv), images (train) or tokens (tokens) per run */
  double host_s;        /* host: median CPU time of the calling thread per step */
} bench_result;

typedef struct bench_timing {
  double target_s;      /* one repetition lasts at least this */
  int reps;
  int warmup;
} bench_timing;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the calling thread: what it spends sleeping in a wait does
 * not count. */
static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Sorts v[n] and returns its median. */
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof v[0], cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* r's median, fastest and slowest of `reps` repetitions of `iters` runs
 * (times: seconds per run, reordered). */
static void set_times(bench_result *r, double *times, int reps, int iters) {
  r->seconds = median(times, reps);
  r->min_s = times[0];
  r->max_s = times[reps - 1];
  r->iters = iters;
  r->reps = reps;
}

static void bench_usage(FILE *f) {
  fprintf(f,
          "usage: kiln bench [options]\n"
          "\n"
          "Measures sgemm (256 to 2048), each convolution of the reference MNIST CNN\n"
          "(batch 64: forward, input gradient, weight gradient), full training steps\n"
          "of that CNN (batch 64, Adam; images/s) and of the default char-lstm and\n"
          "char-gpt models of `kiln train` on random characters (tokens/s), through\n"
          "the public graph API, and the host's share of a training step (host): the\n"
          "CPU time the calling thread spends per step of a one-node graph (the\n"
          "floor), of the CNN and of a 2- and a 20-layer MLP (batch 64, Adam). On a\n"
          "GPU that is the cost of launching the step, outside the device's work (on\n"
          "lavapipe the driver's threads share the cores and slow it); on the cpu\n"
          "backend the calling thread is one of the workers, so there it includes its\n"
          "share of the work. Each case is warmed up and timed in repetitions; the median is\n"
          "reported, with the fastest and slowest repetition as a measure of noise.\n"
          "\n"
          "options:\n"
          "  --backend NAME   cpu, vulkan or auto (default auto: the best device)\n"
          "  --device N       device index within the backend (default: its best)\n"
          "  --threads N      CPU threads (sets KILN_NUM_THREADS; default: online cores)\n"
          "  --quick          fewer and shorter repetitions, no sgemm 2048\n"
          "  --cases LIST     comma-separated subset of sgemm, conv, cnn, char-lstm,\n"
          "                   char-gpt, host (default: all)\n"
          "  --json FILE      also write the figures as JSON (for tools/bench-compare)\n"
          "  --help           show this help\n");
}

/* Parses argv[1..]. Returns 0 on success, 2 on a usage error, -1 after --help. */
static int parse_opts(int argc, char **argv, bench_opts *o) {
  memset(o, 0, sizeof *o);
  o->backend = "auto";
  o->device = -1;
  o->cases = BENCH_SGEMM | BENCH_CONV | BENCH_CNN | BENCH_LSTM | BENCH_GPT | BENCH_HOST;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      bench_usage(stdout);
      return -1;
    }
    if (!strcmp(a, "--quick")) {
      o->quick = 1;
      continue;
    }
    char flag[32];
    const char *eq = strchr(a, '=');
    size_t flen = eq ? (size_t)(eq - a) : strlen(a);
    if (flen >= sizeof flag) flen = sizeof flag - 1;
    memcpy(flag, a, flen);
    flag[flen] = '\0';
    if (strcmp(flag, "--backend") && strcmp(flag, "--device") && strcmp(flag, "--threads") &&
        strcmp(flag, "--json") && strcmp(flag, "--cases")) {
      fprintf(stderr, "kiln bench: unknown %s '%s' (see kiln bench --help)\n",
              a[0] == '-' ? "option" : "argument", a);
      return 2;
    }
    const char *val;
    if (eq) {
      val = eq + 1;
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      fprintf(stderr, "kiln bench: option %s needs a value\n", flag);
      return 2;
    }
    int good = *val != '\0';
    if (good && (!strcmp(flag, "--device") || !strcmp(flag, "--threads"))) {
      errno = 0;
      char *end;
      long v = strtol(val, &end, 10);
      int lo = !strcmp(flag, "--threads") ? 1 : 0;
      good = !errno && !*end && v >= lo && v <= 4096;
      if (!strcmp(flag, "--device"))
        o->device = (int)v;
      else
        o->threads = (int)v;
    } else if (!strcmp(flag, "--backend")) {
      o->backend = val;
    } else if (!strcmp(flag, "--json")) {
      o->json = val;
    } else if (!strcmp(flag, "--cases") && good) {
      o->cases = 0;
      for (const char *c = val; good && *c;) {
        size_t len = strcspn(c, ",");
        unsigned bit = 0;
        for (size_t k = 0; k < sizeof bench_case_names / sizeof bench_case_names[0]; k++)
          if (strlen(bench_case_names[k].name) == len && !strncmp(c, bench_case_names[k].name, len))
            bit = bench_case_names[k].bit;
        if (!bit) {
          fprintf(stderr, "kiln bench: unknown case '%.*s' in --cases (choose from sgemm, conv, "
                          "cnn, char-lstm, char-gpt, host)\n", (int)len, c);
          return 2;
        }
        o->cases |= bit;
        c += len + (c[len] == ',');
      }
    }
    if (!good) {
      fprintf(stderr, "kiln bench: bad value '%s' for %s\n", val, flag);
      return 2;
    }
  }
  return 0;
}

/* Deterministic fill in [-1, 1) (xorshift), so runs compare like for like. */
static void fill_random(float *x, size_t n, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 1u;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x[i] = (float)(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
}

/* Runs c (iters times per repetition) and fills r's timing fields. The
 * iteration count is doubled from 1 until one repetition lasts target_s. */
static int time_compiled(kiln_device *dev, kiln_compiled *c, const bench_timing *tm,
                         bench_result *r) {
  for (int w = 0; w < tm->warmup; w++)
    if (kiln_compiled_run(c) != KILN_OK) return 0;
  if (kiln_device_synchronize(dev) != KILN_OK) return 0;
  int iters = 1;
  for (;;) {
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
      if (kiln_compiled_run(c) != KILN_OK) return 0;
    if (kiln_device_synchronize(dev) != KILN_OK) return 0;
    double dt = now_s() - t0;
    if (dt >= tm->target_s || iters >= (1 << 20)) break;
    /* Jump most of the way at once once the time is measurable. */
    int want = dt > 1e-3 ? (int)(iters * tm->target_s / dt * 1.1) + 1 : iters * 8;
    iters = want > iters * 2 ? want : iters * 2;
  }
  double times[64];
  int reps = tm->reps < 64 ? tm->reps : 64;
  for (int k = 0; k < reps; k++) {
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
      if (kiln_compiled_run(c) != KILN_OK) return 0;
    if (kiln_device_synchronize(dev) != KILN_OK) return 0;
    times[k] = (now_s() - t0) / iters;
  }
  set_times(r, times, reps, iters);
  return 1;
}

/* Declares an input of the given shape, filled with random values after
 * compile by set_random_inputs(). */
typedef struct bench_input {
  kiln_node *node;
  size_t numel;
} bench_input;

static int set_random_inputs(kiln_compiled *c, const bench_input *in, int n) {
  for (int i = 0; i < n; i++) {
    float *buf = malloc(in[i].numel * sizeof *buf);
    if (!buf) {
      fprintf(stderr, "kiln bench: out of memory for a %zu-element input\n", in[i].numel);
      return 0;
    }
    fill_random(buf, in[i].numel, (uint32_t)i + 1);
    kiln_status st = kiln_compiled_set_input(c, in[i].node, buf, in[i].numel * sizeof *buf);
    free(buf);
    if (st != KILN_OK) return 0;
  }
  return 1;
}

static size_t numel_of(int ndim, const int64_t *shape) {
  size_t n = 1;
  for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
  return n;
}

/* Compiles g (whose output is `out`), feeds its inputs and times it. */
static int time_graph(kiln_device *dev, kiln_graph *g, kiln_node *out, const bench_input *in,
                      int n_in, const bench_timing *tm, bench_result *r) {
  kiln_compiled *c = NULL;
  int ok = 0;
  if (!out || kiln_graph_output(g, out) != KILN_OK) goto done;
  if (kiln_graph_compile(g, dev, &c) != KILN_OK) goto done;
  if (!set_random_inputs(c, in, n_in)) goto done;
  ok = time_compiled(dev, c, tm, r);
done:
  if (!ok) {
    const char *why = kiln_graph_status(g) != KILN_OK ? kiln_graph_error(g) : kiln_last_error();
    fprintf(stderr, "kiln bench: %s: %s\n", r->name, why);
  }
  kiln_compiled_destroy(c);
  return ok;
}

/* C[n, n] = A @ B. */
static int bench_sgemm(kiln_device *dev, int n, const bench_timing *tm, bench_result *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->name, sizeof r->name, "sgemm %d", n);
  snprintf(r->shape, sizeof r->shape, "[%d, %d] @ [%d, %d]", n, n, n, n);
  r->kind = "sgemm";
  r->n = n;
  r->work = 2.0 * n * n * (double)n;
  kiln_graph *g = NULL;
  if (kiln_graph_create(&g) != KILN_OK) {
    fprintf(stderr, "kiln bench: %s\n", kiln_last_error());
    return 0;
  }
  int64_t shape[2] = {n, n};
  bench_input in[2] = {{kiln_input(g, "a", KILN_F32, 2, shape), (size_t)n * n},
                       {kiln_input(g, "b", KILN_F32, 2, shape), (size_t)n * n}};
  kiln_node *out = kiln_matmul(g, in[0].node, in[1].node, 0, 0);
  int ok = time_graph(dev, g, out, in, 2, tm, r);
  kiln_graph_destroy(g);
  return ok;
}

/* One convolution of the reference CNN: x [N, C, H, W], w [O, C, K, K],
 * valid padding, stride 1. */
typedef struct conv_layer {
  const char *name;
  int64_t C, H, W, O, K;
} conv_layer;

static const conv_layer cnn_convs[] = {
    {"conv1", 1, 28, 28, 32, 3},
    {"conv2", 32, 13, 13, 64, 3},
    {"conv3", 64, 5, 5, 64, 3},
};

static const char *const conv_passes[] = {"forward", "backward_input", "backward_weight"};

static int bench_conv(kiln_device *dev, const conv_layer *L, int pass, int64_t batch,
                      const bench_timing *tm, bench_result *r) {
  memset(r, 0, sizeof *r);
  static const char *const short_pass[] = {"fwd", "dx", "dw"};
  snprintf(r->name, sizeof r->name, "%s %s", L->name, short_pass[pass]);
  int64_t OH = L->H - L->K + 1, OW = L->W - L->K + 1;
  snprintf(r->shape, sizeof r->shape, "x[%lld,%lld,%lld,%lld] w[%lld,%lld,%lld,%lld]",
           (long long)batch, (long long)L->C, (long long)L->H, (long long)L->W,
           (long long)L->O, (long long)L->C, (long long)L->K, (long long)L->K);
  r->kind = "conv";
  r->layer = L->name;
  r->pass = conv_passes[pass];
  r->work = 2.0 * (double)(batch * L->O * OH * OW) * (double)(L->C * L->K * L->K);

  int64_t xs[4] = {batch, L->C, L->H, L->W};
  int64_t ws[4] = {L->O, L->C, L->K, L->K};
  int64_t ys[4] = {batch, L->O, OH, OW};
  int64_t ip[8] = {1, 1, 0, 0, 1, 1, 1, 0};  /* stride, pad, dilation, groups */
  kiln_graph *g = NULL;
  if (kiln_graph_create(&g) != KILN_OK) {
    fprintf(stderr, "kiln bench: %s\n", kiln_last_error());
    return 0;
  }
  bench_input in[2];
  kiln_node *out = NULL;
  if (pass == 0) {
    in[0] = (bench_input){kiln_input(g, "x", KILN_F32, 4, xs), numel_of(4, xs)};
    in[1] = (bench_input){kiln_input(g, "w", KILN_F32, 4, ws), numel_of(4, ws)};
    kiln_node *args[2] = {in[0].node, in[1].node};
    out = kiln_node_create(g, KILN_OP_CONV2D, 2, args, ip, NULL, KILN_F32, -1, NULL);
  } else if (pass == 1) {
    in[0] = (bench_input){kiln_input(g, "dy", KILN_F32, 4, ys), numel_of(4, ys)};
    in[1] = (bench_input){kiln_input(g, "w", KILN_F32, 4, ws), numel_of(4, ws)};
    kiln_node *args[2] = {in[0].node, in[1].node};
    out = kiln_node_create(g, KILN_OP_CONV2D_BACKWARD_INPUT, 2, args, ip, NULL, KILN_F32, 4, xs);
  } else {
    in[0] = (bench_input){kiln_input(g, "dy", KILN_F32, 4, ys), numel_of(4, ys)};
    in[1] = (bench_input){kiln_input(g, "x", KILN_F32, 4, xs), numel_of(4, xs)};
    kiln_node *args[2] = {in[0].node, in[1].node};
    out = kiln_node_create(g, KILN_OP_CONV2D_BACKWARD_WEIGHT, 2, args, ip, NULL, KILN_F32, 4, ws);
  }
  int ok = time_graph(dev, g, out, in, 2, tm, r);
  kiln_graph_destroy(g);
  return ok;
}

/* Training steps on synthetic data: `steps` steps (one
 * kiln_trainer_fit_epoch) per repetition, timed with the wall clock and
 * the calling thread's CPU clock (host[], seconds per step; may be NULL).
 * layers == 0 is the reference CNN on 28x28 images; otherwise an MLP of
 * `layers` dense layers (64 wide, ReLU, the last one 10 classes) on 64
 * features. Returns 1, or 0 after printing why. */
static int train_steps(kiln_device *dev, const char *what, int layers, int batch, int steps,
                       const bench_timing *tm, double *wall, double *host, int reps) {
  enum { MLP_IN = 64, MLP_WIDTH = 64 };
  int ok = 0;
  kiln_model *m = NULL;
  kiln_trainer *t = NULL;
  int64_t n = (int64_t)batch * steps, in_numel = layers ? MLP_IN : 28 * 28;
  uint8_t *images = malloc((size_t)(n * in_numel));
  uint8_t *labels = malloc((size_t)n);
  if (!images || !labels) {
    fprintf(stderr, "kiln bench: %s: out of memory for %lld synthetic samples\n", what,
            (long long)n);
    goto done;
  }
  uint32_t s = 12345;
  for (int64_t i = 0; i < n * in_numel; i++) {
    s = s * 1664525u + 1013904223u;
    images[i] = (uint8_t)(s >> 24);
  }
  for (int64_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    labels[i] = (uint8_t)((s >> 24) % 10);
  }
  kiln_dataset ds;
  memset(&ds, 0, sizeof ds);
  ds.n = n;
  ds.x_u8 = images;
  ds.x_scale = 1.0f / 255.0f;
  ds.y_u8 = labels;
  kiln_status st;
  if (layers == 0) {
    st = kiln_model_mnist_cnn(dev, 1, &m);
  } else {
    int64_t in_shape[1] = {MLP_IN};
    st = kiln_model_create(dev, what, 1, in_shape, &m);
    for (int l = 0; l < layers && st == KILN_OK; l++) {
      char nm[16];
      snprintf(nm, sizeof nm, "fc%d", l + 1);
      st = l + 1 < layers ? kiln_model_dense(m, nm, MLP_WIDTH, KILN_ACT_RELU)
                          : kiln_model_dense(m, nm, 10, KILN_ACT_SOFTMAX);
    }
    if (st == KILN_OK) st = kiln_model_init(m, 1);
  }
  kiln_optimizer_config cfg;
  if (st != KILN_OK || kiln_optimizer_defaults(KILN_OPTIM_ADAM, &cfg) != KILN_OK ||
      kiln_trainer_create(m, &cfg, batch, 1, &t) != KILN_OK)
    goto fail;
  for (int w = 0; w < tm->warmup; w++)
    if (kiln_trainer_fit_epoch(t, &ds, NULL, NULL, NULL) != KILN_OK) goto fail;
  for (int k = 0; k < reps; k++) {
    double t0 = now_s(), c0 = thread_cpu_s();
    if (kiln_trainer_fit_epoch(t, &ds, NULL, NULL, NULL) != KILN_OK) goto fail;
    if (kiln_device_synchronize(dev) != KILN_OK) goto fail;
    if (host) host[k] = (thread_cpu_s() - c0) / steps;
    wall[k] = (now_s() - t0) / steps;
  }
  ok = 1;
  goto done;
fail:
  fprintf(stderr, "kiln bench: %s: %s\n", what, kiln_last_error());
done:
  kiln_trainer_destroy(t);
  kiln_model_destroy(m);
  free(images);
  free(labels);
  return ok;
}

/* Full training steps of the reference CNN (batch, Adam) on synthetic
 * MNIST-shaped data: images/s. */
static int bench_train(kiln_device *dev, int batch, int steps, const bench_timing *tm,
                       bench_result *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->name, sizeof r->name, "train step");
  snprintf(r->shape, sizeof r->shape, "mnist-cnn, batch %d, adam", batch);
  r->kind = "train";
  r->work = batch;
  double wall[64];
  int reps = tm->reps < 64 ? tm->reps : 64;
  if (!train_steps(dev, r->name, 0, batch, steps, tm, wall, NULL, reps)) return 0;
  set_times(r, wall, reps, steps);
  return 1;
}

/* The host's share of a training step of the CNN (layers 0) or of an MLP
 * named `model`: the calling thread's CPU time per step, beside the wall
 * time. */
static int bench_host(kiln_device *dev, const char *model, int layers, int batch, int steps,
                      const bench_timing *tm, bench_result *r) {
  memset(r, 0, sizeof *r);
  r->model = model;
  snprintf(r->name, sizeof r->name, "host %s", layers ? model : "cnn");
  if (layers)
    snprintf(r->shape, sizeof r->shape, "mlp %d x 64, batch %d, adam", layers, batch);
  else
    snprintf(r->shape, sizeof r->shape, "mnist-cnn, batch %d, adam", batch);
  r->kind = "host";
  r->work = batch;
  double wall[64], host[64];
  int reps = tm->reps < 64 ? tm->reps : 64;
  if (!train_steps(dev, layers ? model : r->name, layers, batch, steps, tm, wall, host, reps))
    return 0;
  set_times(r, wall, reps, steps);
  r->host_s = median(host, reps);
  return 1;
}

/* The floor under every step's host time: a one-node graph (relu of one
 * float) fed, run and read `steps` times per repetition, as a training loop
 * feeds, runs and reads a step. What the CNN and the MLPs add to it is
 * theirs (the batch's gather and copies); on lavapipe the rest is the
 * driver's hand-off to its own threads. */
static int bench_host_floor(kiln_device *dev, int steps, const bench_timing *tm,
                            bench_result *r) {
  memset(r, 0, sizeof *r);
  r->model = "floor";
  snprintf(r->name, sizeof r->name, "host floor");
  snprintf(r->shape, sizeof r->shape, "relu of 1 float: set_input, run, get_output");
  r->kind = "host";
  r->work = 1;
  int ok = 0;
  kiln_graph *g = NULL;
  kiln_compiled *c = NULL;
  int64_t one[1] = {1};
  kiln_node *x = NULL, *y = NULL;
  if (kiln_graph_create(&g) != KILN_OK) goto done;
  x = kiln_input(g, "x", KILN_F32, 1, one);
  y = kiln_relu(g, x);
  if (!y || kiln_graph_output(g, y) != KILN_OK || kiln_graph_compile(g, dev, &c) != KILN_OK)
    goto done;
  double wall[64], host[64];
  int reps = tm->reps < 64 ? tm->reps : 64;
  for (int k = -1; k < reps; k++) {             /* k = -1: warm-up */
    double t0 = now_s(), c0 = thread_cpu_s();
    for (int i = 0; i < steps; i++) {
      float v = (float)(i % 3) - 1.0f, out;
      if (kiln_compiled_set_input(c, x, &v, sizeof v) != KILN_OK ||
          kiln_compiled_run(c) != KILN_OK ||
          kiln_compiled_get_output(c, y, &out, sizeof out) != KILN_OK)
        goto done;
      if (out != (v > 0 ? v : 0.0f)) {
        fprintf(stderr, "kiln bench: host floor: relu(%g) came back as %g\n", (double)v,
                (double)out);
        kiln_compiled_destroy(c);
        kiln_graph_destroy(g);
        return 0;
      }
    }
    if (k < 0) continue;
    host[k] = (thread_cpu_s() - c0) / steps;
    wall[k] = (now_s() - t0) / steps;
  }
  set_times(r, wall, reps, steps);
  r->host_s = median(host, reps);
  ok = 1;
done:
  if (!ok) {
    const char *why = g && kiln_graph_status(g) != KILN_OK ? kiln_graph_error(g) : kiln_last_error();
    fprintf(stderr, "kiln bench: %s: %s\n", r->name, why);
  }
  kiln_compiled_destroy(c);
  kiln_graph_destroy(g);
  return ok;
}

/* Full training steps of `kiln train char-lstm` / `char-gpt`'s default
 * model on random characters (65 of them, as tinyshakespeare): each
 * repetition runs `iters` steps back to back. The step's data is uploaded
 * and every step's loss read back, as training does: late, several after
 * one wait, where the device keeps several runs (loss_lag.h), the last one
 * before the clock stops. */
typedef struct token_bench {
  char_graph *cg;
  gpt_graph *gg;
  int32_t *x, *y;
  int64_t n;                  /* tokens per step */
} token_bench;

static kiln_status token_loss(void *tb_, int back, float *loss) {
  token_bench *tb = tb_;
  return tb->cg ? char_graph_loss(tb->cg, back, loss) : gpt_graph_loss(tb->gg, back, loss);
}

/* Runs `iters` steps; 0 on a failure or a non-finite loss. */
static int token_steps(token_bench *tb, int iters) {
  kiln_compiled *c = tb->cg ? tb->cg->c : tb->gg->c;
  kiln_node *loss_node = tb->cg ? tb->cg->loss : tb->gg->loss;
  loss_lag lag;
  loss_lag_init(&lag, kiln_compiled_output_depth(c, loss_node));
  for (int i = 0; i < iters; i++) {
    kiln_status st = tb->cg ? char_graph_submit(tb->cg, tb->x, tb->y)
                            : gpt_graph_submit(tb->gg, tb->x, tb->y);
    if (st != KILN_OK) return 0;
    int64_t its[LOSS_LAG_MAX];
    float losses[LOSS_LAG_MAX];
    int n = loss_lag_after(&lag, tb, token_loss, i + 1, i + 1 == iters, its, losses);
    if (n < 0) return 0;
    for (int j = 0; j < n; j++)
      if (!isfinite(losses[j])) return 0;
  }
  return 1;
}

static int bench_tokens(kiln_device *dev, const char *model, const bench_timing *tm,
                        bench_result *r) {
  enum { V = 65 };
  memset(r, 0, sizeof *r);
  snprintf(r->name, sizeof r->name, "%s step", model);
  r->kind = "tokens";
  r->model = model;
  int ok = 0, lstm = !strcmp(model, "char-lstm");
  uint8_t vocab[V];
  for (int i = 0; i < V; i++) vocab[i] = (uint8_t)(' ' + i);
  char_model *cm = NULL;
  gpt_model *gm = NULL;
  token_bench tb = {0};
  const char *err = NULL;
  if (lstm) {
    int B = 50, T = 50, H = 128, L = 2;
    snprintf(r->shape, sizeof r->shape, "%dx%d lstm, batch %dx%d, adam", L, H, B, T);
    char_train_opts to = {.lr = 2e-3f, .clip = 5.0f, .dropout = 0.0f, .seed = 1};
    tb.n = (int64_t)B * T;
    if (char_model_create(dev, CHAR_LSTM, V, vocab, H, L, &cm) != KILN_OK ||
        char_model_init(cm, 1) != KILN_OK || char_graph_create(cm, B, T, 1, &to, &tb.cg) != KILN_OK)
      err = char_error();
  } else {
    int B = 12, T = 64, L = 4, NH = 4, C = 128;
    snprintf(r->shape, sizeof r->shape, "%dx%d gpt, %d heads, batch %dx%d, adamw", L, C, NH, B, T);
    gpt_train_opts to = {.lr = 1e-3f, .min_lr = 1e-4f, .warmup = 100, .decay_iters = 2000,
                         .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .clip = 1.0f,
                         .dropout = 0.0f, .seed = 1};
    tb.n = (int64_t)B * T;
    if (gpt_model_create(dev, V, vocab, L, NH, C, T, &gm) != KILN_OK ||
        gpt_model_init(gm, 1) != KILN_OK || gpt_graph_create(gm, B, T, 1, 1, &to, &tb.gg) != KILN_OK)
      err = gpt_error();
  }
  r->work = (double)tb.n;
  if (err) goto fail;
  tb.x = malloc((size_t)tb.n * sizeof *tb.x);
  tb.y = malloc((size_t)tb.n * sizeof *tb.y);
  if (!tb.x || !tb.y) {
    err = "out of memory for the batch";
    goto fail;
  }
  uint32_t s = 777;
  for (int64_t i = 0; i < tb.n; i++) {
    s = s * 1664525u + 1013904223u;
    tb.x[i] = (int32_t)((s >> 24) % V);
    s = s * 1664525u + 1013904223u;
    tb.y[i] = (int32_t)((s >> 24) % V);
  }
  /* Warm up, then find how many steps fill target_s. */
  if (!token_steps(&tb, tm->warmup)) goto fail_run;
  int iters = 1;
  for (;;) {
    double t0 = now_s();
    if (!token_steps(&tb, iters)) goto fail_run;
    double dt = now_s() - t0;
    if (dt >= tm->target_s || iters >= 1 << 16) break;
    iters *= 2;
  }
  double times[64];
  int reps = tm->reps < 64 ? tm->reps : 64;
  for (int k = 0; k < reps; k++) {
    double t0 = now_s();
    if (!token_steps(&tb, iters)) goto fail_run;
    times[k] = (now_s() - t0) / iters;
  }
  set_times(r, times, reps, iters);
  ok = 1;
  goto done;
fail_run:
  err = lstm ? char_error() : gpt_error();
  if (!err || !*err) err = "a step gave a non-finite loss";
fail:
  fprintf(stderr, "kiln bench: %s step: %s\n", model, err);
done:
  char_graph_destroy(tb.cg);
  gpt_graph_destroy(tb.gg);
  char_model_destroy(cm);
  gpt_model_destroy(gm);
  free(tb.x);
  free(tb.y);
  return ok;
}

static double rate_of(const bench_result *r) {
  if (!strcmp(r->kind, "host")) return r->host_s * 1e6;
  if (!(r->seconds > 0)) return 0;
  return !strcmp(r->kind, "train") || !strcmp(r->kind, "tokens") ? r->work / r->seconds
                                                                  : r->work / r->seconds * 1e-9;
}

static const char *rate_unit(const bench_result *r) {
  return !strcmp(r->kind, "train")    ? "images/s"
         : !strcmp(r->kind, "tokens") ? "tokens/s"
         : !strcmp(r->kind, "host")   ? "us cpu"
                                      : "GFLOP/s";
}

static void print_row(const bench_result *r) {
  const char *unit = rate_unit(r);
  double spread = r->seconds > 0 ? (r->max_s - r->min_s) / r->seconds * 100.0 : 0;
  printf("%-18s %-40s %10.3f ms %10.1f %-8s  +-%.0f%%  (%d x %d)\n", r->name, r->shape,
         r->seconds * 1e3, rate_of(r), unit, spread / 2, r->reps, r->iters);
  fflush(stdout);
}

/* Writes s as a JSON string (quotes, escapes). */
static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20)
      fprintf(f, "\\u%04x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

static int write_json(const char *path, const bench_opts *o, const char *backend,
                      const char *device, int threads, const bench_result *res, int n) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "kiln bench: cannot write %s: %s\n", path, strerror(errno));
    return 0;
  }
  fprintf(f, "{\n  \"kiln_version\": ");
  json_str(f, kiln_version_string());
  fprintf(f, ",\n  \"backend\": ");
  json_str(f, backend);
  fprintf(f, ",\n  \"device\": ");
  json_str(f, device);
  fprintf(f, ",\n  \"threads\": %d,\n  \"quick\": %s,\n  \"cases\": [\n", threads,
          o->quick ? "true" : "false");
  for (int i = 0; i < n; i++) {
    const bench_result *r = &res[i];
    fprintf(f, "    {\"name\": ");
    json_str(f, r->name);
    fprintf(f, ", \"kind\": \"%s\", ", r->kind);
    if (!strcmp(r->kind, "sgemm")) fprintf(f, "\"n\": %d, ", r->n);
    if (!strcmp(r->kind, "conv")) fprintf(f, "\"layer\": \"%s\", \"pass\": \"%s\", ", r->layer, r->pass);
    if (!strcmp(r->kind, "train")) fprintf(f, "\"batch\": %.0f, ", r->work);
    if (!strcmp(r->kind, "tokens")) fprintf(f, "\"model\": \"%s\", \"tokens\": %.0f, ", r->model, r->work);
    if (!strcmp(r->kind, "host"))
      fprintf(f, "\"model\": \"%s\", \"batch\": %.0f, \"host_seconds\": %.9g, ", r->model, r->work,
              r->host_s);
    fprintf(f, "\"shape\": ");
    json_str(f, r->shape);
    fprintf(f, ", \"seconds\": %.9g, \"min_seconds\": %.9g, \"max_seconds\": %.9g, "
               "\"iters\": %d, \"reps\": %d, \"%s\": %.6g}%s\n",
            r->seconds, r->min_s, r->max_s, r->iters, r->reps,
            !strcmp(r->kind, "train")    ? "images_per_s"
            : !strcmp(r->kind, "tokens") ? "tokens_per_s"
            : !strcmp(r->kind, "host")   ? "host_us_per_step"
                                         : "gflops",
            rate_of(r),
            i + 1 < n ? "," : "");
  }
  fprintf(f, "  ]\n}\n");
  if (fclose(f) != 0) {
    fprintf(stderr, "kiln bench: cannot write %s: %s\n", path, strerror(errno));
    return 0;
  }
  return 1;
}

int kiln_cmd_bench(int argc, char **argv) {
  bench_opts o;
  int rc = parse_opts(argc, argv, &o);
  if (rc) return rc < 0 ? 0 : rc;

  if (o.threads > 0) {
    char buf[16];
    snprintf(buf, sizeof buf, "%d", o.threads);
    setenv("KILN_NUM_THREADS", buf, 1);
  }
  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  bench_result res[BENCH_MAX_CASES];
  int n_res = 0, failed = 0;
  rc = 1;
  if (kiln_context_create(NULL, &ctx) != KILN_OK) {
    fprintf(stderr, "kiln bench: %s\n", kiln_last_error());
    goto done;
  }
  if (kiln_device_open(ctx, o.backend, o.device, &dev) != KILN_OK) {
    fprintf(stderr, "kiln bench: cannot open device (backend %s, device %d): %s\n", o.backend,
            o.device, kiln_last_error());
    fprintf(stderr, "kiln bench: `kiln info` lists the plugins and devices found\n");
    goto done;
  }
  kiln_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  if (kiln_device_get_info(dev, &info) != KILN_OK) snprintf(info.name, sizeof info.name, "?");
  const char *backend = kiln_plugin_name(kiln_device_plugin(dev));
  const char *env = getenv("KILN_NUM_THREADS");
  int threads = env ? atoi(env) : 0;

  bench_timing tm = o.quick ? (bench_timing){.target_s = 0.05, .reps = 3, .warmup = 1}
                            : (bench_timing){.target_s = 0.2, .reps = 7, .warmup = 2};
  printf("kiln %s bench: backend %s, device \"%s\", threads %s%s%s\n", kiln_version_string(),
         backend, info.name, env ? env : "default", o.quick ? ", quick" : "",
         o.json ? "" : "");
  printf("%-18s %-40s %13s %10s %-8s  %s\n", "case", "shape", "median", "rate", "",
         "spread (reps x iters)");

  static const int sizes[] = {256, 512, 1024, 2048};
  int n_sizes = !(o.cases & BENCH_SGEMM) ? 0 : o.quick ? 3 : 4;
  for (int i = 0; i < n_sizes; i++) {
    if (bench_sgemm(dev, sizes[i], &tm, &res[n_res]))
      print_row(&res[n_res++]);
    else
      failed++;
  }
  for (size_t l = 0; (o.cases & BENCH_CONV) && l < sizeof cnn_convs / sizeof cnn_convs[0]; l++)
    for (int p = 0; p < 3; p++) {
      if (bench_conv(dev, &cnn_convs[l], p, 64, &tm, &res[n_res]))
        print_row(&res[n_res++]);
      else
        failed++;
    }
  if (o.cases & BENCH_CNN) {
    if (bench_train(dev, 64, o.quick ? 4 : 10, &tm, &res[n_res]))
      print_row(&res[n_res++]);
    else
      failed++;
  }
  static const char *const token_models[] = {"char-lstm", "char-gpt"};
  for (int k = 0; k < 2; k++) {
    if (!(o.cases & (k ? BENCH_GPT : BENCH_LSTM))) continue;
    if (bench_tokens(dev, token_models[k], &tm, &res[n_res]))
      print_row(&res[n_res++]);
    else
      failed++;
  }
  /* The host's share of a step: the floor, the CNN, then an MLP and one
   * with 10x the layers (21 and 201 graph nodes). */
  if (o.cases & BENCH_HOST) {
    if (bench_host_floor(dev, o.quick ? 50 : 200, &tm, &res[n_res]))
      print_row(&res[n_res++]);
    else
      failed++;
  }
  static const struct { const char *model; int layers; } host_models[] = {
      {"mnist-cnn", 0}, {"mlp-2", 2}, {"mlp-20", 20}};
  for (int k = 0; (o.cases & BENCH_HOST) && k < 3; k++) {
    int layers = host_models[k].layers;
    int steps = layers ? (o.quick ? 16 : 50) : (o.quick ? 4 : 10);
    if (bench_host(dev, host_models[k].model, layers, 64, steps, &tm, &res[n_res]))
      print_row(&res[n_res++]);
    else
      failed++;
  }

  rc = failed ? 1 : 0;
  if (o.json && !write_json(o.json, &o, backend, info.name, threads, res, n_res)) rc = 1;
  if (failed) fprintf(stderr, "kiln bench: %d case(s) failed\n", failed);

done:
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return rc;
}
