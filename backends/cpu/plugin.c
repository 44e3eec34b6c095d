/*
 * plugin.c - the CPU backend's entry point: device, buffers, and graphs.
 *
 * graph_compile copies what it keeps from the host's (borrowed) graph,
 * resolves every tensor to a data pointer (buffer base + offset, checked
 * against the buffer's size), and validates every node against kiln/ops.h:
 * generic checks here (op known, input count, dtypes), the op's own shape
 * and parameter rules in its family's validator. graph_run executes the
 * nodes in order on the device's thread pool; runs are synchronous.
 *
 * A node whose output overlaps one of its inputs (other than an exact
 * alias in an elementwise op, or the IN-PLACE optimizer ops) writes into a
 * scratch copy owned by the executable, which is then copied out, so no
 * kernel ever reads what it has already overwritten.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu-impl.h"

#define KCPU_NAME "cpu"
#define KCPU_VERSION "0.1.0"
#define KCPU_MAX_THREADS 256

const kiln_host_api *kcpu_host;

struct kiln_plugin_device {
  kcpu_pool *pool;
};

struct kiln_plugin_buffer {
  void *data;                 /* 64-byte aligned */
  uint64_t size;
};

typedef struct kcpu_step {
  kcpu_node node;
  kcpu_run_fn run;
  void *scratch;              /* non-NULL: node.out points here; copy to dest */
  void *dest;
  size_t out_bytes;
  int fused;                  /* 1: the step before runs this node (its node.epi) */
} kcpu_step;

struct kiln_plugin_exec {
  uint32_t n_steps;
  kcpu_step *steps;
  uint32_t n_packs;
  float **packs;              /* B packings shared by matmuls (share_packed_b) */
  uint64_t *prof_ns;          /* $KILN_PROFILE: time per step over prof_runs runs */
  uint64_t prof_runs;
};

/* ---- ops ----------------------------------------------------------------- */

typedef struct kcpu_op_desc {
  const char *name;
  int min_inputs, max_inputs;
  kcpu_validate_fn validate;
  kcpu_run_fn run;
  int elementwise;            /* output may exactly alias a same-shaped input */
  int in_place;               /* output is inputs[0] (optimizer ops) */
} kcpu_op_desc;

static kiln_status conv_validate(int index, const kcpu_node *n) {
  (void)index;
  return kcpu_conv2d_validate(n);
}
static kiln_status pool_validate(int index, const kcpu_node *n) {
  (void)index;
  return kcpu_pool2d_validate(n);
}

