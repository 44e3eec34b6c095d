/*
 * fallback.c - CPU fallback: compiling a graph for a device whose plugin
 * lacks some of its ops.
 *
 * When a live node's op (on its dtype) is not claimed by the chosen device
 * and a CPU plugin is loaded, kiln_graph_compile() comes here instead of
 * refusing. The graph is partitioned into SEGMENTS: maximal runs of
 * consecutive live nodes (nodes are in run order) assigned to the same
 * device, the chosen one where it supports the op, else the CPU. Each
 * segment becomes a sub-graph compiled the ordinary way on its device:
 *  - a value made by an earlier segment is an input of the sub-graph, fed
 *    before the segment runs by a copy through host memory from the
 *    producer's output (which the producer's sub-graph marks as an output);
 *  - a graph input is an input of every sub-graph that reads it;
 *  - a param or state whose storage lives on the segment's device is used
 *    in place; one on the other device is MIRRORED: a tensor on the
 *    segment's device filled from the storage before the segment runs, and
 *    copied back after it if an in-place node of the segment writes it or
 *    reads it (optimizer ops write their moments and velocity too).
 * Segments run in order, so every value is ready before it is read and
 * every in-place update is back in its storage before the next segment.
 *
 * $KILN_NO_FALLBACK=1 turns this off (an unsupported op is then refused).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

/* A value copied into a segment's sub-graph input before it runs. */
typedef struct fb_feed {
  const kiln_node *orig;     /* the node of the user's graph */
  kiln_node *sub;            /* the input leaf of this segment's sub-graph */
  int src_seg;               /* producing segment, or -1 for a graph input */
  kiln_node *src_sub;        /* the producer's node in its sub-graph */
  size_t nbytes;
} fb_feed;

/* A whole-tensor copy between devices (storage <-> mirror). */
typedef struct fb_copy {
  kiln_tensor *from, *to;
} fb_copy;

typedef struct fb_segment {
  kiln_device *dev;          /* borrowed: the chosen device or the fallback CPU */
  kiln_graph *g;             /* owned sub-graph */
  kiln_compiled *c;          /* owned */
  kiln_node **map;           /* user node id -> node of g (or NULL); owned */
  fb_feed *feeds;
  uint32_t n_feeds;
  fb_copy *pre, *post;       /* before / after the run */
  uint32_t n_pre, n_post;
  kiln_tensor **mirrors;     /* owned */
  uint32_t n_mirrors;
  uint32_t n_ops;
} fb_segment;

/* A user-graph output: where to read it. */
typedef struct fb_output {
  const kiln_node *orig;
  int seg;
  kiln_node *sub;
} fb_output;

/* A user-graph input (every one, even pruned) with its size. */
typedef struct fb_input {
  const kiln_node *orig;
  size_t nbytes;
} fb_input;

struct kiln__fallback {
  kiln_device *cpu;          /* owned: the fallback device */
  fb_segment *seg;
  uint32_t n_seg;
  fb_output *outputs;
  uint32_t n_outputs;
  fb_input *inputs;
  uint32_t n_inputs;
  void *staging;             /* host bytes for copies */
  size_t staging_size;
  char *plan;                /* kiln_compiled_describe() text */
};

static size_t node_bytes(const kiln_node *n) {
  return (size_t)kiln__numel(n->ndim, n->shape) * kiln_dtype_size(n->dtype);
}

/* The dtype op_support is asked about: that of the first floating input. */
static kiln_dtype support_dtype(const kiln_node *n) {
  for (int k = 0; k < n->n_inputs; k++) {
    kiln_dtype d = n->inputs[k]->dtype;
    if (d == KILN_F32 || d == KILN_F16 || d == KILN_BF16) return d;
  }
  return n->dtype;
}

static int supports(const kiln_device *dev, const kiln_node *n) {
  return dev->plugin->api->op_support(dev->index, (uint32_t)n->op,
                                      (uint32_t)support_dtype(n)) != 0;
}

