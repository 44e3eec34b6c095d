/*
 * template.c - a minimal kiln backend plugin, written to be copied.
 *
 * It is a complete, working plugin in one file of plain C11: it negotiates
 * the plugin ABI, reports one device (the host CPU, single-threaded), keeps
 * buffers in host memory and runs seven ops on f32:
 *
 *   ADD, MUL            broadcasting binary elementwise
 *   RELU, RELU_BACKWARD unary elementwise and its gradient helper
 *   MATMUL              with ip[0]/ip[1] transposes and broadcast batch dims
 *   SUM                 over an axis bitmask, with or without keepdim
 *   FILL                a constant (autodiff seeds gradients with it)
 *
 * SUM and FILL are here because the backward passes of the others need them
 * (the gradient of a broadcast ADD is a SUM over the broadcast axes).
 *
 * To start your own backend: copy plugins/template/ somewhere, rename
 * "template" in CMakeLists.txt and in kt_entry below, then replace the
 * kernels with calls into your hardware. docs/writing-a-plugin.md walks
 * through it; `kiln conform libkiln-NAME.so` tells you when it is right.
 *
 * Everything here follows the ABI rules of kiln/plugin.h:
 *  - one exported symbol, the entry, which does no work;
 *  - every table starts with struct_size and abi_version;
 *  - nothing is linked from libkiln: the host is reached only through the
 *    kiln_host_api table given to init();
 *  - errors are statuses plus a message through host->set_error, never an
 *    abort, whatever the caller passes in.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/plugin.h"

/* The plugin's own name and version, as `kiln info` shows them. */
#define KT_NAME "template"
#define KT_VERSION "1.0.0"

/* How ADD combines its operands. A hook only so that kiln's tests can build
 * a deliberately wrong copy of this plugin (tests/fake_plugins/
 * fake_wrong_add.c) and check that `kiln conform` catches it. Delete it in
 * your copy. */
/* Test hooks (tests/fake_plugins builds broken variants; leave them be):
 * KT_ADD is ADD's arithmetic, KT_IN_PLACE(op) the KILN_OP_SUPPORT_IN_PLACE
 * claim per op, KT_BINARY_START(y, n) runs before a binary op writes y. */
#ifndef KT_IN_PLACE
#define KT_IN_PLACE(op) 0
#endif
#ifndef KT_BINARY_START
#define KT_BINARY_START(y, n) ((void)0)
#endif
#ifndef KT_SCRATCH_ON_OVERLAP
#define KT_SCRATCH_ON_OVERLAP 1   /* 0: write the output in place even over an input */
#endif
#ifndef KT_ADD
#define KT_ADD(a, b) ((a) + (b))
#endif

/* The host's table. Set by init(), valid until shutdown() returns. */
static const kiln_host_api *kt_host;

/* ==========================================================================
 * Objects. The ABI declares these structs opaque; each plugin defines them.
 */

/* An opened device. A real backend keeps its queue, context, etc. here. */
struct kiln_plugin_device {
  uint32_t index;
};

/* A block of device memory: here plain host memory. */
struct kiln_plugin_buffer {
  uint64_t size;
  unsigned char *data;
};

/* A tensor as a kernel sees it: a pointer and a shape padded to 8 dims. */
typedef struct kt_tensor {
  float *data;
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  int64_t numel;
} kt_tensor;

/* One compiled node. */
typedef struct kt_step {
  uint32_t op;
  int n_in;
  kt_tensor in[2];
  kt_tensor out;
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
  /* When the output overlaps an input, the kernel writes here first and the
   * result is copied over the output afterwards (the host may place an
   * output over a tensor that dies at this node). */
  float *scratch;
} kt_step;

/* The executable form of a graph: the nodes, validated, in order. */
struct kiln_plugin_exec {
  uint32_t n_steps;
  kt_step *steps;
};

/* ==========================================================================
 * Kernels. Each states its shapes and what it computes.
 */

