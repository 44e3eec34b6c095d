/*
 * cmd_info.c - `kiln info [--json]`: the library version, every loaded
 * plugin with its devices and how many ops each device runs on f32, and the
 * load report of every plugin file tried (loaded, or refused and why).
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "kiln/kiln.h"

static void info_usage(FILE *f) {
  fprintf(f,
          "usage: kiln info [--json]\n"
          "\n"
          "Lists the backend plugins kiln found, their devices, and every plugin file\n"
          "it tried with the reason any was refused. Plugins are searched in\n"
          "$KILN_PLUGIN_PATH (colon-separated directories), then in the kiln/\n"
          "directory beside libkiln.\n"
          "\n"
          "options:\n"
          "  --json   print one JSON object instead of text\n"
          "  --help   show this help\n");
}

static const char *result_code(kiln_load_result r) {
  switch (r) {
    case KILN_LOAD_OK: return "loaded";
    case KILN_LOAD_DLOPEN_FAILED: return "dlopen_failed";
    case KILN_LOAD_NO_ENTRY: return "no_entry";
    case KILN_LOAD_ABI_MISMATCH: return "abi_mismatch";
    case KILN_LOAD_BAD_TABLE: return "bad_table";
    case KILN_LOAD_DUPLICATE: return "duplicate";
    case KILN_LOAD_INIT_FAILED: return "init_failed";
    default: return "unknown";
  }
}

/* Ops (numbers 1..KILN_OP_COUNT_-1 with a name) device `index` of p runs on
 * f32; the number of named ops goes to *total. */
static int f32_ops(const kiln_plugin *p, uint32_t index, int *total) {
  int n = 0, all = 0;
  for (int op = 1; op < KILN_OP_COUNT_; op++) {
    if (strcmp(kiln_op_name((kiln_op)op), "unknown") == 0) continue;
    all++;
    n += kiln_plugin_op_support(p, index, (kiln_op)op, KILN_F32);
  }
  *total = all;
  return n;
}

static const char *human_bytes(uint64_t b, char *buf, size_t size) {
  if (b == 0) snprintf(buf, size, "unknown");
  else if (b >= (1ull << 30)) snprintf(buf, size, "%.1f GiB", (double)b / (1ull << 30));
  else if (b >= (1ull << 20)) snprintf(buf, size, "%.1f MiB", (double)b / (1ull << 20));
  else snprintf(buf, size, "%llu bytes", (unsigned long long)b);
  return buf;
}

static const struct { uint64_t bit; const char *name; } features[] = {
    {KILN_FEATURE_F16, "f16"},
    {KILN_FEATURE_BF16, "bf16"},
    {KILN_FEATURE_SUBGROUPS, "subgroups"},
    {KILN_FEATURE_UNIFIED, "unified-memory"},
};
#define N_FEATURES (sizeof features / sizeof features[0])

static void abi_str(uint32_t v, char *buf, size_t size) {
  if (v) snprintf(buf, size, "%u.%u", KILN_ABI_MAJOR_OF(v), KILN_ABI_MINOR_OF(v));
  else snprintf(buf, size, "unknown");
}

/* ---- text ----------------------------------------------------------------- */

static void print_text(const kiln_context *ctx) {
  char buf[64];
  printf("kiln %s (plugin ABI %u.%u)\n\n", kiln_version_string(), KILN_PLUGIN_ABI_MAJOR,
         KILN_PLUGIN_ABI_MINOR);
  size_t np = kiln_plugin_count(ctx);
  if (np == 0)
    printf("No backend plugin is loaded. Build one (libkiln-cpu.so) or point\n"
           "KILN_PLUGIN_PATH at a directory holding libkiln-*.so files.\n");
  for (size_t i = 0; i < np; i++) {
    const kiln_plugin *p = kiln_plugin_at(ctx, i);
    abi_str(kiln_plugin_abi_version(p), buf, sizeof buf);
    printf("plugin %s %s: %s\n", kiln_plugin_name(p), kiln_plugin_version(p),
           kiln_plugin_description(p));
    printf("  path: %s\n  ABI:  %s\n", kiln_plugin_path(p), buf);
    uint32_t nd = kiln_plugin_device_count(p);
    if (nd == 0) printf("  no devices\n");
    for (uint32_t d = 0; d < nd; d++) {
      kiln_device_info info;
      memset(&info, 0, sizeof info);
      info.struct_size = sizeof info;
      if (kiln_plugin_device_info(p, d, &info) != KILN_OK) {
        printf("  device %u: cannot be queried: %s\n", d, kiln_last_error());
        continue;
      }
      int total, n = f32_ops(p, d, &total);
      printf("  device %u: %s (%s)\n", d, info.name, kiln_device_kind_name(info.kind));
      printf("    vendor:         %s\n", info.vendor[0] ? info.vendor : "unknown");
      printf("    driver:         %s\n", info.driver[0] ? info.driver : "none");
      printf("    memory:         %s\n", human_bytes(info.memory_bytes, buf, sizeof buf));
      if (info.compute_units) printf("    compute units:  %u\n", info.compute_units);
      else printf("    compute units:  unknown\n");
      if (info.subgroup_size) printf("    subgroup size:  %u\n", info.subgroup_size);
      printf("    features:      ");
      int any = 0;
      for (size_t f = 0; f < N_FEATURES; f++)
        if (info.features & features[f].bit) printf(" %s", features[f].name), any = 1;
      printf("%s\n", any ? "" : " none");
      printf("    ops on f32:     %d of %d\n", n, total);
      /* details: free-form lines, indented under the device. */
      const char *line = info.details;
      while (*line) {
        const char *nl = strchr(line, '\n');
        int len = nl ? (int)(nl - line) : (int)strlen(line);
        if (len > 0) printf("    %.*s\n", len, line);
        line += len + (nl ? 1 : 0);
      }
    }
    printf("\n");
  }
  size_t nr = kiln_load_report_count(ctx);
  printf("load report (%zu file%s tried):\n", nr, nr == 1 ? "" : "s");
  for (size_t i = 0; i < nr; i++) {
    kiln_load_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    if (kiln_load_report_get(ctx, i, &r) != KILN_OK) continue;
    if (r.result == KILN_LOAD_OK)
      printf("  loaded   %s (%s)\n", r.path, r.name ? r.name : "?");
    else
      printf("  refused  %s: %s\n", r.path, r.message);
  }
  if (nr == 0) printf("  no plugin files found\n");
}

