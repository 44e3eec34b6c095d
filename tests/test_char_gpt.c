/*
 * test_char_gpt.c - `kiln train char-gpt` and `kiln sample` on its
 * checkpoints: a small GPT learns tinyshakespeare well past the unigram
 * baseline in a short CPU run, resumes exactly, samples deterministically
 * for a seed, and bad options are refused with a message.
 *
 * Bounds: the unigram baseline is about 3.3 nats/char on tinyshakespeare. A
 * 2-layer, 64-wide GPT with a 32-character context reaches about 2.40 after
 * 300 iterations of 16 x 32 characters (2.48 after 200); the test asks for < 2.5, which a
 * wrong gradient (of attention, layer norm, GELU or the tied embedding), a
 * broken mask or an optimizer that does not step all fail (they stay near
 * or above the baseline, or learn only unigram statistics, about 3.3).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/data.h"
#include "kiln/kiln.h"
#include "kiln/text.h"
#include "gpt_model.h"
#include "testutil.h"

#define CHAR_CLI_TMP_PREFIX "/tmp/kiln-test-gpt-"
#include "char_cli.h"

/* Checks that tensor `name` of checkpoint f is f32 of the given shape. */
static void has_tensor(const kiln_safetensors *f, const char *name, int64_t d0, int64_t d1) {
  kiln_st_tensor e;
  cr_assert_eq(kiln_safetensors_find(f, name, &e), KILN_OK, "no tensor %s", name);
  cr_assert_eq(e.dtype, KILN_F32, "%s", name);
  cr_assert_eq(e.ndim, d1 ? 2 : 1, "%s", name);
  cr_assert_eq(e.shape[0], d0, "%s", name);
  if (d1) cr_assert_eq(e.shape[1], d1, "%s", name);
}

Test(gpt_cli, learns_and_samples, .timeout = 900) {
  static char out[1 << 16];
  const char *data = subset(), *ckpt = tmp_path("model.safetensors");
  char args[1024];
  snprintf(args, sizeof args,
           "train char-gpt --backend cpu --data %s --layers 2 --heads 4 --embd 64 --block 32 --batch 16 "
           "--iters 300 --lr 3e-3 --min-lr 3e-4 --warmup 20 --eval-every 100 --save %s",
           data, ckpt);
  int rc = run(args, out, sizeof out);
  cr_assert_eq(rc, 0, "kiln %s exited with %d:\n%s", args, rc, out);
  double baseline = field(out, "unigram baseline ");
  double val = field(out, "val_loss=");
  cr_assert(strstr(out, "backend=cpu"), "%s", out);
  cr_assert(strstr(out, "iter 100  val loss"), "validation at --eval-every:\n%s", out);
  cr_assert_gt(field(out, "tokens_per_s="), 0.0);
  cr_assert_gt(baseline, 3.0, "%s", out);
  cr_assert_lt(val, 2.5, "validation loss %.4f is not below 2.5 (unigram baseline %.4f):\n%s", val, baseline, out);

  /* nanoGPT's names and layouts; lm_head is wte, stored once */
  kiln_safetensors *f;
  cr_assert_eq(kiln_safetensors_open(ckpt, &f), KILN_OK, "%s", kiln_last_error());
  cr_assert_str_eq(kiln_safetensors_meta(f, "kiln.model"), "char-gpt");
  cr_assert_str_eq(kiln_safetensors_meta(f, "n_head"), "4");
  kiln_st_tensor v;
  cr_assert_eq(kiln_safetensors_find(f, "vocab", &v), KILN_OK);
  int64_t V = v.shape[0];
  has_tensor(f, "transformer.wte.weight", V, 64);
  has_tensor(f, "transformer.wpe.weight", 32, 64);
  has_tensor(f, "transformer.h.1.attn.c_attn.weight", 192, 64);
  has_tensor(f, "transformer.h.1.attn.c_attn.bias", 192, 0);
  has_tensor(f, "transformer.h.1.mlp.c_fc.weight", 256, 64);
  has_tensor(f, "transformer.h.1.mlp.c_proj.weight", 64, 256);
  has_tensor(f, "transformer.ln_f.bias", 64, 0);
  kiln_st_tensor e;
  cr_assert_neq(kiln_safetensors_find(f, "lm_head.weight", &e), KILN_OK, "lm_head is tied, not stored");
  cr_assert_neq(kiln_safetensors_find(f, "transformer.h.2.ln_1.weight", &e), KILN_OK);
  kiln_safetensors_close(f);

  /* sampling: the prompt (longer than the block: the window slides), then
   * --tokens characters of the text's vocabulary; the same seed the same */
  static char s1[1 << 14], s2[1 << 14];
  const char *prompt = "ROMEO:\nWhat light through yonder window breaks? It is";
  snprintf(args, sizeof args, "sample --load %s --prompt '%s' --tokens 300 --seed 5 --top-k 10", ckpt, prompt);
  cr_assert_eq(run(args, s1, sizeof s1), 0, "%s", s1);
  cr_assert_eq(strncmp(s1, prompt, strlen(prompt)), 0, "%s", s1);
  cr_assert_eq(strlen(s1), strlen(prompt) + 300 + 1, "%s", s1);
  for (const char *p = s1; *p; p++)
    cr_assert((*p >= 32 && *p < 127) || *p == '\n', "byte 0x%02x is not from the text", (unsigned char)*p);
  cr_assert_eq(run(args, s2, sizeof s2), 0);
  cr_assert_str_eq(s1, s2, "the same seed samples the same text");
  snprintf(args, sizeof args, "sample --load %s --prompt '%s' --tokens 300 --seed 6", ckpt, prompt);
  cr_assert_eq(run(args, s2, sizeof s2), 0);
  cr_assert_str_neq(s1, s2, "another seed samples other text");
  /* without a prompt it starts from a newline, not printed */
  snprintf(args, sizeof args, "sample --load %s --tokens 50 --seed 1", ckpt);
  cr_assert_eq(run(args, s2, sizeof s2), 0, "%s", s2);
  cr_assert_eq(strlen(s2), 51, "%s", s2);
  /* a character outside the vocabulary is refused */
  snprintf(args, sizeof args, "sample --load %s --prompt '~~' --tokens 5", ckpt);
  cr_assert_eq(run(args, s2, sizeof s2), 1, "%s", s2);
  cr_assert(strstr(s2, "vocabulary"), "%s", s2);
  unlink(ckpt);
  unlink(data);
}

