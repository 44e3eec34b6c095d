/*
 * nn_trainer.c - kiln/nn.h's trainer: the compiled training-step and
 * evaluation graphs, optimizer state, the shuffled epoch loop and
 * evaluation.
 *
 * Graphs (N = batch size, or the size of the final partial batch):
 *   training:   x [N, in...], labels [N] -> logits [N, classes]
 *               -> loss = cross_entropy(logits, labels)      (output)
 *               -> backward -> step = increment(step, 1)
 *               -> per parameter: adam/sgd update in place
 *   evaluation: x, labels -> logits (output), loss (output)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nn-impl.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

const char *kiln__nn_state1_suffix(const kiln_trainer *t) {
  if (!t->has_optim) return NULL;
  if (t->opt.kind == KILN_OPTIM_SGD) return t->opt.momentum != 0 ? "momentum_buffer" : NULL;
  return "exp_avg";
}

const char *kiln__nn_state2_suffix(const kiln_trainer *t) {
  if (!t->has_optim || t->opt.kind == KILN_OPTIM_SGD) return NULL;
  return "exp_avg_sq";
}

static void graph_free(nn_graph *ng) {
  kiln_compiled_destroy(ng->c);
  kiln_graph_destroy(ng->g);
  memset(ng, 0, sizeof *ng);
}

/* How many of ng's runs may be in flight: its outputs' depth, at most
 * NN_FLY (1: read each run at once). */
static int fly_depth(const nn_graph *ng) {
  int d = kiln_compiled_output_depth(ng->c, ng->loss);
  int dl = kiln_compiled_output_depth(ng->c, ng->logits);
  if (dl < d) d = dl;
  return d < NN_FLY ? d : NN_FLY;
}

/* Builds and compiles the training (train = 1) or evaluation graph for
 * `batch` samples into ng: its input x f32, or (u8) bytes that the graph
 * scales by xscale (KILN_OP_CAST) into the model's f32 input. */
static kiln_status graph_build(kiln_trainer *t, int train, int batch, int u8, float xscale,
                               nn_graph *ng) {
  kiln_model *m = t->m;
  kiln_node **params = NULL;
  graph_free(ng);
  kiln_status st = kiln_graph_create(&ng->g);
  if (st != KILN_OK) return st;
  kiln_graph *g = ng->g;
  int64_t xshape[KILN_MAX_DIMS], yshape[1] = {batch};
  xshape[0] = batch;
  memcpy(xshape + 1, m->in_shape, (size_t)m->in_ndim * sizeof *xshape);
  params = kiln__calloc(m->n_params ? m->n_params : 1, sizeof *params);
  if (!params) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  ng->x = kiln_input(g, "x", u8 ? KILN_U8 : KILN_F32, m->in_ndim + 1, xshape);
  ng->y = kiln_input(g, "labels", KILN_I32, 1, yshape);
  kiln_node *xf = u8 ? kiln_cast(g, ng->x, xscale, 0.0f) : ng->x;
  ng->logits = kiln_model_forward(m, g, xf, 0, params);
  ng->loss = kiln_cross_entropy(g, ng->logits, ng->y);
  if (kiln_graph_status(g) != KILN_OK) goto graph_error;
  if ((st = kiln_graph_output(g, ng->loss)) != KILN_OK) goto fail;
  if ((st = kiln_graph_output(g, ng->logits)) != KILN_OK) goto fail;
  if (train) {
    if ((st = kiln_graph_backward(g, ng->loss)) != KILN_OK) goto fail;
    const kiln_optimizer_config *o = &t->opt;
    kiln_node *step = NULL;
    if (o->kind != KILN_OPTIM_SGD)
      step = kiln_increment(g, kiln_state(g, "optimizer.step", t->step_t), 1.0f);
    kiln_adam_options ao = {o->lr, o->beta1, o->beta2, o->eps, o->weight_decay,
                            o->kind == KILN_OPTIM_ADAMW};
    for (size_t i = 0; i < m->n_params; i++) {
      kiln_node *grad = kiln_grad(g, params[i]);
      if (!grad) continue; /* the loss does not depend on it */
      char n1[160], n2[160];
      const char *s1 = kiln__nn_state1_suffix(t), *s2 = kiln__nn_state2_suffix(t);
      snprintf(n1, sizeof n1, "optimizer.%s.%s", m->params[i].name, s1 ? s1 : "-");
      snprintf(n2, sizeof n2, "optimizer.%s.%s", m->params[i].name, s2 ? s2 : "-");
      if (o->kind == KILN_OPTIM_SGD) {
        kiln_node *vel = t->state1[i] ? kiln_state(g, n1, t->state1[i]) : NULL;
        kiln_sgd_update(g, params[i], grad, vel, o->lr, o->momentum, o->weight_decay,
                        o->nesterov);
      } else {
        kiln_adam_update(g, params[i], grad, kiln_state(g, n1, t->state1[i]),
                         kiln_state(g, n2, t->state2[i]), step, NULL, &ao);
      }
    }
  }
  if (kiln_graph_status(g) != KILN_OK) goto graph_error;
  if ((st = kiln_graph_compile(g, m->dev, &ng->c)) != KILN_OK) goto fail;
  ng->depth = fly_depth(ng);
  ng->batch = batch;
  ng->u8 = u8;
  ng->xscale = xscale;
  free(params);
  return KILN_OK;
graph_error:
  st = kiln__error(kiln_graph_status(g), "model '%s': building the %s graph for batch %d: %s",
                   m->name, train ? "training" : "evaluation", batch, kiln_graph_error(g));
fail:
  free(params);
  graph_free(ng);
  return st;
}

