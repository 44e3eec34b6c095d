/*
 * test_idx.c - IDX files, the MNIST loader, the data directory, and
 * tools/fetch-data / `kiln fetch` run offline (file:// mirrors).
 *
 * Data: KILN_TEST_DATA/mnist (the four .gz files). Hand-made IDX files are
 * written into a fresh temporary directory per test; gzip variants are made
 * with the gzip program.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/data.h"
#include "kiln/kiln.h"
#include "testutil.h"

#define OK(call) cr_assert_eq((call), KILN_OK, "%s: %s", #call, kiln_last_error())

static char tmpdir[256];

static void mk_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln-test-idx-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* tmpdir/name (static buffer, one of four in rotation). */
static const char *tpath(const char *name) {
  static char bufs[4][512];
  static int k;
  char *b = bufs[k++ & 3];
  snprintf(b, 512, "%s/%s", tmpdir, name);
  return b;
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "cannot create %s", path);
  cr_assert_eq(fwrite(data, 1, n, f), n);
  cr_assert_eq(fclose(f), 0);
}

static unsigned char *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *p = malloc((size_t)size + 1);
  cr_assert_not_null(p);
  cr_assert_eq(fread(p, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  *n = (size_t)size;
  return p;
}

static int sh(const char *cmd) {
  int status = system(cmd);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* An IDX file with a u8 payload of `count` bytes (value i & 0xff) after a
 * header naming `ndim` dims. */
static void write_idx(const char *path, int type, int ndim, const uint32_t *dims, size_t payload) {
  size_t n = 4 + 4 * (size_t)ndim + payload;
  unsigned char *b = calloc(1, n);
  cr_assert_not_null(b);
  b[2] = (unsigned char)type;
  b[3] = (unsigned char)ndim;
  for (int i = 0; i < ndim; i++) {
    b[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
    b[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
    b[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
    b[7 + 4 * i] = (unsigned char)dims[i];
  }
  for (size_t i = 0; i < payload; i++) b[4 + 4 * (size_t)ndim + i] = (unsigned char)(i % 10);
  write_file(path, b, n);
  free(b);
}

static void gzip_to(const char *src, const char *dst) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "gzip -c '%s' > '%s'", src, dst);
  cr_assert_eq(sh(cmd), 0, "%s", cmd);
}

/* Expects kiln_idx_read(path) to fail with `want` and a message holding the
 * file's path and every one of the given fragments. */
static void expect_idx_error(const char *path, kiln_status want, const char *frag1,
                             const char *frag2) {
  kiln_idx x;
  kiln_status st = kiln_idx_read(path, &x);
  const char *msg = kiln_last_error();
  cr_assert_eq(st, want, "%s: got %s (%s), want %s", path, kiln_status_name(st), msg,
               kiln_status_name(want));
  cr_assert_null(x.data, "a failed read leaves no data");
  cr_assert(strstr(msg, path), "the message must name the file: '%s'", msg);
  if (frag1) cr_assert(strstr(msg, frag1), "'%s' is not in the message '%s'", frag1, msg);
  if (frag2) cr_assert(strstr(msg, frag2), "'%s' is not in the message '%s'", frag2, msg);
}

/* ---- the real MNIST files ---------------------------------------------------- */

Test(mnist, training_set_loads) {
  kiln_mnist m;
  OK(kiln_mnist_load(tu_data_path("mnist"), 1, 0, &m));
  cr_assert_eq(m.n, 60000);
  cr_assert_eq(m.rows, 28);
  cr_assert_eq(m.cols, 28);
  cr_assert_eq(m.labels[0], 5, "train label[0] is 5, got %d", m.labels[0]);
  /* Every digit occurs, and pixels span 0..255. */
  int64_t seen[10] = {0};
  for (int64_t i = 0; i < m.n; i++) seen[m.labels[i]]++;
  for (int d = 0; d < 10; d++) cr_assert_gt(seen[d], 5000, "digit %d: %lld", d, (long long)seen[d]);
  int lo = 255, hi = 0;
  for (int64_t i = 0; i < 28 * 28; i++) {
    if (m.images[i] < lo) lo = m.images[i];
    if (m.images[i] > hi) hi = m.images[i];
  }
  cr_assert_eq(lo, 0);
  cr_assert_eq(hi, 255);
  kiln_mnist_free(&m);
  cr_assert_null(m.images);
}

Test(mnist, test_set_loads) {
  kiln_mnist m;
  OK(kiln_mnist_load(tu_data_path("mnist"), 0, 0, &m));
  cr_assert_eq(m.n, 10000);
  cr_assert_eq(m.rows, 28);
  cr_assert_eq(m.cols, 28);
  cr_assert_eq(m.labels[0], 7, "test label[0] is 7, got %d", m.labels[0]);
  cr_assert_eq(m.labels[1], 2);
  cr_assert_eq(m.labels[2], 1);
  kiln_mnist_free(&m);
}

Test(mnist, limit_keeps_the_first_samples) {
  kiln_mnist all, some;
  OK(kiln_mnist_load(tu_data_path("mnist"), 0, 0, &all));
  OK(kiln_mnist_load(tu_data_path("mnist"), 0, 123, &some));
  cr_assert_eq(some.n, 123);
  cr_assert_eq(memcmp(some.labels, all.labels, 123), 0);
  cr_assert_eq(memcmp(some.images, all.images, 123 * 28 * 28), 0);
  kiln_mnist_free(&some);
  /* A limit above the count keeps everything. */
  OK(kiln_mnist_load(tu_data_path("mnist"), 0, 1000000, &some));
  cr_assert_eq(some.n, 10000);
  kiln_mnist_free(&some);
  kiln_mnist_free(&all);
  cr_assert_eq(kiln_mnist_load(tu_data_path("mnist"), 0, -1, &some), KILN_INVALID_ARGUMENT);
}

Test(idx, raw_and_gzip_agree, .init = mk_tmpdir, .fini = rm_tmpdir) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "gzip -dc '%s' > '%s'", tu_data_path("mnist/t10k-images-idx3-ubyte.gz"),
           tpath("t10k-images-idx3-ubyte"));
  cr_assert_eq(sh(cmd), 0, "%s", cmd);
  kiln_idx gz, raw;
  OK(kiln_idx_read(tu_data_path("mnist/t10k-images-idx3-ubyte.gz"), &gz));
  OK(kiln_idx_read(tpath("t10k-images-idx3-ubyte"), &raw));
  cr_assert_eq(gz.ndim, 3);
  cr_assert_eq(gz.dims[0], 10000);
  cr_assert_eq(gz.dims[1], 28);
  cr_assert_eq(gz.dims[2], 28);
  cr_assert_eq(gz.count, 7840000);
  cr_assert_eq(raw.ndim, gz.ndim);
  cr_assert_eq(raw.count, gz.count);
  cr_assert_eq(memcmp(raw.dims, gz.dims, sizeof raw.dims), 0);
  cr_assert_eq(memcmp(raw.data, gz.data, (size_t)gz.count), 0);
  kiln_idx_free(&gz);
  kiln_idx_free(&raw);
}

Test(idx, multi_member_gzip_is_one_stream, .init = mk_tmpdir, .fini = rm_tmpdir) {
  /* `cat a.gz b.gz` is a valid gzip file holding a then b. */
  uint32_t dims[2] = {5, 4};
  write_idx(tpath("x"), 0x08, 2, dims, 20);
  size_t n;
  unsigned char *b = read_file(tpath("x"), &n);
  write_file(tpath("head"), b, 13);
  write_file(tpath("tail"), b + 13, n - 13);
  gzip_to(tpath("head"), tpath("head.gz"));
  gzip_to(tpath("tail"), tpath("tail.gz"));
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cat '%s' '%s' > '%s'", tpath("head.gz"), tpath("tail.gz"),
           tpath("x.gz"));
  cr_assert_eq(sh(cmd), 0);
  kiln_idx x;
  OK(kiln_idx_read(tpath("x.gz"), &x));
  cr_assert_eq(x.count, 20);
  cr_assert_eq(memcmp(x.data, b + 12, 20), 0);
  kiln_idx_free(&x);
  free(b);
}