/* Compares every tensor of two checkpoints bit for bit. */
static void same_tensors(const char *a, const char *b) {
  kiln_safetensors *fa, *fb;
  cr_assert_eq(kiln_safetensors_open(a, &fa), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_safetensors_open(b, &fb), KILN_OK, "%s", kiln_last_error());
  size_t n = kiln_safetensors_count(fa);
  cr_assert_eq(n, kiln_safetensors_count(fb));
  cr_assert_gt(n, 20);
  for (size_t i = 0; i < n; i++) {
    kiln_st_tensor ea, eb;
    cr_assert_eq(kiln_safetensors_get(fa, i, &ea), KILN_OK);
    cr_assert_eq(kiln_safetensors_find(fb, ea.name, &eb), KILN_OK, "%s missing", ea.name);
    cr_assert_eq(ea.nbytes, eb.nbytes, "%s", ea.name);
    cr_assert_eq(memcmp(ea.data, eb.data, ea.nbytes), 0, "%s differs after resuming", ea.name);
  }
  kiln_safetensors_close(fa);
  kiln_safetensors_close(fb);
}

/* 20 iterations straight equal 10, a save, and 10 more after --resume:
 * parameters, AdamW's state, the step (so the lr schedule), the dropout
 * counter and the batch draws all continue. */
Test(gpt_cli, resume_is_exact, .timeout = 600) {
  static char out[1 << 16];
  const char *data = subset(), *a = tmp_path("a.safetensors"), *b = tmp_path("b.safetensors");
  const char *common = "--backend cpu --layers 2 --heads 2 --embd 32 --block 16 --batch 8 --dropout 0.2 "
                       "--warmup 5 --lr-decay-iters 20 --eval-every 0";
  char args[1024];
  snprintf(args, sizeof args, "train char-gpt --data %s %s --iters 20 --save %s", data, common, a);
  cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
  double straight = field(out, "val_loss=");
  snprintf(args, sizeof args, "train char-gpt --data %s %s --iters 10 --save %s", data, common, b);
  cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
  snprintf(args, sizeof args, "train char-gpt --data %s --backend cpu --eval-every 0 --iters 20 --resume %s --save %s",
           data, b, b);
  cr_assert_eq(run(args, out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "resumed from"), "%s", out);
  double resumed = field(out, "val_loss=");
  cr_assert_eq(straight, resumed, "straight %.4f vs resumed %.4f:\n%s", straight, resumed, out);
  same_tensors(a, b);
  /* the architecture must match the checkpoint's */
  snprintf(args, sizeof args, "train char-gpt --data %s --backend cpu --iters 30 --embd 64 --resume %s", data, b);
  cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "n_embd=32"), "%s", out);
  /* char-lstm cannot resume a char-gpt checkpoint */
  snprintf(args, sizeof args, "train char-lstm --data %s --backend cpu --iters 30 --resume %s", data, b);
  cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "char-gpt"), "%s", out);
  unlink(a);
  unlink(b);
  unlink(data);
}

