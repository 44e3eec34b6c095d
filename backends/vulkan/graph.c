/*
 * graph.c - compile a graph into ONE command buffer; run = resubmit it.
 *
 * graph_compile:
 *   1. copies and checks every node against kiln/ops.h: op known and
 *      implemented here, input count, dtypes, tensor bytes inside their
 *      buffers; then the op family validates shapes and parameters and plans
 *      its dispatches (shader, specialization constants, bindings, push
 *      constants, group counts);
 *   2. gets (or creates) each dispatch's pipeline from the device's cache and
 *      writes one descriptor set per dispatch. A tensor is bound at its offset
 *      rounded down to minStorageBufferOffsetAlignment; the remainder is
 *      passed as an element offset in the push constants (the host places
 *      tensors at 64 bytes, which some devices do not accept as an offset);
 *   3. records the dispatches in node order into a command buffer per
 *      frame (vk-impl.h), between the frame's input and output copies
 *      (exec_io.c). A barrier goes in only before a dispatch that reads
 *      bytes an earlier dispatch (since the last barrier) wrote, or writes
 *      bytes an earlier one read or wrote: byte ranges per VkBuffer decide,
 *      so independent nodes run without one.
 * graph_run resubmits the next frame's command buffer with its fence and
 * returns; it waits first only if that frame (two runs back) is still in
 * flight.
 * With $KILN_PROFILE the buffer also writes timestamps around each dispatch
 * (profile.c), read after each run's fence and printed by graph_free.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk-impl.h"

/* ---- the op table --------------------------------------------------------- */

typedef struct kvk_op_desc {
  const char *name;
  int min_inputs, max_inputs;
  kvk_plan_fn plan;             /* NULL: unsupported on Vulkan (op_support reports 0) */
  int elementwise;              /* output may exactly alias a same-shaped input */
  int in_place;                 /* output is inputs[0] */
} kvk_op_desc;