/* ---- corrupt files -------------------------------------------------------- */

Test(idx, wrong_magic, .init = mk_tmpdir, .fini = rm_tmpdir) {
  unsigned char b[12] = {0x12, 0x34, 0x08, 0x01, 0, 0, 0, 4, 1, 2, 3, 4};
  write_file(tpath("magic"), b, sizeof b);
  expect_idx_error(tpath("magic"), KILN_CORRUPT_DATA, "not an IDX file", "0x12340801");
  /* A gzip file compressed twice shows gzip's magic after one inflation. */
  gzip_to(tu_data_path("mnist/t10k-labels-idx1-ubyte.gz"), tpath("twice.gz"));
  expect_idx_error(tpath("twice.gz"), KILN_CORRUPT_DATA, "not an IDX file", "0x1f8b08");
}

Test(idx, wrong_type_byte, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t dims[1] = {4};
  write_idx(tpath("float"), 0x0D, 1, dims, 16);
  expect_idx_error(tpath("float"), KILN_CORRUPT_DATA, "0x0d", "only 0x08");
}

Test(idx, bad_rank, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t dims[1] = {4};
  write_idx(tpath("rank0"), 0x08, 0, dims, 0);
  expect_idx_error(tpath("rank0"), KILN_CORRUPT_DATA, "rank 0", NULL);
  unsigned char b[8] = {0, 0, 8, 9, 0, 0, 0, 1};
  write_file(tpath("rank9"), b, sizeof b);
  expect_idx_error(tpath("rank9"), KILN_CORRUPT_DATA, "rank 9", NULL);
}

