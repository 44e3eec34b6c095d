/*
 * kiln/text.h - byte-level text datasets for character language models.
 *
 * A text file is read whole; its vocabulary is the sorted set of distinct
 * bytes in it (so a model's vocabulary is known from the file alone and is
 * stored in checkpoints), and every byte becomes its index in that
 * vocabulary. The first 90% of the tokens are the training split, the rest
 * the validation split, as char-rnn does.
 */
#ifndef KILN_TEXT_H
#define KILN_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "export.h"
#include "status.h"

KILN_EXTERN_C_BEGIN

typedef struct kiln_text {
  int vocab_size;             /* distinct bytes, 1..256 */
  uint8_t vocab[256];         /* vocab[id] = the byte; ascending */
  int16_t index[256];         /* index[byte] = its id, or -1 */
  int64_t n;                  /* tokens */
  uint8_t *tokens;            /* n ids; owned, free with kiln_text_free */
  int64_t n_train;            /* tokens [0, n_train) train, [n_train, n) validate */
} kiln_text;

/** Reads a text file and builds its vocabulary. vocab/vocab_size: NULL/0
 *  to build the vocabulary from the file, or a checkpoint's vocabulary
 *  (ascending distinct bytes), in which case a byte outside it is refused
 *  with its offset. Refuses (KILN_IO_ERROR, KILN_CORRUPT_DATA) a missing or
 *  unreadable file, an empty one, and one too short to split (< 20 bytes).
 *  Free with kiln_text_free(). */
KILN_API kiln_status kiln_text_load(const char *path, const uint8_t *vocab, int vocab_size,
                                    kiln_text *out);
KILN_API void kiln_text_free(kiln_text *t);

/** Validates a vocabulary (1..256 strictly ascending bytes) and fills
 *  t->vocab, t->vocab_size and t->index; t holds no tokens. */
KILN_API kiln_status kiln_text_vocab(const uint8_t *vocab, int vocab_size, kiln_text *t);

/** Random windows: for each b < B, a start s uniform in the split
 *  (split 0 = train, 1 = validation), drawn from (seed, draw, b) only;
 *  x[b, t] = tokens[s + t] and y[b, t] = tokens[s + t + 1], t < T.
 *  x and y hold B*T int32 each. KILN_INVALID_ARGUMENT if the split is
 *  shorter than T + 1 tokens. */
KILN_API kiln_status kiln_text_random_windows(const kiln_text *t, int split, int B, int T,
                                              uint64_t seed, uint64_t draw, int32_t *x, int32_t *y);

/** Contiguous streams (char-rnn's batches, for a hidden state carried from
 *  one batch to the next): the split is cut into B equal streams of
 *  L = (len - 1) / B tokens, and batch k reads, in stream b, the window
 *  starting at b*L + k*T: x[b, t] = tokens[start + t], y the next tokens.
 *  The number of batches per pass is L / T (at least 1 is required:
 *  KILN_INVALID_ARGUMENT otherwise); k is taken modulo it. */
KILN_API kiln_status kiln_text_stream_batch(const kiln_text *t, int split, int B, int T, int64_t k,
                                            int32_t *x, int32_t *y);
/** Batches per pass of kiln_text_stream_batch() (0 if the split is too short). */
KILN_API int64_t kiln_text_stream_batches(const kiln_text *t, int split, int B, int T);

KILN_EXTERN_C_END

#endif /* KILN_TEXT_H */
