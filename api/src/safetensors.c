/*
 * safetensors.c - Hugging Face's safetensors format, read and written.
 *
 * File layout (https://github.com/huggingface/safetensors):
 *   u64 little-endian N            size of the header in bytes
 *   N bytes of UTF-8 JSON          {"NAME":{"dtype":"F32","shape":[..],
 *                                   "data_offsets":[BEGIN,END]},...,
 *                                   "__metadata__":{"key":"value",...}}
 *                                  padded with spaces to a multiple of 8
 *   the data section               each tensor's bytes at [BEGIN, END)
 *                                  relative to the section's start,
 *                                  little-endian, row-major
 *
 * The reader is as strict as the reference implementation (Rust, used by
 * Python's safetensors): tensors must tile the data section exactly (no
 * gaps, no overlap, nothing after the last one), END - BEGIN must equal
 * numel * dtype size, names are unique and metadata values are strings.
 * The writer lays tensors out in the order given, contiguously, so files
 * it writes load in Python (safetensors.torch.load_file) and in PyTorch.
 *
 * Saves are atomic: PATH.tmp-PID is written, fsync'd and renamed over PATH,
 * then PATH's directory is fsync'd; on any failure the temporary file is
 * removed and PATH is left as it was.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kiln-impl.h"
#include "kiln/data.h"

/* ---- dtypes ----------------------------------------------------------------- */

static const struct {
  const char *name;
  kiln_dtype dtype;
  size_t size;
} st_dtypes[] = {
    {"F32", KILN_F32, 4}, {"F16", KILN_F16, 2}, {"BF16", KILN_BF16, 2},
    {"I32", KILN_I32, 4}, {"U8", KILN_U8, 1},
};

/* Dtypes of the safetensors format that kiln has no kiln_dtype for: a file
 * holding them is valid, just not loadable here (KILN_UNSUPPORTED). */
static const char *const st_other_dtypes[] = {"F64", "I64", "I16", "I8", "U16", "U32", "U64",
                                              "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3",
                                              "F6_E3M2", "F4", "C64"};

static const char *st_dtype_name(kiln_dtype dt) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (st_dtypes[i].dtype == dt) return st_dtypes[i].name;
  return NULL;
}

static size_t st_dtype_size(kiln_dtype dt) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (st_dtypes[i].dtype == dt) return st_dtypes[i].size;
  return 0;
}

/* numel * elem_size into *bytes; 0 on overflow. */
static int st_nbytes(int ndim, const int64_t *shape, size_t elem_size, size_t *bytes) {
  uint64_t n = elem_size;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return 0;
    if (shape[i] != 0 && n > UINT64_MAX / (uint64_t)shape[i]) return 0;
    n *= (uint64_t)shape[i];
  }
  if (n > SIZE_MAX) return 0;
  *bytes = (size_t)n;
  return 1;
}

/* ---- a small strict JSON parser ---------------------------------------------
 * Parses RFC 8259 JSON into a tree; numbers are kept as int64 when they are
 * integers that fit. Nesting is limited to JSON_MAX_DEPTH. */

#define JSON_MAX_DEPTH 32

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
  jtype t;
  size_t at;                  /* byte offset in the header, for messages */
  int b;                      /* J_BOOL */
  int is_int;                 /* J_NUM: an integer that fits int64 */
  int64_t i;
  char *s;                    /* J_STR: decoded, NUL-terminated */
  size_t slen;                /* may contain NULs (\u0000) */
  size_t n;                   /* J_ARR, J_OBJ: items */
  char **keys;                /* J_OBJ */
  size_t *key_lens;
  struct jval *items;
} jval;

typedef struct jparser {
  const char *base, *p, *end;
  int depth;
  char err[256];
} jparser;

static void jfree(jval *v) {
  if (!v) return;
  free(v->s);
  for (size_t i = 0; i < v->n; i++) {
    if (v->keys) free(v->keys[i]);
    jfree(&v->items[i]);
  }
  free(v->keys);
  free(v->key_lens);
  free(v->items);
  memset(v, 0, sizeof *v);
}

static int jerr(jparser *ps, const char *what) {
  if (ps->p >= ps->end)
    snprintf(ps->err, sizeof ps->err, "at byte %zu (the end of the header): %s",
             (size_t)(ps->p - ps->base), what);
  else
    snprintf(ps->err, sizeof ps->err, "at byte %zu ('%c'): %s", (size_t)(ps->p - ps->base),
             (*ps->p >= 0x20 && *ps->p < 0x7f) ? *ps->p : '?', what);
  return -1;
}

static void jskip_ws(jparser *ps) {
  while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ps->p++;
}

static int jhex4(jparser *ps, unsigned *out) {
  if (ps->end - ps->p < 4) return jerr(ps, "truncated \\u escape");
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    char c = ps->p[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
    else return jerr(ps, "bad hex digit in \\u escape");
  }
  ps->p += 4;
  *out = v;
  return 0;
}

