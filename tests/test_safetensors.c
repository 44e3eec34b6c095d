/*
 * test_safetensors.c - safetensors files: round trips, the exact byte layout,
 * every kind of corruption the reader must refuse, atomic saves, and
 * interoperation with Python (json + struct, and torch.frombuffer when
 * python3 can import torch) in both directions.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/data.h"
#include "kiln/kiln.h"
#include "testutil.h"

#define OK(call) cr_assert_eq((call), KILN_OK, "%s: %s", #call, kiln_last_error())

static char tmpdir[256];

static void mk_tmpdir(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln-test-st-XXXXXX");
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tmpdir(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "chmod -R u+w '%s'; rm -rf '%s'", tmpdir, tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

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

/* A safetensors file from a header string (padded to 8 with spaces unless
 * hlen_override) and a data section. */
static void write_st(const char *path, const char *header, const void *data, size_t ndata,
                     uint64_t hlen_override) {
  size_t h = strlen(header), padded = (h + 7) / 8 * 8;
  size_t n = 8 + padded + ndata;
  unsigned char *b = malloc(n);
  cr_assert_not_null(b);
  uint64_t hl = hlen_override ? hlen_override : padded;
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hl >> (8 * i));
  memcpy(b + 8, header, h);
  memset(b + 8 + h, ' ', padded - h);
  if (ndata) memcpy(b + 8 + padded, data, ndata);
  write_file(path, b, n);
  free(b);
}

/* Expects opening path to fail with `want`, with a message naming the file
 * and holding `frag`. */
static void expect_open_error(const char *path, kiln_status want, const char *frag) {
  kiln_safetensors *st = (kiln_safetensors *)1;
  kiln_status rc = kiln_safetensors_open(path, &st);
  const char *msg = kiln_last_error();
  cr_assert_eq(rc, want, "%s: got %s (%s), want %s", path, kiln_status_name(rc), msg,
               kiln_status_name(want));
  cr_assert_null(st, "a failed open sets *out to NULL");
  cr_assert(strstr(msg, path), "the message must name the file: '%s'", msg);
  cr_assert(strstr(msg, frag), "'%s' is not in the message '%s'", frag, msg);
}

/* ---- round trip and layout ------------------------------------------------ */

