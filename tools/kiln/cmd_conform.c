/*
 * cmd_conform.c - `kiln conform PLUGIN [--device N] [--json FILE] [--reference PATH]`:
 * checks that a backend plugin keeps the plugin ABI and computes what it
 * claims, standalone (the plugin file is driven directly through the ABI,
 * not through libkiln's loader).
 *
 * Three phases, each in forked children so that a plugin that crashes or
 * hangs is reported as a failure instead of taking the tool down:
 *  1. negotiation: the entry, the descriptor, init, the table's size,
 *     version and members, devices, device_info and op_support answers;
 *  2. error paths: one child per probe that hands a table member a NULL or
 *     bad argument and expects a status (with a message), not a crash;
 *  3. ops: for every op and dtype the device claims (op_support), a battery
 *     of shapes (size-1 dims, odd sizes, broadcasting, rank 0, large) run on
 *     the plugin and on the CPU reference plugin with the same inputs, the
 *     outputs (and, for in-place ops, every written input) compared with a
 *     per-op bound on max|y - ref| / max(1, max|ref|); where op_support
 *     also claims KILN_OP_SUPPORT_IN_PLACE, each case runs again with the
 *     output on the bytes of an input of its size, against the same bound.
 * A claim that does not hold (refused, crashes, wrong) is a failure. Claims
 * this tool has no generator for are reported "untested" (not a failure).
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "kiln/kiln.h"
#include "kiln/plugin.h"

/* Seconds a child may take before it counts as hung. */
#define CF_PROBE_TIMEOUT 60
#define CF_OPS_TIMEOUT 900

/* ==========================================================================
 * Result rows, sent from children to the parent through a pipe.
 */

enum { CF_PASS = 0, CF_FAIL = 1, CF_UNTESTED = 2 };
enum { CF_ROW_CHECK = 'c', CF_ROW_OP = 'o', CF_ROW_START = 's' };

typedef struct cf_row {
  int kind;                /* CF_ROW_* */
  int verdict;             /* CF_PASS, ... */
  char what[64];           /* check name, or op name */
  char dtype[16];
  int n_cases;             /* shapes tried */
  int n_in_place;          /* of them, run again with the output on an input (claimed in place) */
  double max_err, bound;
  char shapes[1024];       /* the shapes tried, "; "-separated */
  char detail[768];
} cf_row;

typedef struct cf_rows {
  cf_row *v;
  size_t n, cap;
} cf_rows;

static int cf_rows_push(cf_rows *r, const cf_row *row) {
  if (r->n == r->cap) {
    size_t cap = r->cap ? 2 * r->cap : 64;
    cf_row *v = realloc(r->v, cap * sizeof *v);
    if (!v) return -1;
    r->v = v;
    r->cap = cap;
  }
  r->v[r->n++] = *row;
  return 0;
}

/* The child's end of the pipe. */
static int cf_out_fd = -1;

static void cf_send(const cf_row *row) {
  const char *p = (const char *)row;
  size_t left = sizeof *row;
  while (left) {
    ssize_t n = write(cf_out_fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) _exit(3);
    p += n;
    left -= (size_t)n;
  }
}

static void cf_check(const char *what, int pass, const char *fmt, ...) {
  cf_row row;
  memset(&row, 0, sizeof row);
  row.kind = CF_ROW_CHECK;
  row.verdict = pass ? CF_PASS : CF_FAIL;
  snprintf(row.what, sizeof row.what, "%s", what);
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(row.detail, sizeof row.detail, fmt, ap);
    va_end(ap);
  }
  cf_send(&row);
}

static void cf_start(const char *what, const char *dtype) {
  cf_row row;
  memset(&row, 0, sizeof row);
  row.kind = CF_ROW_START;
  snprintf(row.what, sizeof row.what, "%s", what);
  snprintf(row.dtype, sizeof row.dtype, "%s", dtype ? dtype : "");
  cf_send(&row);
}

/* ==========================================================================
 * A host table and a loaded plugin.
 */

static char cf_error_buf[4096];

static void cf_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cf_error_buf, sizeof cf_error_buf, fmt, ap);
  va_end(ap);
}

static void cf_log(int level, const char *fmt, ...) {
  const char *env = getenv("KILN_LOG_LEVEL");
  int max = 0;
  if (env) max = !strcmp(env, "debug") ? 3 : !strcmp(env, "info") ? 2
               : !strcmp(env, "warning") ? 1 : atoi(env);
  if (level > max) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[plugin log %d] ", level);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static const kiln_host_api cf_host = {
    .struct_size = sizeof(kiln_host_api),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .set_error = cf_set_error,
    .log = cf_log,
};

typedef struct cf_plugin {
  void *dl;
  const kiln_plugin_entry_info *info;
  const kiln_plugin_api *api;
  kiln_plugin_device *dev;
} cf_plugin;

/* Size of the ABI 1.0 part of each table: a member is usable if it lies
 * within the struct_size the writer stated. */
#define CF_END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))
#define CF_ENTRY_V10_SIZE CF_END_OF(kiln_plugin_entry_info, init)
#define CF_API_V10_SIZE CF_END_OF(kiln_plugin_api, synchronize)

/* Loads, negotiates, inits and (device >= 0) opens a device. Returns 0, or
 * -1 with the reason in msg. Quiet: no rows. */
static int cf_open(cf_plugin *p, const char *path, int device, char *msg, size_t n) {
  memset(p, 0, sizeof *p);
  p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!p->dl) {
    snprintf(msg, n, "dlopen: %s", dlerror());
    return -1;
  }
  kiln_plugin_entry_fn entry;
  *(void **)&entry = dlsym(p->dl, KILN_PLUGIN_ENTRY_NAME);
  if (!entry) {
    snprintf(msg, n, "no %s symbol", KILN_PLUGIN_ENTRY_NAME);
    return -1;
  }
  p->info = entry(KILN_PLUGIN_ABI_VERSION);
  if (!p->info || p->info->struct_size < CF_ENTRY_V10_SIZE || !p->info->init ||
      KILN_ABI_MAJOR_OF(p->info->abi_version) != KILN_PLUGIN_ABI_MAJOR) {
    snprintf(msg, n, "unusable entry descriptor");
    return -1;
  }
  cf_error_buf[0] = '\0';
  kiln_status st = p->info->init(&cf_host, &p->api);
  if (st != KILN_OK || !p->api || p->api->struct_size < CF_API_V10_SIZE) {
    snprintf(msg, n, "init: %s: %s", kiln_status_name(st), cf_error_buf);
    p->api = NULL;
    return -1;
  }
  if (device >= 0) {
    st = p->api->device_open((uint32_t)device, &p->dev);
    if (st != KILN_OK) {
      snprintf(msg, n, "device_open(%d): %s: %s", device, kiln_status_name(st), cf_error_buf);
      p->dev = NULL;
      return -1;
    }
  }
  return 0;
}

static void cf_close(cf_plugin *p) {
  if (p->dev) p->api->device_close(p->dev);
  if (p->api) p->api->shutdown();
  /* Not dlclose'd: the process is a short-lived child. */
  memset(p, 0, sizeof *p);
}

/* ==========================================================================
 * Phase 1: negotiation.
 */

static int cf_name_ok(const char *s) {
  if (!s || !*s) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
      return 0;
  return 1;
}

static void cf_phase_negotiation(const char *path, int device) {
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  cf_check("dlopen", dl != NULL, "%s", dl ? "RTLD_NOW | RTLD_LOCAL" : dlerror());
  if (!dl) return;
  kiln_plugin_entry_fn entry;
  *(void **)&entry = dlsym(dl, KILN_PLUGIN_ENTRY_NAME);
  cf_check("entry symbol", entry != NULL, "%s", KILN_PLUGIN_ENTRY_NAME);
  if (!entry) return;
  const kiln_plugin_entry_info *info = entry(KILN_PLUGIN_ABI_VERSION);
  cf_check("entry descriptor", info != NULL, "entry(%#x) returned %s", KILN_PLUGIN_ABI_VERSION,
           info ? "a descriptor" : "NULL");
  if (!info) return;
  cf_check("entry struct_size", info->struct_size >= CF_ENTRY_V10_SIZE,
           "%u bytes (ABI 1.0 needs >= %zu)", info->struct_size, CF_ENTRY_V10_SIZE);
  if (info->struct_size < CF_ENTRY_V10_SIZE) return;
  cf_check("entry ABI version", KILN_ABI_MAJOR_OF(info->abi_version) == KILN_PLUGIN_ABI_MAJOR,
           "plugin %u.%u, host %u.%u", KILN_ABI_MAJOR_OF(info->abi_version),
           KILN_ABI_MINOR_OF(info->abi_version), KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR);
  if (KILN_ABI_MAJOR_OF(info->abi_version) != KILN_PLUGIN_ABI_MAJOR) return;
  cf_check("entry stable", entry(KILN_PLUGIN_ABI_VERSION + 1) == info,
           "the entry returns the same static descriptor for any host version");
  cf_check("plugin name", cf_name_ok(info->name), "\"%s\" (must be [a-z0-9_-]+)",
           info->name ? info->name : "(null)");
  cf_check("version and description", info->version && info->description,
           "version \"%s\", description \"%s\"", info->version ? info->version : "(null)",
           info->description ? info->description : "(null)");
  cf_check("init member", info->init != NULL, NULL);
  if (!info->init) return;

  const kiln_plugin_api *api = NULL;
  cf_error_buf[0] = '\0';
  kiln_status st = info->init(&cf_host, &api);
  cf_check("init", st == KILN_OK && api, "%s%s%s", kiln_status_name(st),
           cf_error_buf[0] ? ": " : "", cf_error_buf);
  if (st != KILN_OK || !api) return;
  cf_check("api struct_size", api->struct_size >= CF_API_V10_SIZE,
           "%u bytes (ABI 1.0 needs >= %zu)", api->struct_size, CF_API_V10_SIZE);
  cf_check("api ABI version", KILN_ABI_MAJOR_OF(api->abi_version) == KILN_PLUGIN_ABI_MAJOR,
           "table %u.%u", KILN_ABI_MAJOR_OF(api->abi_version), KILN_ABI_MINOR_OF(api->abi_version));
  if (api->struct_size < CF_API_V10_SIZE ||
      KILN_ABI_MAJOR_OF(api->abi_version) != KILN_PLUGIN_ABI_MAJOR)
    return;
  static const struct { const char *name; size_t off; } members[] = {
#define CF_M(m) {#m, offsetof(kiln_plugin_api, m)}
      CF_M(shutdown), CF_M(device_count), CF_M(device_info), CF_M(op_support),
      CF_M(device_open), CF_M(device_close), CF_M(buffer_alloc), CF_M(buffer_free),
      CF_M(buffer_write), CF_M(buffer_read), CF_M(buffer_copy), CF_M(graph_compile),
      CF_M(graph_run), CF_M(graph_free), CF_M(synchronize),
#undef CF_M
  };
  char missing[512] = "";
  for (size_t i = 0; i < sizeof members / sizeof members[0]; i++) {
    void *fn;
    memcpy(&fn, (const char *)api + members[i].off, sizeof fn);
    if (!fn)
      snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %s",
               members[i].name);
  }
  if (missing[0])
    cf_check("api members", 0, "NULL:%s", missing);
  else
    cf_check("api members", 1, "all %zu ABI 1.0 members set", sizeof members / sizeof members[0]);
  if (missing[0]) return;

  uint32_t count = api->device_count();
  cf_check("device_count", count >= 1, "%u devices", count);
  cf_check("requested device", (uint32_t)device < count, "device %d of %u", device, count);
  for (uint32_t d = 0; d < count; d++) {
    char what[64];
    kiln_device_info di;
    memset(&di, 0, sizeof di);
    di.struct_size = sizeof di;
    cf_error_buf[0] = '\0';
    st = api->device_info(d, &di);
    snprintf(what, sizeof what, "device_info(%u)", d);
    cf_check(what, st == KILN_OK && di.name[0] && di.kind <= KILN_DEVICE_DISCRETE_GPU &&
                       memchr(di.name, 0, sizeof di.name),
             "%s: \"%.200s\", kind %u", kiln_status_name(st), di.name, di.kind);
    /* An older host passes a shorter struct: the plugin must not write past it. */
    unsigned char small[sizeof(kiln_device_info)];
    memset(small, 0xab, sizeof small);
    kiln_device_info *sp = (kiln_device_info *)(void *)small;
    sp->struct_size = (uint32_t)CF_END_OF(kiln_device_info, kind);
    st = api->device_info(d, sp);
    size_t bad = 0;
    for (size_t i = CF_END_OF(kiln_device_info, kind); i < sizeof small; i++)
      if (small[i] != 0xab) bad++;
    snprintf(what, sizeof what, "device_info(%u) short struct", d);
    cf_check(what, st == KILN_OK && bad == 0,
             "struct_size %u: %s, %zu bytes written past it", sp->struct_size,
             kiln_status_name(st), bad);
  }
  cf_check("op_support unknown op", api->op_support(0, 100000u, KILN_F32) == 0,
           "op 100000 must be unsupported");
  cf_check("op_support unknown dtype", api->op_support(0, KILN_OP_ADD, 100000u) == 0,
           "dtype 100000 must be unsupported");
  cf_check("op_support bad device", api->op_support(count, KILN_OP_ADD, KILN_F32) == 0,
           "device %u does not exist", count);
  api->shutdown();
}

