/*
 * kiln/transformer.h - graph builders for transformers: layer norm, GELU,
 * fused causal multi-head self-attention and the warmup + cosine learning
 * rate schedule (the ops KILN_OP_LAYERNORM .. KILN_OP_LR_SCHEDULE of
 * kiln/ops.h). Token and position embeddings, dropout and gradient
 * clipping are in kiln/rnn.h; AdamW is kiln_adam_update() with
 * opts->decoupled = 1.
 *
 * Like every graph builder (kiln.h), these return the new node or NULL on
 * error; the graph keeps its first error for kiln_graph_status().
 */
#ifndef KILN_TRANSFORMER_H
#define KILN_TRANSFORMER_H

#include <stdint.h>

#include "kiln.h"

KILN_EXTERN_C_BEGIN

/** Layer norm of x [..., C] over its last axis with gamma [C], beta [C]
 *  (KILN_OP_LAYERNORM); eps as torch.nn.LayerNorm's (1e-5). */
KILN_API kiln_node *kiln_layernorm(kiln_graph *g, kiln_node *x, kiln_node *gamma, kiln_node *beta,
                                   float eps);

/** GELU of x (KILN_OP_GELU): approximate 0 is the exact (erf) form, 1 the
 *  tanh approximation. */
KILN_API kiln_node *kiln_gelu(kiln_graph *g, kiln_node *x, int approximate);

/** Fused multi-head self-attention (KILN_OP_ATTENTION) of qkv [B, T, 3C]
 *  with n_head heads; returns y [B, T, C] with the heads side by side,
 *  ready for the output projection. causal 1 masks future positions; scale
 *  0 means 1 / sqrt(C / n_head). */
KILN_API kiln_node *kiln_attention(kiln_graph *g, kiln_node *qkv, int n_head, int causal,
                                   float scale);

/** The learning rate of step `step` (a [] f32 node: the 1-based step, as
 *  kiln_increment() of Adam's step counter returns) under linear warmup for
 *  warmup steps and cosine decay to min_lr at decay_steps
 *  (KILN_OP_LR_SCHEDULE); pass the result as kiln_adam_update()'s lr. */
KILN_API kiln_node *kiln_lr_schedule(kiln_graph *g, kiln_node *step, float max_lr, float min_lr,
                                     int64_t warmup, int64_t decay_steps);

KILN_EXTERN_C_END

#endif /* KILN_TRANSFORMER_H */