#define EW kcpu_elementwise_validate, kcpu_elementwise
static const kcpu_op_desc kcpu_ops[KILN_OP_COUNT_] = {
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
    [KILN_OP_MATMUL] = {"matmul", 2, 2, kcpu_matmul_validate, kcpu_matmul, 0, 0},
    [KILN_OP_SUM] = {"sum", 1, 1, kcpu_reduce_validate, kcpu_reduce, 0, 0},
    [KILN_OP_MEAN] = {"mean", 1, 1, kcpu_reduce_validate, kcpu_reduce, 0, 0},
    [KILN_OP_EXPAND] = {"expand", 1, 1, kcpu_reduce_validate, kcpu_reduce, 0, 0},
    [KILN_OP_SOFTMAX] = {"softmax", 1, 1, kcpu_softmax_validate, kcpu_softmax, 0, 0},
    [KILN_OP_LOG_SOFTMAX] = {"log_softmax", 1, 1, kcpu_softmax_validate, kcpu_softmax, 0, 0},
    [KILN_OP_SOFTMAX_BACKWARD] = {"softmax_backward", 2, 2, kcpu_softmax_validate, kcpu_softmax,
                                  0, 0},
    [KILN_OP_LOG_SOFTMAX_BACKWARD] = {"log_softmax_backward", 2, 2, kcpu_softmax_validate,
                                      kcpu_softmax, 0, 0},
    [KILN_OP_CROSS_ENTROPY] = {"cross_entropy", 2, 2, kcpu_softmax_validate, kcpu_softmax, 0, 0},
    [KILN_OP_CROSS_ENTROPY_BACKWARD] = {"cross_entropy_backward", 3, 3, kcpu_softmax_validate,
                                        kcpu_softmax, 0, 0},
    [KILN_OP_RESHAPE] = {"reshape", 1, 1, kcpu_layout_validate, kcpu_layout, 0, 0},
    [KILN_OP_TRANSPOSE] = {"transpose", 1, 1, kcpu_layout_validate, kcpu_layout, 0, 0},
    [KILN_OP_COPY] = {"copy", 1, 1, EW, 1, 0},
    [KILN_OP_CAST] = {"cast", 1, 1, EW, 0, 0},   /* x may be narrower than y: never in place */
    [KILN_OP_FILL] = {"fill", 0, 0, EW, 1, 0},
    [KILN_OP_CONV2D] = {"conv2d", 2, 3, conv_validate, kcpu_conv2d, 0, 0},
    [KILN_OP_CONV2D_BACKWARD_INPUT] = {"conv2d_backward_input", 2, 2, conv_validate,
                                       kcpu_conv2d_backward_input, 0, 0},
    [KILN_OP_CONV2D_BACKWARD_WEIGHT] = {"conv2d_backward_weight", 2, 2, conv_validate,
                                        kcpu_conv2d_backward_weight, 0, 0},
    [KILN_OP_MAXPOOL2D] = {"maxpool2d", 1, 1, pool_validate, kcpu_maxpool2d, 0, 0},
    [KILN_OP_MAXPOOL2D_BACKWARD] = {"maxpool2d_backward", 2, 2, pool_validate,
                                    kcpu_maxpool2d_backward, 0, 0},
    [KILN_OP_AVGPOOL2D] = {"avgpool2d", 1, 1, pool_validate, kcpu_avgpool2d, 0, 0},
    [KILN_OP_AVGPOOL2D_BACKWARD] = {"avgpool2d_backward", 1, 1, pool_validate,
                                    kcpu_avgpool2d_backward, 0, 0},
    [KILN_OP_SGD] = {"sgd", 2, 3, kcpu_optim_validate, kcpu_optim, 0, 1},
    [KILN_OP_ADAM] = {"adam", 5, 6, kcpu_optim_validate, kcpu_optim, 0, 1},
    [KILN_OP_INCREMENT] = {"increment", 1, 1, kcpu_optim_validate, kcpu_optim, 0, 1},
    [KILN_OP_EMBEDDING] = {"embedding", 2, 2, kcpu_seq_validate, kcpu_seq, 0, 0},
    [KILN_OP_EMBEDDING_BACKWARD] = {"embedding_backward", 2, 2, kcpu_seq_validate, kcpu_seq, 0, 0},
    [KILN_OP_SLICE] = {"slice", 1, 1, kcpu_seq_validate, kcpu_seq, 0, 0},
    [KILN_OP_SLICE_BACKWARD] = {"slice_backward", 1, 1, kcpu_seq_validate, kcpu_seq, 0, 0},
    [KILN_OP_DROPOUT] = {"dropout", 2, 2, kcpu_seq_validate, kcpu_seq, 0, 0},
    [KILN_OP_CLIP_COEF] = {"clip_coef", 1, 1, kcpu_seq_validate, kcpu_seq, 0, 0},
    [KILN_OP_ASSIGN] = {"assign", 2, 2, kcpu_seq_validate, kcpu_seq, 0, 1},
    [KILN_OP_LAYERNORM] = {"layernorm", 3, 3, kcpu_tf_validate, kcpu_tf, 0, 0},
    [KILN_OP_LAYERNORM_BACKWARD] = {"layernorm_backward", 3, 3, kcpu_tf_validate, kcpu_tf, 0, 0},
    [KILN_OP_LAYERNORM_BACKWARD_PARAMS] = {"layernorm_backward_params", 2, 2, kcpu_tf_validate,
                                           kcpu_tf, 0, 0},
    [KILN_OP_GELU] = {"gelu", 1, 1, kcpu_tf_validate, kcpu_tf, 0, 0},
    [KILN_OP_GELU_BACKWARD] = {"gelu_backward", 2, 2, kcpu_tf_validate, kcpu_tf, 0, 0},
    [KILN_OP_ATTENTION] = {"attention", 1, 1, kcpu_tf_validate, kcpu_tf, 0, 0},
    [KILN_OP_ATTENTION_BACKWARD] = {"attention_backward", 3, 3, kcpu_tf_validate, kcpu_tf, 0, 0},
    [KILN_OP_LR_SCHEDULE] = {"lr_schedule", 1, 1, kcpu_tf_validate, kcpu_tf, 0, 0},
};
#undef EW

static const kcpu_op_desc *op_desc(uint32_t op) {
  if (op >= KILN_OP_COUNT_ || !kcpu_ops[op].name) return NULL;
  return &kcpu_ops[op];
}

const char *kcpu_op_name(uint32_t op) {
  const kcpu_op_desc *d = op_desc(op);
  return d ? d->name : "unknown";
}

/* ---- messages and shapes ------------------------------------------------- */

char *kcpu_shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
  size_t len = 0;
  if (size == 0) return buf;
  buf[0] = '\0';
  len += (size_t)snprintf(buf + len, size - len, "[");
  for (int i = 0; i < ndim && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (len < size) snprintf(buf + len, size - len, "]");
  return buf;
}

kiln_status kcpu_node_error(int index, const kcpu_node *n, kiln_status st, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kcpu_host->set_error("cpu: node %d (%s): %s", index, kcpu_op_name(n->op), msg);
  return st;
}

int kcpu_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
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

int kcpu_same_shape(const kcpu_tensor *a, const kcpu_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

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

/* ---- device description -------------------------------------------------- */

static int kcpu_threads;            /* from KILN_NUM_THREADS or online cores */
static const char *kcpu_threads_from;
static char kcpu_model[256];
static char kcpu_vendor[64];
static char kcpu_features[256];

/* Copies the value of the first "key\t: value" line of /proc/cpuinfo. */
static void cpuinfo_field(const char *key, char *dst, size_t size) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[8192];
  size_t klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) != 0) continue;
    const char *colon = strchr(line, ':');
    if (!colon) continue;
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    snprintf(dst, size, "%s", v);
    dst[strcspn(dst, "\n")] = '\0';
    break;
  }
  fclose(f);
}

