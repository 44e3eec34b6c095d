/*
 * char_model.c - the character-level LSTM/GRU language model (char_model.h):
 * parameters, the unrolled training/evaluation/sampling graphs, and
 * checkpoints. Errors: functions return a kiln_status and leave the message
 * in kiln_last_error() (libkiln's) or in char_error() (this file's own).
 */
#include "char_model.h"

#include "ckpt_io.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/data.h"
#include "kiln/rnn.h"

static char char_err[1024];

const char *char_error(void) { return char_err[0] ? char_err : kiln_last_error(); }

static kiln_status fail(kiln_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static kiln_status fail(kiln_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(char_err, sizeof char_err, fmt, ap);
  va_end(ap);
  return st;
}

/* Keeps libkiln's message as this file's. */
static kiln_status lib(kiln_status st) {
  if (st != KILN_OK) snprintf(char_err, sizeof char_err, "%s", kiln_last_error());
  return st;
}

const char *char_model_kind(const char_model *m) { return m->cell == CHAR_LSTM ? "char-lstm" : "char-gru"; }

static int gates(const char_model *m) { return m->cell == CHAR_LSTM ? 4 : 3; }

/* ---- the model ----------------------------------------------------------- */

static kiln_status add_param(char_model *m, const char *name, int ndim, int64_t d0, int64_t d1) {
  int64_t shape[2] = {d0, d1};
  snprintf(m->names[m->n_params], sizeof m->names[0], "%s", name);
  kiln_status st = kiln_tensor_create(m->dev, KILN_F32, ndim, shape, &m->params[m->n_params]);
  if (st != KILN_OK) return lib(st);
  m->n_params++;
  return KILN_OK;
}

kiln_status char_model_create(kiln_device *dev, int cell, int V, const uint8_t *vocab, int H, int L,
                              char_model **out) {
  char_err[0] = '\0';
  *out = NULL;
  if ((cell != CHAR_LSTM && cell != CHAR_GRU) || V < 1 || V > 256 || H < 1 || H > 65536 || L < 1 ||
      L > CHAR_MAX_LAYERS)
    return fail(KILN_INVALID_ARGUMENT,
                "char model: vocabulary %d (1..256), hidden %d (1..65536) or layers %d (1..%d) out of range",
                V, H, L, CHAR_MAX_LAYERS);
  char_model *m = calloc(1, sizeof *m);
  if (!m) return fail(KILN_OUT_OF_MEMORY, "char model: out of memory");
  m->dev = dev;
  m->cell = cell;
  m->V = V;
  m->H = H;
  m->L = L;
  memcpy(m->vocab, vocab, (size_t)V);
  int G = gates(m);
  char name[40];
  kiln_status st = add_param(m, "embed.weight", 2, V, H);
  for (int l = 0; l < L && st == KILN_OK; l++) {
    snprintf(name, sizeof name, "rnn.weight_ih_l%d", l);
    if ((st = add_param(m, name, 2, (int64_t)G * H, H)) != KILN_OK) break;
    snprintf(name, sizeof name, "rnn.weight_hh_l%d", l);
    if ((st = add_param(m, name, 2, (int64_t)G * H, H)) != KILN_OK) break;
    snprintf(name, sizeof name, "rnn.bias_ih_l%d", l);
    if ((st = add_param(m, name, 1, (int64_t)G * H, 1)) != KILN_OK) break;
    snprintf(name, sizeof name, "rnn.bias_hh_l%d", l);
    st = add_param(m, name, 1, (int64_t)G * H, 1);
  }
  if (st == KILN_OK) st = add_param(m, "decoder.weight", 2, V, H);
  if (st == KILN_OK) st = add_param(m, "decoder.bias", 1, V, 1);
  if (st != KILN_OK) {
    char_model_destroy(m);
    return st;
  }
  *out = m;
  return KILN_OK;
}

void char_model_destroy(char_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_params; i++) kiln_tensor_destroy(m->params[i]);
  free(m);
}

int64_t char_model_numel(const char_model *m) {
  int64_t n = 0;
  for (int i = 0; i < m->n_params; i++) n += kiln_tensor_numel(m->params[i]);
  return n;
}