/* Row-major strides of t, aligned to the right of an `ndim`-rank output,
 * with stride 0 on axes t broadcasts over (size 1 or missing). */
static void kt_broadcast_strides(const kt_tensor *t, int ndim, const int64_t *out_shape,
                                 int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    int ti = i - (ndim - t->ndim);   /* t's axis under output axis i, or < 0 */
    int64_t dim = ti >= 0 ? t->shape[ti] : 1;
    strides[i] = (dim == 1 && out_shape[i] != 1) || ti < 0 ? 0 : s;
    s *= dim;
  }
}

/* ADD, MUL: y = a op b, shapes broadcast to y [d0, ..., dn-1]. */
static void kt_binary(const kt_step *s, float *y) {
  const kt_tensor *a = &s->in[0], *b = &s->in[1];
  int nd = s->out.ndim;
  int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0};
  kt_broadcast_strides(a, nd, s->out.shape, sa);
  kt_broadcast_strides(b, nd, s->out.shape, sb);
  int64_t ia = 0, ib = 0;
  KT_BINARY_START(y, s->out.numel);
  for (int64_t i = 0; i < s->out.numel; i++) {
    float x = a->data[ia], z = b->data[ib];
    y[i] = s->op == KILN_OP_ADD ? KT_ADD(x, z) : x * z;
    /* Advance the multi-index (an odometer over the output's axes). */
    for (int d = nd - 1; d >= 0; d--) {
      ia += sa[d];
      ib += sb[d];
      if (++idx[d] < s->out.shape[d]) break;
      ia -= sa[d] * s->out.shape[d];
      ib -= sb[d] * s->out.shape[d];
      idx[d] = 0;
    }
  }
}

/* RELU: y = max(x, 0). RELU_BACKWARD: y = dy * (x > 0), inputs (dy, x).
 * All of one shape. */
static void kt_relu(const kt_step *s, float *y) {
  if (s->op == KILN_OP_RELU) {
    const float *x = s->in[0].data;
    for (int64_t i = 0; i < s->out.numel; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  } else {
    const float *dy = s->in[0].data, *x = s->in[1].data;
    for (int64_t i = 0; i < s->out.numel; i++) y[i] = x[i] > 0.0f ? dy[i] : 0.0f;
  }
}

/* MATMUL: a [..., M, K] (or [..., K, M] with ip[0]), b [..., K, N] (or
 * [..., N, K] with ip[1]), y [..., M, N]; y = op(a) @ op(b) per batch index,
 * the batch dims broadcasting. Sums in double, then rounds once. */
static void kt_matmul(const kt_step *s, float *y) {
  const kt_tensor *a = &s->in[0], *b = &s->in[1];
  int ta = s->ip[0] != 0, tb = s->ip[1] != 0;
  int nd = s->out.ndim;
  int64_t M = s->out.shape[nd - 2], N = s->out.shape[nd - 1];
  int64_t K = ta ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
  /* Batch strides in units of whole matrices. */
  kt_tensor ab = *a, bb = *b;
  ab.ndim -= 2;
  bb.ndim -= 2;
  int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0};
  kt_broadcast_strides(&ab, nd - 2, s->out.shape, sa);
  kt_broadcast_strides(&bb, nd - 2, s->out.shape, sb);
  int64_t batches = s->out.numel / (M * N > 0 ? M * N : 1);
  int64_t ia = 0, ib = 0;
  for (int64_t n = 0; n < batches; n++) {
    const float *A = a->data + ia * M * K, *B = b->data + ib * K * N;
    float *Y = y + n * M * N;
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double acc = 0.0;
        for (int64_t k = 0; k < K; k++) {
          float av = ta ? A[k * M + i] : A[i * K + k];
          float bv = tb ? B[j * K + k] : B[k * N + j];
          acc += (double)av * bv;
        }
        Y[i * N + j] = (float)acc;
      }
    for (int d = nd - 3; d >= 0; d--) {
      ia += sa[d];
      ib += sb[d];
      if (++idx[d] < s->out.shape[d]) break;
      ia -= sa[d] * s->out.shape[d];
      ib -= sb[d] * s->out.shape[d];
      idx[d] = 0;
    }
  }
}