Test(idx, zero_dim, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t dims[3] = {3, 0, 2};
  write_idx(tpath("zero"), 0x08, 3, dims, 0);
  expect_idx_error(tpath("zero"), KILN_CORRUPT_DATA, "dimension 2 of 3 is 0", NULL);
}

Test(idx, huge_dims_do_not_overflow, .init = mk_tmpdir, .fini = rm_tmpdir) {
  /* 0xffffffff^3 overflows 64 bits; the reader must say so, not wrap. */
  uint32_t dims[3] = {0xffffffffu, 0xffffffffu, 0xffffffffu};
  write_idx(tpath("huge"), 0x08, 3, dims, 8);
  expect_idx_error(tpath("huge"), KILN_CORRUPT_DATA, "multiply to more than", NULL);
  /* Large but representable: a truncation, found without allocating it all. */
  uint32_t big[2] = {0xffffffffu, 0xffffu};
  write_idx(tpath("big"), 0x08, 2, big, 8);
  gzip_to(tpath("big"), tpath("big.gz"));
  expect_idx_error(tpath("big"), KILN_CORRUPT_DATA, "truncated", "file holds 8");
  expect_idx_error(tpath("big.gz"), KILN_CORRUPT_DATA, "truncated", "file holds 8");
}

Test(idx, truncated_payload, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t dims[3] = {10, 28, 28};
  write_idx(tpath("t10k-images-idx3-ubyte"), 0x08, 3, dims, 4096);
  expect_idx_error(tpath("t10k-images-idx3-ubyte"), KILN_CORRUPT_DATA,
                   "truncated: header declares 10x28x28 = 7840 bytes", "file holds 4096");
  gzip_to(tpath("t10k-images-idx3-ubyte"), tpath("t10k-images-idx3-ubyte.gz"));
  expect_idx_error(tpath("t10k-images-idx3-ubyte.gz"), KILN_CORRUPT_DATA,
                   "truncated: header declares 10x28x28 = 7840 bytes", "file holds 4096");
  /* A header cut short. */
  unsigned char b[6] = {0, 0, 8, 2, 0, 0};
  write_file(tpath("short"), b, sizeof b);
  expect_idx_error(tpath("short"), KILN_CORRUPT_DATA, "truncated header", NULL);
}