Test(safetensors, round_trip_with_metadata, .init = mk_tmpdir, .fini = rm_tmpdir) {
  float w[2][3] = {{1.5f, -2.0f, 3.25f}, {0.0f, 1e-30f, -7.0f}};
  int32_t idx[4] = {0, -1, 2147483647, -2147483647 - 1};
  uint8_t img[2][2][2] = {{{0, 1}, {2, 255}}, {{9, 8}, {7, 6}}};
  uint16_t half[3] = {0x3c00, 0xc000, 0x7bff}; /* f16 1, -2, 65504 */
  uint16_t bf = 0x3f80;                        /* bf16 1.0, a scalar */
  kiln_st_tensor t[6] = {
      {.name = "conv1.weight", .dtype = KILN_F32, .ndim = 2, .shape = {2, 3}, .data = w, .nbytes = 24},
      {.name = "idx", .dtype = KILN_I32, .ndim = 1, .shape = {4}, .data = idx, .nbytes = 16},
      {.name = "img", .dtype = KILN_U8, .ndim = 3, .shape = {2, 2, 2}, .data = img, .nbytes = 8},
      {.name = "half", .dtype = KILN_F16, .ndim = 1, .shape = {3}, .data = half, .nbytes = 6},
      {.name = "scalar \"bf16\"\n", .dtype = KILN_BF16, .ndim = 0, .data = &bf, .nbytes = 2},
      {.name = "empty", .dtype = KILN_F32, .ndim = 2, .shape = {0, 5}, .data = NULL, .nbytes = 0},
  };
  const char *keys[3] = {"format", "epoch", "notes \\ \"quoted\""};
  const char *vals[3] = {"pt", "12", "tab\there, ünïcødé, 🔥"};
  OK(kiln_safetensors_save(tpath("m.safetensors"), t, 6, keys, vals, 3));

  kiln_safetensors *st;
  OK(kiln_safetensors_open(tpath("m.safetensors"), &st));
  cr_assert_eq(kiln_safetensors_count(st), 6);
  for (size_t i = 0; i < 6; i++) {
    kiln_st_tensor e;
    OK(kiln_safetensors_get(st, i, &e));
    cr_assert_str_eq(e.name, t[i].name, "entries keep the order they were saved in");
    cr_assert_eq(e.dtype, t[i].dtype, "%s", e.name);
    cr_assert_eq(e.ndim, t[i].ndim, "%s", e.name);
    for (int d = 0; d < e.ndim; d++) cr_assert_eq(e.shape[d], t[i].shape[d], "%s", e.name);
    cr_assert_eq(e.nbytes, t[i].nbytes, "%s", e.name);
    if (e.nbytes) cr_assert_eq(memcmp(e.data, t[i].data, e.nbytes), 0, "%s", e.name);
  }
  kiln_st_tensor e;
  OK(kiln_safetensors_find(st, "img", &e));
  cr_assert_eq(((const uint8_t *)e.data)[3], 255);
  OK(kiln_safetensors_find(st, "scalar \"bf16\"\n", &e));
  cr_assert_eq(e.ndim, 0);
  cr_assert_eq(kiln_safetensors_find(st, "conv2.weight", &e), KILN_NOT_FOUND);
  cr_assert(strstr(kiln_last_error(), "conv2.weight") &&
                strstr(kiln_last_error(), tpath("m.safetensors")),
            "%s", kiln_last_error());
  cr_assert_eq(kiln_safetensors_get(st, 6, &e), KILN_INVALID_ARGUMENT);
  for (int i = 0; i < 3; i++) {
    const char *v = kiln_safetensors_meta(st, keys[i]);
    cr_assert_not_null(v, "%s", keys[i]);
    cr_assert_str_eq(v, vals[i]);
  }
  cr_assert_null(kiln_safetensors_meta(st, "missing"));
  kiln_safetensors_close(st);

  /* No tensors and no metadata is a valid (tiny) file too. */
  OK(kiln_safetensors_save(tpath("empty.safetensors"), NULL, 0, NULL, NULL, 0));
  OK(kiln_safetensors_open(tpath("empty.safetensors"), &st));
  cr_assert_eq(kiln_safetensors_count(st), 0);
  kiln_safetensors_close(st);
}

Test(safetensors, layout_is_byte_exact, .init = mk_tmpdir, .fini = rm_tmpdir) {
  float a[2] = {1.0f, 2.0f};
  uint8_t u[1] = {0xab};
  kiln_st_tensor t[2] = {
      {.name = "a", .dtype = KILN_F32, .ndim = 1, .shape = {2}, .data = a, .nbytes = 8},
      {.name = "u", .dtype = KILN_U8, .ndim = 2, .shape = {1, 1}, .data = u, .nbytes = 1},
  };
  const char *k[1] = {"k"}, *v[1] = {"v"};
  OK(kiln_safetensors_save(tpath("a.safetensors"), t, 2, k, v, 1));

  const char *header =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"u\":{\"dtype\":\"U8\",\"shape\":[1,1],\"data_offsets\":[8,9]},"
      "\"__metadata__\":{\"k\":\"v\"}}";
  size_t h = strlen(header), padded = (h + 7) / 8 * 8;
  unsigned char want[512];
  size_t n = 0;
  for (int i = 0; i < 8; i++) want[n++] = (unsigned char)((uint64_t)padded >> (8 * i));
  memcpy(want + n, header, h);
  n += h;
  while (n < 8 + padded) want[n++] = ' ';
  const unsigned char data[9] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40, 0xab};
  memcpy(want + n, data, 9);
  n += 9;

  size_t got_n;
  unsigned char *got = read_file(tpath("a.safetensors"), &got_n);
  cr_assert_eq(got_n, n, "file is %zu bytes, want %zu", got_n, n);
  cr_assert_eq(memcmp(got, want, n), 0, "file differs from the spec's layout:\n%.*s", (int)(got_n - 8),
               (const char *)got + 8);
  free(got);
}