#define EW kvk_elementwise_plan
static const kvk_op_desc kvk_ops[KILN_OP_COUNT_] = {
    [KILN_OP_ADD] = {"add", 2, 2, EW, 1, 0},
    [KILN_OP_SUB] = {"sub", 2, 2, EW, 1, 0},
    [KILN_OP_MUL] = {"mul", 2, 2, EW, 1, 0},
    [KILN_OP_DIV] = {"div", 2, 2, EW, 1, 0},
    [KILN_OP_NEG] = {"neg", 1, 1, EW, 1, 0},
    [KILN_OP_RELU] = {"relu", 1, 1, EW, 1, 0},
    [KILN_OP_TANH] = {"tanh", 1, 1, EW, 1, 0},
    [KILN_OP_SIGMOID] = {"sigmoid", 1, 1, EW, 1, 0},
    [KILN_OP_EXP] = {"exp", 1, 1, EW, 1, 0},
    [KILN_OP_LOG] = {"log", 1, 1, EW, 1, 0},
    [KILN_OP_SCALE] = {"scale", 1, 1, EW, 1, 0},
    [KILN_OP_RELU_BACKWARD] = {"relu_backward", 2, 2, EW, 1, 0},
    [KILN_OP_TANH_BACKWARD] = {"tanh_backward", 2, 2, EW, 1, 0},
    [KILN_OP_SIGMOID_BACKWARD] = {"sigmoid_backward", 2, 2, EW, 1, 0},
    [KILN_OP_MATMUL] = {"matmul", 2, 2, kvk_matmul_plan, 0, 0},
    [KILN_OP_SUM] = {"sum", 1, 1, kvk_reduce_plan, 0, 0},
    [KILN_OP_MEAN] = {"mean", 1, 1, kvk_reduce_plan, 0, 0},
    [KILN_OP_EXPAND] = {"expand", 1, 1, kvk_reduce_plan, 0, 0},
    [KILN_OP_SOFTMAX] = {"softmax", 1, 1, kvk_softmax_plan, 0, 0},
    [KILN_OP_LOG_SOFTMAX] = {"log_softmax", 1, 1, kvk_softmax_plan, 0, 0},
    [KILN_OP_SOFTMAX_BACKWARD] = {"softmax_backward", 2, 2, kvk_softmax_plan, 0, 0},
    [KILN_OP_LOG_SOFTMAX_BACKWARD] = {"log_softmax_backward", 2, 2, kvk_softmax_plan, 0, 0},
    [KILN_OP_CROSS_ENTROPY] = {"cross_entropy", 2, 2, kvk_softmax_plan, 0, 0},
    [KILN_OP_CROSS_ENTROPY_BACKWARD] = {"cross_entropy_backward", 3, 3, kvk_softmax_plan, 0, 0},
    [KILN_OP_RESHAPE] = {"reshape", 1, 1, kvk_layout_plan, 1, 0},
    [KILN_OP_TRANSPOSE] = {"transpose", 1, 1, kvk_layout_plan, 0, 0},
    [KILN_OP_COPY] = {"copy", 1, 1, EW, 1, 0},
    [KILN_OP_CAST] = {"cast", 1, 1, EW, 0, 0},   /* x may be narrower than y: never in place */
    [KILN_OP_FILL] = {"fill", 0, 0, EW, 1, 0},
    [KILN_OP_CONV2D] = {"conv2d", 2, 3, kvk_conv_plan, 0, 0},
    [KILN_OP_CONV2D_BACKWARD_INPUT] = {"conv2d_backward_input", 2, 2, kvk_conv_plan, 0, 0},
    [KILN_OP_CONV2D_BACKWARD_WEIGHT] = {"conv2d_backward_weight", 2, 2, kvk_conv_plan, 0, 0},
    [KILN_OP_MAXPOOL2D] = {"maxpool2d", 1, 1, kvk_pool_plan, 0, 0},
    [KILN_OP_MAXPOOL2D_BACKWARD] = {"maxpool2d_backward", 2, 2, kvk_pool_plan, 0, 0},
    [KILN_OP_AVGPOOL2D] = {"avgpool2d", 1, 1, kvk_pool_plan, 0, 0},
    [KILN_OP_AVGPOOL2D_BACKWARD] = {"avgpool2d_backward", 1, 1, kvk_pool_plan, 0, 0},
    [KILN_OP_SGD] = {"sgd", 2, 3, kvk_optim_plan, 0, 1},
    [KILN_OP_ADAM] = {"adam", 5, 6, kvk_optim_plan, 0, 1},
    [KILN_OP_INCREMENT] = {"increment", 1, 1, kvk_optim_plan, 0, 1},
    [KILN_OP_EMBEDDING] = {"embedding", 2, 2, kvk_seq_plan, 0, 0},
    [KILN_OP_EMBEDDING_BACKWARD] = {"embedding_backward", 2, 2, kvk_seq_plan, 0, 0},
    [KILN_OP_SLICE] = {"slice", 1, 1, kvk_seq_plan, 0, 0},
    [KILN_OP_SLICE_BACKWARD] = {"slice_backward", 1, 1, kvk_seq_plan, 0, 0},
    [KILN_OP_DROPOUT] = {"dropout", 2, 2, kvk_seq_plan, 0, 0},
    [KILN_OP_CLIP_COEF] = {"clip_coef", 1, 1, kvk_seq_plan, 0, 0},
    [KILN_OP_ASSIGN] = {"assign", 2, 2, kvk_seq_plan, 0, 1},
    [KILN_OP_LAYERNORM] = {"layernorm", 3, 3, kvk_transformer_plan, 0, 0},
    [KILN_OP_LAYERNORM_BACKWARD] = {"layernorm_backward", 3, 3, kvk_transformer_plan, 0, 0},
    [KILN_OP_LAYERNORM_BACKWARD_PARAMS] = {"layernorm_backward_params", 2, 2, kvk_transformer_plan,
                                           0, 0},
    [KILN_OP_GELU] = {"gelu", 1, 1, kvk_transformer_plan, 1, 0},
    [KILN_OP_GELU_BACKWARD] = {"gelu_backward", 2, 2, kvk_transformer_plan, 1, 0},
    [KILN_OP_ATTENTION] = {"attention", 1, 1, kvk_transformer_plan, 0, 0},
    [KILN_OP_ATTENTION_BACKWARD] = {"attention_backward", 3, 3, kvk_transformer_plan, 0, 0},
    [KILN_OP_LR_SCHEDULE] = {"lr_schedule", 1, 1, kvk_transformer_plan, 0, 0},
};
#undef EW

static const kvk_op_desc *op_desc(uint32_t op) {
  if (op >= KILN_OP_COUNT_ || !kvk_ops[op].name) return NULL;
  return &kvk_ops[op];
}

const char *kvk_op_name(uint32_t op) {
  const kvk_op_desc *d = op_desc(op);
  return d ? d->name : "unknown";
}

int kvk_op_supported(uint32_t op) {
  const kvk_op_desc *d = op_desc(op);
  return d && d->plan;
}

/* KILN_OP_SUPPORT_IN_PLACE: the elementwise ops with an input (not FILL),
 * GELU and its gradient. Their shaders (unary.comp, binary.comp,
 * gelu.comp) read element i of a same-sized
 * input and write element i of the output in the same invocation, so an
 * output placed exactly on such an input is safe; the barriers come from
 * byte ranges (record), and a RESHAPE onto its own input's bytes records
 * no dispatch at all. */
int kvk_op_in_place(uint32_t op) {
  const kvk_op_desc *d = op_desc(op);
  return d && d->plan && d->elementwise && d->min_inputs > 0;
}

/* ---- helpers for the op families ------------------------------------------ */

char *kvk_shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
  size_t len = 0;
  if (size == 0) return buf;
  buf[0] = '\0';
  len += (size_t)snprintf(buf + len, size - len, "[");
  for (int i = 0; i < ndim && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (len < size) snprintf(buf + len, size - len, "]");
  return buf;
}

