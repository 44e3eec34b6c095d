/*
 * loader.c - loading one plugin file: dlopen, the entry descriptor, version
 * negotiation, init, and the checks on the table init returns.
 *
 * Sequence (docs/plugin-abi.md, "Loading"):
 *   1. dlopen(path, RTLD_NOW | RTLD_LOCAL)       -> KILN_LOAD_DLOPEN_FAILED
 *   2. dlsym(KILN_PLUGIN_ENTRY_NAME)              -> KILN_LOAD_NO_ENTRY
 *   3. entry(KILN_PLUGIN_ABI_VERSION) -> descriptor, checked BEFORE init:
 *      size, ABI major, name                      -> BAD_TABLE / ABI_MISMATCH
 *   4. name not already loaded                    -> KILN_LOAD_DUPLICATE
 *   5. init(&kiln__host_api, &api)                -> KILN_LOAD_INIT_FAILED
 *   6. the api table: size, ABI major, members    -> BAD_TABLE / ABI_MISMATCH
 * Every attempt, successful or not, appends one load report to the context.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

/* The smallest tables an ABI 1.0 plugin may hand over. */
#define ENTRY_V1_0_SIZE \
  (offsetof(kiln_plugin_entry_info, init) + sizeof(((kiln_plugin_entry_info *)0)->init))
#define API_V1_0_SIZE \
  (offsetof(kiln_plugin_api, synchronize) + sizeof(((kiln_plugin_api *)0)->synchronize))

/* Appends a report; returns 0, or -1 when out of memory (the report is then
 * lost, but the load outcome itself is still returned to the caller). */
static int add_report(kiln_context *ctx, kiln_load_result result, const char *path,
                      const char *name, uint32_t abi_version, const char *message) {
  if (ctx->n_reports == ctx->cap_reports) {
    size_t cap = ctx->cap_reports ? ctx->cap_reports * 2 : 8;
    kiln__report *r = kiln__realloc(ctx->reports, cap * sizeof *r);
    if (!r) return -1;
    ctx->reports = r;
    ctx->cap_reports = cap;
  }
  kiln__report *r = &ctx->reports[ctx->n_reports];
  r->result = result;
  r->abi_version = abi_version;
  r->path = kiln__strdup(path ? path : "");
  r->name = name ? kiln__strdup(name) : NULL;
  r->message = kiln__strdup(message ? message : "");
  if (!r->path || !r->message || (name && !r->name)) {
    free(r->path);
    free(r->name);
    free(r->message);
    return -1;
  }
  ctx->n_reports++;
  return 0;
}

static int valid_name(const char *name) {
  if (!name || !*name) return 0;
  for (const char *c = name; *c; c++) {
    int ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-';
    if (!ok) return 0;
  }
  return 1;
}

/* Checks the api table init() returned; on a defect writes why into msg. */
static kiln_load_result check_api(const kiln_plugin_api *api, char *msg, size_t msg_size) {
  if (!api) {
    snprintf(msg, msg_size, "init succeeded but returned no plugin table");
    return KILN_LOAD_BAD_TABLE;
  }
  if (api->struct_size < API_V1_0_SIZE) {
    snprintf(msg, msg_size,
             "plugin table too short: struct_size %u bytes, ABI %u.%u needs at least %zu",
             api->struct_size, KILN_PLUGIN_ABI_MAJOR, 0u, (size_t)API_V1_0_SIZE);
    return KILN_LOAD_BAD_TABLE;
  }
  if (KILN_ABI_MAJOR_OF(api->abi_version) != KILN_PLUGIN_ABI_MAJOR) {
    snprintf(msg, msg_size, "plugin table: ABI major %u, host supports %u",
             KILN_ABI_MAJOR_OF(api->abi_version), KILN_PLUGIN_ABI_MAJOR);
    return KILN_LOAD_ABI_MISMATCH;
  }
  /* Every member of ABI 1.0 is required. */
  static const struct { const char *name; size_t offset; } members[] = {
#define M_(m) {#m, offsetof(kiln_plugin_api, m)}
      M_(shutdown),     M_(device_count), M_(device_info),   M_(op_support),
      M_(device_open),  M_(device_close), M_(buffer_alloc),  M_(buffer_free),
      M_(buffer_write), M_(buffer_read),  M_(buffer_copy),   M_(graph_compile),
      M_(graph_run),    M_(graph_free),   M_(synchronize),
#undef M_
  };
  for (size_t i = 0; i < sizeof members / sizeof members[0]; i++) {
    void (*fn)(void);
    memcpy(&fn, (const char *)api + members[i].offset, sizeof fn);
    if (!fn) {
      snprintf(msg, msg_size, "plugin table member '%s' is NULL", members[i].name);
      return KILN_LOAD_BAD_TABLE;
    }
  }
  return KILN_LOAD_OK;
}

