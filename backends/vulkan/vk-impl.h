/*
 * vk-impl.h - the Vulkan plugin's private interface between its files.
 *
 *   plugin.c     entry point, the plugin table, validation-message checks
 *   device.c     volk, the instance (validation layer), physical devices,
 *                their ordering and kiln_device_info, logical devices
 *   memory.c     device-local blocks suballocated into buffers, the staging
 *                buffer, buffer_write/read/copy
 *   pipeline.c   shader modules from the embedded SPIR-V, descriptor and
 *                pipeline layouts, pipelines cached per (shader, spec consts)
 *   graph.c      graph_compile (validate, plan dispatches, record ONE command
 *                buffer with barriers only where byte ranges conflict),
 *                graph_run (resubmit), graph_free
 *   ops_*.c      one file per op family: validation and dispatch planning
 *
 * Names are kvk_*. All Vulkan calls go through volk's function pointers,
 * loaded with volkLoadInstance (the loader's trampolines dispatch to the
 * right driver for every device, so several open devices are fine).
 */
#ifndef KVK_IMPL_H
#define KVK_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "volk.h"
#include "kiln/plugin.h"

#define KVK_NAME "vulkan"
#define KVK_VERSION "0.1.0"

/* The host table given to init(); used for set_error/log. */
extern const kiln_host_api *kvk_host;

/* ---- validation messages (plugin.c) --------------------------------------
 * With $KILN_VK_VALIDATION=1 every debug-utils message is logged through the
 * host and counted. kvk_validation_check() returns KILN_INTERNAL (with the
 * message as the error) if a message arrived since the last check. */
void kvk_validation_record(int severity_error, const char *msg);
kiln_status kvk_validation_check(const char *call);

/* Sets the host error to "vulkan: <call>: <what> failed: VkResult name" and
 * returns the matching status (OUT_OF_MEMORY, DEVICE_LOST or PLUGIN_ERROR). */
kiln_status kvk_vk_error(const char *call, const char *what, VkResult r);
const char *kvk_result_name(VkResult r);

/* ---- physical devices (device.c) ----------------------------------------- */

typedef struct kvk_physical {
  VkPhysicalDevice pd;
  VkPhysicalDeviceProperties props;
  VkPhysicalDeviceDriverProperties driver;     /* zero when not available */
  VkPhysicalDeviceSubgroupProperties subgroup;
  VkPhysicalDeviceMemoryProperties mem;
  uint32_t queue_family;                       /* first family with COMPUTE */
  uint32_t kind;                               /* kiln_device_kind */
  uint64_t device_local_bytes;                 /* largest DEVICE_LOCAL heap */
  uint32_t timestamp_bits;                     /* queue_family's timestampValidBits */
} kvk_physical;

/* volk, the instance (validation when asked) and the ordered device list.
 * On failure sets the host error ("no Vulkan driver found: ...") and leaves
 * nothing behind. */
kiln_status kvk_instance_init(void);
void kvk_instance_shutdown(void);
uint32_t kvk_physical_count(void);
const kvk_physical *kvk_physical_get(uint32_t index);
kiln_status kvk_device_info(uint32_t index, kiln_device_info *info);
/* 1 if the shaders with a subgroup variant use it on p: subgroup basic and
 * arithmetic operations in compute, and $KILN_VK_NO_SUBGROUPS unset (or
 * "0"). kvk_device_info reports KILN_FEATURE_SUBGROUPS exactly then. */
int kvk_use_subgroups(const kvk_physical *p);

/* ---- memory (memory.c) --------------------------------------------------- */

typedef struct kvk_block kvk_block;

/* buffer_write of at most KVK_RING_SLOT_SIZE bytes returns once the data is
 * in a staging slot and its copy is submitted (plugin.h's ordering rule
 * needs no more: later graph runs and reads are submitted after it). */
#define KVK_RING_SLOTS 4
#define KVK_RING_SLOT_SIZE ((uint64_t)1 << 20)

struct kiln_plugin_buffer {
  VkBuffer buf;
  uint64_t size;                 /* bytes the host asked for */
  kvk_block *block;              /* memory it is bound to */
  VkDeviceSize mem_offset, mem_size;
};

/* ---- pipelines (pipeline.c) ---------------------------------------------- */