/* SUM: x [d0, ..., dn-1] -> y, the axes in mask ip[0] summed (kept as size 1
 * with ip[1], else removed; the element order is the same either way).
 * Sums in double, then rounds once. */
static kiln_status kt_sum(const kt_step *s, float *y) {
  const kt_tensor *x = &s->in[0];
  uint64_t mask = (uint64_t)s->ip[0];
  /* Strides of the output over the input's axes: 0 on reduced ones. */
  int64_t so[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0}, st = 1;
  for (int d = x->ndim - 1; d >= 0; d--) {
    so[d] = (mask >> d) & 1 ? 0 : st;
    if (!((mask >> d) & 1)) st *= x->shape[d];
  }
  double *acc = calloc((size_t)(s->out.numel ? s->out.numel : 1), sizeof *acc);
  if (!acc) {
    kt_host->set_error(KT_NAME ": sum: out of memory for %lld accumulators",
                       (long long)s->out.numel);
    return KILN_OUT_OF_MEMORY;
  }
  int64_t io = 0;
  for (int64_t i = 0; i < x->numel; i++) {
    acc[io] += x->data[i];
    for (int d = x->ndim - 1; d >= 0; d--) {
      io += so[d];
      if (++idx[d] < x->shape[d]) break;
      io -= so[d] * x->shape[d];
      idx[d] = 0;
    }
  }
  for (int64_t i = 0; i < s->out.numel; i++) y[i] = (float)acc[i];
  free(acc);
  return KILN_OK;
}

/* FILL: y = fp[0] everywhere. */
static void kt_fill(const kt_step *s, float *y) {
  for (int64_t i = 0; i < s->out.numel; i++) y[i] = s->fp[0];
}

/* ==========================================================================
 * Validation: graph_compile checks every node so that graph_run cannot fail
 * or read out of bounds. Messages name the node, the op and the shapes.
 */

/* Formats a shape as "[2, 3]" into buf. */
static const char *kt_shape_str(const kt_tensor *t, char *buf, size_t n) {
  size_t at = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->ndim && at < n; i++)
    at += (size_t)snprintf(buf + at, n - at, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  if (at < n) snprintf(buf + at, n - at, "]");
  return buf;
}

static const char *kt_op_name(uint32_t op) {
  switch (op) {
    case KILN_OP_ADD: return "add";
    case KILN_OP_MUL: return "mul";
    case KILN_OP_RELU: return "relu";
    case KILN_OP_RELU_BACKWARD: return "relu_backward";
    case KILN_OP_MATMUL: return "matmul";
    case KILN_OP_SUM: return "sum";
    case KILN_OP_FILL: return "fill";
    default: return NULL;   /* not supported here */
  }
}

/* Number of inputs each supported op takes. */
static int kt_op_inputs(uint32_t op) {
  switch (op) {
    case KILN_OP_FILL: return 0;
    case KILN_OP_RELU: case KILN_OP_SUM: return 1;
    default: return 2;
  }
}

/* Resolves tensor `ti` of graph g into t, checking index, dtype, rank and
 * that its bytes lie inside its buffer. */
