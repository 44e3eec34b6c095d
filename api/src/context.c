/*
 * context.c - contexts: plugin discovery, load reports, plugin lookup, and
 * unloading.
 *
 * Discovery order (first loaded wins a name; later files with the same name
 * are recorded as duplicates, so KILN_PLUGIN_PATH can override a built-in
 * plugin):
 *   1. opts->plugin_path        (colon-separated directories)
 *   2. $KILN_PLUGIN_PATH        (colon-separated directories)
 *   3. the `kiln` directory beside libkiln itself (B/lib/kiln in a build
 *      tree, <prefix>/lib/kiln installed), found with dladdr.
 * The current directory is never searched implicitly: empty entries in a
 * path list are skipped. Within a directory, files named libkiln-*.so load
 * in sorted order. A missing directory is skipped silently.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

typedef struct dir_list {
  char **dirs;   /* realpath of every directory already searched */
  size_t n, cap;
} dir_list;

static int is_plugin_file(const char *name) {
  static const char prefix[] = "libkiln-", suffix[] = ".so";
  size_t n = strlen(name), np = sizeof prefix - 1, ns = sizeof suffix - 1;
  return n > np + ns && strncmp(name, prefix, np) == 0 && strcmp(name + n - ns, suffix) == 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads every libkiln-*.so in dir, in sorted order. Refusals are recorded in
 * the load reports; only running out of memory (here or while loading a
 * plugin) is returned as an error. */
static kiln_status scan_dir(kiln_context *ctx, dir_list *seen, const char *dir) {
  char real[PATH_MAX];
  if (!realpath(dir, real)) return KILN_OK; /* missing: skipped silently */
  for (size_t i = 0; i < seen->n; i++)
    if (strcmp(seen->dirs[i], real) == 0) return KILN_OK; /* searched already */
  if (seen->n == seen->cap) {
    size_t cap = seen->cap ? seen->cap * 2 : 8;
    char **v = kiln__realloc(seen->dirs, cap * sizeof *v);
    if (!v) return KILN_OUT_OF_MEMORY;
    seen->dirs = v;
    seen->cap = cap;
  }
  if (!(seen->dirs[seen->n] = kiln__strdup(real))) return KILN_OUT_OF_MEMORY;
  seen->n++;

  DIR *d = opendir(dir);
  if (!d) return KILN_OK;
  kiln_status st = KILN_OK;
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!is_plugin_file(e->d_name)) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      char **v = kiln__realloc(names, cap * sizeof *v);
      if (!v) { st = KILN_OUT_OF_MEMORY; goto done; }
      names = v;
    }
    if (!(names[n] = kiln__strdup(e->d_name))) { st = KILN_OUT_OF_MEMORY; goto done; }
    n++;
  }
  qsort(names, n, sizeof *names, cmp_str);
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(dir) + 1 + strlen(names[i]) + 1;
    char *path = kiln__malloc(len);
    if (!path) { st = KILN_OUT_OF_MEMORY; goto done; }
    strcpy(path, dir);
    if (len > 2 && path[strlen(path) - 1] != '/') strcat(path, "/");
    strcat(path, names[i]);
    /* A refusal is in the load report; running out of memory is not the
     * plugin's fault, so it fails discovery instead of hiding the plugin. */
    kiln_status ls = kiln_plugin_load(ctx, path, NULL);
    free(path);
    if (ls == KILN_OUT_OF_MEMORY) { st = ls; goto done; }
  }
done:
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  closedir(d);
  return st;
}

/* Scans every non-empty entry of a colon-separated list. */
static kiln_status scan_list(kiln_context *ctx, dir_list *seen, const char *list) {
  if (!list) return KILN_OK;
  char *copy = kiln__strdup(list);
  if (!copy) return KILN_OUT_OF_MEMORY;
  kiln_status st = KILN_OK;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
    if ((st = scan_dir(ctx, seen, tok)) != KILN_OK) break;
  }
  free(copy);
  return st;
}

/* The `kiln` directory beside the libkiln that holds this code. */
static kiln_status scan_builtin(kiln_context *ctx, dir_list *seen) {
  Dl_info info;
  void *self = (void *)(uintptr_t)&kiln_context_create;
  if (!dladdr(self, &info) || !info.dli_fname || !strchr(info.dli_fname, '/')) return KILN_OK;
  char lib[PATH_MAX];
  if (!realpath(info.dli_fname, lib)) return KILN_OK;
  char *slash = strrchr(lib, '/');
  if (!slash) return KILN_OK;
  *slash = '\0';
  char dir[PATH_MAX + 8];
  snprintf(dir, sizeof dir, "%s/kiln", lib);
  return scan_dir(ctx, seen, dir);
}

