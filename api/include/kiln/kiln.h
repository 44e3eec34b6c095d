/*
 * kiln/kiln.h - the kiln public API.
 *
 * Objects (all opaque):
 *   kiln_context   loaded plugins and their load reports
 *   kiln_plugin    one loaded backend plugin (owned by the context)
 *   kiln_device    an opened device of a plugin
 *   kiln_tensor    device memory with a dtype and shape
 *   kiln_graph     a static graph under construction (device independent)
 *   kiln_node      a value in a graph (owned by the graph)
 *   kiln_compiled  a graph compiled for one device: planned, ready to run
 *
 * Errors: functions return kiln_status and leave a message for
 * kiln_last_error(). Graph-building functions (kiln_add, kiln_matmul, ...)
 * are the exception, so that model code reads as a formula: they return the
 * new node, or NULL on error. A NULL argument node yields NULL again without
 * a new message, and the graph remembers its first error, which
 * kiln_graph_status() and kiln_graph_compile() report.
 */
#ifndef KILN_KILN_H
#define KILN_KILN_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "export.h"
#include "ops.h"
#include "status.h"
#include "types.h"
#include "version.h"

KILN_EXTERN_C_BEGIN

typedef struct kiln_context kiln_context;
typedef struct kiln_plugin kiln_plugin;
typedef struct kiln_device kiln_device;
typedef struct kiln_tensor kiln_tensor;
typedef struct kiln_graph kiln_graph;
typedef struct kiln_node kiln_node;
typedef struct kiln_compiled kiln_compiled;

/* ==========================================================================
 * Context and plugins
 */

/* kiln_context_options.flags */
#define KILN_CONTEXT_NO_DISCOVERY (1u << 0) /* load no plugin automatically */

typedef struct kiln_context_options {
  uint32_t struct_size;    /* sizeof(kiln_context_options) */
  uint32_t flags;          /* KILN_CONTEXT_* */
  /* Extra colon-separated directories searched before KILN_PLUGIN_PATH.
   * NULL for none. */
  const char *plugin_path;
} kiln_context_options;

/** Creates a context and, unless KILN_CONTEXT_NO_DISCOVERY, loads every
 *  plugin found in: opts->plugin_path, then $KILN_PLUGIN_PATH (colon-separated
 *  directories), then the `kiln` directory beside libkiln (the build tree's
 *  lib/kiln/ or the install's lib/kiln/). Never the current directory
 *  implicitly. A refused plugin is recorded in the load reports and never
 *  fails context creation. opts may be NULL. Free with kiln_context_destroy(). */
KILN_API kiln_status kiln_context_create(const kiln_context_options *opts, kiln_context **out);

/** Destroys the context and unloads its plugins. Every device, tensor and
 *  compiled graph made from it must be destroyed first. NULL is ignored. */
KILN_API void kiln_context_destroy(kiln_context *ctx);

/** Loads one plugin file explicitly. On success *out (may be NULL) is owned by
 *  the context. On failure a load report is recorded as well and the status
 *  says why: KILN_IO_ERROR (dlopen failed), KILN_PLUGIN_ERROR (no entry
 *  symbol, bad table, duplicate name, init failed), KILN_ABI_MISMATCH. */
KILN_API kiln_status kiln_plugin_load(kiln_context *ctx, const char *path, kiln_plugin **out);

/* Outcome of one load attempt. Numbers never reused. */
typedef enum kiln_load_result {
  KILN_LOAD_OK = 0,
  KILN_LOAD_DLOPEN_FAILED = 1,  /* message holds dlerror() text */
  KILN_LOAD_NO_ENTRY = 2,       /* "not a kiln plugin (no entry symbol ...)" */
  KILN_LOAD_ABI_MISMATCH = 3,   /* "ABI major N, host supports M" */
  KILN_LOAD_BAD_TABLE = 4,      /* a table too short, NULL members, bad name */
  KILN_LOAD_DUPLICATE = 5,      /* a plugin with the same name is loaded */
  KILN_LOAD_INIT_FAILED = 6,    /* init() returned an error */
  KILN_LOAD_RESULT_MAX_ = 0x7fffffff
} kiln_load_result;