static void detect_cpu(void) {
  const char *env = getenv("KILN_NUM_THREADS");
  long cores = sysconf(_SC_NPROCESSORS_ONLN), n = 0;
  if (cores <= 0) cores = 1;
  if (env && *env) {
    char *end;
    n = strtol(env, &end, 10);
    if (*end != '\0' || n <= 0 || n > KCPU_MAX_THREADS) {
      if (kcpu_host->log)
        kcpu_host->log(1, "cpu: KILN_NUM_THREADS=\"%s\" is not a thread count in [1, %d]; "
                          "using %ld (the online cores)",
                       env, KCPU_MAX_THREADS, cores);
      n = 0;
    }
  }
  kcpu_threads = (int)(n > 0 ? n : cores > KCPU_MAX_THREADS ? KCPU_MAX_THREADS : cores);
  kcpu_threads_from = n > 0 ? "KILN_NUM_THREADS" : "online cores; set KILN_NUM_THREADS to change";

  snprintf(kcpu_model, sizeof kcpu_model, "CPU");
  snprintf(kcpu_vendor, sizeof kcpu_vendor, "unknown");
  cpuinfo_field("model name", kcpu_model, sizeof kcpu_model);
  cpuinfo_field("vendor_id", kcpu_vendor, sizeof kcpu_vendor);

  kcpu_features[0] = '\0';
#if defined(__x86_64__) || defined(__i386__)
  static const char *const feats[] = {"sse4.2", "avx", "avx2", "fma", "avx512f"};
  __builtin_cpu_init();
  size_t len = 0;
  for (size_t i = 0; i < sizeof feats / sizeof feats[0]; i++) {
    int has = 0;
    switch (i) {
      case 0: has = __builtin_cpu_supports("sse4.2"); break;
      case 1: has = __builtin_cpu_supports("avx"); break;
      case 2: has = __builtin_cpu_supports("avx2"); break;
      case 3: has = __builtin_cpu_supports("fma"); break;
      case 4: has = __builtin_cpu_supports("avx512f"); break;
    }
    if (has && len < sizeof kcpu_features)
      len += (size_t)snprintf(kcpu_features + len, sizeof kcpu_features - len, "%s%s",
                              len ? " " : "", feats[i]);
  }
#endif
  if (!kcpu_features[0]) snprintf(kcpu_features, sizeof kcpu_features, "baseline");
}

/* ---- plugin table members ------------------------------------------------ */

static void cpu_shutdown(void) { kcpu_host = NULL; }

static uint32_t cpu_device_count(void) { return 1; }

static kiln_status cpu_device_info(uint32_t index, kiln_device_info *info) {
  if (index != 0) {
    kcpu_host->set_error("cpu: device_info: no device %u (the CPU plugin has one device, 0)",
                         index);
    return KILN_NOT_FOUND;
  }
  if (!info || info->struct_size < sizeof(uint32_t)) {
    kcpu_host->set_error("cpu: device_info: info is NULL or its struct_size is too small");
    return KILN_INVALID_ARGUMENT;
  }
  kiln_device_info d;
  memset(&d, 0, sizeof d);
  d.struct_size = info->struct_size;
  d.kind = KILN_DEVICE_CPU;
  snprintf(d.name, sizeof d.name, "%s", kcpu_model);
  snprintf(d.vendor, sizeof d.vendor, "%s", kcpu_vendor);
  snprintf(d.driver, sizeof d.driver, "kiln-cpu %s", KCPU_VERSION);
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  d.memory_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
  d.features = KILN_FEATURE_UNIFIED;
  d.compute_units = (uint32_t)kcpu_threads;
  d.subgroup_size = 0;
  /* The kernels device_open would choose now, or why it would refuse. */
  char kernels[256];
  kcpu_isa isa;
  if (kcpu_isa_choose(getenv("KILN_CPU_ISA"), &isa, kernels + 6, sizeof kernels - 6) == KILN_OK)
    memmove(kernels, kernels + 6, strlen(kernels + 6) + 1);
  else
    memcpy(kernels, "none: ", 6);   /* device_open would fail with this */
  snprintf(d.details, sizeof d.details, "threads: %d (%s)\nisa: %s\nkernels: %s\n",
           kcpu_threads, kcpu_threads_from, kcpu_features, kernels);
  size_t n = info->struct_size < sizeof d ? info->struct_size : sizeof d;
  memcpy(info, &d, n);
  return KILN_OK;
}

/* In place (KILN_OP_SUPPORT_IN_PLACE): the elementwise ops, whose kernels
 * read element i before they write it, and RESHAPE, whose copy is then
 * skipped (compile_node takes an exact alias for both without scratch). */
static int cpu_op_support(uint32_t index, uint32_t op, uint32_t dtype) {
  const kcpu_op_desc *d = op_desc(op);
  if (index != 0 || dtype != KILN_F32 || !d) return 0;
  int in_place = (d->elementwise && op != KILN_OP_CAST && op != KILN_OP_FILL) || op == KILN_OP_RESHAPE;
  return KILN_OP_SUPPORT_RUNS | (in_place ? KILN_OP_SUPPORT_IN_PLACE : 0);
}

static kiln_status cpu_device_open(uint32_t index, kiln_plugin_device **out) {
  if (index != 0) {
    kcpu_host->set_error("cpu: device_open: no device %u (the CPU plugin has one device, 0)",
                         index);
    return KILN_NOT_FOUND;
  }
  kiln_status st = kcpu_isa_acquire();
  if (st != KILN_OK) return st;
  kiln_plugin_device *dev = kcpu_calloc(1, sizeof *dev);
  if (!dev) goto fail;
  dev->pool = kcpu_pool_create(kcpu_threads);
  if (!dev->pool) goto fail_dev;
  *out = dev;
  return KILN_OK;

fail_dev:
  free(dev);
fail:
  kcpu_isa_release();
  kcpu_host->set_error("cpu: device_open: out of memory creating a pool of %d threads",
                       kcpu_threads);
  return KILN_OUT_OF_MEMORY;
}

static void cpu_device_close(kiln_plugin_device *dev) {
  if (!dev) return;
  kcpu_pool_destroy(dev->pool);
  free(dev);
  kcpu_isa_release();
}