kiln_status kiln_trainer_create(kiln_model *m, const kiln_optimizer_config *optim, int batch,
                                uint64_t seed, kiln_trainer **out) {
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_create: out is NULL");
  *out = NULL;
  if (!m) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_create: model is NULL");
  if (batch < 1)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_create(%s): batch %d must be >= 1",
                       m->name, batch);
  if (m->n_layers == 0 || m->out_ndim != 1)
    return kiln__error(KILN_SHAPE_MISMATCH,
                       "kiln_trainer_create(%s): a classifier must end with a vector of class "
                       "scores per sample (e.g. a dense layer)", m->name);
  if (optim) {
    if (optim->struct_size < sizeof *optim)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "kiln_trainer_create: optimizer struct_size %u, expected %zu (use "
                         "kiln_optimizer_defaults)", optim->struct_size, sizeof *optim);
    if (strcmp(kiln_optimizer_name(optim->kind), "unknown") == 0 || !(optim->lr > 0) ||
        !isfinite(optim->lr))
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "kiln_trainer_create: optimizer %d with lr %g: unknown optimizer or lr "
                         "not > 0", (int)optim->kind, (double)optim->lr);
  }
  kiln_status st = KILN_OUT_OF_MEMORY;
  kiln_trainer *t = kiln__calloc(1, sizeof *t);
  if (!t) return st;
  t->m = m;
  m->n_trainers++;
  t->batch = batch;
  t->seed = seed;
  t->in_numel = kiln__numel(m->in_ndim, m->in_shape);
  t->classes = m->out_shape[0];
  t->xbuf = kiln__malloc((size_t)batch * (size_t)t->in_numel * sizeof *t->xbuf);
  /* u8 datasets go up as bytes where the device casts them itself (a
   * quarter of the upload, no conversion pass on the host);
   * KILN_U8_UPLOAD=0 keeps the host's conversion (A/B benchmarks). */
  const char *u8_env = getenv("KILN_U8_UPLOAD");
  t->cast_ok = kiln_plugin_op_support(m->dev->plugin, m->dev->index, KILN_OP_CAST, KILN_F32) &&
               !(u8_env && strcmp(u8_env, "0") == 0);
  t->ybuf = kiln__malloc((size_t)batch * sizeof *t->ybuf);
  int fly_ok = 1;
  for (int i = 0; i < NN_FLY; i++)
    fly_ok &= (t->yfly[i] = kiln__malloc((size_t)batch * sizeof *t->yfly[i])) != NULL;
  t->lbuf = kiln__malloc((size_t)batch * (size_t)t->classes * sizeof *t->lbuf);
  t->state1 = kiln__calloc(m->n_params ? m->n_params : 1, sizeof *t->state1);
  t->state2 = kiln__calloc(m->n_params ? m->n_params : 1, sizeof *t->state2);
  if (!t->xbuf || !t->ybuf || !fly_ok || !t->lbuf || !t->state1 || !t->state2) goto fail;
  if (optim) {
    t->has_optim = 1;
    t->opt = *optim;
    t->opt.struct_size = sizeof t->opt;
    int two = kiln__nn_state2_suffix(t) != NULL, one = kiln__nn_state1_suffix(t) != NULL;
    for (size_t i = 0; i < m->n_params; i++) {
      int64_t shape[KILN_MAX_DIMS];
      int nd = kiln_tensor_shape(m->params[i].t, shape);
      if (one && (st = kiln_tensor_create(m->dev, KILN_F32, nd, shape, &t->state1[i])) != KILN_OK)
        goto fail;
      if (two && (st = kiln_tensor_create(m->dev, KILN_F32, nd, shape, &t->state2[i])) != KILN_OK)
        goto fail;
    }
    if ((st = kiln_tensor_create(m->dev, KILN_F32, 0, NULL, &t->step_t)) != KILN_OK) goto fail;
    if ((st = graph_build(t, 1, batch, 0, 1.0f, &t->train_full)) != KILN_OK) goto fail;
  }
  *out = t;
  return KILN_OK;