kiln_status kvk_node_error(int index, const kvk_node *n, kiln_status st, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kvk_host->set_error("vulkan: node %d (%s): %s", index, kvk_op_name(n->op), msg);
  return st;
}

int kvk_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                        int64_t *out) {
  int n = na > nb ? na : nb;
  for (int i = 0; i < n; i++) {
    int ia = na - n + i, ib = nb - n + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1) return -1;
    out[i] = da == 1 ? db : da;
  }
  *nout = n;
  return 0;
}

int kvk_same_shape(const kvk_tensor *a, const kvk_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

kvk_dispatch *kvk_plan_add(kvk_plan *p, int index, const kvk_node *n) {
  if (p->n == p->cap) {
    uint32_t cap = p->cap ? p->cap * 2 : 16;
    kvk_dispatch *nd = realloc(p->d, cap * sizeof *nd);
    if (!nd) {
      kvk_node_error(index, n, KILN_OUT_OF_MEMORY, "out of host memory planning dispatches");
      return NULL;
    }
    p->d = nd;
    p->cap = cap;
  }
  kvk_dispatch *d = &p->d[p->n++];
  memset(d, 0, sizeof *d);
  d->node = index;
  return d;
}

kvk_tensor *kvk_plan_scratch(kvk_plan *p, int index, const kvk_node *n, uint64_t numel) {
  if (p->n_scratch == p->cap_scratch) {
    uint32_t cap = p->cap_scratch ? p->cap_scratch * 2 : 4;
    kvk_tensor **ns = realloc(p->scratch, cap * sizeof *ns);
    if (!ns) {
      kvk_node_error(index, n, KILN_OUT_OF_MEMORY, "out of host memory planning scratch buffers");
      return NULL;
    }
    p->scratch = ns;
    p->cap_scratch = cap;
  }
  kvk_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    kvk_node_error(index, n, KILN_OUT_OF_MEMORY, "out of host memory planning scratch buffers");
    return NULL;
  }
  t->dtype = KILN_F32;
  t->ndim = 1;
  for (int i = 0; i < KILN_MAX_DIMS; i++) t->shape[i] = 1;
  t->shape[0] = (int64_t)numel;
  t->numel = (int64_t)numel;
  t->nbytes = numel * 4;
  if (kvk_buffer_alloc(p->dev, t->nbytes ? t->nbytes : 4, &t->buffer) != KILN_OK) {
    free(t);
    return NULL;
  }
  p->scratch[p->n_scratch++] = t;
  return t;
}

static void free_scratch(kiln_plugin_device *dev, kvk_tensor **scratch, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    kvk_buffer_free(dev, scratch[i]->buffer);
    free(scratch[i]);
  }
  free(scratch);
}

void kvk_param_u(kvk_dispatch *d, uint64_t v) {
  if (d->n_params < KVK_PUSH_WORDS) d->params[d->n_params++] = (uint32_t)v;
}

void kvk_param_f(kvk_dispatch *d, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  kvk_param_u(d, u);
}

uint32_t kvk_groups_1d(const kiln_plugin_device *dev, uint64_t n, uint32_t wg) {
  uint64_t g = (n + wg - 1) / wg;
  uint64_t cap = dev->phys->props.limits.maxComputeWorkGroupCount[0];
  if (cap > 65535) cap = 65535;   /* the shaders loop over the rest */
  if (g > cap) g = cap;
  return g ? (uint32_t)g : 1;
}

uint32_t kvk_pow2_wg(uint64_t n, uint32_t lo, uint32_t cap) {
  uint32_t w = lo;
  while (w * 2 <= cap && w * 2 <= n) w *= 2;
  return w;
}

/* ---- compile -------------------------------------------------------------- */

static uint64_t dtype_size(uint32_t dt) {
  switch (dt) {
    case KILN_F32: case KILN_I32: return 4;
    case KILN_F16: case KILN_BF16: return 2;
    case KILN_U8: return 1;
    default: return 0;
  }
}

static const char *dtype_name(uint32_t dt) {
  switch (dt) {
    case KILN_F32: return "f32";
    case KILN_F16: return "f16";
    case KILN_BF16: return "bf16";
    case KILN_I32: return "i32";
    case KILN_U8: return "u8";
    default: return "unknown";
  }
}