Test(gpt_cli, bad_options_are_refused) {
  static char out[1 << 14];
  const char *data = subset(), *tiny = tmp_path("tiny.txt");
  write_file(tiny, "To be, or not to be, that is the question.\n", 44);
  char args[1024];
  snprintf(args, sizeof args, "train char-gpt --backend cpu --data %s --heads 3 --embd 64", data);
  cr_assert_eq(run(args, out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "--heads 3 must divide --embd 64"), "%s", out);
  cr_assert_eq(run("train char-gpt --block 0", out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "--block"), "%s", out);
  cr_assert_eq(run("train char-gpt --layers 1000", out, sizeof out), 2, "%s", out);
  cr_assert_eq(run("train char-gpt --preset tpu", out, sizeof out), 2, "%s", out);
  cr_assert_eq(run("train char-gpt --no-such 1", out, sizeof out), 2, "%s", out);
  cr_assert_eq(run("train char-gpt --warmup 100 --lr-decay-iters 50", out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "--lr-decay-iters"), "%s", out);
  cr_assert_eq(run("train char-gpt --lr 1e-4 --min-lr 1e-3", out, sizeof out), 2, "%s", out);
  /* a block longer than the validation split can hold */
  snprintf(args, sizeof args, "train char-gpt --backend cpu --data %s --block 64", tiny);
  cr_assert_eq(run(args, out, sizeof out), 1, "%s", out);
  cr_assert(strstr(out, "too few") && strstr(out, "--block"), "%s", out);
  cr_assert_eq(run("train char-gpt --help", out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "--heads") && strstr(out, "--weight-decay") && strstr(out, "--preset"), "%s", out);
  unlink(tiny);
  unlink(data);
}

/* ---- CPU against Vulkan ------------------------------------------------------ */

#define EQ_ITERS 12
#define EQ_B 4
#define EQ_T 16

/* Trains a 2-layer, 2-head, 32-wide GPT (dropout 0.1, so the Philox masks
 * must agree too) for EQ_ITERS iterations on `backend` and stores each
 * iteration's loss. Returns 0 (after cr_skip_test) when the backend has no
 * device. */
static int gpt_losses(const char *backend, const kiln_text *text, float *loss) {
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
  gpt_model *m = NULL;
  gpt_graph *tg = NULL;
  gpt_train_opts opts = {.lr = 3e-3f, .min_lr = 3e-4f, .warmup = 3, .decay_iters = EQ_ITERS,
                         .weight_decay = 0.1f, .beta1 = 0.9f, .beta2 = 0.99f, .clip = 1.0f,
                         .dropout = 0.1f, .seed = 5};
  cr_assert_eq(gpt_model_create(dev, text->vocab_size, text->vocab, 2, 2, 32, EQ_T, &m), KILN_OK,
               "%s", gpt_error());
  cr_assert_eq(gpt_model_init(m, 11), KILN_OK, "%s", gpt_error());
  cr_assert_eq(gpt_graph_create(m, EQ_B, EQ_T, 1, 1, &opts, &tg), KILN_OK, "%s: %s", backend,
               gpt_error());
  int32_t x[EQ_B * EQ_T], y[EQ_B * EQ_T];
  for (int it = 0; it < EQ_ITERS; it++) {
    cr_assert_eq(kiln_text_random_windows(text, 0, EQ_B, EQ_T, 9, (uint64_t)it, x, y), KILN_OK);
    st = gpt_graph_run(tg, x, y, &loss[it]);
    cr_assert_eq(st, KILN_OK, "%s: iteration %d: %s", backend, it + 1, gpt_error());
  }
  gpt_graph_destroy(tg);
  gpt_model_destroy(m);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return 1;
}

/* The whole training step (attention, layer norm, GELU, dropout, clipping,
 * the lr schedule and AdamW) on Vulkan, under the validation layer, gives
 * the CPU plugin's losses iteration by iteration. */
