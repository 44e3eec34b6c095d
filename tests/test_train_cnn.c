/*
 * test_train_cnn.c - the layer API (kiln/nn.h) on the reference MNIST CNN:
 * learning on a subset, checkpoints (round trip, exact resume, refusals),
 * determinism, and `kiln train` / `kiln eval` as subprocesses.
 *
 * Data: KILN_TEST_DATA/mnist. CPU backend.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/data.h"
#include "kiln/kiln.h"
#include "kiln/nn.h"
#include "testutil.h"

#define OK(call) cr_assert_eq((call), KILN_OK, "%s: %s", #call, kiln_last_error())

typedef struct fixture {
  kiln_context *ctx;
  kiln_device *dev;
  kiln_mnist train, test;
  char dir[256];          /* a fresh temporary directory */
} fixture;

static void fx_open(fixture *f, int64_t n_train, int64_t n_test) {
  memset(f, 0, sizeof *f);
  tu_open_cpu(&f->ctx, &f->dev);
  if (n_train) OK(kiln_mnist_load(tu_data_path("mnist"), 1, n_train, &f->train));
  if (n_test) OK(kiln_mnist_load(tu_data_path("mnist"), 0, n_test, &f->test));
  snprintf(f->dir, sizeof f->dir, "/tmp/kiln-test-train-XXXXXX");
  cr_assert_not_null(mkdtemp(f->dir));
}

static void fx_close(fixture *f) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
  kiln_mnist_free(&f->train);
  kiln_mnist_free(&f->test);
  kiln_device_close(f->dev);
  kiln_context_destroy(f->ctx);
}

static kiln_dataset dataset(const kiln_mnist *m) {
  kiln_dataset d = {.n = m->n, .x_u8 = m->images, .x_scale = 1.0f / 255, .y_u8 = m->labels};
  return d;
}

static kiln_trainer *make_trainer(fixture *f, uint64_t seed, kiln_model **model) {
  kiln_optimizer_config adam;
  kiln_trainer *t = NULL;
  OK(kiln_model_mnist_cnn(f->dev, seed, model));
  OK(kiln_optimizer_defaults(KILN_OPTIM_ADAM, &adam));
  OK(kiln_trainer_create(*model, &adam, 64, seed, &t));
  return t;
}

/* Downloads every parameter of m, concatenated, into a malloc'd buffer. */
static float *params_of(const kiln_model *m, int64_t *count) {
  int64_t n = kiln_model_numel(m), off = 0;
  float *buf = malloc((size_t)n * sizeof *buf);
  cr_assert_not_null(buf);
  for (size_t i = 0; i < kiln_model_param_count(m); i++) {
    kiln_tensor *t;
    OK(kiln_model_param(m, i, NULL, &t));
    OK(kiln_tensor_download(t, buf + off, kiln_tensor_nbytes(t)));
    off += kiln_tensor_numel(t);
  }
  cr_assert_eq(off, n);
  *count = n;
  return buf;
}

static void assert_same_params(const kiln_model *a, const kiln_model *b, const char *what) {
  int64_t na, nb;
  float *pa = params_of(a, &na), *pb = params_of(b, &nb);
  cr_assert_eq(na, nb);
  int64_t first = -1;
  for (int64_t i = 0; i < na && first < 0; i++)
    if (memcmp(&pa[i], &pb[i], sizeof *pa) != 0) first = i;
  cr_assert_eq(first, -1, "%s: parameters differ first at scalar %lld (%.9g vs %.9g)", what,
               (long long)first, first >= 0 ? pa[first] : 0.0, first >= 0 ? pb[first] : 0.0);
  free(pa);
  free(pb);
}

/* ---- the model itself ------------------------------------------------------ */

Test(nn_model, mnist_cnn_layout_and_init) {
  fixture f;
  fx_open(&f, 0, 0);
  kiln_model *m;
  OK(kiln_model_mnist_cnn(f.dev, 7, &m));
  cr_assert_eq(kiln_model_numel(m), 93322);
  static const struct { const char *name; int ndim; int64_t shape[4]; } want[] = {
      {"conv1.weight", 4, {32, 1, 3, 3}}, {"conv1.bias", 1, {32}},
      {"conv2.weight", 4, {64, 32, 3, 3}}, {"conv2.bias", 1, {64}},
      {"conv3.weight", 4, {64, 64, 3, 3}}, {"conv3.bias", 1, {64}},
      {"fc1.weight", 2, {64, 576}}, {"fc1.bias", 1, {64}},
      {"fc2.weight", 2, {10, 64}}, {"fc2.bias", 1, {10}}};
  cr_assert_eq(kiln_model_param_count(m), 10);
  for (size_t i = 0; i < 10; i++) {
    const char *name;
    kiln_tensor *t;
    int64_t shape[KILN_MAX_DIMS];
    OK(kiln_model_param(m, i, &name, &t));
    cr_assert_str_eq(name, want[i].name);
    cr_assert_eq(kiln_tensor_shape(t, shape), want[i].ndim, "%s rank", name);
    cr_assert_arr_eq(shape, want[i].shape, (size_t)want[i].ndim * sizeof(int64_t), "%s shape", name);
    /* Glorot uniform within its limit and not degenerate; biases zero. */
    int64_t n = kiln_tensor_numel(t);
    float *v = malloc((size_t)n * sizeof *v);
    OK(kiln_tensor_download(t, v, kiln_tensor_nbytes(t)));
    if (want[i].ndim == 1) {
      for (int64_t j = 0; j < n; j++) cr_assert_eq(v[j], 0.0f, "%s[%lld]", name, (long long)j);
    } else {
      int64_t k = want[i].ndim == 4 ? want[i].shape[2] * want[i].shape[3] : 1;
      double limit = sqrt(6.0 / (double)(want[i].shape[1] * k + want[i].shape[0] * k));
      double sum2 = 0;
      for (int64_t j = 0; j < n; j++) {
        cr_assert(fabsf(v[j]) <= limit, "%s[%lld] = %g beyond %g", name, (long long)j, v[j], limit);
        sum2 += (double)v[j] * v[j];
      }
      /* Variance of U(-l, l) is l^2 / 3. */
      double var = sum2 / (double)n, expect = limit * limit / 3;
      cr_assert(fabs(var - expect) < 0.25 * expect, "%s: variance %g, expected ~%g", name, var,
                expect);
    }
    free(v);
  }
  int64_t out[KILN_MAX_DIMS];
  cr_assert_eq(kiln_model_output_shape(m, out), 1);
  cr_assert_eq(out[0], 10);
  kiln_model_destroy(m);
  fx_close(&f);
}