/* ---- corruption ----------------------------------------------------------- */

static const float four_floats[4] = {1, 2, 3, 4};

Test(safetensors, truncated_file, .init = mk_tmpdir, .fini = rm_tmpdir) {
  kiln_st_tensor t = {.name = "w", .dtype = KILN_F32, .ndim = 1, .shape = {4}, .data = four_floats,
                      .nbytes = 16};
  OK(kiln_safetensors_save(tpath("full"), &t, 1, NULL, NULL, 0));
  size_t n;
  unsigned char *b = read_file(tpath("full"), &n);
  write_file(tpath("cut-data"), b, n - 4);
  expect_open_error(tpath("cut-data"), KILN_CORRUPT_DATA, "run past the end of the data section");
  write_file(tpath("cut-header"), b, 20);
  expect_open_error(tpath("cut-header"), KILN_CORRUPT_DATA, "larger than the rest of the file");
  write_file(tpath("cut-length"), b, 5);
  expect_open_error(tpath("cut-length"), KILN_CORRUPT_DATA, "8-byte header length");
  write_file(tpath("zero"), b, 0);
  expect_open_error(tpath("zero"), KILN_CORRUPT_DATA, "file is 0 bytes");
  free(b);
  expect_open_error(tpath("missing"), KILN_NOT_FOUND, "cannot open");
}

Test(safetensors, header_length_too_big, .init = mk_tmpdir, .fini = rm_tmpdir) {
  write_st(tpath("big"), "{}", NULL, 0, 1000000);
  expect_open_error(tpath("big"), KILN_CORRUPT_DATA, "header length 1000000 is larger");
  write_st(tpath("huge"), "{}", NULL, 0, UINT64_MAX);
  expect_open_error(tpath("huge"), KILN_CORRUPT_DATA, "is larger than the rest of the file");
}