Test(cpu_vs_vulkan, char_gpt_same_losses, .timeout = 900) {
  setenv("KILN_VK_VALIDATION", "1", 1);   /* before the plugins load */
  const char *data = subset();
  kiln_text text;
  cr_assert_eq(kiln_text_load(data, NULL, 0, &text), KILN_OK, "%s", kiln_last_error());
  float lc[EQ_ITERS], lv[EQ_ITERS];
  if (gpt_losses("vulkan", &text, lv)) {
    cr_assert(gpt_losses("cpu", &text, lc));
    double worst = 0.0;
    for (int it = 0; it < EQ_ITERS; it++) {
      double rel = fabs((double)lv[it] - lc[it]) / fabs((double)lc[it]);
      cr_assert(rel <= 1e-3, "iteration %d: cpu loss %.7f, vulkan %.7f (relative difference %.2g > 1e-3)",
                it + 1, (double)lc[it], (double)lv[it], rel);
      if (rel > worst) worst = rel;
    }
    cr_assert_lt(lc[EQ_ITERS - 1], lc[0] - 0.3, "cpu loss %.4f -> %.4f: not training", (double)lc[0],
                 (double)lc[EQ_ITERS - 1]);
    cr_log_info("char-gpt: cpu loss %.5f -> %.5f, largest relative cpu/vulkan difference %.2g",
                (double)lc[0], (double)lc[EQ_ITERS - 1], worst);
  }
  kiln_text_free(&text);
  unlink(data);
}

/* The JSON file kiln bench wrote at path, read into a static buffer; the
 * file is removed. */
static const char *take_json(const char *path) {
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "no %s", path);
  static char js[1 << 14];
  size_t n = fread(js, 1, sizeof js - 1, f);
  js[n] = '\0';
  fclose(f);
  remove(path);
  return js;
}

/* `kiln bench --cases char-lstm,char-gpt` times both models' training
 * steps and writes them to its JSON (the figures are not checked: speed is
 * a benchmark's business, not a test's); an unknown case is refused. */
Test(bench_cli, token_cases_in_json, .timeout = 600) {
  static char out[1 << 16];
  const char *json = tmp_path("bench.json");
  char args[1024];
  snprintf(args, sizeof args, "bench --backend cpu --quick --cases char-lstm,char-gpt --json '%s'",
           json);
  int rc = run(args, out, sizeof out);
  cr_assert_eq(rc, 0, "kiln %s failed (%d):\n%s", args, rc, out);
  cr_assert(strstr(out, "char-lstm step") && strstr(out, "char-gpt step") &&
                strstr(out, "tokens/s"), "rows missing:\n%s", out);
  cr_assert(!strstr(out, "sgemm") && !strstr(out, "conv1"), "--cases ran more:\n%s", out);
  const char *js = take_json(json);
  cr_assert(strstr(js, "\"model\": \"char-lstm\"") && strstr(js, "\"model\": \"char-gpt\""),
            "json lacks the models:\n%s", js);
  const char *t = strstr(js, "\"tokens_per_s\": ");
  cr_assert(t && atof(t + 16) > 0, "json lacks a positive tokens_per_s:\n%s", js);

  rc = run("bench --cases sgemm,lstm", out, sizeof out);
  cr_assert_eq(rc, 2, "an unknown case gave exit %d:\n%s", rc, out);
  cr_assert(strstr(out, "unknown case 'lstm'"), "message:\n%s", out);
}

/* `kiln bench --cases host`: the floor (a one-node graph fed, run and read
 * per step; the case checks relu's result itself), the CNN and the MLPs,
 * each with its host CPU time per step in the JSON. */
Test(bench_cli, host_cases_in_json, .timeout = 600) {
  static char out[1 << 16];
  const char *json = tmp_path("bench-host.json");
  char args[1024];
  snprintf(args, sizeof args, "bench --backend cpu --quick --cases host --json '%s'", json);
  int rc = run(args, out, sizeof out);
  cr_assert_eq(rc, 0, "kiln %s failed (%d):\n%s", args, rc, out);
  cr_assert(strstr(out, "host floor") && strstr(out, "host cnn") && strstr(out, "host mlp-20") &&
                strstr(out, "us cpu"), "rows missing:\n%s", out);
  const char *js = take_json(json);
  cr_assert(strstr(js, "\"model\": \"floor\""), "json lacks the floor:\n%s", js);
  const char *t = strstr(js, "\"host_us_per_step\": ");
  cr_assert(t && atof(t + 20) > 0, "json lacks a positive host_us_per_step:\n%s", js);
}
