/*
 * idx.c - IDX files (MNIST's format), raw or gzip-compressed.
 *
 * Layout (big-endian): two zero bytes, the element type (0x08 = u8, the only
 * one accepted), the rank R, then R u32 dimensions, then the payload of
 * prod(dims) elements. A file starting with 1f 8b is a gzip stream (one or
 * more members) holding such a file; it is inflated as it is read, so memory
 * grows with the data actually present, never with what a corrupt header
 * claims.
 *
 * Everything is checked: magic, type, rank 1..KILN_MAX_DIMS, dims > 0 and
 * their product in range, and a payload of exactly the declared size.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "kiln-impl.h"
#include "kiln/data.h"

/* A byte source: a FILE, inflated when gz. */
typedef struct idx_src {
  const char *path;
  FILE *f;
  int gz;
  int z_live;                 /* inflateInit2 succeeded */
  int z_end;                  /* the last member ended and no more input */
  z_stream zs;
  unsigned char in[1 << 16];
} idx_src;

/* Fills the input buffer, keeping unconsumed bytes. Returns bytes now
 * available, or -1 on a read error (message set). */
static long src_refill(idx_src *s) {
  if (s->zs.avail_in > 0 && s->zs.next_in != s->in) memmove(s->in, s->zs.next_in, s->zs.avail_in);
  s->zs.next_in = s->in;
  size_t room = sizeof s->in - s->zs.avail_in;
  size_t got = fread(s->in + s->zs.avail_in, 1, room, s->f);
  if (got < room && ferror(s->f)) {
    kiln__error(KILN_IO_ERROR, "%s: read error: %s", s->path, strerror(errno));
    return -1;
  }
  s->zs.avail_in += (uInt)got;
  return (long)s->zs.avail_in;
}

/* Reads up to n bytes into buf; *got is how many were read (fewer only at
 * the end of the data). */
static kiln_status src_read(idx_src *s, void *buf, size_t n, size_t *got) {
  *got = 0;
  if (!s->gz) {
    size_t r = fread(buf, 1, n, s->f);
    *got = r;
    if (r < n && ferror(s->f))
      return kiln__error(KILN_IO_ERROR, "%s: read error: %s", s->path, strerror(errno));
    return KILN_OK;
  }

  unsigned char *out = buf;
  while (*got < n && !s->z_end) {
    if (s->zs.avail_in == 0 && src_refill(s) < 0) return KILN_IO_ERROR;
    if (s->zs.avail_in == 0)
      return kiln__error(KILN_CORRUPT_DATA,
                         "%s: corrupt gzip stream: unexpected end of file (the compressed data "
                         "is truncated)",
                         s->path);
    size_t want = n - *got;
    if (want > UINT32_MAX) want = UINT32_MAX;
    s->zs.next_out = out + *got;
    s->zs.avail_out = (uInt)want;
    int zr = inflate(&s->zs, Z_NO_FLUSH);
    *got += want - s->zs.avail_out;
    if (zr == Z_STREAM_END) {
      /* Another gzip member may follow (gzip concatenates); anything else
       * after the stream is garbage. */
      if (s->zs.avail_in < 2 && src_refill(s) < 0) return KILN_IO_ERROR;
      if (s->zs.avail_in == 0) {
        s->z_end = 1;
      } else if (s->zs.avail_in >= 2 && s->zs.next_in[0] == 0x1f && s->zs.next_in[1] == 0x8b) {
        if (inflateReset(&s->zs) != Z_OK)
          return kiln__error(KILN_INTERNAL, "%s: inflateReset failed", s->path);
      } else {
        return kiln__error(KILN_CORRUPT_DATA,
                           "%s: corrupt gzip stream: garbage after the end of the compressed "
                           "data",
                           s->path);
      }
    } else if (zr == Z_MEM_ERROR) {
      return kiln__error(KILN_OUT_OF_MEMORY, "%s: out of memory inflating the gzip stream",
                         s->path);
    } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
      return kiln__error(KILN_CORRUPT_DATA, "%s: corrupt gzip stream: %s", s->path,
                         s->zs.msg ? s->zs.msg : zError(zr));
    }
  }
  return KILN_OK;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static const char *idx_type_name(int t) {
  switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
    default: return "unknown";
  }
}