Test(safetensors, bad_json, .init = mk_tmpdir, .fini = rm_tmpdir) {
  static const struct {
    const char *header, *frag;
  } cases[] = {
      {"{\"w\":{\"dtype\":\"F32\",}}", "header JSON: at byte 20"},
      {"{\"w\" 1}", "expected ':'"},
      {"{\"w\":{\"dtype\":\"F32}}", "unterminated string"},
      {"[1,2]", "must be a JSON object"},
      {"{} x", "unexpected data after the header object"},
      {"{\"w\":tru}", "unexpected token"},
      {"{\"w\":{\"dtype\":\"F\\q32\"}}", "unknown escape"},
      {"{\"w\":{\"dtype\":\"F\x01\"}}", "control character"},
      {"{\"w\":\"\xff\"}", "invalid UTF-8"},
      {"{\"w\":{\"shape\":[01]}}", "expected ',' or ']'"},
      {"{\"w\":\"\\ud800x\"}", "surrogate"},
      {"{\"w\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
       "nesting too deep"},
      {"{\"w\":{}", "expected ',' or '}'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "bad%zu", i);
    write_st(tpath(name), cases[i].header, NULL, 0, 0);
    expect_open_error(tpath(name), KILN_CORRUPT_DATA, cases[i].frag);
  }
}

Test(safetensors, bad_entries, .init = mk_tmpdir, .fini = rm_tmpdir) {
  static const struct {
    const char *header;
    size_t ndata;
    kiln_status want;
    const char *frag;
  } cases[] = {
      /* unknown dtype; a real safetensors dtype kiln cannot hold */
      {"{\"w\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, KILN_CORRUPT_DATA,
       "tensor 'w': unknown dtype \"F33\""},
      {"{\"w\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16, KILN_UNSUPPORTED,
       "dtype F64 is valid safetensors"},
      /* offsets out of range */
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, KILN_CORRUPT_DATA,
       "data_offsets [0, 16] run past the end of the data section (8 bytes)"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, KILN_CORRUPT_DATA,
       "end before they begin"},
      /* overlapping */
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, KILN_CORRUPT_DATA, "overlap"},
      /* a gap, and bytes after the last tensor */
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
       12, KILN_CORRUPT_DATA, "bytes [4, 8) of the data section belong to no tensor"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12, KILN_CORRUPT_DATA,
       "holds 12 bytes but its tensors cover only 4"},
      /* wrong size for the shape */
      {"{\"conv1.weight\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
       KILN_CORRUPT_DATA,
       "tensor 'conv1.weight': data_offsets [0, 8] hold 8 bytes but F32 [3] needs 12"},
      /* duplicate names */
      {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
       "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
       2, KILN_CORRUPT_DATA, "tensor name 'a' appears twice"},
      /* bad shapes and fields */
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1, KILN_CORRUPT_DATA,
       "shape[0] is not a non-negative integer"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1, KILN_CORRUPT_DATA,
       "shape[0] is not a non-negative integer"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
       KILN_CORRUPT_DATA, "shape has 9 entries"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 1, KILN_CORRUPT_DATA,
       "data_offsets has 3 entries"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, KILN_CORRUPT_DATA,
       "missing field 'data_offsets'"},
      {"{\"w\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
       KILN_CORRUPT_DATA, "field 'dtype' appears twice"},
      {"{\"w\":{\"dtype\":\"U8\",\"shape\":[99999999999,99999999999,99999999999],"
       "\"data_offsets\":[0,1]}}",
       1, KILN_CORRUPT_DATA, "too many elements"},
      {"{\"w\":[1]}", 0, KILN_CORRUPT_DATA, "its entry is not an object"},
      /* metadata */
      {"{\"__metadata__\":{\"k\":1}}", 0, KILN_CORRUPT_DATA, "value of 'k' is not a string"},
      {"{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, KILN_CORRUPT_DATA,
       "key 'k' appears twice"},
      {"{\"__metadata__\":[]}", 0, KILN_CORRUPT_DATA, "__metadata__ is not an object"},
  };
  unsigned char data[16] = {0};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "entry%zu.safetensors", i);
    write_st(tpath(name), cases[i].header, data, cases[i].ndata, 0);
    expect_open_error(tpath(name), cases[i].want, cases[i].frag);
  }
  /* The reference reader ignores unknown fields; so does kiln. */
  write_st(tpath("extra"),
           "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":{\"y\":[null,true,"
           "-1.5e3]}}}",
           data, 2, 0);
  kiln_safetensors *st;
  OK(kiln_safetensors_open(tpath("extra"), &st));
  kiln_safetensors_close(st);
}

Test(safetensors, save_refuses_bad_arguments, .init = mk_tmpdir, .fini = rm_tmpdir) {
  kiln_st_tensor t[2] = {
      {.name = "w", .dtype = KILN_F32, .ndim = 1, .shape = {4}, .data = four_floats, .nbytes = 16},
      {.name = "w", .dtype = KILN_F32, .ndim = 1, .shape = {4}, .data = four_floats, .nbytes = 16},
  };
  cr_assert_eq(kiln_safetensors_save(tpath("x"), t, 2, NULL, NULL, 0), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "'w' is used twice"), "%s", kiln_last_error());
  t[1].name = "v";
  t[1].nbytes = 12;
  cr_assert_eq(kiln_safetensors_save(tpath("x"), t, 2, NULL, NULL, 0), KILN_INVALID_ARGUMENT);
  cr_assert(strstr(kiln_last_error(), "nbytes is 12 but F32 [4] needs 16"), "%s",
            kiln_last_error());
  t[1].nbytes = 16;
  t[1].dtype = (kiln_dtype)77;
  cr_assert_eq(kiln_safetensors_save(tpath("x"), t, 2, NULL, NULL, 0), KILN_INVALID_ARGUMENT);
  t[1].dtype = KILN_F32;
  t[1].name = "__metadata__";
  cr_assert_eq(kiln_safetensors_save(tpath("x"), t, 2, NULL, NULL, 0), KILN_INVALID_ARGUMENT);
  const char *k[2] = {"a", "a"}, *v[2] = {"1", "2"};
  cr_assert_eq(kiln_safetensors_save(tpath("x"), t, 1, k, v, 2), KILN_INVALID_ARGUMENT);
  cr_assert(access(tpath("x"), F_OK) != 0, "a refused save writes nothing");
}