Test(idx, trailing_bytes, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t dims[2] = {3, 4};
  write_idx(tpath("trail"), 0x08, 2, dims, 14);
  expect_idx_error(tpath("trail"), KILN_CORRUPT_DATA, "trailing bytes", "3x4 = 12 bytes, file holds 14");
  gzip_to(tpath("trail"), tpath("trail.gz"));
  expect_idx_error(tpath("trail.gz"), KILN_CORRUPT_DATA, "trailing bytes",
                   "3x4 = 12 bytes, file holds 14");
  /* Garbage after a valid gzip stream. */
  write_idx(tpath("ok"), 0x08, 2, dims, 12);
  gzip_to(tpath("ok"), tpath("ok.gz"));
  size_t n;
  unsigned char *b = read_file(tpath("ok.gz"), &n);
  unsigned char *c = malloc(n + 3);
  memcpy(c, b, n);
  memcpy(c + n, "xyz", 3);
  write_file(tpath("junk.gz"), c, n + 3);
  expect_idx_error(tpath("junk.gz"), KILN_CORRUPT_DATA, "corrupt gzip stream", "garbage");
  free(b);
  free(c);
}

Test(idx, truncated_gzip, .init = mk_tmpdir, .fini = rm_tmpdir) {
  size_t n;
  unsigned char *b = read_file(tu_data_path("mnist/t10k-labels-idx1-ubyte.gz"), &n);
  write_file(tpath("cut.gz"), b, n / 2);
  expect_idx_error(tpath("cut.gz"), KILN_CORRUPT_DATA, "corrupt gzip stream",
                   "unexpected end of file");
  /* Only the 8-byte trailer (CRC and size) missing: still refused. */
  write_file(tpath("notrailer.gz"), b, n - 8);
  expect_idx_error(tpath("notrailer.gz"), KILN_CORRUPT_DATA, "corrupt gzip stream", NULL);
  /* A flipped CRC byte. */
  b[n - 8] ^= 0xff;
  write_file(tpath("crc.gz"), b, n);
  expect_idx_error(tpath("crc.gz"), KILN_CORRUPT_DATA, "corrupt gzip stream", "check");
  free(b);
}

Test(idx, garbage_gzip, .init = mk_tmpdir, .fini = rm_tmpdir) {
  unsigned char b[64] = {0x1f, 0x8b, 0x08, 0x00};
  for (int i = 10; i < 64; i++) b[i] = (unsigned char)(i * 37 + 11);
  write_file(tpath("garbage.gz"), b, sizeof b);
  expect_idx_error(tpath("garbage.gz"), KILN_CORRUPT_DATA, "corrupt gzip stream: ", NULL);
}

Test(idx, empty_and_missing_files, .init = mk_tmpdir, .fini = rm_tmpdir) {
  write_file(tpath("empty"), "", 0);
  expect_idx_error(tpath("empty"), KILN_CORRUPT_DATA, "empty file", NULL);
  expect_idx_error(tpath("nope"), KILN_NOT_FOUND, "cannot open", NULL);
  expect_idx_error(tmpdir, KILN_IO_ERROR, "directory", NULL);
  kiln_idx x;
  cr_assert_eq(kiln_idx_read(NULL, &x), KILN_INVALID_ARGUMENT);
  cr_assert_eq(kiln_idx_read(tpath("empty"), NULL), KILN_INVALID_ARGUMENT);
}

/* ---- the MNIST loader's refusals ------------------------------------------ */

Test(mnist, missing_files_say_how_to_get_them, .init = mk_tmpdir, .fini = rm_tmpdir) {
  kiln_mnist m;
  kiln_status st = kiln_mnist_load(tmpdir, 1, 0, &m);
  const char *msg = kiln_last_error();
  cr_assert_eq(st, KILN_NOT_FOUND, "%s", msg);
  cr_assert(strstr(msg, tpath("train-images-idx3-ubyte")), "names the path tried: %s", msg);
  cr_assert(strstr(msg, "kiln fetch mnist"), "%s", msg);
  cr_assert(strstr(msg, "KILN_DATA"), "%s", msg);
  cr_assert(strstr(msg, "--data"), "%s", msg);
  cr_assert_null(m.images);
}

Test(mnist, count_mismatch_refused, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t idims[3] = {3, 2, 2}, ldims[1] = {2};
  write_idx(tpath("t10k-images-idx3-ubyte"), 0x08, 3, idims, 12);
  write_idx(tpath("t10k-labels-idx1-ubyte"), 0x08, 1, ldims, 2);
  kiln_mnist m;
  kiln_status st = kiln_mnist_load(tmpdir, 0, 0, &m);
  const char *msg = kiln_last_error();
  cr_assert_eq(st, KILN_CORRUPT_DATA, "%s", msg);
  cr_assert(strstr(msg, "3 images") && strstr(msg, "2 labels"), "%s", msg);
  cr_assert_null(m.images);
  cr_assert_null(m.labels);
}

