/*
 * plugin.c - the Vulkan backend's entry point and plugin table.
 *
 * init() loads Vulkan through volk and lists the devices (device.c); a
 * machine without a loader or a driver gets KILN_NO_DEVICE and a message
 * starting "no Vulkan driver found:", which the host shows in `kiln info`.
 *
 * Validation: with $KILN_VK_VALIDATION=1 every message of the validation
 * layer is logged through the host and counted; the table members below
 * check after their work (and before it), so the call during which a message
 * arrived, or the next one, fails with KILN_INTERNAL naming the message.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vk-impl.h"

const kiln_host_api *kvk_host;

/* ---- validation messages -------------------------------------------------- */

static pthread_mutex_t kvk_msg_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long kvk_msg_count, kvk_msg_seen;
static char kvk_msg_first[1024];   /* the first message not yet reported */

void kvk_validation_record(int severity_error, const char *msg) {
  if (kvk_host) kvk_host->log(severity_error ? 0 : 1, "vulkan validation: %s", msg);
  pthread_mutex_lock(&kvk_msg_lock);
  if (kvk_msg_count == kvk_msg_seen) snprintf(kvk_msg_first, sizeof kvk_msg_first, "%s", msg);
  kvk_msg_count++;
  pthread_mutex_unlock(&kvk_msg_lock);
}

kiln_status kvk_validation_check(const char *call) {
  kiln_status st = KILN_OK;
  pthread_mutex_lock(&kvk_msg_lock);
  if (kvk_msg_count != kvk_msg_seen) {
    kvk_host->set_error("vulkan: %s: %lu validation message(s); the first: %s", call,
                        kvk_msg_count - kvk_msg_seen, kvk_msg_first);
    kvk_msg_seen = kvk_msg_count;
    st = KILN_INTERNAL;
  }
  pthread_mutex_unlock(&kvk_msg_lock);
  return st;
}

/* Runs `expr` (a kiln_status) between two validation checks. */
#define CHECKED(call, expr)                                   \
  do {                                                        \
    kiln_status st_ = kvk_validation_check(call);             \
    if (st_ != KILN_OK) return st_;                           \
    st_ = (expr);                                             \
    kiln_status sv_ = kvk_validation_check(call);             \
    return st_ != KILN_OK ? st_ : sv_;                        \
  } while (0)

/* ---- table members -------------------------------------------------------- */

static void vk_shutdown(void) {
  kvk_instance_shutdown();
  kvk_host = NULL;
}

static uint32_t vk_device_count(void) { return kvk_physical_count(); }

static kiln_status vk_device_info(uint32_t index, kiln_device_info *info) {
  return kvk_device_info(index, info);
}

static int vk_op_support(uint32_t index, uint32_t op, uint32_t dtype) {
  if (index >= kvk_physical_count() || dtype != KILN_F32 || !kvk_op_supported(op)) return 0;
  return KILN_OP_SUPPORT_RUNS | (kvk_op_in_place(op) ? KILN_OP_SUPPORT_IN_PLACE : 0);
}

static kiln_status vk_device_open(uint32_t index, kiln_plugin_device **out) {
  if (!out) {
    kvk_host->set_error("vulkan: device_open: out is NULL");
    return KILN_INVALID_ARGUMENT;
  }
  CHECKED("device_open", kvk_device_open(index, out));
}

static void vk_device_close(kiln_plugin_device *dev) {
  kvk_device_close(dev);
  kvk_validation_check("device_close");   /* logged already; nothing to return it to */
}

static kiln_status vk_buffer_alloc(kiln_plugin_device *dev, uint64_t size,
                                   kiln_plugin_buffer **out) {
  CHECKED("buffer_alloc", kvk_buffer_alloc(dev, size, out));
}

static void vk_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *buf) {
  kvk_buffer_free(dev, buf);
}

static kiln_status vk_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                   uint64_t offset, const void *src, uint64_t size) {
  CHECKED("buffer_write", kvk_buffer_write(dev, dst, offset, src, size));
}

