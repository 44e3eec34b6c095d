/*
 * test_char_rnn.c - the byte-level text dataset (kiln/text.h) and the
 * character language model CLI: `kiln train char-lstm|char-gru` learns
 * tinyshakespeare well past the unigram baseline in a short CPU run,
 * resumes exactly, and `kiln sample` streams text from its checkpoint.
 *
 * Bounds: the unigram baseline (the validation split's cross-entropy under
 * the training split's character frequencies) is about 3.3 nats/char on
 * tinyshakespeare. A 1-layer 64-unit LSTM (GRU) reaches about 2.43 (2.38) after 150
 * iterations of 16 x 32 characters; the test asks for 0.5 below the
 * baseline, which a wrong gradient, a state that is not carried or an
 * optimizer that does not step all fail (they stay near or above 3.0).
 *
 * CPU against Vulkan: the same small char-lstm and char-gru (2 layers of 32,
 * batch 8 x 16 characters, one seed; the LSTM with dropout 0.1 between its
 * layers) trained 20 iterations on each backend give per-iteration losses
 * within 1e-3 relative (on lavapipe they differ by at most 1e-5), under the
 * Khronos validation layer, which fails any call it reports on. The losses
 * are read as `kiln train` reads them, up to three steps late on Vulkan
 * (tools/kiln/loss_lag.h), so a loss read from the wrong run fails the
 * comparison. Without a Vulkan device these tests skip and say so.
 */
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "char_model.h"
#include "loss_lag.h"
#include "kiln/kiln.h"
#include "kiln/text.h"
#include "testutil.h"

#define CHAR_CLI_TMP_PREFIX "/tmp/kiln-test-char-"
#include "char_cli.h"

/* ---- the dataset ----------------------------------------------------------- */