static size_t utf8_put(char *o, unsigned cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | (cp >> 6 & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | cp >> 18);
  o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
  o[2] = (char)(0x80 | (cp >> 6 & 0x3F));
  o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string at ps->p (the opening quote). The decoded string is never
 * longer than its escaped form, so one allocation of that size suffices. */
static int jstring(jparser *ps, char **out, size_t *out_len) {
  const char *q = ps->p + 1;
  while (q < ps->end && *q != '"') q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
  if (q >= ps->end) return jerr(ps, "unterminated string");
  char *s = malloc((size_t)(q - ps->p) + 1);
  if (!s) return jerr(ps, "out of memory");
  size_t n = 0;
  ps->p++;
  while (*ps->p != '"') {
    unsigned char c = (unsigned char)*ps->p;
    if (c < 0x20) {
      free(s);
      return jerr(ps, "control character in a string (must be escaped)");
    }
    if (c != '\\') {
      s[n++] = (char)c;
      ps->p++;
      continue;
    }
    ps->p++;
    char e = *ps->p++;
    switch (e) {
      case '"': s[n++] = '"'; break;
      case '\\': s[n++] = '\\'; break;
      case '/': s[n++] = '/'; break;
      case 'b': s[n++] = '\b'; break;
      case 'f': s[n++] = '\f'; break;
      case 'n': s[n++] = '\n'; break;
      case 'r': s[n++] = '\r'; break;
      case 't': s[n++] = '\t'; break;
      case 'u': {
        unsigned cp, lo;
        if (jhex4(ps, &cp) < 0) { free(s); return -1; }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
            free(s);
            return jerr(ps, "high surrogate \\u escape without its low half");
          }
          ps->p += 2;
          if (jhex4(ps, &lo) < 0) { free(s); return -1; }
          if (lo < 0xDC00 || lo > 0xDFFF) {
            free(s);
            return jerr(ps, "high surrogate followed by a non-low-surrogate \\u escape");
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          free(s);
          return jerr(ps, "lone low surrogate \\u escape");
        }
        n += utf8_put(s + n, cp);
        break;
      }
      default:
        ps->p--;
        free(s);
        return jerr(ps, "unknown escape in a string");
    }
  }
  ps->p++; /* closing quote */
  s[n] = '\0';
  *out = s;
  *out_len = n;
  return 0;
}

static int jnumber(jparser *ps, jval *v) {
  const char *start = ps->p;
  int is_int = 1;
  if (ps->p < ps->end && *ps->p == '-') ps->p++;
  if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return jerr(ps, "bad number");
  if (*ps->p == '0') {
    ps->p++;
  } else {
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && *ps->p == '.') {
    is_int = 0;
    ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return jerr(ps, "bad fraction");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    is_int = 0;
    ps->p++;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return jerr(ps, "bad exponent");
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
  }
  v->t = J_NUM;
  v->is_int = 0;
  if (is_int) {
    /* Accumulate negatively so INT64_MIN fits; overflow leaves is_int 0. */
    int neg = *start == '-';
    int64_t acc = 0;
    int ok = 1;
    for (const char *q = start + neg; q < ps->p; q++) {
      int d = *q - '0';
      if (acc < (INT64_MIN + d) / 10) { ok = 0; break; }
      acc = acc * 10 - d;
    }
    if (ok && !neg && acc == INT64_MIN) ok = 0;
    if (ok) {
      v->is_int = 1;
      v->i = neg ? acc : -acc;
    }
  }
  return 0;
}

static int jvalue(jparser *ps, jval *v);

static int jpush(jparser *ps, jval *v, size_t *cap) {
  if (v->n < *cap) return 0;
  size_t ncap = *cap ? *cap * 2 : 8;
  jval *items = realloc(v->items, ncap * sizeof *items);
  if (!items) return jerr(ps, "out of memory");
  v->items = items;
  if (v->t == J_OBJ) {
    char **keys = realloc(v->keys, ncap * sizeof *keys);
    if (!keys) return jerr(ps, "out of memory");
    v->keys = keys;
    size_t *lens = realloc(v->key_lens, ncap * sizeof *lens);
    if (!lens) return jerr(ps, "out of memory");
    v->key_lens = lens;
  }
  *cap = ncap;
  return 0;
}