/* live[i] = node i is needed (as in compile.c). Returns 0 if nothing is. */
static int mark_live(const kiln_graph *g, char *live) {
  int any = 0;
  for (uint32_t i = g->n_nodes; i-- > 0;) {
    const kiln_node *n = g->nodes[i];
    if (n->is_output || n->inplace) live[i] = 1, any = 1;
    if (!live[i]) continue;
    for (int k = 0; k < n->n_inputs; k++) live[n->inputs[k]->id] = 1;
  }
  return any;
}

static kiln_plugin *find_cpu(const kiln_device *dev) {
  kiln_context *ctx = dev->ctx;
  for (size_t i = 0; i < ctx->n_plugins; i++)
    if (!strcmp(ctx->plugins[i]->entry->name, "cpu")) return ctx->plugins[i];
  return NULL;
}

int kiln__fallback_needed(const kiln_graph *g, const kiln_device *dev) {
  const char *off = getenv("KILN_NO_FALLBACK");
  if ((off && *off && strcmp(off, "0")) || !strcmp(dev->plugin->entry->name, "cpu")) return 0;
  kiln_plugin *cpu = find_cpu(dev);
  if (!cpu || cpu->api->device_count() < 1) return 0;
  char *live = kiln__calloc(g->n_nodes ? g->n_nodes : 1, 1);
  if (!live) return 0;   /* the ordinary path reports the shortage */
  int missing = 0, cpu_has_all = 1;
  if (mark_live(g, live))
    for (uint32_t i = 0; i < g->n_nodes; i++) {
      const kiln_node *n = g->nodes[i];
      if (!live[i] || n->kind != KILN__NODE_OP || supports(dev, n)) continue;
      missing = 1;
      if (!cpu->api->op_support(0, (uint32_t)n->op, (uint32_t)support_dtype(n))) cpu_has_all = 0;
    }
  free(live);
  return missing && cpu_has_all;
}

/* Appends to g a copy of op node n with inputs in[] (n's fields otherwise). */
static kiln_node *clone_op(kiln_graph *g, const kiln_node *n, kiln_node *const *in) {
  if (g->n_nodes == g->cap_nodes) {
    uint32_t cap = g->cap_nodes ? g->cap_nodes * 2 : 64;
    kiln_node **nodes = kiln__realloc(g->nodes, (size_t)cap * sizeof *nodes);
    if (!nodes) return NULL;
    g->nodes = nodes;
    g->cap_nodes = cap;
  }
  kiln_node *c = kiln__calloc(1, sizeof *c);
  if (!c) return NULL;
  c->graph = g;
  c->id = g->n_nodes;
  c->kind = KILN__NODE_OP;
  c->op = n->op;
  c->dtype = n->dtype;
  c->ndim = n->ndim;
  memcpy(c->shape, n->shape, sizeof c->shape);
  c->n_inputs = n->n_inputs;
  for (int k = 0; k < n->n_inputs; k++) c->inputs[k] = in[k];
  memcpy(c->ip, n->ip, sizeof c->ip);
  memcpy(c->fp, n->fp, sizeof c->fp);
  g->nodes[g->n_nodes++] = c;
  return c;
}

static int push(void **arr, uint32_t *n, size_t elem, const void *item) {
  void *v = kiln__realloc(*arr, (size_t)(*n + 1) * elem);
  if (!v) return -1;
  memcpy((char *)v + (size_t)*n * elem, item, elem);
  *arr = v;
  (*n)++;
  return 0;
}

/* The node of segment s's sub-graph that stands for user node x, created
 * on first use (see the file comment). seg_of[] gives each op node's
 * segment. Returns NULL on failure (the error is set). */