/* ==========================================================================
 * Phase 2: error paths. Each probe runs in its own child with a fresh,
 * opened plugin, and returns NULL (pass) or why it failed.
 */

typedef const char *(*cf_probe_fn)(cf_plugin *p, uint32_t device, char *why, size_t n);

/* A refusal must be a non-OK status with a message. */
static const char *cf_expect_refusal(kiln_status st, const char *call, char *why, size_t n) {
  if (st == KILN_OK)
    snprintf(why, n, "%s returned KILN_OK", call);
  else if (!cf_error_buf[0])
    snprintf(why, n, "%s returned %s but set no error message", call, kiln_status_name(st));
  else
    return NULL;
  return why;
}

#define CF_CALL(expr) (cf_error_buf[0] = '\0', (expr))

static const char *probe_info_bad_index(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  kiln_device_info di = {.struct_size = sizeof di};
  return cf_expect_refusal(CF_CALL(p->api->device_info(p->api->device_count(), &di)),
                           "device_info(device_count())", why, n);
}

static const char *probe_info_null(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  return cf_expect_refusal(CF_CALL(p->api->device_info(dev, NULL)), "device_info(dev, NULL)", why,
                           n);
}

static const char *probe_open_bad_index(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  kiln_plugin_device *d = NULL;
  kiln_status st = CF_CALL(p->api->device_open(p->api->device_count(), &d));
  if (st == KILN_OK && d) p->api->device_close(d);
  return cf_expect_refusal(st, "device_open(device_count())", why, n);
}

static const char *probe_alloc_zero(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  kiln_plugin_buffer *b = NULL;
  kiln_status st = CF_CALL(p->api->buffer_alloc(p->dev, 0, &b));
  if (st == KILN_OK && b) p->api->buffer_free(p->dev, b);
  return cf_expect_refusal(st, "buffer_alloc(size 0)", why, n);
}

/* Runs fn with a fresh 64-byte buffer. */
#define CF_WITH_BUFFER(b, body)                                                 \
  kiln_plugin_buffer *b = NULL;                                                 \
  if (p->api->buffer_alloc(p->dev, 64, &b) != KILN_OK) {                        \
    snprintf(why, n, "buffer_alloc(64) failed: %s", cf_error_buf);              \
    return why;                                                                 \
  }                                                                             \
  const char *r_ = (body);                                                      \
  p->api->buffer_free(p->dev, b);                                               \
  return r_;

static const char *probe_write_range(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  char data[64] = {0};
  CF_WITH_BUFFER(b, cf_expect_refusal(CF_CALL(p->api->buffer_write(p->dev, b, 32, data, 64)),
                                      "buffer_write([32, +64) of 64 bytes)", why, n))
}

static const char *probe_write_overflow(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  char data[64] = {0};
  CF_WITH_BUFFER(b, cf_expect_refusal(CF_CALL(p->api->buffer_write(p->dev, b, UINT64_MAX - 8,
                                                                   data, 16)),
                                      "buffer_write(offset 2^64 - 8, 16 bytes)", why, n))
}

static const char *probe_write_null(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  char data[8] = {0};
  return cf_expect_refusal(CF_CALL(p->api->buffer_write(p->dev, NULL, 0, data, 8)),
                           "buffer_write(NULL buffer)", why, n);
}

static const char *probe_read_range(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  char data[128];
  CF_WITH_BUFFER(b, cf_expect_refusal(CF_CALL(p->api->buffer_read(p->dev, b, 0, data, 128)),
                                      "buffer_read(128 bytes of 64)", why, n))
}

static const char *probe_read_null_dst(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  CF_WITH_BUFFER(b, cf_expect_refusal(CF_CALL(p->api->buffer_read(p->dev, b, 0, NULL, 8)),
                                      "buffer_read(NULL destination)", why, n))
}

static const char *probe_copy_range(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  CF_WITH_BUFFER(b, cf_expect_refusal(CF_CALL(p->api->buffer_copy(p->dev, b, 48, b, 0, 32)),
                                      "buffer_copy(to [48, +32) of 64 bytes)", why, n))
}

static const char *probe_compile_null(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  kiln_plugin_exec *e = NULL;
  return cf_expect_refusal(CF_CALL(p->api->graph_compile(p->dev, NULL, &e)),
                           "graph_compile(NULL graph)", why, n);
}

static const char *probe_run_null(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  return cf_expect_refusal(CF_CALL(p->api->graph_run(p->dev, NULL)),
                           "graph_run(NULL executable)", why, n);
}

/* A one-node graph over tensors t[0..nt) in buffer 0 (256 bytes), with
 * `edit` applied to it before graph_compile, which must refuse it. */
typedef struct cf_bad_graph {
  kiln_plugin_tensor t[3];
  kiln_plugin_node node;
  kiln_plugin_graph g;
} cf_bad_graph;

static const char *cf_compile_bad(cf_plugin *p, void (*edit)(cf_bad_graph *), const char *call,
                                  char *why, size_t n) {
  kiln_plugin_buffer *b = NULL;
  if (p->api->buffer_alloc(p->dev, 64, &b) != KILN_OK) {
    snprintf(why, n, "buffer_alloc(64) failed: %s", cf_error_buf);
    return why;
  }
  cf_bad_graph bg;
  memset(&bg, 0, sizeof bg);
  for (int i = 0; i < 3; i++) {
    bg.t[i].dtype = KILN_F32;
    bg.t[i].ndim = 1;
    for (int d = 0; d < KILN_MAX_DIMS; d++) bg.t[i].shape[d] = 1;
    bg.t[i].shape[0] = 4;
    bg.t[i].offset = 16 * (uint64_t)i;
    bg.t[i].nbytes = 16;
    bg.t[i].flags = KILN_PTENSOR_INPUT | KILN_PTENSOR_OUTPUT;
  }
  bg.node.op = KILN_OP_ADD;
  bg.node.n_inputs = 2;
  bg.node.inputs[0] = 0;
  bg.node.inputs[1] = 1;
  bg.node.output = 2;
  kiln_plugin_buffer *bufs[1] = {b};
  bg.g = (kiln_plugin_graph){
      .struct_size = sizeof(kiln_plugin_graph), .abi_version = KILN_PLUGIN_ABI_VERSION,
      .n_buffers = 1, .buffers = bufs, .n_tensors = 3,
      .tensor_stride = sizeof(kiln_plugin_tensor), .tensors = bg.t, .n_nodes = 1,
      .node_stride = sizeof(kiln_plugin_node), .nodes = &bg.node};
  edit(&bg);
  kiln_plugin_exec *e = NULL;
  kiln_status st = CF_CALL(p->api->graph_compile(p->dev, &bg.g, &e));
  if (st == KILN_OK && e) p->api->graph_free(p->dev, e);
  const char *r = cf_expect_refusal(st, call, why, n);
  p->api->buffer_free(p->dev, b);
  return r;
}

static void edit_unknown_op(cf_bad_graph *bg) { bg->node.op = 100000u; }
static void edit_input_index(cf_bad_graph *bg) { bg->node.inputs[1] = 7; }
static void edit_buffer_index(cf_bad_graph *bg) { bg->t[1].buffer = 3; }
static void edit_out_of_buffer(cf_bad_graph *bg) { bg->t[2].offset = 248; }
static void edit_small_stride(cf_bad_graph *bg) { bg->g.tensor_stride = 8; }
static void edit_bad_shapes(cf_bad_graph *bg) {
  bg->t[1].shape[0] = 3;    /* [4] + [3]: not broadcastable */
  bg->t[1].nbytes = 12;
}
static void edit_bad_dtype(cf_bad_graph *bg) { bg->t[0].dtype = 100000u; }

#define CF_BAD_GRAPH_PROBE(fn, edit, call)                                       \
  static const char *fn(cf_plugin *p, uint32_t dev, char *why, size_t n) {      \
    (void)dev;                                                                  \
    return cf_compile_bad(p, edit, call, why, n);                               \
  }
CF_BAD_GRAPH_PROBE(probe_compile_unknown_op, edit_unknown_op, "graph_compile(op 100000)")
CF_BAD_GRAPH_PROBE(probe_compile_input_index, edit_input_index,
                   "graph_compile(input tensor 7 of 3)")