Test(nn_model, layer_errors_name_the_layer) {
  fixture f;
  fx_open(&f, 0, 0);
  kiln_model *m;
  const int64_t in[3] = {1, 28, 28};
  OK(kiln_model_create(f.dev, "bad", 3, in, &m));
  cr_assert_eq(kiln_model_dense(m, "fc", 10, KILN_ACT_NONE), KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "fc") && strstr(kiln_last_error(), "flatten"), "%s",
            kiln_last_error());
  cr_assert_eq(kiln_model_conv2d(m, "big", 8, 29, KILN_ACT_RELU), KILN_SHAPE_MISMATCH);
  cr_assert(strstr(kiln_last_error(), "big"), "%s", kiln_last_error());
  OK(kiln_model_flatten(m));
  OK(kiln_model_dense(m, "out", 10, KILN_ACT_SOFTMAX));
  cr_assert_eq(kiln_model_dense(m, "after", 10, KILN_ACT_NONE), KILN_INVALID_ARGUMENT,
               "a layer after the softmax must be refused");
  cr_assert_eq(kiln_model_dense(m, "out2", 0, KILN_ACT_NONE), KILN_INVALID_ARGUMENT);
  kiln_model_destroy(m);
  fx_close(&f);
}

/* ---- learning ------------------------------------------------------------- */

Test(nn_train, subset_beats_90_percent, .timeout = 900) {
  fixture f;
  fx_open(&f, 2000, 1000);
  kiln_model *m;
  kiln_trainer *t = make_trainer(&f, 1, &m);
  kiln_dataset tr = dataset(&f.train), te = dataset(&f.test);
  kiln_epoch_stats ts, es;
  double first_loss = 0;
  for (int e = 0; e < 6; e++) {
    OK(kiln_trainer_fit_epoch(t, &tr, NULL, NULL, &ts));
    if (e == 0) first_loss = ts.loss;
    cr_assert_eq(ts.samples, 2000);
  }
  OK(kiln_trainer_evaluate(t, &te, &es));
  cr_log_info("2000 images x 6 epochs: train loss %.4f (epoch 1 %.4f), test acc %.4f loss %.4f",
              ts.loss, first_loss, es.accuracy, es.loss);
  cr_assert_eq(es.samples, 1000);
  cr_assert_lt(ts.loss, first_loss, "training loss must fall");
  cr_assert_gt(es.accuracy, 0.90, "test accuracy %.4f after 6 epochs on 2000 images", es.accuracy);
  cr_assert_eq(kiln_trainer_epoch(t), 6);
  cr_assert_eq(kiln_trainer_step(t), 6 * 32); /* 31 full batches + 1 of 16 per epoch */
  kiln_trainer_destroy(t);
  kiln_model_destroy(m);
  fx_close(&f);
}

/* ---- checkpoints --------------------------------------------------------- */

