/*
 * char_model.h - the character-level LSTM/GRU language model behind
 * `kiln train char-lstm|char-gru` and `kiln sample`:
 *
 *   x [B, T] i32 -> embed.weight [V, H] -> L recurrent layers of H units
 *   (PyTorch nn.LSTM/nn.GRU, batch-first, dropout between layers)
 *   -> decoder (x @ W^T + b) [B, V] per step -> cross-entropy per character.
 *
 * Parameters are named as a PyTorch module of that shape names them:
 * embed.weight, rnn.weight_ih_l0 [G*H, in], rnn.weight_hh_l0 [G*H, H],
 * rnn.bias_ih_l0, rnn.bias_hh_l0 [G*H] (G = 4 for LSTM, 3 for GRU),
 * decoder.weight [V, H], decoder.bias [V].
 *
 * The sequence is unrolled in the static graph; the hidden state lives in
 * kiln_state tensors that each run reads at its first step and overwrites
 * (KILN_OP_ASSIGN) with its last, so training is truncated BPTT with the
 * state carried between batches, as char-rnn does.
 */
#ifndef KILN_CLI_CHAR_MODEL_H
#define KILN_CLI_CHAR_MODEL_H

#include <stdint.h>

#include "kiln/kiln.h"

enum { CHAR_LSTM = 0, CHAR_GRU = 1 };
#define CHAR_MAX_LAYERS 8
#define CHAR_MAX_PARAMS (3 + 4 * CHAR_MAX_LAYERS)

typedef struct char_model {
  kiln_device *dev;
  int cell;                   /* CHAR_LSTM or CHAR_GRU */
  int V, H, L;                /* vocabulary, hidden units, layers */
  uint8_t vocab[256];         /* vocab[id] = byte */
  int n_params;
  char names[CHAR_MAX_PARAMS][40];
  kiln_tensor *params[CHAR_MAX_PARAMS];
} char_model;

typedef struct char_train_opts {
  float lr, clip, dropout;    /* Adam lr; global-norm clip (0: none); dropout p */
  uint64_t seed;              /* dropout masks */
} char_train_opts;

/* A compiled graph of the model with its carried state (h, and c for LSTM,
 * per layer; [B, H]) and, for training, Adam's state. */
typedef struct char_graph {
  char_model *m;
  int B, T, train;
  kiln_graph *g;
  kiln_compiled *c;
  kiln_node *x[512];          /* per step [B] i32 */
  kiln_node *y[512];          /* per step [B] i32 (train/eval) */
  kiln_node *loss;            /* [] mean over steps (train/eval) */
  kiln_node *logits;          /* [B, V] of the last step (sampling) */
  kiln_tensor *h[CHAR_MAX_LAYERS], *cs[CHAR_MAX_LAYERS];
  kiln_tensor *exp_avg[CHAR_MAX_PARAMS], *exp_avg_sq[CHAR_MAX_PARAMS];
  kiln_tensor *step, *counter;   /* [] f32: Adam's step, dropout's counter */
} char_graph;

/* Creates the parameter tensors on dev (zeros). Returns a kiln_status. */
kiln_status char_model_create(kiln_device *dev, int cell, int V, const uint8_t *vocab, int H, int L,
                              char_model **out);
void char_model_destroy(char_model *m);
/* PyTorch's initialisation: U(-1/sqrt(H), 1/sqrt(H)) for the recurrent and
 * decoder weights and biases, N(0, 1) for the embedding; from seed only. */
kiln_status char_model_init(char_model *m, uint64_t seed);
int64_t char_model_numel(const char_model *m);
const char *char_model_kind(const char_model *m); /* "char-lstm" or "char-gru" */

/* Builds and compiles a graph for B sequences of T steps. train: forward,
 * backward, clipping and Adam (opts required); else forward only. T = 1 and
 * !train is the sampling graph (logits of the step). States start at zero. */
kiln_status char_graph_create(char_model *m, int B, int T, int train, const char_train_opts *opts,
                              char_graph **out);
void char_graph_destroy(char_graph *cg);
/* Zeroes the carried hidden state. */
kiln_status char_graph_reset_state(char_graph *cg);
/* Runs one batch: x [B, T] and (train/eval) y [B, T] token ids; *loss gets
 * the mean cross-entropy in nats (may be NULL for sampling). */
kiln_status char_graph_run(char_graph *cg, const int32_t *x, const int32_t *y, float *loss);
/* char_graph_run in two halves, for loops that read each step's loss one
 * step late (loss_lag.h): submit starts the batch; loss
 * reads the loss of the run `back` runs before the latest (0 or 1; 1 only
 * where kiln_compiled_output_depth(c, loss) >= 2). */
kiln_status char_graph_submit(char_graph *cg, const int32_t *x, const int32_t *y);
kiln_status char_graph_loss(char_graph *cg, int back, float *loss);

/* Saves params, Adam's state (if tg), the carried training state and the
 * vocabulary ("vocab" u8 [V]) with metadata (kiln.model, cell, layers,
 * hidden, vocab_size, iter, seed, batch, seq, lr, clip, dropout). */
kiln_status char_save(const char *path, const char_model *m, const char_graph *tg, int64_t iter,
                      const char *const *keys, const char *const *values, int n_extra);
/* Reads the architecture of a checkpoint and creates the model with its
 * parameters loaded. */
kiln_status char_load_model(const char *path, kiln_device *dev, char_model **out);
/* Loads Adam's state and the carried state of tg from path; *iter gets the
 * checkpoint's iteration. */
kiln_status char_load_train_state(const char *path, char_graph *tg, int64_t *iter);

/* The message of the last failed char_* call (this file's or libkiln's). */
const char *char_error(void);

#endif