/* ---- atomic saves ------------------------------------------------------------ */

static void save_v(const char *path, float scale, kiln_status want) {
  float w[4] = {scale, 2 * scale, 3 * scale, 4 * scale};
  kiln_st_tensor t = {.name = "w", .dtype = KILN_F32, .ndim = 1, .shape = {4}, .data = w,
                      .nbytes = 16};
  const char *k[1] = {"version"}, *v[1] = {scale == 1 ? "old" : "new"};
  kiln_status rc = kiln_safetensors_save(path, &t, 1, k, v, 1);
  cr_assert_eq(rc, want, "save: got %s (%s)", kiln_status_name(rc), kiln_last_error());
}

static void assert_no_temp_files(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "ls -A '%s' | grep -q 'tmp-'", tmpdir);
  cr_assert_neq(sh(cmd), 0, "a temporary file was left in %s", tmpdir);
}

Test(safetensors, failed_save_leaves_the_old_file, .init = mk_tmpdir, .fini = rm_tmpdir) {
  const char *path = tpath("ckpt.safetensors");
  save_v(path, 1, KILN_OK);
  size_t n0;
  unsigned char *before = read_file(path, &n0);

  /* 1. The temporary file cannot be created: a directory sits at its name
   *    (root ignores permissions, so a read-only directory would not do). */
  char blocker[600];
  snprintf(blocker, sizeof blocker, "%s.tmp-%ld", path, (long)getpid());
  cr_assert_eq(mkdir(blocker, 0700), 0);
  save_v(path, 2, KILN_IO_ERROR);
  cr_assert(strstr(kiln_last_error(), "temporary file"), "%s", kiln_last_error());
  cr_assert(strstr(kiln_last_error(), path), "%s", kiln_last_error());
  rmdir(blocker);

  /* 2. Writing fails part way: the file size limit stops the data. */
  struct rlimit old, lim;
  cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
  lim = old;
  lim.rlim_cur = 64;
  signal(SIGXFSZ, SIG_IGN);
  cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
  save_v(path, 3, KILN_IO_ERROR);
  cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
  cr_assert(strstr(kiln_last_error(), "write failed"), "%s", kiln_last_error());

  size_t n1;
  unsigned char *after = read_file(path, &n1);
  cr_assert_eq(n1, n0);
  cr_assert_eq(memcmp(before, after, n0), 0, "the old file changed");
  assert_no_temp_files();
  free(after);

  /* 3. A successful save replaces it whole. */
  save_v(path, 2, KILN_OK);
  kiln_safetensors *st;
  OK(kiln_safetensors_open(path, &st));
  cr_assert_str_eq(kiln_safetensors_meta(st, "version"), "new");
  kiln_st_tensor e;
  OK(kiln_safetensors_find(st, "w", &e));
  cr_assert_eq(((const float *)e.data)[3], 8.0f);
  kiln_safetensors_close(st);
  assert_no_temp_files();
  free(before);
}

Test(safetensors, save_keeps_the_file_mode, .init = mk_tmpdir, .fini = rm_tmpdir) {
  const char *path = tpath("ckpt.safetensors");
  save_v(path, 1, KILN_OK);
  cr_assert_eq(chmod(path, 0600), 0);
  save_v(path, 2, KILN_OK);
  struct stat sb;
  cr_assert_eq(stat(path, &sb), 0);
  cr_assert_eq(sb.st_mode & 0777, 0600);
}

/* ---- Python interop -------------------------------------------------------- */