CF_BAD_GRAPH_PROBE(probe_compile_buffer_index, edit_buffer_index,
                   "graph_compile(tensor in buffer 3 of 1)")
CF_BAD_GRAPH_PROBE(probe_compile_out_of_buffer, edit_out_of_buffer,
                   "graph_compile(16 bytes at offset 248 of a 64-byte buffer)")
CF_BAD_GRAPH_PROBE(probe_compile_small_stride, edit_small_stride,
                   "graph_compile(tensor_stride 8)")
CF_BAD_GRAPH_PROBE(probe_compile_bad_shapes, edit_bad_shapes, "graph_compile(add [4] + [3])")
CF_BAD_GRAPH_PROBE(probe_compile_bad_dtype, edit_bad_dtype, "graph_compile(dtype 100000)")

/* ABI 1.1's optional exec_write / exec_read / exec_history, where the
 * table has them: y = x + b with x, b INPUT and y OUTPUT. Each run must see
 * the inputs last written (also when a run follows without new writes), a
 * read of `back` 1 (where the history reaches it) must return the run
 * before the latest, every run the history claims (up to 8) must read back
 * as it ran, and misuse must be refused with a message. */
static const char *probe_exec_io(cf_plugin *p, uint32_t dev, char *why, size_t n) {
  (void)dev;
  const kiln_plugin_api *a = p->api;
  if (a->struct_size < offsetof(kiln_plugin_api, exec_history) + sizeof a->exec_history ||
      (!a->exec_write && !a->exec_read && !a->exec_history)) {
    snprintf(cf_error_buf, sizeof cf_error_buf, "not offered (optional since ABI 1.1)");
    return NULL;
  }
  if (!a->exec_write || !a->exec_read || !a->exec_history) {
    snprintf(why, n, "exec_write, exec_read and exec_history must be set together");
    return why;
  }
  enum { E = 37 };
  kiln_plugin_buffer *b = NULL;
  if (a->buffer_alloc(p->dev, 3 * E * 4, &b) != KILN_OK) {
    snprintf(why, n, "buffer_alloc failed: %s", cf_error_buf);
    return why;
  }
  kiln_plugin_tensor t[3];
  memset(t, 0, sizeof t);
  for (int i = 0; i < 3; i++) {
    t[i].dtype = KILN_F32;
    t[i].ndim = 1;
    for (int d = 0; d < KILN_MAX_DIMS; d++) t[i].shape[d] = 1;
    t[i].shape[0] = E;
    t[i].offset = (uint64_t)i * E * 4;
    t[i].nbytes = E * 4;
  }
  t[0].flags = t[1].flags = KILN_PTENSOR_INPUT;
  t[2].flags = KILN_PTENSOR_OUTPUT;
  kiln_plugin_node node;
  memset(&node, 0, sizeof node);
  node.op = KILN_OP_ADD;
  node.n_inputs = 2;
  node.inputs[1] = 1;
  node.output = 2;
  kiln_plugin_buffer *bufs[1] = {b};
  kiln_plugin_graph g = {
      .struct_size = sizeof(kiln_plugin_graph), .abi_version = KILN_PLUGIN_ABI_VERSION,
      .n_buffers = 1, .buffers = bufs, .n_tensors = 3,
      .tensor_stride = sizeof(kiln_plugin_tensor), .tensors = t, .n_nodes = 1,
      .node_stride = sizeof(kiln_plugin_node), .nodes = &node};
  kiln_plugin_exec *e = NULL;
  const char *fail = NULL;
  enum { DEEP = 8 };
  float x[DEEP][E], bias[E], y[E];
  for (int i = 0; i < E; i++) {
    for (int k = 0; k < DEEP; k++) x[k][i] = (float)(i * (k + 1)) - 11.0f;
    bias[i] = 0.5f * (float)i;
  }
  /* checks y against x[k] + bias; sets why and jumps out on a mismatch */
#define CF_EXPECT_Y(k, what)                                                                for (int i_ = 0; i_ < E; i_++)                                                              if (y[i_] != x[k][i_] + bias[i_]) {                                                         snprintf(why, n, "%s: y[%d] = %g, want %g", what, i_, (double)y[i_],                               (double)(x[k][i_] + bias[i_]));                                                  fail = why;                                                                               goto done;                                                                              }
#define CF_OK_OR(expr, what)                                                                do {                                                                                        kiln_status st_ = CF_CALL(expr);                                                          if (st_ != KILN_OK) {                                                                       snprintf(why, n, "%s: %s: %s", what, kiln_status_name(st_), cf_error_buf);                fail = why;                                                                               goto done;                                                                              }                                                                                       } while (0)
  CF_OK_OR(a->graph_compile(p->dev, &g, &e), "graph_compile(y = x + b)");
  uint32_t depth = a->exec_history(p->dev, e, 2);
  CF_OK_OR(a->exec_write(p->dev, e, 1, bias, sizeof bias), "exec_write(b)");
  for (int k = 0; k < 3; k++) {
    CF_OK_OR(a->exec_write(p->dev, e, 0, x[k], sizeof x[k]), "exec_write(x)");
    CF_OK_OR(a->graph_run(p->dev, e), "graph_run");
    if (k > 0 && depth >= 2) {
      CF_OK_OR(a->exec_read(p->dev, e, 2, 1, y, sizeof y), "exec_read(y, back 1)");
      CF_EXPECT_Y(k - 1, "exec_read(y, back 1) after the next run");
    }
  }
  CF_OK_OR(a->exec_read(p->dev, e, 2, 0, y, sizeof y), "exec_read(y, back 0)");
  CF_EXPECT_Y(2, "exec_read(y, back 0)");
  for (int r = 0; r < 3; r++) {
    CF_OK_OR(a->graph_run(p->dev, e), "graph_run without new inputs");
    CF_OK_OR(a->exec_read(p->dev, e, 2, 0, y, sizeof y), "exec_read(y, back 0)");
    CF_EXPECT_Y(2, "a run without new inputs");
  }
  uint32_t deep = depth < DEEP ? depth : DEEP;
  for (uint32_t k = 0; k < deep; k++) {
    CF_OK_OR(a->exec_write(p->dev, e, 0, x[k], sizeof x[k]), "exec_write(x)");
    CF_OK_OR(a->graph_run(p->dev, e), "graph_run");
  }
  for (uint32_t back = 0; back < deep; back++) {
    char what[64];
    snprintf(what, sizeof what, "exec_read(y, back %u) of %u runs queued", back, deep);
    CF_OK_OR(a->exec_read(p->dev, e, 2, back, y, sizeof y), what);
    CF_EXPECT_Y(deep - 1 - back, what);
  }
  const char *r = cf_expect_refusal(CF_CALL(a->exec_read(p->dev, e, 0, 0, y, sizeof y)),
                                    "exec_read(an input tensor)", why, n);
  if (!r) r = cf_expect_refusal(CF_CALL(a->exec_write(p->dev, e, 0, x[0], 4)),
                                "exec_write(4 bytes into a 148-byte input)", why, n);
  if (!r) r = cf_expect_refusal(CF_CALL(a->exec_read(p->dev, e, 2, depth, y, sizeof y)),
                                "exec_read(back = exec_history)", why, n);
  fail = r;
  if (!fail) snprintf(cf_error_buf, sizeof cf_error_buf, "history %u", depth);
#undef CF_EXPECT_Y
#undef CF_OK_OR
done:
  if (e) a->graph_free(p->dev, e);
  a->buffer_free(p->dev, b);
  return fail;
}

static const struct cf_probe {
  const char *name;
  cf_probe_fn fn;
} cf_probes[] = {
    {"device_info bad index", probe_info_bad_index},
    {"device_info NULL info", probe_info_null},
    {"device_open bad index", probe_open_bad_index},
    {"buffer_alloc size 0", probe_alloc_zero},
    {"buffer_write out of range", probe_write_range},
    {"buffer_write offset overflow", probe_write_overflow},
    {"buffer_write NULL buffer", probe_write_null},
    {"buffer_read out of range", probe_read_range},
    {"buffer_read NULL destination", probe_read_null_dst},
    {"buffer_copy out of range", probe_copy_range},
    {"graph_compile NULL graph", probe_compile_null},
    {"graph_compile unknown op", probe_compile_unknown_op},
    {"graph_compile bad input index", probe_compile_input_index},
    {"graph_compile bad buffer index", probe_compile_buffer_index},
    {"graph_compile tensor past buffer", probe_compile_out_of_buffer},
    {"graph_compile short tensor stride", probe_compile_small_stride},
    {"graph_compile mismatched shapes", probe_compile_bad_shapes},
    {"graph_compile unknown dtype", probe_compile_bad_dtype},
    {"graph_run NULL executable", probe_run_null},
    {"exec_write/exec_read (ABI 1.1)", probe_exec_io},
};

static void cf_phase_probe(const char *path, int device, const struct cf_probe *pr) {
  cf_plugin p;
  char msg[1024], why[1024];
  if (cf_open(&p, path, device, msg, sizeof msg) != 0) {
    cf_check(pr->name, 0, "could not set up: %s", msg);
    return;
  }
  const char *fail = pr->fn(&p, (uint32_t)device, why, sizeof why);
  cf_check(pr->name, fail == NULL, "%s", fail ? fail : cf_error_buf);
  cf_close(&p);
}

/* ==========================================================================
 * Phase 3: ops against the reference.
 */

/* How the values of an input are drawn. */
enum { V_UNIFORM = 0, V_POSITIVE, V_AWAY_FROM_ZERO, V_LABELS, V_STEP, V_PROB,
       V_BYTES,      /* u8, every value 0..255 */
       V_INTS };     /* i32 in [-100000, 100000] */

#define CF_MAX_IN 6

typedef struct cf_case {
  int n_in;
  uint32_t dt[CF_MAX_IN];
  int nd[CF_MAX_IN];
  int64_t sh[CF_MAX_IN][KILN_MAX_DIMS];
  int vk[CF_MAX_IN];
  int64_t classes;          /* V_LABELS: labels in [0, classes), some out of range */
  int out_nd;
  int64_t out_sh[KILN_MAX_DIMS];
  int in_place;             /* the output is input 0 */
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
} cf_case;

static void cf_in(cf_case *c, int vk, int nd, const int64_t *sh) {
  int i = c->n_in++;
  c->dt[i] = vk == V_LABELS || vk == V_INTS ? KILN_I32 : vk == V_BYTES ? KILN_U8 : KILN_F32;
  c->vk[i] = vk;
  c->nd[i] = nd;
  for (int d = 0; d < nd; d++) c->sh[i][d] = sh[d];
}
static void cf_outsh(cf_case *c, int nd, const int64_t *sh) {
  c->out_nd = nd;
  for (int d = 0; d < nd; d++) c->out_sh[d] = sh[d];
}
/* Shape literal: S(2, 3) gives "2, (int64_t[]){2, 3}"; S0 a scalar. */
#define CF_NARGS(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define S(...) CF_NARGS(__VA_ARGS__), (const int64_t[]){__VA_ARGS__}
#define S0 0, (const int64_t *)NULL