static int jcontainer(jparser *ps, jval *v, int is_obj) {
  size_t cap = 0;
  char close = is_obj ? '}' : ']';
  v->t = is_obj ? J_OBJ : J_ARR;
  if (++ps->depth > JSON_MAX_DEPTH) return jerr(ps, "nesting too deep");
  ps->p++;
  jskip_ws(ps);
  if (ps->p < ps->end && *ps->p == close) {
    ps->p++;
    ps->depth--;
    return 0;
  }
  for (;;) {
    if (jpush(ps, v, &cap) < 0) return -1;
    memset(&v->items[v->n], 0, sizeof v->items[0]);
    if (is_obj) {
      jskip_ws(ps);
      if (ps->p >= ps->end || *ps->p != '"') return jerr(ps, "expected a string key");
      v->keys[v->n] = NULL;
      if (jstring(ps, &v->keys[v->n], &v->key_lens[v->n]) < 0) return -1;
      jskip_ws(ps);
      if (ps->p >= ps->end || *ps->p != ':') {
        free(v->keys[v->n]);
        return jerr(ps, "expected ':' after an object key");
      }
      ps->p++;
    }
    if (jvalue(ps, &v->items[v->n]) < 0) {
      if (is_obj) free(v->keys[v->n]);
      jfree(&v->items[v->n]);
      return -1;
    }
    v->n++;
    jskip_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ps->p++;
      continue;
    }
    if (ps->p < ps->end && *ps->p == close) {
      ps->p++;
      ps->depth--;
      return 0;
    }
    return jerr(ps, is_obj ? "expected ',' or '}' in an object" : "expected ',' or ']' in an array");
  }
}

static int jlit(jparser *ps, const char *lit) {
  size_t n = strlen(lit);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0) return jerr(ps, "unexpected token");
  ps->p += n;
  return 0;
}

static int jvalue(jparser *ps, jval *v) {
  jskip_ws(ps);
  v->at = (size_t)(ps->p - ps->base);
  if (ps->p >= ps->end) return jerr(ps, "expected a value");
  switch (*ps->p) {
    case '{': return jcontainer(ps, v, 1);
    case '[': return jcontainer(ps, v, 0);
    case '"': v->t = J_STR; return jstring(ps, &v->s, &v->slen);
    case 't': v->t = J_BOOL; v->b = 1; return jlit(ps, "true");
    case 'f': v->t = J_BOOL; v->b = 0; return jlit(ps, "false");
    case 'n': v->t = J_NULL; return jlit(ps, "null");
    default:
      if (*ps->p != '-' && (*ps->p < '0' || *ps->p > '9')) return jerr(ps, "unexpected character");
      return jnumber(ps, v);
  }
}

/* Offset of the first invalid UTF-8 sequence in s[0..n), or n. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t len;
    unsigned min;
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; c &= 0x07; }
    else return i;
    if (n - i < len) return i;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      c = c << 6 | (s[i + k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return i;
    i += len;
  }
  return n;
}

/* ---- the reader ------------------------------------------------------------- */

typedef struct st_entry {
  char *name;
  kiln_dtype dtype;
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  uint64_t begin, end;        /* relative to the data section */
} st_entry;

struct kiln_safetensors {
  char *path;
  uint8_t *file;              /* the whole file */
  size_t file_size;
  size_t data_start;          /* 8 + header length */
  st_entry *e;
  size_t n;
  st_entry **by_name;         /* into e, sorted by name */
  char **meta_keys, **meta_values;
  size_t n_meta;
};

