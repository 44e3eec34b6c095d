/*
 * gpt_model.c - the character-level GPT (gpt_model.h): parameters with
 * nanoGPT's names and initialisation, the training/evaluation/sampling
 * graphs, and checkpoints. Errors: functions return a kiln_status and leave
 * the message in gpt_error().
 */
#include "gpt_model.h"

#include "ckpt_io.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/data.h"
#include "kiln/rnn.h"
#include "kiln/transformer.h"

static char gpt_err[1024];

const char *gpt_error(void) { return gpt_err[0] ? gpt_err : kiln_last_error(); }

static kiln_status fail(kiln_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static kiln_status fail(kiln_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(gpt_err, sizeof gpt_err, fmt, ap);
  va_end(ap);
  return st;
}

/* Keeps libkiln's message as this file's. */
static kiln_status lib(kiln_status st) {
  if (st != KILN_OK) snprintf(gpt_err, sizeof gpt_err, "%s", kiln_last_error());
  return st;
}

/* Per-layer parameter slots, in gpt_model_create's order. */
enum { P_LN1_W, P_LN1_B, P_ATTN_W, P_ATTN_B, P_APROJ_W, P_APROJ_B, P_LN2_W, P_LN2_B,
       P_FC_W, P_FC_B, P_MPROJ_W, P_MPROJ_B };
#define P_WTE 0
#define P_WPE 1
#define P_LAYER(l, k) (2 + GPT_PER_LAYER * (l) + (k))
#define P_LNF_W(L) (2 + GPT_PER_LAYER * (L))
#define P_LNF_B(L) (3 + GPT_PER_LAYER * (L))

/* ---- the model ----------------------------------------------------------- */

kiln_status gpt_check_config(int V, int L, int NH, int C, int block) {
  gpt_err[0] = '\0';
  if (V < 1 || V > 256) return fail(KILN_INVALID_ARGUMENT, "char-gpt: vocabulary %d outside 1..256", V);
  if (L < 1 || L > GPT_MAX_LAYERS)
    return fail(KILN_INVALID_ARGUMENT, "char-gpt: --layers %d outside 1..%d", L, GPT_MAX_LAYERS);
  if (C < 1 || C > GPT_MAX_EMBD)
    return fail(KILN_INVALID_ARGUMENT, "char-gpt: --embd %d outside 1..%d", C, GPT_MAX_EMBD);
  if (NH < 1 || NH > C || C % NH)
    return fail(KILN_INVALID_ARGUMENT,
                "char-gpt: --heads %d must divide --embd %d (each head gets embd / heads columns)", NH, C);
  if (block < 1 || block > GPT_MAX_BLOCK)
    return fail(KILN_INVALID_ARGUMENT, "char-gpt: --block %d outside 1..%d", block, GPT_MAX_BLOCK);
  return KILN_OK;
}

static kiln_status add_param(gpt_model *m, const char *name, int ndim, int64_t d0, int64_t d1) {
  int64_t shape[2] = {d0, d1};
  snprintf(m->names[m->n_params], sizeof m->names[0], "%s", name);
  kiln_status st = kiln_tensor_create(m->dev, KILN_F32, ndim, shape, &m->params[m->n_params]);
  if (st != KILN_OK) return lib(st);
  m->n_params++;
  return KILN_OK;
}

kiln_status gpt_model_create(kiln_device *dev, int V, const uint8_t *vocab, int L, int NH, int C,
                             int block, gpt_model **out) {
  *out = NULL;
  kiln_status st = gpt_check_config(V, L, NH, C, block);
  if (st != KILN_OK) return st;
  gpt_model *m = calloc(1, sizeof *m);
  if (!m) return fail(KILN_OUT_OF_MEMORY, "char-gpt: out of memory");
  m->dev = dev;
  m->V = V;
  m->L = L;
  m->NH = NH;
  m->C = C;
  m->block = block;
  memcpy(m->vocab, vocab, (size_t)V);
  static const struct { const char *name; int ndim, r0, r1; } layer[GPT_PER_LAYER] = {
      /* shape [r0 * C, r1 * C]; ndim 1 ignores r1 */
      {"ln_1.weight", 1, 1, 0},       {"ln_1.bias", 1, 1, 0},
      {"attn.c_attn.weight", 2, 3, 1}, {"attn.c_attn.bias", 1, 3, 0},
      {"attn.c_proj.weight", 2, 1, 1}, {"attn.c_proj.bias", 1, 1, 0},
      {"ln_2.weight", 1, 1, 0},       {"ln_2.bias", 1, 1, 0},
      {"mlp.c_fc.weight", 2, 4, 1},   {"mlp.c_fc.bias", 1, 4, 0},
      {"mlp.c_proj.weight", 2, 1, 4}, {"mlp.c_proj.bias", 1, 1, 0}};
  char name[48];
  st = add_param(m, "transformer.wte.weight", 2, V, C);
  if (st == KILN_OK) st = add_param(m, "transformer.wpe.weight", 2, block, C);
  for (int l = 0; l < L && st == KILN_OK; l++)
    for (int k = 0; k < GPT_PER_LAYER && st == KILN_OK; k++) {
      snprintf(name, sizeof name, "transformer.h.%d.%s", l, layer[k].name);
      st = add_param(m, name, layer[k].ndim, (int64_t)layer[k].r0 * C, (int64_t)layer[k].r1 * C);
    }
  if (st == KILN_OK) st = add_param(m, "transformer.ln_f.weight", 1, C, 0);
  if (st == KILN_OK) st = add_param(m, "transformer.ln_f.bias", 1, C, 0);
  if (st != KILN_OK) {
    gpt_model_destroy(m);
    return st;
  }
  *out = m;
  return KILN_OK;
}

void gpt_model_destroy(gpt_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_params; i++) kiln_tensor_destroy(m->params[i]);
  free(m);
}

