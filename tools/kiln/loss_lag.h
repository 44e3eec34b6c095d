/*
 * loss_lag.h - a training loop's per-step losses, read some steps late.
 *
 * Where the device keeps the last D runs of a graph's loss
 * (kiln_compiled_output_depth D >= 2: Vulkan keeps 4), the loop submits
 * steps ahead of reading their losses, so the device always has the next
 * step queued while the host reads, prints and prepares the next batch: no
 * stall per step. Once D losses are unread, all but the newest are read
 * after one wait for the newest of them, so the host sleeps and wakes once
 * per D - 1 steps (libkiln's trainer does the same). Elsewhere (the CPU
 * plugin, whose runs finish before they return) each loss is read right
 * after its run. The losses, and the order they come in, are the same
 * either way.
 *
 *   loss_lag q;
 *   loss_lag_init(&q, depth);
 *   for each step it = 1, 2, ...:
 *     submit the step
 *     n = loss_lag_after(&q, graph, read, it, sync, its, losses);
 *     handle losses[0..n) of steps its[0..n), in order
 *
 * sync: read this step's loss now too, with nothing left unread. A loop
 * syncs before anything that must see the parameters of exactly this step
 * (an evaluation, a checkpoint) and at its last step.
 */
#ifndef KILN_CLI_LOSS_LAG_H
#define KILN_CLI_LOSS_LAG_H

#include <stdint.h>

#include "kiln/kiln.h"
#include "kiln/text.h"

#define LOSS_LAG_MAX 4   /* most steps in flight */

/* Reads the loss of graph's run `back` runs before its latest (back < the
 * depth given to loss_lag_init). */
typedef kiln_status (*loss_read_fn)(void *graph, int back, float *loss);

typedef struct loss_lag {
  int depth;                  /* steps in flight at most (1: each read at once) */
  int deep;                   /* depth >= 2: losses are read late */
  int pending;                /* submitted steps whose loss is unread */
  int64_t it[LOSS_LAG_MAX];   /* those steps, oldest first */
} loss_lag;

/* depth: kiln_compiled_output_depth of the loss (at most LOSS_LAG_MAX is
 * used). */
void loss_lag_init(loss_lag *q, int depth);

/* After step `it` of graph was submitted: reads the losses that are due,
 * oldest first, into its[] and losses[] (at most LOSS_LAG_MAX). Returns how
 * many, or -1 when a read failed (read's own message stands). */
int loss_lag_after(loss_lag *q, void *graph, loss_read_fn read, int64_t it, int sync,
                   int64_t its[LOSS_LAG_MAX], float losses[LOSS_LAG_MAX]);

/* Cross-entropy of t's validation split under its training split's
 * character frequencies (add-one smoothed): the loss a character model
 * must beat. */
double loss_unigram_baseline(const kiln_text *t);

/* A loop's running loss, printed every 10 steps and at the last one. */
typedef struct loss_progress {
  double sum;        /* losses since the last line */
  int64_t n;
  int64_t first_it;  /* the loop's first step (for the ETA: after a resume, not 1) */
  int tty;           /* stdout is a terminal: lines overwrite each other */
} loss_progress;

/* After the loss of step it (of iters) came back: adds it and, every 10
 * steps and at the last, prints "iter it/iters  train loss L  R tokens/s
 * ETA T" (tokens and train_s so far) and starts a new mean. */
void loss_progress_add(loss_progress *p, int64_t it, int64_t iters, float loss, int64_t tokens,
                       double train_s);

#endif