static kiln_status status_of(kiln_load_result r) {
  switch (r) {
    case KILN_LOAD_OK: return KILN_OK;
    case KILN_LOAD_DLOPEN_FAILED: return KILN_IO_ERROR;
    case KILN_LOAD_ABI_MISMATCH: return KILN_ABI_MISMATCH;
    default: return KILN_PLUGIN_ERROR;
  }
}

kiln_status kiln_plugin_load(kiln_context *ctx, const char *path, kiln_plugin **out) {
  if (out) *out = NULL;
  if (!ctx || !path || !*path)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_plugin_load: %s is NULL or empty",
                       !ctx ? "ctx" : "path");

  char msg[1536];
  kiln_load_result result = KILN_LOAD_OK;
  const char *name = NULL;
  uint32_t abi = 0;
  const kiln_plugin_entry_info *entry = NULL;
  const kiln_plugin_api *api = NULL;
  kiln_plugin *p = NULL;
  int initialised = 0, out_of_memory = 0;

  dlerror();
  void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char *e = dlerror();
    snprintf(msg, sizeof msg, "%s", e ? e : "dlopen failed");
    result = KILN_LOAD_DLOPEN_FAILED;
    goto fail;
  }

  kiln_plugin_entry_fn entry_fn;
  void *sym = dlsym(handle, KILN_PLUGIN_ENTRY_NAME);
  if (!sym) {
    snprintf(msg, sizeof msg, "not a kiln plugin (no entry symbol '%s')", KILN_PLUGIN_ENTRY_NAME);
    result = KILN_LOAD_NO_ENTRY;
    goto fail;
  }
  memcpy(&entry_fn, &sym, sizeof entry_fn);

  /* Negotiate before anything heavy runs. */
  entry = entry_fn(KILN_PLUGIN_ABI_VERSION);
  if (!entry) {
    snprintf(msg, sizeof msg, "plugin entry returned no descriptor");
    result = KILN_LOAD_BAD_TABLE;
    goto fail;
  }
  if (entry->struct_size >= offsetof(kiln_plugin_entry_info, abi_version) + sizeof(uint32_t))
    abi = entry->abi_version;
  if (entry->struct_size < ENTRY_V1_0_SIZE) {
    snprintf(msg, sizeof msg,
             "plugin descriptor too short: struct_size %u bytes, ABI %u.0 needs at least %zu",
             entry->struct_size, KILN_PLUGIN_ABI_MAJOR, (size_t)ENTRY_V1_0_SIZE);
    result = KILN_LOAD_BAD_TABLE;
    goto fail;
  }
  if (KILN_ABI_MAJOR_OF(abi) != KILN_PLUGIN_ABI_MAJOR) {
    snprintf(msg, sizeof msg, "ABI major %u, host supports %u", KILN_ABI_MAJOR_OF(abi),
             KILN_PLUGIN_ABI_MAJOR);
    result = KILN_LOAD_ABI_MISMATCH;
    goto fail;
  }
  name = entry->name;
  if (!valid_name(name)) {
    snprintf(msg, sizeof msg, "bad plugin name '%s': it must be non-empty and use only [a-z0-9_-]",
             name ? name : "(null)");
    result = KILN_LOAD_BAD_TABLE;
    goto fail;
  }
  kiln_plugin *other = kiln_plugin_find(ctx, name);
  if (other) {
    snprintf(msg, sizeof msg, "duplicate plugin name '%s' (already loaded from %s)", name,
             other->path);
    result = KILN_LOAD_DUPLICATE;
    goto fail;
  }
  if (!entry->init) {
    snprintf(msg, sizeof msg, "plugin descriptor member 'init' is NULL");
    result = KILN_LOAD_BAD_TABLE;
    goto fail;
  }

  /* Init, capturing the message the plugin leaves with host->set_error. */
  kiln_clear_error();
  kiln_status st = entry->init(&kiln__host_api, &api);
  if (st != KILN_OK) {
    const char *why = kiln_last_error();
    snprintf(msg, sizeof msg, "init failed: %s", *why ? why : kiln_status_string(st));
    result = KILN_LOAD_INIT_FAILED;
    goto fail;
  }
  initialised = 1;

  result = check_api(api, msg, sizeof msg);
  if (result != KILN_LOAD_OK) goto fail;

  p = kiln__calloc(1, sizeof *p);
  if (!p) goto oom;
  p->ctx = ctx;
  p->handle = handle;
  p->path = kiln__strdup(path);
  p->entry = entry;
  p->api = api;
  p->abi_version = abi;
  if (!p->path) goto oom;
  if (ctx->n_plugins == ctx->cap_plugins) {
    size_t cap = ctx->cap_plugins ? ctx->cap_plugins * 2 : 4;
    kiln_plugin **v = kiln__realloc(ctx->plugins, cap * sizeof *v);
    if (!v) goto oom;
    ctx->plugins = v;
    ctx->cap_plugins = cap;
  }
  if (add_report(ctx, KILN_LOAD_OK, path, name, abi, "loaded") != 0) goto oom;
  ctx->plugins[ctx->n_plugins++] = p;
  if (out) *out = p;
  return KILN_OK;

