/*
 * profile.c - per-dispatch device timing of graph runs ($KILN_PROFILE).
 *
 * With KILN_PROFILE set (to anything but "" or "0") when a graph is
 * compiled, its command buffer gets a query pool of n_dispatches + 1
 * timestamps: a vkCmdResetQueryPool of them all at the start (so every
 * resubmission starts from reset queries), timestamp 0 once the work
 * submitted before has finished, and timestamp i + 1 after dispatch i
 * (BOTTOM_OF_PIPE: when it and everything recorded before it is done).
 * Dispatch i's time is the difference, so dispatches that overlap are not
 * counted twice and the times add up to the run. After each run's fence
 * the timestamps are read and added up (ticks * timestampPeriod ns); freeing
 * the graph prints, like the CPU plugin, one row per op and the slowest
 * nodes to stderr. A device whose compute queue has no timestamps
 * (timestampValidBits 0) gets "not supported on this device" instead;
 * KILN_VK_NO_TIMESTAMPS=1 takes that path on any device (for the tests).
 * Without the variable there is no query pool and no extra command.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk-impl.h"

#define PROF_TOP_NODES 12

struct kvk_profile {
  VkQueryPool pool;             /* VK_NULL_HANDLE when unsupported */
  uint32_t n_dispatches;
  uint32_t *node_of;            /* [n_dispatches]: the node that planned it */
  uint64_t *ticks;              /* [n_dispatches]: summed over runs */
  uint64_t *raw;                /* [n_dispatches + 1]: one run's timestamps */
  uint64_t mask;                /* timestampValidBits of the queue family */
  int forced_off;               /* KILN_VK_NO_TIMESTAMPS */
  double ns_per_tick;
  uint64_t runs;
};

int kvk_profile_enabled(void) {
  const char *s = getenv("KILN_PROFILE");
  return s && *s && strcmp(s, "0") != 0;
}

void kvk_profile_destroy(kiln_plugin_device *dev, kvk_profile *p) {
  if (!p) return;
  if (p->pool) vkDestroyQueryPool(dev->dev, p->pool, NULL);
  free(p->node_of);
  free(p->ticks);
  free(p->raw);
  free(p);
}

/* KILN_VK_NO_TIMESTAMPS=1: behave as on a queue without timestamps. */
static int timestamps_off(void) {
  const char *s = getenv("KILN_VK_NO_TIMESTAMPS");
  return s && *s && strcmp(s, "0") != 0;
}

kiln_status kvk_profile_create(kiln_plugin_device *dev, const kvk_plan *plan, kvk_profile **out) {
  *out = NULL;
  kvk_profile *p = calloc(1, sizeof *p);
  if (!p) goto fail_oom;
  p->n_dispatches = plan->n;
  const kvk_physical *ph = dev->phys;
  p->forced_off = timestamps_off();
  if (ph->timestamp_bits == 0 || !(ph->props.limits.timestampPeriod > 0) || plan->n == 0 ||
      p->forced_off) {
    *out = p;   /* reported at free: nothing to time */
    return KILN_OK;
  }
  p->mask = ph->timestamp_bits >= 64 ? UINT64_MAX : ((uint64_t)1 << ph->timestamp_bits) - 1;
  p->ns_per_tick = ph->props.limits.timestampPeriod;
  p->node_of = calloc(plan->n, sizeof *p->node_of);
  p->ticks = calloc(plan->n, sizeof *p->ticks);
  p->raw = calloc((size_t)plan->n + 1, sizeof *p->raw);
  if (!p->node_of || !p->ticks || !p->raw) goto fail_oom;
  for (uint32_t i = 0; i < plan->n; i++) p->node_of[i] = (uint32_t)plan->d[i].node;
  VkQueryPoolCreateInfo qi = {
      .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
      .queryType = VK_QUERY_TYPE_TIMESTAMP,
      .queryCount = plan->n + 1,
  };
  VkResult r = vkCreateQueryPool(dev->dev, &qi, NULL, &p->pool);
  if (r != VK_SUCCESS) {
    kiln_status st = kvk_vk_error("graph_compile", "vkCreateQueryPool ($KILN_PROFILE)", r);
    kvk_profile_destroy(dev, p);
    return st;
  }
  *out = p;
  return KILN_OK;
fail_oom:
  kvk_profile_destroy(dev, p);
  kvk_host->set_error("vulkan: graph_compile: out of host memory for the $KILN_PROFILE timings "
                      "of %u dispatches", plan->n);
  return KILN_OUT_OF_MEMORY;
}

void kvk_profile_cmd_begin(VkCommandBuffer cmd, const kvk_profile *p) {
  if (!p || !p->pool) return;
  vkCmdResetQueryPool(cmd, p->pool, 0, p->n_dispatches + 1);
  vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, p->pool, 0);
}