static kiln_status cpu_buffer_alloc(kiln_plugin_device *dev, uint64_t size,
                                    kiln_plugin_buffer **out) {
  (void)dev;
  if (size == 0) {
    kcpu_host->set_error("cpu: buffer_alloc: size is 0; buffers must have at least one byte");
    return KILN_INVALID_ARGUMENT;
  }
  if (size > (uint64_t)SIZE_MAX - 64) {
    kcpu_host->set_error("cpu: buffer_alloc: %llu bytes exceed the address space",
                         (unsigned long long)size);
    return KILN_OUT_OF_MEMORY;
  }
  size_t rounded = (size_t)((size + 63) & ~(uint64_t)63);
  kiln_plugin_buffer *b = kcpu_malloc(sizeof *b);
  if (!b) goto fail;
  b->data = kcpu_aligned_alloc(64, rounded);
  if (!b->data) goto fail_b;
  memset(b->data, 0, rounded);
  b->size = size;
  *out = b;
  return KILN_OK;

fail_b:
  free(b);
fail:
  kcpu_host->set_error("cpu: buffer_alloc: out of memory allocating %llu bytes",
                       (unsigned long long)size);
  return KILN_OUT_OF_MEMORY;
}

static void cpu_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *buf) {
  (void)dev;
  if (!buf) return;
  free(buf->data);
  free(buf);
}

/* 1 if [offset, offset + size) lies within buf. */
static int in_bounds(const kiln_plugin_buffer *buf, uint64_t offset, uint64_t size) {
  return offset <= buf->size && size <= buf->size - offset;
}

static kiln_status check_range(const char *what, const kiln_plugin_buffer *buf, uint64_t offset,
                               uint64_t size, const void *host) {
  if (!buf || (!host && size)) {
    kcpu_host->set_error("cpu: %s: NULL %s", what, buf ? "host pointer" : "buffer");
    return KILN_INVALID_ARGUMENT;
  }
  if (!in_bounds(buf, offset, size)) {
    kcpu_host->set_error("cpu: %s: range [%llu, %llu + %llu) is outside the buffer of %llu bytes",
                         what, (unsigned long long)offset, (unsigned long long)offset,
                         (unsigned long long)size, (unsigned long long)buf->size);
    return KILN_INVALID_ARGUMENT;
  }
  return KILN_OK;
}

static kiln_status cpu_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                    uint64_t offset, const void *src, uint64_t size) {
  (void)dev;
  kiln_status st = check_range("buffer_write", dst, offset, size, src);
  if (st != KILN_OK) return st;
  if (size) memcpy((char *)dst->data + offset, src, (size_t)size);
  return KILN_OK;
}

static kiln_status cpu_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src,
                                   uint64_t offset, void *dst, uint64_t size) {
  (void)dev;
  kiln_status st = check_range("buffer_read", src, offset, size, dst);
  if (st != KILN_OK) return st;
  if (size) memcpy(dst, (const char *)src->data + offset, (size_t)size);
  return KILN_OK;
}

static kiln_status cpu_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                   uint64_t dst_offset, kiln_plugin_buffer *src,
                                   uint64_t src_offset, uint64_t size) {
  (void)dev;
  kiln_status st = check_range("buffer_copy (source)", src, src_offset, size, src);
  if (st == KILN_OK) st = check_range("buffer_copy (destination)", dst, dst_offset, size, dst);
  if (st != KILN_OK) return st;
  if (size) memmove((char *)dst->data + dst_offset, (const char *)src->data + src_offset, size);
  return KILN_OK;
}

/* ---- graph compile ------------------------------------------------------- */

/* Resolves graph tensor `ti` into t (role names it for messages). */
static kiln_status resolve_tensor(int index, const kcpu_node *n, const kiln_plugin_graph *g,
                                  uint32_t ti, const char *role, kcpu_tensor *t) {
  if (ti >= g->n_tensors)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "%s is tensor %u, but the graph has %u tensors", role, ti,
                           g->n_tensors);
  const kiln_plugin_tensor *d = kiln_plugin_graph_tensor(g, ti);
  if (d->ndim > KILN_MAX_DIMS)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "%s (tensor %u) has rank %u > %d",
                           role, ti, d->ndim, KILN_MAX_DIMS);
  memset(t, 0, sizeof *t);
  t->dtype = d->dtype;
  t->ndim = (int)d->ndim;
  t->numel = 1;
  for (int i = 0; i < KILN_MAX_DIMS; i++) {
    t->shape[i] = i < t->ndim ? d->shape[i] : 1;
    if (i < t->ndim) {
      if (d->shape[i] < 0 || (d->shape[i] > 0 && t->numel > INT64_MAX / 4 / d->shape[i])) {
        char s[KCPU_SHAPE_STR];
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                               "%s (tensor %u) has an invalid shape %s", role, ti,
                               kcpu_shape_str(s, sizeof s, t->ndim, d->shape));
      }
      t->numel *= d->shape[i];
    }
  }
  uint64_t es = dtype_size(d->dtype);
  if (es == 0)
    return kcpu_node_error(index, n, KILN_UNSUPPORTED, "%s (tensor %u) has unknown dtype %u",
                           role, ti, d->dtype);
  uint64_t nbytes = (uint64_t)t->numel * es;
  if (d->nbytes != nbytes) {
    char s[KCPU_SHAPE_STR];
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "%s (tensor %u) %s %s states %llu bytes, but needs %llu", role, ti,
                           dtype_name(d->dtype), KCPU_SHAPE(s, t),
                           (unsigned long long)d->nbytes, (unsigned long long)nbytes);
  }
  if (d->buffer >= g->n_buffers || !g->buffers[d->buffer])
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "%s (tensor %u) is in buffer %u, but the graph has %u buffers", role,
                           ti, d->buffer, g->n_buffers);
  const kiln_plugin_buffer *b = g->buffers[d->buffer];
  if (!in_bounds(b, d->offset, nbytes))
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "%s (tensor %u): bytes [%llu, %llu) lie outside buffer %u of %llu "
                           "bytes",
                           role, ti, (unsigned long long)d->offset,
                           (unsigned long long)(d->offset + nbytes), d->buffer,
                           (unsigned long long)b->size);
  if (d->offset % es != 0)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "%s (tensor %u): offset %llu is not a multiple of the %s element size",
                           role, ti, (unsigned long long)d->offset, dtype_name(d->dtype));
  t->data = (char *)b->data + d->offset;
  return KILN_OK;
}

