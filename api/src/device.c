/*
 * device.c - opening devices: choosing a plugin and a device index, and the
 * thin calls through to the plugin's device members.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

/* Preference of a device kind for "auto": discrete 4 > integrated 3 >
 * virtual 2 > CPU 1 > other (and unknown numbers) 0. */
static int kind_rank(uint32_t kind) {
  switch (kind) {
    case KILN_DEVICE_DISCRETE_GPU: return 4;
    case KILN_DEVICE_INTEGRATED_GPU: return 3;
    case KILN_DEVICE_VIRTUAL_GPU: return 2;
    case KILN_DEVICE_CPU: return 1;
    default: return 0;
  }
}

/* Rank of device i of p, or -1 if its info cannot be read. */
static int device_rank(const kiln_plugin *p, uint32_t i) {
  kiln_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  if (p->api->device_info(i, &info) != KILN_OK) return -1;
  return kind_rank(info.kind);
}

/* The best device of p (first among equals); -1 if p has none. */
static int best_of(const kiln_plugin *p, int *rank_out) {
  int best = -1, best_rank = -2;
  uint32_t n = kiln_plugin_device_count(p);
  for (uint32_t i = 0; i < n; i++) {
    int r = device_rank(p, i);
    if (r > best_rank) {
      best = (int)i;
      best_rank = r;
    }
  }
  if (rank_out) *rank_out = best_rank;
  return best;
}

/* "cpu, vulkan" into buf, or "none". */
static const char *loaded_names(const kiln_context *ctx, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < ctx->n_plugins && used < size; i++) {
    int n = snprintf(buf + used, size - used, "%s%s", i ? ", " : "",
                     ctx->plugins[i]->entry->name);
    if (n < 0) break;
    used += (size_t)n;
  }
  if (!buf[0]) snprintf(buf, size, "none");
  return buf;
}

/* KILN_VK_DEVICE picks the Vulkan plugin's device when no index is given:
 * a decimal index, or a case-insensitive substring of the device name. */
static kiln_status vk_env_choice(const kiln_plugin *p, uint32_t *ip) {
  const char *want = getenv("KILN_VK_DEVICE");
  if (!want || !*want || strcmp(p->entry->name, "vulkan") != 0) return KILN_OK;
  uint32_t n = kiln_plugin_device_count(p);
  char *end;
  long v = strtol(want, &end, 10);
  if (*end == '\0') {
    if (v < 0 || (uint32_t)v >= n)
      return kiln__error(KILN_NO_DEVICE, "KILN_VK_DEVICE=%s: backend 'vulkan' has %u device(s)",
                         want, n);
    *ip = (uint32_t)v;
    return KILN_OK;
  }
  char names[1024] = "";
  for (uint32_t i = 0; i < n; i++) {
    kiln_device_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (p->api->device_info(i, &info) != KILN_OK) continue;
    if (strcasestr(info.name, want)) {
      *ip = i;
      return KILN_OK;
    }
    size_t len = strlen(names);
    snprintf(names + len, sizeof names - len, "%s%u: %s", len ? ", " : "", i, info.name);
  }
  return kiln__error(KILN_NO_DEVICE, "KILN_VK_DEVICE=%s matches no Vulkan device (%s)", want,
                     n ? names : "none");
}

/* Picks (plugin, index) for kiln_device_open. */
static kiln_status choose(kiln_context *ctx, const char *backend, int index, kiln_plugin **pp,
                          uint32_t *ip) {
  char names[512];
  if (index < -1)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_device_open: index %d; use -1 for the best device or >= 0", index);
  if (!backend || strcmp(backend, "auto") == 0) {
    if (ctx->n_plugins == 0)
      return kiln__error(KILN_NO_DEVICE,
                         "no backend plugin is loaded; run `kiln info` to see where plugins "
                         "were searched and why any were refused");
    uint32_t total = 0;
    for (size_t i = 0; i < ctx->n_plugins; i++) total += kiln_plugin_device_count(ctx->plugins[i]);
    if (index >= 0) {
      if ((uint32_t)index >= total)
        return kiln__error(KILN_NO_DEVICE,
                           "device index %d is out of range: %u device(s) over all plugins (%s)",
                           index, total, loaded_names(ctx, names, sizeof names));
      uint32_t k = (uint32_t)index;
      for (size_t i = 0; i < ctx->n_plugins; i++) {
        uint32_t n = kiln_plugin_device_count(ctx->plugins[i]);
        if (k < n) {
          *pp = ctx->plugins[i];
          *ip = k;
          return KILN_OK;
        }
        k -= n;
      }
    }
    int best_rank = -2;
    for (size_t i = 0; i < ctx->n_plugins; i++) {
      int r, d = best_of(ctx->plugins[i], &r);
      if (d >= 0 && r > best_rank) {
        best_rank = r;
        *pp = ctx->plugins[i];
        *ip = (uint32_t)d;
      }
    }
    if (best_rank == -2)
      return kiln__error(KILN_NO_DEVICE, "no device: the loaded plugins (%s) report none",
                         loaded_names(ctx, names, sizeof names));
    return vk_env_choice(*pp, ip);
  }

  kiln_plugin *p = kiln_plugin_find(ctx, backend);
  /* A plugin of that name that was found but refused (its driver missing,
   * say) says why here, not only in `kiln info`. */
  for (size_t i = ctx->n_reports; !p && i-- > 0;) {
    const kiln__report *r = &ctx->reports[i];
    if (r->result != KILN_LOAD_OK && r->name && strcmp(r->name, backend) == 0)
      return kiln__error(KILN_NOT_FOUND, "backend '%s' is not loaded (loaded: %s): %s was refused: %s",
                         backend, loaded_names(ctx, names, sizeof names), r->path, r->message);
  }
  if (!p)
    return kiln__error(KILN_NOT_FOUND,
                       "backend '%s' is not loaded (loaded: %s); run `kiln info` to see which "
                       "plugins were found and why any were refused",
                       backend, loaded_names(ctx, names, sizeof names));
  uint32_t n = kiln_plugin_device_count(p);
  if (n == 0) return kiln__error(KILN_NO_DEVICE, "backend '%s' has no devices", backend);
  if (index == -1) {
    *pp = p;
    *ip = (uint32_t)best_of(p, NULL);
    return vk_env_choice(p, ip);
  }
  if ((uint32_t)index >= n)
    return kiln__error(KILN_NO_DEVICE, "backend '%s' has %u device(s); index %d is out of range",
                       backend, n, index);
  *pp = p;
  *ip = (uint32_t)index;
  return KILN_OK;
}