static kiln_status kt_resolve(const kiln_plugin_graph *g, uint32_t node, uint32_t ti,
                              const char *role, kt_tensor *t) {
  if (ti >= g->n_tensors) {
    kt_host->set_error(KT_NAME ": node %u: %s is tensor %u, but the graph has %u tensors", node,
                       role, ti, g->n_tensors);
    return KILN_INVALID_ARGUMENT;
  }
  const kiln_plugin_tensor *d = kiln_plugin_graph_tensor(g, ti);
  if (d->dtype != KILN_F32 || d->ndim > KILN_MAX_DIMS) {
    kt_host->set_error(KT_NAME ": node %u: %s (tensor %u) has dtype %u and rank %u; this plugin "
                       "computes f32 (dtype %d) of rank <= %d only",
                       node, role, ti, d->dtype, d->ndim, KILN_F32, KILN_MAX_DIMS);
    return d->dtype != KILN_F32 ? KILN_DTYPE_MISMATCH : KILN_INVALID_ARGUMENT;
  }
  t->ndim = (int)d->ndim;
  t->numel = 1;
  for (int i = 0; i < KILN_MAX_DIMS; i++) {
    t->shape[i] = i < t->ndim ? d->shape[i] : 1;
    if (t->shape[i] < 0 || (t->shape[i] > 0 && t->numel > INT64_MAX / 8 / t->shape[i])) {
      kt_host->set_error(KT_NAME ": node %u: %s (tensor %u) has a negative or huge dim %lld",
                         node, role, ti, (long long)t->shape[i]);
      return KILN_INVALID_ARGUMENT;
    }
    t->numel *= t->shape[i];
  }
  uint64_t nbytes = (uint64_t)t->numel * sizeof(float);
  if (d->buffer >= g->n_buffers || !g->buffers[d->buffer]) {
    kt_host->set_error(KT_NAME ": node %u: %s (tensor %u) is in buffer %u of %u", node, role, ti,
                       d->buffer, g->n_buffers);
    return KILN_INVALID_ARGUMENT;
  }
  const kiln_plugin_buffer *b = g->buffers[d->buffer];
  if (d->offset > b->size || nbytes > b->size - d->offset || d->offset % sizeof(float)) {
    kt_host->set_error(KT_NAME ": node %u: %s (tensor %u): %llu bytes at offset %llu do not fit "
                       "(aligned to 4) in buffer %u of %llu bytes",
                       node, role, ti, (unsigned long long)nbytes,
                       (unsigned long long)d->offset, d->buffer, (unsigned long long)b->size);
    return KILN_INVALID_ARGUMENT;
  }
  t->data = (float *)(void *)(b->data + d->offset);
  return KILN_OK;
}

/* 1 if out is the NumPy broadcast of a and b (right-aligned, equal or 1). */
static int kt_is_broadcast(const kt_tensor *a, const kt_tensor *b, const kt_tensor *out,
                           int from_right_skip) {
  int na = a->ndim - from_right_skip, nb = b->ndim - from_right_skip;
  int no = out->ndim - from_right_skip;
  if (no != (na > nb ? na : nb)) return 0;
  for (int i = 0; i < no; i++) {
    int ia = i - (no - na), ib = i - (no - nb);
    int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
    if (da != db && da != 1 && db != 1) return 0;
    if (out->shape[i] != (da == 1 ? db : da)) return 0;
  }
  return 1;
}

