/*
 * fake_plugin.h - one configurable fake backend plugin for the loader tests.
 * Each tests/fake_plugins/fake_*.c defines the macros below for the defect
 * it stands for, then includes this file (the way Vulkan-Loader's test
 * drivers choose their exports by macro).
 *
 *   FAKE_NAME            entry name (default "fake")
 *   FAKE_ENTRY_ABI       entry abi_version (default KILN_PLUGIN_ABI_VERSION)
 *   FAKE_API_ABI         api table abi_version (default FAKE_ENTRY_ABI)
 *   FAKE_API_SIZE        api table struct_size (default sizeof the table)
 *   FAKE_NULL_GRAPH_RUN  leave the graph_run member NULL
 *   FAKE_INIT_FAILS      init sets an error and fails (after pointing *api at
 *                        a table whose shutdown aborts: the host must not
 *                        call shutdown after a failed init)
 *   FAKE_MUST_NOT_INIT   init aborts: the host must refuse before init
 *   FAKE_NO_ENTRY        export no entry symbol at all
 *   FAKE_NEWER_MINOR     entry and table claim minor + 1, and the table has
 *                        an extra member past the ABI 1.0 end
 *
 * The working plugin has one device (a virtual GPU named "Fake Device 0")
 * with host-memory buffers; it supports only KILN_OP_ADD on f32 and refuses
 * every graph. init logs one info-level line through host->log. If $KILN_FAKE_LOG names a file, init and shutdown append a
 * line to it so tests can see what the host called.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/plugin.h"

#ifndef FAKE_NAME
#define FAKE_NAME "fake"
#endif
#ifndef FAKE_ENTRY_ABI
#ifdef FAKE_NEWER_MINOR
#define FAKE_ENTRY_ABI (KILN_PLUGIN_ABI_VERSION + 1)
#else
#define FAKE_ENTRY_ABI KILN_PLUGIN_ABI_VERSION
#endif
#endif
#ifndef FAKE_API_ABI
#define FAKE_API_ABI FAKE_ENTRY_ABI
#endif

static const kiln_host_api *host;

static void fake_log(const char *what) {
  const char *path = getenv("KILN_FAKE_LOG");
  if (!path || !*path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%s %s\n", FAKE_NAME, what);
  fclose(f);
}

struct kiln_plugin_device { int open; };
struct kiln_plugin_buffer { uint64_t size; unsigned char *data; };

static void fake_shutdown(void) {
#ifdef FAKE_INIT_FAILS
  abort(); /* the host called shutdown after a failed init */
#endif
  fake_log("shutdown");
}

static uint32_t fake_device_count(void) { return 1; }

static kiln_status fake_device_info(uint32_t index, kiln_device_info *info) {
  if (index != 0) {
    host->set_error("fake: no device %u", index);
    return KILN_NO_DEVICE;
  }
  kiln_device_info d;
  memset(&d, 0, sizeof d);
  d.struct_size = info->struct_size;
  d.kind = KILN_DEVICE_VIRTUAL_GPU;
  snprintf(d.name, sizeof d.name, "Fake Device 0");
  snprintf(d.vendor, sizeof d.vendor, "kiln tests");
  snprintf(d.driver, sizeof d.driver, "fake 1.0");
  d.memory_bytes = 1u << 20;
  d.compute_units = 1;
  size_t n = info->struct_size < sizeof d ? info->struct_size : sizeof d;
  memcpy(info, &d, n);
  return KILN_OK;
}

static int fake_op_support(uint32_t index, uint32_t op, uint32_t dtype) {
  return index == 0 && op == KILN_OP_ADD && dtype == KILN_F32;
}

static kiln_status fake_device_open(uint32_t index, kiln_plugin_device **out) {
  static kiln_plugin_device dev;
  if (index != 0) {
    host->set_error("fake: no device %u", index);
    return KILN_NO_DEVICE;
  }
  dev.open = 1;
  *out = &dev;
  return KILN_OK;
}

static void fake_device_close(kiln_plugin_device *dev) { dev->open = 0; }

static kiln_status fake_buffer_alloc(kiln_plugin_device *dev, uint64_t size,
                                     kiln_plugin_buffer **out) {
  (void)dev;
  kiln_plugin_buffer *b = calloc(1, sizeof *b);
  if (b) b->data = calloc(1, size);
  if (!b || !b->data) {
    free(b);
    host->set_error("fake: out of memory allocating %llu bytes", (unsigned long long)size);
    return KILN_OUT_OF_MEMORY;
  }
  b->size = size;
  *out = b;
  return KILN_OK;
}

static void fake_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *b) {
  (void)dev;
  if (b) free(b->data);
  free(b);
}