static kiln_status vk_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src,
                                  uint64_t offset, void *dst, uint64_t size) {
  CHECKED("buffer_read", kvk_buffer_read(dev, src, offset, dst, size));
}

static kiln_status vk_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                  uint64_t dst_offset, kiln_plugin_buffer *src,
                                  uint64_t src_offset, uint64_t size) {
  CHECKED("buffer_copy", kvk_buffer_copy(dev, dst, dst_offset, src, src_offset, size));
}

static kiln_status vk_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *graph,
                                    kiln_plugin_exec **out) {
  CHECKED("graph_compile", kvk_graph_compile(dev, graph, out));
}

static kiln_status vk_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  CHECKED("graph_run", kvk_graph_run(dev, exec));
}

static void vk_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  kvk_graph_free(dev, exec);
}

static kiln_status vk_synchronize(kiln_plugin_device *dev) {
  CHECKED("synchronize", kvk_synchronize(dev));
}

static kiln_status vk_exec_write(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                                 const void *src, uint64_t size) {
  if (!dev || !exec) {
    kvk_host->set_error("vulkan: exec_write: NULL device or executable");
    return KILN_INVALID_ARGUMENT;
  }
  CHECKED("exec_write", kvk_exec_write(dev, exec, tensor, src, size));
}

static kiln_status vk_exec_read(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                                uint32_t back, void *dst, uint64_t size) {
  if (!dev || !exec) {
    kvk_host->set_error("vulkan: exec_read: NULL device or executable");
    return KILN_INVALID_ARGUMENT;
  }
  CHECKED("exec_read", kvk_exec_read(dev, exec, tensor, back, dst, size));
}

static uint32_t vk_exec_history(kiln_plugin_device *dev, const kiln_plugin_exec *exec,
                                uint32_t tensor) {
  (void)dev;
  return exec ? kvk_exec_history(exec, tensor) : 1;
}

static const kiln_plugin_api kvk_api = {
    .struct_size = sizeof(kiln_plugin_api),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .shutdown = vk_shutdown,
    .device_count = vk_device_count,
    .device_info = vk_device_info,
    .op_support = vk_op_support,
    .device_open = vk_device_open,
    .device_close = vk_device_close,
    .buffer_alloc = vk_buffer_alloc,
    .buffer_free = vk_buffer_free,
    .buffer_write = vk_buffer_write,
    .buffer_read = vk_buffer_read,
    .buffer_copy = vk_buffer_copy,
    .graph_compile = vk_graph_compile,
    .graph_run = vk_graph_run,
    .graph_free = vk_graph_free,
    .synchronize = vk_synchronize,
    .exec_write = vk_exec_write,
    .exec_read = vk_exec_read,
    .exec_history = vk_exec_history,
};

static kiln_status vk_init(const kiln_host_api *host, const kiln_plugin_api **api) {
  if (!host || !host->set_error || !host->log || host->struct_size < sizeof(kiln_host_api) ||
      KILN_ABI_MAJOR_OF(host->abi_version) != KILN_PLUGIN_ABI_MAJOR || !api)
    return KILN_ABI_MISMATCH;   /* no usable set_error to explain with */
  kvk_host = host;
  kvk_msg_count = kvk_msg_seen = 0;
  kiln_status st = kvk_instance_init();
  if (st != KILN_OK) {
    kvk_host = NULL;
    return st;
  }
  st = kvk_validation_check("init");
  if (st != KILN_OK) {
    kvk_instance_shutdown();
    kvk_host = NULL;
    return st;
  }
  *api = &kvk_api;
  return KILN_OK;
}

static const kiln_plugin_entry_info kvk_entry = {
    .struct_size = sizeof(kiln_plugin_entry_info),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .name = KVK_NAME,
    .version = KVK_VERSION,
    .description = "Vulkan compute backend (f32; any Vulkan 1.1 GPU, lavapipe in CI)",
    .init = vk_init,
};

KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *KILN_PLUGIN_ENTRY(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &kvk_entry;
}
