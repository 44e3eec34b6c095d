/*
 * kiln/plugin.h - the plugin ABI: what a backend plugin exports and what the
 * host gives it. Read docs/plugin-abi.md for the rules in prose.
 *
 * A plugin is a shared library that exports ONE symbol, KILN_PLUGIN_ENTRY
 * ("kiln_plugin_entry"), of type kiln_plugin_entry_fn. The host calls it with
 * its own ABI version; the entry does no work beyond returning a static
 * kiln_plugin_entry_info. The host checks that descriptor (size, ABI major)
 * BEFORE calling init(), so a mismatched plugin is refused without running
 * any of its heavy code.
 *
 * Rules that keep plugins working for years:
 *  - Every table starts with struct_size (bytes) and abi_version, and only
 *    ever grows at the end. A reader uses a field only if it lies within the
 *    struct_size the writer stated. Never insert, reorder or retype a field.
 *  - ABI major must be equal; a plugin built against an older minor loads
 *    (the host does not call members beyond the plugin's struct_size).
 *  - Op and dtype numbers are never reused. An unknown op or dtype is
 *    "unsupported", never a crash.
 *  - Plugins link nothing from libkiln. They reach the host only through
 *    the kiln_host_api table given to init(). They may include kiln headers.
 *
 * Ownership: the plugin owns everything it allocates (devices, buffers,
 * executables) and frees it in the matching close/free call. Pointers the
 * host passes in (graph descriptions, host memory) are only borrowed for the
 * duration of the call: a plugin copies what it keeps.
 *
 * Threading: the host serialises calls per device (a kiln_plugin_device is
 * used by one thread at a time). Calls on different devices may come from
 * different threads at once. device_count/device_info/op_support may be
 * called from any thread after init().
 *
 * Errors: a member returns a kiln_status; on failure it calls
 * host->set_error() with a message that names what failed and why. It never
 * aborts the process because of a caller mistake.
 *
 * Ordering: buffer_write/read/copy and graph_run on one device execute in
 * call order. graph_run may return before the work finishes; buffer_read and
 * synchronize wait for everything before them. exec_write takes effect at
 * exec's next run; exec_read waits only for the run it reads.
 */
#ifndef KILN_PLUGIN_H
#define KILN_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "export.h"
#include "ops.h"
#include "status.h"
#include "types.h"
#include "version.h"

KILN_EXTERN_C_BEGIN

/* Plugin-owned opaque objects. */
typedef struct kiln_plugin_device kiln_plugin_device;
typedef struct kiln_plugin_buffer kiln_plugin_buffer;
typedef struct kiln_plugin_exec kiln_plugin_exec;

/* --------------------------------------------------------------------------
 * The host's table, given to init(). Valid until shutdown() returns.
 */
typedef struct kiln_host_api {
  uint32_t struct_size;
  uint32_t abi_version;        /* KILN_PLUGIN_ABI_VERSION of the host */
  /* Sets the calling thread's last-error message (printf format). */
  void (*set_error)(const char *fmt, ...);
  /* Log levels: 0 error, 1 warning, 2 info, 3 debug. */
  void (*log)(int level, const char *fmt, ...);
} kiln_host_api;

/* --------------------------------------------------------------------------
 * A planned graph, handed to graph_compile().
 *
 * Memory: the host has allocated `buffers` (with this plugin's buffer_alloc)
 * and placed every tensor at (buffer, offset). Tensors whose lifetimes do not
 * overlap may share bytes; the nodes run in array order, and a node may
 * overwrite any tensor the host has placed over a dead one. A node whose op
 * the plugin claims with KILN_OP_SUPPORT_IN_PLACE may have its output on
 * exactly the bytes of one of its inputs (ABI 1.3). A plugin must not
 * reorder two nodes when one writes bytes the other reads or writes.
 * The buffers outlive the executable built from the graph.
 */

/* op_support results. KILN_OP_SUPPORT_IN_PLACE (ABI 1.3): the op computes
 * the same values when its output tensor has exactly the buffer, offset and
 * nbytes of one of its inputs (an input no later node reads), so a host may
 * plan it so and save a pass over memory and the bytes. Hosts of ABI 1.2 and
 * older read any nonzero result as "runs it" and never plan it so; a 1.3
 * host never does it for a plugin that returns 1. */