Test(mnist, wrong_ranks_and_labels_refused, .init = mk_tmpdir, .fini = rm_tmpdir) {
  uint32_t idims[3] = {3, 2, 2}, flat[2] = {3, 4}, ldims[1] = {3};
  kiln_mnist m;
  /* Images of rank 2. */
  write_idx(tpath("t10k-images-idx3-ubyte"), 0x08, 2, flat, 12);
  write_idx(tpath("t10k-labels-idx1-ubyte"), 0x08, 1, ldims, 3);
  cr_assert_eq(kiln_mnist_load(tmpdir, 0, 0, &m), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), "rank 3"), "%s", kiln_last_error());
  /* Labels of rank 2 (and compressed: the .gz name is found too). */
  write_idx(tpath("t10k-images-idx3-ubyte"), 0x08, 3, idims, 12);
  unlink(tpath("t10k-labels-idx1-ubyte"));
  write_idx(tpath("labels"), 0x08, 2, flat, 12);
  gzip_to(tpath("labels"), tpath("t10k-labels-idx1-ubyte.gz"));
  cr_assert_eq(kiln_mnist_load(tmpdir, 0, 0, &m), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), "rank 1"), "%s", kiln_last_error());
  cr_assert(strstr(kiln_last_error(), "t10k-labels-idx1-ubyte.gz"), "%s", kiln_last_error());
  /* A label of 10. */
  unlink(tpath("t10k-labels-idx1-ubyte.gz"));
  unsigned char lab[11] = {0, 0, 8, 1, 0, 0, 0, 3, 4, 10, 2};
  write_file(tpath("t10k-labels-idx1-ubyte"), lab, sizeof lab);
  cr_assert_eq(kiln_mnist_load(tmpdir, 0, 0, &m), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), "label 1 is 10"), "%s", kiln_last_error());
  /* ...which --limit 1 never reads. */
  OK(kiln_mnist_load(tmpdir, 0, 1, &m));
  cr_assert_eq(m.n, 1);
  cr_assert_eq(m.labels[0], 4);
  cr_assert_eq(m.rows, 2);
  kiln_mnist_free(&m);
}

/* ---- the data directory --------------------------------------------------- */

Test(datadir, resolution_order) {
  char buf[512];
  setenv("KILN_DATA", "/from/env", 1);
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  setenv("HOME", "/home/u", 1);
  OK(kiln_data_dir("/explicit", buf, sizeof buf));
  cr_assert_str_eq(buf, "/explicit");
  OK(kiln_data_dir(NULL, buf, sizeof buf));
  cr_assert_str_eq(buf, "/from/env");
  setenv("KILN_DATA", "", 1);
  OK(kiln_data_dir(NULL, buf, sizeof buf));
  cr_assert_str_eq(buf, "/xdg/kiln");
  unsetenv("KILN_DATA");
  setenv("XDG_CACHE_HOME", "relative/cache", 1); /* XDG: relative paths are ignored */
  OK(kiln_data_dir(NULL, buf, sizeof buf));
  cr_assert_str_eq(buf, "/home/u/.cache/kiln");
  unsetenv("XDG_CACHE_HOME");
  OK(kiln_data_dir("", buf, sizeof buf));
  cr_assert_str_eq(buf, "/home/u/.cache/kiln");
  /* Too small a buffer is an error, not a truncated path. */
  char small[8];
  cr_assert_eq(kiln_data_dir("/a/long/path", small, sizeof small), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "/a/long/path"), "%s", kiln_last_error());
  cr_assert_eq(kiln_data_dir(NULL, NULL, 10), KILN_INVALID_ARGUMENT);
}

/* ---- tools/fetch-data and `kiln fetch`, offline ---------------------------- */

static int have_curl(void) { return sh("command -v curl >/dev/null 2>&1") == 0; }