/* Broadcast output shape of two input shapes. */
static void cf_bcast(cf_case *c, int a, int b) {
  int nd = c->nd[a] > c->nd[b] ? c->nd[a] : c->nd[b];
  int64_t sh[KILN_MAX_DIMS];
  for (int i = 0; i < nd; i++) {
    int ia = i - (nd - c->nd[a]), ib = i - (nd - c->nd[b]);
    int64_t da = ia >= 0 ? c->sh[a][ia] : 1, db = ib >= 0 ? c->sh[b][ib] : 1;
    sh[i] = da == 1 ? db : da;
  }
  cf_outsh(c, nd, sh);
}

/* Output = input 0's shape. */
static void cf_same(cf_case *c) { cf_outsh(c, c->nd[0], c->sh[0]); }

/* Per-op bound on max|y - ref| / max(1, max|ref|). */
static double cf_bound(uint32_t op) {
  switch (op) {
    case KILN_OP_RELU: case KILN_OP_NEG: case KILN_OP_RELU_BACKWARD: case KILN_OP_RESHAPE:
    case KILN_OP_TRANSPOSE: case KILN_OP_COPY: case KILN_OP_FILL: case KILN_OP_EXPAND:
    case KILN_OP_MAXPOOL2D: case KILN_OP_MAXPOOL2D_BACKWARD: case KILN_OP_EMBEDDING:
    case KILN_OP_SLICE: case KILN_OP_SLICE_BACKWARD: case KILN_OP_ASSIGN:
      return 0.0;
    case KILN_OP_DROPOUT:
      return 1e-6;
    case KILN_OP_CLIP_COEF: case KILN_OP_GELU: case KILN_OP_GELU_BACKWARD: case KILN_OP_LR_SCHEDULE:
      return 1e-5;
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV:
    case KILN_OP_SCALE: case KILN_OP_INCREMENT: case KILN_OP_CAST:
      return 1e-6;
    case KILN_OP_TANH: case KILN_OP_SIGMOID: case KILN_OP_EXP: case KILN_OP_LOG:
    case KILN_OP_TANH_BACKWARD: case KILN_OP_SIGMOID_BACKWARD: case KILN_OP_SGD:
      return 1e-5;
    default:   /* sums over many terms: matmul, reductions, softmax, conv, pools, adam */
      return 1e-4;
  }
}