int64_t gpt_model_numel(const gpt_model *m) {
  int64_t n = 0;
  for (int i = 0; i < m->n_params; i++) n += kiln_tensor_numel(m->params[i]);
  return n;
}

kiln_status gpt_model_init(gpt_model *m, uint64_t seed) {
  gpt_err[0] = '\0';
  double proj_std = 0.02 / sqrt(2.0 * m->L);
  for (int t = 0; t < m->n_params; t++) {
    int64_t n = kiln_tensor_numel(m->params[t]);
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return fail(KILN_OUT_OF_MEMORY, "char-gpt: out of memory initialising %s", m->names[t]);
    const char *nm = m->names[t];
    size_t len = strlen(nm);
    int is_w = len > 7 && !strcmp(nm + len - 7, ".weight");
    double std = 0.0, fill = 0.0;
    if (strstr(nm, "ln_")) fill = is_w ? 1.0 : 0.0;      /* layer norms: 1, 0 */
    else if (!is_w) fill = 0.0;                          /* Linear biases */
    else std = strstr(nm, "c_proj.weight") ? proj_std : 0.02;
    for (int64_t i = 0; i < n; i++) {
      if (std > 0.0) { /* N(0, std), Box-Muller */
        double u1 = ckpt_unit(seed, t, i, 0), u2 = ckpt_unit(seed, t, i, 1);
        v[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
      } else {
        v[i] = (float)fill;
      }
    }
    kiln_status st = kiln_tensor_upload(m->params[t], v, (size_t)n * sizeof *v);
    free(v);
    if (st != KILN_OK) return lib(st);
  }
  return KILN_OK;
}

/* ---- graphs -------------------------------------------------------------- */

void gpt_graph_destroy(gpt_graph *gg) {
  if (!gg) return;
  kiln_compiled_destroy(gg->c);
  kiln_graph_destroy(gg->g);
  for (int i = 0; i < GPT_MAX_PARAMS; i++) {
    kiln_tensor_destroy(gg->exp_avg[i]);
    kiln_tensor_destroy(gg->exp_avg_sq[i]);
  }
  kiln_tensor_destroy(gg->step);
  kiln_tensor_destroy(gg->counter);
  free(gg);
}

static kiln_status new_tensor(kiln_device *dev, int ndim, const int64_t *shape, kiln_tensor **t) {
  return lib(kiln_tensor_create(dev, KILN_F32, ndim, shape, t));
}

/* x [N, in] @ w^T + b: a PyTorch Linear with weight w [out, in], bias b [out]. */
static kiln_node *linear(kiln_graph *g, kiln_node *x, kiln_node *w, kiln_node *b) {
  return kiln_add(g, kiln_matmul(g, x, w, 0, 1), b);
}

kiln_status gpt_graph_create(gpt_model *m, int B, int T, int train, int loss,
                             const gpt_train_opts *opts, gpt_graph **out) {
  gpt_err[0] = '\0';
  *out = NULL;
  if (B < 1 || T < 1 || T > m->block)
    return fail(KILN_INVALID_ARGUMENT, "char-gpt: batch %d must be >= 1 and positions %d in 1..%d (the block size)",
                B, T, m->block);
  if (train && !opts) return fail(KILN_INVALID_ARGUMENT, "char-gpt: training needs options");
  gpt_graph *gg = calloc(1, sizeof *gg);
  if (!gg) return fail(KILN_OUT_OF_MEMORY, "char-gpt: out of memory");
  gg->m = m;
  gg->B = B;
  gg->T = T;
  gg->train = train;
  kiln_status st;
  int L = m->L;
  int64_t C = m->C, BT = (int64_t)B * T;
  float p = train ? opts->dropout : 0.0f;
  uint64_t seed = train ? opts->seed : 0;
  if ((st = lib(kiln_graph_create(&gg->g))) != KILN_OK) goto fail;
  kiln_graph *g = gg->g;

  kiln_node *P[GPT_MAX_PARAMS];
  for (int i = 0; i < m->n_params; i++) P[i] = kiln_param(g, m->names[i], m->params[i]);
  kiln_node *ctr = NULL;
  if (p > 0.0f) {
    if ((st = new_tensor(m->dev, 0, NULL, &gg->counter)) != KILN_OK) goto fail;
    ctr = kiln_increment(g, kiln_state(g, "dropout.counter", gg->counter), 1.0f);
  }
  uint32_t site = 0; /* one dropout stream per site */

  gg->x = kiln_input(g, "x", KILN_I32, 2, (int64_t[]){B, T});
  gg->pos = kiln_input(g, "pos", KILN_I32, 1, (int64_t[]){T});
  /* h [B*T, C] = drop(wte[x] + wpe[pos]) */
  kiln_node *tok = kiln_embedding(g, P[P_WTE], gg->x);       /* [B, T, C] */
  kiln_node *pe = kiln_embedding(g, P[P_WPE], gg->pos);      /* [T, C] */
  kiln_node *h = kiln_reshape(g, kiln_add(g, tok, pe), 2, (int64_t[]){BT, C});
  h = kiln_dropout(g, h, ctr, p, seed, site++);
  for (int l = 0; l < L; l++) {
    kiln_node **W = &P[P_LAYER(l, 0)];
    kiln_node *a = kiln_layernorm(g, h, W[P_LN1_W], W[P_LN1_B], 1e-5f);
    kiln_node *qkv = kiln_reshape(g, linear(g, a, W[P_ATTN_W], W[P_ATTN_B]), 3, (int64_t[]){B, T, 3 * C});
    kiln_node *y = kiln_reshape(g, kiln_attention(g, qkv, m->NH, 1, 0.0f), 2, (int64_t[]){BT, C});
    y = kiln_dropout(g, linear(g, y, W[P_APROJ_W], W[P_APROJ_B]), ctr, p, seed, site++);
    h = kiln_add(g, h, y);
    a = kiln_layernorm(g, h, W[P_LN2_W], W[P_LN2_B], 1e-5f);
    kiln_node *f = kiln_gelu(g, linear(g, a, W[P_FC_W], W[P_FC_B]), 0);
    f = kiln_dropout(g, linear(g, f, W[P_MPROJ_W], W[P_MPROJ_B]), ctr, p, seed, site++);
    h = kiln_add(g, h, f);
  }
  h = kiln_layernorm(g, h, P[P_LNF_W(L)], P[P_LNF_B(L)], 1e-5f);
  kiln_node *logits = kiln_matmul(g, h, P[P_WTE], 0, 1);   /* [B*T, V], lm_head = wte */
  if (loss || train) {
    gg->y = kiln_input(g, "y", KILN_I32, 1, (int64_t[]){BT});
    gg->loss = kiln_cross_entropy(g, logits, gg->y);
    kiln_graph_output(g, gg->loss);
  } else {
    gg->logits = logits;
    kiln_graph_output(g, logits);
  }
  if ((st = lib(kiln_graph_status(g))) != KILN_OK) goto fail;

  if (train) {
    if ((st = lib(kiln_graph_backward(g, gg->loss))) != KILN_OK) goto fail;
    kiln_node *grads[GPT_MAX_PARAMS], *clipped[GPT_MAX_PARAMS];
    for (int i = 0; i < m->n_params; i++) grads[i] = kiln_grad(g, P[i]);
    if (opts->clip > 0.0f) kiln_clip_grad_norm(g, grads, m->n_params, opts->clip, clipped, NULL);
    else memcpy(clipped, grads, sizeof grads);
    if ((st = new_tensor(m->dev, 0, NULL, &gg->step)) != KILN_OK) goto fail;
    kiln_node *step = kiln_increment(g, kiln_state(g, "optimizer.step", gg->step), 1.0f);
    kiln_node *lr = kiln_lr_schedule(g, step, opts->lr, opts->min_lr, opts->warmup, opts->decay_iters);
    char name[96];
    for (int i = 0; i < m->n_params; i++) {
      int64_t shape[KILN_MAX_DIMS];
      int nd = kiln_tensor_shape(m->params[i], shape);
      /* nanoGPT's configure_optimizers: decay every parameter of 2 or more
       * dimensions (embeddings and Linear weights), not biases or norms */
      kiln_adam_options ao = {opts->lr, opts->beta1, opts->beta2, 1e-8f, nd >= 2 ? opts->weight_decay : 0.0f, 1};
      if ((st = new_tensor(m->dev, nd, shape, &gg->exp_avg[i])) != KILN_OK) goto fail;
      if ((st = new_tensor(m->dev, nd, shape, &gg->exp_avg_sq[i])) != KILN_OK) goto fail;
      snprintf(name, sizeof name, "optimizer.%s.exp_avg", m->names[i]);
      kiln_node *mm = kiln_state(g, name, gg->exp_avg[i]);
      snprintf(name, sizeof name, "optimizer.%s.exp_avg_sq", m->names[i]);
      kiln_node *vv = kiln_state(g, name, gg->exp_avg_sq[i]);
      kiln_adam_update(g, P[i], clipped[i], mm, vv, step, lr, &ao);
    }
  }
  if ((st = lib(kiln_graph_status(g))) != KILN_OK) goto fail;
  if ((st = lib(kiln_graph_compile(g, m->dev, &gg->c))) != KILN_OK) goto fail;
  *out = gg;
  return KILN_OK;

fail:
  gpt_graph_destroy(gg);
  return st;
}

kiln_status gpt_graph_submit(gpt_graph *gg, const int32_t *x, const int32_t *y) {
  gpt_err[0] = '\0';
  int B = gg->B, T = gg->T;
  int32_t pos[GPT_MAX_BLOCK];
  for (int t = 0; t < T; t++) pos[t] = t;
  kiln_status st = kiln_compiled_set_input(gg->c, gg->x, x, (size_t)B * T * sizeof *x);
  if (st == KILN_OK) st = kiln_compiled_set_input(gg->c, gg->pos, pos, (size_t)T * sizeof *pos);
  if (st == KILN_OK && gg->loss) {
    if (!y) return fail(KILN_INVALID_ARGUMENT, "char-gpt: this graph needs targets");
    st = kiln_compiled_set_input(gg->c, gg->y, y, (size_t)B * T * sizeof *y);
  }
  if (st == KILN_OK) st = kiln_compiled_run(gg->c);
  return lib(st);
}

kiln_status gpt_graph_loss(gpt_graph *gg, int back, float *loss) {
  gpt_err[0] = '\0';
  if (!gg->loss) return fail(KILN_INVALID_STATE, "char-gpt: this graph has no loss (sampling)");
  return lib(kiln_compiled_get_output_back(gg->c, gg->loss, back, loss, sizeof *loss));
}

kiln_status gpt_graph_run(gpt_graph *gg, const int32_t *x, const int32_t *y, float *loss) {
  kiln_status st = gpt_graph_submit(gg, x, y);
  if (st == KILN_OK && loss && gg->loss) st = gpt_graph_loss(gg, 0, loss);
  return st;
}

/* ---- checkpoints ----------------------------------------------------------- */

/* Adds tensor t to the checkpoint being written. */
static kiln_status put(ckpt_list *s, const char *name, const kiln_tensor *t) {
  kiln_status st = ckpt_put(s, name, t, gpt_err, sizeof gpt_err);
  return gpt_err[0] ? st : lib(st);
}

/* AdamW's state of a training graph, for ckpt_put_adam/ckpt_take_adam. */
static ckpt_adam adam_of(const gpt_graph *tg) {
  ckpt_adam a = {.names = tg->m->names[0], .name_size = sizeof tg->m->names[0], .n = tg->m->n_params,
                 .exp_avg = tg->exp_avg, .exp_avg_sq = tg->exp_avg_sq, .step = tg->step,
                 .counter = tg->counter};
  return a;
}

kiln_status gpt_save(const char *path, const gpt_model *m, const gpt_graph *tg, int64_t iter,
                     const char *const *keys, const char *const *values, int n_extra) {
  gpt_err[0] = '\0';
  ckpt_list list = {0}, *s = &list;
  kiln_status st = KILN_OK;
  for (int i = 0; i < m->n_params && st == KILN_OK; i++) st = put(s, m->names[i], m->params[i]);
  if (st == KILN_OK && tg && tg->train) {
    ckpt_adam a = adam_of(tg);
    st = ckpt_put_adam(s, &a, gpt_err, sizeof gpt_err);
    if (!gpt_err[0]) st = lib(st);
  }
  if (st == KILN_OK) st = ckpt_put_u8(s, "vocab", m->vocab, m->V, gpt_err, sizeof gpt_err);
  if (st == KILN_OK) {
    char vl[16], vh[16], vc[16], vb[16], vv[16], vi[32];
    snprintf(vl, sizeof vl, "%d", m->L);
    snprintf(vh, sizeof vh, "%d", m->NH);
    snprintf(vc, sizeof vc, "%d", m->C);
    snprintf(vb, sizeof vb, "%d", m->block);
    snprintf(vv, sizeof vv, "%d", m->V);
    snprintf(vi, sizeof vi, "%lld", (long long)iter);
    const char *mk[40] = {"kiln.model", "n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "iter"};
    const char *mv[40] = {"char-gpt", vl, vh, vc, vb, "1", vv, vi};
    int nm = 8;
    for (int i = 0; i < n_extra && nm < 40; i++, nm++) {
      mk[nm] = keys[i];
      mv[nm] = values[i];
    }
    st = lib(kiln_safetensors_save(path, s->t, s->n, mk, mv, (size_t)nm));
  }
  ckpt_list_free(s);
  return st;
}

static kiln_status take(const kiln_safetensors *f, const char *path, const char *name, kiln_tensor *t) {
  return ckpt_take(f, path, name, t, gpt_err, sizeof gpt_err);
}

kiln_status gpt_load_model(const char *path, kiln_device *dev, gpt_model **out) {
  gpt_err[0] = '\0';
  *out = NULL;
  kiln_safetensors *f = NULL;
  gpt_model *m = NULL;
  kiln_status st = lib(kiln_safetensors_open(path, &f));
  if (st != KILN_OK) return st;
  const char *kind = kiln_safetensors_meta(f, "kiln.model");
  long L, NH, C, block, bias;
  if (!kind || strcmp(kind, "char-gpt")) {
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: not a char-gpt checkpoint (kiln.model is %s)", path,
              kind ? kind : "missing");
    goto done;
  }
  if (!ckpt_meta_int(f, "n_layer", 1, GPT_MAX_LAYERS, &L) || !ckpt_meta_int(f, "n_head", 1, GPT_MAX_EMBD, &NH) ||
      !ckpt_meta_int(f, "n_embd", 1, GPT_MAX_EMBD, &C) || !ckpt_meta_int(f, "block_size", 1, GPT_MAX_BLOCK, &block)) {
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: metadata n_layer, n_head, n_embd or block_size missing or invalid",
              path);
    goto done;
  }
  if (ckpt_meta_int(f, "bias", 0, 1, &bias) && !bias) {
    st = fail(KILN_UNSUPPORTED, "checkpoint %s: bias=0 models are not supported (kiln's char-gpt has biases)", path);
    goto done;
  }
  const uint8_t *vb;
  int V;
  if (!ckpt_vocab(f, path, &vb, &V, gpt_err, sizeof gpt_err)) {
    st = KILN_CORRUPT_DATA;
    goto done;
  }
  if ((st = gpt_model_create(dev, V, vb, (int)L, (int)NH, (int)C, (int)block, &m)) != KILN_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", gpt_err);
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: %s", path, msg);
    goto done;
  }
  for (int i = 0; i < m->n_params && st == KILN_OK; i++) st = take(f, path, m->names[i], m->params[i]);
  if (st != KILN_OK) {
    gpt_model_destroy(m);
    m = NULL;
  }
done:
  kiln_safetensors_close(f);
  *out = m;
  return st;
}

kiln_status gpt_load_train_state(const char *path, gpt_graph *tg, int64_t *iter) {
  gpt_err[0] = '\0';
  kiln_safetensors *f = NULL;
  kiln_status st = lib(kiln_safetensors_open(path, &f));
  if (st != KILN_OK) return st;
  long it = 0;
  if (!ckpt_meta_int(f, "iter", 0, 0x7fffffffL, &it)) {
    st = fail(KILN_CORRUPT_DATA, "checkpoint %s: metadata 'iter' missing or invalid", path);
    goto done;
  }
  ckpt_adam a = adam_of(tg);
  st = ckpt_take_adam(f, path, &a, gpt_err, sizeof gpt_err);
  *iter = it;
done:
  kiln_safetensors_close(f);
  return st;
}
