/*
 * text.c - byte-level text datasets (kiln/text.h): the file read whole,
 * its vocabulary of distinct bytes, a 90/10 train/validation split, random
 * windows and char-rnn's contiguous streams.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln-impl.h"
#include "kiln/text.h"

#define TEXT_MIN_BYTES 20

kiln_status kiln_text_vocab(const uint8_t *vocab, int vocab_size, kiln_text *t) {
  if (!t) return kiln__error(KILN_INVALID_ARGUMENT, "text: vocabulary target is NULL");
  if (!vocab || vocab_size < 1 || vocab_size > 256)
    return kiln__error(KILN_INVALID_ARGUMENT, "text: a vocabulary needs 1..256 bytes, got %d",
                       vocab_size);
  memset(t->index, 0xff, sizeof t->index);
  for (int i = 0; i < vocab_size; i++) {
    if (i > 0 && vocab[i] <= vocab[i - 1])
      return kiln__error(KILN_CORRUPT_DATA,
                         "text: vocabulary entry %d (byte %u) does not follow %u: it must be strictly ascending",
                         i, vocab[i], vocab[i - 1]);
    t->vocab[i] = vocab[i];
    t->index[vocab[i]] = (int16_t)i;
  }
  t->vocab_size = vocab_size;
  return KILN_OK;
}

kiln_status kiln_text_load(const char *path, const uint8_t *vocab, int vocab_size, kiln_text *out) {
  if (!path || !out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_text_load: path or out is NULL");
  memset(out, 0, sizeof *out);
  kiln_status st;
  uint8_t *buf = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return kiln__error(KILN_IO_ERROR, "text '%s': cannot open: %s", path, strerror(errno));
  if (fseek(f, 0, SEEK_END) != 0) {
    st = kiln__error(KILN_IO_ERROR, "text '%s': cannot seek: %s", path, strerror(errno));
    goto fail;
  }
  long size = ftell(f);
  if (size < 0) {
    st = kiln__error(KILN_IO_ERROR, "text '%s': not a regular file (%s)", path, strerror(errno));
    goto fail;
  }
  rewind(f);
  if (size == 0) {
    st = kiln__error(KILN_CORRUPT_DATA, "text '%s': the file is empty", path);
    goto fail;
  }
  if (size < TEXT_MIN_BYTES) {
    st = kiln__error(KILN_CORRUPT_DATA,
                     "text '%s': %ld bytes is too short for a train/validation split (need >= %d)",
                     path, size, TEXT_MIN_BYTES);
    goto fail;
  }
  buf = kiln__malloc((size_t)size);
  if (!buf) {
    st = KILN_OUT_OF_MEMORY;
    goto fail;
  }
  if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
    st = kiln__error(KILN_IO_ERROR, "text '%s': short read of %ld bytes", path, size);
    goto fail;
  }
  if (vocab) {
    if ((st = kiln_text_vocab(vocab, vocab_size, out)) != KILN_OK) goto fail;
    for (long i = 0; i < size; i++) {
      if (out->index[buf[i]] < 0) {
        st = kiln__error(KILN_CORRUPT_DATA,
                         "text '%s': byte 0x%02x at offset %ld is not in the model's vocabulary of %d characters",
                         path, buf[i], i, vocab_size);
        goto fail;
      }
    }
  } else {
    int seen[256] = {0};
    uint8_t v[256];
    int n = 0;
    for (long i = 0; i < size; i++) seen[buf[i]] = 1;
    for (int b = 0; b < 256; b++)
      if (seen[b]) v[n++] = (uint8_t)b;
    if ((st = kiln_text_vocab(v, n, out)) != KILN_OK) goto fail;
  }
  for (long i = 0; i < size; i++) buf[i] = (uint8_t)out->index[buf[i]];
  fclose(f);
  out->tokens = buf;
  out->n = size;
  out->n_train = size * 9 / 10;
  return KILN_OK;

fail:
  free(buf);
  fclose(f);
  memset(out, 0, sizeof *out);
  return st;
}

void kiln_text_free(kiln_text *t) {
  if (!t) return;
  free(t->tokens);
  memset(t, 0, sizeof *t);
}

static kiln_status split_range(const kiln_text *t, int split, int64_t *begin, int64_t *len) {
  if (!t || !t->tokens) return kiln__error(KILN_INVALID_ARGUMENT, "text: no tokens loaded");
  if (split != 0 && split != 1)
    return kiln__error(KILN_INVALID_ARGUMENT, "text: split must be 0 (train) or 1 (validation), got %d", split);
  *begin = split ? t->n_train : 0;
  *len = split ? t->n - t->n_train : t->n_train;
  return KILN_OK;
}

static uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

kiln_status kiln_text_random_windows(const kiln_text *t, int split, int B, int T, uint64_t seed,
                                     uint64_t draw, int32_t *x, int32_t *y) {
  int64_t begin = 0, len = 0;
  kiln_status st = split_range(t, split, &begin, &len);
  if (st != KILN_OK) return st;
  if (B < 1 || T < 1 || !x || !y)
    return kiln__error(KILN_INVALID_ARGUMENT, "text: random windows need B >= 1, T >= 1 and buffers (B %d, T %d)", B, T);
  if (len < (int64_t)T + 1)
    return kiln__error(KILN_INVALID_ARGUMENT, "text: the %s split has %lld tokens, fewer than a window of %d + 1",
                       split ? "validation" : "train", (long long)len, T);
  uint64_t starts = (uint64_t)(len - T);
  for (int b = 0; b < B; b++) {
    uint64_t r = splitmix64(splitmix64(seed ^ splitmix64(draw)) + (uint64_t)b);
    int64_t s = begin + (int64_t)(r % starts);
    for (int i = 0; i < T; i++) {
      x[(int64_t)b * T + i] = t->tokens[s + i];
      y[(int64_t)b * T + i] = t->tokens[s + i + 1];
    }
  }
  return KILN_OK;
}

int64_t kiln_text_stream_batches(const kiln_text *t, int split, int B, int T) {
  if (!t || !t->tokens || (split != 0 && split != 1) || B < 1 || T < 1) return 0;
  int64_t len = split ? t->n - t->n_train : t->n_train;
  return (len - 1) / B / T;
}

kiln_status kiln_text_stream_batch(const kiln_text *t, int split, int B, int T, int64_t k,
                                   int32_t *x, int32_t *y) {
  int64_t begin = 0, len = 0;
  kiln_status st = split_range(t, split, &begin, &len);
  if (st != KILN_OK) return st;
  if (B < 1 || T < 1 || !x || !y || k < 0)
    return kiln__error(KILN_INVALID_ARGUMENT, "text: stream batches need B >= 1, T >= 1, k >= 0 and buffers (B %d, T %d, k %lld)",
                       B, T, (long long)k);
  int64_t n = kiln_text_stream_batches(t, split, B, T);
  if (n < 1)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "text: the %s split has %lld tokens, too few for %d streams of at least %d + 1",
                       split ? "validation" : "train", (long long)len, B, T);
  int64_t L = (len - 1) / B;
  k %= n;
  for (int b = 0; b < B; b++) {
    int64_t s = begin + b * L + k * T;
    for (int i = 0; i < T; i++) {
      x[(int64_t)b * T + i] = t->tokens[s + i];
      y[(int64_t)b * T + i] = t->tokens[s + i + 1];
    }
  }
  return KILN_OK;
}
