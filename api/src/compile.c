/*
 * compile.c - compiled graphs: pruning, lowering to the plugin ABI, the
 * memory planner, and running.
 *
 * kiln_graph_compile():
 *   1. prune: keep the nodes that an output or an in-place update depends on;
 *   2. lower: every kept node gets a tensor. Params and state are their
 *      storage tensor's bytes (PERSISTENT; each distinct buffer listed once);
 *      an in-place node's output is the tensor it writes. Inputs are pinned
 *      for the whole run, outputs from their definition to the end, and every
 *      other value lives from the step that writes it to its last reader;
 *   3. plan: those non-persistent tensors are placed in ONE arena buffer by
 *      first fit over live intervals (64-byte aligned), so values whose
 *      lifetimes do not overlap share bytes;
 *   4. check op support, allocate the arena, and let the plugin build its
 *      executable form.
 * A graph with ops the device lacks is partitioned with the CPU plugin
 * instead when one is loaded (fallback.c); the functions below delegate to
 * it for such a compiled graph.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

#define ARENA_ALIGN 64u

/* An input or output as the host sees it after compiling. */
typedef struct io_entry {
  const kiln_node *node;       /* key only: never dereferenced after compile */
  char label[160];             /* "input 'x' [2, 3] f32" for messages */
  int is_input, is_output;
  int live;                    /* 0: pruned input, set_input only checks the size */
  kiln_plugin_buffer *buf;
  uint64_t offset, nbytes;
  uint32_t tensor;             /* its index in the plugin graph (live only) */
} io_entry;

struct kiln_compiled {
  kiln_device *dev;
  kiln_plugin_exec *exec;
  kiln_plugin_buffer *arena;
  io_entry *io;
  uint32_t n_io;
  kiln_memory_stats stats;
  struct kiln__fallback *fb;   /* non-NULL: partitioned with the CPU (fallback.c) */
};

/* Planning record of one plugin tensor. */
typedef struct plan_tensor {
  int in_arena;
  int64_t alias;                /* >= 0: placed on this tensor's bytes (in_place_input) */
  int64_t first, last;          /* live interval in run steps (inputs: -1) */
  uint64_t size;                /* aligned bytes in the arena */
  kiln_tensor *storage;         /* persistent tensors */
} plan_tensor;

static const char *plugin_name(const kiln_device *dev) { return dev->plugin->entry->name; }

static void node_label(const kiln_node *n, char *buf, size_t size) {
  char s[128];
  kiln__shape_str(s, sizeof s, n->ndim, n->shape);
  if (n->name)
    snprintf(buf, size, "%s '%s' %s %s",
             n->kind == KILN__NODE_INPUT ? "input" : n->kind == KILN__NODE_PARAM ? "param" : "state",
             n->name, s, kiln_dtype_name(n->dtype));
  else
    snprintf(buf, size, "node %u (%s) %s %s", n->id, n->op ? kiln_op_name(n->op) : "leaf", s,
             kiln_dtype_name(n->dtype));
}

/* Wraps the plugin's last error with context. The CPU plugin's messages
 * already start with "cpu: "; the name is not repeated then. */
static kiln_status plugin_fail(kiln_status st, const kiln_device *dev, const char *what) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", kiln_last_error());
  const char *name = plugin_name(dev);
  size_t len = strlen(name);
  if (strncmp(msg, name, len) == 0 && msg[len] == ':')
    return kiln__error(st, "%s: %s", what, msg);
  return kiln__error(st, "%s: %s: %s", what, name, msg[0] ? msg : kiln_status_string(st));
}

/* The dtype op_support is asked about: that of n's first floating input,
 * else n's own. */
static kiln_dtype support_dtype(const kiln_node *n) {
  for (int k = 0; k < n->n_inputs; k++) {
    kiln_dtype d = n->inputs[k]->dtype;
    if (d == KILN_F32 || d == KILN_F16 || d == KILN_BF16) return d;
  }
  return n->dtype;
}

/* Ops whose output a plugin may take over an input's bytes when it says so
 * (KILN_OP_SUPPORT_IN_PLACE): element i of the output reads only element i
 * of each input of its size (or, for RESHAPE, is a copy of it). */
static int in_place_op(kiln_op op) {
  switch (op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV: case KILN_OP_NEG:
    case KILN_OP_RELU: case KILN_OP_TANH: case KILN_OP_SIGMOID: case KILN_OP_EXP: case KILN_OP_LOG:
    case KILN_OP_SCALE: case KILN_OP_RELU_BACKWARD: case KILN_OP_TANH_BACKWARD:
    case KILN_OP_SIGMOID_BACKWARD: case KILN_OP_COPY: case KILN_OP_RESHAPE:
      return 1;
    default:
      return 0;
  }
}