static int overlaps(const kcpu_tensor *a, const kcpu_tensor *b) {
  const char *pa = a->data, *pb = b->data;
  size_t na = (size_t)a->numel * 4, nb = (size_t)b->numel * 4;
  return na && nb && pa < pb + nb && pb < pa + na;
}

static kiln_status compile_node(const kiln_plugin_graph *g, uint32_t index, kcpu_step *step) {
  const kiln_plugin_node *pn = kiln_plugin_graph_node(g, index);
  kcpu_node *n = &step->node;
  int ix = (int)index;
  memset(n, 0, sizeof *n);
  n->op = pn->op;
  const kcpu_op_desc *d = op_desc(pn->op);
  if (!d) {
    kcpu_host->set_error("cpu: node %d: unknown op %u (this plugin knows kiln/ops.h of ABI %u.%u)",
                         ix, pn->op, KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR);
    return KILN_UNSUPPORTED;
  }
  if ((int)pn->n_inputs < d->min_inputs || (int)pn->n_inputs > d->max_inputs) {
    if (d->min_inputs == d->max_inputs)
      return kcpu_node_error(ix, n, KILN_INVALID_ARGUMENT, "expects %d inputs, got %u",
                             d->min_inputs, pn->n_inputs);
    return kcpu_node_error(ix, n, KILN_INVALID_ARGUMENT, "expects %d to %d inputs, got %u",
                           d->min_inputs, d->max_inputs, pn->n_inputs);
  }
  if (pn->flags != 0)
    return kcpu_node_error(ix, n, KILN_INVALID_ARGUMENT, "flags are reserved and must be 0, got %u",
                           pn->flags);
  n->n_inputs = (int)pn->n_inputs;
  memcpy(n->ip, pn->ip, sizeof n->ip);
  memcpy(n->fp, pn->fp, sizeof n->fp);
  kiln_status st;
  for (int i = 0; i < n->n_inputs; i++) {
    char role[32];
    snprintf(role, sizeof role, "input %d", i);
    st = resolve_tensor(ix, n, g, pn->inputs[i], role, &n->in[i]);
    if (st != KILN_OK) return st;
    int want_i32 = (pn->op == KILN_OP_CROSS_ENTROPY && i == 1) ||
                   (pn->op == KILN_OP_CROSS_ENTROPY_BACKWARD && i == 2) ||
                   ((pn->op == KILN_OP_EMBEDDING || pn->op == KILN_OP_EMBEDDING_BACKWARD) && i == 1);
    uint32_t want = want_i32 ? KILN_I32 : KILN_F32;
    uint32_t dt = n->in[i].dtype;
    if (pn->op == KILN_OP_CAST && (dt == KILN_U8 || dt == KILN_I32)) want = dt;
    if (dt != want) {
      char s[KCPU_SHAPE_STR];
      return kcpu_node_error(ix, n, KILN_DTYPE_MISMATCH, "input %d %s has dtype %s; expected %s",
                             i, KCPU_SHAPE(s, &n->in[i]), dtype_name(n->in[i].dtype),
                             dtype_name(want));
    }
  }
  st = resolve_tensor(ix, n, g, pn->output, "output", &n->out);
  if (st != KILN_OK) return st;
  if (n->out.dtype != KILN_F32) {
    char s[KCPU_SHAPE_STR];
    return kcpu_node_error(ix, n, KILN_DTYPE_MISMATCH, "output %s has dtype %s; expected f32",
                           KCPU_SHAPE(s, &n->out), dtype_name(n->out.dtype));
  }
  if (d->in_place && n->out.data != n->in[0].data)
    return kcpu_node_error(ix, n, KILN_INVALID_ARGUMENT,
                           "is in-place: its output must be its input 0 (tensor %u), got tensor %u",
                           pn->inputs[0], pn->output);
  if (d->in_place && !kcpu_same_shape(&n->out, &n->in[0])) {
    char so[KCPU_SHAPE_STR], si[KCPU_SHAPE_STR];
    return kcpu_node_error(ix, n, KILN_SHAPE_MISMATCH,
                           "is in-place: its output %s must describe input 0 %s",
                           KCPU_SHAPE(so, &n->out), KCPU_SHAPE(si, &n->in[0]));
  }
  st = d->validate(ix, n);
  if (st != KILN_OK) return st;
  step->run = d->run;

  /* Aliasing between output and inputs: see the file comment. */
  if (!d->in_place) {
    int need_scratch = 0;
    for (int i = 0; i < n->n_inputs; i++) {
      if (!overlaps(&n->out, &n->in[i])) continue;
      int exact = n->out.data == n->in[i].data && n->out.numel == n->in[i].numel;
      if (!(d->elementwise && exact) &&
          !(pn->op == KILN_OP_RESHAPE && exact))
        need_scratch = 1;
    }
    if (need_scratch) {
      step->out_bytes = (size_t)n->out.numel * 4;
      step->scratch = kcpu_aligned_alloc(64, step->out_bytes);
      if (!step->scratch) {
        kcpu_host->set_error("cpu: node %d (%s): out of memory for a %zu-byte scratch output", ix,
                             d->name, step->out_bytes);
        return KILN_OUT_OF_MEMORY;
      }
      step->dest = n->out.data;
      n->out.data = step->scratch;
    }
  }
  return KILN_OK;
}