static int kt_same_shape(const kt_tensor *a, const kt_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

/* Checks the shapes and parameters of step s (node `index`). */
static kiln_status kt_check_shapes(uint32_t index, const kt_step *s) {
  char sa[160], sb[160], so[160];
  const kt_tensor *a = &s->in[0], *b = &s->in[1], *y = &s->out;
  int ok = 1;
  switch (s->op) {
    case KILN_OP_ADD:
    case KILN_OP_MUL:
      ok = kt_is_broadcast(a, b, y, 0);
      break;
    case KILN_OP_RELU:
      ok = kt_same_shape(a, y);
      break;
    case KILN_OP_RELU_BACKWARD:
      ok = kt_same_shape(a, y) && kt_same_shape(b, y);
      break;
    case KILN_OP_MATMUL: {
      if (a->ndim < 2 || b->ndim < 2 || y->ndim < 2 || (s->ip[0] & ~1) || (s->ip[1] & ~1)) {
        ok = 0;
        break;
      }
      int64_t M = s->ip[0] ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2];
      int64_t K = s->ip[0] ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
      int64_t K2 = s->ip[1] ? b->shape[b->ndim - 1] : b->shape[b->ndim - 2];
      int64_t N = s->ip[1] ? b->shape[b->ndim - 2] : b->shape[b->ndim - 1];
      ok = K == K2 && y->shape[y->ndim - 2] == M && y->shape[y->ndim - 1] == N &&
           kt_is_broadcast(a, b, y, 2);
      break;
    }
    case KILN_OP_SUM: {
      uint64_t mask = (uint64_t)s->ip[0];
      if ((mask >> a->ndim) != 0 || (s->ip[1] & ~1)) {
        ok = 0;
        break;
      }
      /* The expected output: reduced axes become 1, or vanish. */
      kt_tensor want = {.ndim = 0};
      for (int d = 0; d < a->ndim; d++) {
        int reduced = (mask >> d) & 1;
        if (!reduced || s->ip[1]) want.shape[want.ndim++] = reduced ? 1 : a->shape[d];
      }
      ok = kt_same_shape(&want, y);
      break;
    }
    case KILN_OP_FILL:
      ok = 1;
      break;
  }
  if (ok) return KILN_OK;
  kt_host->set_error(KT_NAME ": node %u (%s): inputs %s and %s, output %s, ip {%lld, %lld}: the "
                     "output shape or the parameters do not match kiln/ops.h",
                     index, kt_op_name(s->op), s->n_in > 0 ? kt_shape_str(a, sa, sizeof sa) : "-",
                     s->n_in > 1 ? kt_shape_str(b, sb, sizeof sb) : "-",
                     kt_shape_str(y, so, sizeof so), (long long)s->ip[0], (long long)s->ip[1]);
  return KILN_SHAPE_MISMATCH;
}

/* 1 if the bytes of a and b overlap. */
static int kt_overlaps(const kt_tensor *a, const kt_tensor *b) {
  const char *a0 = (const char *)a->data, *b0 = (const char *)b->data;
  return a0 < b0 + b->numel * 4 && b0 < a0 + a->numel * 4 && a->numel && b->numel;
}

static kiln_status kt_compile_node(const kiln_plugin_graph *g, uint32_t index, kt_step *s) {
  const kiln_plugin_node *n = kiln_plugin_graph_node(g, index);
  kiln_status st;
  memset(s, 0, sizeof *s);
  s->op = n->op;
  if (!kt_op_name(n->op)) {
    kt_host->set_error(KT_NAME ": node %u: op %u is not supported by this plugin", index, n->op);
    return KILN_UNSUPPORTED;
  }
  s->n_in = kt_op_inputs(n->op);
  if (n->n_inputs != (uint32_t)s->n_in) {
    kt_host->set_error(KT_NAME ": node %u (%s): %u inputs given, the op takes %d", index,
                       kt_op_name(n->op), n->n_inputs, s->n_in);
    return KILN_INVALID_ARGUMENT;
  }
  static const char *const roles[] = {"input 0", "input 1"};
  for (int i = 0; i < s->n_in; i++)
    if ((st = kt_resolve(g, index, n->inputs[i], roles[i], &s->in[i])) != KILN_OK) return st;
  if ((st = kt_resolve(g, index, n->output, "the output", &s->out)) != KILN_OK) return st;
  memcpy(s->ip, n->ip, sizeof s->ip);
  memcpy(s->fp, n->fp, sizeof s->fp);
  if ((st = kt_check_shapes(index, s)) != KILN_OK) return st;
  for (int i = 0; i < s->n_in; i++)
    if (KT_SCRATCH_ON_OVERLAP && kt_overlaps(&s->out, &s->in[i]) && !s->scratch) {
      s->scratch = malloc((size_t)s->out.numel * sizeof(float));
      if (!s->scratch) {
        kt_host->set_error(KT_NAME ": node %u: out of memory for %lld scratch floats", index,
                           (long long)s->out.numel);
        return KILN_OUT_OF_MEMORY;
      }
    }
  return KILN_OK;
}

/* ==========================================================================
 * The plugin table's members.
 */

static void kt_shutdown(void) { kt_host = NULL; }

static uint32_t kt_device_count(void) { return 1; }