Test(nn_checkpoint, round_trip_gives_identical_model) {
  fixture f;
  fx_open(&f, 300, 200);
  kiln_model *a, *b;
  kiln_trainer *ta = make_trainer(&f, 1, &a), *tb = make_trainer(&f, 2, &b);
  kiln_dataset tr = dataset(&f.train), te = dataset(&f.test);
  OK(kiln_trainer_fit_epoch(ta, &tr, NULL, NULL, NULL));
  char path[512];
  snprintf(path, sizeof path, "%s/a.safetensors", f.dir);
  OK(kiln_trainer_save(ta, path));

  char buf[256];
  OK(kiln_checkpoint_meta(path, "kiln.model", buf, sizeof buf));
  cr_assert_str_eq(buf, "mnist-cnn");
  OK(kiln_checkpoint_meta(path, "epoch", buf, sizeof buf));
  cr_assert_str_eq(buf, "1");
  OK(kiln_checkpoint_meta(path, "step", buf, sizeof buf));
  cr_assert_str_eq(buf, "5");
  OK(kiln_checkpoint_meta(path, "optimizer", buf, sizeof buf));
  cr_assert_str_eq(buf, "adam");
  OK(kiln_checkpoint_meta(path, "kiln.version", buf, sizeof buf));
  cr_assert_str_eq(buf, kiln_version_string());

  /* The file holds the PyTorch-style names and the Adam state. */
  kiln_safetensors *st;
  kiln_st_tensor e;
  OK(kiln_safetensors_open(path, &st));
  cr_assert_eq(kiln_safetensors_count(st), 10 * 3 + 1);
  OK(kiln_safetensors_find(st, "optimizer.fc1.weight.exp_avg_sq", &e));
  cr_assert_eq(e.ndim, 2);
  cr_assert_eq(e.shape[0], 64);
  cr_assert_eq(e.shape[1], 576);
  OK(kiln_safetensors_find(st, "optimizer.step", &e));
  float step;
  memcpy(&step, e.data, sizeof step);
  cr_assert_eq(step, 5.0f);
  kiln_safetensors_close(st);

  OK(kiln_trainer_load(tb, path));
  cr_assert_eq(kiln_trainer_epoch(tb), 1);
  cr_assert_eq(kiln_trainer_step(tb), 5);
  assert_same_params(a, b, "after load");

  size_t n = (size_t)te.n * 10;
  float *la = malloc(n * sizeof *la), *lb = malloc(n * sizeof *lb);
  OK(kiln_trainer_predict(ta, &te, la, n));
  OK(kiln_trainer_predict(tb, &te, lb, n));
  cr_assert_arr_eq(la, lb, n * sizeof *la, "eval outputs differ after load");
  kiln_epoch_stats ea, eb;
  OK(kiln_trainer_evaluate(ta, &te, &ea));
  OK(kiln_trainer_evaluate(tb, &te, &eb));
  cr_assert_eq(ea.accuracy, eb.accuracy);
  cr_assert_eq(ea.loss, eb.loss);

  /* The parameters alone load into an evaluation-only trainer too. */
  kiln_model *c;
  kiln_trainer *tc;
  OK(kiln_model_mnist_cnn(f.dev, 3, &c));
  OK(kiln_model_load(c, path));
  OK(kiln_trainer_create(c, NULL, 64, 0, &tc));
  float *lc = malloc(n * sizeof *lc);
  OK(kiln_trainer_predict(tc, &te, lc, n));
  cr_assert_arr_eq(la, lc, n * sizeof *la, "eval outputs differ after kiln_model_load");
  cr_assert_eq(kiln_trainer_fit_epoch(tc, &tr, NULL, NULL, NULL), KILN_INVALID_STATE);

  free(la);
  free(lb);
  free(lc);
  kiln_trainer_destroy(tc);
  kiln_model_destroy(c);
  kiln_trainer_destroy(ta);
  kiln_trainer_destroy(tb);
  kiln_model_destroy(a);
  kiln_model_destroy(b);
  fx_close(&f);
}

/* Training 2 epochs straight equals 1 epoch, save, load into a fresh model
 * and trainer, 1 more epoch: bit for bit. 500 samples leave a partial last
 * batch (7 x 64 + 52), so the tail graph is covered too. */
Test(nn_checkpoint, resume_is_bitwise_exact, .timeout = 600) {
  fixture f;
  fx_open(&f, 500, 0);
  kiln_dataset tr = dataset(&f.train);
  kiln_model *straight, *first, *second;
  kiln_trainer *ts = make_trainer(&f, 5, &straight);
  OK(kiln_trainer_fit_epoch(ts, &tr, NULL, NULL, NULL));
  OK(kiln_trainer_fit_epoch(ts, &tr, NULL, NULL, NULL));

  kiln_trainer *t1 = make_trainer(&f, 5, &first);
  OK(kiln_trainer_fit_epoch(t1, &tr, NULL, NULL, NULL));
  char path[512];
  snprintf(path, sizeof path, "%s/epoch1.safetensors", f.dir);
  OK(kiln_trainer_save(t1, path));
  kiln_trainer_destroy(t1);
  kiln_model_destroy(first);

  kiln_trainer *t2 = make_trainer(&f, 5, &second);
  OK(kiln_trainer_load(t2, path));
  cr_assert_eq(kiln_trainer_epoch(t2), 1);
  cr_assert_eq(kiln_trainer_step(t2), 8);
  OK(kiln_trainer_fit_epoch(t2, &tr, NULL, NULL, NULL));
  cr_assert_eq(kiln_trainer_step(t2), kiln_trainer_step(ts));
  assert_same_params(straight, second, "straight vs resumed");

  /* The optimizer state matches too: both checkpoints hold the same bytes
   * for every tensor. */
  char pa[512], pb[512];
  snprintf(pa, sizeof pa, "%s/straight.safetensors", f.dir);
  snprintf(pb, sizeof pb, "%s/resumed.safetensors", f.dir);
  OK(kiln_trainer_save(ts, pa));
  OK(kiln_trainer_save(t2, pb));
  kiln_safetensors *sa, *sb;
  OK(kiln_safetensors_open(pa, &sa));
  OK(kiln_safetensors_open(pb, &sb));
  cr_assert_eq(kiln_safetensors_count(sa), kiln_safetensors_count(sb));
  for (size_t i = 0; i < kiln_safetensors_count(sa); i++) {
    kiln_st_tensor ea, eb;
    OK(kiln_safetensors_get(sa, i, &ea));
    OK(kiln_safetensors_find(sb, ea.name, &eb));
    cr_assert_eq(ea.nbytes, eb.nbytes, "%s", ea.name);
    cr_assert_arr_eq(ea.data, eb.data, ea.nbytes, "%s differs", ea.name);
  }
  kiln_safetensors_close(sa);
  kiln_safetensors_close(sb);

  kiln_trainer_destroy(t2);
  kiln_model_destroy(second);
  kiln_trainer_destroy(ts);
  kiln_model_destroy(straight);
  fx_close(&f);
}

