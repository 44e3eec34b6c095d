/*
 * fuzz_text.c - kiln_text_load on arbitrary bytes, with or without a
 * checkpoint's vocabulary, then the batch readers on what it accepted.
 *
 * Input: byte 0 says whether a vocabulary is given and bytes 1..2 pick
 * B and T for the batch readers; with a vocabulary, byte 3 is its length
 * and the next bytes are it (valid or not); the rest is the file.
 * Properties: a refusal leaves a message; an accepted text has a strictly
 * ascending vocabulary that index[] inverts, every token inside it, a
 * split with both parts non-empty, and batch readers that either refuse
 * or return in-vocabulary ids whose y is x shifted by one.
 */
#include "fuzz_common.h"
#include "kiln/text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_reader r = {data, size};
  int with_vocab = fz_u8(&r) & 1;
  int B = 1 + fz_pick(&r, 4), T = 1 + fz_pick(&r, 16);
  uint8_t vocab[256];
  int nv = 0;
  if (with_vocab) {
    nv = fz_u8(&r);
    for (int i = 0; i < nv; i++) vocab[i] = fz_u8(&r);
  }
  const char *path = fz_memfile(r.p, r.n);
  kiln_text t;
  memset(&t, 0xA5, sizeof t);
  kiln_status rc = kiln_text_load(path, with_vocab ? vocab : NULL, nv, &t);
  if (rc != KILN_OK) {
    FZ_CHECK(kiln_last_error()[0] != '\0');
    return 0;
  }
  FZ_CHECK(t.vocab_size >= 1 && t.vocab_size <= 256);
  for (int i = 1; i < t.vocab_size; i++) FZ_CHECK(t.vocab[i - 1] < t.vocab[i]);
  for (int i = 0; i < t.vocab_size; i++) FZ_CHECK(t.index[t.vocab[i]] == i);
  FZ_CHECK(t.n == (int64_t)r.n);
  FZ_CHECK(t.n_train > 0 && t.n_train < t.n);
  for (int64_t i = 0; i < t.n; i++) {
    FZ_CHECK(t.tokens[i] < t.vocab_size);
    FZ_CHECK(t.vocab[t.tokens[i]] == r.p[i]);
  }
  int32_t *x = malloc(sizeof(int32_t) * (size_t)(B * T));
  int32_t *y = malloc(sizeof(int32_t) * (size_t)(B * T));
  FZ_CHECK(x && y);
  for (int split = 0; split < 2; split++) {
    for (uint64_t draw = 0; draw < 3; draw++) {
      if (kiln_text_random_windows(&t, split, B, T, 7, draw, x, y) != KILN_OK) {
        FZ_CHECK(kiln_last_error()[0] != '\0');
        break;
      }
      for (int i = 0; i < B * T; i++) FZ_CHECK(x[i] >= 0 && x[i] < t.vocab_size);
      for (int b = 0; b < B; b++)
        for (int k = 0; k + 1 < T; k++) FZ_CHECK(y[b * T + k] == x[b * T + k + 1]);
    }
    int64_t nb = kiln_text_stream_batches(&t, split, B, T);
    FZ_CHECK(nb >= 0);
    for (int64_t k = 0; k < 2; k++) {
      rc = kiln_text_stream_batch(&t, split, B, T, k, x, y);
      FZ_CHECK((rc == KILN_OK) == (nb > 0));
      if (rc != KILN_OK) break;
      for (int i = 0; i < B * T; i++) FZ_CHECK(y[i] >= 0 && y[i] < t.vocab_size);
    }
  }
  free(x);
  free(y);
  kiln_text_free(&t);
  return 0;
}
