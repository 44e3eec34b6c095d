/*
 * nn_checkpoint.c - kiln/nn.h's checkpoints: safetensors files holding the
 * parameters by their PyTorch-style names, the optimizer state
 * ("optimizer.NAME.exp_avg", "optimizer.NAME.exp_avg_sq",
 * "optimizer.NAME.momentum_buffer", "optimizer.step" as an f32 scalar), and
 * string metadata. Saves are atomic (kiln_safetensors_save); loads check
 * every tensor's presence, dtype and shape before changing anything.
 */
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/data.h"
#include "nn-impl.h"

#define META_MAX 24

typedef struct ckpt_writer {
  kiln_st_tensor *t;
  char **names;
  void **bufs;
  size_t n, cap;
  const char *keys[META_MAX];
  char values[META_MAX][320];
  const char *vptr[META_MAX];
  size_t n_meta;
} ckpt_writer;

static void writer_free(ckpt_writer *w) {
  for (size_t i = 0; i < w->n; i++) {
    free(w->names[i]);
    free(w->bufs[i]);
  }
  free(w->t);
  free(w->names);
  free(w->bufs);
}

static void meta_add(ckpt_writer *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void meta_add(ckpt_writer *w, const char *key, const char *fmt, ...) {
  if (w->n_meta == META_MAX) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->values[w->n_meta], sizeof w->values[0], fmt, ap);
  va_end(ap);
  w->keys[w->n_meta] = key;
  w->vptr[w->n_meta] = w->values[w->n_meta];
  w->n_meta++;
}

/* Downloads tensor src and appends it under name. */
static kiln_status writer_add(ckpt_writer *w, const char *name, const kiln_tensor *src) {
  if (w->n == w->cap) {
    size_t cap = w->cap ? 2 * w->cap : 16;
    kiln_st_tensor *t = kiln__realloc(w->t, cap * sizeof *t);
    if (!t) return KILN_OUT_OF_MEMORY;
    w->t = t;
    char **names = kiln__realloc(w->names, cap * sizeof *names);
    if (!names) return KILN_OUT_OF_MEMORY;
    w->names = names;
    void **bufs = kiln__realloc(w->bufs, cap * sizeof *bufs);
    if (!bufs) return KILN_OUT_OF_MEMORY;
    w->bufs = bufs;
    w->cap = cap;
  }
  size_t nbytes = kiln_tensor_nbytes(src);
  char *nm = kiln__strdup(name);
  void *buf = kiln__malloc(nbytes ? nbytes : 1);
  if (!nm || !buf) {
    free(nm);
    free(buf);
    return KILN_OUT_OF_MEMORY;
  }
  w->names[w->n] = nm;
  w->bufs[w->n] = buf;
  kiln_st_tensor *e = &w->t[w->n];
  memset(e, 0, sizeof *e);
  e->name = nm;
  e->dtype = kiln_tensor_dtype(src);
  e->ndim = kiln_tensor_shape(src, e->shape);
  e->data = buf;
  e->nbytes = nbytes;
  w->n++;
  return kiln_tensor_download(src, buf, nbytes);
}