/* For op node i: the input whose bytes its output can take, or -1. The
 * input must be an arena value of the output's dtype and size that no
 * later node reads (uses[] counts the readers still to come, i's own
 * already taken off) and is not an output, and the plugin must accept the
 * op in place. i itself must not be an output (the host reads those). */
static int64_t in_place_input(const kiln_device *dev, const kiln_node *n, const int64_t *tindex,
                              const plan_tensor *pt, const int64_t *uses) {
  if (n->is_output || !in_place_op(n->op)) return -1;
  if (!(dev->plugin->api->op_support(dev->index, (uint32_t)n->op, (uint32_t)support_dtype(n)) &
        KILN_OP_SUPPORT_IN_PLACE))
    return -1;
  int64_t numel = kiln__numel(n->ndim, n->shape);
  for (int k = 0; k < n->n_inputs; k++) {
    const kiln_node *x = n->inputs[k];
    int64_t t = tindex[x->id];
    if (x->kind != KILN__NODE_OP || x->is_output || t < 0 || !pt[t].in_arena || uses[x->id] != 0 ||
        x->dtype != n->dtype || kiln__numel(x->ndim, x->shape) != numel)
      continue;
    return t;
  }
  return -1;
}

/* First-fit placement of tensor t among the already placed arena tensors
 * whose live intervals overlap t's. Returns the offset. */
static uint64_t place(const plan_tensor *pt, const uint64_t *offsets, const uint32_t *placed,
                      uint32_t n_placed, uint32_t t, uint32_t *scratch) {
  uint32_t n = 0;
  for (uint32_t k = 0; k < n_placed; k++) {
    const plan_tensor *o = &pt[placed[k]];
    if (o->first <= pt[t].last && pt[t].first <= o->last) scratch[n++] = placed[k];
  }
  /* insertion sort by offset: conflicting sets are small */
  for (uint32_t i = 1; i < n; i++) {
    uint32_t v = scratch[i];
    uint32_t j = i;
    while (j > 0 && offsets[scratch[j - 1]] > offsets[v]) { scratch[j] = scratch[j - 1]; j--; }
    scratch[j] = v;
  }
  uint64_t at = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint64_t o = offsets[scratch[i]];
    if (o >= at + pt[t].size) break;                 /* the gap before o fits */
    uint64_t end = o + pt[scratch[i]].size;
    if (end > at) at = end;
  }
  return at;
}

