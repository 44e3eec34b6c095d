/*
 * shaped_plugin.c - a backend plugin whose descriptor and table are shaped
 * by the fuzz input (built as libkiln-fuzzshaped.so for fuzz_plugin_table).
 *
 * fuzz_shaped_set() takes the shape: descriptor struct_size, ABI version,
 * name, a NULL init, init's status; then the table's struct_size, ABI
 * version and which members are NULL; then what the members answer (device
 * count, device kind, statuses). The descriptor and table live at the start
 * of zeroed 4 KiB blocks, so any struct_size a host believes stays readable:
 * a host that reads a member its table's struct_size excludes, or calls a
 * NULL member, crashes here.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/plugin.h"

#define SHAPE_BLOCK 4096

static union {
  kiln_plugin_entry_info e;
  unsigned char bytes[SHAPE_BLOCK];
} entry;
static union {
  kiln_plugin_api a;
  unsigned char bytes[SHAPE_BLOCK];
} table;

static const kiln_host_api *host;
static char name[24];
static kiln_status init_status, info_status, open_status, alloc_status;
static uint32_t n_devices;
static uint32_t device_kind;

struct kiln_plugin_device { int open; };
struct kiln_plugin_buffer { uint64_t size; unsigned char *data; };

static kiln_status fail(kiln_status st, const char *what) {
  host->set_error("shaped: %s fails with status %d as the fuzz input asks", what, (int)st);
  return st;
}

static void shaped_shutdown(void) {}
static uint32_t shaped_device_count(void) { return n_devices; }

static kiln_status shaped_device_info(uint32_t index, kiln_device_info *info) {
  if (index >= n_devices) return fail(KILN_NO_DEVICE, "device_info");
  if (info_status != KILN_OK) return fail(info_status, "device_info");
  uint32_t size = info->struct_size;
  memset(info, 0, size < sizeof *info ? size : sizeof *info);
  info->struct_size = size;
  info->kind = (kiln_device_kind)device_kind;
  snprintf(info->name, sizeof info->name, "Shaped %u", index);
  return KILN_OK;
}

static int shaped_op_support(uint32_t index, uint32_t op, uint32_t dtype) {
  (void)index, (void)dtype;
  return op == KILN_OP_ADD;
}

static kiln_status shaped_device_open(uint32_t index, kiln_plugin_device **out) {
  if (index >= n_devices) return fail(KILN_NO_DEVICE, "device_open");
  if (open_status != KILN_OK) return fail(open_status, "device_open");
  kiln_plugin_device *d = calloc(1, sizeof *d);
  if (!d) return fail(KILN_OUT_OF_MEMORY, "device_open");
  *out = d;
  return KILN_OK;
}

static void shaped_device_close(kiln_plugin_device *dev) { free(dev); }

static kiln_status shaped_buffer_alloc(kiln_plugin_device *dev, uint64_t size,
                                       kiln_plugin_buffer **out) {
  (void)dev;
  if (alloc_status != KILN_OK) return fail(alloc_status, "buffer_alloc");
  if (size == 0 || size > (1u << 20)) return fail(KILN_INVALID_ARGUMENT, "buffer_alloc size");
  kiln_plugin_buffer *b = calloc(1, sizeof *b);
  if (!b || !(b->data = calloc(1, (size_t)size))) {
    free(b);
    return fail(KILN_OUT_OF_MEMORY, "buffer_alloc");
  }
  b->size = size;
  *out = b;
  return KILN_OK;
}

static void shaped_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *b) {
  (void)dev;
  if (b) free(b->data);
  free(b);
}

static kiln_status shaped_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                       uint64_t off, const void *src, uint64_t size) {
  (void)dev;
  if (off > dst->size || size > dst->size - off) return fail(KILN_INVALID_ARGUMENT, "write range");
  memcpy(dst->data + off, src, (size_t)size);
  return KILN_OK;
}

static kiln_status shaped_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src,
                                      uint64_t off, void *dst, uint64_t size) {
  (void)dev;
  if (off > src->size || size > src->size - off) return fail(KILN_INVALID_ARGUMENT, "read range");
  memcpy(dst, src->data + off, (size_t)size);
  return KILN_OK;
}

static kiln_status shaped_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst,
                                      uint64_t doff, kiln_plugin_buffer *src, uint64_t soff,
                                      uint64_t size) {
  (void)dev;
  if (doff > dst->size || size > dst->size - doff || soff > src->size || size > src->size - soff)
    return fail(KILN_INVALID_ARGUMENT, "copy range");
  memmove(dst->data + doff, src->data + soff, (size_t)size);
  return KILN_OK;
}

static kiln_status shaped_graph_compile(kiln_plugin_device *dev, const kiln_plugin_graph *g,
                                        kiln_plugin_exec **out) {
  (void)dev, (void)g, (void)out;
  return fail(KILN_UNSUPPORTED, "graph_compile");
}

static kiln_status shaped_graph_run(kiln_plugin_device *dev, kiln_plugin_exec *e) {
  (void)dev, (void)e;
  return fail(KILN_INVALID_STATE, "graph_run");
}

static void shaped_graph_free(kiln_plugin_device *dev, kiln_plugin_exec *e) { (void)dev, (void)e; }
static kiln_status shaped_synchronize(kiln_plugin_device *dev) { (void)dev; return KILN_OK; }

static kiln_status shaped_init(const kiln_host_api *h, const kiln_plugin_api **api) {
  host = h;
  if (init_status != KILN_OK) return fail(init_status, "init");
  *api = &table.a;
  return KILN_OK;
}

/* A status from a byte: mostly OK, else one of the real failures or a
 * number no status has. */
