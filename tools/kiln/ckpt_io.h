/*
 * ckpt_io.h - what the CLI's character models (char_model.c, gpt_model.c)
 * share: reading a checkpoint (one tensor checked against the model's
 * shape, integer metadata in a range), collecting the tensors of one to
 * write, and the seeded random numbers they initialise from.
 */
#ifndef KILN_CLI_CKPT_IO_H
#define KILN_CLI_CKPT_IO_H

#include <stddef.h>
#include <stdint.h>

#include "kiln/data.h"
#include "kiln/kiln.h"

/* Uploads entry `name` of f (the checkpoint at path) into t after checking
 * that it is f32 of t's shape. On failure writes the message, naming the
 * file, the tensor and both shapes, into err[errsz]. */
kiln_status ckpt_take(const kiln_safetensors *f, const char *path, const char *name, kiln_tensor *t,
                      char *err, size_t errsz);

/* 1 and *v if metadata `key` is a whole decimal number in [lo, hi], else 0. */
int ckpt_meta_int(const kiln_safetensors *f, const char *key, long lo, long hi, long *v);

/* The vocabulary of f: a u8 [V] tensor "vocab", V in 1..256, strictly
 * ascending. 1 with *v pointing into f, else 0 with the message in err. */
int ckpt_vocab(const kiln_safetensors *f, const char *path, const uint8_t **v, int *V, char *err,
               size_t errsz);
/* The vocabulary of the checkpoint at path, copied into vocab (ckpt_vocab's
 * checks, and a file that does not open says why in err). */
int ckpt_read_vocab(const char *path, uint8_t vocab[256], int *V, char *err, size_t errsz);

/* Adam(W)'s state under the names PyTorch's optimizer would give: for each
 * parameter name NAME, "optimizer.NAME.exp_avg" and ".exp_avg_sq", then
 * "optimizer.step" and, if counter is not NULL, "dropout.counter" (which an
 * older checkpoint may lack: it is then left alone). */
typedef struct ckpt_adam {
  const char *names;          /* n names, name_size bytes apart (char [n][name_size]) */
  size_t name_size;
  int n;
  kiln_tensor *const *exp_avg, *const *exp_avg_sq;
  kiln_tensor *step, *counter;
} ckpt_adam;
/* Reads it from f; messages as ckpt_take. */
kiln_status ckpt_take_adam(const kiln_safetensors *f, const char *path, const ckpt_adam *a,
                           char *err, size_t errsz);

/* The tensors of a checkpoint being written, each downloaded when added;
 * the list owns the copies. Zero-initialise, fill, pass t and n to
 * kiln_safetensors_save, then ckpt_list_free. */
typedef struct ckpt_list {
  kiln_st_tensor *t;
  void **data;              /* owned copies (NULL: the caller's bytes) */
  char **names;             /* owned */
  size_t n, cap;
} ckpt_list;

/* Appends tensor t (f32) as `name`, downloaded now. On failure: out of
 * memory writes its message into err[errsz]; a failed download returns
 * libkiln's status (its message is kiln_last_error()). */
kiln_status ckpt_put(ckpt_list *s, const char *name, const kiln_tensor *t, char *err, size_t errsz);
/* Appends u8 [n] bytes the caller keeps alive until the save. */
kiln_status ckpt_put_u8(ckpt_list *s, const char *name, const uint8_t *data, int64_t n, char *err,
                        size_t errsz);
void ckpt_list_free(ckpt_list *s);
/* Appends Adam(W)'s state (ckpt_adam) to s. */
kiln_status ckpt_put_adam(ckpt_list *s, const ckpt_adam *a, char *err, size_t errsz);

/* Uniform in (0, 1), a function of (seed, tensor t, element i, draw k)
 * only (splitmix64 chained), so an initialisation never depends on order
 * or threads. */
static inline uint64_t ckpt_splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
static inline double ckpt_unit(uint64_t seed, int t, int64_t i, int k) {
  uint64_t r = ckpt_splitmix64(ckpt_splitmix64(ckpt_splitmix64(seed) ^ (uint64_t)t) +
                               (uint64_t)i * 2 + (uint64_t)k);
  return ((double)(r >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

#endif