static void cpu_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  (void)dev;
  if (!exec) return;
  if (exec->prof_ns) {
    const kcpu_node **nodes = kcpu_malloc((exec->n_steps ? exec->n_steps : 1) * sizeof *nodes);
    for (uint32_t i = 0; nodes && i < exec->n_steps; i++) nodes[i] = &exec->steps[i].node;
    if (nodes) kcpu_profile_report(nodes, exec->prof_ns, exec->n_steps, exec->prof_runs);
    free(nodes);
    free(exec->prof_ns);
  }
  for (uint32_t i = 0; i < exec->n_steps; i++) free(exec->steps[i].scratch);
  for (uint32_t i = 0; i < exec->n_packs; i++) free(exec->packs[i]);
  free(exec->packs);
  free(exec->steps);
  free(exec);
}

/* 1 if step s may write any byte of t: its output (or the destination of
 * its scratch copy) and, for in-place ops (optimizers, assign, which also
 * update state inputs), every input. */
static int step_writes(const kcpu_step *s, const kcpu_tensor *t) {
  const kcpu_node *n = &s->node;
  kcpu_tensor out = n->out;
  if (s->scratch) out.data = s->dest;
  if (overlaps(&out, t)) return 1;
  const kcpu_op_desc *d = op_desc(n->op);
  for (int i = 0; d && d->in_place && i < n->n_inputs; i++)
    if (overlaps(&n->in[i], t)) return 1;
  return 0;
}

static int same_b(const kcpu_node *a, const kcpu_node *b) {
  return a->in[1].data == b->in[1].data && a->ip[1] == b->ip[1] &&
         a->in[1].shape[0] == b->in[1].shape[0] && a->in[1].shape[1] == b->in[1].shape[1];
}

/* Matmuls that multiply the same 2-D B, with no node writing B between
 * them (an RNN's weights, once per time step), share one packing of B per
 * run: the first packs it, the rest read it (kcpu_node.packed_b). Without
 * memory for a packing its matmuls pack B themselves, as they would
 * anyway; the results are the same either way. */
static void share_packed_b(kiln_plugin_exec *exec) {
  uint32_t n = exec->n_steps;
  int64_t *lead = kcpu_malloc((n ? n : 1) * sizeof *lead);     /* leader step, or -1 */
  int64_t *open = kcpu_malloc((n ? n : 1) * sizeof *open);     /* leaders B may still share */
  int64_t *readers = kcpu_calloc(n ? n : 1, sizeof *readers);
  if (!lead || !open || !readers) goto done;
  int64_t n_open = 0, n_groups = 0;
  for (uint32_t i = 0; i < n; i++) {
    kcpu_step *s = &exec->steps[i];
    lead[i] = -1;
    if (kcpu_matmul_shares_b(&s->node) && s->node.out.numel > 0 && s->node.in[1].numel > 0) {
      for (int64_t o = 0; o < n_open && lead[i] < 0; o++)
        if (same_b(&exec->steps[open[o]].node, &s->node)) {
          lead[i] = open[o];
          if (readers[open[o]]++ == 0) n_groups++;
        }
      if (lead[i] < 0) lead[i] = open[n_open++] = i;
    }
    for (int64_t o = n_open - 1; o >= 0; o--)   /* this step's writes end sharing */
      if (step_writes(s, &exec->steps[open[o]].node.in[1])) open[o] = open[--n_open];
  }
  if (n_groups == 0) goto done;
  exec->packs = kcpu_calloc((size_t)n_groups, sizeof *exec->packs);
  if (!exec->packs) goto done;
  for (uint32_t i = 0; i < n; i++) {
    kcpu_node *nd = &exec->steps[i].node;
    if (lead[i] < 0) continue;
    if (lead[i] == i) {
      if (readers[i] == 0) continue;
      int64_t N = nd->ip[1] ? nd->in[1].shape[0] : nd->in[1].shape[1];
      int64_t K = nd->ip[1] ? nd->in[1].shape[1] : nd->in[1].shape[0];
      float *buf = kcpu_aligned_alloc(64, (size_t)kcpu_sgemm_packed_b_floats(N, K) * sizeof *buf);
      if (!buf) continue;
      exec->packs[exec->n_packs++] = buf;
      nd->packed_b = buf;
      nd->pack_b = 1;
    } else {
      nd->packed_b = exec->steps[lead[i]].node.packed_b;   /* NULL if its leader got none */
    }
  }
done:
  free(lead);
  free(open);
  free(readers);
}

/* Kernels that call kcpu_node_done on each final range of their output,
 * so an elementwise node that reads it can run there (fuse_epilogues): 1;
 * 2 where besides the kernel reads an input of the output's size only in
 * the same ranges, after which it is done with them (pooling: plane by
 * plane), so the epilogue may overwrite such an input in place. */