typedef struct kiln_load_report {
  uint32_t struct_size;         /* set by the caller */
  kiln_load_result result;
  const char *path;             /* the file tried */
  const char *name;             /* plugin name, or NULL if not known */
  uint32_t abi_version;         /* the plugin's packed ABI version, 0 if unknown */
  const char *message;          /* human-readable outcome ("loaded", or why not) */
} kiln_load_report;

/** Number of load attempts recorded in ctx (successful and refused). */
KILN_API size_t kiln_load_report_count(const kiln_context *ctx);
/** Copies report i into *out. Strings are owned by ctx. */
KILN_API kiln_status kiln_load_report_get(const kiln_context *ctx, size_t i, kiln_load_report *out);

/** Number of loaded plugins, and the i-th (owned by ctx), in load order. */
KILN_API size_t kiln_plugin_count(const kiln_context *ctx);
KILN_API kiln_plugin *kiln_plugin_at(const kiln_context *ctx, size_t i);
/** Finds a loaded plugin by name ("cpu"); NULL if none. */
KILN_API kiln_plugin *kiln_plugin_find(const kiln_context *ctx, const char *name);

/** Plugin properties; strings owned by the plugin object. */
KILN_API const char *kiln_plugin_name(const kiln_plugin *p);
KILN_API const char *kiln_plugin_version(const kiln_plugin *p);
KILN_API const char *kiln_plugin_description(const kiln_plugin *p);
KILN_API const char *kiln_plugin_path(const kiln_plugin *p);
KILN_API uint32_t kiln_plugin_abi_version(const kiln_plugin *p);
KILN_API uint32_t kiln_plugin_device_count(const kiln_plugin *p);
/** Fills *info (set info->struct_size = sizeof *info first). */
KILN_API kiln_status kiln_plugin_device_info(const kiln_plugin *p, uint32_t index, kiln_device_info *info);
/** 1 if device `index` of p supports op on dtype, else 0. */
KILN_API int kiln_plugin_op_support(const kiln_plugin *p, uint32_t index, kiln_op op, kiln_dtype dtype);

/** Name of an op ("matmul"), "unknown" for an unknown number. */
KILN_API const char *kiln_op_name(kiln_op op);
/** Name of a device kind ("discrete GPU"). */
KILN_API const char *kiln_device_kind_name(kiln_device_kind kind);

/* ==========================================================================
 * Devices
 */

/** Opens a device. backend: a plugin name ("cpu", "vulkan"), or "auto"/NULL
 *  for the best device of any plugin (discrete GPU > integrated > virtual >
 *  CPU). index: the device index within that plugin, or -1 for its best.
 *  With "auto" and index >= 0, index counts over all plugins' devices in
 *  load order. Free with kiln_device_close(). */
KILN_API kiln_status kiln_device_open(kiln_context *ctx, const char *backend, int index,
                                      kiln_device **out);
/** Closes the device. Its tensors and compiled graphs must be gone. */
KILN_API void kiln_device_close(kiln_device *dev);
/** Fills *info (set info->struct_size first). */
KILN_API kiln_status kiln_device_get_info(const kiln_device *dev, kiln_device_info *info);
/** The plugin the device belongs to. */
KILN_API kiln_plugin *kiln_device_plugin(const kiln_device *dev);
/** Waits for all queued work on dev. */
KILN_API kiln_status kiln_device_synchronize(kiln_device *dev);

/* ==========================================================================
 * Tensors: device memory with a dtype and a dense row-major shape.
 */

/** Creates a zero-filled tensor on dev. ndim 0 makes a scalar; shape may
 *  then be NULL. Every dim must be >= 1. Free with kiln_tensor_destroy(). */
KILN_API kiln_status kiln_tensor_create(kiln_device *dev, kiln_dtype dtype, int ndim,
                                        const int64_t *shape, kiln_tensor **out);
KILN_API void kiln_tensor_destroy(kiln_tensor *t);
/** Copies nbytes (must equal kiln_tensor_nbytes) from host memory into t. */
KILN_API kiln_status kiln_tensor_upload(kiln_tensor *t, const void *src, size_t nbytes);
/** Copies t into host memory; waits for pending work. nbytes must equal
 *  kiln_tensor_nbytes. */
KILN_API kiln_status kiln_tensor_download(const kiln_tensor *t, void *dst, size_t nbytes);
/** Copies src into dst (same dtype and element count, same device). */
KILN_API kiln_status kiln_tensor_copy(kiln_tensor *dst, const kiln_tensor *src);