/* Fills case i of op; returns 0 when there is no case i (or no generator). */
static int cf_gen(uint32_t op, int i, cf_case *c) {
  memset(c, 0, sizeof *c);
  switch (op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV: {
      int vb = op == KILN_OP_DIV ? V_AWAY_FROM_ZERO : V_UNIFORM;
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(1)); cf_in(c, vb, S(1)); break;
        case 1: cf_in(c, V_UNIFORM, S(7)); cf_in(c, vb, S(7)); break;
        case 2: cf_in(c, V_UNIFORM, S(3, 1, 5)); cf_in(c, vb, S(4, 5)); break;
        case 3: cf_in(c, V_UNIFORM, S(1)); cf_in(c, vb, S(2, 3)); break;
        case 4: cf_in(c, V_UNIFORM, S0); cf_in(c, vb, S(5, 3)); break;
        case 5: cf_in(c, V_UNIFORM, S(65, 1)); cf_in(c, vb, S(1, 33)); break;
        case 6: cf_in(c, V_UNIFORM, S(2, 1, 3, 1, 5)); cf_in(c, vb, S(4, 1, 6, 1)); break;
        case 7: cf_in(c, V_UNIFORM, S(1000, 1001)); cf_in(c, vb, S(1001)); break;
        default: return 0;
      }
      cf_bcast(c, 0, 1);
      return 1;
    }
    case KILN_OP_NEG: case KILN_OP_RELU: case KILN_OP_TANH: case KILN_OP_SIGMOID:
    case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SCALE: {
      int vk = op == KILN_OP_LOG ? V_POSITIVE : V_UNIFORM;
      switch (i) {
        case 0: cf_in(c, vk, S(1)); break;
        case 1: cf_in(c, vk, S(7)); break;
        case 2: cf_in(c, vk, S0); break;
        case 3: cf_in(c, vk, S(3, 5, 1, 2)); break;
        case 4: cf_in(c, vk, S(1 << 20)); break;
        default: return 0;
      }
      c->fp[0] = 1.5f;
      c->fp[1] = -0.25f;
      cf_same(c);
      return 1;
    }
    case KILN_OP_RELU_BACKWARD: case KILN_OP_TANH_BACKWARD: case KILN_OP_SIGMOID_BACKWARD:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(1)); cf_in(c, V_UNIFORM, S(1)); break;
        case 1: cf_in(c, V_UNIFORM, S(3, 7)); cf_in(c, V_UNIFORM, S(3, 7)); break;
        case 2: cf_in(c, V_UNIFORM, S(1 << 20)); cf_in(c, V_UNIFORM, S(1 << 20)); break;
        default: return 0;
      }
      cf_same(c);
      return 1;
    case KILN_OP_MATMUL: {
      /* (a shape, b shape, ta, tb, out shape) */
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(1, 1)); cf_in(c, V_UNIFORM, S(1, 1)); cf_outsh(c, S(1, 1)); break;
        case 1: cf_in(c, V_UNIFORM, S(3, 5)); cf_in(c, V_UNIFORM, S(5, 7)); cf_outsh(c, S(3, 7)); break;
        case 2: cf_in(c, V_UNIFORM, S(33, 17)); cf_in(c, V_UNIFORM, S(33, 9)); cf_outsh(c, S(17, 9));
                c->ip[0] = 1; break;
        case 3: cf_in(c, V_UNIFORM, S(17, 33)); cf_in(c, V_UNIFORM, S(9, 33)); cf_outsh(c, S(17, 9));
                c->ip[1] = 1; break;
        case 4: cf_in(c, V_UNIFORM, S(33, 17)); cf_in(c, V_UNIFORM, S(9, 33)); cf_outsh(c, S(17, 9));
                c->ip[0] = c->ip[1] = 1; break;
        case 5: cf_in(c, V_UNIFORM, S(2, 1, 4, 6)); cf_in(c, V_UNIFORM, S(3, 6, 5));
                cf_outsh(c, S(2, 3, 4, 5)); break;
        case 6: cf_in(c, V_UNIFORM, S(1, 64)); cf_in(c, V_UNIFORM, S(64, 1)); cf_outsh(c, S(1, 1)); break;
        case 7: cf_in(c, V_UNIFORM, S(256, 300)); cf_in(c, V_UNIFORM, S(300, 200));
                cf_outsh(c, S(256, 200)); break;
        case 8: cf_in(c, V_UNIFORM, S(300, 129)); cf_in(c, V_UNIFORM, S(65, 300));
                cf_outsh(c, S(129, 65)); c->ip[0] = c->ip[1] = 1; break;
        default: return 0;
      }
      return 1;
    }
    case KILN_OP_SUM: case KILN_OP_MEAN:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(4, 5, 6)); c->ip[0] = 1; cf_outsh(c, S(5, 6)); break;
        case 1: cf_in(c, V_UNIFORM, S(4, 5, 6)); c->ip[0] = 5; c->ip[1] = 1; cf_outsh(c, S(1, 5, 1)); break;
        case 2: cf_in(c, V_UNIFORM, S(4, 5, 6)); c->ip[0] = 7; cf_outsh(c, S0); break;
        case 3: cf_in(c, V_UNIFORM, S(1)); c->ip[0] = 1; cf_outsh(c, S0); break;
        case 4: cf_in(c, V_UNIFORM, S(7, 3)); c->ip[0] = 0; cf_outsh(c, S(7, 3)); break;
        case 5: cf_in(c, V_UNIFORM, S(1000, 1000)); c->ip[0] = 1; cf_outsh(c, S(1000)); break;
        case 6: cf_in(c, V_UNIFORM, S(1000, 1000)); c->ip[0] = 2; c->ip[1] = 1; cf_outsh(c, S(1000, 1)); break;
        case 7: cf_in(c, V_UNIFORM, S(1 << 20)); c->ip[0] = 1; cf_outsh(c, S0); break;
        default: return 0;
      }
      return 1;
    case KILN_OP_EXPAND:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(3, 1)); cf_outsh(c, S(2, 3, 4)); break;
        case 1: cf_in(c, V_UNIFORM, S(1)); cf_outsh(c, S(5)); break;
        case 2: cf_in(c, V_UNIFORM, S0); cf_outsh(c, S(2, 2)); break;
        case 3: cf_in(c, V_UNIFORM, S(1, 1000)); cf_outsh(c, S(1000, 1000)); break;
        default: return 0;
      }
      return 1;
    case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(1, 1)); break;
        case 1: cf_in(c, V_UNIFORM, S(3, 7)); break;
        case 2: cf_in(c, V_UNIFORM, S(5)); break;
        case 3: cf_in(c, V_UNIFORM, S(2, 3, 1000)); break;
        default: return 0;
      }
      cf_same(c);
      return 1;
    case KILN_OP_SOFTMAX_BACKWARD: case KILN_OP_LOG_SOFTMAX_BACKWARD:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(1, 1)); cf_in(c, V_PROB, S(1, 1)); break;
        case 1: cf_in(c, V_UNIFORM, S(3, 7)); cf_in(c, V_PROB, S(3, 7)); break;
        case 2: cf_in(c, V_UNIFORM, S(2, 3, 1000)); cf_in(c, V_PROB, S(2, 3, 1000)); break;
        default: return 0;
      }
      cf_same(c);
      return 1;
    case KILN_OP_CROSS_ENTROPY: case KILN_OP_CROSS_ENTROPY_BACKWARD: {
      static const int64_t nc[][2] = {{1, 1}, {5, 7}, {64, 10}, {300, 1000}};
      if (i >= 4) return 0;
      int64_t N = nc[i][0], C = nc[i][1];
      if (op == KILN_OP_CROSS_ENTROPY_BACKWARD) cf_in(c, V_UNIFORM, S0);
      cf_in(c, V_UNIFORM, 2, (const int64_t[]){N, C});
      cf_in(c, V_LABELS, 1, (const int64_t[]){N});
      c->classes = C;
      if (op == KILN_OP_CROSS_ENTROPY) cf_outsh(c, S0);
      else cf_outsh(c, 2, (const int64_t[]){N, C});
      return 1;
    }
    case KILN_OP_RESHAPE:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(2, 3, 4)); cf_outsh(c, S(6, 4)); break;
        case 1: cf_in(c, V_UNIFORM, S(1)); cf_outsh(c, S0); break;
        case 2: cf_in(c, V_UNIFORM, S(1000, 1000)); cf_outsh(c, S(10, 100000)); break;
        default: return 0;
      }
      return 1;
    case KILN_OP_TRANSPOSE:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(2, 3, 4)); c->ip[0] = 2; c->ip[1] = 0; c->ip[2] = 1;
                cf_outsh(c, S(4, 2, 3)); break;
        case 1: cf_in(c, V_UNIFORM, S(5, 1)); c->ip[0] = 1; c->ip[1] = 0; cf_outsh(c, S(1, 5)); break;
        case 2: cf_in(c, V_UNIFORM, S(3, 4, 5, 6)); c->ip[0] = 0; c->ip[1] = 2; c->ip[2] = 1;
                c->ip[3] = 3; cf_outsh(c, S(3, 5, 4, 6)); break;
        case 3: cf_in(c, V_UNIFORM, S(513, 767)); c->ip[0] = 1; c->ip[1] = 0; cf_outsh(c, S(767, 513)); break;
        default: return 0;
      }
      return 1;
    case KILN_OP_CAST:   /* u8 sizes that are not whole 4-byte words, i32, f32 */
      switch (i) {
        case 0: cf_in(c, V_BYTES, S(1)); break;
        case 1: cf_in(c, V_BYTES, S(7)); break;
        case 2: cf_in(c, V_BYTES, S(3, 5, 1, 3)); break;
        case 3: cf_in(c, V_BYTES, S((1 << 20) + 3)); break;
        case 4: cf_in(c, V_INTS, S(33)); break;
        case 5: cf_in(c, V_UNIFORM, S(2, 1000)); break;
        default: return 0;
      }
      c->fp[0] = 1.0f / 255.0f;
      c->fp[1] = -0.5f;
      cf_same(c);
      return 1;
    case KILN_OP_COPY:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(7)); break;
        case 1: cf_in(c, V_UNIFORM, S0); break;
        case 2: cf_in(c, V_UNIFORM, S(3, 4, 5)); break;
        default: return 0;
      }
      cf_same(c);
      return 1;
    case KILN_OP_FILL:
      switch (i) {
        case 0: cf_outsh(c, S(3, 5)); break;
        case 1: cf_outsh(c, S0); break;
        case 2: cf_outsh(c, S(1000, 1000)); break;
        default: return 0;
      }
      c->fp[0] = 2.5f;
      return 1;
    case KILN_OP_CONV2D: case KILN_OP_CONV2D_BACKWARD_INPUT: case KILN_OP_CONV2D_BACKWARD_WEIGHT: {
      /* x, w, params, y */
      int64_t x[4], w[4], y[4];
      int bias = 0;
      int64_t st = 1, pad = 0, dil = 1, groups = 1;
      switch (i) {
        case 0: memcpy(x, (int64_t[]){2, 3, 7, 9}, sizeof x); memcpy(w, (int64_t[]){4, 3, 3, 3}, sizeof w);
                pad = 1; bias = 1; break;
        case 1: memcpy(x, (int64_t[]){2, 3, 7, 9}, sizeof x); memcpy(w, (int64_t[]){4, 3, 3, 3}, sizeof w);
                st = 2; break;
        case 2: memcpy(x, (int64_t[]){1, 3, 8, 8}, sizeof x); memcpy(w, (int64_t[]){6, 1, 3, 3}, sizeof w);
                groups = 3; pad = 1; break;
        case 3: memcpy(x, (int64_t[]){1, 2, 9, 9}, sizeof x); memcpy(w, (int64_t[]){2, 2, 3, 3}, sizeof w);
                dil = 2; pad = 1; break;
        case 4: memcpy(x, (int64_t[]){1, 1, 1, 1}, sizeof x); memcpy(w, (int64_t[]){1, 1, 1, 1}, sizeof w);
                break;
        case 5: memcpy(x, (int64_t[]){8, 16, 28, 28}, sizeof x); memcpy(w, (int64_t[]){32, 16, 5, 5}, sizeof w);
                pad = 2; bias = 1; break;
        default: return 0;
      }
      y[0] = x[0];
      y[1] = w[0];
      y[2] = (x[2] + 2 * pad - dil * (w[2] - 1) - 1) / st + 1;
      y[3] = (x[3] + 2 * pad - dil * (w[3] - 1) - 1) / st + 1;
      c->ip[0] = c->ip[1] = st;
      c->ip[2] = c->ip[3] = pad;
      c->ip[4] = c->ip[5] = dil;
      c->ip[6] = groups;
      if (op == KILN_OP_CONV2D) {
        cf_in(c, V_UNIFORM, 4, x);
        cf_in(c, V_UNIFORM, 4, w);
        if (bias) cf_in(c, V_UNIFORM, 1, w);   /* [O] */
        cf_outsh(c, 4, y);
      } else if (op == KILN_OP_CONV2D_BACKWARD_INPUT) {
        cf_in(c, V_UNIFORM, 4, y);
        cf_in(c, V_UNIFORM, 4, w);
        cf_outsh(c, 4, x);
      } else {
        cf_in(c, V_UNIFORM, 4, y);
        cf_in(c, V_UNIFORM, 4, x);
        cf_outsh(c, 4, w);
      }
      return 1;
    }
    case KILN_OP_MAXPOOL2D: case KILN_OP_MAXPOOL2D_BACKWARD: case KILN_OP_AVGPOOL2D:
    case KILN_OP_AVGPOOL2D_BACKWARD: {
      int64_t x[4] = {2, 3, 8, 8}, k = 2, st = 2, pad = 0, cip = 0;
      switch (i) {
        case 0: break;
        case 1: k = 3; pad = 1; break;
        case 2: k = 3; st = 1; cip = 1; memcpy(x, (int64_t[]){1, 1, 7, 5}, sizeof x); break;
        case 3: k = 3; st = 2; pad = 1; cip = 1; break;
        case 4: memcpy(x, (int64_t[]){64, 32, 14, 14}, sizeof x); break;
        default: return 0;
      }
      int64_t y[4] = {x[0], x[1], (x[2] + 2 * pad - k) / st + 1, (x[3] + 2 * pad - k) / st + 1};
      c->ip[0] = c->ip[1] = k;
      c->ip[2] = c->ip[3] = st;
      c->ip[4] = c->ip[5] = pad;
      if (op == KILN_OP_AVGPOOL2D || op == KILN_OP_AVGPOOL2D_BACKWARD) c->ip[6] = cip;
      if (op == KILN_OP_MAXPOOL2D || op == KILN_OP_AVGPOOL2D) {
        cf_in(c, V_UNIFORM, 4, x);
        cf_outsh(c, 4, y);
      } else {
        cf_in(c, V_UNIFORM, 4, y);
        if (op == KILN_OP_MAXPOOL2D_BACKWARD) cf_in(c, V_UNIFORM, 4, x);
        cf_outsh(c, 4, x);
      }
      return 1;
    }
    case KILN_OP_SGD: {
      int64_t n = i == 3 ? 100000 : 37;
      if (i > 3) return 0;
      cf_in(c, V_UNIFORM, 1, &n);
      cf_in(c, V_UNIFORM, 1, &n);
      c->fp[0] = 0.1f;
      if (i >= 1) {
        cf_in(c, V_UNIFORM, 1, &n);
        c->fp[1] = 0.9f;
        c->fp[2] = 0.01f;
        c->fp[3] = i == 2 ? 0.0f : 0.1f;
        c->ip[0] = i == 2;
      }
      c->in_place = 1;
      cf_same(c);
      return 1;
    }
    case KILN_OP_ADAM: {
      int64_t n = i == 2 ? 100000 : 37;
      if (i > 2) return 0;
      cf_in(c, V_UNIFORM, 1, &n);
      cf_in(c, V_UNIFORM, 1, &n);
      cf_in(c, V_UNIFORM, 1, &n);
      cf_in(c, V_POSITIVE, 1, &n);
      cf_in(c, V_STEP, S0);
      if (i == 1) cf_in(c, V_POSITIVE, S0);   /* lr overrides fp[0] */
      c->fp[0] = 1e-3f;
      c->fp[1] = 0.9f;
      c->fp[2] = 0.999f;
      c->fp[3] = 1e-8f;
      c->fp[4] = 0.01f;
      c->ip[0] = i != 0;
      c->in_place = 1;
      cf_same(c);
      return 1;
    }
    case KILN_OP_INCREMENT:
      if (i > 0) return 0;
      cf_in(c, V_UNIFORM, S0);
      c->fp[0] = 1.0f;
      c->in_place = 1;
      cf_same(c);
      return 1;
    case KILN_OP_EMBEDDING: case KILN_OP_EMBEDDING_BACKWARD: {
      /* weight [V, C], indices (some outside [0, V)) */
      static const int64_t vc[][2] = {{10, 4}, {10, 4}, {1, 1}, {1000, 256}};
      static const int64_t idx[][3] = {{1, 5}, {2, 2, 3}, {1, 1}, {2, 64, 8}};
      if (i >= 4) return 0;
      int64_t V = vc[i][0], C = vc[i][1];
      int nd = (int)idx[i][0];
      int64_t ysh[KILN_MAX_DIMS];
      for (int d = 0; d < nd; d++) ysh[d] = idx[i][1 + d];
      ysh[nd] = C;
      if (op == KILN_OP_EMBEDDING) {
        cf_in(c, V_UNIFORM, 2, (const int64_t[]){V, C});
        cf_in(c, V_LABELS, nd, idx[i] + 1);
        cf_outsh(c, nd + 1, ysh);
      } else {
        cf_in(c, V_UNIFORM, nd + 1, ysh);
        cf_in(c, V_LABELS, nd, idx[i] + 1);
        cf_outsh(c, 2, (const int64_t[]){V, C});
      }
      c->classes = V;
      return 1;
    }
    case KILN_OP_SLICE: case KILN_OP_SLICE_BACKWARD: {
      /* x shape, axis, start, length */
      int64_t x[3] = {0}, y[3];
      int nd;
      switch (i) {
        case 0: nd = 2; x[0] = 5; x[1] = 7; c->ip[0] = 1; c->ip[1] = 2; c->ip[2] = 3; break;
        case 1: nd = 1; x[0] = 4; c->ip[0] = 0; c->ip[1] = 3; c->ip[2] = 1; break;
        case 2: nd = 3; x[0] = 2; x[1] = 3; x[2] = 4; c->ip[0] = 0; c->ip[1] = 1; c->ip[2] = 1; break;
        case 3: nd = 2; x[0] = 1000; x[1] = 1000; c->ip[0] = 1; c->ip[1] = 100; c->ip[2] = 500; break;
        default: return 0;
      }
      memcpy(y, x, sizeof y);
      y[c->ip[0]] = c->ip[2];
      cf_in(c, V_UNIFORM, nd, op == KILN_OP_SLICE ? x : y);
      cf_outsh(c, nd, op == KILN_OP_SLICE ? y : x);
      return 1;
    }
    case KILN_OP_DROPOUT:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(7)); c->fp[0] = 0.5f; break;
        case 1: cf_in(c, V_UNIFORM, S(3, 5, 1, 2)); c->fp[0] = 0.25f; c->ip[2] = 3; break;
        case 2: cf_in(c, V_UNIFORM, S(1 << 20)); c->fp[0] = 0.1f; c->ip[0] = 0x12345678;
                c->ip[1] = 0x9abcdef; break;
        default: return 0;
      }
      cf_in(c, V_STEP, S0);   /* the counter */
      cf_same(c);
      return 1;
    case KILN_OP_CLIP_COEF:
      if (i >= 3) return 0;
      cf_in(c, V_POSITIVE, S0);
      c->fp[0] = i == 0 ? 1.0f : i == 1 ? 0.05f : 100.0f;
      c->fp[1] = 1e-6f;
      cf_outsh(c, S0);
      return 1;
    case KILN_OP_ASSIGN:
      switch (i) {
        case 0: cf_in(c, V_UNIFORM, S(7)); cf_in(c, V_UNIFORM, S(7)); break;
        case 1: cf_in(c, V_UNIFORM, S0); cf_in(c, V_UNIFORM, S0); break;
        case 2: cf_in(c, V_UNIFORM, S(3, 4)); cf_in(c, V_UNIFORM, S(3, 4)); break;
        case 3: cf_in(c, V_UNIFORM, S(1 << 20)); cf_in(c, V_UNIFORM, S(1 << 20)); break;
        default: return 0;
      }
      c->in_place = 1;
      cf_same(c);
      return 1;
    case KILN_OP_LAYERNORM: case KILN_OP_LAYERNORM_BACKWARD: case KILN_OP_LAYERNORM_BACKWARD_PARAMS: {
      /* x [..., C]; C = 1 and C not a multiple of 8 included */
      static const int64_t xs[][4] = {{2, 1, 1}, {2, 3, 5}, {3, 2, 3, 7}, {2, 1000, 33}, {2, 256, 384}};
      if (i >= 5) return 0;
      int nd = (int)xs[i][0];
      const int64_t *x = xs[i] + 1, C = x[nd - 1];
      cf_in(c, V_UNIFORM, nd, x);                       /* x, or dy */
      if (op == KILN_OP_LAYERNORM) {
        cf_in(c, V_UNIFORM, 1, &C);                     /* gamma */
        cf_in(c, V_UNIFORM, 1, &C);                     /* beta */
      } else {
        cf_in(c, V_UNIFORM, nd, x);                     /* x */
        if (op == KILN_OP_LAYERNORM_BACKWARD) cf_in(c, V_UNIFORM, 1, &C);
      }
      c->fp[0] = 1e-5f;
      if (op == KILN_OP_LAYERNORM_BACKWARD_PARAMS) cf_outsh(c, 2, (const int64_t[]){2, C});
      else cf_outsh(c, nd, x);
      return 1;
    }
    case KILN_OP_GELU: case KILN_OP_GELU_BACKWARD:
      switch (i) {
        case 0: case 1: cf_in(c, V_UNIFORM, S(7)); break;
        case 2: case 3: cf_in(c, V_UNIFORM, S(3, 5, 1, 2)); break;
        case 4: case 5: cf_in(c, V_UNIFORM, S(1 << 20)); break;
        default: return 0;
      }
      if (op == KILN_OP_GELU_BACKWARD) cf_in(c, V_UNIFORM, c->nd[0], c->sh[0]);
      c->ip[0] = i % 2;
      cf_same(c);
      return 1;
    case KILN_OP_ATTENTION: case KILN_OP_ATTENTION_BACKWARD: {
      /* B, T, C, H, causal; T 130 and 300 span several key and query tiles */
      static const int64_t cs[][5] = {{1, 1, 3, 1, 1},    {2, 5, 6, 2, 0},     {2, 17, 12, 4, 1},
                                      {1, 130, 24, 3, 1},  {2, 64, 128, 4, 1},  {1, 300, 64, 2, 0},
                                      {1, 70, 160, 2, 1}};   /* D 80: wider than one packed chunk */
      if (i >= 7) return 0;
      int64_t B = cs[i][0], T = cs[i][1], C = cs[i][2];
      if (op == KILN_OP_ATTENTION_BACKWARD) cf_in(c, V_UNIFORM, 3, (const int64_t[]){B, T, C});
      cf_in(c, V_UNIFORM, 3, (const int64_t[]){B, T, 3 * C});
      if (op == KILN_OP_ATTENTION_BACKWARD) cf_in(c, V_UNIFORM, 3, (const int64_t[]){B, T, C});
      c->ip[0] = cs[i][3];
      c->ip[1] = cs[i][4];
      c->fp[0] = i == 2 ? 0.7f : 0.0f;
      cf_outsh(c, 3, (const int64_t[]){B, T, op == KILN_OP_ATTENTION ? C : 3 * C});
      return 1;
    }
    case KILN_OP_LR_SCHEDULE:
      /* the step is 3: in warmup, in the decay, at its end, past it, S == W */
      switch (i) {
        case 0: c->ip[0] = 5; c->ip[1] = 10; break;
        case 1: c->ip[0] = 0; c->ip[1] = 10; break;
        case 2: c->ip[0] = 1; c->ip[1] = 2; break;
        case 3: c->ip[0] = 0; c->ip[1] = 1; break;
        case 4: c->ip[0] = 2; c->ip[1] = 2; break;
        default: return 0;
      }
      cf_in(c, V_STEP, S0);
      c->fp[0] = 6e-4f;
      c->fp[1] = 6e-5f;
      cf_outsh(c, S0);
      return 1;
    default:
      return 0;
  }
}