static int takes_epilogue(uint32_t op) {
  if (op == KILN_OP_CONV2D) return 1;
  if (op == KILN_OP_MAXPOOL2D || op == KILN_OP_MAXPOOL2D_BACKWARD || op == KILN_OP_AVGPOOL2D ||
      op == KILN_OP_AVGPOOL2D_BACKWARD)
    return 2;
  return 0;
}

static int same_or_apart(const kcpu_tensor *a, const kcpu_tensor *b) {
  return !overlaps(a, b) || (a->data == b->data && a->numel == b->numel);
}

/* $KILN_CPU_FUSE=0: no fusion (A/B benchmarks, tests). */
static int fuse_off(void) {
  const char *s = getenv("KILN_CPU_FUSE");
  return s && strcmp(s, "0") == 0;
}

/* A producer step whose output the next step, an elementwise op, reads as
 * its input 0 (conv2d then relu; maxpool2d_backward then relu_backward) runs
 * that op itself, range by range while the values are in cache, instead of
 * leaving a second pass over memory to the next step. The values are the
 * same: the same function of the same inputs. The elementwise step must not
 * write anything the producer still reads (its inputs, but see
 * takes_epilogue) and must read only
 * final values: element i of each input at element i of the output, of
 * inputs the producer does not write but for its output. Steps with a
 * scratch output are left alone. */
static void fuse_epilogues(kiln_plugin_exec *exec) {
  if (fuse_off()) return;
  for (uint32_t i = 0; i + 1 < exec->n_steps; i++) {
    kcpu_step *s = &exec->steps[i], *e = &exec->steps[i + 1];
    kcpu_node *p = &s->node;
    const kcpu_node *q = &e->node;
    int host = takes_epilogue(p->op);
    if (!host || !kcpu_elementwise_fusible(q->op) || s->fused) continue;
    if (s->scratch || e->scratch || p->out.numel == 0) continue;
    if (q->n_inputs < 1 || q->in[0].data != p->out.data || q->in[0].numel != p->out.numel ||
        q->out.numel != p->out.numel)
      continue;
    int ok = same_or_apart(&q->out, &p->out);
    for (int k = 0; ok && k < p->n_inputs; k++)
      ok = !overlaps(&q->out, &p->in[k]) ||
           (host == 2 && q->out.data == p->in[k].data && p->in[k].numel == p->out.numel);
    for (int k = 1; ok && k < q->n_inputs; k++)
      ok = q->in[k].numel == q->out.numel && same_or_apart(&q->in[k], &p->out) &&
           same_or_apart(&q->in[k], &q->out);
    if (!ok) continue;
    p->epi = q;
    e->fused = 1;
  }
}

/* Whether a step from `from` on reads bytes of t before a step overwrites
 * all of them (conservatively: any overlap counts as a read). */
static int read_later(const kiln_plugin_exec *exec, uint32_t from, const kcpu_tensor *t) {
  const char *t0 = t->data, *t1 = t0 + (size_t)t->numel * 4;
  for (uint32_t j = from; j < exec->n_steps; j++) {
    const kcpu_step *s = &exec->steps[j];
    for (int k = 0; k < s->node.n_inputs; k++)
      if (overlaps(&s->node.in[k], t)) return 1;
    const char *o0 = s->node.out.data, *o1 = o0 + (size_t)s->node.out.numel * 4;
    if (!s->scratch && o0 <= t0 && o1 >= t1) return 0;
  }
  return 0;
}

/* A node whose result only the next step reads, an ADD of that result
 * and an accumulator of its shape (autodiff's sum of a tensor's gradients,
 * one per use), computes the sum itself, and the ADD's step does nothing:
 * - a 2-D MATMUL (an LSTM's dW over its time steps): the GEMM adds into the
 *   ADD's output (beta = 1) instead of writing the product for the ADD to
 *   read back. With K within one GEMM pass (kcpu_sgemm_kc) the product is
 *   rounded once and added once, as the ADD did: the same bits.
 * - a SLICE_BACKWARD (the gradient of one of an LSTM's four gates): acc +
 *   dy inside the slice and acc + 0 outside, the ADD's own sums, without
 *   the zero-padded tensor in between.
 * The result must not be an output or persistent, and the sum must not
 * overlap the node's inputs (it is written while they are read). */
static void fuse_accumulate(kiln_plugin_exec *exec, const kiln_plugin_graph *graph) {
  if (fuse_off()) return;
  for (uint32_t i = 0; i + 1 < exec->n_steps; i++) {
    kcpu_step *s = &exec->steps[i], *e = &exec->steps[i + 1];
    kcpu_node *p = &s->node;
    const kcpu_node *q = &e->node;
    int mm = p->op == KILN_OP_MATMUL && kcpu_matmul_shares_b(p);
    if ((!mm && p->op != KILN_OP_SLICE_BACKWARD) || q->op != KILN_OP_ADD || q->n_inputs != 2 ||
        s->fused || e->fused || s->scratch || e->scratch || p->epi || p->out.numel == 0)
      continue;
    if (mm) {
      int64_t K = p->in[0].shape[p->ip[0] ? 0 : 1];
      if (K < 1 || K > kcpu_sgemm_kc()) continue;
    }
    int t = q->in[0].data == p->out.data && q->in[0].numel == p->out.numel   ? 0
            : q->in[1].data == p->out.data && q->in[1].numel == p->out.numel ? 1
                                                                             : -1;
    if (t < 0) continue;
    const kcpu_tensor *acc = &q->in[1 - t];
    if (!kcpu_same_shape(acc, &p->out) || !kcpu_same_shape(&q->out, &p->out) ||
        overlaps(acc, &p->out) || !same_or_apart(&q->out, acc))
      continue;
    int apart = 1;
    for (int k = 0; k < p->n_inputs; k++) apart &= !overlaps(&q->out, &p->in[k]);
    if (!apart) continue;
    const kiln_plugin_node *pn = kiln_plugin_graph_node(graph, i);
    if (kiln_plugin_graph_tensor(graph, pn->output)->flags &
        (KILN_PTENSOR_OUTPUT | KILN_PTENSOR_PERSISTENT))
      continue;
    if (read_later(exec, i + 2, &p->out)) continue;
    p->acc_in = acc;
    p->acc_out = &q->out;
    e->fused = 1;
  }
}

