/*
 * mnist.c - MNIST as a whole: the image and label IDX files of one split.
 *
 *   DIR/{train,t10k}-images-idx3-ubyte[.gz]   u8 [N, rows, cols]
 *   DIR/{train,t10k}-labels-idx1-ubyte[.gz]   u8 [N], each 0..9
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kiln-impl.h"
#include "kiln/data.h"

/* Finds DIR/NAME or DIR/NAME.gz (the uncompressed copy first: it is what a
 * user who ran gunzip meant). */
static kiln_status find_file(const char *dir, const char *name, char *buf, size_t size) {
  struct stat sb;
  int n = snprintf(buf, size, "%s/%s", dir, name);
  if (n < 0 || (size_t)n + 4 >= size)
    return kiln__error(KILN_INVALID_ARGUMENT, "MNIST: directory path '%s' is too long", dir);
  if (stat(buf, &sb) == 0) return KILN_OK;
  snprintf(buf, size, "%s/%s.gz", dir, name);
  if (stat(buf, &sb) == 0) return KILN_OK;
  return kiln__error(KILN_NOT_FOUND,
                     "MNIST file not found: tried %s/%s.gz and %s/%s; run `kiln fetch mnist` "
                     "to download it, or give --data DIR (or set KILN_DATA) naming a directory "
                     "that holds mnist/",
                     dir, name, dir, name);
}

kiln_status kiln_mnist_load(const char *dir, int train, int64_t limit, kiln_mnist *out) {
  kiln_status st;
  kiln_idx img, lab;
  char ipath[PATH_MAX + 64], lpath[PATH_MAX + 64];
  const char *split = train ? "train" : "t10k";
  char iname[64], lname[64];

  memset(&img, 0, sizeof img);
  memset(&lab, 0, sizeof lab);
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_mnist_load: out is NULL");
  memset(out, 0, sizeof *out);
  if (!dir) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_mnist_load: dir is NULL");
  if (limit < 0)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_mnist_load: limit %lld is negative",
                       (long long)limit);

  snprintf(iname, sizeof iname, "%s-images-idx3-ubyte", split);
  snprintf(lname, sizeof lname, "%s-labels-idx1-ubyte", split);
  if ((st = find_file(dir, iname, ipath, sizeof ipath)) != KILN_OK) goto fail;
  if ((st = find_file(dir, lname, lpath, sizeof lpath)) != KILN_OK) goto fail;

  if ((st = kiln_idx_read(ipath, &img)) != KILN_OK) goto fail;
  if (img.ndim != 3) {
    st = kiln__error(KILN_CORRUPT_DATA,
                     "%s: MNIST images must have rank 3 [N, rows, cols], the file has rank %d",
                     ipath, img.ndim);
    goto fail;
  }
  if (img.dims[1] > INT_MAX || img.dims[2] > INT_MAX) {
    st = kiln__error(KILN_CORRUPT_DATA, "%s: image size %lldx%lld is too large", ipath,
                     (long long)img.dims[1], (long long)img.dims[2]);
    goto fail;
  }
  if ((st = kiln_idx_read(lpath, &lab)) != KILN_OK) goto fail;
  if (lab.ndim != 1) {
    st = kiln__error(KILN_CORRUPT_DATA,
                     "%s: MNIST labels must have rank 1 [N], the file has rank %d", lpath,
                     lab.ndim);
    goto fail;
  }
  if (lab.dims[0] != img.dims[0]) {
    st = kiln__error(KILN_CORRUPT_DATA, "MNIST %s split: %s holds %lld images but %s holds %lld "
                     "labels", split, ipath, (long long)img.dims[0], lpath,
                     (long long)lab.dims[0]);
    goto fail;
  }

  int64_t n = img.dims[0];
  if (limit > 0 && limit < n) n = limit;
  for (int64_t i = 0; i < n; i++) {
    if (lab.data[i] > 9) {
      st = kiln__error(KILN_CORRUPT_DATA, "%s: label %lld is %u; MNIST labels are 0..9", lpath,
                       (long long)i, (unsigned)lab.data[i]);
      goto fail;
    }
  }

  size_t image_bytes = (size_t)(img.dims[1] * img.dims[2]);
  out->n = n;
  out->rows = (int)img.dims[1];
  out->cols = (int)img.dims[2];
  out->images = img.data;
  out->labels = lab.data;
  if (n < img.dims[0]) {
    /* Give back what --limit dropped; a failed shrink keeps the old block. */
    uint8_t *p = realloc(out->images, (size_t)n * image_bytes);
    if (p) out->images = p;
    p = realloc(out->labels, (size_t)n);
    if (p) out->labels = p;
  }
  return KILN_OK;

fail:
  kiln_idx_free(&img);
  kiln_idx_free(&lab);
  memset(out, 0, sizeof *out);
  return st;
}

void kiln_mnist_free(kiln_mnist *m) {
  if (!m) return;
  free(m->images);
  free(m->labels);
  memset(m, 0, sizeof *m);
}