/* One entry per shaders/NAME.comp. */
typedef enum kvk_shader {
  KVK_SHADER_FILL,
  KVK_SHADER_UNARY,
  KVK_SHADER_BINARY,
  KVK_SHADER_GATHER,
  KVK_SHADER_MATMUL,
  KVK_SHADER_REDUCE,
  KVK_SHADER_SOFTMAX,
  KVK_SHADER_SOFTMAX_BACKWARD,
  KVK_SHADER_CROSS_ENTROPY,
  KVK_SHADER_CROSS_ENTROPY_BACKWARD,
  KVK_SHADER_SGD,
  KVK_SHADER_ADAM,
  KVK_SHADER_CONV2D,
  KVK_SHADER_POOL2D,
  KVK_SHADER_SEQ,
  KVK_SHADER_LAYERNORM,
  KVK_SHADER_LAYERNORM_PARAMS,
  KVK_SHADER_GELU,
  KVK_SHADER_ATTENTION,
  KVK_SHADER_ATTENTION_BACKWARD,
  KVK_SHADER_LR_SCHEDULE,
  KVK_SHADER_CAST,
  KVK_SHADER_COUNT
} kvk_shader;

#define KVK_MAX_BINDINGS 6
#define KVK_MAX_SPEC 10
#define KVK_PUSH_WORDS 32        /* 128 bytes, the guaranteed minimum */

typedef struct kvk_pipeline_entry {
  kvk_shader shader;
  uint32_t n_spec;
  uint32_t spec[KVK_MAX_SPEC];
  VkPipeline pipeline;
} kvk_pipeline_entry;

typedef struct kvk_pipelines {
  VkShaderModule modules[KVK_SHADER_COUNT];
  VkDescriptorSetLayout set_layouts[KVK_MAX_BINDINGS + 1];   /* by binding count */
  VkPipelineLayout layouts[KVK_MAX_BINDINGS + 1];
  VkPipelineCache cache;
  uint32_t n_entries, cap_entries;
  kvk_pipeline_entry *entries;
} kvk_pipelines;

/* ---- the open device ----------------------------------------------------- */

struct kiln_plugin_device {
  const kvk_physical *phys;
  uint32_t index;
  VkDevice dev;
  VkQueue queue;
  VkCommandPool cmd_pool;
  VkCommandBuffer xfer_cmd;      /* transfers and fills, one at a time */
  VkFence xfer_fence;

  /* memory.c */
  uint32_t mem_type;             /* device-local type for buffers */
  VkDeviceSize block_size;
  kvk_block *blocks;             /* linked list */
  VkBuffer staging;
  VkDeviceMemory staging_mem;
  void *staging_map;
  VkDeviceSize staging_size;      /* the synchronous part, at offset 0 */
  /* Asynchronous writes: slots of the staging buffer after staging_size,
   * each with its command buffer and fence, used round robin. */
  struct kvk_ring_slot {
    VkCommandBuffer cmd;
    VkFence fence;
    int pending;                 /* submitted, fence not yet waited for */
  } ring[KVK_RING_SLOTS];
  uint32_t ring_next;

  kvk_pipelines pipes;
};

kiln_status kvk_device_open(uint32_t index, kiln_plugin_device **out);
void kvk_device_close(kiln_plugin_device *dev);

kiln_status kvk_memory_init(kiln_plugin_device *dev);
void kvk_memory_shutdown(kiln_plugin_device *dev);
kiln_status kvk_buffer_alloc(kiln_plugin_device *dev, uint64_t size, kiln_plugin_buffer **out);
void kvk_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *buf);
kiln_status kvk_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t offset,
                             const void *src, uint64_t size);
kiln_status kvk_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src, uint64_t offset,
                            void *dst, uint64_t size);
kiln_status kvk_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t dst_offset,
                            kiln_plugin_buffer *src, uint64_t src_offset, uint64_t size);
/* A host-visible, coherent buffer (cached when offered) of `size` bytes for
 * transfers, mapped whole at *map. Errors name `call` and `what`. */
kiln_status kvk_host_buffer_create(kiln_plugin_device *dev, VkDeviceSize size, const char *call,
                                   const char *what, VkBuffer *buf, VkDeviceMemory *mem,
                                   void **map);
/* Frees both (either may be VK_NULL_HANDLE); the memory's mapping goes with it. */
void kvk_host_buffer_destroy(kiln_plugin_device *dev, VkBuffer buf, VkDeviceMemory mem);
/* Records one memory barrier from (src_stage, src) to (dst_stage, dst). */
void kvk_cmd_barrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage, VkAccessFlags src,
                     VkPipelineStageFlags dst_stage, VkAccessFlags dst);
