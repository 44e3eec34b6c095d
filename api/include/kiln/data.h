/*
 * kiln/data.h - datasets and checkpoint files.
 *
 *  - IDX files (MNIST's format), gzip-compressed or raw, fully validated.
 *  - MNIST as a whole: the four IDX files of a directory.
 *  - safetensors files: the format of Hugging Face's safetensors, readable by
 *    Python's safetensors and PyTorch; written atomically (temporary file,
 *    fsync, rename), so a crash during a save leaves the previous file whole.
 *
 * Every loader names the file and what is wrong on failure
 * (KILN_IO_ERROR, KILN_CORRUPT_DATA, KILN_NOT_FOUND).
 */
#ifndef KILN_DATA_H
#define KILN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "export.h"
#include "status.h"

KILN_EXTERN_C_BEGIN

/* ---- IDX ------------------------------------------------------------------ */

/* A decoded IDX file. Only the u8 element type (0x08) is accepted, which is
 * what MNIST uses. */
typedef struct kiln_idx {
  int ndim;                   /* 1..KILN_MAX_DIMS */
  int64_t dims[KILN_MAX_DIMS];
  int64_t count;              /* product of dims */
  uint8_t *data;              /* count bytes; owned, free with kiln_idx_free */
} kiln_idx;

/** Reads an IDX file; gzip is detected by its magic bytes. Validates the
 *  magic number, the element type, the rank, and that the payload is exactly
 *  the size the header declares. */
KILN_API kiln_status kiln_idx_read(const char *path, kiln_idx *out);
KILN_API void kiln_idx_free(kiln_idx *idx);

/* ---- MNIST ---------------------------------------------------------------- */

typedef struct kiln_mnist {
  int64_t n;                  /* images */
  int rows, cols;             /* 28, 28 */
  uint8_t *images;            /* n * rows * cols, row-major, 0..255 */
  uint8_t *labels;            /* n, 0..9 */
} kiln_mnist;

/** Loads the training (train = 1) or test (train = 0) split from dir, which
 *  holds {train,t10k}-{images-idx3,labels-idx1}-ubyte, each with or without
 *  .gz. limit > 0 keeps only the first `limit` samples. Checks that images
 *  and labels agree in count and that labels are 0..9. */
KILN_API kiln_status kiln_mnist_load(const char *dir, int train, int64_t limit, kiln_mnist *out);
KILN_API void kiln_mnist_free(kiln_mnist *m);

/** Resolves the data directory: `explicit_dir` if non-NULL, else $KILN_DATA,
 *  else the user cache ($XDG_CACHE_HOME/kiln or ~/.cache/kiln). Writes it
 *  to buf. */
KILN_API kiln_status kiln_data_dir(const char *explicit_dir, char *buf, size_t size);

/* ---- safetensors ---------------------------------------------------------- */

typedef struct kiln_st_tensor {
  const char *name;           /* "conv1.weight" */
  kiln_dtype dtype;           /* stored as "F32", "F16", "BF16", "I32", "U8" */
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  const void *data;           /* little-endian, row-major */
  size_t nbytes;
} kiln_st_tensor;

/** Writes tensors (and optional string metadata: n_meta key/value pairs,
 *  stored under "__metadata__") to path atomically: path.tmp-PID is written
 *  and fsync'd, then renamed over path, and the directory fsync'd. */
KILN_API kiln_status kiln_safetensors_save(const char *path, const kiln_st_tensor *tensors,
                                           size_t n, const char *const *meta_keys,
                                           const char *const *meta_values, size_t n_meta);

typedef struct kiln_safetensors kiln_safetensors;

/** Opens and fully validates a safetensors file (header JSON, dtypes,
 *  shapes, offsets inside the file, no overlaps). */
KILN_API kiln_status kiln_safetensors_open(const char *path, kiln_safetensors **out);
KILN_API void kiln_safetensors_close(kiln_safetensors *st);
KILN_API size_t kiln_safetensors_count(const kiln_safetensors *st);
/** Entry i; strings and data are owned by st. */
KILN_API kiln_status kiln_safetensors_get(const kiln_safetensors *st, size_t i, kiln_st_tensor *out);
/** Entry by name; KILN_NOT_FOUND (with a message naming it and the file). */
KILN_API kiln_status kiln_safetensors_find(const kiln_safetensors *st, const char *name,
                                           kiln_st_tensor *out);
/** Metadata value for key, or NULL. Owned by st. */
KILN_API const char *kiln_safetensors_meta(const kiln_safetensors *st, const char *key);

KILN_EXTERN_C_END

#endif /* KILN_DATA_H */
