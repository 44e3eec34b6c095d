/*
 * plugin_harness.h - drive a backend plugin directly, without libkiln.
 *
 * Header-only (static functions) for the op test suites. It dlopens a plugin
 * file, negotiates and inits it with a small host table, opens device 0 and
 * offers a tiny builder for graphs:
 *
 *   ph_plugin p;
 *   cr_assert_eq(ph_open(&p, NULL), KILN_OK, "%s", ph_error());  // the CPU plugin
 *   ph_graph g;
 *   ph_graph_init(&g, &p);
 *   int a = ph_tensor(&g, KILN_F32, 2, (int64_t[]){2, 3});
 *   int b = ph_tensor(&g, KILN_F32, 1, (int64_t[]){3});
 *   int y = ph_tensor(&g, KILN_F32, 2, (int64_t[]){2, 3});
 *   ph_node(&g, KILN_OP_ADD, 2, (int[]){a, b}, y, NULL, NULL);
 *   ph_compile(&g);  ph_write(&g, a, a_data);  ph_write(&g, b, b_data);
 *   ph_run(&g);      ph_read(&g, y, y_data);
 *   ph_graph_free(&g);
 *   ph_close(&p);
 *
 * Every function that can fail returns a kiln_status; the plugin's last
 * set_error() message (or the harness's own) is in ph_error(). Tensor and
 * node descriptors are plain arrays in ph_graph, so a test may edit them
 * before ph_compile() to build an invalid graph on purpose.
 *
 * The thread count of the CPU plugin comes from $KILN_NUM_THREADS, read at
 * init: call setenv() before ph_open().
 */
#ifndef KILN_PLUGIN_HARNESS_H
#define KILN_PLUGIN_HARNESS_H

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/plugin.h"

#ifndef PH_MAX_TENSORS
#define PH_MAX_TENSORS 64
#endif
#ifndef PH_MAX_NODES
#define PH_MAX_NODES 64
#endif
#ifndef PH_MAX_BUFFERS
#define PH_MAX_BUFFERS 64
#endif

/* The default plugin file: the CPU plugin of this build tree. */
#define PH_CPU_PLUGIN KILN_BUILD_DIR "/lib/kiln/libkiln-cpu.so"

/* ---- host table ---------------------------------------------------------- */

static char ph_error_buf_[4096];

static inline void ph_host_set_error_(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ph_error_buf_, sizeof ph_error_buf_, fmt, ap);
  va_end(ap);
}

static inline void ph_host_log_(int level, const char *fmt, ...) {
  const char *env = getenv("KILN_LOG_LEVEL");
  int max_level = env ? atoi(env) : 1;
  if (level > max_level) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[plugin %d] ", level);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static const kiln_host_api ph_host_api_ = {
    .struct_size = sizeof(kiln_host_api),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .set_error = ph_host_set_error_,
    .log = ph_host_log_,
};

/** The last error message set by the plugin or the harness ("" if none). */
static inline const char *ph_error(void) { return ph_error_buf_; }
/** Clears the last error message. */
static inline void ph_clear_error(void) { ph_error_buf_[0] = '\0'; }

/* ---- plugin -------------------------------------------------------------- */

typedef struct ph_plugin {
  void *dl;                              /* dlopen handle */
  const kiln_plugin_entry_info *info;    /* the plugin's descriptor */
  const kiln_plugin_api *api;            /* from init() */
  kiln_plugin_device *dev;               /* device 0, opened */
} ph_plugin;

/** Loads the plugin at `path` (NULL: PH_CPU_PLUGIN), checks its descriptor,
 *  inits it and opens device 0. On failure everything is undone, *p is
 *  zeroed and the reason is in ph_error(). */