fail:
  kiln_trainer_destroy(t);
  return st;
}

void kiln_trainer_destroy(kiln_trainer *t) {
  if (!t) return;
  graph_free(&t->train_full);
  graph_free(&t->train_tail);
  graph_free(&t->eval_full);
  graph_free(&t->eval_tail);
  for (size_t i = 0; t->state1 && i < t->m->n_params; i++) {
    kiln_tensor_destroy(t->state1[i]);
    kiln_tensor_destroy(t->state2[i]);
  }
  kiln_tensor_destroy(t->step_t);
  free(t->state1);
  free(t->state2);
  free(t->xbuf);
  free(t->ybuf);
  for (int i = 0; i < NN_FLY; i++) free(t->yfly[i]);
  free(t->lbuf);
  t->m->n_trainers--;
  free(t);
}

int64_t kiln_trainer_epoch(const kiln_trainer *t) { return t ? t->epoch : 0; }
int64_t kiln_trainer_step(const kiln_trainer *t) { return t ? t->step : 0; }
int kiln_trainer_batch(const kiln_trainer *t) { return t ? t->batch : 0; }
uint64_t kiln_trainer_seed(const kiln_trainer *t) { return t ? t->seed : 0; }

/* Checks ds against the model: exactly one source of inputs and of labels,
 * labels in [0, classes). */
static kiln_status check_dataset(const kiln_trainer *t, const kiln_dataset *ds, int need_labels,
                                 const char *what) {
  if (!ds) return kiln__error(KILN_INVALID_ARGUMENT, "%s: dataset is NULL", what);
  if (ds->n < 1)
    return kiln__error(KILN_INVALID_ARGUMENT, "%s: dataset has %lld samples", what,
                       (long long)ds->n);
  if (!ds->x_f32 == !ds->x_u8)
    return kiln__error(KILN_INVALID_ARGUMENT, "%s: set exactly one of x_f32 and x_u8", what);
  if (ds->y_i32 && ds->y_u8)
    return kiln__error(KILN_INVALID_ARGUMENT, "%s: set only one of y_i32 and y_u8", what);
  if (need_labels && !ds->y_i32 && !ds->y_u8)
    return kiln__error(KILN_INVALID_ARGUMENT, "%s: the dataset has no labels (y_i32 or y_u8)", what);
  for (int64_t i = 0; (ds->y_i32 || ds->y_u8) && i < ds->n; i++) {
    int64_t y = ds->y_i32 ? ds->y_i32[i] : ds->y_u8[i];
    if (y < 0 || y >= t->classes)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "%s: label %lld of sample %lld is outside [0, %lld) for model '%s'", what,
                         (long long)y, (long long)i, (long long)t->classes, t->m->name);
  }
  return KILN_OK;
}

/* Copies samples rows[0..count) (or first..first+count if rows is NULL)
 * into xbuf/ybuf, for graph ng: bytes as they are for a u8 graph, else
 * f32. */
static void gather(kiln_trainer *t, const nn_graph *ng, const kiln_dataset *ds,
                   const int64_t *rows, int64_t first, int count) {
  int64_t D = t->in_numel;
  for (int b = 0; b < count; b++) {
    int64_t r = rows ? rows[b] : first + b;
    float *dst = t->xbuf + (int64_t)b * D;
    if (ng->u8) {
      memcpy((uint8_t *)t->xbuf + (int64_t)b * D, ds->x_u8 + r * D, (size_t)D);
    } else if (ds->x_f32) {
      memcpy(dst, ds->x_f32 + r * D, (size_t)D * sizeof *dst);
    } else {
      const uint8_t *src = ds->x_u8 + r * D;
      for (int64_t j = 0; j < D; j++) dst[j] = (float)src[j] * ds->x_scale;
    }
    t->ybuf[b] = ds->y_i32 ? ds->y_i32[r] : ds->y_u8 ? (int32_t)ds->y_u8[r] : 0;
  }
}