static uint64_t cf_rng;

static float cf_uniform(void) {
  cf_rng ^= cf_rng << 13;
  cf_rng ^= cf_rng >> 7;
  cf_rng ^= cf_rng << 17;
  return (float)((cf_rng >> 40) * (1.0 / 16777216.0));   /* [0, 1) */
}

static int64_t cf_numel(int nd, const int64_t *sh) {
  int64_t n = 1;
  for (int i = 0; i < nd; i++) n *= sh[i];
  return n;
}

static void cf_fill_values(const cf_case *c, int i, void *data, int64_t n) {
  if (c->vk[i] == V_LABELS) {
    int32_t *l = data;
    for (int64_t k = 0; k < n; k++) l[k] = (int32_t)(cf_uniform() * (float)c->classes);
    if (n > 2) l[n / 2] = -1;                      /* out of range: zero loss */
    if (n > 3) l[n - 1] = (int32_t)c->classes;
    return;
  }
  if (c->vk[i] == V_BYTES) {
    uint8_t *b = data;
    for (int64_t k = 0; k < n; k++) b[k] = (uint8_t)(cf_uniform() * 256.0f);
    if (n > 1) b[0] = 0, b[n - 1] = 255;
    return;
  }
  if (c->vk[i] == V_INTS) {
    int32_t *v = data;
    for (int64_t k = 0; k < n; k++) v[k] = (int32_t)(cf_uniform() * 200001.0f) - 100000;
    return;
  }
  float *f = data;
  for (int64_t k = 0; k < n; k++) {
    float u = cf_uniform();
    switch (c->vk[i]) {
      case V_POSITIVE: f[k] = 0.1f + 1.9f * u; break;
      case V_AWAY_FROM_ZERO: f[k] = (0.5f + u) * (u < 0.5f ? -1.0f : 1.0f); break;
      case V_STEP: f[k] = 3.0f; break;
      case V_PROB: f[k] = -1.0f - u; break;   /* log-probabilities; exp() in (0.13, 0.37) */
      default: f[k] = 2.0f * u - 1.0f; break;
    }
  }
}

static void cf_shape_str(char *buf, size_t n, int nd, const int64_t *sh) {
  size_t at = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < nd && at < n; i++)
    at += (size_t)snprintf(buf + at, n - at, "%s%lld", i ? "," : "", (long long)sh[i]);
  if (at < n) snprintf(buf + at, n - at, "]");
}

static void cf_case_str(const cf_case *c, char *buf, size_t n) {
  size_t at = 0;
  buf[0] = '\0';
  for (int i = 0; i < c->n_in && at < n; i++) {
    char s[128];
    cf_shape_str(s, sizeof s, c->nd[i], c->sh[i]);
    at += (size_t)snprintf(buf + at, n - at, "%s%s", i ? " " : "", s);
  }
  char s[128];
  cf_shape_str(s, sizeof s, c->out_nd, c->out_sh);
  if (at < n) at += (size_t)snprintf(buf + at, n - at, "%s-> %s", c->n_in ? " " : "", s);
  if (c->ip[0] || c->ip[1]) {
    if (at < n) snprintf(buf + at, n - at, " ip{%lld,%lld}", (long long)c->ip[0], (long long)c->ip[1]);
  }
}

/* Tensors of one case placed in one buffer, 256-byte aligned, like a
 * planner would place them. */
typedef struct cf_layout {
  int n;                                   /* tensors: inputs, then output */
  kiln_plugin_tensor t[CF_MAX_IN + 1];
  uint64_t size;
} cf_layout;

static void cf_layout_make(const cf_case *c, uint32_t op, cf_layout *L) {
  memset(L, 0, sizeof *L);
  uint64_t off = 0;
  int nt = c->n_in + (c->in_place ? 0 : 1);
  (void)op;
  for (int i = 0; i < nt; i++) {
    kiln_plugin_tensor *t = &L->t[i];
    int is_out = i == c->n_in;
    t->dtype = is_out ? KILN_F32 : c->dt[i];
    t->ndim = (uint32_t)(is_out ? c->out_nd : c->nd[i]);
    for (int d = 0; d < KILN_MAX_DIMS; d++)
      t->shape[d] = d < (int)t->ndim ? (is_out ? c->out_sh[d] : c->sh[i][d]) : 1;
    t->nbytes = (uint64_t)cf_numel((int)t->ndim, t->shape) * (t->dtype == KILN_U8 ? 1 : 4);
    t->buffer = 0;
    t->offset = off;
    t->flags = is_out ? KILN_PTENSOR_OUTPUT : KILN_PTENSOR_INPUT;
    if (c->in_place && i < 4) t->flags |= KILN_PTENSOR_PERSISTENT | KILN_PTENSOR_OUTPUT;
    off += (t->nbytes + 255) & ~(uint64_t)255;
  }
  L->n = nt;
  L->size = off ? off : 256;
}