static kiln_node *fb_ref(struct kiln__fallback *fb, uint32_t s, const int32_t *seg_of,
                         kiln_node *x) {
  fb_segment *S = &fb->seg[s];
  if (S->map[x->id]) return S->map[x->id];
  kiln_node *orig = x;
  /* An in-place node of another segment denotes its storage, which that
   * segment has updated (and copied back) before this one runs. */
  if (x->kind == KILN__NODE_OP && x->inplace && seg_of[x->id] != (int32_t)s) {
    x = kiln__storage_root(x);
    if (!x) {
      kiln__error(KILN_INTERNAL, "fallback: in-place node %u has no storage", orig->id);
      return NULL;
    }
    if (S->map[x->id]) return S->map[orig->id] = S->map[x->id];
  }
  kiln_node *sub = NULL;
  if (x->kind == KILN__NODE_INPUT) {
    sub = kiln_input(S->g, x->name, x->dtype, x->ndim, x->shape);
    fb_feed f = {.orig = x, .sub = sub, .src_seg = -1, .nbytes = node_bytes(x)};
    if (!sub || push((void **)&S->feeds, &S->n_feeds, sizeof f, &f)) goto oom;
  } else if (x->kind == KILN__NODE_PARAM || x->kind == KILN__NODE_STATE) {
    kiln_tensor *st = x->storage;
    if (st->dev != S->dev) {
      kiln_tensor *m = NULL;
      if (kiln_tensor_create(S->dev, st->dtype, st->ndim, st->shape, &m) != KILN_OK) return NULL;
      fb_copy cp = {.from = st, .to = m};
      if (push((void **)&S->mirrors, &S->n_mirrors, sizeof m, &m) ||
          push((void **)&S->pre, &S->n_pre, sizeof cp, &cp)) {
        if (S->n_mirrors == 0 || S->mirrors[S->n_mirrors - 1] != m) kiln_tensor_destroy(m);
        goto oom;
      }
      st = m;
    }
    sub = x->kind == KILN__NODE_PARAM ? kiln_param(S->g, x->name, st) : kiln_state(S->g, x->name, st);
    if (!sub) goto oom;
  } else {
    /* A value computed by an earlier segment. */
    int32_t src = seg_of[x->id];
    if (src < 0 || src >= (int32_t)s || !fb->seg[src].map[x->id]) {
      kiln__error(KILN_INTERNAL, "fallback: node %u is read by segment %u before it is made", x->id,
                  s);
      return NULL;
    }
    kiln_node *src_sub = fb->seg[src].map[x->id];
    char name[32];
    snprintf(name, sizeof name, "from segment %d", src);
    sub = kiln_input(S->g, name, x->dtype, x->ndim, x->shape);
    fb_feed f = {.orig = x, .sub = sub, .src_seg = src, .src_sub = src_sub,
                 .nbytes = node_bytes(x)};
    if (!sub || push((void **)&S->feeds, &S->n_feeds, sizeof f, &f)) goto oom;
    src_sub->is_output = 1;
  }
  S->map[x->id] = sub;
  S->map[orig->id] = sub;
  return sub;
oom:
  kiln__error(KILN_OUT_OF_MEMORY, "fallback: out of memory building segment %u", s);
  return NULL;
}

/* If sub_leaf (written in place in segment S) is a mirror, schedules its
 * copy back to the storage after S runs. Returns 0, or -1 out of memory. */
static int note_written(fb_segment *S, const kiln_node *sub_leaf) {
  if (!sub_leaf || !sub_leaf->storage) return 0;
  for (uint32_t j = 0; j < S->n_post; j++)
    if (S->post[j].from == sub_leaf->storage) return 0;
  for (uint32_t i = 0; i < S->n_pre; i++)
    if (S->pre[i].to == sub_leaf->storage) {
      fb_copy back = {.from = S->pre[i].to, .to = S->pre[i].from};
      return push((void **)&S->post, &S->n_post, sizeof back, &back);
    }
  return 0;
}

void kiln__fallback_free(struct kiln__fallback *fb) {
  if (!fb) return;
  for (uint32_t s = 0; s < fb->n_seg; s++) {
    fb_segment *S = &fb->seg[s];
    kiln_compiled_destroy(S->c);
    kiln_graph_destroy(S->g);
    for (uint32_t i = 0; i < S->n_mirrors; i++) kiln_tensor_destroy(S->mirrors[i]);
    free(S->mirrors);
    free(S->map);
    free(S->feeds);
    free(S->pre);
    free(S->post);
  }
  free(fb->seg);
  free(fb->outputs);
  free(fb->inputs);
  free(fb->staging);
  free(fb->plan);
  kiln_device_close(fb->cpu);
  free(fb);
}