/* A python3 that runs, preferring one that can import torch; NULL if none. */
static const char *find_python(int *has_torch) {
  static const char *const cands[] = {"/usr/bin/python3", "python3"};
  for (size_t i = 0; i < 2; i++) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", cands[i]);
    if (sh(cmd) == 0) {
      *has_torch = 1;
      return cands[i];
    }
  }
  *has_torch = 0;
  for (size_t i = 0; i < 2; i++) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s -c 'import json, struct' >/dev/null 2>&1", cands[i]);
    if (sh(cmd) == 0) return cands[i];
  }
  return NULL;
}

/* Checks a kiln-written file the way the reference reader does, and its
 * values through struct and (if present) torch.frombuffer. Then writes
 * py.safetensors the way safetensors.torch.save_file lays files out
 * (metadata first, tensors sorted by alignment then name). */
static const char *py_script =
    "import json, struct, sys\n"
    "path, out = sys.argv[1], sys.argv[2]\n"
    "b = open(path, 'rb').read()\n"
    "n = struct.unpack('<Q', b[:8])[0]\n"
    "assert n % 8 == 0, 'header not padded to 8'\n"
    "raw = b[8:8 + n]\n"
    "assert raw[:1] == b'{', 'header does not start with {'\n"
    "h = json.loads(raw.decode('utf-8'))\n"
    "assert raw.decode('utf-8').rstrip(' ') == json.dumps(h, separators=(',', ':'), "
    "ensure_ascii=False), 'header is not compact JSON padded with spaces'\n"
    "meta = h.pop('__metadata__', {})\n"
    "assert meta == {'framework': 'kiln', 'note': 'a \"q\" \\\\ é'}, meta\n"
    "size = {'F32': 4, 'I32': 4, 'U8': 1, 'F16': 2, 'BF16': 2}\n"
    "fmt = {'F32': 'f', 'I32': 'i', 'U8': 'B', 'F16': 'e'}\n"
    "data = b[8 + n:]\n"
    "pos = 0\n"
    "for name, e in sorted(h.items(), key=lambda kv: kv[1]['data_offsets']):\n"
    "    s, t = e['data_offsets']\n"
    "    assert s == pos, (name, 'gap or overlap')\n"
    "    numel = 1\n"
    "    for d in e['shape']: numel *= d\n"
    "    assert t - s == numel * size[e['dtype']], name\n"
    "    pos = t\n"
    "assert pos == len(data), 'data section not covered exactly'\n"
    "def values(name):\n"
    "    e = h[name]; s, t = e['data_offsets']\n"
    "    return list(struct.unpack('<%d%s' % ((t - s) // size[e['dtype']], fmt[e['dtype']]), "
    "data[s:t]))\n"
    "assert values('fc.weight') == [0.5 * i - 3 for i in range(12)], values('fc.weight')\n"
    "assert h['fc.weight']['shape'] == [3, 4]\n"
    "assert values('labels') == [7, -2, 100000], values('labels')\n"
    "assert values('pixels') == [0, 128, 255]\n"
    "assert values('half') == [1.0, -2.5]\n"
    "try:\n"
    "    import torch\n"
    "except ImportError:\n"
    "    torch = None\n"
    "if torch is not None:\n"
    "    tdt = {'F32': torch.float32, 'I32': torch.int32, 'U8': torch.uint8, 'F16': "
    "torch.float16, 'BF16': torch.bfloat16}\n"
    "    for name, e in h.items():\n"
    "        s, t = e['data_offsets']\n"
    "        x = torch.frombuffer(bytearray(data[s:t]), dtype=tdt[e['dtype']]).reshape(e['shape'])\n"
    "        if e['dtype'] != 'BF16':\n"
    "            assert x.flatten().tolist() == values(name), name\n"
    "    bf = torch.frombuffer(bytearray(data[h['bf'][\"data_offsets\"][0]:h['bf'][\"data_offsets\"][1]]), "
    "dtype=torch.bfloat16)\n"
    "    assert bf.tolist() == [1.0, -0.5], bf\n"
    "    print('torch-checked')\n"
    "# write one the way safetensors.torch.save_file does\n"
    "ts = [('b.bias', 'F32', [2], struct.pack('<2f', 0.25, -1)), ('a.w', 'U8', [2, 2], bytes([1, "
    "2, 3, 4])), ('c', 'I32', [1], struct.pack('<i', -9))]\n"
    "ts.sort(key=lambda t: (-size[t[1]], t[0]))\n"
    "hd = {'__metadata__': {'format': 'pt'}}\n"
    "off = 0\n"
    "for name, dt, shape, by in ts:\n"
    "    hd[name] = {'dtype': dt, 'shape': shape, 'data_offsets': [off, off + len(by)]}\n"
    "    off += len(by)\n"
    "hs = json.dumps(hd, separators=(',', ':')).encode()\n"
    "hs += b' ' * (-len(hs) % 8)\n"
    "open(out, 'wb').write(struct.pack('<Q', len(hs)) + hs + b''.join(t[3] for t in ts))\n"
    "print('ok')\n";

