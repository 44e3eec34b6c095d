/*
 * ckpt_io.c - checkpoint reading shared by the character models.
 */
#include "ckpt_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kiln_status ckpt_take(const kiln_safetensors *f, const char *path, const char *name, kiln_tensor *t,
                      char *err, size_t errsz) {
  kiln_st_tensor e;
  if (kiln_safetensors_find(f, name, &e) != KILN_OK) {
    snprintf(err, errsz, "checkpoint %s: no tensor '%s'", path, name);
    return KILN_NOT_FOUND;
  }
  int64_t shape[KILN_MAX_DIMS];
  int nd = kiln_tensor_shape(t, shape);
  int ok = e.dtype == KILN_F32 && e.ndim == nd;
  for (int i = 0; ok && i < nd; i++) ok = e.shape[i] == shape[i];
  if (!ok) {
    char want[96] = "", got[96] = "";
    for (int i = 0; i < nd; i++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? ", " : "", (long long)shape[i]);
    for (int i = 0; i < e.ndim; i++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "", (long long)e.shape[i]);
    snprintf(err, errsz, "checkpoint %s: tensor '%s' is %s [%s], the model needs f32 [%s]", path, name,
             kiln_dtype_name(e.dtype), got, want);
    return KILN_SHAPE_MISMATCH;
  }
  kiln_status st = kiln_tensor_upload(t, e.data, e.nbytes);
  if (st != KILN_OK) snprintf(err, errsz, "%s", kiln_last_error());
  return st;
}

int ckpt_meta_int(const kiln_safetensors *f, const char *key, long lo, long hi, long *v) {
  const char *s = kiln_safetensors_meta(f, key);
  if (!s) return 0;
  char *end;
  *v = strtol(s, &end, 10);
  return *s && !*end && *v >= lo && *v <= hi;
}