/* Appends printf text to fb->plan. */
static void plan_add(struct kiln__fallback *fb, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void plan_add(struct kiln__fallback *fb, size_t *len, size_t *cap, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = (int)sizeof line - 1;
  if (*len + (size_t)n + 1 > *cap) {
    size_t nc = (*cap ? *cap * 2 : 1024) + (size_t)n;
    char *p = kiln__realloc(fb->plan, nc);
    if (!p) return;
    fb->plan = p;
    *cap = nc;
  }
  memcpy(fb->plan + *len, line, (size_t)n + 1);
  *len += (size_t)n;
}

static void build_plan(struct kiln__fallback *fb) {
  size_t len = 0, cap = 0;
  plan_add(fb, &len, &cap, "%u segments (CPU fallback for ops the device lacks):\n", fb->n_seg);
  for (uint32_t s = 0; s < fb->n_seg; s++) {
    fb_segment *S = &fb->seg[s];
    plan_add(fb, &len, &cap, "  segment %u on %s (%s): %u nodes:", s, S->dev->plugin->entry->name,
             S->dev->info.name, S->n_ops);
    for (uint32_t i = 0; i < S->g->n_nodes; i++)
      if (S->g->nodes[i]->kind == KILN__NODE_OP)
        plan_add(fb, &len, &cap, " %s", kiln_op_name(S->g->nodes[i]->op));
    plan_add(fb, &len, &cap, "\n");
    uint64_t in_bytes = 0;
    uint32_t n_in = 0;
    for (uint32_t i = 0; i < S->n_feeds; i++)
      if (S->feeds[i].src_seg >= 0) n_in++, in_bytes += S->feeds[i].nbytes;
    if (n_in) plan_add(fb, &len, &cap, "    copies in %u values from earlier segments (%llu bytes)\n",
                       n_in, (unsigned long long)in_bytes);
    if (S->n_pre)
      plan_add(fb, &len, &cap, "    mirrors %u params/state from %s, writes %u back\n", S->n_pre,
               S->pre[0].from->dev->plugin->entry->name, S->n_post);
  }
}

kiln_status kiln__fallback_compile(kiln_graph *g, kiln_device *dev, struct kiln__fallback **out) {
  kiln_status st = KILN_OK;
  uint32_t N = g->n_nodes;
  char *live = kiln__calloc(N ? N : 1, 1);
  int32_t *seg_of = kiln__malloc((N ? N : 1) * sizeof *seg_of);
  struct kiln__fallback *fb = kiln__calloc(1, sizeof *fb);
  if (!live || !seg_of || !fb) goto oom;
  mark_live(g, live);
  kiln_plugin *cpu = find_cpu(dev);
  if (!cpu) {
    st = kiln__error(KILN_UNSUPPORTED, "compile: CPU fallback needs the cpu plugin, none is loaded");
    goto fail;
  }
  /* Params and state must live on the chosen device, as without fallback. */
  for (uint32_t i = 0; i < N; i++) {
    const kiln_node *n = g->nodes[i];
    if (!live[i] || (n->kind != KILN__NODE_PARAM && n->kind != KILN__NODE_STATE)) continue;
    if (n->storage->dev != dev) {
      st = kiln__error(KILN_INVALID_ARGUMENT,
                       "compile: %s '%s' lives on device '%s', but the graph is compiled for "
                       "device '%s'", n->kind == KILN__NODE_PARAM ? "param" : "state",
                       n->name ? n->name : "unnamed", n->storage->dev->info.name, dev->info.name);
      goto fail;
    }
  }
  if ((st = kiln_device_open(dev->ctx, "cpu", 0, &fb->cpu)) != KILN_OK) goto fail;

  /* 1. partition into segments */
  int last_dev = -1;
  for (uint32_t i = 0; i < N; i++) {
    const kiln_node *n = g->nodes[i];
    seg_of[i] = -1;
    if (!live[i] || n->kind != KILN__NODE_OP) continue;
    int on = supports(dev, n) ? 0 : 1;
    if (on != last_dev) {
      fb_segment S = {.dev = on ? fb->cpu : dev};
      if (push((void **)&fb->seg, &fb->n_seg, sizeof S, &S)) goto oom;
      fb_segment *P = &fb->seg[fb->n_seg - 1];
      P->map = kiln__calloc(N ? N : 1, sizeof *P->map);
      if (!P->map || kiln_graph_create(&P->g) != KILN_OK) goto oom;
      last_dev = on;
    }
    seg_of[i] = (int32_t)fb->n_seg - 1;
  }

  /* 2. build each segment's sub-graph in run order */
  for (uint32_t i = 0; i < N; i++) {
    kiln_node *n = g->nodes[i];
    if (seg_of[i] < 0) continue;
    uint32_t s = (uint32_t)seg_of[i];
    fb_segment *S = &fb->seg[s];
    kiln_node *in[KILN_OP_MAX_INPUTS];
    for (int k = 0; k < n->n_inputs; k++)
      if (!(in[k] = fb_ref(fb, s, seg_of, n->inputs[k]))) {
        st = kiln_graph_status(S->g) != KILN_OK ? kiln_graph_status(S->g) : KILN_OUT_OF_MEMORY;
        goto fail;
      }
    kiln_node *c = clone_op(S->g, n, in);
    if (!c) goto oom;
    if (n->inplace) {
      c->inplace = fb_ref(fb, s, seg_of, n->inplace);
      if (!c->inplace) {
        st = KILN_OUT_OF_MEMORY;
        goto fail;
      }
      if (note_written(S, c->inplace)) goto oom;
      /* Optimizer ops also write some of their other persistent inputs (the
       * moments, the velocity): every mirror an in-place node reads is
       * copied back. */
      for (int k = 0; k < c->n_inputs; k++)
        if (note_written(S, c->inputs[k])) goto oom;
    }
    c->is_output = n->is_output;
    S->map[i] = c;
    S->n_ops++;
    if (n->is_output) {
      fb_output o = {.orig = n, .seg = (int)s, .sub = c};
      if (push((void **)&fb->outputs, &fb->n_outputs, sizeof o, &o)) goto oom;
    }
  }
  for (uint32_t i = 0; i < N; i++) {
    kiln_node *n = g->nodes[i];
    if (n->kind == KILN__NODE_INPUT) {
      fb_input in = {.orig = n, .nbytes = node_bytes(n)};
      if (push((void **)&fb->inputs, &fb->n_inputs, sizeof in, &in)) goto oom;
    }
    if (n->is_output && n->kind != KILN__NODE_OP) {
      char s[128];
      st = kiln__error(KILN_UNSUPPORTED,
                       "compile: with the CPU fallback, outputs must be computed nodes; node %u "
                       "(%s leaf %s) is a leaf",
                       n->id, n->name ? n->name : "unnamed", kiln__shape_str(s, sizeof s, n->ndim, n->shape));
      goto fail;
    }
  }

  /* 3. compile the segments; size the staging area */
  for (uint32_t s = 0; s < fb->n_seg; s++) {
    fb_segment *S = &fb->seg[s];
    if ((st = kiln_graph_compile(S->g, S->dev, &S->c)) != KILN_OK) {
      char msg[1024];
      snprintf(msg, sizeof msg, "%s", kiln_last_error());
      st = kiln__error(st, "compile: CPU fallback, segment %u on %s: %s", s,
                       S->dev->plugin->entry->name, msg);
      goto fail;
    }
    for (uint32_t k = 0; k < S->n_feeds; k++)
      if (S->feeds[k].nbytes > fb->staging_size) fb->staging_size = S->feeds[k].nbytes;
    for (uint32_t k = 0; k < S->n_pre; k++)
      if (S->pre[k].from->nbytes > fb->staging_size) fb->staging_size = S->pre[k].from->nbytes;
  }
  fb->staging = kiln__malloc(fb->staging_size ? fb->staging_size : 1);
  if (!fb->staging) goto oom;
  build_plan(fb);
  *out = fb;
  fb = NULL;
  goto done;

oom:
  st = kiln__error(KILN_OUT_OF_MEMORY, "compile: out of memory partitioning %u nodes for the CPU "
                   "fallback", N);
fail:
  kiln__fallback_free(fb);
done:
  free(seg_of);
  free(live);
  return st;
}

kiln_status kiln__fallback_set_input(struct kiln__fallback *fb, const kiln_node *input,
                                     const void *data, size_t nbytes) {
  const fb_input *in = NULL;
  for (uint32_t i = 0; i < fb->n_inputs; i++)
    if (fb->inputs[i].orig == input) in = &fb->inputs[i];
  if (!in)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "set_input: node %u is not an input of this compiled graph (make it with "
                       "kiln_input())", input->id);
  if (nbytes != in->nbytes)
    return kiln__error(KILN_SHAPE_MISMATCH, "set_input: input '%s' takes %zu bytes, got %zu",
                       input->name ? input->name : "unnamed", in->nbytes, nbytes);
  for (uint32_t s = 0; s < fb->n_seg; s++)
    for (uint32_t k = 0; k < fb->seg[s].n_feeds; k++) {
      const fb_feed *f = &fb->seg[s].feeds[k];
      if (f->src_seg >= 0 || f->orig != input) continue;
      kiln_status st = kiln_compiled_set_input(fb->seg[s].c, f->sub, data, nbytes);
      if (st != KILN_OK) return st;
    }
  return KILN_OK;
}