kiln_status char_model_init(char_model *m, uint64_t seed) {
  char_err[0] = '\0';
  double bound = 1.0 / sqrt((double)m->H);
  for (int t = 0; t < m->n_params; t++) {
    int64_t n = kiln_tensor_numel(m->params[t]);
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return fail(KILN_OUT_OF_MEMORY, "char model: out of memory initialising %s", m->names[t]);
    for (int64_t i = 0; i < n; i++) {
      if (t == 0) { /* N(0, 1), Box-Muller */
        double u1 = ckpt_unit(seed, t, i, 0), u2 = ckpt_unit(seed, t, i, 1);
        v[i] = (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
      } else {
        v[i] = (float)((2.0 * ckpt_unit(seed, t, i, 0) - 1.0) * bound);
      }
    }
    kiln_status st = kiln_tensor_upload(m->params[t], v, (size_t)n * sizeof *v);
    free(v);
    if (st != KILN_OK) return lib(st);
  }
  return KILN_OK;
}

/* ---- graphs -------------------------------------------------------------- */

static kiln_status zero_tensor(kiln_tensor *t) {
  size_t nb = kiln_tensor_nbytes(t);
  void *z = calloc(1, nb);
  if (!z) return fail(KILN_OUT_OF_MEMORY, "char model: out of memory");
  kiln_status st = kiln_tensor_upload(t, z, nb);
  free(z);
  return lib(st);
}

kiln_status char_graph_reset_state(char_graph *cg) {
  kiln_status st = KILN_OK;
  for (int l = 0; l < cg->m->L && st == KILN_OK; l++) {
    st = zero_tensor(cg->h[l]);
    if (st == KILN_OK && cg->cs[l]) st = zero_tensor(cg->cs[l]);
  }
  return st;
}

void char_graph_destroy(char_graph *cg) {
  if (!cg) return;
  kiln_compiled_destroy(cg->c);
  kiln_graph_destroy(cg->g);
  for (int l = 0; l < CHAR_MAX_LAYERS; l++) {
    kiln_tensor_destroy(cg->h[l]);
    kiln_tensor_destroy(cg->cs[l]);
  }
  for (int i = 0; i < CHAR_MAX_PARAMS; i++) {
    kiln_tensor_destroy(cg->exp_avg[i]);
    kiln_tensor_destroy(cg->exp_avg_sq[i]);
  }
  kiln_tensor_destroy(cg->step);
  kiln_tensor_destroy(cg->counter);
  free(cg);
}

static kiln_status new_tensor(kiln_device *dev, int ndim, const int64_t *shape, kiln_tensor **t) {
  return lib(kiln_tensor_create(dev, KILN_F32, ndim, shape, t));
}

kiln_status char_graph_create(char_model *m, int B, int T, int train, const char_train_opts *opts,
                              char_graph **out) {
  char_err[0] = '\0';
  *out = NULL;
  if (B < 1 || T < 1 || T > (int)(sizeof((char_graph *)0)->y / sizeof(kiln_node *)))
    return fail(KILN_INVALID_ARGUMENT, "char model: batch %d must be >= 1 and steps %d in 1..512", B, T);
  if (train && !opts) return fail(KILN_INVALID_ARGUMENT, "char model: training needs options");
  char_graph *cg = calloc(1, sizeof *cg);
  if (!cg) return fail(KILN_OUT_OF_MEMORY, "char model: out of memory");
  cg->m = m;
  cg->B = B;
  cg->T = T;
  cg->train = train;
  kiln_status st;
  int L = m->L;
  int64_t H = m->H;
  int64_t bh[2] = {B, H};
  for (int l = 0; l < L; l++) {
    if ((st = new_tensor(m->dev, 2, bh, &cg->h[l])) != KILN_OK) goto fail;
    if (m->cell == CHAR_LSTM && (st = new_tensor(m->dev, 2, bh, &cg->cs[l])) != KILN_OK) goto fail;
  }
  float p = train ? opts->dropout : 0.0f;
  if ((st = lib(kiln_graph_create(&cg->g))) != KILN_OK) goto fail;
  kiln_graph *g = cg->g;

  kiln_node *P[CHAR_MAX_PARAMS];
  for (int i = 0; i < m->n_params; i++) P[i] = kiln_param(g, m->names[i], m->params[i]);
  kiln_node *emb_w = P[0], *dec_w = P[1 + 4 * L], *dec_b = P[2 + 4 * L];
#define W_IH(l) P[1 + 4 * (l)]
#define W_HH(l) P[2 + 4 * (l)]
#define B_IH(l) P[3 + 4 * (l)]
#define B_HH(l) P[4 + 4 * (l)]
  kiln_node *h0[CHAR_MAX_LAYERS], *c0[CHAR_MAX_LAYERS] = {0}, *h[CHAR_MAX_LAYERS], *c[CHAR_MAX_LAYERS] = {0};
  char name[48];
  for (int l = 0; l < L; l++) {
    snprintf(name, sizeof name, "state.h_l%d", l);
    h[l] = h0[l] = kiln_state(g, name, cg->h[l]);
    if (m->cell == CHAR_LSTM) {
      snprintf(name, sizeof name, "state.c_l%d", l);
      c[l] = c0[l] = kiln_state(g, name, cg->cs[l]);
    }
  }
  kiln_node *ctr = NULL;
  if (p > 0.0f) {
    if ((st = new_tensor(m->dev, 0, NULL, &cg->counter)) != KILN_OK) goto fail;
    ctr = kiln_increment(g, kiln_state(g, "dropout.counter", cg->counter), 1.0f);
  }

  /* Each step embeds its own column of x, and every layer projects its
   * input per step. (One [B*T, H] @ W_ih^T for layer 0, sliced per step,
   * did fewer GEMM calls, but each slice's gradient is a zero-padded
   * [B, T, G*H] tensor and the T of them are summed: O(T^2) memory traffic,
   * a fifth of a CPU training step at T = 50.) */
  kiln_node *total = NULL, *logits = NULL;
  for (int t = 0; t < T; t++) {
    snprintf(name, sizeof name, "x%d", t);
    cg->x[t] = kiln_input(g, name, KILN_I32, 1, (int64_t[]){B});
    kiln_node *in = kiln_embedding(g, emb_w, cg->x[t]);
    for (int l = 0; l < L; l++) {
      kiln_node *xw = kiln_add(g, kiln_matmul(g, in, W_IH(l), 0, 1), B_IH(l));
      if (m->cell == CHAR_LSTM) {
        kiln_node *hn, *cn;
        if (kiln_lstm_cell(g, xw, h[l], c[l], W_HH(l), B_HH(l), &hn, &cn) != KILN_OK) break;
        h[l] = hn;
        c[l] = cn;
      } else {
        h[l] = kiln_gru_cell(g, xw, h[l], W_HH(l), B_HH(l));
      }
      in = h[l];
      if (l + 1 < L) in = kiln_dropout(g, in, ctr, p, opts ? opts->seed : 0, (uint32_t)(l * T + t));
    }
    logits = kiln_add(g, kiln_matmul(g, in, dec_w, 0, 1), dec_b);
    if (T == 1 && !train) break; /* sampling: the logits are the output */
    snprintf(name, sizeof name, "y%d", t);
    cg->y[t] = kiln_input(g, name, KILN_I32, 1, (int64_t[]){B});
    kiln_node *ce = kiln_cross_entropy(g, logits, cg->y[t]);
    total = total ? kiln_add(g, total, ce) : ce;
  }
  if (total) {
    cg->loss = kiln_scale(g, total, 1.0f / (float)T, 0.0f);
    kiln_graph_output(g, cg->loss);
  } else {
    cg->logits = logits;
    kiln_graph_output(g, logits);
  }
  if ((st = lib(kiln_graph_status(g))) != KILN_OK) goto fail;

  if (train) {
    if ((st = lib(kiln_graph_backward(g, cg->loss))) != KILN_OK) goto fail;
    kiln_node *grads[CHAR_MAX_PARAMS], *clipped[CHAR_MAX_PARAMS];
    for (int i = 0; i < m->n_params; i++) grads[i] = kiln_grad(g, P[i]);
    if (opts->clip > 0.0f) kiln_clip_grad_norm(g, grads, m->n_params, opts->clip, clipped, NULL);
    else memcpy(clipped, grads, sizeof grads);
    if ((st = new_tensor(m->dev, 0, NULL, &cg->step)) != KILN_OK) goto fail;
    kiln_node *step = kiln_increment(g, kiln_state(g, "optimizer.step", cg->step), 1.0f);
    kiln_adam_options ao = {opts->lr, 0.9f, 0.999f, 1e-8f, 0.0f, 0};
    for (int i = 0; i < m->n_params; i++) {
      int64_t shape[KILN_MAX_DIMS];
      int nd = kiln_tensor_shape(m->params[i], shape);
      if ((st = new_tensor(m->dev, nd, shape, &cg->exp_avg[i])) != KILN_OK) goto fail;
      if ((st = new_tensor(m->dev, nd, shape, &cg->exp_avg_sq[i])) != KILN_OK) goto fail;
      snprintf(name, sizeof name, "optimizer.%s.exp_avg", m->names[i]);
      kiln_node *mm = kiln_state(g, name, cg->exp_avg[i]);
      snprintf(name, sizeof name, "optimizer.%s.exp_avg_sq", m->names[i]);
      kiln_node *vv = kiln_state(g, name, cg->exp_avg_sq[i]);
      kiln_adam_update(g, P[i], clipped[i], mm, vv, step, NULL, &ao);
    }
  }
  /* Last: carry the final state to the next run (every read of the old
   * state, backward included, was created before). */
  for (int l = 0; l < L; l++) {
    kiln_assign(g, h0[l], h[l]);
    if (c0[l]) kiln_assign(g, c0[l], c[l]);
  }
  if ((st = lib(kiln_graph_status(g))) != KILN_OK) goto fail;
  if ((st = lib(kiln_graph_compile(g, m->dev, &cg->c))) != KILN_OK) goto fail;
  *out = cg;
  return KILN_OK;
#undef W_IH
#undef W_HH
#undef B_IH
#undef B_HH

fail:
  char_graph_destroy(cg);
  return st;
}

kiln_status char_graph_submit(char_graph *cg, const int32_t *x, const int32_t *y) {
  char_err[0] = '\0';
  int B = cg->B, T = cg->T;
  int32_t col[4096];
  if (B > (int)(sizeof col / sizeof col[0]))
    return fail(KILN_INVALID_ARGUMENT, "char model: batch %d above 4096", B);
  kiln_status st = KILN_OK;
  for (int t = 0; t < T && st == KILN_OK; t++) {
    for (int b = 0; b < B; b++) col[b] = x[(int64_t)b * T + t];
    st = kiln_compiled_set_input(cg->c, cg->x[t], col, (size_t)B * sizeof *col);
    if (st != KILN_OK || !cg->loss) continue;
    for (int b = 0; b < B; b++) col[b] = y[(int64_t)b * T + t];
    st = kiln_compiled_set_input(cg->c, cg->y[t], col, (size_t)B * sizeof *col);
  }
  if (st == KILN_OK) st = kiln_compiled_run(cg->c);
  return lib(st);
}

kiln_status char_graph_loss(char_graph *cg, int back, float *loss) {
  char_err[0] = '\0';
  if (!cg->loss) return fail(KILN_INVALID_STATE, "char model: this graph has no loss (sampling)");
  return lib(kiln_compiled_get_output_back(cg->c, cg->loss, back, loss, sizeof *loss));
}

kiln_status char_graph_run(char_graph *cg, const int32_t *x, const int32_t *y, float *loss) {
  kiln_status st = char_graph_submit(cg, x, y);
  if (st == KILN_OK && loss && cg->loss) st = char_graph_loss(cg, 0, loss);
  return st;
}

/* ---- checkpoints ----------------------------------------------------------- */

/* Adds tensor t to the checkpoint being written. */
static kiln_status put(ckpt_list *s, const char *name, const kiln_tensor *t) {
  kiln_status st = ckpt_put(s, name, t, char_err, sizeof char_err);
  return char_err[0] ? st : lib(st);
}

/* Adam's state of a training graph, for ckpt_put_adam/ckpt_take_adam. */
static ckpt_adam adam_of(const char_graph *tg) {
  ckpt_adam a = {.names = tg->m->names[0], .name_size = sizeof tg->m->names[0], .n = tg->m->n_params,
                 .exp_avg = tg->exp_avg, .exp_avg_sq = tg->exp_avg_sq, .step = tg->step,
                 .counter = tg->counter};
  return a;
}

kiln_status char_save(const char *path, const char_model *m, const char_graph *tg, int64_t iter,
                      const char *const *keys, const char *const *values, int n_extra) {
  char_err[0] = '\0';
  ckpt_list list = {0}, *s = &list;
  kiln_status st = KILN_OK;
  char name[64];
  for (int i = 0; i < m->n_params && st == KILN_OK; i++) st = put(s, m->names[i], m->params[i]);
  if (st == KILN_OK && tg && tg->train) {
    ckpt_adam a = adam_of(tg);
    st = ckpt_put_adam(s, &a, char_err, sizeof char_err);
    if (!char_err[0]) st = lib(st);
    for (int l = 0; l < m->L && st == KILN_OK; l++) {
      snprintf(name, sizeof name, "state.h_l%d", l);
      st = put(s, name, tg->h[l]);
      snprintf(name, sizeof name, "state.c_l%d", l);
      if (st == KILN_OK && tg->cs[l]) st = put(s, name, tg->cs[l]);
    }
  }
  if (st == KILN_OK) st = ckpt_put_u8(s, "vocab", m->vocab, m->V, char_err, sizeof char_err);
  if (st == KILN_OK) {
    char vl[16], vh[16], vv[16], vi[32];
    snprintf(vl, sizeof vl, "%d", m->L);
    snprintf(vh, sizeof vh, "%d", m->H);
    snprintf(vv, sizeof vv, "%d", m->V);
    snprintf(vi, sizeof vi, "%lld", (long long)iter);
    const char *mk[32] = {"kiln.model", "layers", "hidden", "vocab_size", "iter"};
    const char *mv[32] = {char_model_kind(m), vl, vh, vv, vi};
    int nm = 5;
    for (int i = 0; i < n_extra && nm < 32; i++, nm++) {
      mk[nm] = keys[i];
      mv[nm] = values[i];
    }
    st = lib(kiln_safetensors_save(path, s->t, s->n, mk, mv, (size_t)nm));
  }
  ckpt_list_free(s);
  return st;
}

static kiln_status take(const kiln_safetensors *f, const char *path, const char *name, kiln_tensor *t) {
  return ckpt_take(f, path, name, t, char_err, sizeof char_err);
}

kiln_status char_load_model(const char *path, kiln_device *dev, char_model **out) {
  char_err[0] = '\0';
  *out = NULL;
  kiln_safetensors *f = NULL;
  char_model *m = NULL;
  kiln_status st = lib(kiln_safetensors_open(path, &f));
  if (st != KILN_OK) return st;
  const char *kind = kiln_safetensors_meta(f, "kiln.model");
  long L, H;
  int cell = kind && !strcmp(kind, "char-lstm") ? CHAR_LSTM : kind && !strcmp(kind, "char-gru") ? CHAR_GRU : -1;
  if (cell < 0) {
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: not a char-lstm or char-gru checkpoint (kiln.model is %s)",
              path, kind ? kind : "missing");
    goto done;
  }
  if (!ckpt_meta_int(f, "layers", 1, CHAR_MAX_LAYERS, &L) || !ckpt_meta_int(f, "hidden", 1, 65536, &H)) {
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: metadata 'layers' (1..%d) or 'hidden' missing or invalid",
              path, CHAR_MAX_LAYERS);
    goto done;
  }
  const uint8_t *vb;
  int V;
  if (!ckpt_vocab(f, path, &vb, &V, char_err, sizeof char_err)) {
    st = KILN_CORRUPT_DATA;
    goto done;
  }
  if ((st = char_model_create(dev, cell, V, vb, (int)H, (int)L, &m)) != KILN_OK) goto done;
  for (int i = 0; i < m->n_params && st == KILN_OK; i++) st = take(f, path, m->names[i], m->params[i]);
  if (st != KILN_OK) {
    char_model_destroy(m);
    m = NULL;
  }