Test(text, tinyshakespeare_vocabulary_and_split) {
  kiln_text t;
  const char *path = tu_data_path("tinyshakespeare.txt");
  cr_assert_eq(kiln_text_load(path, NULL, 0, &t), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(t.n, 1115394);
  cr_assert_eq(t.vocab_size, 65);
  cr_assert_eq(t.n_train, 1115394 * 9 / 10);
  for (int i = 1; i < t.vocab_size; i++) cr_assert_lt(t.vocab[i - 1], t.vocab[i]);
  for (int i = 0; i < t.vocab_size; i++) cr_assert_eq(t.index[t.vocab[i]], i);
  FILE *f = fopen(path, "rb");
  char head[64];
  cr_assert_eq(fread(head, 1, sizeof head, f), sizeof head);
  fclose(f);
  for (int i = 0; i < 64; i++) cr_assert_eq(t.vocab[t.tokens[i]], (uint8_t)head[i], "token %d", i);
  kiln_text_free(&t);
}

Test(text, streams_continue_across_batches) {
  kiln_text t;
  cr_assert_eq(kiln_text_load(tu_data_path("tinyshakespeare.txt"), NULL, 0, &t), KILN_OK);
  enum { B = 4, T = 7 };
  int32_t x0[B * T], y0[B * T], x1[B * T], y1[B * T];
  for (int split = 0; split < 2; split++) {
    int64_t nb = kiln_text_stream_batches(&t, split, B, T);
    int64_t len = split ? t.n - t.n_train : t.n_train;
    cr_assert_eq(nb, (len - 1) / B / T);
    cr_assert_eq(kiln_text_stream_batch(&t, split, B, T, 5, x0, y0), KILN_OK);
    cr_assert_eq(kiln_text_stream_batch(&t, split, B, T, 6, x1, y1), KILN_OK);
    int64_t L = (len - 1) / B, base = split ? t.n_train : 0;
    for (int b = 0; b < B; b++) {
      for (int i = 0; i < T; i++) {
        cr_assert_eq(x0[b * T + i], t.tokens[base + b * L + 5 * T + i]);
        cr_assert_eq(y0[b * T + i], t.tokens[base + b * L + 5 * T + i + 1]);
        if (i + 1 < T) cr_assert_eq(y0[b * T + i], x0[b * T + i + 1]);
      }
      cr_assert_eq(x1[b * T], y0[b * T + T - 1], "stream %d continues into the next batch", b);
    }
  }
  /* batch numbers wrap around a pass */
  int64_t nb = kiln_text_stream_batches(&t, 0, B, T);
  kiln_text_stream_batch(&t, 0, B, T, nb + 5, x1, y1);
  kiln_text_stream_batch(&t, 0, B, T, 5, x0, y0);
  cr_assert_arr_eq(x0, x1, sizeof x0);
  kiln_text_free(&t);
}

Test(text, random_windows_stay_in_their_split) {
  kiln_text t;
  cr_assert_eq(kiln_text_load(tu_data_path("tinyshakespeare.txt"), NULL, 0, &t), KILN_OK);
  enum { B = 64, T = 16 };
  static int32_t x[B * T], y[B * T], x2[B * T], y2[B * T];
  cr_assert_eq(kiln_text_random_windows(&t, 1, B, T, 7, 3, x, y), KILN_OK);
  cr_assert_eq(kiln_text_random_windows(&t, 1, B, T, 7, 3, x2, y2), KILN_OK);
  cr_assert_arr_eq(x, x2, sizeof x, "the same (seed, draw) gives the same windows");
  cr_assert_eq(kiln_text_random_windows(&t, 1, B, T, 7, 4, x2, y2), KILN_OK);
  cr_assert(memcmp(x, x2, sizeof x) != 0, "another draw gives other windows");
  /* each window is a substring of the validation split */
  for (int b = 0; b < B; b++) {
    int found = 0;
    for (int64_t s = t.n_train; s + T < t.n && !found; s++) {
      int ok = 1;
      for (int i = 0; i < T && ok; i++) ok = t.tokens[s + i] == x[b * T + i] && t.tokens[s + i + 1] == y[b * T + i];
      found = ok;
    }
    cr_assert(found, "window %d is not in the validation split", b);
  }
  kiln_text_free(&t);
}

Test(text, refusals_name_the_file_and_the_problem) {
  kiln_text t;
  const char *missing = tmp_path("missing.txt");
  cr_assert_eq(kiln_text_load(missing, NULL, 0, &t), KILN_IO_ERROR);
  cr_assert(strstr(kiln_last_error(), missing), "%s", kiln_last_error());
  const char *empty = tmp_path("empty.txt");
  write_file(empty, "", 0);
  cr_assert_eq(kiln_text_load(empty, NULL, 0, &t), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), empty) && strstr(kiln_last_error(), "empty"), "%s", kiln_last_error());
  const char *tiny = tmp_path("tiny.txt");
  write_file(tiny, "abc", 3);
  cr_assert_eq(kiln_text_load(tiny, NULL, 0, &t), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), "too short"), "%s", kiln_last_error());
  const char *odd = tmp_path("odd.txt");
  write_file(odd, "hello hello hello hello world", 29);
  const uint8_t vocab[] = {' ', 'e', 'h', 'l', 'o'};
  cr_assert_eq(kiln_text_load(odd, vocab, 5, &t), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), "0x77") && strstr(kiln_last_error(), "offset 24"), "%s",
            kiln_last_error());
  const uint8_t bad[] = {'b', 'a'};
  cr_assert_eq(kiln_text_vocab(bad, 2, &t), KILN_CORRUPT_DATA);
  cr_assert(strstr(kiln_last_error(), "ascending"), "%s", kiln_last_error());
  unlink(empty);
  unlink(tiny);
  unlink(odd);
}

/* ---- the CLI --------------------------------------------------------------- */

static void learns(const char *model, int iters) {
  static char out[1 << 16];
  const char *data = subset(), *ckpt = tmp_path("model.safetensors");
  char args[1024];
  snprintf(args, sizeof args,
           "train %s --backend cpu --data %s --layers 1 --hidden 64 --batch 16 --seq 32 --iters %d "
           "--eval-every 0 --save %s",
           model, data, iters, ckpt);
  int rc = run(args, out, sizeof out);
  cr_assert_eq(rc, 0, "kiln %s exited with %d:\n%s", args, rc, out);
  double baseline = field(out, "unigram baseline ");
  double val = field(out, "val_loss=");
  cr_assert(strstr(out, "backend=cpu"), "%s", out);
  cr_assert_gt(field(out, "tokens_per_s="), 0.0);
  cr_assert_lt(val, baseline - 0.5, "%s: validation loss %.4f is not 0.5 below the unigram baseline %.4f:\n%s",
               model, val, baseline, out);

  /* sampling streams the prompt, then --tokens characters of the vocabulary */
  static char s1[1 << 14], s2[1 << 14];
  snprintf(args, sizeof args, "sample --load %s --prompt 'ROMEO:' --tokens 300 --seed 5 --top-k 10", ckpt);
  cr_assert_eq(run(args, s1, sizeof s1), 0, "%s", s1);
  cr_assert_eq(strncmp(s1, "ROMEO:", 6), 0, "%s", s1);
  cr_assert_eq(strlen(s1), 6 + 300 + 1, "%s", s1);
  for (const char *p = s1; *p; p++)
    cr_assert((*p >= 32 && *p < 127) || *p == '\n', "byte 0x%02x is not from the text", (unsigned char)*p);
  cr_assert_eq(run(args, s2, sizeof s2), 0);
  cr_assert_str_eq(s1, s2, "the same seed samples the same text");
  snprintf(args, sizeof args, "sample --load %s --prompt 'ROMEO:' --tokens 300 --seed 6", ckpt);
  cr_assert_eq(run(args, s2, sizeof s2), 0);
  cr_assert_str_neq(s1, s2, "another seed samples other text");
  unlink(ckpt);
  unlink(data);
}