static kiln_status kt_device_info(uint32_t index, kiln_device_info *info) {
  if (index != 0) {
    kt_host->set_error(KT_NAME ": device_info: no device %u (there is one device, 0)", index);
    return KILN_NOT_FOUND;
  }
  if (!info || info->struct_size < sizeof(uint32_t)) {
    kt_host->set_error(KT_NAME ": device_info: info is NULL or its struct_size is too small");
    return KILN_INVALID_ARGUMENT;
  }
  /* Fill a full local copy, then hand over only what fits in the caller's
   * struct_size: the caller may be built against an older, shorter struct. */
  kiln_device_info d;
  memset(&d, 0, sizeof d);
  d.struct_size = info->struct_size;
  d.kind = KILN_DEVICE_OTHER;
  snprintf(d.name, sizeof d.name, "template device (host memory, one thread)");
  snprintf(d.vendor, sizeof d.vendor, "kiln");
  snprintf(d.driver, sizeof d.driver, KT_NAME " " KT_VERSION);
  d.compute_units = 1;
  snprintf(d.details, sizeof d.details, "ops: add mul relu relu_backward matmul sum fill\n");
  size_t n = info->struct_size < sizeof d ? info->struct_size : sizeof d;
  memcpy(info, &d, n);
  return KILN_OK;
}

/* Claim only what runs for EVERY shape: `kiln conform` tests each claim,
 * and the host plans around ops a device does not claim. */
static int kt_op_support(uint32_t index, uint32_t op, uint32_t dtype) {
  if (index != 0 || dtype != KILN_F32 || kt_op_name(op) == NULL) return 0;
#ifdef KILN_OP_SUPPORT_IN_PLACE   /* ABI 1.3 headers; this file also builds against 1.0's */
  return KILN_OP_SUPPORT_RUNS | (KT_IN_PLACE(op) ? KILN_OP_SUPPORT_IN_PLACE : 0);
#else
  (void)KT_IN_PLACE(op);
  return 1;
#endif
}

static kiln_status kt_device_open(uint32_t index, kiln_plugin_device **out) {
  if (index != 0 || !out) {
    kt_host->set_error(KT_NAME ": device_open: no device %u or out is NULL", index);
    return index != 0 ? KILN_NOT_FOUND : KILN_INVALID_ARGUMENT;
  }
  kiln_plugin_device *dev = calloc(1, sizeof *dev);
  if (!dev) {
    kt_host->set_error(KT_NAME ": device_open: out of memory");
    return KILN_OUT_OF_MEMORY;
  }
  dev->index = index;
  *out = dev;
  return KILN_OK;
}

static void kt_device_close(kiln_plugin_device *dev) { free(dev); }

static kiln_status kt_buffer_alloc(kiln_plugin_device *dev, uint64_t size,
                                   kiln_plugin_buffer **out) {
  (void)dev;
  if (size == 0 || !out) {
    kt_host->set_error(KT_NAME ": buffer_alloc: size 0 or out NULL (size %llu)",
                       (unsigned long long)size);
    return KILN_INVALID_ARGUMENT;
  }
  if (size > SIZE_MAX / 2) {
    kt_host->set_error(KT_NAME ": buffer_alloc: %llu bytes exceed the address space",
                       (unsigned long long)size);
    return KILN_OUT_OF_MEMORY;
  }
  kiln_plugin_buffer *b = malloc(sizeof *b);
  if (!b) goto fail;
  b->data = calloc(1, (size_t)size);   /* the ABI says: zero-filled */
  if (!b->data) goto fail_b;
  b->size = size;
  *out = b;
  return KILN_OK;

fail_b:
  free(b);
fail:
  kt_host->set_error(KT_NAME ": buffer_alloc: out of memory for %llu bytes",
                     (unsigned long long)size);
  return KILN_OUT_OF_MEMORY;
}

static void kt_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *buf) {
  (void)dev;
  if (!buf) return;
  free(buf->data);
  free(buf);
}

/* Checks that [offset, offset + size) lies in buf and that the host pointer
 * is usable. `what` names the call for the message. */