KILN_API kiln_dtype kiln_tensor_dtype(const kiln_tensor *t);
KILN_API int kiln_tensor_ndim(const kiln_tensor *t);
/** Size of axis (negative counts from the end); 0 if out of range. */
KILN_API int64_t kiln_tensor_dim(const kiln_tensor *t, int axis);
/** Copies the shape into shape[KILN_MAX_DIMS]; returns ndim. */
KILN_API int kiln_tensor_shape(const kiln_tensor *t, int64_t *shape);
KILN_API int64_t kiln_tensor_numel(const kiln_tensor *t);
KILN_API size_t kiln_tensor_nbytes(const kiln_tensor *t);
KILN_API kiln_device *kiln_tensor_device(const kiln_tensor *t);

/* ==========================================================================
 * Graphs
 */

/** Creates an empty graph. Free with kiln_graph_destroy() (after or before
 *  any kiln_compiled made from it: a compiled graph keeps what it needs). */
KILN_API kiln_status kiln_graph_create(kiln_graph **out);
KILN_API void kiln_graph_destroy(kiln_graph *g);
/** The first error met while building g (KILN_OK if none); its message is
 *  in kiln_graph_error(). */
KILN_API kiln_status kiln_graph_status(const kiln_graph *g);
KILN_API const char *kiln_graph_error(const kiln_graph *g);

/* Leaves. */
/** An input fed before each run with kiln_compiled_set_input(). */
KILN_API kiln_node *kiln_input(kiln_graph *g, const char *name, kiln_dtype dtype, int ndim,
                               const int64_t *shape);
/** A trainable parameter stored in `storage` (borrowed: it must outlive
 *  every compiled graph using it). kiln_graph_backward() computes its
 *  gradient. */
KILN_API kiln_node *kiln_param(kiln_graph *g, const char *name, kiln_tensor *storage);
/** Persistent non-trainable state in `storage` (optimizer moments, step
 *  counters, running statistics). */
KILN_API kiln_node *kiln_state(kiln_graph *g, const char *name, kiln_tensor *storage);
/** A tensor filled with `value` each run. */
KILN_API kiln_node *kiln_fill(kiln_graph *g, kiln_dtype dtype, int ndim, const int64_t *shape,
                              float value);

/* Elementwise (broadcasting). */
KILN_API kiln_node *kiln_add(kiln_graph *g, kiln_node *a, kiln_node *b);
KILN_API kiln_node *kiln_sub(kiln_graph *g, kiln_node *a, kiln_node *b);
KILN_API kiln_node *kiln_mul(kiln_graph *g, kiln_node *a, kiln_node *b);
KILN_API kiln_node *kiln_div(kiln_graph *g, kiln_node *a, kiln_node *b);
KILN_API kiln_node *kiln_neg(kiln_graph *g, kiln_node *x);
KILN_API kiln_node *kiln_relu(kiln_graph *g, kiln_node *x);
KILN_API kiln_node *kiln_tanh(kiln_graph *g, kiln_node *x);
KILN_API kiln_node *kiln_sigmoid(kiln_graph *g, kiln_node *x);
KILN_API kiln_node *kiln_exp(kiln_graph *g, kiln_node *x);
KILN_API kiln_node *kiln_log(kiln_graph *g, kiln_node *x);
/** a * x + b. */
KILN_API kiln_node *kiln_scale(kiln_graph *g, kiln_node *x, float a, float b);
/** a * (float)x + b as f32, x u8, i32 or f32 (KILN_OP_CAST): e.g. bytes
 *  uploaded as they are and scaled to [0, 1] on the device. */
KILN_API kiln_node *kiln_cast(kiln_graph *g, kiln_node *x, float a, float b);

/** Matrix product, see KILN_OP_MATMUL. */
KILN_API kiln_node *kiln_matmul(kiln_graph *g, kiln_node *a, kiln_node *b, int transpose_a,
                                int transpose_b);