/* Batches in flight. Where the device keeps the last runs of the loss and
 * logits (kiln_compiled_output_depth D >= 2: Vulkan), batches are submitted
 * ahead of reading them, so the device always has the next step queued
 * while the host reads the last ones and gathers the next: no stall between
 * steps. Once D are unread, all but the newest are read together after
 * one wait for the newest of them: one wait covers D - 1 steps (a wait
 * costs the host a sleep and a wake-up, more than the rest of a step on a
 * fast device). Elsewhere (the
 * CPU plugin, whose runs finish before they return) each batch is read
 * right after its run. Results and their order are the same either way. */
typedef struct pending {
  nn_graph *ng;                /* NULL: nothing in flight */
  int count;
  int64_t first;               /* its first sample (for logits) */
  int64_t run;                 /* its run of ng (ng->runs before the submit) */
} pending;

/* How many runs of its graph came after batch q's. */
static int runs_back(const pending *q) { return (int)(q->ng->runs - 1 - q->run); }

typedef struct flight {
  pending q[NN_FLY];           /* a ring, oldest at head; q[i]'s labels: t->yfly[i] */
  int head, n;
} flight;

/* Uploads the gathered batch of `count` (xbuf, ybuf) and starts ng on it. */
static kiln_status submit_batch(kiln_trainer *t, nn_graph *ng, int count) {
  size_t xbytes = (size_t)count * (size_t)t->in_numel * (ng->u8 ? 1 : sizeof(float));
  kiln_status st = kiln_compiled_set_input(ng->c, ng->x, t->xbuf, xbytes);
  if (st == KILN_OK) st = kiln_compiled_set_input(ng->c, ng->y, t->ybuf, (size_t)count * 4);
  if (st == KILN_OK) st = kiln_compiled_run(ng->c);
  if (st == KILN_OK) ng->runs++;
  return st;
}

/* Reads the outputs of the run `back` runs before ng's latest, a batch of
 * `count` with `labels`; adds its summed loss and its correct predictions.
 * With logits non-NULL the logits are copied there. */
static kiln_status collect_batch(kiln_trainer *t, nn_graph *ng, int count, int back,
                                 const int32_t *labels, double *loss_sum, int64_t *correct,
                                 float *logits) {
  size_t lbytes = (size_t)count * (size_t)t->classes * sizeof(float);
  float loss = 0;
  kiln_status st = kiln_compiled_get_output_back(ng->c, ng->loss, back, &loss, sizeof loss);
  if (st == KILN_OK) st = kiln_compiled_get_output_back(ng->c, ng->logits, back, t->lbuf, lbytes);
  if (st != KILN_OK) return st;
  *loss_sum += (double)loss * count;
  for (int b = 0; b < count; b++) {
    const float *row = t->lbuf + (int64_t)b * t->classes;
    int64_t best = 0;
    for (int64_t c = 1; c < t->classes; c++)
      if (row[c] > row[best]) best = c;
    *correct += best == labels[b];
  }
  if (logits) memcpy(logits, t->lbuf, lbytes);
  return KILN_OK;
}

/* Totals over the batches read so far. */
typedef struct tally {
  double loss_sum;
  int64_t correct, batches, samples;
} tally;

/* Reads batch `q` with `labels` into *acc (and its logits into logits +
 * its first sample, if given). */
static kiln_status read_batch(kiln_trainer *t, const pending *q, const int32_t *labels,
                              tally *acc, float *logits) {
  kiln_status st = collect_batch(t, q->ng, q->count, runs_back(q), labels, &acc->loss_sum,
                                 &acc->correct, logits ? logits + q->first * t->classes : NULL);
  if (st != KILN_OK) return st;
  acc->batches++;
  acc->samples += q->count;
  return KILN_OK;
}

/* Reads the oldest `k` batches in flight, oldest first, after waiting for
 * the newest of them: the others are done by then (a queue runs in order),
 * so the k reads cost one wait. `seen` is called after each. */