kiln_status kiln_graph_compile(kiln_graph *g, kiln_device *dev, kiln_compiled **out) {
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "compile: out is NULL");
  *out = NULL;
  if (!g || !dev) return kiln__error(KILN_INVALID_ARGUMENT, "compile: graph and device are required");
  if (g->status != KILN_OK)
    return kiln__error(g->status, "compile: the graph has an error: %s", g->error);
  if (kiln__fallback_needed(g, dev)) {
    kiln_compiled *fc = kiln__calloc(1, sizeof *fc);
    if (!fc) return kiln__error(KILN_OUT_OF_MEMORY, "compile: out of memory");
    fc->dev = dev;
    kiln_status fst = kiln__fallback_compile(g, dev, &fc->fb);
    if (fst != KILN_OK) {
      free(fc);
      return fst;
    }
    fc->stats.struct_size = sizeof fc->stats;
    kiln__fallback_memory(fc->fb, &fc->stats);
    *out = fc;
    return KILN_OK;
  }

  const kiln_plugin_api *api = dev->plugin->api;
  kiln_status st = KILN_OK;
  uint32_t N = g->n_nodes;
  char *live = NULL;
  int64_t *tindex = NULL, *step = NULL, *uses = NULL;
  plan_tensor *pt = NULL;
  kiln_plugin_tensor *tensors = NULL;
  kiln_plugin_node *pnodes = NULL;
  kiln_plugin_buffer **buffers = NULL;
  uint64_t *offsets = NULL;
  uint32_t *placed = NULL, *scratch = NULL;
  kiln_compiled *c = NULL;
  uint32_t n_tensors = 0, n_run = 0, n_buffers = 1; /* buffers[0] is the arena */

  live = kiln__calloc(N ? N : 1, 1);
  tindex = kiln__malloc((N ? N : 1) * sizeof *tindex);
  step = kiln__malloc((N ? N : 1) * sizeof *step);
  uses = kiln__calloc(N ? N : 1, sizeof *uses);
  pt = kiln__calloc(N ? N : 1, sizeof *pt);
  tensors = kiln__calloc(N ? N : 1, sizeof *tensors);
  pnodes = kiln__calloc(N ? N : 1, sizeof *pnodes);
  buffers = kiln__calloc(N + 1, sizeof *buffers);
  c = kiln__calloc(1, sizeof *c);
  if (!live || !tindex || !step || !uses || !pt || !tensors || !pnodes || !buffers || !c) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  c->dev = dev;

  /* 1. prune */
  int any_root = 0;
  for (uint32_t i = N; i-- > 0;) {
    kiln_node *n = g->nodes[i];
    if (n->is_output || n->inplace) live[i] = 1, any_root = 1;
    if (!live[i]) continue;
    for (int k = 0; k < n->n_inputs; k++) live[n->inputs[k]->id] = 1;
  }
  if (!any_root) {
    st = kiln__error(KILN_INVALID_ARGUMENT,
                     "compile: the graph has no outputs and no in-place updates, so nothing would run "
                     "(mark results with kiln_graph_output())");
    goto fail;
  }

  /* 2. lower: tensors and their live intervals. uses[j]: the reads of
   * value j by live nodes not lowered yet. $KILN_IN_PLACE=0: no output
   * takes an input's bytes (A/B comparisons). */
  const char *in_place_env = getenv("KILN_IN_PLACE");
  int in_place = !(in_place_env && strcmp(in_place_env, "0") == 0);
  for (uint32_t i = 0; i < N; i++)
    for (int k = 0; live[i] && g->nodes[i]->kind == KILN__NODE_OP && k < g->nodes[i]->n_inputs; k++)
      uses[g->nodes[i]->inputs[k]->id]++;
  for (uint32_t i = 0; i < N; i++) {
    kiln_node *n = g->nodes[i];
    tindex[i] = -1;
    step[i] = -1;
    if (!live[i]) continue;
    if (n->kind == KILN__NODE_OP) {
      step[i] = n_run++;
      for (int k = 0; k < n->n_inputs; k++) uses[n->inputs[k]->id]--;   /* i's reads are done */
    }
    if (n->kind == KILN__NODE_PARAM || n->kind == KILN__NODE_STATE) {
      kiln_tensor *s = n->storage;
      if (s->dev != dev) {
        char lb[160];
        node_label(n, lb, sizeof lb);
        st = kiln__error(KILN_INVALID_ARGUMENT,
                         "compile: %s lives on device '%s', but the graph is compiled for device '%s'",
                         lb, s->dev->info.name, dev->info.name);
        goto fail;
      }
      for (uint32_t t = 0; t < n_tensors; t++)
        if (pt[t].storage == s) tindex[i] = t;
      if (tindex[i] >= 0) continue;
      uint32_t b = 1;
      while (b < n_buffers && buffers[b] != s->buf) b++;
      if (b == n_buffers) buffers[n_buffers++] = s->buf;
      kiln_plugin_tensor *pt_ = &tensors[n_tensors];
      pt_->buffer = b;
      pt_->offset = s->offset;
      pt_->flags = KILN_PTENSOR_PERSISTENT;
      pt[n_tensors].storage = s;
      c->stats.persistent_bytes += s->nbytes;
      tindex[i] = n_tensors++;
    } else if (n->inplace) {
      tindex[i] = tindex[n->inplace->id];
    } else {
      plan_tensor *p = &pt[n_tensors];
      p->in_arena = 1;
      p->alias = -1;
      if (n->kind == KILN__NODE_OP) {
        int64_t a = in_place ? in_place_input(dev, n, tindex, pt, uses) : -1;
        if (a >= 0) p->alias = pt[a].alias >= 0 ? pt[a].alias : a;   /* its root */
      }
      p->first = n->kind == KILN__NODE_INPUT ? -1 : step[i];
      p->last = n->kind == KILN__NODE_INPUT ? INT64_MAX : step[i];
      uint64_t nbytes = (uint64_t)kiln__numel(n->ndim, n->shape) * kiln_dtype_size(n->dtype);
      p->size = (nbytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
      tensors[n_tensors].flags = n->kind == KILN__NODE_INPUT ? KILN_PTENSOR_INPUT : 0;
      tindex[i] = n_tensors++;
    }
    kiln_plugin_tensor *t = &tensors[tindex[i]];
    t->dtype = (uint32_t)n->dtype;
    t->ndim = (uint32_t)n->ndim;
    for (int d = 0; d < KILN_MAX_DIMS; d++) t->shape[d] = d < n->ndim ? n->shape[d] : 1;
    t->nbytes = (uint64_t)kiln__numel(n->ndim, n->shape) * kiln_dtype_size(n->dtype);
    if (n->is_output) {
      t->flags |= KILN_PTENSOR_OUTPUT;
      if (pt[tindex[i]].in_arena) pt[tindex[i]].last = INT64_MAX;
    }
    for (int k = 0; k < n->n_inputs; k++) {
      plan_tensor *p = &pt[tindex[n->inputs[k]->id]];
      if (p->in_arena && p->last < step[i]) p->last = step[i];
    }
  }

  /* A tensor placed on another's bytes keeps them taken until its own
   * last reader: its root's interval grows to cover it. Aliases come after
   * their roots, so one pass in order settles chains. */
  for (uint32_t t = 0; t < n_tensors; t++)
    if (pt[t].in_arena && pt[t].alias >= 0 && pt[pt[t].alias].last < pt[t].last)
      pt[pt[t].alias].last = pt[t].last;

  /* 3. plan the arena: inputs first, then values in run order */
  offsets = kiln__calloc(n_tensors ? n_tensors : 1, sizeof *offsets);
  placed = kiln__malloc((n_tensors ? n_tensors : 1) * sizeof *placed);
  scratch = kiln__malloc((n_tensors ? n_tensors : 1) * sizeof *scratch);
  if (!offsets || !placed || !scratch) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  uint32_t n_placed = 0;
  uint64_t arena_bytes = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t t = 0; t < n_tensors; t++) {
      if (!pt[t].in_arena || (pass == 0) != (pt[t].first < 0)) continue;
      c->stats.unplanned_bytes += pt[t].size;
      if (pt[t].alias >= 0) {   /* its root is placed: it comes earlier */
        offsets[t] = offsets[pt[t].alias];
        tensors[t].buffer = 0;
        tensors[t].offset = offsets[t];
        continue;
      }
      offsets[t] = place(pt, offsets, placed, n_placed, t, scratch);
      placed[n_placed++] = t;
      tensors[t].buffer = 0;
      tensors[t].offset = offsets[t];
      if (offsets[t] + pt[t].size > arena_bytes) arena_bytes = offsets[t] + pt[t].size;
    }
  }
  c->stats.struct_size = sizeof c->stats;
  c->stats.arena_bytes = arena_bytes;
  c->stats.n_nodes = n_run;

  /* 4. nodes, op support */
  uint32_t r = 0;
  for (uint32_t i = 0; i < N; i++) {
    kiln_node *n = g->nodes[i];
    if (!live[i] || n->kind != KILN__NODE_OP) continue;
    kiln_plugin_node *pn = &pnodes[r++];
    pn->op = (uint32_t)n->op;
    pn->n_inputs = (uint32_t)n->n_inputs;
    for (int k = 0; k < n->n_inputs; k++) pn->inputs[k] = (uint32_t)tindex[n->inputs[k]->id];
    pn->output = (uint32_t)tindex[i];
    memcpy(pn->ip, n->ip, sizeof pn->ip);
    memcpy(pn->fp, n->fp, sizeof pn->fp);
    kiln_dtype dt = support_dtype(n);
    if (!api->op_support(dev->index, (uint32_t)n->op, (uint32_t)dt)) {
      st = kiln__error(KILN_UNSUPPORTED, "compile: device '%s' does not support %s on %s (node %u)",
                       plugin_name(dev), kiln_op_name(n->op), kiln_dtype_name(dt), n->id);
      goto fail;
    }
  }

  /* 5. allocate the arena (never empty, so buffers[0] is always valid) */
  st = api->buffer_alloc(dev->pdev, arena_bytes ? arena_bytes : ARENA_ALIGN, &c->arena);
  if (st != KILN_OK) {
    char what[96];
    snprintf(what, sizeof what, "compile: allocating the %llu-byte arena",
             (unsigned long long)arena_bytes);
    plugin_fail(st, dev, what);
    c->arena = NULL;
    goto fail;
  }
  buffers[0] = c->arena;

  /* 6. the plugin builds its executable form */
  kiln_plugin_graph pg;
  memset(&pg, 0, sizeof pg);
  pg.struct_size = sizeof pg;
  pg.abi_version = KILN_PLUGIN_ABI_VERSION;
  pg.n_buffers = n_buffers;
  pg.buffers = buffers;
  pg.n_tensors = n_tensors;
  pg.tensor_stride = sizeof *tensors;
  pg.tensors = tensors;
  pg.n_nodes = n_run;
  pg.node_stride = sizeof *pnodes;
  pg.nodes = pnodes;
  st = api->graph_compile(dev->pdev, &pg, &c->exec);
  if (st != KILN_OK) {
    plugin_fail(st, dev, "compile");
    c->exec = NULL;
    goto fail;
  }

  /* 7. the host's view of inputs and outputs (every input, even pruned) */
  for (uint32_t i = 0; i < N; i++)
    if (g->nodes[i]->kind == KILN__NODE_INPUT || g->nodes[i]->is_output) c->n_io++;
  c->io = kiln__calloc(c->n_io ? c->n_io : 1, sizeof *c->io);
  if (!c->io) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  uint32_t k = 0;
  for (uint32_t i = 0; i < N; i++) {
    kiln_node *n = g->nodes[i];
    if (n->kind != KILN__NODE_INPUT && !n->is_output) continue;
    io_entry *e = &c->io[k++];
    e->node = n;
    e->is_input = n->kind == KILN__NODE_INPUT;
    e->is_output = n->is_output;
    e->live = live[i];
    node_label(n, e->label, sizeof e->label);
    e->nbytes = (uint64_t)kiln__numel(n->ndim, n->shape) * kiln_dtype_size(n->dtype);
    if (live[i]) {
      const kiln_plugin_tensor *t = &tensors[tindex[i]];
      e->buf = buffers[t->buffer];
      e->offset = t->offset;
      e->tensor = (uint32_t)tindex[i];
    }
  }

  *out = c;
  c = NULL;
  st = KILN_OK;
