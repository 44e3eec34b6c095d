/*
 * abi_fields.h - every field of every plugin ABI 1.0 struct, and every
 * numbered constant of ABI 1.0, as X-macro lists. tests/abi/abi10_layout.c
 * expands them against the frozen headers (tests/abi/v1.0/), test_abi.c
 * against the current ones; the two must agree field for field.
 *
 * Append-only, like the ABI: a new minor adds a new list (ABI_FIELDS_1_1),
 * it never edits these.
 */
#ifndef KILN_TEST_ABI_FIELDS_H
#define KILN_TEST_ABI_FIELDS_H

#define ABI_FIELDS_1_0(X)                                                      \
  X(kiln_host_api, struct_size) X(kiln_host_api, abi_version)                  \
  X(kiln_host_api, set_error) X(kiln_host_api, log)                            \
  X(kiln_plugin_tensor, dtype) X(kiln_plugin_tensor, ndim)                     \
  X(kiln_plugin_tensor, shape) X(kiln_plugin_tensor, buffer)                   \
  X(kiln_plugin_tensor, flags) X(kiln_plugin_tensor, offset)                   \
  X(kiln_plugin_tensor, nbytes)                                                \
  X(kiln_plugin_node, op) X(kiln_plugin_node, n_inputs)                        \
  X(kiln_plugin_node, inputs) X(kiln_plugin_node, output)                      \
  X(kiln_plugin_node, flags) X(kiln_plugin_node, ip) X(kiln_plugin_node, fp)   \
  X(kiln_plugin_graph, struct_size) X(kiln_plugin_graph, abi_version)          \
  X(kiln_plugin_graph, n_buffers) X(kiln_plugin_graph, buffers)                \
  X(kiln_plugin_graph, n_tensors) X(kiln_plugin_graph, tensor_stride)          \
  X(kiln_plugin_graph, tensors) X(kiln_plugin_graph, n_nodes)                  \
  X(kiln_plugin_graph, node_stride) X(kiln_plugin_graph, nodes)                \
  X(kiln_plugin_api, struct_size) X(kiln_plugin_api, abi_version)              \
  X(kiln_plugin_api, shutdown) X(kiln_plugin_api, device_count)                \
  X(kiln_plugin_api, device_info) X(kiln_plugin_api, op_support)               \
  X(kiln_plugin_api, device_open) X(kiln_plugin_api, device_close)             \
  X(kiln_plugin_api, buffer_alloc) X(kiln_plugin_api, buffer_free)             \
  X(kiln_plugin_api, buffer_write) X(kiln_plugin_api, buffer_read)             \
  X(kiln_plugin_api, buffer_copy) X(kiln_plugin_api, graph_compile)            \
  X(kiln_plugin_api, graph_run) X(kiln_plugin_api, graph_free)                 \
  X(kiln_plugin_api, synchronize)                                              \
  X(kiln_plugin_entry_info, struct_size) X(kiln_plugin_entry_info, abi_version) \
  X(kiln_plugin_entry_info, name) X(kiln_plugin_entry_info, version)           \
  X(kiln_plugin_entry_info, description) X(kiln_plugin_entry_info, init)       \
  X(kiln_device_info, struct_size) X(kiln_device_info, kind)                   \
  X(kiln_device_info, name) X(kiln_device_info, vendor)                        \
  X(kiln_device_info, driver) X(kiln_device_info, memory_bytes)                \
  X(kiln_device_info, features) X(kiln_device_info, compute_units)             \
  X(kiln_device_info, subgroup_size) X(kiln_device_info, details)

/* Arrays the host walks with a stride: their element size may grow, but
 * ABI 1.0 readers rely on the 1.0 prefix. Whole structs, for the "only grows"
 * check. */
#define ABI_STRUCTS_1_0(X)                                                     \
  X(kiln_host_api) X(kiln_plugin_tensor) X(kiln_plugin_node)                   \
  X(kiln_plugin_graph) X(kiln_plugin_api) X(kiln_plugin_entry_info)            \
  X(kiln_device_info)