/** Sum / mean over the axes in axes_mask (bit i = axis i; 0 means all axes). */
KILN_API kiln_node *kiln_sum(kiln_graph *g, kiln_node *x, uint32_t axes_mask, int keepdim);
KILN_API kiln_node *kiln_mean(kiln_graph *g, kiln_node *x, uint32_t axes_mask, int keepdim);
/** Broadcasts x to shape (NumPy rules). */
KILN_API kiln_node *kiln_expand(kiln_graph *g, kiln_node *x, int ndim, const int64_t *shape);

/** Softmax / log-softmax over the last axis. */
KILN_API kiln_node *kiln_softmax(kiln_graph *g, kiln_node *x);
KILN_API kiln_node *kiln_log_softmax(kiln_graph *g, kiln_node *x);
/** Mean cross-entropy; logits [N, C] f32, labels [N] i32; a scalar. */
KILN_API kiln_node *kiln_cross_entropy(kiln_graph *g, kiln_node *logits, kiln_node *labels);

/** Layout. One dim of reshape may be -1 (inferred). */
KILN_API kiln_node *kiln_reshape(kiln_graph *g, kiln_node *x, int ndim, const int64_t *shape);
/** Output axis i = input axis perm[i]; perm has x's rank entries. */
KILN_API kiln_node *kiln_transpose(kiln_graph *g, kiln_node *x, const int *perm);
/** [N, ...] -> [N, prod(...)]. */
KILN_API kiln_node *kiln_flatten(kiln_graph *g, kiln_node *x);

/* Convolution and pooling (NCHW). */
typedef struct kiln_conv2d_params {
  int stride_h, stride_w;   /* >= 1 */
  int pad_h, pad_w;         /* >= 0 */
  int dil_h, dil_w;         /* >= 1 */
  int groups;               /* >= 1, divides C and O */
} kiln_conv2d_params;
typedef struct kiln_pool2d_params {
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_h, pad_w;         /* <= kernel / 2 */
  int count_include_pad;    /* average pooling only */
} kiln_pool2d_params;

/** x [N, C, H, W], w [O, C/groups, KH, KW], bias [O] or NULL. NULL params
 *  means stride 1, no padding, dilation 1, groups 1. */
KILN_API kiln_node *kiln_conv2d(kiln_graph *g, kiln_node *x, kiln_node *w, kiln_node *bias,
                                const kiln_conv2d_params *params);
KILN_API kiln_node *kiln_maxpool2d(kiln_graph *g, kiln_node *x, const kiln_pool2d_params *params);
KILN_API kiln_node *kiln_avgpool2d(kiln_graph *g, kiln_node *x, const kiln_pool2d_params *params);

/** Generic node constructor, for ops without a convenience function and for
 *  tests: out_shape is required only for ops whose output shape is not
 *  implied by their inputs (EXPAND, FILL, RESHAPE, the *_BACKWARD ops with
 *  "shape given"); pass ndim -1 otherwise. ip/fp may be NULL (zeros). */
KILN_API kiln_node *kiln_node_create(kiln_graph *g, kiln_op op, int n_inputs, kiln_node *const *inputs,
                            const int64_t *ip, const float *fp, kiln_dtype out_dtype,
                            int out_ndim, const int64_t *out_shape);

/* Node queries. */
KILN_API kiln_dtype kiln_node_dtype(const kiln_node *n);
/** Copies the shape into shape[KILN_MAX_DIMS]; returns ndim, or -1 for NULL. */
KILN_API int kiln_node_shape(const kiln_node *n, int64_t *shape);
KILN_API int64_t kiln_node_numel(const kiln_node *n);
KILN_API kiln_op kiln_node_op(const kiln_node *n);
/** Name given to an input/param/state, or NULL. */
KILN_API const char *kiln_node_name(const kiln_node *n);

/* Autodiff and optimizers. */

/** Appends the backward graph of the scalar `loss` with respect to every
 *  parameter it depends on. Call at most once per graph. */
KILN_API kiln_status kiln_graph_backward(kiln_graph *g, kiln_node *loss);
/** The gradient node of param after kiln_graph_backward(), or NULL if loss
 *  does not depend on it (no error is set in that case). */
KILN_API kiln_node *kiln_grad(kiln_graph *g, kiln_node *param);

/** SGD update of param in place (see KILN_OP_SGD). velocity: a kiln_state of
 *  param's shape, or NULL when momentum is 0. Returns the update node. */