fail:
  if (c) {
    if (c->exec) api->graph_free(dev->pdev, c->exec);
    if (c->arena) api->buffer_free(dev->pdev, c->arena);
    free(c->io);
    free(c);
  }
  free(scratch);
  free(placed);
  free(offsets);
  free(buffers);
  free(pnodes);
  free(tensors);
  free(pt);
  free(step);
  free(uses);
  free(tindex);
  free(live);
  return st;
}

void kiln_compiled_destroy(kiln_compiled *c) {
  if (!c) return;
  if (c->fb) {
    kiln__fallback_free(c->fb);
    free(c);
    return;
  }
  const kiln_plugin_api *api = c->dev->plugin->api;
  if (c->exec) api->graph_free(c->dev->pdev, c->exec);
  if (c->arena) api->buffer_free(c->dev->pdev, c->arena);
  free(c->io);
  free(c);
}

/* The plugin's ABI 1.1 member `m` when it has one, else NULL. */
#define EXEC_MEMBER(c, m) \
  (KILN__HAS_MEMBER((c)->dev->plugin->api, kiln_plugin_api, m) ? (c)->dev->plugin->api->m : NULL)

static io_entry *find_io(kiln_compiled *c, const kiln_node *n) {
  for (uint32_t i = 0; i < c->n_io; i++)
    if (c->io[i].node == n) return &c->io[i];
  return NULL;
}