static kiln_status status_of(uint8_t b) {
  static const kiln_status s[] = {KILN_OUT_OF_MEMORY, KILN_NO_DEVICE, KILN_PLUGIN_ERROR,
                                  KILN_DEVICE_LOST, KILN_UNSUPPORTED, (kiln_status)12345};
  return b < 160 ? KILN_OK : s[b % (sizeof s / sizeof s[0])];
}

/* A struct_size from a byte: usually the real one, else one nearby, tiny,
 * or larger than any host knows. */
static uint32_t size_of(uint8_t b, uint32_t real) {
  switch (b % 8) {
    case 4: return (uint32_t)b;                /* tiny */
    case 1: return real - 8 * (1 + b % 4);     /* a few members short */
    case 2: return real + 8 * (1 + b % 8);     /* a newer minor's table */
    case 3: return SHAPE_BLOCK;
    default: return real;
  }
}

static uint32_t abi_of(uint8_t b) {
  switch (b % 8) {
    case 4: return KILN_PLUGIN_ABI_VERSION + 0x10000u;  /* next major */
    case 1: return 0;
    case 2: return KILN_PLUGIN_ABI_VERSION + (b >> 3);  /* newer minors */
    case 3: return 0xFFFFFFFFu;
    default: return KILN_PLUGIN_ABI_VERSION;
  }
}

KILN_PLUGIN_EXPORT void fuzz_shaped_set(const uint8_t *d, size_t n) {
  uint8_t b[32];
  memset(b, 0, sizeof b);
  memcpy(b, d, n < sizeof b ? n : sizeof b);
  memset(&entry, 0, sizeof entry);
  memset(&table, 0, sizeof table);

  entry.e.struct_size = size_of(b[0], sizeof(kiln_plugin_entry_info));
  entry.e.abi_version = abi_of(b[1]);
  static const char *const names[] = {"shaped", "", "Shaped", "sh aped", "cpu", NULL,
                                      "a-very-long-name-for-a-backend_0123456789"};
  const char *nm = names[b[2] % (sizeof names / sizeof names[0])];
  if (nm) {
    snprintf(name, sizeof name, "%s", nm);
    entry.e.name = name;
  }
  entry.e.version = b[3] & 1 ? NULL : "0.0-fuzz";
  entry.e.description = b[3] & 2 ? NULL : "fuzz-shaped plugin";
  entry.e.init = b[3] & 4 && b[3] > 200 ? NULL : shaped_init;
  init_status = status_of(b[4]);

  table.a.struct_size = size_of(b[5], sizeof(kiln_plugin_api));
  table.a.abi_version = abi_of(b[6]);
  kiln_plugin_api *a = &table.a;
  a->shutdown = shaped_shutdown;
  a->device_count = shaped_device_count;
  a->device_info = shaped_device_info;
  a->op_support = shaped_op_support;
  a->device_open = shaped_device_open;
  a->device_close = shaped_device_close;
  a->buffer_alloc = shaped_buffer_alloc;
  a->buffer_free = shaped_buffer_free;
  a->buffer_write = shaped_buffer_write;
  a->buffer_read = shaped_buffer_read;
  a->buffer_copy = shaped_buffer_copy;
  a->graph_compile = shaped_graph_compile;
  a->graph_run = shaped_graph_run;
  a->graph_free = shaped_graph_free;
  a->synchronize = shaped_synchronize;
  /* b[7], b[8]: when b[9] says so, NULL out members by bit */
  if (b[9] > 192) {
    void (**m)(void) = (void (**)(void))(void *)&a->shutdown;
    uint32_t mask = (uint32_t)b[7] | (uint32_t)b[8] << 8;
    for (int i = 0; i < 15; i++)
      if (mask & (1u << i)) m[i] = NULL;
  }
  n_devices = b[10] < 240 ? b[10] % 4 : 0xFFFFFFF0u + (b[10] & 15);
  device_kind = b[11] % 6;
  info_status = status_of(b[12]);
  open_status = status_of(b[13]);
  alloc_status = status_of(b[14]);
}

KILN_PLUGIN_EXPORT const kiln_plugin_entry_info *KILN_PLUGIN_ENTRY(uint32_t host_abi_version) {
  (void)host_abi_version;
  return &entry.e;
}