oom:
  /* kiln__* left the OUT_OF_MEMORY message; report it like any refusal. */
  snprintf(msg, sizeof msg, "%s", kiln_last_error());
  if (p) free(p->path);
  free(p);
  result = KILN_LOAD_INIT_FAILED;
  out_of_memory = 1;

fail:
  /* A plugin whose init failed has released what it took; never call
   * shutdown then. One whose init succeeded but whose table we refuse is
   * shut down if its table has a usable shutdown member. */
  if (initialised && api && KILN__HAS_MEMBER(api, kiln_plugin_api, shutdown) && api->shutdown)
    api->shutdown();
  /* Copy strings that live in the plugin before unloading it. */
  char name_copy[256];
  if (name) {
    snprintf(name_copy, sizeof name_copy, "%s", name);
    name = name_copy;
  }
  if (handle) dlclose(handle);
  add_report(ctx, result, path, name, abi, msg);
  return kiln__error(out_of_memory ? KILN_OUT_OF_MEMORY : status_of(result),
                     "loading plugin %s: %s", path, msg);
}

/* ---- queries on a loaded plugin ------------------------------------------ */

const char *kiln_plugin_name(const kiln_plugin *p) { return p ? p->entry->name : NULL; }

const char *kiln_plugin_version(const kiln_plugin *p) {
  return p && p->entry->version ? p->entry->version : "";
}

const char *kiln_plugin_description(const kiln_plugin *p) {
  return p && p->entry->description ? p->entry->description : "";
}

const char *kiln_plugin_path(const kiln_plugin *p) { return p ? p->path : NULL; }

uint32_t kiln_plugin_abi_version(const kiln_plugin *p) { return p ? p->abi_version : 0; }

uint32_t kiln_plugin_device_count(const kiln_plugin *p) {
  if (!p || !KILN__HAS_MEMBER(p->api, kiln_plugin_api, device_count)) return 0;
  return p->api->device_count();
}

kiln_status kiln_plugin_device_info(const kiln_plugin *p, uint32_t index, kiln_device_info *info) {
  if (!p || !info)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_plugin_device_info: %s is NULL",
                       !p ? "plugin" : "info");
  if (info->struct_size < offsetof(kiln_device_info, kind) + sizeof info->kind)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_plugin_device_info: info->struct_size is %u; set it to "
                       "sizeof(kiln_device_info) (%zu)",
                       info->struct_size, sizeof(kiln_device_info));
  uint32_t n = kiln_plugin_device_count(p);
  if (index >= n)
    return kiln__error(KILN_NO_DEVICE, "plugin '%s' has %u device(s); index %u is out of range",
                       kiln_plugin_name(p), n, index);
  kiln_clear_error();
  kiln_status st = p->api->device_info(index, info);
  if (st != KILN_OK && !*kiln_last_error())
    kiln__error(st, "plugin '%s': device_info(%u) failed: %s", kiln_plugin_name(p), index,
                kiln_status_string(st));
  return st;
}

int kiln_plugin_op_support(const kiln_plugin *p, uint32_t index, kiln_op op, kiln_dtype dtype) {
  if (!p || !KILN__HAS_MEMBER(p->api, kiln_plugin_api, op_support)) return 0;
  if (index >= kiln_plugin_device_count(p)) return 0;
  return p->api->op_support(index, (uint32_t)op, (uint32_t)dtype) ? 1 : 0;
}