typedef void (*seen_fn)(const tally *acc, void *ctx);
static kiln_status read_oldest(kiln_trainer *t, flight *fl, int k, tally *acc, float *logits,
                               seen_fn seen, void *ctx) {
  if (k > 1) {
    const pending *last = &fl->q[(fl->head + k - 1) % NN_FLY];
    float loss;
    kiln_status st = kiln_compiled_get_output_back(last->ng->c, last->ng->loss, runs_back(last),
                                                   &loss, sizeof loss);
    if (st != KILN_OK) return st;
  }
  for (int i = 0; i < k; i++) {
    kiln_status st = read_batch(t, &fl->q[fl->head], t->yfly[fl->head], acc, logits);
    if (st != KILN_OK) return st;
    fl->q[fl->head].ng = NULL;
    fl->head = (fl->head + 1) % NN_FLY;
    fl->n--;
    if (seen) seen(acc, ctx);
  }
  return KILN_OK;
}

/* After batch `cur` was submitted (cur.ng NULL: the data is done): leaves
 * it in flight, reading older batches as the depth requires, or reads it
 * at once; with cur.ng NULL reads everything in flight. */
static kiln_status advance(kiln_trainer *t, flight *fl, pending cur, tally *acc, float *logits,
                           seen_fn seen, void *ctx) {
  if (!cur.ng) return read_oldest(t, fl, fl->n, acc, logits, seen, ctx);
  /* another graph's batches (the full one's, before the tail) go first */
  int other = 0;
  while (other < fl->n && fl->q[(fl->head + other) % NN_FLY].ng != cur.ng) other++;
  kiln_status st = read_oldest(t, fl, other, acc, logits, seen, ctx);
  if (st != KILN_OK) return st;
  int depth = cur.ng->depth;
  if (depth < 2) {
    st = read_batch(t, &cur, t->ybuf, acc, logits);
    if (st == KILN_OK && seen) seen(acc, ctx);
    return st;
  }
  int slot = (fl->head + fl->n) % NN_FLY;
  int32_t *y = t->yfly[slot];
  t->yfly[slot] = t->ybuf;                      /* cur's labels, kept until it is read */
  t->ybuf = y;
  fl->q[slot] = cur;
  fl->n++;
  /* the next run reuses the oldest one's frame: read all but the newest */
  return fl->n >= depth ? read_oldest(t, fl, fl->n - 1, acc, logits, seen, ctx) : KILN_OK;
}

/* fit_epoch's progress report after each batch read. */
typedef struct fit_ctx {
  kiln_progress p;
  kiln_progress_fn fn;
  void *user;
  int64_t step0;
  double t0;
} fit_ctx;

static void fit_seen(const tally *acc, void *ctx) {
  fit_ctx *f = ctx;
  f->p.batch = acc->batches;
  f->p.samples = acc->samples;
  f->p.step = f->step0 + acc->batches;
  f->p.loss = acc->loss_sum / (double)acc->samples;
  f->p.accuracy = (double)acc->correct / (double)acc->samples;
  f->p.seconds = now_s() - f->t0;
  f->fn(&f->p, f->user);
}

/* The graph for a batch of `count` samples of ds: the full one, or the
 * (re)built tail. A u8 dataset goes up as bytes where the device can cast
 * them (its graphs are rebuilt for that once, or when x_scale changes). */
static kiln_status graph_for(kiln_trainer *t, int train, int count, const kiln_dataset *ds,
                             nn_graph **out) {
  nn_graph *full = train ? &t->train_full : &t->eval_full;
  nn_graph *tail = train ? &t->train_tail : &t->eval_tail;
  nn_graph *ng = count == t->batch ? full : tail;
  int u8 = ds->x_u8 != NULL && t->cast_ok;
  float xscale = u8 ? ds->x_scale : 1.0f;
  if (ng->batch != count || ng->u8 != u8 || ng->xscale != xscale) {
    kiln_status st = graph_build(t, train, count, u8, xscale, ng);
    if (st != KILN_OK) return st;
  }
  *out = ng;
  return KILN_OK;
}