#define KILN_OP_SUPPORT_RUNS 1
#define KILN_OP_SUPPORT_IN_PLACE 2

/* kiln_plugin_tensor.flags */
#define KILN_PTENSOR_INPUT       (1u << 0)  /* written by the host before a run */
#define KILN_PTENSOR_OUTPUT      (1u << 1)  /* read by the host after a run */
#define KILN_PTENSOR_PERSISTENT  (1u << 2)  /* lives across runs (params, state) */

typedef struct kiln_plugin_tensor {
  uint32_t dtype;                    /* kiln_dtype */
  uint32_t ndim;                     /* 0 (a scalar) .. KILN_MAX_DIMS */
  int64_t shape[KILN_MAX_DIMS];      /* dims [0, ndim); the rest are 1 */
  uint32_t buffer;                   /* index into kiln_plugin_graph.buffers */
  uint32_t flags;                    /* KILN_PTENSOR_* */
  uint64_t offset;                   /* byte offset within that buffer */
  uint64_t nbytes;                   /* numel * dtype size */
} kiln_plugin_tensor;

typedef struct kiln_plugin_node {
  uint32_t op;                           /* kiln_op */
  uint32_t n_inputs;
  uint32_t inputs[KILN_OP_MAX_INPUTS];   /* tensor indices */
  uint32_t output;                       /* tensor index */
  uint32_t flags;                        /* reserved, 0 */
  int64_t ip[KILN_OP_MAX_IPARAMS];       /* per-op, see kiln/ops.h */
  float fp[KILN_OP_MAX_FPARAMS];
} kiln_plugin_node;

typedef struct kiln_plugin_graph {
  uint32_t struct_size;
  uint32_t abi_version;
  uint32_t n_buffers;
  kiln_plugin_buffer *const *buffers;
  uint32_t n_tensors;
  uint32_t tensor_stride;                /* sizeof(kiln_plugin_tensor) of the host */
  const kiln_plugin_tensor *tensors;
  uint32_t n_nodes;
  uint32_t node_stride;                  /* sizeof(kiln_plugin_node) of the host */
  const kiln_plugin_node *nodes;
} kiln_plugin_graph;

/* Element access that honours the host's strides (arrays may grow). */
static inline const kiln_plugin_tensor *
kiln_plugin_graph_tensor(const kiln_plugin_graph *g, uint32_t i) {
  return (const kiln_plugin_tensor *)((const char *)g->tensors + (size_t)i * g->tensor_stride);
}
static inline const kiln_plugin_node *
kiln_plugin_graph_node(const kiln_plugin_graph *g, uint32_t i) {
  return (const kiln_plugin_node *)((const char *)g->nodes + (size_t)i * g->node_stride);
}

/* --------------------------------------------------------------------------
 * The plugin's table, returned by init().
 */