static inline kiln_status ph_open(ph_plugin *p, const char *path) {
  memset(p, 0, sizeof *p);
  ph_clear_error();
  if (!path) path = PH_CPU_PLUGIN;
  kiln_status st = KILN_PLUGIN_ERROR;
  p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!p->dl) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: dlopen %s: %s", path, dlerror());
    return KILN_NOT_FOUND;
  }
  kiln_plugin_entry_fn entry;
  *(void **)&entry = dlsym(p->dl, KILN_PLUGIN_ENTRY_NAME);
  if (!entry) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: %s exports no %s", path,
             KILN_PLUGIN_ENTRY_NAME);
    goto fail_dl;
  }
  p->info = entry(KILN_PLUGIN_ABI_VERSION);
  if (!p->info || p->info->struct_size < sizeof(kiln_plugin_entry_info) ||
      KILN_ABI_MAJOR_OF(p->info->abi_version) != KILN_PLUGIN_ABI_MAJOR) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: %s: bad entry descriptor", path);
    st = KILN_ABI_MISMATCH;
    goto fail_dl;
  }
  st = p->info->init(&ph_host_api_, &p->api);
  if (st != KILN_OK) goto fail_dl;
  if (p->api->device_count() < 1) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: %s has no device", path);
    st = KILN_NO_DEVICE;
    goto fail_init;
  }
  st = p->api->device_open(0, &p->dev);
  if (st != KILN_OK) goto fail_init;
  return KILN_OK;

fail_init:
  p->api->shutdown();
fail_dl:
  dlclose(p->dl);
  memset(p, 0, sizeof *p);
  return st;
}

/** Closes device 0, shuts the plugin down and unloads it. */
static inline void ph_close(ph_plugin *p) {
  if (!p->dl) return;
  if (p->dev) p->api->device_close(p->dev);
  if (p->api) p->api->shutdown();
  dlclose(p->dl);
  memset(p, 0, sizeof *p);
}

/* ---- graph builder ------------------------------------------------------- */

typedef struct ph_graph {
  ph_plugin *p;
  uint32_t n_buffers, n_tensors, n_nodes;
  kiln_plugin_buffer *buffers[PH_MAX_BUFFERS];
  uint64_t buffer_sizes[PH_MAX_BUFFERS];
  kiln_plugin_tensor tensors[PH_MAX_TENSORS];
  kiln_plugin_node nodes[PH_MAX_NODES];
  kiln_plugin_exec *exec;                /* set by ph_compile */
} ph_graph;

/** Starts an empty graph on p's device 0. */
static inline void ph_graph_init(ph_graph *g, ph_plugin *p) {
  memset(g, 0, sizeof *g);
  g->p = p;
}

/** Frees the executable and every buffer of g. */
static inline void ph_graph_free(ph_graph *g) {
  if (g->exec) g->p->api->graph_free(g->p->dev, g->exec);
  for (uint32_t i = 0; i < g->n_buffers; i++)
    if (g->buffers[i]) g->p->api->buffer_free(g->p->dev, g->buffers[i]);
  ph_graph_init(g, g->p);
}

/** Element size of a dtype (the harness cannot call libkiln). */
static inline uint64_t ph_dtype_size(uint32_t dt) {
  switch (dt) {
    case KILN_F32: case KILN_I32: return 4;
    case KILN_F16: case KILN_BF16: return 2;
    case KILN_U8: return 1;
    default: return 0;
  }
}

/** Element count of a shape (1 for rank 0). */
static inline int64_t ph_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

/** Allocates a buffer of `size` bytes (zero-filled by the plugin); returns
 *  its index, or -1 (message in ph_error()). */
static inline int ph_buffer(ph_graph *g, uint64_t size) {
  if (g->n_buffers >= PH_MAX_BUFFERS) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: more than %d buffers", PH_MAX_BUFFERS);
    return -1;
  }
  kiln_plugin_buffer *b = NULL;
  if (g->p->api->buffer_alloc(g->p->dev, size, &b) != KILN_OK) return -1;
  g->buffers[g->n_buffers] = b;
  g->buffer_sizes[g->n_buffers] = size;
  return (int)g->n_buffers++;
}

/** Describes a tensor of dtype `dt` and shape[ndim] (shape may be NULL for
 *  rank 0) at `offset` bytes in buffer `buffer`; returns its index, or -1. */
