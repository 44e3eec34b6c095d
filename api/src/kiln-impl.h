/*
 * kiln-impl.h - libkiln's private definitions of the public opaque types and
 * the internal helpers shared between its files. Never installed.
 *
 * Internal non-static functions are named kiln__*.
 */
#ifndef KILN_IMPL_H
#define KILN_IMPL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "kiln/kiln.h"
#include "kiln/plugin.h"

/* True if a size-prefixed table `t` (with struct_size) contains `member`. */
#define KILN__HAS_MEMBER(t, type, member) \
  ((t)->struct_size >= offsetof(type, member) + sizeof(((type *)0)->member))

/* ---- errors (error.c) ---------------------------------------------------- */

/* Sets the thread's last error to the formatted message and returns status,
 * so callers can write `return kiln__error(KILN_SHAPE_MISMATCH, "...")`. */
kiln_status kiln__error(kiln_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
kiln_status kiln__verror(kiln_status status, const char *fmt, va_list ap);
/* Formats a shape as "[2, 3, 4]" into buf (returns buf). */
char *kiln__shape_str(char *buf, size_t size, int ndim, const int64_t *shape);
/* Checked allocation helpers: set KILN_OUT_OF_MEMORY's message on failure. */
void *kiln__malloc(size_t size);
void *kiln__calloc(size_t n, size_t size);
void *kiln__realloc(void *p, size_t size);
char *kiln__strdup(const char *s);

/* The host table given to plugins (error.c). */
extern const kiln_host_api kiln__host_api;

/* ---- context, plugins, devices, tensors (context.c, loader.c, ...) ------- */

struct kiln_plugin {
  kiln_context *ctx;
  void *handle;                          /* dlopen handle */
  char *path;
  const kiln_plugin_entry_info *entry;
  const kiln_plugin_api *api;
  uint32_t abi_version;
};

typedef struct kiln__report {
  kiln_load_result result;
  char *path;
  char *name;
  uint32_t abi_version;
  char *message;
} kiln__report;

struct kiln_context {
  kiln_plugin **plugins;
  size_t n_plugins, cap_plugins;
  kiln__report *reports;
  size_t n_reports, cap_reports;
};

struct kiln_device {
  kiln_context *ctx;
  kiln_plugin *plugin;
  uint32_t index;
  kiln_plugin_device *pdev;
  kiln_device_info info;
};

struct kiln_tensor {
  kiln_device *dev;
  kiln_plugin_buffer *buf;
  uint64_t offset;
  kiln_dtype dtype;
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  int64_t numel;
  size_t nbytes;
};

/* ---- graphs (graph.c, autodiff.c, compile.c) ---------------------------- */

typedef enum kiln__node_kind {
  KILN__NODE_OP = 0,      /* computed by op */
  KILN__NODE_INPUT = 1,   /* fed by the host */
  KILN__NODE_PARAM = 2,   /* persistent, trainable (storage) */
  KILN__NODE_STATE = 3    /* persistent, not trainable (storage) */
} kiln__node_kind;

struct kiln_node {
  kiln_graph *graph;
  uint32_t id;                           /* index in graph->nodes = run order */
  kiln__node_kind kind;
  kiln_op op;                            /* KILN_OP_NONE for leaves */
  kiln_dtype dtype;
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  int n_inputs;
  kiln_node *inputs[KILN_OP_MAX_INPUTS];
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
  char *name;                            /* inputs, params, state; else NULL */
  kiln_tensor *storage;                  /* params and state */
  kiln_node *inplace;                    /* in-place ops: the param/state written */
  kiln_node *grad;                       /* params: gradient after backward */
  int is_output;
};

struct kiln_graph {
  kiln_node **nodes;
  uint32_t n_nodes, cap_nodes;
  kiln_status status;                    /* first build error */
  char error[1024];
  int has_backward;
};

int64_t kiln__numel(int ndim, const int64_t *shape);


/* ---- graph internals shared by graph.c, autodiff.c, optimizer.c, compile.c */

/* Records a build error: sets the thread's last error and, if g has none
 * yet, g's sticky status and message. Returns NULL for builders. */
kiln_node *kiln__graph_fail(kiln_graph *g, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* NumPy broadcast of a and b into out[*nout]; returns 0, or -1 with
 * *bad_axis (output axis, may be NULL) when two dims are incompatible. */
int kiln__broadcast_shapes(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                           int64_t *out, int *bad_axis);
/* The param/state leaf whose storage n denotes (n itself, or the leaf an
 * in-place chain writes), or NULL if n is not persistent. */
kiln_node *kiln__storage_root(kiln_node *n);
/* optimizer.c: validates the inputs of SGD/ADAM/INCREMENT; on error writes
 * a message (without the op name) into msg and returns the status. */
kiln_status kiln__optim_infer(kiln_op op, int n_in, kiln_node *const *in, const int64_t *ip,
                              const float *fp, char *msg, size_t msg_size);

/* ---- allocation-failure injection (fault.c), for tests only ------------- */

/* Makes the n-th kiln__malloc/calloc/realloc/strdup from now fail as if the
 * host were out of memory (once; later ones succeed again); n <= 0 disarms.
 * Resets the count kiln__fault_alloc_count() returns. $KILN_FAULT_ALLOC=N
 * arms it the same way at the first allocation of the process. Exported for
 * the test suites; not part of the public API. */
KILN_API void kiln__fault_alloc_arm(long n);
/* Allocations counted since the last kiln__fault_alloc_arm() (or start). */
KILN_API long kiln__fault_alloc_count(void);
/* 1 if the armed failure has happened since the last arm, else 0. */
KILN_API int kiln__fault_alloc_fired(void);
/* Called by the allocation helpers: 1 if this allocation must fail. */
int kiln__fault_alloc_now(void);

/* rnn.c: the sequence ops (KILN_OP_EMBEDDING .. KILN_OP_ASSIGN).
 * kiln__seq_arity: 1 and the input count range if op is one of them.
 * kiln__seq_infer: validates the inputs and parameters (may normalise ip,
 * e.g. a negative axis) and writes the output dtype and shape; on error
 * writes a message (without the op name) into msg and returns the status. */
int kiln__seq_arity(kiln_op op, int *lo, int *hi);
kiln_status kiln__seq_infer(kiln_op op, int n_in, kiln_node *const *in, int64_t *ip,
                            const float *fp, int given_ndim, const int64_t *given_shape,
                            kiln_dtype *dtype, int *ndim, int64_t *shape, char *msg, size_t size);

/* transformer.c: the transformer ops (KILN_OP_LAYERNORM .. KILN_OP_LR_SCHEDULE),
 * as kiln__seq_arity and kiln__seq_infer for the sequence ops. */
int kiln__tf_arity(kiln_op op, int *lo, int *hi);
kiln_status kiln__tf_infer(kiln_op op, int n_in, kiln_node *const *in, int64_t *ip,
                           const float *fp, kiln_dtype *dtype, int *ndim, int64_t *shape,
                           char *msg, size_t size);

/* ---- CPU fallback (fallback.c, used by compile.c) ------------------------ */

/* A compiled graph partitioned over the chosen device and the CPU plugin. */
struct kiln__fallback;
/* 1 if a live node of g is not supported by dev and the loaded CPU plugin
 * supports every such node (and $KILN_NO_FALLBACK is not set). */
int kiln__fallback_needed(const kiln_graph *g, const kiln_device *dev);
/* Partitions g into segments on dev and the CPU and compiles each. */
kiln_status kiln__fallback_compile(kiln_graph *g, kiln_device *dev, struct kiln__fallback **out);
void kiln__fallback_free(struct kiln__fallback *fb);
kiln_status kiln__fallback_set_input(struct kiln__fallback *fb, const kiln_node *input,
                                     const void *data, size_t nbytes);
kiln_status kiln__fallback_run(struct kiln__fallback *fb);
kiln_status kiln__fallback_get_output(struct kiln__fallback *fb, const kiln_node *node, void *data,
                                      size_t nbytes);
/* Adds the segments' memory to *total. */
void kiln__fallback_memory(const struct kiln__fallback *fb, kiln_memory_stats *total);
/* The partition as text, one line per segment (static to fb). */
const char *kiln__fallback_plan(const struct kiln__fallback *fb);

#endif /* KILN_IMPL_H */