static kiln_status cpu_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *graph,
                                     kiln_plugin_exec **out) {
  kiln_status st;
  if (!graph || graph->struct_size < sizeof(kiln_plugin_graph) ||
      KILN_ABI_MAJOR_OF(graph->abi_version) != KILN_PLUGIN_ABI_MAJOR) {
    kcpu_host->set_error("cpu: graph_compile: graph descriptor is NULL, too small or of another "
                         "ABI major");
    return KILN_INVALID_ARGUMENT;
  }
  if ((graph->n_tensors && (!graph->tensors ||
                            graph->tensor_stride < sizeof(kiln_plugin_tensor))) ||
      (graph->n_nodes && (!graph->nodes || graph->node_stride < sizeof(kiln_plugin_node))) ||
      (graph->n_buffers && !graph->buffers)) {
    kcpu_host->set_error("cpu: graph_compile: tensor stride %u (need >= %zu), node stride %u "
                         "(need >= %zu) or a NULL array",
                         graph->tensor_stride, sizeof(kiln_plugin_tensor), graph->node_stride,
                         sizeof(kiln_plugin_node));
    return KILN_INVALID_ARGUMENT;
  }
  (void)dev;
  kiln_plugin_exec *exec = kcpu_calloc(1, sizeof *exec);
  if (!exec) goto fail_oom;
  exec->steps = kcpu_calloc(graph->n_nodes ? graph->n_nodes : 1, sizeof *exec->steps);
  if (!exec->steps) goto fail_exec;
  for (uint32_t i = 0; i < graph->n_nodes; i++) {
    exec->n_steps = i + 1;   /* so graph_free releases this step's scratch */
    st = compile_node(graph, i, &exec->steps[i]);
    if (st != KILN_OK) goto fail;
  }
  exec->n_steps = graph->n_nodes;
  share_packed_b(exec);
  fuse_epilogues(exec);
  fuse_accumulate(exec, graph);
  if (kcpu_profile_enabled())   /* without memory for it, no profile */
    exec->prof_ns = kcpu_calloc(exec->n_steps ? exec->n_steps : 1, sizeof *exec->prof_ns);
  *out = exec;
  return KILN_OK;

fail:
  cpu_graph_free(dev, exec);
  return st;
fail_exec:
  free(exec);
fail_oom:
  kcpu_host->set_error("cpu: graph_compile: out of memory for %u nodes", graph->n_nodes);
  return KILN_OUT_OF_MEMORY;
}

static kiln_status cpu_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  if (!dev || !exec) {
    kcpu_host->set_error("cpu: graph_run: NULL device or executable");
    return KILN_INVALID_ARGUMENT;
  }
  uint64_t t0 = exec->prof_ns ? kcpu_now_ns() : 0;
  for (uint32_t i = 0; i < exec->n_steps; i++) {
    kcpu_step *s = &exec->steps[i];
    if (!s->fused) s->run(dev->pool, &s->node);
    if (s->scratch) memcpy(s->dest, s->scratch, s->out_bytes);
    if (exec->prof_ns) {
      uint64_t t1 = kcpu_now_ns();
      exec->prof_ns[i] += t1 - t0;
      t0 = t1;
    }
  }
  exec->prof_runs += exec->prof_ns != NULL;
  return KILN_OK;
}

static kiln_status cpu_synchronize(kiln_plugin_device *dev) {
  (void)dev;   /* graph_run and buffer calls finish before they return */
  return KILN_OK;
}

/* ---- entry --------------------------------------------------------------- */

static const kiln_plugin_api kcpu_api = {
    .struct_size = sizeof(kiln_plugin_api),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .shutdown = cpu_shutdown,
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .op_support = cpu_op_support,
    .device_open = cpu_device_open,
    .device_close = cpu_device_close,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_write = cpu_buffer_write,
    .buffer_read = cpu_buffer_read,
    .buffer_copy = cpu_buffer_copy,
    .graph_compile = cpu_graph_compile,
    .graph_run = cpu_graph_run,
    .graph_free = cpu_graph_free,
    .synchronize = cpu_synchronize,
};

static kiln_status cpu_init(const kiln_host_api *host, const kiln_plugin_api **api) {
  if (!host || !host->set_error || host->struct_size < sizeof(kiln_host_api) ||
      KILN_ABI_MAJOR_OF(host->abi_version) != KILN_PLUGIN_ABI_MAJOR || !api)
    return KILN_ABI_MISMATCH;   /* no usable set_error to explain with */
  kcpu_host = host;
  kcpu_fault_init();
  detect_cpu();
  *api = &kcpu_api;
  return KILN_OK;
}

static const kiln_plugin_entry_info kcpu_entry = {
    .struct_size = sizeof(kiln_plugin_entry_info),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .name = KCPU_NAME,
    .version = KCPU_VERSION,
    .description = "reference CPU backend (f32, threaded, blocked GEMM)",
    .init = cpu_init,
};

KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *KILN_PLUGIN_ENTRY(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &kcpu_entry;
}