static int cmp_by_name(const void *a, const void *b) {
  return strcmp((*(st_entry *const *)a)->name, (*(st_entry *const *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
  const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

/* Reads the whole file into memory. */
static kiln_status st_read_file(const char *path, uint8_t **out, size_t *size) {
  kiln_status st = KILN_OK;
  uint8_t *buf = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return kiln__error(errno == ENOENT ? KILN_NOT_FOUND : KILN_IO_ERROR, "%s: cannot open: %s",
                       path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    st = kiln__error(KILN_IO_ERROR, "%s: cannot stat: %s", path, strerror(errno));
    goto fail;
  }
  if (!S_ISREG(sb.st_mode)) {
    st = kiln__error(KILN_IO_ERROR, "%s: not a regular file", path);
    goto fail;
  }
  if ((uint64_t)sb.st_size > SIZE_MAX - 1) {
    st = kiln__error(KILN_OUT_OF_MEMORY, "%s: file of %lld bytes does not fit in memory", path,
                     (long long)sb.st_size);
    goto fail;
  }
  size_t n = (size_t)sb.st_size, have = 0;
  buf = kiln__malloc(n ? n : 1);
  if (!buf) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  while (have < n) {
    ssize_t r = read(fd, buf + have, n - have);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      st = kiln__error(KILN_IO_ERROR, "%s: read error: %s", path, strerror(errno));
      goto fail;
    }
    if (r == 0) {
      st = kiln__error(KILN_IO_ERROR, "%s: the file shrank from %zu to %zu bytes while being read",
                       path, n, have);
      goto fail;
    }
    have += (size_t)r;
  }
  close(fd);
  *out = buf;
  *size = n;
  return KILN_OK;

fail:
  free(buf);
  close(fd);
  return st;
}

static kiln_status st_parse_int_array(const char *path, const char *tname, const char *field,
                                      const jval *v, int64_t *out, int max, int *count) {
  if (v->t != J_ARR)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': %s is not an array", path, tname,
                       field);
  if (v->n > (size_t)max)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': %s has %zu entries, at most %d allowed",
                       path, tname, field, v->n, max);
  for (size_t i = 0; i < v->n; i++) {
    const jval *x = &v->items[i];
    if (x->t != J_NUM || !x->is_int || x->i < 0)
      return kiln__error(KILN_CORRUPT_DATA,
                         "%s: tensor '%s': %s[%zu] is not a non-negative integer", path, tname,
                         field, i);
    out[i] = x->i;
  }
  *count = (int)v->n;
  return KILN_OK;
}

static kiln_status st_parse_tensor(kiln_safetensors *st, const char *name, const jval *v,
                                   st_entry *e, uint64_t data_size) {
  const char *path = st->path;
  const jval *dtype = NULL, *shape = NULL, *offsets = NULL;

  if (v->t != J_OBJ)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': its entry is not an object", path,
                       name);
  for (size_t i = 0; i < v->n; i++) {
    const jval **slot = !strcmp(v->keys[i], "dtype")          ? &dtype
                        : !strcmp(v->keys[i], "shape")        ? &shape
                        : !strcmp(v->keys[i], "data_offsets") ? &offsets
                                                              : NULL;
    if (!slot) continue; /* unknown fields are ignored, as the reference reader does */
    if (*slot)
      return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': field '%s' appears twice", path, name,
                         v->keys[i]);
    *slot = &v->items[i];
  }
  if (!dtype || !shape || !offsets)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': missing field '%s'", path, name,
                       !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

  if (dtype->t != J_STR)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': dtype is not a string", path, name);
  e->dtype = KILN_DTYPE_INVALID;
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (!strcmp(dtype->s, st_dtypes[i].name)) e->dtype = st_dtypes[i].dtype;
  if (e->dtype == KILN_DTYPE_INVALID) {
    for (size_t i = 0; i < sizeof st_other_dtypes / sizeof st_other_dtypes[0]; i++)
      if (!strcmp(dtype->s, st_other_dtypes[i]))
        return kiln__error(KILN_UNSUPPORTED,
                           "%s: tensor '%s': dtype %s is valid safetensors but kiln reads only "
                           "F32, F16, BF16, I32 and U8",
                           path, name, dtype->s);
    return kiln__error(KILN_CORRUPT_DATA,
                       "%s: tensor '%s': unknown dtype \"%s\" (safetensors dtypes are F32, F16, "
                       "BF16, I32, U8, F64, I64, ...)",
                       path, name, dtype->s);
  }

  kiln_status rc = st_parse_int_array(path, name, "shape", shape, e->shape, KILN_MAX_DIMS, &e->ndim);
  if (rc != KILN_OK) return rc;
  int64_t off[2];
  int n_off;
  if ((rc = st_parse_int_array(path, name, "data_offsets", offsets, off, 2, &n_off)) != KILN_OK)
    return rc;
  if (n_off != 2)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': data_offsets has %d entries, not 2",
                       path, name, n_off);
  e->begin = (uint64_t)off[0];
  e->end = (uint64_t)off[1];

  char sh[160];
  kiln__shape_str(sh, sizeof sh, e->ndim, e->shape);
  size_t need;
  if (!st_nbytes(e->ndim, e->shape, st_dtype_size(e->dtype), &need))
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': %s %s has too many elements", path,
                       name, dtype->s, sh);
  if (e->end < e->begin)
    return kiln__error(KILN_CORRUPT_DATA, "%s: tensor '%s': data_offsets [%llu, %llu] end before "
                       "they begin", path, name, (unsigned long long)e->begin,
                       (unsigned long long)e->end);
  if (e->end - e->begin != need)
    return kiln__error(KILN_CORRUPT_DATA,
                       "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but %s %s needs "
                       "%zu",
                       path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)(e->end - e->begin), dtype->s, sh, need);
  if (e->end > data_size)
    return kiln__error(KILN_CORRUPT_DATA,
                       "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data "
                       "section (%llu bytes)",
                       path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)data_size);
  return KILN_OK;
}

static kiln_status st_parse_meta(kiln_safetensors *st, const jval *v) {
  if (v->t != J_OBJ)
    return kiln__error(KILN_CORRUPT_DATA, "%s: __metadata__ is not an object", st->path);
  st->meta_keys = kiln__calloc(v->n ? v->n : 1, sizeof *st->meta_keys);
  st->meta_values = kiln__calloc(v->n ? v->n : 1, sizeof *st->meta_values);
  if (!st->meta_keys || !st->meta_values) return KILN_OUT_OF_MEMORY;
  for (size_t i = 0; i < v->n; i++) {
    const jval *x = &v->items[i];
    if (x->t != J_STR)
      return kiln__error(KILN_CORRUPT_DATA, "%s: __metadata__ value of '%s' is not a string",
                         st->path, v->keys[i]);
    if (strlen(v->keys[i]) != v->key_lens[i] || strlen(x->s) != x->slen)
      return kiln__error(KILN_CORRUPT_DATA, "%s: __metadata__ entry '%s' contains a NUL character",
                         st->path, v->keys[i]);
    for (size_t k = 0; k < i; k++)
      if (!strcmp(st->meta_keys[k], v->keys[i]))
        return kiln__error(KILN_CORRUPT_DATA, "%s: __metadata__ key '%s' appears twice", st->path,
                           v->keys[i]);
    st->meta_keys[i] = kiln__strdup(v->keys[i]);
    st->meta_values[i] = kiln__strdup(x->s);
    st->n_meta = i + 1;
    if (!st->meta_keys[i] || !st->meta_values[i]) return KILN_OUT_OF_MEMORY;
  }
  return KILN_OK;
}

