/*
 * profile.c - per-node timing of graph runs ($KILN_PROFILE).
 *
 * With KILN_PROFILE set (to anything but "" or "0") when a graph is
 * compiled, every run of it times each node with the monotonic clock, and
 * freeing the graph prints where the time went to stderr: one row per op
 * (nodes, milliseconds per run, share) and the slowest nodes with their
 * output shapes. It answers "which op should I look at" for a model; the
 * clock reads add ~50 ns per node. Without the variable nothing is timed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu-impl.h"

#define PROF_TOP_NODES 12

int kcpu_profile_enabled(void) {
  const char *s = getenv("KILN_PROFILE");
  return s && *s && strcmp(s, "0") != 0;
}

uint64_t kcpu_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct prof_row {
  uint32_t op;
  int nodes, fused;
  uint64_t ns;
} prof_row;

static int by_time_desc(const void *a, const void *b) {
  uint64_t x = ((const prof_row *)a)->ns, y = ((const prof_row *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

void kcpu_profile_report(const kcpu_node *const *nodes, const uint64_t *ns, uint32_t n_nodes,
                         uint64_t runs) {
  if (runs == 0 || n_nodes == 0) return;
  uint64_t total = 0;
  for (uint32_t i = 0; i < n_nodes; i++) total += ns[i];
  prof_row *rows = calloc(n_nodes, sizeof *rows);
  if (!rows) return;
  int n_rows = 0;
  for (uint32_t i = 0; i < n_nodes; i++) {
    int r = 0;
    while (r < n_rows && rows[r].op != nodes[i]->op) r++;
    if (r == n_rows) rows[n_rows++].op = nodes[i]->op;
    rows[r].nodes++;
    rows[r].ns += ns[i];
    /* a node fused into its predecessor: its time is counted there */
    rows[r].fused += i > 0 && (nodes[i - 1]->epi == nodes[i] ||
                               nodes[i - 1]->acc_out == &nodes[i]->out);
  }
  qsort(rows, (size_t)n_rows, sizeof *rows, by_time_desc);
  double run_ms = (double)total / (double)runs * 1e-6;
  fprintf(stderr,
          "kiln[cpu] profile: graph of %u nodes, %llu run(s), %.3f ms of node time per run\n"
          "  %-26s %6s %12s %7s\n",
          n_nodes, (unsigned long long)runs, run_ms, "op", "nodes", "ms/run", "share");
  for (int r = 0; r < n_rows; r++) {
    fprintf(stderr, "  %-26s %6d %12.3f %6.1f%%", kcpu_op_name(rows[r].op), rows[r].nodes,
            (double)rows[r].ns / (double)runs * 1e-6,
            total ? 100.0 * (double)rows[r].ns / (double)total : 0.0);
    if (rows[r].fused)
      fprintf(stderr, "  (%d fused into the node before: timed there)", rows[r].fused);
    fputc('\n', stderr);
  }
  free(rows);

  /* The slowest nodes: a partial selection, n_nodes is small. */
  fprintf(stderr, "  slowest nodes:\n");
  char *taken = calloc(n_nodes, 1);
  if (!taken) return;
  for (int k = 0; k < PROF_TOP_NODES && k < (int)n_nodes; k++) {
    int64_t best = -1;
    for (uint32_t i = 0; i < n_nodes; i++)
      if (!taken[i] && (best < 0 || ns[i] > ns[best])) best = i;
    taken[best] = 1;
    char shape[KCPU_SHAPE_STR];
    fprintf(stderr, "  %6lld  %-26s out %-22s %10.1f us/run\n", (long long)best,
            kcpu_op_name(nodes[best]->op), KCPU_SHAPE(shape, &nodes[best]->out),
            (double)ns[best] / (double)runs * 1e-3);
  }
  free(taken);
}