static kiln_status resolve_tensor(int index, const kvk_node *n, const kiln_plugin_graph *g,
                                  uint32_t ti, const char *role, kvk_tensor *t) {
  if (ti >= g->n_tensors)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "%s is tensor %u, but the graph has %u tensors", role, ti, g->n_tensors);
  const kiln_plugin_tensor *d = kiln_plugin_graph_tensor(g, ti);
  if (d->ndim > KILN_MAX_DIMS)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "%s (tensor %u) has rank %u > %d", role,
                          ti, d->ndim, KILN_MAX_DIMS);
  memset(t, 0, sizeof *t);
  t->dtype = d->dtype;
  t->ndim = (int)d->ndim;
  t->numel = 1;
  for (int i = 0; i < KILN_MAX_DIMS; i++) {
    t->shape[i] = i < t->ndim ? d->shape[i] : 1;
    if (i < t->ndim) {
      if (d->shape[i] < 0 || (d->shape[i] > 0 && t->numel > INT64_MAX / 4 / d->shape[i])) {
        char s[KVK_SHAPE_STR];
        return kvk_node_error(index, n, KILN_INVALID_ARGUMENT, "%s (tensor %u) has an invalid "
                              "shape %s", role, ti, kvk_shape_str(s, sizeof s, t->ndim, d->shape));
      }
      t->numel *= d->shape[i];
    }
  }
  uint64_t es = dtype_size(d->dtype);
  if (es == 0)
    return kvk_node_error(index, n, KILN_UNSUPPORTED, "%s (tensor %u) has unknown dtype %u", role,
                          ti, d->dtype);
  uint64_t nbytes = (uint64_t)t->numel * es;
  char s[KVK_SHAPE_STR];
  if (d->nbytes != nbytes)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "%s (tensor %u) %s %s states %llu bytes, but needs %llu", role, ti,
                          dtype_name(d->dtype), KVK_SHAPE(s, t), (unsigned long long)d->nbytes,
                          (unsigned long long)nbytes);
  if (d->buffer >= g->n_buffers || !g->buffers[d->buffer])
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "%s (tensor %u) is in buffer %u, but the graph has %u buffers", role, ti,
                          d->buffer, g->n_buffers);
  kiln_plugin_buffer *b = g->buffers[d->buffer];
  if (d->offset > b->size || nbytes > b->size - d->offset)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "%s (tensor %u): bytes [%llu, %llu) lie outside buffer %u of %llu bytes",
                          role, ti, (unsigned long long)d->offset,
                          (unsigned long long)(d->offset + nbytes), d->buffer,
                          (unsigned long long)b->size);
  if (d->offset % 4 != 0)
    return kvk_node_error(index, n, KILN_INVALID_ARGUMENT,
                          "%s (tensor %u): offset %llu is not a multiple of 4 bytes", role, ti,
                          (unsigned long long)d->offset);
  if (t->numel > (int64_t)UINT32_MAX / 2)
    return kvk_node_error(index, n, KILN_UNSUPPORTED,
                          "%s (tensor %u) %s has %lld elements; the Vulkan shaders index with 32 "
                          "bits (at most 2^31 - 1 elements)",
                          role, ti, KVK_SHAPE(s, t), (long long)t->numel);
  t->buffer = b;
  t->offset = d->offset;
  t->nbytes = nbytes;
  return KILN_OK;
}

static int overlaps(const kvk_tensor *a, const kvk_tensor *b) {
  return a->buffer == b->buffer && a->nbytes && b->nbytes && a->offset < b->offset + b->nbytes &&
         b->offset < a->offset + a->nbytes;
}