KILN_API kiln_node *kiln_sgd_update(kiln_graph *g, kiln_node *param, kiln_node *grad,
                                    kiln_node *velocity, float lr, float momentum,
                                    float weight_decay, int nesterov);

typedef struct kiln_adam_options {
  float lr;             /* 1e-3 */
  float beta1;          /* 0.9 */
  float beta2;          /* 0.999 */
  float eps;            /* 1e-8 */
  float weight_decay;   /* 0 */
  int decoupled;        /* 1 for AdamW */
} kiln_adam_options;

/** Adam/AdamW update of param in place (see KILN_OP_ADAM). m, v: kiln_state
 *  nodes of param's shape; step: the node returned by kiln_increment() on a
 *  scalar f32 step counter; lr: NULL, or a scalar f32 node overriding
 *  opts->lr. Returns the update node. */
KILN_API kiln_node *kiln_adam_update(kiln_graph *g, kiln_node *param, kiln_node *grad,
                                     kiln_node *m, kiln_node *v, kiln_node *step, kiln_node *lr,
                                     const kiln_adam_options *opts);
/** state += amount, in place; returns the node holding the new value. */
KILN_API kiln_node *kiln_increment(kiln_graph *g, kiln_node *state, float amount);

/** Marks n as an output: it is computed and kept for
 *  kiln_compiled_get_output(). Nodes that are neither outputs nor feed an
 *  output or an in-place update are pruned at compile time. */
KILN_API kiln_status kiln_graph_output(kiln_graph *g, kiln_node *n);

/* ==========================================================================
 * Compiled graphs
 */

typedef struct kiln_memory_stats {
  uint32_t struct_size;
  uint64_t arena_bytes;        /* bytes allocated for inputs, outputs, intermediates */
  uint64_t unplanned_bytes;    /* what they would take with no reuse */
  uint64_t persistent_bytes;   /* params and state the graph refers to */
  uint32_t n_nodes;            /* nodes handed to the plugin */
} kiln_memory_stats;

/** Plans memory for g on dev, allocates it, and has the plugin build its
 *  executable form. g is not modified; it must outlive c, since c's
 *  inputs and outputs are named by g's nodes. */
KILN_API kiln_status kiln_graph_compile(kiln_graph *g, kiln_device *dev, kiln_compiled **out);
KILN_API void kiln_compiled_destroy(kiln_compiled *c);
/** Uploads an input's data (nbytes must equal its size). */
KILN_API kiln_status kiln_compiled_set_input(kiln_compiled *c, const kiln_node *input,
                                             const void *data, size_t nbytes);
/** Runs the whole graph once. */
KILN_API kiln_status kiln_compiled_run(kiln_compiled *c);
/** Downloads an output (marked with kiln_graph_output) after a run. */
KILN_API kiln_status kiln_compiled_get_output(kiln_compiled *c, const kiln_node *node, void *data,
                                              size_t nbytes);
/** Pipelining: how many runs back kiln_compiled_get_output_back() can read
 *  `node` (at least 1, the latest run). Where it is 2 or more, a loop can
 *  start run k+1 before reading run k's loss, so the device never waits for
 *  the host between steps (the Vulkan plugin keeps two runs of every small
 *  output; the CPU plugin one, as its runs finish before they return). */
KILN_API int kiln_compiled_output_depth(kiln_compiled *c, const kiln_node *node);
/** kiln_compiled_get_output() of the run `back` runs before the latest
 *  (0: the latest); back < kiln_compiled_output_depth(). Waits for that
 *  run only. */
KILN_API kiln_status kiln_compiled_get_output_back(kiln_compiled *c, const kiln_node *node,
                                                   int back, void *data, size_t nbytes);
KILN_API kiln_status kiln_compiled_memory(const kiln_compiled *c, kiln_memory_stats *stats);

/** Writes into buf (size bytes, always NUL-terminated, truncated if
 *  needed) how c runs, one line per segment: the plugin and device of each
 *  and its nodes. A graph whose ops the device all supports is one segment;
 *  one with ops it lacks is partitioned with the CPU plugin (CPU fallback,
 *  off with $KILN_NO_FALLBACK=1), and the text also says which values and
 *  params are copied between segments. */
KILN_API kiln_status kiln_compiled_describe(const kiln_compiled *c, char *buf, size_t size);

KILN_EXTERN_C_END

#endif /* KILN_KILN_H */