static kiln_status kt_check_range(const char *what, const kiln_plugin_buffer *buf,
                                  uint64_t offset, uint64_t size, const void *host_ptr) {
  if (!buf || (!host_ptr && size)) {
    kt_host->set_error(KT_NAME ": %s: NULL %s", what, buf ? "host pointer" : "buffer");
    return KILN_INVALID_ARGUMENT;
  }
  if (offset > buf->size || size > buf->size - offset) {
    kt_host->set_error(KT_NAME ": %s: bytes [%llu, +%llu) lie outside a buffer of %llu bytes",
                       what, (unsigned long long)offset, (unsigned long long)size,
                       (unsigned long long)buf->size);
    return KILN_INVALID_ARGUMENT;
  }
  return KILN_OK;
}

static kiln_status kt_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                   uint64_t offset, const void *src, uint64_t size) {
  (void)dev;
  kiln_status st = kt_check_range("buffer_write", dst, offset, size, src);
  if (st == KILN_OK && size) memcpy(dst->data + offset, src, (size_t)size);
  return st;
}

static kiln_status kt_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src,
                                  uint64_t offset, void *dst, uint64_t size) {
  (void)dev;
  kiln_status st = kt_check_range("buffer_read", src, offset, size, dst);
  if (st == KILN_OK && size) memcpy(dst, src->data + offset, (size_t)size);
  return st;
}

static kiln_status kt_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                  uint64_t dst_offset, kiln_plugin_buffer *src,
                                  uint64_t src_offset, uint64_t size) {
  (void)dev;
  kiln_status st = kt_check_range("buffer_copy (source)", src, src_offset, size, src);
  if (st == KILN_OK)
    st = kt_check_range("buffer_copy (destination)", dst, dst_offset, size, dst);
  if (st == KILN_OK && size) memmove(dst->data + dst_offset, src->data + src_offset, (size_t)size);
  return st;
}

static void kt_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  (void)dev;
  if (!exec) return;
  for (uint32_t i = 0; i < exec->n_steps; i++) free(exec->steps[i].scratch);
  free(exec->steps);
  free(exec);
}

static kiln_status kt_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *graph,
                                    kiln_plugin_exec **out) {
  kiln_status st;
  /* The descriptor may come from a newer host (larger struct_size, larger
   * strides): read only what ABI 1.0 defines, through the strides. */
  if (!dev || !out || !graph || graph->struct_size < sizeof(kiln_plugin_graph) ||
      KILN_ABI_MAJOR_OF(graph->abi_version) != KILN_PLUGIN_ABI_MAJOR) {
    kt_host->set_error(KT_NAME ": graph_compile: NULL argument, or a graph descriptor that is "
                       "too small or of another ABI major");
    return KILN_INVALID_ARGUMENT;
  }
  if ((graph->n_tensors && (!graph->tensors || graph->tensor_stride < sizeof(kiln_plugin_tensor))) ||
      (graph->n_nodes && (!graph->nodes || graph->node_stride < sizeof(kiln_plugin_node))) ||
      (graph->n_buffers && !graph->buffers)) {
    kt_host->set_error(KT_NAME ": graph_compile: tensor stride %u or node stride %u too small, "
                       "or a NULL array", graph->tensor_stride, graph->node_stride);
    return KILN_INVALID_ARGUMENT;
  }
  kiln_plugin_exec *exec = calloc(1, sizeof *exec);
  if (!exec) goto fail_oom;
  exec->steps = calloc(graph->n_nodes ? graph->n_nodes : 1, sizeof *exec->steps);
  if (!exec->steps) goto fail_exec;
  for (uint32_t i = 0; i < graph->n_nodes; i++) {
    exec->n_steps = i + 1;   /* so kt_graph_free releases this step's scratch */
    if ((st = kt_compile_node(graph, i, &exec->steps[i])) != KILN_OK) goto fail;
  }
  *out = exec;
  return KILN_OK;

fail:
  kt_graph_free(dev, exec);
  return st;
fail_exec:
  free(exec);
fail_oom:
  kt_host->set_error(KT_NAME ": graph_compile: out of memory for %u nodes", graph->n_nodes);
  return KILN_OUT_OF_MEMORY;
}