kiln_status kiln_safetensors_open(const char *path, kiln_safetensors **out) {
  kiln_status rc = KILN_OK;
  kiln_safetensors *st = NULL;
  jval root;
  st_entry **order = NULL;

  memset(&root, 0, sizeof root);
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_safetensors_open: out is NULL");
  *out = NULL;
  if (!path) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_safetensors_open: path is NULL");

  st = kiln__calloc(1, sizeof *st);
  if (!st) return KILN_OUT_OF_MEMORY;
  if (!(st->path = kiln__strdup(path))) {
    rc = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  if ((rc = st_read_file(path, &st->file, &st->file_size)) != KILN_OK) goto fail;

  /* Header length. */
  if (st->file_size < 8) {
    rc = kiln__error(KILN_CORRUPT_DATA,
                     "%s: file is %zu bytes; a safetensors file starts with an 8-byte header "
                     "length",
                     path, st->file_size);
    goto fail;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | st->file[i];
  if (hlen > st->file_size - 8) {
    rc = kiln__error(KILN_CORRUPT_DATA,
                     "%s: header length %llu is larger than the rest of the file (%zu bytes); "
                     "the file is truncated or not safetensors",
                     path, (unsigned long long)hlen, st->file_size - 8);
    goto fail;
  }
  if (hlen < 2) {
    rc = kiln__error(KILN_CORRUPT_DATA, "%s: header length %llu is too small for a JSON object",
                     path, (unsigned long long)hlen);
    goto fail;
  }
  st->data_start = 8 + (size_t)hlen;
  uint64_t data_size = st->file_size - st->data_start;

  /* Header JSON. */
  const char *hdr = (const char *)st->file + 8;
  size_t bad = utf8_invalid_at((const unsigned char *)hdr, (size_t)hlen);
  if (bad < hlen) {
    rc = kiln__error(KILN_CORRUPT_DATA, "%s: header JSON: invalid UTF-8 at byte %zu", path, bad);
    goto fail;
  }
  jparser ps = {hdr, hdr, hdr + hlen, 0, ""};
  jskip_ws(&ps);
  if (ps.p >= ps.end || *ps.p != '{') {
    jerr(&ps, "the header must be a JSON object");
    rc = kiln__error(KILN_CORRUPT_DATA, "%s: header JSON: %s", path, ps.err);
    goto fail;
  }
  if (jvalue(&ps, &root) < 0) {
    rc = kiln__error(KILN_CORRUPT_DATA, "%s: header JSON: %s", path, ps.err);
    goto fail;
  }
  jskip_ws(&ps);
  if (ps.p < ps.end) {
    jerr(&ps, "unexpected data after the header object");
    rc = kiln__error(KILN_CORRUPT_DATA, "%s: header JSON: %s", path, ps.err);
    goto fail;
  }

  /* Entries. */
  st->e = kiln__calloc(root.n ? root.n : 1, sizeof *st->e);
  if (!st->e) {
    rc = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  int have_meta = 0;
  for (size_t i = 0; i < root.n; i++) {
    const char *key = root.keys[i];
    if (strlen(key) != root.key_lens[i]) {
      rc = kiln__error(KILN_CORRUPT_DATA, "%s: a tensor name contains a NUL character ('%s...')",
                       path, key);
      goto fail;
    }
    if (!strcmp(key, "__metadata__")) {
      if (have_meta++) {
        rc = kiln__error(KILN_CORRUPT_DATA, "%s: __metadata__ appears twice", path);
        goto fail;
      }
      if ((rc = st_parse_meta(st, &root.items[i])) != KILN_OK) goto fail;
      continue;
    }
    st_entry *e = &st->e[st->n];
    if ((rc = st_parse_tensor(st, key, &root.items[i], e, data_size)) != KILN_OK) goto fail;
    /* Take the key's storage. */
    e->name = root.keys[i];
    root.keys[i] = NULL;
    st->n++;
  }

  /* Names unique: sort an index by name. */
  st->by_name = kiln__malloc((st->n ? st->n : 1) * sizeof *st->by_name);
  order = kiln__malloc((st->n ? st->n : 1) * sizeof *order);
  if (!st->by_name || !order) {
    rc = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  for (size_t i = 0; i < st->n; i++) st->by_name[i] = order[i] = &st->e[i];
  qsort(st->by_name, st->n, sizeof *st->by_name, cmp_by_name);
  qsort(order, st->n, sizeof *order, cmp_by_offset);
  for (size_t i = 1; i < st->n; i++) {
    if (!strcmp(st->by_name[i]->name, st->by_name[i - 1]->name)) {
      rc = kiln__error(KILN_CORRUPT_DATA, "%s: tensor name '%s' appears twice", path,
                       st->by_name[i]->name);
      goto fail;
    }
  }

  /* The tensors must tile the data section: no overlap, no gap, nothing
   * after the last one (the reference reader refuses anything else). */
  uint64_t pos = 0;
  for (size_t k = 0; k < st->n; k++) {
    const st_entry *e = order[k];
    if (e->begin < pos) {
      const st_entry *p = order[k - 1];
      rc = kiln__error(KILN_CORRUPT_DATA,
                       "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the data "
                       "section",
                       path, p->name, (unsigned long long)p->begin, (unsigned long long)p->end,
                       e->name, (unsigned long long)e->begin, (unsigned long long)e->end);
      goto fail;
    }
    if (e->begin > pos) {
      rc = kiln__error(KILN_CORRUPT_DATA,
                       "%s: bytes [%llu, %llu) of the data section belong to no tensor (tensor "
                       "'%s' starts at %llu)",
                       path, (unsigned long long)pos, (unsigned long long)e->begin, e->name,
                       (unsigned long long)e->begin);
      goto fail;
    }
    pos = e->end;
  }
  if (pos != data_size) {
    rc = kiln__error(KILN_CORRUPT_DATA,
                     "%s: the data section holds %llu bytes but its tensors cover only %llu "
                     "(trailing bytes)",
                     path, (unsigned long long)data_size, (unsigned long long)pos);
    goto fail;
  }

  free(order);
  jfree(&root);
  *out = st;
  return KILN_OK;

fail:
  free(order);
  jfree(&root);
  kiln_safetensors_close(st);
  return rc;
}

void kiln_safetensors_close(kiln_safetensors *st) {
  if (!st) return;
  for (size_t i = 0; i < st->n; i++) free(st->e[i].name);
  for (size_t i = 0; i < st->n_meta; i++) {
    free(st->meta_keys[i]);
    free(st->meta_values[i]);
  }
  free(st->meta_keys);
  free(st->meta_values);
  free(st->by_name);
  free(st->e);
  free(st->file);
  free(st->path);
  free(st);
}

size_t kiln_safetensors_count(const kiln_safetensors *st) { return st ? st->n : 0; }

static void st_fill(const kiln_safetensors *st, const st_entry *e, kiln_st_tensor *out) {
  memset(out, 0, sizeof *out);
  out->name = e->name;
  out->dtype = e->dtype;
  out->ndim = e->ndim;
  memcpy(out->shape, e->shape, sizeof e->shape);
  out->data = st->file + st->data_start + e->begin;
  out->nbytes = (size_t)(e->end - e->begin);
}

kiln_status kiln_safetensors_get(const kiln_safetensors *st, size_t i, kiln_st_tensor *out) {
  if (!st || !out)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_safetensors_get: st or out is NULL");
  if (i >= st->n)
    return kiln__error(KILN_INVALID_ARGUMENT, "%s: tensor index %zu out of range (the file holds %zu)",
                       st->path, i, st->n);
  st_fill(st, &st->e[i], out);
  return KILN_OK;
}

kiln_status kiln_safetensors_find(const kiln_safetensors *st, const char *name,
                                  kiln_st_tensor *out) {
  if (!st || !name || !out)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_safetensors_find: st, name or out is NULL");
  size_t lo = 0, hi = st->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(st->by_name[mid]->name, name);
    if (c == 0) {
      st_fill(st, st->by_name[mid], out);
      return KILN_OK;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return kiln__error(KILN_NOT_FOUND, "%s: no tensor named '%s' (the file holds %zu tensors)",
                     st->path, name, st->n);
}

const char *kiln_safetensors_meta(const kiln_safetensors *st, const char *key) {
  if (!st || !key) return NULL;
  for (size_t i = 0; i < st->n_meta; i++)
    if (!strcmp(st->meta_keys[i], key)) return st->meta_values[i];
  return NULL;
}

/* ---- the writer ------------------------------------------------------------- */

/* A growable byte buffer for the header. */
typedef struct sbuf {
  char *p;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal escaped as Python's json.dumps(ensure_ascii=False)
 * does: '"', '\\', \b \f \n \r \t, other control characters as \u00XX;
 * UTF-8 passes through (the caller checked it is valid). */
static void sb_json_string(sbuf *b, const char *s) {
  sb_puts(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"') sb_puts(b, "\\\"");
    else if (c == '\\') sb_puts(b, "\\\\");
    else if (c == '\n') sb_puts(b, "\\n");
    else if (c == '\t') sb_puts(b, "\\t");
    else if (c == '\r') sb_puts(b, "\\r");
    else if (c == '\b') sb_puts(b, "\\b");
    else if (c == '\f') sb_puts(b, "\\f");
    else if (c < 0x20) sb_printf(b, "\\u%04x", c);
    else sb_put(b, (const char *)s, 1);
  }
  sb_puts(b, "\"");
}

static kiln_status write_all(int fd, const void *data, size_t n, const char *tmp) {
  const uint8_t *p = data;
  while (n > 0) {
    ssize_t w = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return kiln__error(KILN_IO_ERROR, "%s: write failed: %s", tmp, strerror(errno));
    p += w;
    n -= (size_t)w;
  }
  return KILN_OK;
}

/* Checks the arguments of a save; messages name path and the tensor. */
static kiln_status st_check_save(const char *path, const kiln_st_tensor *t, size_t n,
                                 const char *const *mk, const char *const *mv, size_t n_meta) {
  if (n > 0 && !t)
    return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: %zu tensors but the array is NULL", path,
                       n);
  if (n_meta > 0 && (!mk || !mv))
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "%s: save: %zu metadata entries but the key or value array is NULL", path,
                       n_meta);
  for (size_t i = 0; i < n; i++) {
    const char *name = t[i].name;
    if (!name || !name[0])
      return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: tensor %zu has no name", path, i);
    if (utf8_invalid_at((const unsigned char *)name, strlen(name)) != strlen(name))
      return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: tensor %zu's name is not valid UTF-8",
                         path, i);
    if (!strcmp(name, "__metadata__"))
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "%s: save: tensor %zu is named __metadata__, which safetensors reserves",
                         path, i);
    const char *dn = st_dtype_name(t[i].dtype);
    if (!dn)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "%s: save: tensor '%s' has dtype %d, which safetensors files of kiln "
                         "cannot hold (F32, F16, BF16, I32, U8)",
                         path, name, (int)t[i].dtype);
    if (t[i].ndim < 0 || t[i].ndim > KILN_MAX_DIMS)
      return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: tensor '%s' has rank %d, outside 0..%d",
                         path, name, t[i].ndim, KILN_MAX_DIMS);
    char sh[160];
    kiln__shape_str(sh, sizeof sh, t[i].ndim, t[i].shape);
    size_t need;
    if (!st_nbytes(t[i].ndim, t[i].shape, st_dtype_size(t[i].dtype), &need))
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "%s: save: tensor '%s' has shape %s: negative or too large", path, name,
                         sh);
    if (t[i].nbytes != need)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "%s: save: tensor '%s': nbytes is %zu but %s %s needs %zu", path, name,
                         t[i].nbytes, dn, sh, need);
    if (need > 0 && !t[i].data)
      return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: tensor '%s' has no data", path, name);
    for (size_t k = 0; k < i; k++)
      if (!strcmp(t[k].name, name))
        return kiln__error(KILN_INVALID_ARGUMENT,
                           "%s: save: tensor name '%s' is used twice (entries %zu and %zu)", path,
                           name, k, i);
  }
  for (size_t i = 0; i < n_meta; i++) {
    if (!mk[i] || !mv[i])
      return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: metadata entry %zu has a NULL %s", path,
                         i, mk[i] ? "value" : "key");
    if (utf8_invalid_at((const unsigned char *)mk[i], strlen(mk[i])) != strlen(mk[i]) ||
        utf8_invalid_at((const unsigned char *)mv[i], strlen(mv[i])) != strlen(mv[i]))
      return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: metadata '%s' is not valid UTF-8",
                         path, mk[i]);
    for (size_t k = 0; k < i; k++)
      if (!strcmp(mk[k], mk[i]))
        return kiln__error(KILN_INVALID_ARGUMENT, "%s: save: metadata key '%s' is used twice",
                           path, mk[i]);
  }
  return KILN_OK;
}