typedef struct kiln_plugin_api {
  uint32_t struct_size;
  uint32_t abi_version;        /* KILN_PLUGIN_ABI_VERSION the plugin was built with */

  /* Releases everything init() acquired. Every device must be closed first. */
  void (*shutdown)(void);

  /* Devices. Indices are stable for the plugin's lifetime. */
  uint32_t (*device_count)(void);
  /* Fills info (info->struct_size set by the caller). */
  kiln_status (*device_info)(uint32_t index, kiln_device_info *info);
  /* Nonzero if device `index` runs `op` (kiln_op) on `dtype` (kiln_dtype,
   * the dtype of the op's first floating input) for all shapes, else 0:
   * KILN_OP_SUPPORT_RUNS, plus KILN_OP_SUPPORT_IN_PLACE (ABI 1.3) where the
   * plugin also accepts the op's output on the exact bytes of an input.
   * Unknown numbers give 0. Shape-specific refusals come from
   * graph_compile. */
  int (*op_support)(uint32_t index, uint32_t op, uint32_t dtype);

  kiln_status (*device_open)(uint32_t index, kiln_plugin_device **out);
  void (*device_close)(kiln_plugin_device *dev);

  /* Memory. Buffers are zero-filled on allocation. size > 0. */
  kiln_status (*buffer_alloc)(kiln_plugin_device *dev, uint64_t size, kiln_plugin_buffer **out);
  void (*buffer_free)(kiln_plugin_device *dev, kiln_plugin_buffer *buf);
  kiln_status (*buffer_write)(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t offset,
                              const void *src, uint64_t size);
  kiln_status (*buffer_read)(kiln_plugin_device *dev, kiln_plugin_buffer *src, uint64_t offset,
                             void *dst, uint64_t size);
  kiln_status (*buffer_copy)(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t dst_offset,
                             kiln_plugin_buffer *src, uint64_t src_offset, uint64_t size);

  /* Graphs: compile once (the plugin validates every node and builds its own
   * executable form), run many times, free. */
  kiln_status (*graph_compile)(kiln_plugin_device *dev, const kiln_plugin_graph *graph,
                               kiln_plugin_exec **out);
  kiln_status (*graph_run)(kiln_plugin_device *dev, kiln_plugin_exec *exec);
  void (*graph_free)(kiln_plugin_device *dev, kiln_plugin_exec *exec);

  /* Waits until all work submitted on dev has finished. */
  kiln_status (*synchronize)(kiln_plugin_device *dev);

  /* ---- ABI 1.1: optional (NULL, or past a 1.0 plugin's struct_size) ----
   * A compiled graph's inputs and outputs by tensor index, so a plugin can
   * fold a step's uploads and read-backs into the run it records once. The
   * host calls them only for tensors flagged INPUT (exec_write) or OUTPUT
   * (exec_read) in the graph the executable was compiled from; without
   * them it uses buffer_write / buffer_read on the tensor's bytes. */

  /* Sets input `tensor` of exec to src[0..size) (size is its nbytes) for
   * exec's next graph_run and every later one, until written again. The
   * plugin may stage the bytes and copy them in as that run begins, so the
   * tensor's bytes in its buffer are unspecified until then. */
  kiln_status (*exec_write)(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                            const void *src, uint64_t size);
  /* Copies output `tensor` of exec, as the run `back` runs before the
   * latest graph_run of exec left it, to dst[0..size): back 0 is the latest
   * run, 1 the one before. Waits for that run only, so a host can submit
   * run k+1 and then read run k (back 1) while k+1 executes. back must be
   * below exec_history(); with no run yet, back 0 reads the bytes now. */
  kiln_status (*exec_read)(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                           uint32_t back, void *dst, uint64_t size);
  /* How many runs exec_read can reach back for output `tensor`: 1 (the
   * latest run only) or more. Cheap; never fails (unknown tensor: 1). */
  uint32_t (*exec_history)(kiln_plugin_device *dev, const kiln_plugin_exec *exec,
                           uint32_t tensor);
} kiln_plugin_api;

/* --------------------------------------------------------------------------
 * The entry point.
 */
typedef struct kiln_plugin_entry_info {
  uint32_t struct_size;
  uint32_t abi_version;        /* KILN_PLUGIN_ABI_VERSION the plugin was built with */
  const char *name;            /* short backend name: "cpu", "vulkan"; [a-z0-9_-] */
  const char *version;         /* the plugin's own version string */
  const char *description;     /* one line for `kiln info` */
  /* Heavy initialisation: called once, after the host accepted the
   * descriptor. On success *api stays valid until api->shutdown(). */
  kiln_status (*init)(const kiln_host_api *host, const kiln_plugin_api **api);
} kiln_plugin_entry_info;

#define KILN_PLUGIN_ENTRY kiln_plugin_entry
#define KILN_PLUGIN_ENTRY_NAME "kiln_plugin_entry"

/* Returns a pointer to static storage. Must not fail or allocate. */
typedef const kiln_plugin_entry_info *(*kiln_plugin_entry_fn)(uint32_t host_abi_version);

/* Plugins declare their entry with this macro, e.g.
 *   KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *
 *   KILN_PLUGIN_ENTRY(uint32_t host_abi_version) { return &my_info; } */
#if defined(_WIN32)
#  define KILN_PLUGIN_EXPORT __declspec(dllexport)
#else
#  define KILN_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

KILN_EXTERN_C_END

#endif /* KILN_PLUGIN_H */