kiln_status kiln_context_create(const kiln_context_options *opts, kiln_context **out) {
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_context_create: out is NULL");
  *out = NULL;
  uint32_t flags = 0;
  const char *extra = NULL;
  if (opts) {
    if (opts->struct_size < offsetof(kiln_context_options, flags) + sizeof opts->flags)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "kiln_context_create: opts->struct_size is %u; set it to "
                         "sizeof(kiln_context_options) (%zu)",
                         opts->struct_size, sizeof(kiln_context_options));
    flags = opts->flags;
    if (KILN__HAS_MEMBER(opts, kiln_context_options, plugin_path)) extra = opts->plugin_path;
  }

  kiln_context *ctx = kiln__calloc(1, sizeof *ctx);
  if (!ctx) return KILN_OUT_OF_MEMORY;
  if (!(flags & KILN_CONTEXT_NO_DISCOVERY)) {
    dir_list seen = {0};
    kiln_status st = scan_list(ctx, &seen, extra);
    if (st == KILN_OK) st = scan_list(ctx, &seen, getenv("KILN_PLUGIN_PATH"));
    if (st == KILN_OK) st = scan_builtin(ctx, &seen);
    for (size_t i = 0; i < seen.n; i++) free(seen.dirs[i]);
    free(seen.dirs);
    if (st != KILN_OK) {
      kiln_context_destroy(ctx);
      return st; /* the allocation helpers left the message */
    }
    /* Refusals are in the load reports, not a failure of this call. */
    kiln_clear_error();
  }
  *out = ctx;
  return KILN_OK;
}

void kiln_context_destroy(kiln_context *ctx) {
  if (!ctx) return;
  /* Unload in reverse load order: shutdown first, then dlclose. */
  for (size_t i = ctx->n_plugins; i-- > 0;) {
    kiln_plugin *p = ctx->plugins[i];
    if (KILN__HAS_MEMBER(p->api, kiln_plugin_api, shutdown) && p->api->shutdown)
      p->api->shutdown();
    dlclose(p->handle);
    free(p->path);
    free(p);
  }
  free(ctx->plugins);
  for (size_t i = 0; i < ctx->n_reports; i++) {
    free(ctx->reports[i].path);
    free(ctx->reports[i].name);
    free(ctx->reports[i].message);
  }
  free(ctx->reports);
  free(ctx);
}

size_t kiln_load_report_count(const kiln_context *ctx) { return ctx ? ctx->n_reports : 0; }

kiln_status kiln_load_report_get(const kiln_context *ctx, size_t i, kiln_load_report *out) {
  if (!ctx || !out)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_load_report_get: %s is NULL",
                       !ctx ? "ctx" : "out");
  if (i >= ctx->n_reports)
    return kiln__error(KILN_NOT_FOUND, "kiln_load_report_get: index %zu, but %zu report(s)", i,
                       ctx->n_reports);
  const kiln__report *r = &ctx->reports[i];
  kiln_load_report full = {
      .struct_size = out->struct_size,
      .result = r->result,
      .path = r->path,
      .name = r->name,
      .abi_version = r->abi_version,
      .message = r->message,
  };
  /* Fill only what fits in the caller's (possibly older) struct. */
  size_t n = out->struct_size < sizeof full ? out->struct_size : sizeof full;
  memcpy(out, &full, n);
  return KILN_OK;
}

size_t kiln_plugin_count(const kiln_context *ctx) { return ctx ? ctx->n_plugins : 0; }

kiln_plugin *kiln_plugin_at(const kiln_context *ctx, size_t i) {
  return ctx && i < ctx->n_plugins ? ctx->plugins[i] : NULL;
}

kiln_plugin *kiln_plugin_find(const kiln_context *ctx, const char *name) {
  if (!ctx || !name) return NULL;
  for (size_t i = 0; i < ctx->n_plugins; i++)
    if (strcmp(ctx->plugins[i]->entry->name, name) == 0) return ctx->plugins[i];
  return NULL;
}
