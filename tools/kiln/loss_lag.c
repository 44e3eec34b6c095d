/*
 * loss_lag.c - a training loop's per-step losses, read some steps late
 * (loss_lag.h).
 */
#include <math.h>
#include <stdio.h>

#include "loss_lag.h"

void loss_lag_init(loss_lag *q, int depth) {
  q->depth = depth < 1 ? 1 : depth > LOSS_LAG_MAX ? LOSS_LAG_MAX : depth;
  q->deep = q->depth >= 2;
  q->pending = 0;
}

int loss_lag_after(loss_lag *q, void *graph, loss_read_fn read, int64_t it, int sync,
                   int64_t its[LOSS_LAG_MAX], float losses[LOSS_LAG_MAX]) {
  q->it[q->pending++] = it;            /* the newest: back 0 */
  int k = sync || !q->deep ? q->pending : q->pending >= q->depth ? q->pending - 1 : 0;
  if (k == 0) return 0;
  /* the newest of the k first: one wait, and the older ones are done */
  if (read(graph, q->pending - k, &losses[k - 1]) != KILN_OK) return -1;
  for (int j = 0; j < k - 1; j++)
    if (read(graph, q->pending - 1 - j, &losses[j]) != KILN_OK) return -1;
  for (int j = 0; j < k; j++) its[j] = q->it[j];
  for (int j = k; j < q->pending; j++) q->it[j - k] = q->it[j];
  q->pending -= k;
  return k;
}

double loss_unigram_baseline(const kiln_text *t) {
  double count[256] = {0}, total = (double)t->n_train + t->vocab_size;
  for (int64_t i = 0; i < t->n_train; i++) count[t->tokens[i]] += 1.0;
  double loss = 0.0;
  for (int64_t i = t->n_train; i < t->n; i++) loss -= log((count[t->tokens[i]] + 1.0) / total);
  return loss / (double)(t->n - t->n_train);
}

static void fmt_eta(char *buf, size_t size, double s) {
  if (!(s >= 0) || s > 1e7) snprintf(buf, size, "?");
  else if (s >= 3600) snprintf(buf, size, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
  else if (s >= 60) snprintf(buf, size, "%dm%02ds", (int)(s / 60), (int)s % 60);
  else snprintf(buf, size, "%ds", (int)s);
}

void loss_progress_add(loss_progress *p, int64_t it, int64_t iters, float loss, int64_t tokens,
                       double train_s) {
  p->sum += loss;
  p->n++;
  if (it % 10 != 0 && it != iters) return;
  char eta[32];
  fmt_eta(eta, sizeof eta, train_s / (double)(it - p->first_it + 1) * (double)(iters - it));
  printf("%siter %lld/%lld  train loss %.4f  %.0f tokens/s  ETA %s%s", p->tty ? "\r" : "",
         (long long)it, (long long)iters, p->sum / (double)p->n, (double)tokens / train_s, eta,
         p->tty ? "  " : "\n");
  fflush(stdout);
  p->sum = 0.0;
  p->n = 0;
}