/* Records the barrier every submitted command buffer starts with: all
 * earlier work on the queue (any stage, any write) happens before, and is
 * visible to, everything in this command buffer. */
void kvk_cmd_barrier_all(VkCommandBuffer cmd);

kiln_status kvk_pipelines_init(kiln_plugin_device *dev);
void kvk_pipelines_shutdown(kiln_plugin_device *dev);
/* The pipeline of `shader` specialised with spec[0..n_spec) (constant ids
 * 0..n_spec-1, 32-bit each), created on first use and cached. */
kiln_status kvk_pipeline_get(kiln_plugin_device *dev, kvk_shader shader, const uint32_t *spec,
                             uint32_t n_spec, VkPipeline *out);
uint32_t kvk_shader_bindings(kvk_shader shader);
const char *kvk_shader_name(kvk_shader shader);

/* ---- graphs (graph.c) and op families (ops_*.c) --------------------------- */

/* A tensor of a node, resolved at compile time. */
typedef struct kvk_tensor {
  uint32_t dtype;
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  int64_t numel;
  kiln_plugin_buffer *buffer;
  uint64_t offset, nbytes;
} kvk_tensor;

typedef struct kvk_node {
  uint32_t op;
  int n_inputs;
  kvk_tensor in[KILN_OP_MAX_INPUTS];
  kvk_tensor out;
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
} kvk_node;

/* One compute dispatch. Binding i is tensor bind[i]; it is written by the
 * dispatch when bit i of write_mask is set. Push constants: words
 * [0, n_bind) are the element offsets of the bindings (filled by graph.c),
 * the op's own parameters follow from word n_bind (params[0..n_params)). */
typedef struct kvk_dispatch {
  kvk_shader shader;
  uint32_t n_spec;
  uint32_t spec[KVK_MAX_SPEC];
  uint32_t n_bind;
  const kvk_tensor *bind[KVK_MAX_BINDINGS];
  uint32_t write_mask;
  uint32_t n_params;
  uint32_t params[KVK_PUSH_WORDS];
  uint32_t groups[3];
  int node;                      /* the node that planned it (set by kvk_plan_add) */
} kvk_dispatch;

/* The dispatches a node plans; ops append with kvk_plan_add(). */
typedef struct kvk_plan {
  kiln_plugin_device *dev;
  uint32_t n, cap;
  kvk_dispatch *d;
  uint32_t n_scratch, cap_scratch;
  kvk_tensor **scratch;          /* owned by the executable once compiled */
} kvk_plan;

/* Appends a zeroed dispatch (NULL and the host error set when out of memory). */
kvk_dispatch *kvk_plan_add(kvk_plan *p, int index, const kvk_node *n);
/* A zeroed device buffer of numel f32 owned by the executable being
 * compiled (for partial results), described as a 1-D tensor; NULL and the
 * host error set on failure. */
kvk_tensor *kvk_plan_scratch(kvk_plan *p, int index, const kvk_node *n, uint64_t numel);
/* Pushes a parameter word (or a float's bits). */
void kvk_param_u(kvk_dispatch *d, uint64_t v);
void kvk_param_f(kvk_dispatch *d, float v);
/* Groups for a grid-stride loop over n items with workgroups of wg threads
 * (capped at the device limit; the shaders loop). */
uint32_t kvk_groups_1d(const kiln_plugin_device *dev, uint64_t n, uint32_t wg);
/* Largest power of two <= min(n, cap), at least lo. */
uint32_t kvk_pow2_wg(uint64_t n, uint32_t lo, uint32_t cap);

kiln_status kvk_node_error(int index, const kvk_node *n, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
const char *kvk_op_name(uint32_t op);
#define KVK_SHAPE_STR 128
char *kvk_shape_str(char *buf, size_t size, int ndim, const int64_t *shape);
#define KVK_SHAPE(buf, t) kvk_shape_str((buf), sizeof(buf), (t)->ndim, (t)->shape)
int kvk_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                        int64_t *out);
int kvk_same_shape(const kvk_tensor *a, const kvk_tensor *b);
/* Element strides of t (right-aligned against y's rank) for each axis of y;
 * 0 where t broadcasts (ops_elementwise.c). */
void kvk_broadcast_strides(const kvk_tensor *t, const kvk_tensor *y, uint32_t *st);