Test(nn_train, same_seed_same_result_other_seed_differs) {
  fixture f;
  fx_open(&f, 256, 0);
  kiln_dataset tr = dataset(&f.train);
  kiln_model *a, *b, *c;
  kiln_trainer *ta = make_trainer(&f, 11, &a), *tb = make_trainer(&f, 11, &b),
               *tc = make_trainer(&f, 12, &c);
  kiln_epoch_stats sa, sb;
  OK(kiln_trainer_fit_epoch(ta, &tr, NULL, NULL, &sa));
  OK(kiln_trainer_fit_epoch(tb, &tr, NULL, NULL, &sb));
  OK(kiln_trainer_fit_epoch(tc, &tr, NULL, NULL, NULL));
  cr_assert_eq(sa.loss, sb.loss);
  assert_same_params(a, b, "same seed");
  int64_t na, nc;
  float *pa = params_of(a, &na), *pc = params_of(c, &nc);
  cr_assert(memcmp(pa, pc, (size_t)na * sizeof *pa) != 0, "another seed must give another model");
  free(pa);
  free(pc);
  kiln_trainer_destroy(ta);
  kiln_trainer_destroy(tb);
  kiln_trainer_destroy(tc);
  kiln_model_destroy(a);
  kiln_model_destroy(b);
  kiln_model_destroy(c);
  fx_close(&f);
}

/* A u8 dataset goes up as bytes and is scaled on the device (KILN_OP_CAST);
 * the same images as floats (bytes * scale on the host) must train and
 * evaluate to the same bits, tail batch included, and a new x_scale must
 * be honoured (the trainer rebuilds its graphs for it). */
static float *as_floats(const kiln_mnist *m, float scale) {
  int64_t n = m->n * 28 * 28;
  float *x = malloc((size_t)n * sizeof *x);
  cr_assert_not_null(x);
  for (int64_t i = 0; i < n; i++) x[i] = (float)m->images[i] * scale;
  return x;
}

Test(nn_train, bytes_and_floats_train_alike) {
  fixture f;
  fx_open(&f, 200, 100);                        /* 200 = 3 batches of 64 and a tail of 8 */
  kiln_dataset tb = dataset(&f.train), eb = dataset(&f.test);
  float *xf = as_floats(&f.train, 1.0f / 255), *ef = as_floats(&f.test, 1.0f / 255),
        *ef2 = as_floats(&f.test, 2.0f / 255);
  kiln_dataset tf = {.n = f.train.n, .x_f32 = xf, .y_u8 = f.train.labels};
  kiln_dataset evf = {.n = f.test.n, .x_f32 = ef, .y_u8 = f.test.labels};
  kiln_model *a, *b;
  kiln_trainer *ta = make_trainer(&f, 5, &a), *tb_ = make_trainer(&f, 5, &b);
  kiln_epoch_stats sa, sb, ea, eb_;
  OK(kiln_trainer_fit_epoch(ta, &tb, NULL, NULL, &sa));
  OK(kiln_trainer_fit_epoch(tb_, &tf, NULL, NULL, &sb));
  cr_assert_eq(sa.loss, sb.loss, "bytes: loss %.9g, floats: %.9g", sa.loss, sb.loss);
  assert_same_params(a, b, "bytes vs floats");
  OK(kiln_trainer_evaluate(ta, &eb, &ea));
  OK(kiln_trainer_evaluate(tb_, &evf, &eb_));
  cr_assert_eq(ea.loss, eb_.loss, "evaluation: bytes %.9g, floats %.9g", ea.loss, eb_.loss);
  /* twice the scale: the bytes' graph must follow */
  eb.x_scale = 2.0f / 255;
  evf.x_f32 = ef2;
  OK(kiln_trainer_evaluate(ta, &eb, &ea));
  OK(kiln_trainer_evaluate(tb_, &evf, &eb_));
  cr_assert_eq(ea.loss, eb_.loss, "scale 2/255: bytes %.9g, floats %.9g", ea.loss, eb_.loss);
  kiln_trainer_destroy(ta);
  kiln_trainer_destroy(tb_);
  kiln_model_destroy(a);
  kiln_model_destroy(b);
  free(xf);
  free(ef);
  free(ef2);
  fx_close(&f);
}

/* Every optimizer trains a small MLP, and its state survives a checkpoint:
 * one epoch, save, load into a fresh trainer, one more epoch equals two
 * epochs straight. */
static kiln_trainer *make_mlp(fixture *f, const kiln_optimizer_config *o, kiln_model **m) {
  const int64_t in[3] = {1, 28, 28};
  kiln_trainer *t = NULL;
  OK(kiln_model_create(f->dev, "mnist-mlp", 3, in, m));
  OK(kiln_model_flatten(*m));
  OK(kiln_model_dense(*m, "fc1", 32, KILN_ACT_TANH));
  OK(kiln_model_dense(*m, "fc2", 10, KILN_ACT_SOFTMAX));
  OK(kiln_model_init(*m, 4));
  OK(kiln_trainer_create(*m, o, 32, 4, &t));
  return t;
}