static inline int ph_tensor_at(ph_graph *g, uint32_t dt, int ndim, const int64_t *shape, int buffer,
                        uint64_t offset) {
  if (g->n_tensors >= PH_MAX_TENSORS || ndim < 0 || ndim > KILN_MAX_DIMS) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: too many tensors or bad rank %d", ndim);
    return -1;
  }
  kiln_plugin_tensor *t = &g->tensors[g->n_tensors];
  memset(t, 0, sizeof *t);
  t->dtype = dt;
  t->ndim = (uint32_t)ndim;
  for (int i = 0; i < KILN_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
  t->buffer = (uint32_t)buffer;
  t->offset = offset;
  t->nbytes = (uint64_t)ph_numel(ndim, shape) * ph_dtype_size(dt);
  t->flags = KILN_PTENSOR_INPUT | KILN_PTENSOR_OUTPUT;
  return (int)g->n_tensors++;
}

/** Describes a tensor in a buffer of its own (at least 4 bytes); returns its
 *  index, or -1. */
static inline int ph_tensor(ph_graph *g, uint32_t dt, int ndim, const int64_t *shape) {
  uint64_t nbytes = (uint64_t)ph_numel(ndim, shape) * ph_dtype_size(dt);
  int b = ph_buffer(g, nbytes < 4 ? 4 : nbytes);
  if (b < 0) return -1;
  return ph_tensor_at(g, dt, ndim, shape, b, 0);
}

/** Appends a node: op on inputs[n_inputs] writing tensor `output`, with
 *  integer and float parameters (NULL: all zero; otherwise 8 each). Returns
 *  the node index, or -1. */
static inline int ph_node(ph_graph *g, uint32_t op, int n_inputs, const int *inputs, int output,
                   const int64_t *ip, const float *fp) {
  if (g->n_nodes >= PH_MAX_NODES || n_inputs < 0 || n_inputs > KILN_OP_MAX_INPUTS) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: too many nodes or inputs");
    return -1;
  }
  kiln_plugin_node *n = &g->nodes[g->n_nodes];
  memset(n, 0, sizeof *n);
  n->op = op;
  n->n_inputs = (uint32_t)n_inputs;
  for (int i = 0; i < n_inputs; i++) n->inputs[i] = (uint32_t)inputs[i];
  n->output = (uint32_t)output;
  if (ip) memcpy(n->ip, ip, sizeof n->ip);
  if (fp) memcpy(n->fp, fp, sizeof n->fp);
  return (int)g->n_nodes++;
}

/** Compiles the described graph (the plugin validates every node). */
static inline kiln_status ph_compile(ph_graph *g) {
  ph_clear_error();
  if (g->exec) {
    g->p->api->graph_free(g->p->dev, g->exec);
    g->exec = NULL;
  }
  kiln_plugin_graph desc = {
      .struct_size = sizeof(kiln_plugin_graph),
      .abi_version = KILN_PLUGIN_ABI_VERSION,
      .n_buffers = g->n_buffers,
      .buffers = g->buffers,
      .n_tensors = g->n_tensors,
      .tensor_stride = sizeof(kiln_plugin_tensor),
      .tensors = g->tensors,
      .n_nodes = g->n_nodes,
      .node_stride = sizeof(kiln_plugin_node),
      .nodes = g->nodes,
  };
  return g->p->api->graph_compile(g->p->dev, &desc, &g->exec);
}

/** Runs the compiled graph and waits for it. */
static inline kiln_status ph_run(ph_graph *g) {
  if (!g->exec) {
    snprintf(ph_error_buf_, sizeof ph_error_buf_, "harness: ph_run before a successful ph_compile");
    return KILN_INVALID_STATE;
  }
  kiln_status st = g->p->api->graph_run(g->p->dev, g->exec);
  if (st != KILN_OK) return st;
  return g->p->api->synchronize(g->p->dev);
}

/** Writes tensor t's nbytes from `data`. */
static inline kiln_status ph_write(ph_graph *g, int t, const void *data) {
  const kiln_plugin_tensor *d = &g->tensors[t];
  return g->p->api->buffer_write(g->p->dev, g->buffers[d->buffer], d->offset, data, d->nbytes);
}

/** Reads tensor t's nbytes into `data`. */
static inline kiln_status ph_read(ph_graph *g, int t, void *data) {
  const kiln_plugin_tensor *d = &g->tensors[t];
  return g->p->api->buffer_read(g->p->dev, g->buffers[d->buffer], d->offset, data, d->nbytes);
}

#endif /* KILN_PLUGIN_HARNESS_H */