Test(fetch, present_valid_files_are_skipped) {
  /* The shared data directory is complete, so nothing is downloaded (and
   * nothing written: it may be read-only). */
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "KILN_MNIST_MIRRORS=file:///nonexistent KILN_FETCH_NPM=0 "
           "sh '%s/tools/fetch-data' --data '%s' mnist 2>&1 | grep -c 'present and valid' "
           "| grep -qx 4",
           KILN_SOURCE_DIR, tu_data_path(""));
  cr_assert_eq(sh(cmd), 0, "%s", cmd);
}

Test(fetch, downloads_verifies_and_renames, .init = mk_tmpdir, .fini = rm_tmpdir) {
  if (!have_curl()) cr_skip_test("curl is not installed (needed for file:// mirrors)");
  char cmd[2048];
  /* The first mirror is missing, the second serves corrupt files, the third
   * the real ones: each file ends up valid, and no temporary file remains. */
  snprintf(cmd, sizeof cmd,
           "mkdir -p '%s/bad' && for f in '%s'/*.gz; do head -c 1000 \"$f\" > '%s/bad/'$(basename "
           "\"$f\"); done",
           tmpdir, tu_data_path("mnist"), tmpdir);
  cr_assert_eq(sh(cmd), 0, "%s", cmd);
  snprintf(cmd, sizeof cmd,
           "KILN_MNIST_MIRRORS='file:///nonexistent/ file://%s/bad file://%s' KILN_FETCH_NPM=0 "
           "'%s/bin/kiln' fetch mnist --data '%s/data' >/dev/null 2>&1",
           tmpdir, tu_data_path("mnist"), KILN_BUILD_DIR, tmpdir);
  cr_assert_eq(sh(cmd), 0, "%s", cmd);
  snprintf(cmd, sizeof cmd, "cd '%s/data' && sha256sum --quiet -c --ignore-missing '%s'", tmpdir,
           tu_data_path("SHA256SUMS"));
  cr_assert_eq(sh(cmd), 0, "fetched files differ from SHA256SUMS");
  snprintf(cmd, sizeof cmd, "ls '%s/data/mnist' | grep -v 'ubyte.gz$'", tmpdir);
  cr_assert_neq(sh(cmd), 0, "stray files left in the data directory");
  char dir[512];
  snprintf(dir, sizeof dir, "%s/data/mnist", tmpdir);
  kiln_mnist m;
  OK(kiln_mnist_load(dir, 0, 0, &m));
  cr_assert_eq(m.n, 10000);
  kiln_mnist_free(&m);
}

Test(fetch, failure_names_what_is_missing, .init = mk_tmpdir, .fini = rm_tmpdir) {
  if (!have_curl()) cr_skip_test("curl is not installed (needed for file:// mirrors)");
  char cmd[2048], out[8192] = "";
  snprintf(cmd, sizeof cmd,
           "KILN_MNIST_MIRRORS=file:///nonexistent/ KILN_FETCH_NPM=0 "
           "sh '%s/tools/fetch-data' --data '%s/data' mnist > '%s/log' 2>&1",
           KILN_SOURCE_DIR, tmpdir, tmpdir);
  cr_assert_eq(sh(cmd), 1, "%s", cmd);
  FILE *f = fopen(tpath("log"), "r");
  cr_assert_not_null(f);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  fclose(f);
  cr_assert(strstr(out, "could not fetch MNIST file(s): train-images-idx3-ubyte"), "%s", out);
  cr_assert(strstr(out, "t10k-labels-idx1-ubyte"), "%s", out);
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s/data/mnist')\"", tmpdir);
  cr_assert_eq(sh(cmd), 0, "a failed fetch leaves no files behind");
}

Test(fetch, usage_errors) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' fetch cifar >/dev/null 2>&1", KILN_BUILD_DIR);
  cr_assert_eq(sh(cmd), 2);
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' fetch --data >/dev/null 2>&1", KILN_BUILD_DIR);
  cr_assert_eq(sh(cmd), 2);
  snprintf(cmd, sizeof cmd, "'%s/bin/kiln' fetch --help | grep -q 'usage: kiln fetch'",
           KILN_BUILD_DIR);
  cr_assert_eq(sh(cmd), 0);
  snprintf(cmd, sizeof cmd, "sh '%s/tools/fetch-data' --bogus >/dev/null 2>&1", KILN_SOURCE_DIR);
  cr_assert_eq(sh(cmd), 2);
}