void kvk_profile_cmd_dispatch(VkCommandBuffer cmd, const kvk_profile *p, uint32_t i) {
  if (!p || !p->pool) return;
  vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, p->pool, i + 1);
}

kiln_status kvk_profile_collect(kiln_plugin_device *dev, kvk_profile *p) {
  if (!p || !p->pool) {
    if (p) p->runs++;
    return KILN_OK;
  }
  uint32_t n = p->n_dispatches + 1;
  VkResult r = vkGetQueryPoolResults(dev->dev, p->pool, 0, n, n * sizeof *p->raw, p->raw,
                                     sizeof *p->raw,
                                     VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_run", "vkGetQueryPoolResults ($KILN_PROFILE)", r);
  for (uint32_t i = 0; i < p->n_dispatches; i++)
    p->ticks[i] += (p->raw[i + 1] - p->raw[i]) & p->mask;
  p->runs++;
  return KILN_OK;
}

typedef struct prof_row {
  uint32_t op;
  int nodes;
  double ns;
} prof_row;

static int by_time_desc(const void *a, const void *b) {
  double x = ((const prof_row *)a)->ns, y = ((const prof_row *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

void kvk_profile_report(const kiln_plugin_device *dev, const kvk_profile *p, const kvk_node *nodes,
                        uint32_t n_nodes) {
  if (!p || p->runs == 0 || n_nodes == 0) return;
  const kvk_physical *ph = dev->phys;
  if (!p->pool) {
    if (p->n_dispatches == 0) return;
    if (p->forced_off) {
      fprintf(stderr, "kiln[vulkan] profile: not supported on this device (%s: timestamps turned "
              "off by KILN_VK_NO_TIMESTAMPS)\n", ph->props.deviceName);
      return;
    }
    fprintf(stderr,
            "kiln[vulkan] profile: not supported on this device (%s: its compute queue family "
            "%u has timestampValidBits %u, timestampComputeAndGraphics %u, timestampPeriod %g)\n",
            ph->props.deviceName, ph->queue_family, ph->timestamp_bits,
            (unsigned)ph->props.limits.timestampComputeAndGraphics,
            (double)ph->props.limits.timestampPeriod);
    return;
  }
  double *ns = calloc(n_nodes, sizeof *ns);
  prof_row *rows = calloc(n_nodes, sizeof *rows);
  char *taken = calloc(n_nodes, 1);
  if (!ns || !rows || !taken) goto done;
  double total = 0;
  for (uint32_t i = 0; i < p->n_dispatches; i++) {
    double t = (double)p->ticks[i] * p->ns_per_tick;
    if (p->node_of[i] < n_nodes) ns[p->node_of[i]] += t;
    total += t;
  }
  int n_rows = 0;
  for (uint32_t i = 0; i < n_nodes; i++) {
    int r = 0;
    while (r < n_rows && rows[r].op != nodes[i].op) r++;
    if (r == n_rows) rows[n_rows++].op = nodes[i].op;
    rows[r].nodes++;
    rows[r].ns += ns[i];
  }
  qsort(rows, (size_t)n_rows, sizeof *rows, by_time_desc);
  double runs = (double)p->runs;
  fprintf(stderr,
          "kiln[vulkan] profile: graph of %u nodes, %llu run(s), %.3f ms of node time per run\n"
          "  (%u dispatches timed on %s, timestamps of %u bits, %g ns per tick)\n"
          "  %-26s %6s %12s %7s\n",
          n_nodes, (unsigned long long)p->runs, total / runs * 1e-6, p->n_dispatches,
          ph->props.deviceName, ph->timestamp_bits, p->ns_per_tick, "op", "nodes", "ms/run",
          "share");
  for (int r = 0; r < n_rows; r++)
    fprintf(stderr, "  %-26s %6d %12.3f %6.1f%%\n", kvk_op_name(rows[r].op), rows[r].nodes,
            rows[r].ns / runs * 1e-6, total > 0 ? 100.0 * rows[r].ns / total : 0.0);

  /* The slowest nodes: a partial selection, n_nodes is small. */
  fprintf(stderr, "  slowest nodes:\n");
  for (int k = 0; k < PROF_TOP_NODES && k < (int)n_nodes; k++) {
    int64_t best = -1;
    for (uint32_t i = 0; i < n_nodes; i++)
      if (!taken[i] && (best < 0 || ns[i] > ns[best])) best = i;
    taken[best] = 1;
    char shape[KVK_SHAPE_STR];
    fprintf(stderr, "  %6lld  %-26s out %-22s %10.1f us/run\n", (long long)best,
            kvk_op_name(nodes[best].op), KVK_SHAPE(shape, &nodes[best].out),
            ns[best] / runs * 1e-3);
  }
done:
  free(ns);
  free(rows);
  free(taken);
}