static kiln_status check_node(const kiln_plugin_graph *g, uint32_t index, kvk_node *n) {
  const kiln_plugin_node *pn = kiln_plugin_graph_node(g, index);
  int ix = (int)index;
  memset(n, 0, sizeof *n);
  n->op = pn->op;
  const kvk_op_desc *d = op_desc(pn->op);
  if (!d) {
    kvk_host->set_error("vulkan: node %d: unknown op %u (this plugin knows kiln/ops.h of ABI "
                        "%u.%u)", ix, pn->op, KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR);
    return KILN_UNSUPPORTED;
  }
  if (!d->plan)
    return kvk_node_error(ix, n, KILN_UNSUPPORTED,
                          "is not supported by the Vulkan plugin (op_support reports 0); run "
                          "this graph on the cpu backend");
  if ((int)pn->n_inputs < d->min_inputs || (int)pn->n_inputs > d->max_inputs) {
    if (d->min_inputs == d->max_inputs)
      return kvk_node_error(ix, n, KILN_INVALID_ARGUMENT, "expects %d inputs, got %u",
                            d->min_inputs, pn->n_inputs);
    return kvk_node_error(ix, n, KILN_INVALID_ARGUMENT, "expects %d to %d inputs, got %u",
                          d->min_inputs, d->max_inputs, pn->n_inputs);
  }
  if (pn->flags != 0)
    return kvk_node_error(ix, n, KILN_INVALID_ARGUMENT, "flags are reserved and must be 0, got %u",
                          pn->flags);
  n->n_inputs = (int)pn->n_inputs;
  memcpy(n->ip, pn->ip, sizeof n->ip);
  memcpy(n->fp, pn->fp, sizeof n->fp);
  kiln_status st;
  char s[KVK_SHAPE_STR];
  for (int i = 0; i < n->n_inputs; i++) {
    char role[32];
    snprintf(role, sizeof role, "input %d", i);
    st = resolve_tensor(ix, n, g, pn->inputs[i], role, &n->in[i]);
    if (st != KILN_OK) return st;
    int want_i32 = (pn->op == KILN_OP_CROSS_ENTROPY && i == 1) ||
                   (pn->op == KILN_OP_CROSS_ENTROPY_BACKWARD && i == 2) ||
                   ((pn->op == KILN_OP_EMBEDDING || pn->op == KILN_OP_EMBEDDING_BACKWARD) &&
                    i == 1);
    uint32_t want = want_i32 ? KILN_I32 : KILN_F32;
    uint32_t dt = n->in[i].dtype;
    if (pn->op == KILN_OP_CAST && (dt == KILN_U8 || dt == KILN_I32)) want = dt;
    if (dt != want)
      return kvk_node_error(ix, n, KILN_DTYPE_MISMATCH, "input %d %s has dtype %s; expected %s", i,
                            KVK_SHAPE(s, &n->in[i]), dtype_name(n->in[i].dtype), dtype_name(want));
  }
  st = resolve_tensor(ix, n, g, pn->output, "output", &n->out);
  if (st != KILN_OK) return st;
  if (n->out.dtype != KILN_F32)
    return kvk_node_error(ix, n, KILN_DTYPE_MISMATCH, "output %s has dtype %s; expected f32",
                          KVK_SHAPE(s, &n->out), dtype_name(n->out.dtype));
  if (d->in_place) {
    if (n->out.buffer != n->in[0].buffer || n->out.offset != n->in[0].offset)
      return kvk_node_error(ix, n, KILN_INVALID_ARGUMENT,
                            "is in-place: its output must be its input 0 (tensor %u), got tensor "
                            "%u", pn->inputs[0], pn->output);
  } else {
    for (int i = 0; i < n->n_inputs; i++) {
      if (!overlaps(&n->out, &n->in[i])) continue;
      int exact = n->out.offset == n->in[i].offset && n->out.nbytes == n->in[i].nbytes;
      if (!(d->elementwise && exact))
        return kvk_node_error(ix, n, KILN_UNSUPPORTED,
                              "the output's bytes [%llu, %llu) overlap input %d's [%llu, %llu) "
                              "in the same buffer; only elementwise ops may write over their "
                              "input, and only exactly",
                              (unsigned long long)n->out.offset,
                              (unsigned long long)(n->out.offset + n->out.nbytes), i,
                              (unsigned long long)n->in[i].offset,
                              (unsigned long long)(n->in[i].offset + n->in[i].nbytes));
    }
  }
  return KILN_OK;
}

/* Byte ranges touched since the last barrier. */
typedef struct touched {
  VkBuffer buf;
  uint64_t begin, end;
  int written;
} touched;

static int conflicts(const touched *t, uint32_t nt, const kvk_dispatch *d) {
  for (uint32_t b = 0; b < d->n_bind; b++) {
    const kvk_tensor *x = d->bind[b];
    int w = (d->write_mask >> b) & 1;
    for (uint32_t i = 0; i < nt; i++)
      if (t[i].buf == x->buffer->buf && t[i].begin < x->offset + x->nbytes &&
          x->offset < t[i].end && (w || t[i].written))
        return 1;
  }
  return 0;
}

void kvk_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  if (!dev || !exec) return;
  for (uint32_t f = 0; f < exec->n_frames; f++)
    kvk_frame_wait(dev, exec, f, "graph_free");   /* the last run's timestamps too */
  kvk_profile_report(dev, exec->prof, exec->nodes, exec->n_nodes);
  kvk_profile_destroy(dev, exec->prof);
  for (uint32_t f = 0; f < exec->n_frames; f++) {
    kvk_frame *fr = &exec->frame[f];
    for (uint32_t i = 0; fr->cmd && i <= fr->n_cmd; i++)
      if (fr->cmd[i]) vkFreeCommandBuffers(dev->dev, dev->cmd_pool, 1, &fr->cmd[i]);
    free(fr->cmd);
    free(fr->si);
    if (fr->fence) vkDestroyFence(dev->dev, fr->fence, NULL);
  }
  kvk_io_free(dev, exec);
  if (exec->pool) vkDestroyDescriptorPool(dev->dev, exec->pool, NULL);
  free_scratch(dev, exec->scratch, exec->n_scratch);
  free(exec->nodes);
  free(exec);
}

/* *out = $name as a whole number in [lo, hi], or def when it is unset or
 * empty. Anything else fails the compile naming the variable and `what`
 * it should be. */
static kiln_status env_count(const char *name, long lo, long hi, uint32_t def, const char *what,
                             uint32_t *out) {
  *out = def;
  const char *e = getenv(name);
  if (!e || !*e) return KILN_OK;
  char *end;
  long v = strtol(e, &end, 10);
  if (*end || v < lo || v > hi) {
    kvk_host->set_error("vulkan: graph_compile: %s='%s' is not %s", name, e, what);
    return KILN_INVALID_ARGUMENT;
  }
  *out = (uint32_t)v;
  return KILN_OK;
}

/* The most dispatches per command buffer: $KILN_VK_SUBMIT_CHUNK or
 * KVK_CHUNK. */