static kiln_status fake_range(const kiln_plugin_buffer *b, uint64_t off, uint64_t size) {
  if (off > b->size || size > b->size - off) {
    host->set_error("fake: range [%llu, +%llu) outside a %llu-byte buffer",
                    (unsigned long long)off, (unsigned long long)size,
                    (unsigned long long)b->size);
    return KILN_INVALID_ARGUMENT;
  }
  return KILN_OK;
}

static kiln_status fake_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                     uint64_t off, const void *src, uint64_t size) {
  (void)dev;
  kiln_status st = fake_range(dst, off, size);
  if (st == KILN_OK) memcpy(dst->data + off, src, size);
  return st;
}

static kiln_status fake_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src,
                                    uint64_t off, void *dst, uint64_t size) {
  (void)dev;
  kiln_status st = fake_range(src, off, size);
  if (st == KILN_OK) memcpy(dst, src->data + off, size);
  return st;
}

static kiln_status fake_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                    uint64_t doff, kiln_plugin_buffer *src, uint64_t soff,
                                    uint64_t size) {
  (void)dev;
  kiln_status st = fake_range(dst, doff, size);
  if (st == KILN_OK) st = fake_range(src, soff, size);
  if (st == KILN_OK) memmove(dst->data + doff, src->data + soff, size);
  return st;
}

static kiln_status fake_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *g,
                                      kiln_plugin_exec **out) {
  (void)dev;
  (void)out;
  host->set_error("fake: graph_compile: the fake backend runs no graphs (%u nodes given)",
                  g->n_nodes);
  return KILN_UNSUPPORTED;
}

#ifndef FAKE_NULL_GRAPH_RUN
static kiln_status fake_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  (void)dev;
  (void)exec;
  host->set_error("fake: graph_run: no graph was compiled");
  return KILN_INVALID_STATE;
}
#endif

static void fake_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  (void)dev;
  (void)exec;
}

static kiln_status fake_synchronize(kiln_plugin_device *dev) {
  (void)dev;
  return KILN_OK;
}

/* The table, with room for a member a future minor might add. */
static const struct fake_table {
  kiln_plugin_api api;
  void (*future_member)(void);
} fake_table = {
    .api = {
#ifdef FAKE_API_SIZE
        .struct_size = FAKE_API_SIZE,
#elif defined(FAKE_NEWER_MINOR)
        .struct_size = sizeof(struct fake_table),
#else
        .struct_size = sizeof(kiln_plugin_api),
#endif
        .abi_version = FAKE_API_ABI,
        .shutdown = fake_shutdown,
        .device_count = fake_device_count,
        .device_info = fake_device_info,
        .op_support = fake_op_support,
        .device_open = fake_device_open,
        .device_close = fake_device_close,
        .buffer_alloc = fake_buffer_alloc,
        .buffer_free = fake_buffer_free,
        .buffer_write = fake_buffer_write,
        .buffer_read = fake_buffer_read,
        .buffer_copy = fake_buffer_copy,
        .graph_compile = fake_graph_compile,
#ifndef FAKE_NULL_GRAPH_RUN
        .graph_run = fake_graph_run,
#endif
        .graph_free = fake_graph_free,
        .synchronize = fake_synchronize,
    },
    .future_member = NULL,
};

static kiln_status fake_init(const kiln_host_api *h, const kiln_plugin_api **api) {
#ifdef FAKE_MUST_NOT_INIT
  (void)h;
  (void)api;
  abort(); /* the host ran init of a plugin it should have refused */
#else
  host = h;
  fake_log("init");
  h->log(2, "%s: initialised for host ABI %u.%u", FAKE_NAME, KILN_ABI_MAJOR_OF(h->abi_version),
         KILN_ABI_MINOR_OF(h->abi_version));
#ifdef FAKE_INIT_FAILS
  *api = &fake_table.api;
  h->set_error("fake: probing the widget failed: no widget on bus %d", 7);
  return KILN_DEVICE_LOST;
#else
  *api = &fake_table.api;
  return KILN_OK;
#endif
#endif
}

static const kiln_plugin_entry_info fake_entry = {
    .struct_size = sizeof(kiln_plugin_entry_info),
    .abi_version = FAKE_ENTRY_ABI,
    .name = FAKE_NAME,
    .version = "0.0.1-test",
    .description = "fake backend for the loader tests",
    .init = fake_init,
};

#ifndef FAKE_NO_ENTRY
KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *KILN_PLUGIN_ENTRY(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &fake_entry;
}
#else
/* Something exported, so the library is a valid shared object. */
KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *not_the_entry(void) { return &fake_entry; }
#endif
