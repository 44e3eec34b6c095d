/*
 * fuzz_common.h - helpers shared by the libFuzzer targets: a byte reader
 * over the fuzz input, and a memory file so the file readers (which take a
 * path) read the input without touching the disk.
 */
#ifndef KILN_FUZZ_COMMON_H
#define KILN_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kiln/kiln.h"

/* A property of the code under test; a violation is a finding (abort, so
 * libFuzzer saves the input). Not assert(): release builds drop those. */
#define FZ_CHECK(cond)                                                            \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf(stderr, "%s:%d: check failed: %s (kiln: %s)\n", __FILE__, __LINE__, \
              #cond, kiln_last_error());                                          \
      abort();                                                                    \
    }                                                                             \
  } while (0)

typedef struct fz_reader {
  const uint8_t *p;
  size_t n;
} fz_reader;

/* The next byte, or 0 once the input is used up. */
static inline uint8_t fz_u8(fz_reader *r) {
  if (r->n == 0) return 0;
  r->n--;
  return *r->p++;
}

static inline uint32_t fz_u32(fz_reader *r) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint32_t)fz_u8(r) << (8 * i);
  return v;
}

/* A value in [0, n) (n >= 1). */
static inline unsigned fz_pick(fz_reader *r, unsigned n) { return fz_u8(r) % n; }

/* Writes data into a memfd (created once) and returns a path that opens it:
 * /proc/self/fd/N. Exits the fuzzer if the kernel refuses, since every
 * later input would be skipped silently otherwise. */
static inline const char *fz_memfile(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("kiln-fuzz", 0);
    if (fd < 0) {
      perror("memfd_create");
      exit(1);
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) {
    perror("fuzz memfile");
    exit(1);
  }
  return path;
}

#endif