static kiln_status copy_tensor(struct kiln__fallback *fb, kiln_tensor *from, kiln_tensor *to) {
  kiln_status st = kiln_tensor_download(from, fb->staging, from->nbytes);
  if (st == KILN_OK) st = kiln_tensor_upload(to, fb->staging, to->nbytes);
  return st;
}

kiln_status kiln__fallback_run(struct kiln__fallback *fb) {
  kiln_status st;
  for (uint32_t s = 0; s < fb->n_seg; s++) {
    fb_segment *S = &fb->seg[s];
    for (uint32_t k = 0; k < S->n_pre; k++)
      if ((st = copy_tensor(fb, S->pre[k].from, S->pre[k].to)) != KILN_OK) return st;
    for (uint32_t k = 0; k < S->n_feeds; k++) {
      const fb_feed *f = &S->feeds[k];
      if (f->src_seg < 0) continue;
      st = kiln_compiled_get_output(fb->seg[f->src_seg].c, f->src_sub, fb->staging, f->nbytes);
      if (st == KILN_OK) st = kiln_compiled_set_input(S->c, f->sub, fb->staging, f->nbytes);
      if (st != KILN_OK) return st;
    }
    if ((st = kiln_compiled_run(S->c)) != KILN_OK) return st;
    for (uint32_t k = 0; k < S->n_post; k++)
      if ((st = copy_tensor(fb, S->post[k].from, S->post[k].to)) != KILN_OK) return st;
  }
  return KILN_OK;
}