Test(nn_train, every_optimizer_learns_and_resumes) {
  fixture f;
  fx_open(&f, 600, 0);
  kiln_dataset tr = dataset(&f.train);
  static const struct { kiln_optimizer_kind kind; float momentum; const char *state; } cases[] = {
      {KILN_OPTIM_ADAM, 0, "optimizer.fc1.weight.exp_avg_sq"},
      {KILN_OPTIM_ADAMW, 0, "optimizer.fc1.weight.exp_avg"},
      {KILN_OPTIM_SGD, 0.9f, "optimizer.fc1.weight.momentum_buffer"},
      {KILN_OPTIM_SGD, 0, NULL}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    kiln_optimizer_config o;
    OK(kiln_optimizer_defaults(cases[c].kind, &o));
    o.momentum = cases[c].momentum;
    if (cases[c].kind == KILN_OPTIM_SGD) o.lr = 0.05f;
    kiln_model *ma, *mb;
    kiln_trainer *ta = make_mlp(&f, &o, &ma), *tb = make_mlp(&f, &o, &mb);
    kiln_epoch_stats s1, s2;
    OK(kiln_trainer_fit_epoch(ta, &tr, NULL, NULL, &s1));
    char path[512];
    snprintf(path, sizeof path, "%s/opt%zu.safetensors", f.dir, c);
    OK(kiln_trainer_save(ta, path));
    OK(kiln_trainer_fit_epoch(ta, &tr, NULL, NULL, &s2));
    cr_assert_lt(s2.loss, s1.loss, "%s momentum %g: loss %g then %g",
                 kiln_optimizer_name(o.kind), (double)o.momentum, s1.loss, s2.loss);
    kiln_safetensors *st;
    kiln_st_tensor e;
    OK(kiln_safetensors_open(path, &st));
    cr_assert_eq(kiln_safetensors_count(st),
                 4 + (cases[c].state ? (cases[c].kind == KILN_OPTIM_SGD ? 4 : 8) : 0) + 1);
    if (cases[c].state) OK(kiln_safetensors_find(st, cases[c].state, &e));
    OK(kiln_safetensors_find(st, "optimizer.step", &e));
    kiln_safetensors_close(st);
    char buf[64];
    OK(kiln_checkpoint_meta(path, "optimizer", buf, sizeof buf));
    cr_assert_str_eq(buf, kiln_optimizer_name(o.kind));

    OK(kiln_trainer_load(tb, path));
    OK(kiln_trainer_fit_epoch(tb, &tr, NULL, NULL, NULL));
    assert_same_params(ma, mb, kiln_optimizer_name(o.kind));
    kiln_trainer_destroy(ta);
    kiln_trainer_destroy(tb);
    kiln_model_destroy(ma);
    kiln_model_destroy(mb);
  }
  /* An Adam checkpoint does not resume an SGD trainer. */
  kiln_optimizer_config sgd;
  OK(kiln_optimizer_defaults(KILN_OPTIM_SGD, &sgd));
  kiln_model *m;
  kiln_trainer *t = make_mlp(&f, &sgd, &m);
  char path[512];
  snprintf(path, sizeof path, "%s/opt0.safetensors", f.dir);
  cr_assert_eq(kiln_trainer_load(t, path), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "adam") && strstr(kiln_last_error(), "sgd"), "%s",
            kiln_last_error());
  kiln_trainer_destroy(t);
  kiln_model_destroy(m);
  fx_close(&f);
}

/* ---- refusals ------------------------------------------------------------- */

/* Writes a checkpoint of the CNN whose tensor `bad` gets shape {5, 5}. */
static void write_bad_shape(fixture *f, const char *path, const char *bad) {
  kiln_model *m;
  OK(kiln_model_mnist_cnn(f->dev, 1, &m));
  kiln_st_tensor t[10];
  void *bufs[10];
  for (size_t i = 0; i < 10; i++) {
    const char *name;
    kiln_tensor *p;
    OK(kiln_model_param(m, i, &name, &p));
    memset(&t[i], 0, sizeof t[i]);
    t[i].name = name;
    t[i].dtype = KILN_F32;
    t[i].ndim = kiln_tensor_shape(p, t[i].shape);
    t[i].nbytes = kiln_tensor_nbytes(p);
    if (!strcmp(name, bad)) {
      t[i].ndim = 2;
      t[i].shape[0] = t[i].shape[1] = 5;
      t[i].nbytes = 25 * sizeof(float);
    }
    bufs[i] = calloc(1, t[i].nbytes);
    t[i].data = bufs[i];
  }
  const char *keys[] = {"kiln.model", "kiln.architecture"};
  const char *vals[] = {"mnist-cnn", kiln_model_architecture(m)};
  OK(kiln_safetensors_save(path, t, 10, keys, vals, 2));
  for (size_t i = 0; i < 10; i++) free(bufs[i]);
  kiln_model_destroy(m);
}

