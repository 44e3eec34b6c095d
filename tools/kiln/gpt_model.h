/*
 * gpt_model.h - the character-level GPT behind `kiln train char-gpt` and
 * `kiln sample` (nanoGPT's model, bias = True):
 *
 *   x [B, T] i32 -> wte [V, C] + wpe [block, C] (positions 0..T-1)
 *   -> L blocks of  h += c_proj(attn(c_attn(ln_1(h))))      (causal, H heads)
 *                   h += mlp.c_proj(gelu(mlp.c_fc(ln_2(h)))) (4C hidden, exact GELU)
 *   -> ln_f -> logits = h @ wte^T [B*T, V] (lm_head tied to wte)
 *   -> cross-entropy per character.
 *
 * Parameters are named as nanoGPT's state_dict names them (Linear weights
 * [out, in], y = x W^T + b): transformer.wte.weight, transformer.wpe.weight,
 * transformer.h.N.{ln_1,ln_2}.{weight,bias},
 * transformer.h.N.attn.c_attn.{weight [3C, C], bias [3C]},
 * transformer.h.N.attn.c_proj.{weight [C, C], bias},
 * transformer.h.N.mlp.c_fc.{weight [4C, C], bias [4C]},
 * transformer.h.N.mlp.c_proj.{weight [C, 4C], bias}, transformer.ln_f.*;
 * lm_head.weight is wte and is stored once.
 */
#ifndef KILN_CLI_GPT_MODEL_H
#define KILN_CLI_GPT_MODEL_H

#include <stdint.h>

#include "kiln/kiln.h"

#define GPT_MAX_LAYERS 48
#define GPT_PER_LAYER 12
#define GPT_MAX_PARAMS (4 + GPT_PER_LAYER * GPT_MAX_LAYERS)
#define GPT_MAX_EMBD 8192
#define GPT_MAX_BLOCK 4096

typedef struct gpt_model {
  kiln_device *dev;
  int V, L, NH, C, block;     /* vocabulary, layers, heads, embedding width, context */
  uint8_t vocab[256];         /* vocab[id] = byte */
  int n_params;
  char names[GPT_MAX_PARAMS][48];
  kiln_tensor *params[GPT_MAX_PARAMS];
} gpt_model;

typedef struct gpt_train_opts {
  float lr, min_lr;           /* warmup to lr, cosine decay to min_lr */
  int64_t warmup, decay_iters;
  float weight_decay;         /* AdamW's, on the 2-D weights only */
  float beta1, beta2;
  float clip, dropout;        /* global-norm clip (0: none); dropout p */
  uint64_t seed;              /* dropout masks */
} gpt_train_opts;

/* A compiled graph of the model for B sequences of T positions and, for
 * training, AdamW's state. */
typedef struct gpt_graph {
  gpt_model *m;
  int B, T, train;
  kiln_graph *g;
  kiln_compiled *c;
  kiln_node *x;               /* [B, T] i32 */
  kiln_node *pos;             /* [T] i32, 0..T-1 (set by gpt_graph_run) */
  kiln_node *y;               /* [B*T] i32 targets (train/eval) */
  kiln_node *loss;            /* [] mean cross-entropy (train/eval) */
  kiln_node *logits;          /* [B*T, V] (sampling) */
  kiln_tensor *exp_avg[GPT_MAX_PARAMS], *exp_avg_sq[GPT_MAX_PARAMS];
  kiln_tensor *step, *counter; /* [] f32: AdamW's step, dropout's counter */
} gpt_graph;

/* Checks an architecture; on failure the message names the option. */
kiln_status gpt_check_config(int V, int L, int NH, int C, int block);
/* Creates the parameter tensors on dev (zeros). Returns a kiln_status. */
kiln_status gpt_model_create(kiln_device *dev, int V, const uint8_t *vocab, int L, int NH, int C,
                             int block, gpt_model **out);
void gpt_model_destroy(gpt_model *m);
/* nanoGPT's initialisation: N(0, 0.02) for embeddings and Linear weights,
 * N(0, 0.02 / sqrt(2 L)) for attn.c_proj and mlp.c_proj weights, zero
 * biases, layer norms 1 and 0; from seed only. */
kiln_status gpt_model_init(gpt_model *m, uint64_t seed);
int64_t gpt_model_numel(const gpt_model *m);

/* Builds and compiles a graph for B sequences of T <= block positions.
 * train: forward, backward, clipping, the lr schedule and AdamW (opts
 * required); else forward and loss (loss 1) or forward to the logits of
 * every position (loss 0: sampling). */
kiln_status gpt_graph_create(gpt_model *m, int B, int T, int train, int loss,
                             const gpt_train_opts *opts, gpt_graph **out);
void gpt_graph_destroy(gpt_graph *gg);
/* Runs one batch: x [B, T] and (with a loss) y [B, T] token ids; *loss gets
 * the mean cross-entropy in nats (may be NULL). */
kiln_status gpt_graph_run(gpt_graph *gg, const int32_t *x, const int32_t *y, float *loss);
/* gpt_graph_run in two halves, as char_graph_submit / char_graph_loss. */
kiln_status gpt_graph_submit(gpt_graph *gg, const int32_t *x, const int32_t *y);
kiln_status gpt_graph_loss(gpt_graph *gg, int back, float *loss);

/* Saves params, AdamW's state (if tg trains) and the vocabulary ("vocab"
 * u8 [V]) with metadata (kiln.model = char-gpt, n_layer, n_head, n_embd,
 * block_size, bias, vocab_size, iter) and the n_extra keys/values given. */
kiln_status gpt_save(const char *path, const gpt_model *m, const gpt_graph *tg, int64_t iter,
                     const char *const *keys, const char *const *values, int n_extra);
/* Reads the architecture of a checkpoint and creates the model with its
 * parameters loaded. */
kiln_status gpt_load_model(const char *path, kiln_device *dev, gpt_model **out);
/* Loads AdamW's state of tg from path; *iter gets the checkpoint's iteration. */
kiln_status gpt_load_train_state(const char *path, gpt_graph *tg, int64_t *iter);

/* The message of the last failed gpt_* call (this file's or libkiln's). */
const char *gpt_error(void);

#endif