kiln_status kiln__fallback_get_output(struct kiln__fallback *fb, const kiln_node *node, void *data,
                                      size_t nbytes) {
  for (uint32_t i = 0; i < fb->n_outputs; i++)
    if (fb->outputs[i].orig == node)
      return kiln_compiled_get_output(fb->seg[fb->outputs[i].seg].c, fb->outputs[i].sub, data,
                                      nbytes);
  return kiln__error(KILN_INVALID_ARGUMENT,
                     "get_output: node %u is not an output of this compiled graph (mark it with "
                     "kiln_graph_output() before compiling)", node->id);
}

void kiln__fallback_memory(const struct kiln__fallback *fb, kiln_memory_stats *total) {
  for (uint32_t s = 0; s < fb->n_seg; s++) {
    kiln_memory_stats m = {.struct_size = sizeof m};
    if (kiln_compiled_memory(fb->seg[s].c, &m) != KILN_OK) continue;
    total->arena_bytes += m.arena_bytes;
    total->unplanned_bytes += m.unplanned_bytes;
    total->persistent_bytes += m.persistent_bytes;
    total->n_nodes += m.n_nodes;
  }
}

const char *kiln__fallback_plan(const struct kiln__fallback *fb) {
  return fb->plan ? fb->plan : "";
}