/* fsyncs the directory holding path, so the rename itself is durable. */
static kiln_status st_sync_dir(const char *path) {
  char *dir = kiln__strdup(path);
  if (!dir) return KILN_OUT_OF_MEMORY;
  char *slash = strrchr(dir, '/');
  const char *d = ".";
  if (slash == dir) d = "/";
  else if (slash) {
    *slash = '\0';
    d = dir;
  }
  kiln_status rc = KILN_OK;
  int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    rc = kiln__error(KILN_IO_ERROR, "%s: saved, but its directory %s cannot be opened to sync "
                     "it: %s", path, d, strerror(errno));
  } else {
    /* Some file systems cannot sync directories (EINVAL): nothing to do. */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
      rc = kiln__error(KILN_IO_ERROR, "%s: saved, but syncing its directory %s failed: %s", path,
                       d, strerror(errno));
    close(fd);
  }
  free(dir);
  return rc;
}

/* Removes PATH.tmp-PID files that an earlier save left behind when its
 * process was killed mid-write (PID no longer running). Best effort: a
 * file that cannot be listed or removed is left as it was. */
static void st_remove_stale_temps(const char *path) {
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  size_t dlen = slash ? (size_t)(slash - path) : 0;
  char *dir = slash ? strndup(path, dlen ? dlen : 1) : strdup(".");
  if (!dir) return;
  DIR *d = opendir(dir);
  if (!d) {
    free(dir);
    return;
  }
  size_t blen = strlen(base);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    const char *name = e->d_name;
    if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp-", 5) != 0) continue;
    char *end = NULL;
    errno = 0;
    long pid = strtol(name + blen + 5, &end, 10);
    if (errno || !end || *end || pid <= 0 || pid == (long)getpid()) continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* its writer may still run */
    size_t n = strlen(dir) + 1 + strlen(name) + 1;
    char *full = malloc(n);
    if (!full) break;
    snprintf(full, n, "%s/%s", dir, name);
    unlink(full);
    free(full);
  }
  closedir(d);
  free(dir);
}

