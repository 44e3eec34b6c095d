/*
 * ckpt_io.c - checkpoint reading and writing shared by the character models.
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

/* Room for one more entry. */
static int grow(ckpt_list *s) {
  if (s->n < s->cap) return 1;
  size_t cap = s->cap ? 2 * s->cap : 64;
  kiln_st_tensor *t = realloc(s->t, cap * sizeof *t);
  if (t) s->t = t;
  void **d = realloc(s->data, cap * sizeof *d);
  if (d) s->data = d;
  char **nm = realloc(s->names, cap * sizeof *nm);
  if (nm) s->names = nm;
  if (!t || !d || !nm) return 0;
  s->cap = cap;
  return 1;
}

kiln_status ckpt_put(ckpt_list *s, const char *name, const kiln_tensor *t, char *err, size_t errsz) {
  size_t nb = kiln_tensor_nbytes(t);
  char *nm = grow(s) ? strdup(name) : NULL;
  void *d = nm ? malloc(nb ? nb : 1) : NULL;
  if (!d) {
    free(nm);
    snprintf(err, errsz, "checkpoint: out of memory for %s", name);
    return KILN_OUT_OF_MEMORY;
  }
  kiln_status st = kiln_tensor_download(t, d, nb);
  if (st != KILN_OK) {
    free(nm);
    free(d);
    return st;
  }
  kiln_st_tensor *e = &s->t[s->n];
  memset(e, 0, sizeof *e);
  e->name = nm;
  e->dtype = KILN_F32;
  e->ndim = kiln_tensor_shape(t, e->shape);
  e->data = d;
  e->nbytes = nb;
  s->data[s->n] = d;
  s->names[s->n] = nm;
  s->n++;
  return KILN_OK;
}

kiln_status ckpt_put_u8(ckpt_list *s, const char *name, const uint8_t *data, int64_t n, char *err,
                        size_t errsz) {
  char *nm = grow(s) ? strdup(name) : NULL;
  if (!nm) {
    snprintf(err, errsz, "checkpoint: out of memory for %s", name);
    return KILN_OUT_OF_MEMORY;
  }
  kiln_st_tensor *e = &s->t[s->n];
  memset(e, 0, sizeof *e);
  e->name = nm;
  e->dtype = KILN_U8;
  e->ndim = 1;
  e->shape[0] = n;
  e->data = data;
  e->nbytes = (size_t)n;
  s->data[s->n] = NULL;
  s->names[s->n] = nm;
  s->n++;
  return KILN_OK;
}

void ckpt_list_free(ckpt_list *s) {
  for (size_t i = 0; i < s->n; i++) {
    free(s->data[i]);
    free(s->names[i]);
  }
  free(s->t);
  free(s->data);
  free(s->names);
  memset(s, 0, sizeof *s);
}

int ckpt_vocab(const kiln_safetensors *f, const char *path, const uint8_t **v, int *V, char *err,
               size_t errsz) {
  kiln_st_tensor e;
  if (kiln_safetensors_find(f, "vocab", &e) != KILN_OK || e.dtype != KILN_U8 || e.ndim != 1 ||
      e.shape[0] < 1 || e.shape[0] > 256) {
    snprintf(err, errsz, "checkpoint %s: no valid 'vocab' tensor (u8 [V], V in 1..256)", path);
    return 0;
  }
  const uint8_t *b = e.data;
  for (int64_t i = 1; i < e.shape[0]; i++)
    if (b[i] <= b[i - 1]) {
      snprintf(err, errsz, "checkpoint %s: 'vocab' is not strictly ascending at entry %lld", path,
               (long long)i);
      return 0;
    }
  *v = b;
  *V = (int)e.shape[0];
  return 1;
}

int ckpt_read_vocab(const char *path, uint8_t vocab[256], int *V, char *err, size_t errsz) {
  kiln_safetensors *f;
  if (kiln_safetensors_open(path, &f) != KILN_OK) {
    snprintf(err, errsz, "%s", kiln_last_error());
    return 0;
  }
  const uint8_t *v;
  int ok = ckpt_vocab(f, path, &v, V, err, errsz);
  if (ok) memcpy(vocab, v, (size_t)*V);
  kiln_safetensors_close(f);
  return ok;
}

kiln_status ckpt_take_adam(const kiln_safetensors *f, const char *path, const ckpt_adam *a,
                           char *err, size_t errsz) {
  char name[160];
  kiln_status st = KILN_OK;
  for (int i = 0; i < a->n && st == KILN_OK; i++) {
    snprintf(name, sizeof name, "optimizer.%s.exp_avg", a->names + (size_t)i * a->name_size);
    st = ckpt_take(f, path, name, a->exp_avg[i], err, errsz);
    snprintf(name, sizeof name, "optimizer.%s.exp_avg_sq", a->names + (size_t)i * a->name_size);
    if (st == KILN_OK) st = ckpt_take(f, path, name, a->exp_avg_sq[i], err, errsz);
  }
  if (st == KILN_OK) st = ckpt_take(f, path, "optimizer.step", a->step, err, errsz);
  kiln_st_tensor e;
  if (st == KILN_OK && a->counter && kiln_safetensors_find(f, "dropout.counter", &e) == KILN_OK)
    st = ckpt_take(f, path, "dropout.counter", a->counter, err, errsz);
  return st;
}

kiln_status ckpt_put_adam(ckpt_list *s, const ckpt_adam *a, char *err, size_t errsz) {
  char name[160];
  kiln_status st = KILN_OK;
  for (int i = 0; i < a->n && st == KILN_OK; i++) {
    snprintf(name, sizeof name, "optimizer.%s.exp_avg", a->names + (size_t)i * a->name_size);
    st = ckpt_put(s, name, a->exp_avg[i], err, errsz);
    snprintf(name, sizeof name, "optimizer.%s.exp_avg_sq", a->names + (size_t)i * a->name_size);
    if (st == KILN_OK) st = ckpt_put(s, name, a->exp_avg_sq[i], err, errsz);
  }
  if (st == KILN_OK) st = ckpt_put(s, "optimizer.step", a->step, err, errsz);
  if (st == KILN_OK && a->counter) st = ckpt_put(s, "dropout.counter", a->counter, err, errsz);
  return st;
}