Test(char_cli, lstm_learns_and_samples, .timeout = 900) { learns("char-lstm", 150); }
Test(char_cli, gru_learns_and_samples, .timeout = 900) { learns("char-gru", 150); }

/* 20 iterations straight equal 10, a save, and 10 more after --resume:
 * parameters, Adam's state, the dropout counter and the carried hidden
 * state all travel in the checkpoint. */
Test(char_cli, resume_is_exact, .timeout = 600) {
  static char out[1 << 16];
  const char *data = subset(), *a = tmp_path("a.safetensors"), *b = tmp_path("b.safetensors");
  const char *common = "--backend cpu --layers 2 --hidden 32 --batch 8 --seq 16 --dropout 0.2 --eval-every 0";
  char args[1024];
  snprintf(args, sizeof args, "train char-lstm --data %s %s --iters 20 --save %s", data, common, a);
  cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
  double straight = field(out, "val_loss=");
  snprintf(args, sizeof args, "train char-lstm --data %s %s --iters 10 --save %s", data, common, b);
  cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
  snprintf(args, sizeof args, "train char-lstm --data %s --backend cpu --eval-every 0 --iters 20 --resume %s --save %s",
           data, b, b);
  cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "resumed from"), "%s", out);
  double resumed = field(out, "val_loss=");
  cr_assert_eq(straight, resumed, "straight %.4f vs resumed %.4f:\n%s", straight, resumed, out);
  /* a GRU cannot resume an LSTM checkpoint */
  snprintf(args, sizeof args, "train char-gru --data %s --backend cpu --iters 30 --resume %s", data, b);
  cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "char-lstm"), "%s", out);
  unlink(a);
  unlink(b);
  unlink(data);
}

Test(char_cli, bad_input_is_refused) {
  static char out[1 << 14];
  const char *empty = tmp_path("empty2.txt");
  write_file(empty, "", 0);
  char args[1024];
  snprintf(args, sizeof args, "train char-lstm --backend cpu --data %s", empty);
  cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "empty"), "%s", out);
  cr_assert_eq(run("train char-lstm --hidden 0", out, sizeof out), 2, "%s", out);
  cr_assert_eq(run("train char-lstm --no-such", out, sizeof out), 2, "%s", out);
  cr_assert_eq(run("sample", out, sizeof out), 2, "%s", out);
  snprintf(args, sizeof args, "sample --load %s", empty);
  cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, empty), "%s", out);
  cr_assert_eq(run("train char-lstm --help", out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "--dropout") && strstr(out, "--eval-every"), "%s", out);
  unlink(empty);
}

/* ---- CPU against Vulkan ------------------------------------------------------ */

#define EQ_ITERS 20
#define EQ_B 8
#define EQ_T 16

static kiln_status read_loss(void *tg, int back, float *loss) { return char_graph_loss(tg, back, loss); }

/* Trains a 2 x 32 model of `cell` for EQ_ITERS iterations on `backend` and
 * stores each iteration's loss. Returns 0 (after cr_skip_test) when the
 * backend has no device. */