kiln_status kiln_safetensors_save(const char *path, const kiln_st_tensor *tensors, size_t n,
                                  const char *const *meta_keys, const char *const *meta_values,
                                  size_t n_meta) {
  kiln_status rc;
  sbuf h = {0};
  char *tmp = NULL;
  int fd = -1;

  if (!path || !path[0])
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_safetensors_save: path is NULL or empty");
  if ((rc = st_check_save(path, tensors, n, meta_keys, meta_values, n_meta)) != KILN_OK)
    return rc;

  /* Header JSON: tensors in the order given, laid out back to back. */
  uint64_t off = 0;
  sb_puts(&h, "{");
  for (size_t i = 0; i < n; i++) {
    const kiln_st_tensor *t = &tensors[i];
    if (i) sb_puts(&h, ",");
    sb_json_string(&h, t->name);
    sb_puts(&h, ":{\"dtype\":\"");
    sb_puts(&h, st_dtype_name(t->dtype));
    sb_puts(&h, "\",\"shape\":[");
    for (int d = 0; d < t->ndim; d++) sb_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    sb_printf(&h, "],\"data_offsets\":[%llu,", (unsigned long long)off);
    off += t->nbytes;
    sb_printf(&h, "%llu]}", (unsigned long long)off);
  }
  if (n_meta > 0) {
    sb_puts(&h, n ? ",\"__metadata__\":{" : "\"__metadata__\":{");
    for (size_t i = 0; i < n_meta; i++) {
      if (i) sb_puts(&h, ",");
      sb_json_string(&h, meta_keys[i]);
      sb_puts(&h, ":");
      sb_json_string(&h, meta_values[i]);
    }
    sb_puts(&h, "}");
  }
  sb_puts(&h, "}");
  while (h.n % 8) sb_puts(&h, " ");
  if (h.oom) {
    rc = kiln__error(KILN_OUT_OF_MEMORY, "%s: save: out of memory building the header", path);
    goto fail;
  }

  /* Write PATH.tmp-PID. */
  size_t tlen = strlen(path) + 32;
  if (!(tmp = kiln__malloc(tlen))) {
    rc = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  snprintf(tmp, tlen, "%s.tmp-%ld", path, (long)getpid());
  struct stat old;
  mode_t mode = 0666; /* less the umask, like any new file */
  int keep_mode = stat(path, &old) == 0 && S_ISREG(old.st_mode);
  fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0 && errno == EEXIST) {
    /* Left by an earlier process with our pid that died mid-save. */
    unlink(tmp);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  }
  if (fd < 0) {
    rc = kiln__error(KILN_IO_ERROR, "%s: save: cannot create the temporary file %s: %s", path, tmp,
                     strerror(errno));
    free(tmp);
    tmp = NULL; /* nothing to remove */
    goto fail;
  }
  if (keep_mode) (void)fchmod(fd, old.st_mode & 07777);

  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
  if ((rc = write_all(fd, len8, 8, tmp)) != KILN_OK) goto fail;
  if ((rc = write_all(fd, h.p, h.n, tmp)) != KILN_OK) goto fail;
  for (size_t i = 0; i < n; i++)
    if ((rc = write_all(fd, tensors[i].data, tensors[i].nbytes, tmp)) != KILN_OK) goto fail;
  if (fsync(fd) != 0) {
    rc = kiln__error(KILN_IO_ERROR, "%s: save: fsync of %s failed: %s", path, tmp, strerror(errno));
    goto fail;
  }
  int cr = close(fd);
  fd = -1;
  if (cr != 0) {
    rc = kiln__error(KILN_IO_ERROR, "%s: save: closing %s failed: %s", path, tmp, strerror(errno));
    goto fail;
  }
  if (rename(tmp, path) != 0) {
    rc = kiln__error(KILN_IO_ERROR, "%s: save: cannot rename %s over it: %s", path, tmp,
                     strerror(errno));
    goto fail;
  }
  free(tmp);
  free(h.p);
  st_remove_stale_temps(path);
  return st_sync_dir(path);

fail:
  if (fd >= 0) close(fd);
  if (tmp) {
    unlink(tmp);
    free(tmp);
  }
  free(h.p);
  return rc;
}