/* A GEMM tile (matmul.comp, conv2d.comp): a workgroup of (bn/tn) x (bm/tm)
 * threads computes bm x bn outputs, bk deep, tm x tn per thread. */
typedef struct kvk_tile {
  uint32_t bm, bn, bk, tm, tn;
} kvk_tile;
/* Replaces *t by $var ("BM,BN,BK,TM,TN") when set, checked against the
 * device's limits; a bad value fails naming the variable (ops_matmul.c). */
kiln_status kvk_tile_override(const kiln_plugin_device *dev, int index, const kvk_node *n,
                              const char *var, kvk_tile *t);

/* Each family validates a node (shapes, params) and plans its dispatches. */
typedef kiln_status (*kvk_plan_fn)(kvk_plan *p, int index, const kvk_node *n);
kiln_status kvk_elementwise_plan(kvk_plan *p, int index, const kvk_node *n);  /* ops_elementwise.c */
kiln_status kvk_layout_plan(kvk_plan *p, int index, const kvk_node *n);       /* ops_layout.c */
kiln_status kvk_matmul_plan(kvk_plan *p, int index, const kvk_node *n);       /* ops_matmul.c */
kiln_status kvk_reduce_plan(kvk_plan *p, int index, const kvk_node *n);       /* ops_reduce.c */
kiln_status kvk_softmax_plan(kvk_plan *p, int index, const kvk_node *n);      /* ops_softmax.c */
kiln_status kvk_optim_plan(kvk_plan *p, int index, const kvk_node *n);        /* ops_optim.c */
kiln_status kvk_conv_plan(kvk_plan *p, int index, const kvk_node *n);         /* ops_conv.c */
kiln_status kvk_pool_plan(kvk_plan *p, int index, const kvk_node *n);         /* ops_conv.c */
kiln_status kvk_seq_plan(kvk_plan *p, int index, const kvk_node *n);          /* ops_seq.c */
kiln_status kvk_transformer_plan(kvk_plan *p, int index, const kvk_node *n);  /* ops_transformer.c */

/* ---- executables (graph.c) and their inputs and outputs (exec_io.c) ------
 *
 * A compiled graph is recorded into KVK_FRAMES command buffers ("frames")
 * that differ only in which part of the executable's host-visible io
 * buffer they use. Run k submits frame k % n_frames, so run k+1 can be
 * submitted while run k executes; a frame is waited for only before it is
 * submitted again, or read. Each frame:
 *
 *   [cmd[0]: barrier (all earlier work) | copy armed inputs io -> arena]
 *   cmd[1]: barrier (all earlier work) | dispatches ...
 *   cmd[2..]: barrier (compute) | more dispatches ...   (long graphs only)
 *   end of the last: barrier | copy mirrored outputs arena -> io
 *                    | barrier (transfer -> host)
 *
 * A long graph is cut into chunks of at most KVK_CHUNK dispatches
 * ($KILN_VK_SUBMIT_CHUNK), each its own batch of the run's one
 * vkQueueSubmit, so no single batch runs long enough to risk a driver's
 * timeout; the fence is signalled after the last.
 *
 * so a training step is ONE submit: exec_write is a memcpy into the next
 * run's frame, exec_read a memcpy out of the run's frame after its fence.
 * Inputs and outputs too large to stage (or persistent, or both input and
 * output) go through buffer_write / buffer_read instead. */
#define KVK_FRAMES 4       /* $KILN_VK_FRAMES: 2 to KVK_FRAMES */
#define KVK_CHUNK 512

typedef struct kvk_profile kvk_profile;   /* profile.c */

typedef struct kvk_frame {
  /* cmd[0]: copies of the armed inputs, or VK_NULL_HANDLE; cmd[1..n_cmd]:
   * the graph in chunks of at most exec->chunk dispatches, each its own
   * batch of the run's one vkQueueSubmit (si[i] submits cmd[i]; si[1]
   * submits cmd[0] too when it is recorded, and si[0] is unused). */
  uint32_t n_cmd;
  VkCommandBuffer *cmd;
  VkSubmitInfo *si;
  VkFence fence;
  int pending;                  /* submitted and not yet waited for */
} kvk_frame;