/* ---- JSON ----------------------------------------------------------------- */

static void json_str(const char *s) {
  if (!s) {
    fputs("null", stdout);
    return;
  }
  putchar('"');
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    switch (*c) {
      case '"': fputs("\\\"", stdout); break;
      case '\\': fputs("\\\\", stdout); break;
      case '\n': fputs("\\n", stdout); break;
      case '\r': fputs("\\r", stdout); break;
      case '\t': fputs("\\t", stdout); break;
      default:
        if (*c < 0x20) printf("\\u%04x", *c);
        else putchar(*c);
    }
  }
  putchar('"');
}

static void print_json(const kiln_context *ctx) {
  char buf[64];
  printf("{\"version\":");
  json_str(kiln_version_string());
  snprintf(buf, sizeof buf, "%u.%u", KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR);
  printf(",\"plugin_abi\":");
  json_str(buf);
  printf(",\"plugins\":[");
  for (size_t i = 0; i < kiln_plugin_count(ctx); i++) {
    const kiln_plugin *p = kiln_plugin_at(ctx, i);
    printf("%s{\"name\":", i ? "," : "");
    json_str(kiln_plugin_name(p));
    printf(",\"version\":");
    json_str(kiln_plugin_version(p));
    printf(",\"description\":");
    json_str(kiln_plugin_description(p));
    printf(",\"path\":");
    json_str(kiln_plugin_path(p));
    abi_str(kiln_plugin_abi_version(p), buf, sizeof buf);
    printf(",\"abi_version\":");
    json_str(buf);
    printf(",\"devices\":[");
    uint32_t nd = kiln_plugin_device_count(p);
    int first = 1;
    for (uint32_t d = 0; d < nd; d++) {
      kiln_device_info info;
      memset(&info, 0, sizeof info);
      info.struct_size = sizeof info;
      if (kiln_plugin_device_info(p, d, &info) != KILN_OK) continue;
      int total, n = f32_ops(p, d, &total);
      printf("%s{\"index\":%u,\"kind\":", first ? "" : ",", d);
      first = 0;
      json_str(kiln_device_kind_name(info.kind));
      printf(",\"name\":");
      json_str(info.name);
      printf(",\"vendor\":");
      json_str(info.vendor);
      printf(",\"driver\":");
      json_str(info.driver);
      printf(",\"memory_bytes\":%llu,\"compute_units\":%u,\"subgroup_size\":%u,\"features\":[",
             (unsigned long long)info.memory_bytes, info.compute_units, info.subgroup_size);
      int any = 0;
      for (size_t f = 0; f < N_FEATURES; f++)
        if (info.features & features[f].bit) {
          printf("%s", any ? "," : "");
          json_str(features[f].name);
          any = 1;
        }
      printf("],\"f32_ops\":%d,\"known_ops\":%d,\"details\":", n, total);
      json_str(info.details);
      printf("}");
    }
    printf("]}");
  }
  printf("],\"load_reports\":[");
  for (size_t i = 0; i < kiln_load_report_count(ctx); i++) {
    kiln_load_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    if (kiln_load_report_get(ctx, i, &r) != KILN_OK) continue;
    printf("%s{\"path\":", i ? "," : "");
    json_str(r.path);
    printf(",\"name\":");
    json_str(r.name);
    printf(",\"abi_version\":");
    if (r.abi_version) {
      abi_str(r.abi_version, buf, sizeof buf);
      json_str(buf);
    } else {
      printf("null");
    }
    printf(",\"loaded\":%s,\"result\":", r.result == KILN_LOAD_OK ? "true" : "false");
    json_str(result_code(r.result));
    printf(",\"message\":");
    json_str(r.message);
    printf("}");
  }
  printf("]}\n");
}

int kiln_cmd_info(int argc, char **argv) {
  int json = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) {
      json = 1;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      info_usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "kiln info: unknown argument '%s'\n\n", argv[i]);
      info_usage(stderr);
      return 2;
    }
  }
  kiln_context *ctx = NULL;
  if (kiln_context_create(NULL, &ctx) != KILN_OK) {
    fprintf(stderr, "kiln info: %s\n", kiln_last_error());
    return 1;
  }
  if (json) print_json(ctx);
  else print_text(ctx);
  kiln_context_destroy(ctx);
  return 0;
}
