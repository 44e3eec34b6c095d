/*
 * char_cli.h - helpers of the character-model CLI suites (test_char_rnn,
 * test_char_gpt): run `kiln` and capture its output, temporary files, a
 * short slice of tinyshakespeare, and fields of the final line. Define
 * CHAR_CLI_TMP_PREFIX (e.g. "/tmp/kiln-test-gpt-") before including.
 */
#ifndef KILN_TEST_CHAR_CLI_H
#define KILN_TEST_CHAR_CLI_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define KILN_BIN KILN_BUILD_DIR "/bin/kiln"

static int run(const char *args, char *out, size_t size) {
  cr_assert(access(KILN_BIN, X_OK) == 0, "%s is missing: build the kiln-cli target first", KILN_BIN);
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "KILN_NUM_THREADS=1 '%s' %s 2>&1", KILN_BIN, args);
  FILE *f = popen(cmd, "r");
  cr_assert_not_null(f, "popen(%s) failed", cmd);
  size_t n = fread(out, 1, size - 1, f);
  out[n] = '\0';
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "cannot write %s", path);
  cr_assert_eq(fwrite(data, 1, n, f), n);
  fclose(f);
}

/* A temporary path unique to this process. */
static const char *tmp_path(const char *name) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 512, CHAR_CLI_TMP_PREFIX "%d-%s", (int)getpid(), name);
  return p;
}

/* The first 200,000 characters of tinyshakespeare, to keep runs short. */
static const char *subset(void) {
  const char *path = tmp_path("subset.txt");
  FILE *f = fopen(tu_data_path("tinyshakespeare.txt"), "rb");
  cr_assert_not_null(f);
  static char buf[200000];
  cr_assert_eq(fread(buf, 1, sizeof buf, f), sizeof buf);
  fclose(f);
  write_file(path, buf, sizeof buf);
  return path;
}

static double field(const char *out, const char *key) {
  const char *last = NULL;
  for (const char *p = strstr(out, key); p; p = strstr(p + 1, key)) last = p;
  cr_assert_not_null(last, "no %s in:\n%s", key, out);
  double v;
  cr_assert_eq(sscanf(last + strlen(key), "%lf", &v), 1, "cannot parse %s in:\n%s", key, out);
  return v;
}

#endif