Test(safetensors, python_interop, .init = mk_tmpdir, .fini = rm_tmpdir, .timeout = 120) {
  int has_torch;
  const char *py = find_python(&has_torch);
  if (!py) cr_skip_test("python3 is not installed");

  float w[12];
  for (int i = 0; i < 12; i++) w[i] = 0.5f * (float)i - 3;
  int32_t labels[3] = {7, -2, 100000};
  uint8_t pixels[3] = {0, 128, 255};
  uint16_t half[2] = {0x3c00, 0xc100};  /* 1.0, -2.5 */
  uint16_t bf[2] = {0x3f80, 0xbf00};    /* 1.0, -0.5 */
  kiln_st_tensor t[5] = {
      {.name = "fc.weight", .dtype = KILN_F32, .ndim = 2, .shape = {3, 4}, .data = w, .nbytes = 48},
      {.name = "labels", .dtype = KILN_I32, .ndim = 1, .shape = {3}, .data = labels, .nbytes = 12},
      {.name = "pixels", .dtype = KILN_U8, .ndim = 1, .shape = {3}, .data = pixels, .nbytes = 3},
      {.name = "half", .dtype = KILN_F16, .ndim = 1, .shape = {2}, .data = half, .nbytes = 4},
      {.name = "bf", .dtype = KILN_BF16, .ndim = 1, .shape = {2}, .data = bf, .nbytes = 4},
  };
  const char *k[2] = {"framework", "note"}, *v[2] = {"kiln", "a \"q\" \\ é"};
  OK(kiln_safetensors_save(tpath("kiln.safetensors"), t, 5, k, v, 2));
  write_file(tpath("check.py"), py_script, strlen(py_script));

  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s '%s' '%s' '%s' > '%s' 2>&1", py, tpath("check.py"),
           tpath("kiln.safetensors"), tpath("py.safetensors"), tpath("log"));
  int rc = sh(cmd);
  size_t n;
  char *log = (char *)read_file(tpath("log"), &n);
  log[n] = '\0';
  cr_assert_eq(rc, 0, "python rejected kiln's file:\n%s", log);
  cr_assert(strstr(log, "ok"), "%s", log);
  if (has_torch) cr_assert(strstr(log, "torch-checked"), "%s", log);
  free(log);

  /* And kiln reads Python's layout. */
  kiln_safetensors *st;
  OK(kiln_safetensors_open(tpath("py.safetensors"), &st));
  cr_assert_eq(kiln_safetensors_count(st), 3);
  cr_assert_str_eq(kiln_safetensors_meta(st, "format"), "pt");
  kiln_st_tensor e;
  OK(kiln_safetensors_find(st, "b.bias", &e));
  cr_assert_eq(e.dtype, KILN_F32);
  cr_assert_eq(((const float *)e.data)[1], -1.0f);
  OK(kiln_safetensors_find(st, "a.w", &e));
  cr_assert_eq(e.dtype, KILN_U8);
  cr_assert_eq(e.ndim, 2);
  cr_assert_eq(((const uint8_t *)e.data)[3], 4);
  OK(kiln_safetensors_find(st, "c", &e));
  cr_assert_eq(e.dtype, KILN_I32);
  cr_assert_eq(*(const int32_t *)e.data, -9);
  kiln_safetensors_close(st);
}
