/*
 * error.c - the thread-local last-error message, status strings, checked
 * allocation, and the host table handed to plugins.
 *
 * Every thread has its own message buffer, so a failure on one thread never
 * overwrites the message another thread is about to read.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

#define KILN__ERROR_MAX 2048

static _Thread_local char last_error[KILN__ERROR_MAX];

kiln_status kiln__verror(kiln_status status, const char *fmt, va_list ap) {
  /* fmt's arguments may point into last_error itself (a caller re-wrapping
   * kiln_last_error()), so format into a scratch buffer first. */
  char tmp[KILN__ERROR_MAX];
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  memcpy(last_error, tmp, sizeof tmp);
  return status;
}

kiln_status kiln__error(kiln_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kiln__verror(status, fmt, ap);
  va_end(ap);
  return status;
}

const char *kiln_last_error(void) { return last_error; }

void kiln_clear_error(void) { last_error[0] = '\0'; }

const char *kiln_status_string(kiln_status s) {
  switch (s) {
#define KILN_STATUS_STR_(name, num, desc) case KILN_##name: return desc;
    KILN_STATUS_MAP(KILN_STATUS_STR_)
#undef KILN_STATUS_STR_
    default: return "unknown status";
  }
}

const char *kiln_status_name(kiln_status s) {
  switch (s) {
#define KILN_STATUS_NAME_(name, num, desc) case KILN_##name: return "KILN_" #name;
    KILN_STATUS_MAP(KILN_STATUS_NAME_)
#undef KILN_STATUS_NAME_
    default: return "KILN_UNKNOWN_STATUS";
  }
}

char *kiln__shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
  if (!buf || size == 0) return buf;
  size_t used = 0;
  int n = snprintf(buf, size, "[");
  used = n > 0 ? (size_t)n : 0;
  for (int i = 0; i < ndim && used < size; i++) {
    n = snprintf(buf + used, size - used, "%s%lld", i ? ", " : "",
                 shape ? (long long)shape[i] : 0LL);
    if (n < 0) break;
    used += (size_t)n;
  }
  if (used < size) snprintf(buf + used, size - used, "]");
  return buf;
}

/* ---- checked allocation --------------------------------------------------- */

void *kiln__malloc(size_t size) {
  void *p = kiln__fault_alloc_now() ? NULL : malloc(size ? size : 1);
  if (!p) kiln__error(KILN_OUT_OF_MEMORY, "out of host memory allocating %zu bytes", size);
  return p;
}

void *kiln__calloc(size_t n, size_t size) {
  void *p = kiln__fault_alloc_now() ? NULL : calloc(n ? n : 1, size ? size : 1);
  if (!p)
    kiln__error(KILN_OUT_OF_MEMORY, "out of host memory allocating %zu x %zu bytes", n, size);
  return p;
}

void *kiln__realloc(void *p, size_t size) {
  void *q = kiln__fault_alloc_now() ? NULL : realloc(p, size ? size : 1);
  if (!q) kiln__error(KILN_OUT_OF_MEMORY, "out of host memory reallocating to %zu bytes", size);
  return q;
}

char *kiln__strdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = kiln__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* ---- the host table given to plugins ------------------------------------- */

static void host_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void host_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void host_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kiln__verror(KILN_PLUGIN_ERROR, fmt, ap);
  va_end(ap);
}

/* $KILN_LOG_LEVEL: a number 0..3 or a name (error, warning, info, debug).
 * Read on every call: logging is rare and this keeps setenv() in tests and
 * tools effective. Unset or unparsable means 1 (warnings and errors). */
static int log_threshold(void) {
  const char *s = getenv("KILN_LOG_LEVEL");
  if (!s || !*s) return 1;
  if (s[0] >= '0' && s[0] <= '9' && s[1] == '\0') return s[0] - '0';
  static const char *const names[] = {"error", "warning", "info", "debug"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i;
  if (strcmp(s, "warn") == 0) return 1;
  return 1;
}

static void host_log(int level, const char *fmt, ...) {
  if (level > log_threshold()) return;
  static const char *const tags[] = {"error", "warning", "info", "debug"};
  const char *tag = level >= 0 && level <= 3 ? tags[level] : "log";
  char msg[KILN__ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "kiln[plugin]: %s: %s\n", tag, msg);
}

const kiln_host_api kiln__host_api = {
    .struct_size = sizeof(kiln_host_api),
    .abi_version = KILN_PLUGIN_ABI_VERSION,
    .set_error = host_set_error,
    .log = host_log,
};
