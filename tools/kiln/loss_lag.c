/*
 * loss_lag.c - a training loop's per-step losses, read one step late
 * (loss_lag.h).
 */
#include "loss_lag.h"

void loss_lag_init(loss_lag *q, int depth) {
  q->deep = depth >= 2;
  q->pending = 0;
  q->it = 0;
}

int loss_lag_after(loss_lag *q, void *graph, loss_read_fn read, int64_t it, int sync,
                   int64_t its[2], float losses[2]) {
  int n = 0;
  if (q->pending) {                    /* the step before: one run back */
    if (read(graph, 1, &losses[n]) != KILN_OK) return -1;
    its[n++] = q->it;
    q->pending = 0;
  }
  if (q->deep && !sync) {
    q->pending = 1;
    q->it = it;
    return n;
  }
  if (read(graph, 0, &losses[n]) != KILN_OK) return -1;
  its[n++] = it;
  return n;
}