done:
  kiln_safetensors_close(f);
  *out = m;
  return st;
}

kiln_status char_load_train_state(const char *path, char_graph *tg, int64_t *iter) {
  char_err[0] = '\0';
  kiln_safetensors *f = NULL;
  kiln_status st = lib(kiln_safetensors_open(path, &f));
  if (st != KILN_OK) return st;
  char_model *m = tg->m;
  char name[64];
  long it = 0;
  if (!ckpt_meta_int(f, "iter", 0, 0x7fffffffL, &it)) {
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: metadata 'iter' missing or invalid", path);
    goto done;
  }
  ckpt_adam a = adam_of(tg);
  st = ckpt_take_adam(f, path, &a, char_err, sizeof char_err);
  for (int l = 0; l < m->L && st == KILN_OK; l++) {
    kiln_st_tensor e;
    snprintf(name, sizeof name, "state.h_l%d", l);
    /* the carried state is batch-shaped: restore it only for the same batch */
    if (kiln_safetensors_find(f, name, &e) == KILN_OK && e.ndim == 2 && e.shape[0] == tg->B) {
      st = take(f, path, name, tg->h[l]);
      snprintf(name, sizeof name, "state.c_l%d", l);
      if (st == KILN_OK && tg->cs[l]) st = take(f, path, name, tg->cs[l]);
    }
  }
  *iter = it;
done:
  kiln_safetensors_close(f);
  return st;
}