static kiln_status chunk_size(uint32_t *out) {
  return env_count("KILN_VK_SUBMIT_CHUNK", 1, 1L << 30, KVK_CHUNK,
                   "a dispatch count (a whole number >= 1)", out);
}

/* How many frames an executable cycles through: $KILN_VK_FRAMES (2 to
 * KVK_FRAMES) or KVK_FRAMES. More frames let a host keep more runs queued
 * and read their outputs together, one wait for several steps (kiln's
 * trainer does); each costs a recorded copy of the graph's command buffers
 * and of its staged inputs and outputs. */
#define KVK_STR_(x) #x
#define KVK_STR(x) KVK_STR_(x)
static kiln_status frame_count(uint32_t *out) {
  return env_count("KILN_VK_FRAMES", 2, KVK_FRAMES, KVK_FRAMES,
                   "a frame count (2 to " KVK_STR(KVK_FRAMES) ")", out);
}

static kiln_status begin_cmd(kiln_plugin_device *dev, VkCommandBuffer *cmd) {
  VkCommandBufferAllocateInfo cai = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
      .commandPool = dev->cmd_pool,
      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
      .commandBufferCount = 1,
  };
  VkResult r = vkAllocateCommandBuffers(dev->dev, &cai, cmd);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_compile", "vkAllocateCommandBuffers", r);
  VkCommandBufferBeginInfo cbi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
  r = vkBeginCommandBuffer(*cmd, &cbi);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_compile", "vkBeginCommandBuffer", r);
  return KILN_OK;
}

static void compute_barrier(VkCommandBuffer cmd) {
  kvk_cmd_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                  VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                  VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
}

/* Records frame f: the dispatches in chunks of exec->chunk, with barriers
 * where byte ranges conflict (and at the start of every chunk after the
 * first), then the output copies; cmd[0], the input copies, is recorded
 * when an input is first written (exec_io.c). tr: scratch for the ranges. */
static kiln_status record(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t f,
                          const kvk_plan *plan, const VkPipeline *pipes,
                          const VkDescriptorSet *sets, touched *tr) {
  kvk_frame *fr = &exec->frame[f];
  uint32_t n_cmd = plan->n ? (plan->n + exec->chunk - 1) / exec->chunk : 1;
  fr->cmd = calloc((size_t)n_cmd + 1, sizeof *fr->cmd);
  fr->si = calloc((size_t)n_cmd + 1, sizeof *fr->si);
  if (!fr->cmd || !fr->si) {
    kvk_host->set_error("vulkan: graph_compile: out of host memory for %u command buffers", n_cmd);
    return KILN_OUT_OF_MEMORY;
  }
  fr->n_cmd = n_cmd;
  for (uint32_t i = 0; i <= n_cmd; i++)
    fr->si[i] = (VkSubmitInfo){.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                               .commandBufferCount = 1,
                               .pCommandBuffers = &fr->cmd[i]};
  VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  VkResult r = vkCreateFence(dev->dev, &fci, NULL, &fr->fence);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_compile", "vkCreateFence", r);
  uint32_t nt = 0, n_barriers = 0, c = 0;
  VkCommandBuffer cmd = VK_NULL_HANDLE;
  for (uint32_t i = 0; i < plan->n || (i == 0 && !cmd); i++) {
    if (i % exec->chunk == 0) {
      if (cmd) {
        r = vkEndCommandBuffer(cmd);
        if (r != VK_SUCCESS) return kvk_vk_error("graph_compile", "vkEndCommandBuffer", r);
      }
      kiln_status st = begin_cmd(dev, &fr->cmd[++c]);
      if (st != KILN_OK) return st;
      cmd = fr->cmd[c];
      if (c == 1) {
        kvk_cmd_barrier_all(cmd);           /* after all earlier work on the queue */
        kvk_profile_cmd_begin(cmd, exec->prof);
      } else {
        compute_barrier(cmd);               /* after the chunk before */
        n_barriers++;
        nt = 0;
      }
    }
    if (i == plan->n) break;                /* a graph without dispatches */
    const kvk_dispatch *d = &plan->d[i];
    if (conflicts(tr, nt, d)) {
      compute_barrier(cmd);
      n_barriers++;
      nt = 0;
    }
    for (uint32_t b = 0; b < d->n_bind; b++)
      tr[nt++] = (touched){d->bind[b]->buffer->buf, d->bind[b]->offset,
                           d->bind[b]->offset + d->bind[b]->nbytes, (int)((d->write_mask >> b) & 1)};
    vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipes[i]);
    vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, dev->pipes.layouts[d->n_bind], 0,
                            1, &sets[i], 0, NULL);
    vkCmdPushConstants(cmd, dev->pipes.layouts[d->n_bind], VK_SHADER_STAGE_COMPUTE_BIT, 0,
                       KVK_PUSH_WORDS * 4, d->params);
    vkCmdDispatch(cmd, d->groups[0], d->groups[1], d->groups[2]);
    kvk_profile_cmd_dispatch(cmd, exec->prof, i);
  }
  kvk_io_record_out(exec, cmd, f);
  r = vkEndCommandBuffer(cmd);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_compile", "vkEndCommandBuffer", r);
  exec->n_barriers = n_barriers;
  return KILN_OK;
}