kiln_status kiln_compiled_set_input(kiln_compiled *c, const kiln_node *input, const void *data,
                                    size_t nbytes) {
  if (!c || !input || !data)
    return kiln__error(KILN_INVALID_ARGUMENT, "set_input: compiled graph, input node and data are required");
  if (c->fb) return kiln__fallback_set_input(c->fb, input, data, nbytes);
  io_entry *e = find_io(c, input);
  if (!e || !e->is_input)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "set_input: node %u is not an input of this compiled graph (make it with kiln_input())",
                       input->id);
  if (nbytes != e->nbytes)
    return kiln__error(KILN_SHAPE_MISMATCH, "set_input: %s takes %llu bytes, got %zu", e->label,
                       (unsigned long long)e->nbytes, nbytes);
  if (!e->live) return KILN_OK; /* pruned: nothing reads it */
  kiln_status st;
  if (EXEC_MEMBER(c, exec_write))
    st = c->dev->plugin->api->exec_write(c->dev->pdev, c->exec, e->tensor, data, nbytes);
  else
    st = c->dev->plugin->api->buffer_write(c->dev->pdev, e->buf, e->offset, data, nbytes);
  if (st != KILN_OK) {
    char what[200];
    snprintf(what, sizeof what, "set_input %s", e->label);
    return plugin_fail(st, c->dev, what);
  }
  return KILN_OK;
}