static kiln_status add_params(ckpt_writer *w, const kiln_model *m) {
  meta_add(w, "kiln.model", "%s", m->name);
  meta_add(w, "kiln.architecture", "%s", m->arch);
  meta_add(w, "kiln.version", "%s", kiln_version_string());
  for (size_t i = 0; i < m->n_params; i++) {
    kiln_status st = writer_add(w, m->params[i].name, m->params[i].t);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

static kiln_status writer_save(ckpt_writer *w, const char *path) {
  kiln_status st = kiln_safetensors_save(path, w->t, w->n, w->keys, w->vptr, w->n_meta);
  if (st != KILN_OK && !strstr(kiln_last_error(), path))
    return kiln__error(st, "saving checkpoint %s: %s", path, kiln_last_error());
  return st;
}

kiln_status kiln_model_save(const kiln_model *m, const char *path) {
  if (!m || !path) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_save: NULL argument");
  ckpt_writer w;
  memset(&w, 0, sizeof w);
  kiln_status st = add_params(&w, m);
  if (st == KILN_OK) st = writer_save(&w, path);
  writer_free(&w);
  return st;
}

kiln_status kiln_trainer_save(const kiln_trainer *t, const char *path) {
  if (!t || !path) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_save: NULL argument");
  const kiln_model *m = t->m;
  ckpt_writer w;
  memset(&w, 0, sizeof w);
  char name[192];
  kiln_status st = add_params(&w, m);
  meta_add(&w, "epoch", "%" PRId64, t->epoch);
  meta_add(&w, "step", "%" PRId64, t->step);
  meta_add(&w, "seed", "%" PRIu64, t->seed);
  meta_add(&w, "batch", "%d", t->batch);
  if (t->has_optim) {
    const kiln_optimizer_config *o = &t->opt;
    const char *s1 = kiln__nn_state1_suffix(t), *s2 = kiln__nn_state2_suffix(t);
    meta_add(&w, "optimizer", "%s", kiln_optimizer_name(o->kind));
    meta_add(&w, "lr", "%.9g", (double)o->lr);
    meta_add(&w, "beta1", "%.9g", (double)o->beta1);
    meta_add(&w, "beta2", "%.9g", (double)o->beta2);
    meta_add(&w, "eps", "%.9g", (double)o->eps);
    meta_add(&w, "weight_decay", "%.9g", (double)o->weight_decay);
    meta_add(&w, "momentum", "%.9g", (double)o->momentum);
    meta_add(&w, "nesterov", "%d", o->nesterov);
    for (size_t i = 0; st == KILN_OK && i < m->n_params; i++) {
      if (s1) {
        snprintf(name, sizeof name, "optimizer.%s.%s", m->params[i].name, s1);
        st = writer_add(&w, name, t->state1[i]);
      }
      if (s2 && st == KILN_OK) {
        snprintf(name, sizeof name, "optimizer.%s.%s", m->params[i].name, s2);
        st = writer_add(&w, name, t->state2[i]);
      }
    }
    /* The step as PyTorch's Adam keeps it: an f32 scalar. For SGD the device
     * counter is not used by the graph, so the host count is written. */
    if (st == KILN_OK) {
      float step = (float)t->step;
      if (t->opt.kind == KILN_OPTIM_SGD) st = kiln_tensor_upload(t->step_t, &step, sizeof step);
      if (st == KILN_OK) st = writer_add(&w, "optimizer.step", t->step_t);
    }
  }
  if (st == KILN_OK) st = writer_save(&w, path);
  writer_free(&w);
  return st;
}

/* ---- loading --------------------------------------------------------------- */

static kiln_status open_checked(const char *path, const kiln_model *m, kiln_safetensors **out) {
  *out = NULL;
  kiln_status st = kiln_safetensors_open(path, out);
  if (st != KILN_OK) {
    if (!strstr(kiln_last_error(), path))
      return kiln__error(st, "checkpoint %s: %s", path, kiln_last_error());
    return st;
  }
  const char *name = kiln_safetensors_meta(*out, "kiln.model");
  const char *arch = kiln_safetensors_meta(*out, "kiln.architecture");
  if (!name) {
    st = kiln__error(KILN_INVALID_ARGUMENT,
                     "checkpoint %s: no kiln.model metadata; it is not a kiln checkpoint of "
                     "model '%s'", path, m->name);
  } else if (strcmp(name, m->name) != 0) {
    st = kiln__error(KILN_INVALID_ARGUMENT, "checkpoint %s is of model '%s', not '%s'", path,
                     name, m->name);
  } else if (arch && strcmp(arch, m->arch) != 0) {
    st = kiln__error(KILN_SHAPE_MISMATCH,
                     "checkpoint %s: model '%s' has architecture '%s' in the file but '%s' here",
                     path, name, arch, m->arch);
  }
  if (st != KILN_OK) {
    kiln_safetensors_close(*out);
    *out = NULL;
  }
  return st;
}

/* Finds `name` in st and checks it against `like` (dtype, shape, size). */
static kiln_status find_checked(kiln_safetensors *st, const char *path, const char *name,
                                const kiln_tensor *like, kiln_st_tensor *out) {
  char b1[128], b2[128];
  int64_t shape[KILN_MAX_DIMS];
  int nd = kiln_tensor_shape(like, shape);
  if (kiln_safetensors_find(st, name, out) != KILN_OK)
    return kiln__error(KILN_NOT_FOUND, "checkpoint %s: tensor '%s' is missing", path, name);
  if (out->dtype != kiln_tensor_dtype(like))
    return kiln__error(KILN_DTYPE_MISMATCH, "checkpoint %s: tensor '%s' is %s, expected %s", path,
                       name, kiln_dtype_name(out->dtype), kiln_dtype_name(kiln_tensor_dtype(like)));
  if (out->ndim != nd || memcmp(out->shape, shape, (size_t)nd * sizeof *shape) != 0)
    return kiln__error(KILN_SHAPE_MISMATCH, "checkpoint %s: tensor '%s' has shape %s, expected %s",
                       path, name, kiln__shape_str(b1, sizeof b1, out->ndim, out->shape),
                       kiln__shape_str(b2, sizeof b2, nd, shape));
  if (out->nbytes != kiln_tensor_nbytes(like))
    return kiln__error(KILN_CORRUPT_DATA, "checkpoint %s: tensor '%s' holds %zu bytes, expected %zu",
                       path, name, out->nbytes, kiln_tensor_nbytes(like));
  return KILN_OK;
}

typedef struct ckpt_load {
  kiln_tensor **dst;          /* where each found tensor goes */
  kiln_st_tensor *src;
  const char **names;
  size_t n;
} ckpt_load;

/* Collects the tensors to load: the parameters, and with t the optimizer
 * state; checks each, and refuses any other tensor in the file (optimizer
 * entries are allowed, and skipped, when t is NULL). */
static kiln_status plan_load(kiln_safetensors *st, const char *path, const kiln_model *m,
                             const kiln_trainer *t, ckpt_load *L, char (*names)[192]) {
  const char *s1 = t ? kiln__nn_state1_suffix(t) : NULL, *s2 = t ? kiln__nn_state2_suffix(t) : NULL;
  kiln_status rc;
  L->n = 0;
  for (size_t i = 0; i < m->n_params; i++) {
    snprintf(names[L->n], 192, "%s", m->params[i].name);
    L->dst[L->n++] = m->params[i].t;
    if (s1) {
      snprintf(names[L->n], 192, "optimizer.%s.%s", m->params[i].name, s1);
      L->dst[L->n++] = t->state1[i];
    }
    if (s2) {
      snprintf(names[L->n], 192, "optimizer.%s.%s", m->params[i].name, s2);
      L->dst[L->n++] = t->state2[i];
    }
  }
  if (t && t->has_optim) {
    snprintf(names[L->n], 192, "optimizer.step");
    L->dst[L->n++] = t->step_t;
  }
  for (size_t i = 0; i < L->n; i++) {
    L->names[i] = names[i];
    if ((rc = find_checked(st, path, names[i], L->dst[i], &L->src[i])) != KILN_OK) return rc;
  }
  size_t count = kiln_safetensors_count(st);
  for (size_t i = 0; i < count; i++) {
    kiln_st_tensor e;
    if ((rc = kiln_safetensors_get(st, i, &e)) != KILN_OK) return rc;
    int known = 0;
    for (size_t k = 0; k < L->n && !known; k++) known = !strcmp(e.name, names[k]);
    if (!known && !(!t && !strncmp(e.name, "optimizer.", 10)) &&
        !(t && !t->has_optim && !strncmp(e.name, "optimizer.", 10)))
      return kiln__error(KILN_INVALID_ARGUMENT,
                         "checkpoint %s: unexpected tensor '%s' (model '%s' with %s has no such "
                         "parameter or state)", path, e.name, m->name,
                         t && t->has_optim ? kiln_optimizer_name(t->opt.kind) : "no optimizer");
  }
  return KILN_OK;
}

static kiln_status parse_meta_i64(kiln_safetensors *st, const char *path, const char *key,
                                  int64_t *out) {
  const char *v = kiln_safetensors_meta(st, key);
  if (!v)
    return kiln__error(KILN_CORRUPT_DATA, "checkpoint %s: metadata '%s' is missing", path, key);
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || end == v || *end || x < 0)
    return kiln__error(KILN_CORRUPT_DATA, "checkpoint %s: metadata %s='%s' is not a count", path,
                       key, v);
  *out = x;
  return KILN_OK;
}

/* Loads parameters (and with t, optimizer state, epoch and step). */
static kiln_status load_common(const kiln_model *m, kiln_trainer *t, const char *path) {
  kiln_safetensors *st = NULL;
  size_t cap = 3 * m->n_params + 1;
  ckpt_load L;
  memset(&L, 0, sizeof L);
  char(*names)[192] = NULL;
  int64_t epoch = 0, step = 0;
  kiln_status rc = open_checked(path, m, &st);
  if (rc != KILN_OK) return rc;
  L.dst = kiln__calloc(cap, sizeof *L.dst);
  L.src = kiln__calloc(cap, sizeof *L.src);
  L.names = kiln__calloc(cap, sizeof *L.names);
  names = kiln__calloc(cap, sizeof *names);
  if (!L.dst || !L.src || !L.names || !names) {
    rc = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  if (t && t->has_optim) {
    const char *opt = kiln_safetensors_meta(st, "optimizer");
    if (!opt) {
      rc = kiln__error(KILN_INVALID_ARGUMENT,
                       "checkpoint %s holds no optimizer state (saved without a trainer); it can "
                       "be evaluated but not resumed", path);
      goto fail;
    }
    if (strcmp(opt, kiln_optimizer_name(t->opt.kind)) != 0) {
      rc = kiln__error(KILN_INVALID_ARGUMENT,
                       "checkpoint %s was trained with optimizer '%s', this trainer uses '%s'",
                       path, opt, kiln_optimizer_name(t->opt.kind));
      goto fail;
    }
  }
  if (t && t->has_optim) {
    if ((rc = parse_meta_i64(st, path, "epoch", &epoch)) != KILN_OK) goto fail;
    if ((rc = parse_meta_i64(st, path, "step", &step)) != KILN_OK) goto fail;
  }
  if ((rc = plan_load(st, path, m, t, &L, names)) != KILN_OK) goto fail;
  if (t && t->has_optim) {
    /* optimizer.step is the last entry planned. */
    float fstep;
    memcpy(&fstep, L.src[L.n - 1].data, sizeof fstep);
    if ((int64_t)fstep != step) {
      rc = kiln__error(KILN_CORRUPT_DATA,
                       "checkpoint %s: tensor 'optimizer.step' holds %g but metadata step=%lld",
                       path, (double)fstep, (long long)step);
      goto fail;
    }
  }
  /* Everything checked: now change the model. */
  for (size_t i = 0; i < L.n; i++) {
    rc = kiln_tensor_upload(L.dst[i], L.src[i].data, L.src[i].nbytes);
    if (rc != KILN_OK) goto fail;
  }
  if (t && t->has_optim) {
    t->epoch = epoch;
    t->step = step;
  }
fail:
  free(L.dst);
  free(L.src);
  free(L.names);
  free(names);
  kiln_safetensors_close(st);
  return rc;
}

kiln_status kiln_model_load(kiln_model *m, const char *path) {
  if (!m || !path) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_load: NULL argument");
  return load_common(m, NULL, path);
}

kiln_status kiln_trainer_load(kiln_trainer *t, const char *path) {
  if (!t || !path) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_trainer_load: NULL argument");
  return load_common(t->m, t, path);
}

kiln_status kiln_checkpoint_meta(const char *path, const char *key, char *buf, size_t size) {
  if (!path || !key || !buf || !size)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_checkpoint_meta: NULL argument");
  kiln_safetensors *st = NULL;
  kiln_status rc = kiln_safetensors_open(path, &st);
  if (rc != KILN_OK) return rc;
  const char *v = kiln_safetensors_meta(st, key);
  if (v) {
    snprintf(buf, size, "%s", v);
  } else {
    rc = kiln__error(KILN_NOT_FOUND, "checkpoint %s: no metadata '%s'", path, key);
  }
  kiln_safetensors_close(st);
  return rc;
}