/* "10000x28x28" */
static void dims_str(char *buf, size_t size, int ndim, const int64_t *dims) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < ndim && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? "x" : "", (long long)dims[i]);
}

/* Counts the bytes left in s (for the "trailing bytes" message). */
static kiln_status count_rest(idx_src *s, int64_t *extra) {
  unsigned char scratch[1 << 15];
  size_t got;
  *extra = 0;
  do {
    kiln_status st = src_read(s, scratch, sizeof scratch, &got);
    if (st != KILN_OK) return st;
    *extra += (int64_t)got;
  } while (got == sizeof scratch);
  return KILN_OK;
}

kiln_status kiln_idx_read(const char *path, kiln_idx *out) {
  kiln_status st = KILN_OK;
  idx_src *s = NULL;
  uint8_t *data = NULL;

  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_idx_read: out is NULL");
  memset(out, 0, sizeof *out);
  if (!path) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_idx_read: path is NULL");

  s = kiln__calloc(1, sizeof *s);
  if (!s) return KILN_OUT_OF_MEMORY;
  s->path = path;
  s->f = fopen(path, "rb");
  if (!s->f) {
    st = kiln__error(errno == ENOENT ? KILN_NOT_FOUND : KILN_IO_ERROR, "%s: cannot open: %s",
                     path, strerror(errno));
    goto fail;
  }
  struct stat sb;
  if (fstat(fileno(s->f), &sb) != 0) {
    st = kiln__error(KILN_IO_ERROR, "%s: cannot stat: %s", path, strerror(errno));
    goto fail;
  }
  if (S_ISDIR(sb.st_mode)) {
    st = kiln__error(KILN_IO_ERROR, "%s: is a directory, not an IDX file", path);
    goto fail;
  }
  if (sb.st_size == 0) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: empty file (0 bytes); not an IDX file", path);
    goto fail;
  }

  /* gzip or raw: peek at the first two bytes. */
  if (src_refill(s) < 0) {
    st = KILN_IO_ERROR;
    goto fail;
  }
  if (s->zs.avail_in >= 2 && s->in[0] == 0x1f && s->in[1] == 0x8b) {
    s->gz = 1;
    /* 16 + MAX_WBITS: gzip wrapper only. */
    int zr = inflateInit2(&s->zs, 16 + MAX_WBITS);
    if (zr != Z_OK) {
      st = kiln__error(zr == Z_MEM_ERROR ? KILN_OUT_OF_MEMORY : KILN_INTERNAL,
                       "%s: inflateInit2 failed: %s", path, zError(zr));
      goto fail;
    }
    s->z_live = 1;
  } else {
    /* Raw: rewind past the peeked bytes. */
    s->zs.avail_in = 0;
    s->zs.next_in = s->in;
    rewind(s->f);
  }

  /* Header: magic, type, rank. */
  unsigned char hdr[4 + 4 * KILN_MAX_DIMS];
  size_t got;
  if ((st = src_read(s, hdr, 4, &got)) != KILN_OK) goto fail;
  if (got == 0) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: empty file (the gzip stream holds 0 bytes); not an "
                     "IDX file", path);
    goto fail;
  }
  if (got < 4) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: truncated header: %zu bytes, an IDX header needs "
                     "at least 8", path, got);
    goto fail;
  }
  if (hdr[0] != 0 || hdr[1] != 0) {
    st = kiln__error(KILN_CORRUPT_DATA,
                     "%s: not an IDX file (magic 0x%08x; an IDX file starts with two zero "
                     "bytes, a type byte and the rank)",
                     path, (unsigned)be32(hdr));
    goto fail;
  }
  int type = hdr[2], ndim = hdr[3];
  if (type != 0x08) {
    st = kiln__error(KILN_CORRUPT_DATA,
                     "%s: IDX element type 0x%02x (%s) is not supported; only 0x08 (unsigned "
                     "byte) is",
                     path, (unsigned)type, idx_type_name(type));
    goto fail;
  }
  if (ndim < 1 || ndim > KILN_MAX_DIMS) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: IDX rank %d is outside 1..%d", path, ndim,
                     KILN_MAX_DIMS);
    goto fail;
  }

  /* Dimensions. */
  size_t dim_bytes = 4 * (size_t)ndim;
  if ((st = src_read(s, hdr + 4, dim_bytes, &got)) != KILN_OK) goto fail;
  if (got < dim_bytes) {
    st = kiln__error(KILN_CORRUPT_DATA,
                     "%s: truncated header: %zu bytes, an IDX header of rank %d needs %zu", path,
                     4 + got, ndim, 4 + dim_bytes);
    goto fail;
  }
  int64_t count = 1;
  const int64_t max_count = (int64_t)(SIZE_MAX < INT64_MAX ? SIZE_MAX : INT64_MAX);
  for (int i = 0; i < ndim; i++) {
    out->dims[i] = be32(hdr + 4 + 4 * i);
    if (out->dims[i] == 0) {
      st = kiln__error(KILN_CORRUPT_DATA, "%s: IDX dimension %d of %d is 0", path, i + 1, ndim);
      goto fail;
    }
    if (count > max_count / out->dims[i]) {
      st = kiln__error(KILN_CORRUPT_DATA,
                       "%s: IDX dimensions multiply to more than %lld bytes (dimension %d is "
                       "%lld)",
                       path, (long long)max_count, i + 1, (long long)out->dims[i]);
      goto fail;
    }
    count *= out->dims[i];
  }
  out->ndim = ndim;
  out->count = count;
  char dstr[256];
  dims_str(dstr, sizeof dstr, ndim, out->dims);

  /* Raw files: the size is known, so say exactly what is wrong before
   * allocating anything. */
  int64_t header_size = 4 + (int64_t)dim_bytes;
  if (!s->gz && (int64_t)sb.st_size != header_size + count) {
    int64_t holds = (int64_t)sb.st_size - header_size;
    st = kiln__error(KILN_CORRUPT_DATA, "%s: %s: header declares %s = %lld bytes, file holds %lld",
                     path, holds < count ? "truncated" : "trailing bytes", dstr,
                     (long long)count, (long long)holds);
    goto fail;
  }

  /* Payload: grow the buffer as data arrives (a gzip stream's inflated size
   * is unknown until it is read). */
  size_t cap = (size_t)count < ((size_t)1 << 20) ? (size_t)count : ((size_t)1 << 20);
  size_t have = 0;
  data = kiln__malloc(cap);
  if (!data) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  for (;;) {
    if ((st = src_read(s, data + have, cap - have, &got)) != KILN_OK) goto fail;
    have += got;
    if (have < cap || have == (size_t)count) break;
    size_t ncap = cap > (size_t)count / 2 ? (size_t)count : cap * 2;
    uint8_t *nd = kiln__realloc(data, ncap);
    if (!nd) {
      st = KILN_OUT_OF_MEMORY;
      goto fail;
    }
    data = nd;
    cap = ncap;
  }
  if (have < (size_t)count) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: truncated: header declares %s = %lld bytes, file "
                     "holds %zu", path, dstr, (long long)count, have);
    goto fail;
  }
  int64_t extra;
  if ((st = count_rest(s, &extra)) != KILN_OK) goto fail;
  if (extra > 0) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: trailing bytes: header declares %s = %lld bytes, "
                     "file holds %lld", path, dstr, (long long)count,
                     (long long)(count + extra));
    goto fail;
  }

  out->data = data;
  if (s->z_live) inflateEnd(&s->zs);
  fclose(s->f);
  free(s);
  return KILN_OK;

fail:
  free(data);
  if (s) {
    if (s->z_live) inflateEnd(&s->zs);
    if (s->f) fclose(s->f);
    free(s);
  }
  memset(out, 0, sizeof *out);
  return st;
}

void kiln_idx_free(kiln_idx *idx) {
  if (!idx) return;
  free(idx->data);
  memset(idx, 0, sizeof *idx);
}