/* An INPUT or OUTPUT tensor of the compiled graph. */
typedef struct kvk_io {
  uint32_t tensor;              /* index in the host's graph */
  uint32_t flags;               /* KILN_PTENSOR_* */
  kiln_plugin_buffer *buffer;   /* where it lives on the device */
  uint64_t offset, nbytes;
  int staged;                   /* 1: copied through the io buffer by each frame */
  VkDeviceSize at;              /* its bytes within a frame's part of the io buffer */
  int armed;                    /* staged inputs: written with exec_write, copied in */
  uint32_t fresh;               /* armed inputs: frames that hold the latest bytes */
} kvk_io;

struct kiln_plugin_exec {
  uint32_t n_frames;            /* KVK_FRAMES ($KILN_VK_FRAMES), or 1 when profiling */
  kvk_frame frame[KVK_FRAMES];
  uint64_t runs;                /* graph_run calls so far */
  uint32_t chunk;               /* most dispatches per command buffer */
  VkDescriptorPool pool;
  uint32_t n_dispatches, n_barriers;
  kvk_node *nodes;              /* the resolved nodes, kept for the tensors */
  uint32_t n_nodes;
  uint32_t n_scratch;
  kvk_tensor **scratch;         /* buffers for partial results */
  kvk_profile *prof;            /* $KILN_PROFILE only */
  /* exec_io.c */
  uint32_t n_io;
  kvk_io *io;
  VkDeviceSize frame_bytes;     /* one frame's part of the io buffer */
  int in_dirty;                 /* an input was armed: re-record the input copies */
  VkBuffer io_buf;
  VkDeviceMemory io_mem;
  char *io_map;
};

/* Lists the graph's INPUT/OUTPUT tensors, picks those to stage and makes
 * the io buffer (exec_io.c). */
kiln_status kvk_io_plan(kiln_plugin_device *dev, kiln_plugin_exec *exec,
                        const kiln_plugin_graph *graph);
void kvk_io_free(kiln_plugin_device *dev, kiln_plugin_exec *exec);
/* (Re-)records every frame's cmd[0], the copies of the armed inputs, after waiting
 * for the frames; clears in_dirty. */
kiln_status kvk_io_record_in(kiln_plugin_device *dev, kiln_plugin_exec *exec);
/* Records frame f's output copies at the end of its command buffer. */
void kvk_io_record_out(const kiln_plugin_exec *exec, VkCommandBuffer cmd, uint32_t f);
/* Before frame f is submitted: brings its staged inputs up to date. */
void kvk_io_refresh(kiln_plugin_exec *exec, uint32_t f);
/* Waits for frame f if it is in flight (and collects its profile). */
kiln_status kvk_frame_wait(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t f,
                           const char *call);
kiln_status kvk_exec_write(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                           const void *src, uint64_t size);
kiln_status kvk_exec_read(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                          uint32_t back, void *dst, uint64_t size);
uint32_t kvk_exec_history(const kiln_plugin_exec *exec, uint32_t tensor);

/* graph.c: the plugin table members. */
int kvk_op_supported(uint32_t op);
/* Whether op may write its output over a same-sized input (op_support's
 * KILN_OP_SUPPORT_IN_PLACE). */
int kvk_op_in_place(uint32_t op);
kiln_status kvk_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *graph,
                              kiln_plugin_exec **out);
kiln_status kvk_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *exec);
void kvk_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *exec);
kiln_status kvk_synchronize(kiln_plugin_device *dev);

/* profile.c: $KILN_PROFILE, device timestamps around every dispatch of a
 * compiled graph. kvk_profile_enabled reads the variable (at graph
 * compile); create makes the query pool for plan's dispatches (or a
 * profile that reports "not supported" when the queue has no
 * timestamps); cmd_begin / cmd_dispatch record the reset and the writes;
 * collect adds one finished run (call after its fence); report prints the
 * per-op table and the slowest nodes to stderr. All take a NULL profile. */
int kvk_profile_enabled(void);
kiln_status kvk_profile_create(kiln_plugin_device *dev, const kvk_plan *plan, kvk_profile **out);
void kvk_profile_destroy(kiln_plugin_device *dev, kvk_profile *p);
void kvk_profile_cmd_begin(VkCommandBuffer cmd, const kvk_profile *p);
void kvk_profile_cmd_dispatch(VkCommandBuffer cmd, const kvk_profile *p, uint32_t i);
kiln_status kvk_profile_collect(kiln_plugin_device *dev, kvk_profile *p);
void kvk_profile_report(const kiln_plugin_device *dev, const kvk_profile *p, const kvk_node *nodes,
                        uint32_t n_nodes);

#endif /* KVK_IMPL_H */