kiln_status kiln_device_open(kiln_context *ctx, const char *backend, int index,
                             kiln_device **out) {
  if (!ctx || !out)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_device_open: %s is NULL",
                       !ctx ? "ctx" : "out");
  *out = NULL;
  kiln_plugin *p = NULL;
  uint32_t index_in_plugin = 0;
  kiln_status st = choose(ctx, backend, index, &p, &index_in_plugin);
  if (st != KILN_OK) return st;

  kiln_device *dev = kiln__calloc(1, sizeof *dev);
  if (!dev) return KILN_OUT_OF_MEMORY;
  dev->ctx = ctx;
  dev->plugin = p;
  dev->index = index_in_plugin;
  dev->info.struct_size = sizeof dev->info;

  kiln_clear_error();
  st = p->api->device_info(index_in_plugin, &dev->info);
  if (st != KILN_OK) goto plugin_fail;
  st = p->api->device_open(index_in_plugin, &dev->pdev);
  if (st != KILN_OK) goto plugin_fail;
  if (!dev->pdev) {
    st = kiln__error(KILN_PLUGIN_ERROR, "plugin '%s': device_open(%u) returned no device",
                     p->entry->name, index_in_plugin);
    goto fail;
  }
  *out = dev;
  return KILN_OK;

plugin_fail: {
  char why[1024];
  snprintf(why, sizeof why, "%s", *kiln_last_error() ? kiln_last_error() : kiln_status_string(st));
  kiln__error(st, "opening device %u of backend '%s': %s", index_in_plugin, p->entry->name, why);
}
fail:
  free(dev);
  return st;
}

void kiln_device_close(kiln_device *dev) {
  if (!dev) return;
  if (dev->pdev && KILN__HAS_MEMBER(dev->plugin->api, kiln_plugin_api, device_close))
    dev->plugin->api->device_close(dev->pdev);
  free(dev);
}

kiln_status kiln_device_get_info(const kiln_device *dev, kiln_device_info *info) {
  if (!dev || !info)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_device_get_info: %s is NULL",
                       !dev ? "dev" : "info");
  uint32_t want = info->struct_size;
  if (want < offsetof(kiln_device_info, kind) + sizeof info->kind)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_device_get_info: info->struct_size is %u; set it to "
                       "sizeof(kiln_device_info) (%zu)",
                       want, sizeof(kiln_device_info));
  size_t n = want < sizeof dev->info ? want : sizeof dev->info;
  memcpy(info, &dev->info, n);
  info->struct_size = want;
  return KILN_OK;
}

kiln_plugin *kiln_device_plugin(const kiln_device *dev) { return dev ? dev->plugin : NULL; }

kiln_status kiln_device_synchronize(kiln_device *dev) {
  if (!dev) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_device_synchronize: dev is NULL");
  const kiln_plugin_api *api = dev->plugin->api;
  if (!KILN__HAS_MEMBER(api, kiln_plugin_api, synchronize))
    return kiln__error(KILN_UNSUPPORTED, "plugin '%s' has no synchronize member",
                       dev->plugin->entry->name);
  kiln_clear_error();
  kiln_status st = api->synchronize(dev->pdev);
  if (st != KILN_OK && !*kiln_last_error())
    kiln__error(st, "synchronize on backend '%s': %s", dev->plugin->entry->name,
                kiln_status_string(st));
  return st;
}