kiln_status kiln_compiled_run(kiln_compiled *c) {
  if (!c) return kiln__error(KILN_INVALID_ARGUMENT, "run: compiled graph is NULL");
  if (c->fb) return kiln__fallback_run(c->fb);
  kiln_status st = c->dev->plugin->api->graph_run(c->dev->pdev, c->exec);
  if (st != KILN_OK) return plugin_fail(st, c->dev, "run");
  return KILN_OK;
}

kiln_status kiln_compiled_get_output(kiln_compiled *c, const kiln_node *node, void *data,
                                     size_t nbytes) {
  return kiln_compiled_get_output_back(c, node, 0, data, nbytes);
}

/* The output entry of node, or NULL after setting the error. */
static io_entry *output_of(kiln_compiled *c, const kiln_node *node, const char *what) {
  io_entry *e = find_io(c, node);
  if (!e || !e->is_output) {
    kiln__error(KILN_INVALID_ARGUMENT,
                "%s: node %u is not an output of this compiled graph (mark it with "
                "kiln_graph_output() before compiling)",
                what, node->id);
    return NULL;
  }
  return e;
}

int kiln_compiled_output_depth(kiln_compiled *c, const kiln_node *node) {
  if (!c || !node || c->fb) return 1;
  io_entry *e = find_io(c, node);
  if (!e || !e->is_output || !e->live || !EXEC_MEMBER(c, exec_read) ||
      !EXEC_MEMBER(c, exec_history))
    return 1;
  uint32_t d = c->dev->plugin->api->exec_history(c->dev->pdev, c->exec, e->tensor);
  return d < 1 ? 1 : d > 64 ? 64 : (int)d;
}

kiln_status kiln_compiled_get_output_back(kiln_compiled *c, const kiln_node *node, int back,
                                          void *data, size_t nbytes) {
  if (!c || !node || !data)
    return kiln__error(KILN_INVALID_ARGUMENT, "get_output: compiled graph, node and data are required");
  if (back != 0) {
    int depth = kiln_compiled_output_depth(c, node);
    if (back < 0 || back >= depth)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "get_output: run %d back is out of reach: this output keeps the last %d "
                         "run%s (kiln_compiled_output_depth)",
                         back, depth, depth == 1 ? "" : "s");
  }
  if (c->fb) return kiln__fallback_get_output(c->fb, node, data, nbytes);
  io_entry *e = output_of(c, node, "get_output");
  if (!e) return KILN_INVALID_ARGUMENT;
  if (nbytes != e->nbytes)
    return kiln__error(KILN_SHAPE_MISMATCH, "get_output: %s takes %llu bytes, got %zu", e->label,
                       (unsigned long long)e->nbytes, nbytes);
  const kiln_plugin_api *api = c->dev->plugin->api;
  kiln_status st;
  if (EXEC_MEMBER(c, exec_read))
    st = api->exec_read(c->dev->pdev, c->exec, e->tensor, (uint32_t)back, data, nbytes);
  else
    st = api->buffer_read(c->dev->pdev, e->buf, e->offset, data, nbytes);
  if (st != KILN_OK) {
    char what[200];
    snprintf(what, sizeof what, "get_output %s", e->label);
    return plugin_fail(st, c->dev, what);
  }
  return KILN_OK;
}

kiln_status kiln_compiled_memory(const kiln_compiled *c, kiln_memory_stats *stats) {
  if (!c || !stats) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_compiled_memory: compiled graph and stats are required");
  uint32_t size = stats->struct_size ? stats->struct_size : (uint32_t)sizeof *stats;
  if (size > sizeof *stats) size = sizeof *stats;
  kiln_memory_stats s = c->stats;
  s.struct_size = size;
  memcpy(stats, &s, size);
  return KILN_OK;
}

kiln_status kiln_compiled_describe(const kiln_compiled *c, char *buf, size_t size) {
  if (!c || !buf || !size)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_compiled_describe: compiled graph and a buffer are required");
  if (c->fb)
    snprintf(buf, size, "%s", kiln__fallback_plan(c->fb));
  else
    snprintf(buf, size, "1 segment:\n  segment 0 on %s (%s): %u nodes\n", plugin_name(c->dev),
             c->dev->info.name, c->stats.n_nodes);
  return KILN_OK;
}