Test(nn_checkpoint, corrupt_files_are_refused_by_name) {
  fixture f;
  fx_open(&f, 64, 0);
  kiln_model *m;
  kiln_trainer *t = make_trainer(&f, 1, &m);
  kiln_dataset tr = dataset(&f.train);
  OK(kiln_trainer_fit_epoch(t, &tr, NULL, NULL, NULL));
  int64_t n0;
  float *before = params_of(m, &n0);
  char good[512], path[512];
  snprintf(good, sizeof good, "%s/good.safetensors", f.dir);
  OK(kiln_trainer_save(t, good));

  /* Truncated: the second half of the file is gone. */
  snprintf(path, sizeof path, "%s/truncated.safetensors", f.dir);
  struct stat sb;
  cr_assert_eq(stat(good, &sb), 0);
  FILE *in = fopen(good, "rb"), *out = fopen(path, "wb");
  char *bytes = malloc((size_t)sb.st_size);
  cr_assert_eq(fread(bytes, 1, (size_t)sb.st_size, in), (size_t)sb.st_size);
  fwrite(bytes, 1, (size_t)sb.st_size / 2, out);
  fclose(in);
  fclose(out);
  free(bytes);
  kiln_status st = kiln_trainer_load(t, path);
  cr_assert_neq(st, KILN_OK);
  cr_assert(strstr(kiln_last_error(), path), "message must name the file: %s", kiln_last_error());
  cr_assert_neq(kiln_model_load(m, path), KILN_OK);

  /* A tensor with a wrong shape. */
  snprintf(path, sizeof path, "%s/shape.safetensors", f.dir);
  write_bad_shape(&f, path, "conv2.weight");
  cr_assert_eq(kiln_model_load(m, path), KILN_SHAPE_MISMATCH, "%s", kiln_last_error());
  cr_assert(strstr(kiln_last_error(), path) && strstr(kiln_last_error(), "conv2.weight") &&
                strstr(kiln_last_error(), "[64, 32, 3, 3]"),
            "message must name file, tensor and shape: %s", kiln_last_error());

  /* Another model's file. */
  kiln_model *other;
  const int64_t in4[1] = {4};
  OK(kiln_model_create(f.dev, "tiny-mlp", 1, in4, &other));
  OK(kiln_model_dense(other, "fc1", 3, KILN_ACT_NONE));
  OK(kiln_model_init(other, 1));
  snprintf(path, sizeof path, "%s/other.safetensors", f.dir);
  OK(kiln_model_save(other, path));
  cr_assert_eq(kiln_trainer_load(t, path), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), path) && strstr(kiln_last_error(), "tiny-mlp"), "%s",
            kiln_last_error());
  kiln_model_destroy(other);

  /* Parameters without optimizer state cannot be resumed from. */
  snprintf(path, sizeof path, "%s/params.safetensors", f.dir);
  OK(kiln_model_save(m, path));
  cr_assert_eq(kiln_trainer_load(t, path), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), path) && strstr(kiln_last_error(), "optimizer"), "%s",
            kiln_last_error());

  /* A missing file. */
  snprintf(path, sizeof path, "%s/nonexistent.safetensors", f.dir);
  cr_assert_neq(kiln_model_load(m, path), KILN_OK);
  cr_assert(strstr(kiln_last_error(), path), "%s", kiln_last_error());

  /* No refused load changed the model. */
  int64_t n1;
  float *after = params_of(m, &n1);
  cr_assert_arr_eq(before, after, (size_t)n0 * sizeof *before);
  cr_assert_eq(kiln_trainer_epoch(t), 1);
  free(before);
  free(after);
  kiln_trainer_destroy(t);
  kiln_model_destroy(m);
  fx_close(&f);
}

/* ---- the CLI -------------------------------------------------------------- */

/* Runs a shell command, capturing stdout to out (size bytes); returns the
 * exit status. */
static int run_capture(const char *cmd, char *out, size_t size) {
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p, "popen %s", cmd);
  size_t n = fread(out, 1, size - 1, p);
  out[n] = '\0';
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static const char *last_line(char *text) {
  size_t n = strlen(text);
  while (n > 0 && text[n - 1] == '\n') text[--n] = '\0';
  char *nl = strrchr(text, '\n');
  return nl ? nl + 1 : text;
}