#define ABI_CONSTANTS_1_0(X)                                                   \
  X(KILN_OP_NONE) X(KILN_OP_ADD) X(KILN_OP_SUB) X(KILN_OP_MUL) X(KILN_OP_DIV)  \
  X(KILN_OP_NEG) X(KILN_OP_RELU) X(KILN_OP_TANH) X(KILN_OP_SIGMOID)            \
  X(KILN_OP_EXP) X(KILN_OP_LOG) X(KILN_OP_SCALE) X(KILN_OP_RELU_BACKWARD)      \
  X(KILN_OP_TANH_BACKWARD) X(KILN_OP_SIGMOID_BACKWARD) X(KILN_OP_MATMUL)       \
  X(KILN_OP_SUM) X(KILN_OP_MEAN) X(KILN_OP_EXPAND) X(KILN_OP_SOFTMAX)          \
  X(KILN_OP_LOG_SOFTMAX) X(KILN_OP_SOFTMAX_BACKWARD)                           \
  X(KILN_OP_LOG_SOFTMAX_BACKWARD) X(KILN_OP_CROSS_ENTROPY)                     \
  X(KILN_OP_CROSS_ENTROPY_BACKWARD) X(KILN_OP_RESHAPE) X(KILN_OP_TRANSPOSE)    \
  X(KILN_OP_COPY) X(KILN_OP_FILL) X(KILN_OP_CONV2D)                            \
  X(KILN_OP_CONV2D_BACKWARD_INPUT) X(KILN_OP_CONV2D_BACKWARD_WEIGHT)           \
  X(KILN_OP_MAXPOOL2D) X(KILN_OP_MAXPOOL2D_BACKWARD) X(KILN_OP_AVGPOOL2D)      \
  X(KILN_OP_AVGPOOL2D_BACKWARD) X(KILN_OP_SGD) X(KILN_OP_ADAM)                 \
  X(KILN_OP_INCREMENT) X(KILN_OP_MAX_IPARAMS) X(KILN_OP_MAX_FPARAMS)           \
  X(KILN_OP_MAX_INPUTS)                                                        \
  X(KILN_DTYPE_INVALID) X(KILN_F32) X(KILN_F16) X(KILN_BF16) X(KILN_I32)       \
  X(KILN_U8) X(KILN_MAX_DIMS)                                                  \
  X(KILN_OK) X(KILN_INVALID_ARGUMENT) X(KILN_SHAPE_MISMATCH)                   \
  X(KILN_DTYPE_MISMATCH) X(KILN_UNSUPPORTED) X(KILN_OUT_OF_MEMORY)             \
  X(KILN_IO_ERROR) X(KILN_CORRUPT_DATA) X(KILN_NOT_FOUND) X(KILN_PLUGIN_ERROR) \
  X(KILN_ABI_MISMATCH) X(KILN_NO_DEVICE) X(KILN_DEVICE_LOST) X(KILN_INTERNAL)  \
  X(KILN_INVALID_STATE)                                                        \
  X(KILN_DEVICE_OTHER) X(KILN_DEVICE_CPU) X(KILN_DEVICE_VIRTUAL_GPU)           \
  X(KILN_DEVICE_INTEGRATED_GPU) X(KILN_DEVICE_DISCRETE_GPU)                    \
  X(KILN_FEATURE_F16) X(KILN_FEATURE_BF16) X(KILN_FEATURE_SUBGROUPS)           \
  X(KILN_FEATURE_UNIFIED)                                                      \
  X(KILN_PTENSOR_INPUT) X(KILN_PTENSOR_OUTPUT) X(KILN_PTENSOR_PERSISTENT)      \
  X(KILN_PLUGIN_ABI_MAJOR)

/* One field, struct or constant as measured in one set of headers. */
typedef struct abi_item {
  const char *name;       /* "kiln_plugin_api.graph_run", "sizeof kiln_plugin_api", "KILN_F32" */
  unsigned long long a;   /* offset, size, or value */
  unsigned long long b;   /* field size, or 0 */
} abi_item;

/* The frozen ABI 1.0 measurements (abi10_layout.c). */
extern const abi_item abi10_fields[], abi10_structs[], abi10_constants[];
extern const int abi10_n_fields, abi10_n_structs, abi10_n_constants;
extern const char abi10_entry_name[];

#endif