static int train_losses(const char *backend, int cell, float dropout, const kiln_text *text,
                        float *loss) {
  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_context_create(NULL, &ctx), KILN_OK, "%s", kiln_last_error());
  kiln_status st = kiln_device_open(ctx, backend, -1, &dev);
  if (st == KILN_NO_DEVICE || st == KILN_NOT_FOUND) {
    cr_skip_test("no %s device on this machine (%s); the CPU-vs-Vulkan training check needs one",
                 backend, kiln_last_error());
    kiln_context_destroy(ctx);
    return 0;
  }
  cr_assert_eq(st, KILN_OK, "opening %s: %s", backend, kiln_last_error());
  char_model *m = NULL;
  char_graph *tg = NULL;
  char_train_opts opts = {2e-3f, 5.0f, dropout, 3};
  cr_assert_eq(char_model_create(dev, cell, text->vocab_size, text->vocab, 32, 2, &m), KILN_OK, "%s",
               char_error());
  cr_assert_eq(char_model_init(m, 11), KILN_OK, "%s", char_error());
  cr_assert_eq(char_graph_create(m, EQ_B, EQ_T, 1, &opts, &tg), KILN_OK, "%s: %s", backend, char_error());
  int32_t x[EQ_B * EQ_T], y[EQ_B * EQ_T];
  /* As `kiln train` reads them: late, three after one wait, where the
   * device keeps four runs of the loss (Vulkan must), all read at a sync
   * point (iteration 10, as an evaluation would) and at the end. */
  loss_lag lag;
  loss_lag_init(&lag, kiln_compiled_output_depth(tg->c, tg->loss));
  if (strcmp(backend, "vulkan") == 0)
    cr_assert(lag.depth == 4, "vulkan: the loss has an output depth of %d; want 4",
              kiln_compiled_output_depth(tg->c, tg->loss));
  int64_t next = 1;                     /* the iteration whose loss comes next */
  for (int it = 1; it <= EQ_ITERS; it++) {
    cr_assert_eq(kiln_text_stream_batch(text, 0, EQ_B, EQ_T, it - 1, x, y), KILN_OK);
    st = char_graph_submit(tg, x, y);
    cr_assert_eq(st, KILN_OK, "%s: iteration %d: %s", backend, it, char_error());
    int64_t its[LOSS_LAG_MAX];
    float got[LOSS_LAG_MAX];
    int n = loss_lag_after(&lag, tg, read_loss, it, it == 10 || it == EQ_ITERS, its, got);
    cr_assert_geq(n, 0, "%s: iteration %d: reading the loss: %s", backend, it, char_error());
    for (int j = 0; j < n; j++) {
      cr_assert_eq(its[j], next, "%s: the loss of iteration %lld came when %lld was due", backend,
                   (long long)its[j], (long long)next);
      loss[next++ - 1] = got[j];
    }
    if (it == 10 || it == EQ_ITERS) cr_assert_eq(next, it + 1, "%s: a sync at %d left a loss unread", backend, it);
  }
  char_graph_destroy(tg);
  char_model_destroy(m);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return 1;
}

static void cpu_vs_vulkan(int cell, float dropout) {
  setenv("KILN_VK_VALIDATION", "1", 1);   /* before the plugins load */
  const char *data = subset();
  kiln_text text;
  cr_assert_eq(kiln_text_load(data, NULL, 0, &text), KILN_OK, "%s", kiln_last_error());
  float lc[EQ_ITERS], lv[EQ_ITERS];
  if (!train_losses("vulkan", cell, dropout, &text, lv)) goto done;
  cr_assert(train_losses("cpu", cell, dropout, &text, lc));
  double worst = 0.0;
  for (int it = 0; it < EQ_ITERS; it++) {
    double rel = fabs((double)lv[it] - lc[it]) / fabs((double)lc[it]);
    cr_assert(rel <= 1e-3, "%s iteration %d: cpu loss %.7f, vulkan %.7f (relative difference %.2g > 1e-3)",
              cell == CHAR_LSTM ? "char-lstm" : "char-gru", it + 1, (double)lc[it], (double)lv[it], rel);
    if (rel > worst) worst = rel;
  }
  /* the losses must move, or equal losses would say nothing */
  cr_assert_lt(lc[EQ_ITERS - 1], lc[0] - 0.1, "cpu loss %.4f -> %.4f: not training", (double)lc[0],
               (double)lc[EQ_ITERS - 1]);
  cr_log_info("%s: cpu loss %.5f -> %.5f, largest relative cpu/vulkan difference %.2g",
              cell == CHAR_LSTM ? "char-lstm" : "char-gru", (double)lc[0], (double)lc[EQ_ITERS - 1], worst);
done:
  kiln_text_free(&text);
  unlink(data);
}

Test(cpu_vs_vulkan, char_lstm_same_losses, .timeout = 900) { cpu_vs_vulkan(CHAR_LSTM, 0.1f); }
Test(cpu_vs_vulkan, char_gru_same_losses, .timeout = 900) { cpu_vs_vulkan(CHAR_GRU, 0.0f); }