/* For a claim of KILN_OP_SUPPORT_IN_PLACE: puts the output of case c on
 * the bytes of its first input of the same dtype and size, as a host's
 * planner may. Returns 0 if no input qualifies. */
static int cf_layout_alias(const cf_case *c, cf_layout *L) {
  if (c->in_place) return 0;
  kiln_plugin_tensor *out = &L->t[c->n_in];
  for (int i = 0; i < c->n_in; i++) {
    if (L->t[i].dtype != out->dtype || L->t[i].nbytes != out->nbytes) continue;
    out->offset = L->t[i].offset;
    return 1;
  }
  return 0;
}

/* Runs case c of op on p. data: the host bytes of every tensor (inputs
 * filled; outputs and in-place inputs are read back into them). Returns 0,
 * or -1 with the reason in msg. */
static int cf_run_case(cf_plugin *p, uint32_t op, const cf_case *c, const cf_layout *L,
                       void **data, char *msg, size_t n) {
  kiln_plugin_buffer *buf = NULL;
  kiln_plugin_exec *exec = NULL;
  kiln_status st;
  int rc = -1;
  kiln_plugin_node node;
  memset(&node, 0, sizeof node);
  node.op = op;
  node.n_inputs = (uint32_t)c->n_in;
  for (int i = 0; i < c->n_in; i++) node.inputs[i] = (uint32_t)i;
  node.output = c->in_place ? 0 : (uint32_t)c->n_in;
  memcpy(node.ip, c->ip, sizeof node.ip);
  memcpy(node.fp, c->fp, sizeof node.fp);

  cf_error_buf[0] = '\0';
  if ((st = p->api->buffer_alloc(p->dev, L->size, &buf)) != KILN_OK) {
    snprintf(msg, n, "buffer_alloc(%llu): %s: %s", (unsigned long long)L->size,
             kiln_status_name(st), cf_error_buf);
    goto fail;
  }
  for (int i = 0; i < c->n_in; i++)
    if ((st = p->api->buffer_write(p->dev, buf, L->t[i].offset, data[i], L->t[i].nbytes)) !=
        KILN_OK) {
      snprintf(msg, n, "buffer_write: %s: %s", kiln_status_name(st), cf_error_buf);
      goto fail;
    }
  kiln_plugin_graph g = {
      .struct_size = sizeof(kiln_plugin_graph),
      .abi_version = KILN_PLUGIN_ABI_VERSION,
      .n_buffers = 1,
      .buffers = &buf,
      .n_tensors = (uint32_t)L->n,
      .tensor_stride = sizeof(kiln_plugin_tensor),
      .tensors = L->t,
      .n_nodes = 1,
      .node_stride = sizeof(kiln_plugin_node),
      .nodes = &node,
  };
  if ((st = p->api->graph_compile(p->dev, &g, &exec)) != KILN_OK) {
    snprintf(msg, n, "graph_compile refused: %s: %s", kiln_status_name(st), cf_error_buf);
    exec = NULL;
    goto fail;
  }
  if ((st = p->api->graph_run(p->dev, exec)) != KILN_OK ||
      (st = p->api->synchronize(p->dev)) != KILN_OK) {
    snprintf(msg, n, "graph_run: %s: %s", kiln_status_name(st), cf_error_buf);
    goto fail;
  }
  for (int i = 0; i < L->n; i++) {
    if (!(L->t[i].flags & KILN_PTENSOR_OUTPUT)) continue;
    if ((st = p->api->buffer_read(p->dev, buf, L->t[i].offset, data[i], L->t[i].nbytes)) !=
        KILN_OK) {
      snprintf(msg, n, "buffer_read: %s: %s", kiln_status_name(st), cf_error_buf);
      goto fail;
    }
  }
  rc = 0;
fail:
  if (exec) p->api->graph_free(p->dev, exec);
  if (buf) p->api->buffer_free(p->dev, buf);
  return rc;
}

/* max|y - r| / max(1, max|r|) over the written tensors; NaN where the two
 * disagree on being NaN counts as infinite. */
static double cf_compare(const cf_layout *L, void **y, void **r) {
  double maxd = 0.0, maxr = 0.0;
  for (int i = 0; i < L->n; i++) {
    if (!(L->t[i].flags & KILN_PTENSOR_OUTPUT) || L->t[i].dtype != KILN_F32) continue;
    const float *a = y[i], *b = r[i];
    int64_t n = (int64_t)(L->t[i].nbytes / 4);
    for (int64_t k = 0; k < n; k++) {
      if (isnan(a[k]) != isnan(b[k]) || isinf(a[k]) != isinf(b[k])) return INFINITY;
      if (isnan(b[k]) || isinf(b[k])) continue;
      double d = fabs((double)a[k] - b[k]);
      if (d > maxd) maxd = d;
      if (fabs(b[k]) > maxr) maxr = fabs(b[k]);
    }
  }
  return maxd / (maxr > 1.0 ? maxr : 1.0);
}

static const uint32_t cf_dtypes[] = {KILN_F32, KILN_F16, KILN_BF16, KILN_I32, KILN_U8};
/* Op numbers scanned for claims: every number an op may ever have. */
#define CF_MAX_OP 256

static void cf_op_name(uint32_t op, char *buf, size_t n) {
  const char *s = kiln_op_name((kiln_op)op);
  if (!s || !strcmp(s, "unknown")) snprintf(buf, n, "op %u", op);
  else snprintf(buf, n, "%s", s);
}

static void cf_phase_ops(const char *path, const char *ref_path, int device) {
  cf_plugin p, ref;
  char msg[1024];
  if (cf_open(&p, path, device, msg, sizeof msg) != 0) {
    cf_check("ops setup", 0, "plugin: %s", msg);
    return;
  }
  if (cf_open(&ref, ref_path, 0, msg, sizeof msg) != 0) {
    cf_check("ops setup", 0, "reference %s: %s", ref_path, msg);
    return;
  }
  for (uint32_t op = 1; op < CF_MAX_OP; op++)
    for (size_t di = 0; di < sizeof cf_dtypes / sizeof cf_dtypes[0]; di++) {
      uint32_t dt = cf_dtypes[di];
      if (!p.api->op_support((uint32_t)device, op, dt)) continue;
      cf_row row;
      memset(&row, 0, sizeof row);
      row.kind = CF_ROW_OP;
      cf_op_name(op, row.what, sizeof row.what);
      snprintf(row.dtype, sizeof row.dtype, "%s", kiln_dtype_name((kiln_dtype)dt));
      row.bound = cf_bound(op);
      cf_start(row.what, row.dtype);
      cf_case c;
      if (dt != KILN_F32 || !cf_gen(op, 0, &c)) {
        row.verdict = CF_UNTESTED;
        snprintf(row.detail, sizeof row.detail, "claimed; this tool has no generator for it");
        cf_send(&row);
        continue;
      }
      if (!ref.api->op_support(0, op, dt)) {
        row.verdict = CF_UNTESTED;
        snprintf(row.detail, sizeof row.detail, "claimed; the reference does not support it");
        cf_send(&row);
        continue;
      }
      size_t at = 0;
      for (int ci = 0; cf_gen(op, ci, &c); ci++) {
        char cs[256];
        cf_case_str(&c, cs, sizeof cs);
        if (at < sizeof row.shapes)
          at += (size_t)snprintf(row.shapes + at, sizeof row.shapes - at, "%s%s", ci ? "; " : "",
                                 cs);
        cf_layout L;
        cf_layout_make(&c, op, &L);
        void *yd[CF_MAX_IN + 1] = {0}, *rd[CF_MAX_IN + 1] = {0};
        int oom = 0;
        for (int t = 0; t < L.n; t++) {
          yd[t] = calloc(1, L.t[t].nbytes ? L.t[t].nbytes : 4);
          rd[t] = calloc(1, L.t[t].nbytes ? L.t[t].nbytes : 4);
          if (!yd[t] || !rd[t]) oom = 1;
        }
        if (!oom) {
          cf_rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)op << 32) ^ (uint64_t)ci;
          for (int t = 0; t < c.n_in; t++) {
            cf_fill_values(&c, t, yd[t], cf_numel((int)L.t[t].ndim, L.t[t].shape));
            memcpy(rd[t], yd[t], L.t[t].nbytes);
          }
        }
        row.n_cases++;
        double err = 0.0;
        if (oom) {
          row.verdict = CF_UNTESTED;
          snprintf(row.detail, sizeof row.detail, "%s: out of host memory", cs);
        } else if (cf_run_case(&ref, op, &c, &L, rd, msg, sizeof msg) != 0) {
          if (row.verdict == CF_PASS) row.verdict = CF_UNTESTED;
          snprintf(row.detail, sizeof row.detail, "%s: the reference failed: %.480s", cs, msg);
        } else if (cf_run_case(&p, op, &c, &L, yd, msg, sizeof msg) != 0) {
          row.verdict = CF_FAIL;
          snprintf(row.detail, sizeof row.detail, "%s: %.500s", cs, msg);
        } else if ((err = cf_compare(&L, yd, rd)) > row.bound) {
          row.verdict = CF_FAIL;
          snprintf(row.detail, sizeof row.detail, "%s: error %.3g > bound %.3g", cs, err,
                   row.bound);
        } else if ((p.api->op_support((uint32_t)device, op, dt) & KILN_OP_SUPPORT_IN_PLACE) &&
                   cf_layout_alias(&c, &L)) {
          /* claimed in place: the same case with the output on an input */
          double e2 = 0.0;
          if (cf_run_case(&p, op, &c, &L, yd, msg, sizeof msg) != 0) {
            row.verdict = CF_FAIL;
            snprintf(row.detail, sizeof row.detail, "%s, output on an input's bytes (claimed "
                     "in place): %.450s", cs, msg);
          } else if ((e2 = cf_compare(&L, yd, rd)) > row.bound) {
            row.verdict = CF_FAIL;
            snprintf(row.detail, sizeof row.detail, "%s, output on an input's bytes (claimed "
                     "in place): error %.3g > bound %.3g", cs, e2, row.bound);
          }
          row.n_in_place++;
          if (e2 > err) err = e2;
        }
        if (err > row.max_err) row.max_err = err;
        for (int t = 0; t < L.n; t++) {
          free(yd[t]);
          free(rd[t]);
        }
        if (row.verdict == CF_FAIL) break;
      }
      cf_send(&row);
    }
  cf_close(&ref);
  cf_close(&p);
}

/* ==========================================================================
 * The parent: forks a child per phase or probe and collects its rows.
 */

/* Runs fn(arg) in a child with `timeout` seconds; appends its rows to out.
 * A child that dies or hangs adds a failing row naming what it was doing. */