kiln_status kiln_trainer_fit_epoch(kiln_trainer *t, const kiln_dataset *ds,
                                   kiln_progress_fn progress, void *user,
                                   kiln_epoch_stats *stats) {
  if (!t) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_fit_epoch: trainer is NULL");
  if (!t->has_optim)
    return kiln__error(KILN_INVALID_STATE,
                       "kiln_trainer_fit_epoch(%s): this trainer was created for evaluation only "
                       "(no optimizer)", t->m->name);
  kiln_status st = check_dataset(t, ds, 1, "kiln_trainer_fit_epoch");
  if (st != KILN_OK) return st;
  int64_t n = ds->n;
  int64_t *perm = kiln__malloc((size_t)n * sizeof *perm);
  if (!perm) return KILN_OUT_OF_MEMORY;
  /* Fisher-Yates with a stream that depends only on (seed, epoch). */
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  uint64_t s = mix64(t->seed ^ 0x5851F42D4C957F2Dull) ^ mix64((uint64_t)t->epoch + 0x14057B7EF767814Full);
  for (int64_t i = n - 1; i > 0; i--) {
    s += 0x9E3779B97F4A7C15ull;
    uint64_t r = mix64(s);
    int64_t j = (int64_t)(r % (uint64_t)(i + 1));
    int64_t tmp = perm[i];
    perm[i] = perm[j];
    perm[j] = tmp;
  }
  int64_t done = 0;
  int64_t n_batches = (n + t->batch - 1) / t->batch;
  fit_ctx fc;
  memset(&fc, 0, sizeof fc);
  fc.fn = progress;
  fc.user = user;
  fc.step0 = t->step;
  fc.t0 = now_s();
  fc.p.epoch = t->epoch;
  fc.p.n_batches = n_batches;
  fc.p.n_samples = n;
  tally acc = {0};
  flight fly = {0};
  for (int64_t b = 0; b <= n_batches; b++) {   /* b == n_batches: drain */
    pending cur = {0};
    if (b < n_batches) {
      int count = (int)(n - done < t->batch ? n - done : t->batch);
      nn_graph *ng;
      st = graph_for(t, 1, count, ds, &ng);
      if (st != KILN_OK) goto fail;
      gather(t, ng, ds, perm + done, 0, count);
      int64_t run = ng->runs;
      st = submit_batch(t, ng, count);
      if (st != KILN_OK) goto fail;
      t->step++;
      cur = (pending){ng, count, done, run};
      done += count;
    }
    st = advance(t, &fly, cur, &acc, NULL, progress ? fit_seen : NULL, &fc);
    if (st != KILN_OK) goto fail;
  }
  t->epoch++;
  if (stats) {
    stats->loss = acc.loss_sum / (double)n;
    stats->accuracy = (double)acc.correct / (double)n;
    stats->samples = n;
    stats->seconds = now_s() - fc.t0;
  }
  free(perm);
  return KILN_OK;
fail:
  free(perm);
  return st;
}

/* Forward passes over ds in order; fills stats and optionally logits. */
static kiln_status forward_all(kiln_trainer *t, const kiln_dataset *ds, kiln_epoch_stats *stats,
                               float *logits, const char *what) {
  kiln_status st = check_dataset(t, ds, stats != NULL, what);
  if (st != KILN_OK) return st;
  double t0 = now_s();
  tally acc = {0};
  flight fly = {0};
  for (int64_t done = 0;;) {
    pending cur = {0};
    if (done < ds->n) {
      int count = (int)(ds->n - done < t->batch ? ds->n - done : t->batch);
      nn_graph *ng;
      if ((st = graph_for(t, 0, count, ds, &ng)) != KILN_OK) return st;
      gather(t, ng, ds, NULL, done, count);
      int64_t run = ng->runs;
      if ((st = submit_batch(t, ng, count)) != KILN_OK) return st;
      cur = (pending){ng, count, done, run};
      done += count;
    }
    if ((st = advance(t, &fly, cur, &acc, logits, NULL, NULL)) != KILN_OK) return st;
    if (!cur.ng) break;
  }
  if (stats) {
    stats->loss = acc.loss_sum / (double)ds->n;
    stats->accuracy = (double)acc.correct / (double)ds->n;
    stats->samples = ds->n;
    stats->seconds = now_s() - t0;
  }
  return KILN_OK;
}

kiln_status kiln_trainer_evaluate(kiln_trainer *t, const kiln_dataset *ds,
                                  kiln_epoch_stats *stats) {
  if (!t) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_evaluate: trainer is NULL");
  return forward_all(t, ds, stats, NULL, "kiln_trainer_evaluate");
}

kiln_status kiln_trainer_predict(kiln_trainer *t, const kiln_dataset *ds, float *out,
                                 size_t out_count) {
  if (!t || !ds || !out)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_predict: NULL argument");
  if ((uint64_t)out_count != (uint64_t)ds->n * (uint64_t)t->classes)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_trainer_predict(%s): out holds %zu floats, %lld samples x %lld "
                       "classes need %lld", t->m->name, out_count, (long long)ds->n,
                       (long long)t->classes, (long long)(ds->n * t->classes));
  return forward_all(t, ds, NULL, out, "kiln_trainer_predict");
}