kiln_status kvk_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *graph,
                              kiln_plugin_exec **out) {
  if (!dev || !out || !graph || graph->struct_size < sizeof(kiln_plugin_graph) ||
      KILN_ABI_MAJOR_OF(graph->abi_version) != KILN_PLUGIN_ABI_MAJOR) {
    kvk_host->set_error("vulkan: graph_compile: device, out or graph descriptor is NULL, or the "
                        "descriptor is too small or of another ABI major");
    return KILN_INVALID_ARGUMENT;
  }
  if ((graph->n_tensors && (!graph->tensors || graph->tensor_stride < sizeof(kiln_plugin_tensor))) ||
      (graph->n_nodes && (!graph->nodes || graph->node_stride < sizeof(kiln_plugin_node))) ||
      (graph->n_buffers && !graph->buffers)) {
    kvk_host->set_error("vulkan: graph_compile: tensor stride %u (need >= %zu), node stride %u "
                        "(need >= %zu) or a NULL array",
                        graph->tensor_stride, sizeof(kiln_plugin_tensor), graph->node_stride,
                        sizeof(kiln_plugin_node));
    return KILN_INVALID_ARGUMENT;
  }
  kiln_status st;
  VkResult r;
  kvk_plan plan = {.dev = dev};
  touched *tr = NULL;
  VkDescriptorSet *sets = NULL;
  VkPipeline *pipes = NULL;
  kiln_plugin_exec *exec = calloc(1, sizeof *exec);
  if (!exec) goto fail_oom;
  exec->nodes = calloc(graph->n_nodes ? graph->n_nodes : 1, sizeof *exec->nodes);
  if (!exec->nodes) goto fail_oom;
  exec->n_nodes = graph->n_nodes;

  /* 1. check and plan every node */
  for (uint32_t i = 0; i < graph->n_nodes; i++) {
    kvk_node *n = &exec->nodes[i];
    st = check_node(graph, i, n);
    if (st != KILN_OK) goto fail;
    st = op_desc(n->op)->plan(&plan, (int)i, n);
    if (st != KILN_OK) goto fail;
  }
  exec->n_dispatches = plan.n;
  st = chunk_size(&exec->chunk);
  if (st != KILN_OK) goto fail;
  st = frame_count(&exec->n_frames);
  if (st != KILN_OK) goto fail;
  if (kvk_profile_enabled()) {
    /* one frame: a run's timestamps are read before the next run resets them */
    exec->n_frames = 1;
    st = kvk_profile_create(dev, &plan, &exec->prof);
    if (st != KILN_OK) goto fail;
  }
  st = kvk_io_plan(dev, exec, graph);
  if (st != KILN_OK) goto fail;

  /* 2. pipelines and descriptor sets */
  const VkPhysicalDeviceLimits *lim = &dev->phys->props.limits;
  VkDeviceSize align = lim->minStorageBufferOffsetAlignment ? lim->minStorageBufferOffsetAlignment : 1;
  uint32_t n_desc = 0;
  for (uint32_t i = 0; i < plan.n; i++) n_desc += plan.d[i].n_bind;
  pipes = calloc(plan.n ? plan.n : 1, sizeof *pipes);
  sets = calloc(plan.n ? plan.n : 1, sizeof *sets);
  tr = calloc(n_desc ? n_desc : 1, sizeof *tr);
  if (!pipes || !sets || !tr) goto fail_oom;
  if (plan.n) {
    VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = n_desc};
    VkDescriptorPoolCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
        .maxSets = plan.n,
        .poolSizeCount = 1,
        .pPoolSizes = &ps,
    };
    r = vkCreateDescriptorPool(dev->dev, &pci, NULL, &exec->pool);
    if (r != VK_SUCCESS) {
      st = kvk_vk_error("graph_compile", "vkCreateDescriptorPool", r);
      goto fail;
    }
  }
  for (uint32_t i = 0; i < plan.n; i++) {
    kvk_dispatch *d = &plan.d[i];
    if (d->n_bind != kvk_shader_bindings(d->shader) || d->n_bind + d->n_params > KVK_PUSH_WORDS) {
      kvk_host->set_error("vulkan: graph_compile: internal error: dispatch %u of shader %s has %u "
                          "bindings (needs %u) and %u parameter words",
                          i, kvk_shader_name(d->shader), d->n_bind, kvk_shader_bindings(d->shader),
                          d->n_params);
      st = KILN_INTERNAL;
      goto fail;
    }
    st = kvk_pipeline_get(dev, d->shader, d->spec, d->n_spec, &pipes[i]);
    if (st != KILN_OK) goto fail;
    VkDescriptorSetAllocateInfo ai = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
        .descriptorPool = exec->pool,
        .descriptorSetCount = 1,
        .pSetLayouts = &dev->pipes.set_layouts[d->n_bind],
    };
    r = vkAllocateDescriptorSets(dev->dev, &ai, &sets[i]);
    if (r != VK_SUCCESS) {
      st = kvk_vk_error("graph_compile", "vkAllocateDescriptorSets", r);
      goto fail;
    }
    VkDescriptorBufferInfo bi[KVK_MAX_BINDINGS];
    VkWriteDescriptorSet w[KVK_MAX_BINDINGS];
    /* params move up to make room for the binding offsets */
    memmove(&d->params[d->n_bind], d->params, d->n_params * sizeof(uint32_t));
    for (uint32_t b = 0; b < d->n_bind; b++) {
      const kvk_tensor *t = d->bind[b];
      VkDeviceSize base = t->offset / align * align;
      /* whole words: shaders read u8 tensors 4 bytes at a time (cast.comp) */
      VkDeviceSize range = (t->offset + (t->nbytes ? t->nbytes : 4) + 3) / 4 * 4 - base;
      VkDeviceSize whole = (t->buffer->size + 63) / 64 * 64;
      if (base + range > whole) range = whole - base;
      if (range > lim->maxStorageBufferRange) {
        kvk_host->set_error("vulkan: graph_compile: a tensor of %llu bytes exceeds this device's "
                            "maxStorageBufferRange of %u bytes",
                            (unsigned long long)t->nbytes, lim->maxStorageBufferRange);
        st = KILN_UNSUPPORTED;
        goto fail;
      }
      d->params[b] = (uint32_t)((t->offset - base) / 4);
      bi[b] = (VkDescriptorBufferInfo){.buffer = t->buffer->buf, .offset = base, .range = range};
      w[b] = (VkWriteDescriptorSet){
          .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
          .dstSet = sets[i],
          .dstBinding = b,
          .descriptorCount = 1,
          .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
          .pBufferInfo = &bi[b],
      };
    }
    d->n_params += d->n_bind;
    vkUpdateDescriptorSets(dev->dev, d->n_bind, w, 0, NULL);
  }

  /* 3. record each frame */
  for (uint32_t f = 0; f < exec->n_frames; f++) {
    st = record(dev, exec, f, &plan, pipes, sets, tr);
    if (st != KILN_OK) goto fail;
  }
  kvk_host->log(3, "vulkan: graph_compile: %u nodes, %u dispatches, %u barriers", graph->n_nodes,
                exec->n_dispatches, exec->n_barriers);
  free(tr);
  free(sets);
  free(pipes);
  free(plan.d);
  exec->scratch = plan.scratch;
  exec->n_scratch = plan.n_scratch;
  *out = exec;
  return KILN_OK;