Test(cli, train_then_eval_mnist_cnn, .timeout = 600) {
  char dir[] = "/tmp/kiln-test-cli-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  static char out[1 << 16];
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "'%s/bin/kiln' train mnist-cnn --backend cpu --data '%s' --train-samples 1000 "
           "--test-samples 300 --epochs 1 --seed 3 --save '%s/cnn.safetensors' "
           "--metrics '%s/m.csv'",
           KILN_BUILD_DIR, tu_data_path(""), dir, dir);
  int rc = run_capture(cmd, out, sizeof out);
  cr_assert_eq(rc, 0, "kiln train failed (%d):\n%s", rc, out);
  const char *line = last_line(out);
  double acc = -1, loss = -1, ips = -1;
  int epochs = -1;
  char backend[64] = "", device[256] = "";
  int got = sscanf(line,
                   "test_accuracy=%lf test_loss=%lf images_per_s=%lf epochs=%d backend=%63s "
                   "device=\"%255[^\"]\"",
                   &acc, &loss, &ips, &epochs, backend, device);
  cr_assert_eq(got, 6, "last line not machine-readable: '%s'", line);
  cr_assert(acc >= 0 && acc <= 1, "%s", line);
  cr_assert_gt(acc, 0.3, "16 steps on 1000 images should beat chance (0.1) clearly: %s", line);
  cr_assert_gt(ips, 0);
  cr_assert_eq(epochs, 1);
  cr_assert_str_eq(backend, "cpu");
  cr_assert_gt(strlen(device), 0);

  /* The metrics file: a header and one row. */
  char path[512], text[2048] = "";
  snprintf(path, sizeof path, "%s/m.csv", dir);
  FILE *fm = fopen(path, "r");
  cr_assert_not_null(fm);
  size_t n = fread(text, 1, sizeof text - 1, fm);
  text[n] = '\0';
  fclose(fm);
  cr_assert(!strncmp(text, "epoch,step,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds\n1,16,",
                     strlen("epoch,step,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds\n1,16,")),
            "metrics:\n%s", text);

  /* kiln eval on the saved checkpoint reproduces the test accuracy. */
  snprintf(cmd, sizeof cmd,
           "'%s/bin/kiln' eval mnist-cnn --backend cpu --data '%s' --test-samples 300 "
           "--load '%s/cnn.safetensors'",
           KILN_BUILD_DIR, tu_data_path(""), dir);
  rc = run_capture(cmd, out, sizeof out);
  cr_assert_eq(rc, 0, "kiln eval failed (%d):\n%s", rc, out);
  double acc2 = -1;
  cr_assert_eq(sscanf(last_line(out), "test_accuracy=%lf", &acc2), 1, "%s", out);
  cr_assert_float_eq(acc2, acc, 1e-9, "eval %.4f vs train %.4f", acc2, acc);

  /* --resume to epoch 2 continues from step 16. */
  snprintf(cmd, sizeof cmd,
           "'%s/bin/kiln' train mnist-cnn --backend cpu --data '%s' --train-samples 1000 "
           "--test-samples 300 --epochs 2 --resume '%s/cnn.safetensors' 2>&1",
           KILN_BUILD_DIR, tu_data_path(""), dir);
  rc = run_capture(cmd, out, sizeof out);
  cr_assert_eq(rc, 0, "resume failed (%d):\n%s", rc, out);
  cr_assert(strstr(out, "resumed from") && strstr(out, "step 16"), "%s", out);
  cr_assert(strstr(last_line(out), "epochs=2"), "%s", out);

  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert_eq(system(cmd), 0);
}

Test(cli, bad_flags_are_usage_errors) {
  static char out[1 << 14];
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' train mnist-cnn --epochz 3 2>&1", KILN_BUILD_DIR);
  cr_assert_eq(run_capture(cmd, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "--epochz"), "the message must name the flag: %s", out);
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' train mnist-cnn --batch zero 2>&1", KILN_BUILD_DIR);
  cr_assert_eq(run_capture(cmd, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "--batch"), "%s", out);
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' train resnet 2>&1", KILN_BUILD_DIR);
  cr_assert_eq(run_capture(cmd, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "resnet"), "%s", out);
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' eval mnist-cnn 2>&1", KILN_BUILD_DIR);
  cr_assert_eq(run_capture(cmd, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "--load"), "%s", out);
  snprintf(cmd, sizeof cmd,
           "'%s/bin/kiln' train mnist-cnn --backend cpu --data /nonexistent-kiln-dir 2>&1",
           KILN_BUILD_DIR);
  cr_assert_eq(run_capture(cmd, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "kiln fetch mnist"), "a missing dataset must say how to get it: %s", out);
}

/* ---- the reference CNN on Vulkan tracks the CPU ---------------------------- */

/* Every batch's running mean loss and the step it belongs to, as the
 * progress callback reports them. */
typedef struct loss_curve {
  int n;
  int64_t batch[16], step[16], samples[16];
  double loss[16];
} loss_curve;

static void record_progress(const kiln_progress *p, void *user) {
  loss_curve *c = user;
  if (c->n < 16) {
    c->batch[c->n] = p->batch;
    c->step[c->n] = p->step;
    c->samples[c->n] = p->samples;
    c->loss[c->n] = p->loss;
  }
  c->n++;
}

/* Trains the CNN (seed 1, Adam, `batch`) for one epoch of `ds` on
 * `backend`, recording the progress; fills the epoch's and a test
 * evaluation's stats, and with logits non-NULL predicts te into it.
 * Returns 0 (after cr_skip_test) without the device. */
static int cnn_epoch_on(const char *backend, int batch, const kiln_dataset *ds,
                        const kiln_dataset *te, loss_curve *curve, kiln_epoch_stats *ts,
                        kiln_epoch_stats *es, float *logits) {
  kiln_context *ctx;
  kiln_device *dev;
  OK(kiln_context_create(NULL, &ctx));
  kiln_status st = kiln_device_open(ctx, backend, -1, &dev);
  if (st != KILN_OK) {
    kiln_context_destroy(ctx);
    cr_skip_test("no %s device on this machine (%s)", backend, kiln_last_error());
    return 0;
  }
  kiln_model *m;
  kiln_optimizer_config adam;
  kiln_trainer *t;
  OK(kiln_model_mnist_cnn(dev, 1, &m));
  OK(kiln_optimizer_defaults(KILN_OPTIM_ADAM, &adam));
  OK(kiln_trainer_create(m, &adam, batch, 1, &t));
  memset(curve, 0, sizeof *curve);
  OK(kiln_trainer_fit_epoch(t, ds, record_progress, curve, ts));
  OK(kiln_trainer_evaluate(t, te, es));
  if (logits) OK(kiln_trainer_predict(t, te, logits, (size_t)te->n * 10));
  kiln_trainer_destroy(t);
  kiln_model_destroy(m);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return 1;
}

/* 200 images: three full batches and a tail of 8 (the tail graph), one
 * epoch on each backend. On Vulkan the trainer keeps a batch in flight
 * (it reads batch b after submitting b+1), so this also checks that the
 * progress arrives once per batch, in order, with the right step and
 * samples, and that the loss curve tracks the CPU's: same data order,
 * same seed, float sums in another order. */
