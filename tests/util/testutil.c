#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void tu_open_cpu(kiln_context **ctx, kiln_device **dev) {
  kiln_status st = kiln_context_create(NULL, ctx);
  cr_assert_eq(st, KILN_OK, "kiln_context_create: %s", kiln_last_error());
  st = kiln_device_open(*ctx, "cpu", 0, dev);
  cr_assert_eq(st, KILN_OK, "kiln_device_open(cpu): %s", kiln_last_error());
}

void tu_fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;   /* xorshift64 */
    float u = (float)((s >> 40) * (1.0 / 16777216.0));
    x[i] = lo + (hi - lo) * u;
  }
}

const char *tu_data_path(const char *rel) {
  static char buf[4096];
  const char *root = getenv("KILN_TEST_DATA");
  if (!root || !*root) root = KILN_TEST_DATA;
  snprintf(buf, sizeof buf, "%s/%s", root, rel);
  return buf;
}

void tu_stderr_begin(tu_capture *c) {
  FILE *f = tmpfile();
  cr_assert_not_null(f, "tmpfile() failed");
  fflush(stderr);
  c->saved = dup(2);
  cr_assert(c->saved >= 0 && dup2(fileno(f), 2) == 2, "cannot redirect stderr");
  c->file = f;
}

char *tu_stderr_end(tu_capture *c) {
  FILE *f = c->file;
  fflush(stderr);
  dup2(c->saved, 2);
  close(c->saved);
  long len = (fseek(f, 0, SEEK_END), ftell(f));
  char *out = calloc((size_t)(len > 0 ? len : 0) + 1, 1);
  cr_assert_not_null(out);
  rewind(f);
  cr_assert_eq(fread(out, 1, (size_t)(len > 0 ? len : 0), f), (size_t)(len > 0 ? len : 0));
  fclose(f);
  return out;
}
