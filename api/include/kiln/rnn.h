/*
 * kiln/rnn.h - graph builders for sequence models: embedding, slicing,
 * counter-based dropout, in-place assignment of carried state, gradient
 * clipping by global norm, and the LSTM and GRU cells (PyTorch's equations
 * and gate order), built from the ops of kiln/ops.h so that the static graph
 * unrolls a sequence step by step.
 *
 * Like every graph builder (kiln.h), these return the new node or NULL on
 * error; the graph keeps its first error for kiln_graph_status().
 */
#ifndef KILN_RNN_H
#define KILN_RNN_H

#include <stdint.h>

#include "kiln.h"

KILN_EXTERN_C_BEGIN

/** Row lookup: weight [V, C] f32, indices [...] i32; returns [..., C]
 *  (KILN_OP_EMBEDDING). Out-of-range indices give zero rows. */
KILN_API kiln_node *kiln_embedding(kiln_graph *g, kiln_node *weight, kiln_node *indices);

/** x's elements [start, start + length) along axis (negative counts from
 *  the end); the result has x's shape with that axis = length. */
KILN_API kiln_node *kiln_slice(kiln_graph *g, kiln_node *x, int axis, int64_t start,
                               int64_t length);

/** Inverted dropout of x with probability p (KILN_OP_DROPOUT). counter: a
 *  scalar f32 node, normally kiln_increment() of a kiln_state, so the mask
 *  changes each run without rebuilding the graph. seed and stream (one per
 *  dropout site) complete the generator's key and counter. p == 0 returns
 *  x itself. */
KILN_API kiln_node *kiln_dropout(kiln_graph *g, kiln_node *x, kiln_node *counter, float p,
                                 uint64_t seed, uint32_t stream);

/** dst = src in place (KILN_OP_ASSIGN); dst is a kiln_state (or an
 *  in-place update of one) of src's shape. Create it after every node that
 *  must read dst's old value: nodes run in creation order. */
KILN_API kiln_node *kiln_assign(kiln_graph *g, kiln_node *dst, kiln_node *src);

/** Clips gradients by their global L2 norm, as torch.nn.utils.
 *  clip_grad_norm_: with norm = sqrt(sum over i of sum(grads[i]^2)),
 *  every grads[i] is scaled by min(1, max_norm / (norm + 1e-6)). Writes the
 *  scaled nodes to clipped[i] (grads[i] NULL gives clipped[i] NULL) and,
 *  if sumsq is not NULL, the [] node holding the sum of squares. Returns
 *  the coefficient node, or NULL on error. */
KILN_API kiln_node *kiln_clip_grad_norm(kiln_graph *g, kiln_node *const *grads, int n,
                                        float max_norm, kiln_node **clipped, kiln_node **sumsq);

/** One LSTM step (PyTorch's gate order i, f, g, o):
 *    gates = xw + h @ w_hh^T + b_hh              [B, 4H]
 *    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)  [B, H]
 *    h' = sigmoid(o) * tanh(c')                  [B, H]
 *  xw [B, 4H] is the input projection x @ w_ih^T + b_ih, computed by the
 *  caller (for all steps at once where it can); w_hh [4H, H], b_hh [4H] or
 *  NULL. One matmul per step. Returns KILN_OK and *h_out, *c_out, or the
 *  graph's error status. */
KILN_API kiln_status kiln_lstm_cell(kiln_graph *g, kiln_node *xw, kiln_node *h, kiln_node *c,
                                    kiln_node *w_hh, kiln_node *b_hh, kiln_node **h_out,
                                    kiln_node **c_out);

/** One GRU step (PyTorch's order r, z, n):
 *    hw = h @ w_hh^T + b_hh                      [B, 3H]
 *    r = sigmoid(xw_r + hw_r), z = sigmoid(xw_z + hw_z)
 *    n = tanh(xw_n + r * hw_n)
 *    h' = n + z * (h - n)                        (= (1 - z) n + z h)
 *  xw [B, 3H] = x @ w_ih^T + b_ih; w_hh [3H, H]; b_hh [3H] or NULL.
 *  Returns h' or NULL. */
KILN_API kiln_node *kiln_gru_cell(kiln_graph *g, kiln_node *xw, kiln_node *h, kiln_node *w_hh,
                                  kiln_node *b_hh);

KILN_EXTERN_C_END

#endif /* KILN_RNN_H */