Test(nn_train, vulkan_loss_curve_tracks_cpu, .timeout = 900) {
  kiln_mnist train, test;
  OK(kiln_mnist_load(tu_data_path("mnist"), 1, 200, &train));
  OK(kiln_mnist_load(tu_data_path("mnist"), 0, 100, &test));
  kiln_dataset tr = dataset(&train), te = dataset(&test);
  loss_curve cc, vc;
  kiln_epoch_stats cts, ces, vts, ves;
  cnn_epoch_on("cpu", 64, &tr, &te, &cc, &cts, &ces, NULL);
  if (cnn_epoch_on("vulkan", 64, &tr, &te, &vc, &vts, &ves, NULL)) {
    cr_assert_eq(vc.n, 4, "progress calls: %d, want 4 (one per batch)", vc.n);
    cr_assert_eq(cc.n, 4);
    static const int64_t samples[4] = {64, 128, 192, 200};
    for (int i = 0; i < 4; i++) {
      cr_assert_eq(vc.batch[i], i + 1, "call %d reports batch %lld", i, (long long)vc.batch[i]);
      cr_assert_eq(vc.step[i], i + 1, "call %d reports step %lld", i, (long long)vc.step[i]);
      cr_assert_eq(vc.samples[i], samples[i]);
      double d = fabs(vc.loss[i] - cc.loss[i]);
      cr_log_info("batch %d: mean loss cpu %.6f vulkan %.6f", i + 1, cc.loss[i], vc.loss[i]);
      cr_assert_leq(d, 1e-3 * fabs(cc.loss[i]) + 1e-4,
                    "batch %d: running loss cpu %.6f vs vulkan %.6f", i + 1, cc.loss[i],
                    vc.loss[i]);
    }
    cr_assert_eq(vts.samples, 200);
    cr_assert_leq(fabs(vts.loss - cts.loss), 1e-3 * cts.loss, "epoch loss %.6f vs %.6f",
                  vts.loss, cts.loss);
    cr_assert_leq(fabs(ves.loss - ces.loss), 2e-3 * ces.loss + 1e-4, "test loss %.6f vs %.6f",
                  ves.loss, ces.loss);
    cr_assert_leq(fabs(ves.accuracy - ces.accuracy), 0.02, "test accuracy %.3f vs %.3f",
                  ves.accuracy, ces.accuracy);
  }
  kiln_mnist_free(&train);
  kiln_mnist_free(&test);
}

/* One epoch of batch 16 on 116 images (7 full batches and a tail of 4),
 * then the loss of and predict() on the same images, with the Vulkan
 * executables keeping `frames` runs ($KILN_VK_FRAMES). Returns 0 without
 * the device. */
static int frames_run(const char *frames, const kiln_dataset *ds, loss_curve *curve,
                      kiln_epoch_stats *ts, kiln_epoch_stats *es, float *logits) {
  setenv("KILN_VK_FRAMES", frames, 1);
  int ran = cnn_epoch_on("vulkan", 16, ds, ds, curve, ts, es, logits);
  unsetenv("KILN_VK_FRAMES");
  return ran;
}

/* The trainer reads batches in flight in groups once the device keeps
 * several runs (4 frames: three batches after one wait). The device does
 * the same work in the same order whatever the depth, and the host reads
 * the batches in order, so progress, stats and predictions must match a
 * depth of 2 (one batch read per step) bit for bit; the ring of batches in
 * flight wraps around here. */
Test(nn_train, vulkan_frames_do_not_change_results, .timeout = 600) {
  kiln_mnist train;
  OK(kiln_mnist_load(tu_data_path("mnist"), 1, 116, &train));
  kiln_dataset tr = dataset(&train);
  loss_curve c2, c4;
  kiln_epoch_stats ts2, es2, ts4, es4;
  static float l2[116 * 10], l4[116 * 10];
  if (frames_run("2", &tr, &c2, &ts2, &es2, l2) && frames_run("4", &tr, &c4, &ts4, &es4, l4)) {
    cr_assert_eq(c2.n, 8, "progress calls: %d, want 8 (one per batch)", c2.n);
    cr_assert_eq(c4.n, 8, "progress calls: %d, want 8 (one per batch)", c4.n);
    for (int i = 0; i < 8; i++) {
      cr_assert_eq(c4.batch[i], i + 1, "call %d reports batch %lld", i, (long long)c4.batch[i]);
      cr_assert_eq(c4.step[i], c2.step[i]);
      cr_assert_eq(c4.samples[i], c2.samples[i]);
      cr_assert_eq(c4.loss[i], c2.loss[i], "batch %d: running loss %.9g (4 frames) vs %.9g", i + 1,
                   c4.loss[i], c2.loss[i]);
    }
    cr_assert_eq(ts4.loss, ts2.loss, "epoch loss %.9g vs %.9g", ts4.loss, ts2.loss);
    cr_assert_eq(ts4.accuracy, ts2.accuracy);
    cr_assert_eq(es4.loss, es2.loss, "evaluation loss %.9g vs %.9g", es4.loss, es2.loss);
    cr_assert_eq(es4.accuracy, es2.accuracy);
    cr_assert_eq(memcmp(l4, l2, sizeof l2), 0, "predict() differs between 2 and 4 frames");
  }
  kiln_mnist_free(&train);
}
