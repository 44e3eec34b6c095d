/*
 * tensor.c - tensors: one plugin buffer each, with a dtype and a dense
 * row-major shape. (kiln__numel lives in graph.c.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"

/* Leaves in st the message left by a plugin member, prefixed with what we
 * were doing; falls back on the status string if the plugin left none. */
static kiln_status plugin_error(kiln_status st, const kiln_device *dev, const char *what) {
  char why[1024];
  snprintf(why, sizeof why, "%s", *kiln_last_error() ? kiln_last_error() : kiln_status_string(st));
  return kiln__error(st, "%s on backend '%s': %s", what, dev->plugin->entry->name, why);
}

static const char *tensor_str(const kiln_tensor *t, char *buf, size_t size) {
  char shape[256];
  snprintf(buf, size, "%s %s", kiln_dtype_name(t->dtype),
           kiln__shape_str(shape, sizeof shape, t->ndim, t->shape));
  return buf;
}

kiln_status kiln_tensor_create(kiln_device *dev, kiln_dtype dtype, int ndim, const int64_t *shape,
                               kiln_tensor **out) {
  char sb[256];
  if (!dev || !out)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_create: %s is NULL",
                       !dev ? "dev" : "out");
  *out = NULL;
  size_t esize = kiln_dtype_size(dtype);
  if (esize == 0)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_create: unknown dtype %d",
                       (int)dtype);
  if (ndim < 0 || ndim > KILN_MAX_DIMS)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_tensor_create: ndim %d is out of range 0..%d", ndim, KILN_MAX_DIMS);
  if (ndim > 0 && !shape)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_create: ndim %d but shape is NULL",
                       ndim);
  uint64_t numel = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 1)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "kiln_tensor_create: shape %s: dim %d is %lld, every dim must be >= 1",
                         kiln__shape_str(sb, sizeof sb, ndim, shape), i, (long long)shape[i]);
    if (numel > (uint64_t)INT64_MAX / (uint64_t)shape[i] / esize)
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "kiln_tensor_create: %s %s is too large to address",
                         kiln_dtype_name(dtype), kiln__shape_str(sb, sizeof sb, ndim, shape));
    numel *= (uint64_t)shape[i];
  }
  uint64_t nbytes = numel * esize;
  if (nbytes > SIZE_MAX)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_create: %llu bytes exceed size_t",
                       (unsigned long long)nbytes);

  kiln_tensor *t = kiln__calloc(1, sizeof *t);
  if (!t) return KILN_OUT_OF_MEMORY;
  t->dev = dev;
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < KILN_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
  t->numel = (int64_t)numel;
  t->nbytes = (size_t)nbytes;
  t->offset = 0;

  kiln_clear_error();
  kiln_status st = dev->plugin->api->buffer_alloc(dev->pdev, nbytes, &t->buf);
  if (st != KILN_OK) {
    char what[300];
    snprintf(what, sizeof what, "allocating %llu bytes for tensor %s",
             (unsigned long long)nbytes, tensor_str(t, sb, sizeof sb));
    plugin_error(st, dev, what);
    free(t);
    return st;
  }
  *out = t;
  return KILN_OK;
}

void kiln_tensor_destroy(kiln_tensor *t) {
  if (!t) return;
  if (t->buf) t->dev->plugin->api->buffer_free(t->dev->pdev, t->buf);
  free(t);
}

kiln_status kiln_tensor_upload(kiln_tensor *t, const void *src, size_t nbytes) {
  char tb[300];
  if (!t || !src)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_upload: %s is NULL",
                       !t ? "tensor" : "src");
  if (nbytes != t->nbytes)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_tensor_upload: tensor %s holds %zu bytes, but %zu bytes were given",
                       tensor_str(t, tb, sizeof tb), t->nbytes, nbytes);
  kiln_clear_error();
  kiln_status st =
      t->dev->plugin->api->buffer_write(t->dev->pdev, t->buf, t->offset, src, nbytes);
  if (st != KILN_OK) {
    char what[350];
    snprintf(what, sizeof what, "uploading %zu bytes into tensor %s", nbytes,
             tensor_str(t, tb, sizeof tb));
    return plugin_error(st, t->dev, what);
  }
  return KILN_OK;
}