fail_oom:
  kvk_host->set_error("vulkan: graph_compile: out of host memory for %u nodes", graph->n_nodes);
  st = KILN_OUT_OF_MEMORY;
fail:
  free(tr);
  free(sets);
  free(pipes);
  free(plan.d);
  free_scratch(dev, plan.scratch, plan.n_scratch);
  kvk_graph_free(dev, exec);
  return st;
}

kiln_status kvk_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  if (!dev || !exec) {
    kvk_host->set_error("vulkan: graph_run: NULL device or executable");
    return KILN_INVALID_ARGUMENT;
  }
  uint32_t f = (uint32_t)(exec->runs % exec->n_frames);
  kvk_frame *fr = &exec->frame[f];
  kiln_status st = exec->in_dirty ? kvk_io_record_in(dev, exec) : KILN_OK;
  if (st == KILN_OK) st = kvk_frame_wait(dev, exec, f, "graph_run");
  if (st != KILN_OK) return st;
  kvk_io_refresh(exec, f);
  VkResult r = vkResetFences(dev->dev, 1, &fr->fence);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_run", "vkResetFences", r);
  /* The input copies (cmd[0], once an input is armed) go in the batch of
   * the graph's first chunk, whose first barrier orders them: a batch less
   * per step for the driver to hand over (lavapipe wakes its submit thread
   * once per batch, a futex wake and a context switch each). */
  fr->si[1].commandBufferCount = fr->cmd[0] ? 2 : 1;
  fr->si[1].pCommandBuffers = fr->cmd[0] ? &fr->cmd[0] : &fr->cmd[1];
  r = vkQueueSubmit(dev->queue, fr->n_cmd, fr->si + 1, fr->fence);
  if (r != VK_SUCCESS) return kvk_vk_error("graph_run", "vkQueueSubmit", r);
  fr->pending = 1;
  exec->runs++;
  return KILN_OK;
}

kiln_status kvk_synchronize(kiln_plugin_device *dev) {
  if (!dev) {
    kvk_host->set_error("vulkan: synchronize: NULL device");
    return KILN_INVALID_ARGUMENT;
  }
  VkResult r = vkQueueWaitIdle(dev->queue);
  if (r != VK_SUCCESS) return kvk_vk_error("synchronize", "vkQueueWaitIdle", r);
  return KILN_OK;
}