/* Runs the nodes in order. Everything was validated at compile time. */
static kiln_status kt_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  if (!dev || !exec) {
    kt_host->set_error(KT_NAME ": graph_run: NULL device or executable");
    return KILN_INVALID_ARGUMENT;
  }
  for (uint32_t i = 0; i < exec->n_steps; i++) {
    kt_step *s = &exec->steps[i];
    float *y = s->scratch ? s->scratch : s->out.data;
    kiln_status st = KILN_OK;
    switch (s->op) {
      case KILN_OP_ADD: case KILN_OP_MUL: kt_binary(s, y); break;
      case KILN_OP_RELU: case KILN_OP_RELU_BACKWARD: kt_relu(s, y); break;
      case KILN_OP_MATMUL: kt_matmul(s, y); break;
      case KILN_OP_SUM: st = kt_sum(s, y); break;
      case KILN_OP_FILL: kt_fill(s, y); break;
    }
    if (st != KILN_OK) return st;
    if (s->scratch) memcpy(s->out.data, s->scratch, (size_t)s->out.numel * sizeof(float));
  }
  return KILN_OK;
}

/* Everything above finishes before it returns; a GPU backend waits for its
 * queue here. */
static kiln_status kt_synchronize(kiln_plugin_device *dev) {
  if (!dev) {
    kt_host->set_error(KT_NAME ": synchronize: NULL device");
    return KILN_INVALID_ARGUMENT;
  }
  return KILN_OK;
}

/* ==========================================================================
 * Negotiation: the table, init() and the one exported entry.
 */

/* Every member of ABI 1.0 is set: the host refuses a table with a NULL
 * member. struct_size says which members exist (tables grow at the end). */
static const kiln_plugin_api kt_api = {
    .struct_size = sizeof(kiln_plugin_api),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .shutdown = kt_shutdown,
    .device_count = kt_device_count,
    .device_info = kt_device_info,
    .op_support = kt_op_support,
    .device_open = kt_device_open,
    .device_close = kt_device_close,
    .buffer_alloc = kt_buffer_alloc,
    .buffer_free = kt_buffer_free,
    .buffer_write = kt_buffer_write,
    .buffer_read = kt_buffer_read,
    .buffer_copy = kt_buffer_copy,
    .graph_compile = kt_graph_compile,
    .graph_run = kt_graph_run,
    .graph_free = kt_graph_free,
    .synchronize = kt_synchronize,
};

/* Called once, after the host accepted kt_entry. Heavy work (probing
 * hardware, loading a driver) belongs here, never in the entry. */
static kiln_status kt_init(const kiln_host_api *host, const kiln_plugin_api **api) {
  /* Without a usable host table there is no set_error to explain with. */
  if (!host || host->struct_size < sizeof(kiln_host_api) || !host->set_error || !host->log ||
      KILN_ABI_MAJOR_OF(host->abi_version) != KILN_PLUGIN_ABI_MAJOR || !api)
    return KILN_ABI_MISMATCH;
  kt_host = host;
  host->log(3, KT_NAME ": init for host ABI %u.%u", KILN_ABI_MAJOR_OF(host->abi_version),
            KILN_ABI_MINOR_OF(host->abi_version));
  *api = &kt_api;
  return KILN_OK;
}

static const kiln_plugin_entry_info kt_entry = {
    .struct_size = sizeof(kiln_plugin_entry_info),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .name = KT_NAME,
    .version = KT_VERSION,
    .description = "template backend: add, mul, relu, matmul, sum, fill on f32 in host memory",
    .init = kt_init,
};

/* The only exported symbol. It must not fail, allocate or start anything:
 * the host checks the descriptor before it lets init() run. */
KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *KILN_PLUGIN_ENTRY(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &kt_entry;
}