kiln_status kiln_tensor_download(const kiln_tensor *t, void *dst, size_t nbytes) {
  char tb[300];
  if (!t || !dst)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_download: %s is NULL",
                       !t ? "tensor" : "dst");
  if (nbytes != t->nbytes)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_tensor_download: tensor %s holds %zu bytes, but %zu bytes were given",
                       tensor_str(t, tb, sizeof tb), t->nbytes, nbytes);
  kiln_clear_error();
  kiln_status st = t->dev->plugin->api->buffer_read(t->dev->pdev, t->buf, t->offset, dst, nbytes);
  if (st != KILN_OK) {
    char what[350];
    snprintf(what, sizeof what, "downloading %zu bytes from tensor %s", nbytes,
             tensor_str(t, tb, sizeof tb));
    return plugin_error(st, t->dev, what);
  }
  return KILN_OK;
}

kiln_status kiln_tensor_copy(kiln_tensor *dst, const kiln_tensor *src) {
  char db[300], sb[300];
  if (!dst || !src)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_tensor_copy: %s is NULL",
                       !dst ? "dst" : "src");
  if (dst->dev != src->dev)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_tensor_copy: dst %s and src %s are on different devices; download "
                       "and upload to move data between devices",
                       tensor_str(dst, db, sizeof db), tensor_str(src, sb, sizeof sb));
  if (dst->dtype != src->dtype)
    return kiln__error(KILN_DTYPE_MISMATCH, "kiln_tensor_copy: dst %s and src %s differ in dtype",
                       tensor_str(dst, db, sizeof db), tensor_str(src, sb, sizeof sb));
  if (dst->numel != src->numel)
    return kiln__error(KILN_SHAPE_MISMATCH,
                       "kiln_tensor_copy: dst %s has %lld elements, src %s has %lld",
                       tensor_str(dst, db, sizeof db), (long long)dst->numel,
                       tensor_str(src, sb, sizeof sb), (long long)src->numel);
  if (dst == src) return KILN_OK;
  kiln_clear_error();
  kiln_status st = dst->dev->plugin->api->buffer_copy(dst->dev->pdev, dst->buf, dst->offset,
                                                      src->buf, src->offset, src->nbytes);
  if (st != KILN_OK) {
    char what[700];
    snprintf(what, sizeof what, "copying tensor %s into %s", tensor_str(src, sb, sizeof sb),
             tensor_str(dst, db, sizeof db));
    return plugin_error(st, dst->dev, what);
  }
  return KILN_OK;
}

kiln_dtype kiln_tensor_dtype(const kiln_tensor *t) { return t ? t->dtype : KILN_DTYPE_INVALID; }

int kiln_tensor_ndim(const kiln_tensor *t) { return t ? t->ndim : 0; }

int64_t kiln_tensor_dim(const kiln_tensor *t, int axis) {
  if (!t) return 0;
  if (axis < 0) axis += t->ndim;
  if (axis < 0 || axis >= t->ndim) return 0;
  return t->shape[axis];
}

int kiln_tensor_shape(const kiln_tensor *t, int64_t *shape) {
  if (!t) return 0;
  if (shape)
    for (int i = 0; i < KILN_MAX_DIMS; i++) shape[i] = t->shape[i];
  return t->ndim;
}

int64_t kiln_tensor_numel(const kiln_tensor *t) { return t ? t->numel : 0; }

size_t kiln_tensor_nbytes(const kiln_tensor *t) { return t ? t->nbytes : 0; }

kiln_device *kiln_tensor_device(const kiln_tensor *t) { return t ? t->dev : NULL; }