static int cf_in_child(cf_rows *out, const char *label, int timeout,
                       void (*fn)(const void *), const void *arg) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return -1;
  }
  if (pid == 0) {
    close(fds[0]);
    cf_out_fd = fds[1];
    alarm((unsigned)timeout);
    fn(arg);
    _exit(0);
  }
  close(fds[1]);
  cf_row row, started;
  int have_started = 0;
  memset(&started, 0, sizeof started);
  for (;;) {
    size_t got = 0;
    while (got < sizeof row) {
      ssize_t n = read(fds[0], (char *)&row + got, sizeof row - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += (size_t)n;
    }
    if (got < sizeof row) break;
    if (row.kind == CF_ROW_START) {
      started = row;
      have_started = 1;
      continue;
    }
    have_started = 0;
    if (cf_rows_push(out, &row) != 0) break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
  memset(&row, 0, sizeof row);
  row.verdict = CF_FAIL;
  if (have_started) {
    row = started;
    row.kind = CF_ROW_OP;
    row.verdict = CF_FAIL;
  } else {
    row.kind = CF_ROW_CHECK;
    snprintf(row.what, sizeof row.what, "%s", label);
  }
  if (WIFSIGNALED(status))
    snprintf(row.detail, sizeof row.detail, "%s: the plugin %s (signal %d, %s)", label,
             WTERMSIG(status) == SIGALRM ? "hung" : "crashed", WTERMSIG(status),
             strsignal(WTERMSIG(status)));
  else
    snprintf(row.detail, sizeof row.detail, "%s: the child exited with status %d", label,
             WEXITSTATUS(status));
  cf_rows_push(out, &row);
  return 0;
}

typedef struct cf_args {
  const char *path, *ref;
  int device;
  const struct cf_probe *probe;
} cf_args;

static void cf_child_negotiation(const void *a) {
  cf_phase_negotiation(((const cf_args *)a)->path, ((const cf_args *)a)->device);
}
static void cf_child_probe(const void *a) {
  const cf_args *x = a;
  cf_phase_probe(x->path, x->device, x->probe);
}
static void cf_child_ops(const void *a) {
  const cf_args *x = a;
  cf_phase_ops(x->path, x->ref, x->device);
}

/* The CPU plugin beside libkiln: DIR_OF(libkiln)/kiln/libkiln-cpu.so. */
static int cf_default_reference(char *buf, size_t n) {
  Dl_info di;
  if (!dladdr((void *)kiln_version, &di) || !di.dli_fname) return -1;
  const char *slash = strrchr(di.dli_fname, '/');
  int dir = slash ? (int)(slash - di.dli_fname) : 1;
  snprintf(buf, n, "%.*s/kiln/libkiln-cpu.so", dir, slash ? di.dli_fname : ".");
  return access(buf, R_OK) == 0 ? 0 : -1;
}

static void cf_json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch == '\n') fputs("\\n", f);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static const char *cf_verdict(int v) {
  return v == CF_PASS ? "pass" : v == CF_FAIL ? "FAIL" : "untested";
}

static int cf_write_json(const char *file, const cf_args *a, const cf_rows *rows, int fails) {
  FILE *f = !strcmp(file, "-") ? stdout : fopen(file, "w");
  if (!f) {
    fprintf(stderr, "kiln conform: cannot write %s: %s\n", file, strerror(errno));
    return -1;
  }
  fprintf(f, "{\n  \"plugin\": ");
  cf_json_str(f, a->path);
  fprintf(f, ",\n  \"reference\": ");
  cf_json_str(f, a->ref ? a->ref : "");
  fprintf(f, ",\n  \"device\": %d,\n  \"host_abi\": \"%u.%u\",\n  \"failures\": %d,\n",
          a->device, KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR, fails);
  for (int pass = 0; pass < 2; pass++) {
    int kind = pass == 0 ? CF_ROW_CHECK : CF_ROW_OP;
    fprintf(f, "  \"%s\": [", pass == 0 ? "checks" : "ops");
    int first = 1;
    for (size_t i = 0; i < rows->n; i++) {
      const cf_row *r = &rows->v[i];
      if (r->kind != kind) continue;
      fprintf(f, "%s\n    {\"name\": ", first ? "" : ",");
      first = 0;
      cf_json_str(f, r->what);
      if (kind == CF_ROW_OP) {
        fprintf(f, ", \"dtype\": ");
        cf_json_str(f, r->dtype);
        fprintf(f, ", \"cases\": %d, \"in_place_cases\": %d, \"shapes\": ", r->n_cases,
                r->n_in_place);
        cf_json_str(f, r->shapes);
        fprintf(f, ", \"max_error\": %.6g, \"bound\": %.3g",
                isfinite(r->max_err) ? r->max_err : 1e308, r->bound);
      }
      fprintf(f, ", \"verdict\": \"%s\", \"detail\": ",
              r->verdict == CF_PASS ? "pass" : r->verdict == CF_FAIL ? "fail" : "untested");
      cf_json_str(f, r->detail);
      fputc('}', f);
    }
    fprintf(f, "\n  ]%s\n", pass == 0 ? "," : "");
  }
  fprintf(f, "}\n");
  if (f != stdout && fclose(f) != 0) {
    fprintf(stderr, "kiln conform: writing %s: %s\n", file, strerror(errno));
    return -1;
  }
  return 0;
}

static void cf_usage(FILE *f) {
  fprintf(f,
          "usage: kiln conform PLUGIN [--device N] [--json FILE] [--reference PATH]\n"
          "\n"
          "PLUGIN is a plugin file, or the name of one of this build's plugins (cpu,\n"
          "vulkan: libkiln-NAME.so beside the CPU reference).\n"
          "\n"
          "Checks a backend plugin file against the plugin ABI and the CPU reference:\n"
          "negotiation and table sizes, error paths (NULL and bad arguments must give a\n"
          "status, not a crash), and every op and dtype the device claims, on shapes\n"
          "with size-1 dims, odd sizes, broadcasting and large sizes, within per-op\n"
          "error bounds. Crashes and hangs are caught in child processes.\n"
          "\n"
          "  --device N        the plugin's device to test (default 0)\n"
          "  --json FILE       also write the results as JSON (- for stdout)\n"
          "  --reference PATH  the reference plugin (default: the CPU plugin beside libkiln)\n"
          "\n"
          "Exit status: 0 all claims hold, 1 a check failed, 2 usage error.\n");
}

int kiln_cmd_conform(int argc, char **argv) {
  cf_args a = {.device = 0};
  const char *json = NULL;
  for (int i = 1; i < argc; i++) {
    const char *s = argv[i];
    if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
      cf_usage(stdout);
      return 0;
    } else if (!strcmp(s, "--device") && i + 1 < argc) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (*end || v < 0 || v > 65535) {
        fprintf(stderr, "kiln conform: --device wants a device index, got '%s'\n", argv[i]);
        return 2;
      }
      a.device = (int)v;
    } else if (!strcmp(s, "--json") && i + 1 < argc) {
      json = argv[++i];
    } else if (!strcmp(s, "--reference") && i + 1 < argc) {
      a.ref = argv[++i];
    } else if (s[0] == '-') {
      fprintf(stderr, "kiln conform: unknown or incomplete option '%s'\n\n", s);
      cf_usage(stderr);
      return 2;
    } else if (!a.path) {
      a.path = s;
    } else {
      fprintf(stderr, "kiln conform: one plugin at a time ('%s' and '%s')\n", a.path, s);
      return 2;
    }
  }
  if (!a.path) {
    cf_usage(stderr);
    return 2;
  }
  char refbuf[4096];
  if (!a.ref) {
    if (cf_default_reference(refbuf, sizeof refbuf) != 0) {
      fprintf(stderr, "kiln conform: no CPU reference plugin beside libkiln (%s); give "
                      "--reference PATH\n", refbuf);
      return 1;
    }
    a.ref = refbuf;
  }
  /* A relative plugin path means that file, not a dlopen search. A bare
   * name that is not a file here (cpu, vulkan) names a plugin of this
   * build: libkiln-NAME.so beside the reference plugin. */
  char pathbuf[4096];
  if (!strchr(a.path, '/')) {
    const char *slash = strrchr(a.ref, '/');
    if (access(a.path, F_OK) != 0 && slash)
      snprintf(pathbuf, sizeof pathbuf, "%.*s/libkiln-%s.so", (int)(slash - a.ref), a.ref, a.path);
    else
      snprintf(pathbuf, sizeof pathbuf, "./%s", a.path);
    a.path = pathbuf;
  }

  cf_rows rows = {0};
  printf("kiln conform %s (device %d, reference %s)\n", a.path, a.device, a.ref);
  cf_in_child(&rows, "negotiation", CF_PROBE_TIMEOUT, cf_child_negotiation, &a);
  int negotiated = 1;
  for (size_t i = 0; i < rows.n; i++)
    if (rows.v[i].verdict == CF_FAIL) negotiated = 0;
  if (negotiated) {
    for (size_t i = 0; i < sizeof cf_probes / sizeof cf_probes[0]; i++) {
      a.probe = &cf_probes[i];
      cf_in_child(&rows, cf_probes[i].name, CF_PROBE_TIMEOUT, cf_child_probe, &a);
    }
    cf_in_child(&rows, "ops", CF_OPS_TIMEOUT, cf_child_ops, &a);
  }

  int fails = 0, untested = 0, n_ops = 0;
  printf("\n%-34s %s\n", "check", "verdict");
  for (size_t i = 0; i < rows.n; i++) {
    const cf_row *r = &rows.v[i];
    if (r->kind != CF_ROW_CHECK) continue;
    fails += r->verdict == CF_FAIL;
    printf("%-34s %-8s %s\n", r->what, cf_verdict(r->verdict),
           r->verdict == CF_FAIL ? r->detail : "");
  }
  printf("\n%-25s %-6s %6s %11s %9s  %s\n", "op", "dtype", "shapes", "max error", "bound",
         "verdict");
  for (size_t i = 0; i < rows.n; i++) {
    const cf_row *r = &rows.v[i];
    if (r->kind != CF_ROW_OP) continue;
    n_ops++;
    fails += r->verdict == CF_FAIL;
    untested += r->verdict == CF_UNTESTED;
    printf("%-25s %-6s %6d %11.3g %9.3g  %s%s%s%s\n", r->what, r->dtype, r->n_cases, r->max_err,
           r->bound, cf_verdict(r->verdict), r->verdict != CF_PASS ? ": " : "",
           r->verdict != CF_PASS ? r->detail : "", r->n_in_place ? " (also in place)" : "");
  }
  if (!negotiated) printf("(negotiation failed: error paths and ops were not run)\n");
  printf("\n%d claimed op/dtype pairs, %d untested, %d failures: %s\n", n_ops, untested, fails,
         fails ? "NOT CONFORMANT" : "conformant");
  int rc = fails ? 1 : 0;
  if (json && cf_write_json(json, &a, &rows, fails) != 0) rc = 1;
  free(rows.v);
  return rc;
}
