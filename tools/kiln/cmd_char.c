/*
 * cmd_char.c - `kiln train char-lstm|char-gru`: a character-level language
 * model trained on a text file (default: tinyshakespeare in the data
 * directory), char-rnn's recipe: truncated BPTT over contiguous streams with
 * the hidden state carried between batches, Adam, gradient clipping by
 * global norm, optional dropout between layers.
 *
 *   kiln train char-lstm [--data FILE] [--layers N] [--hidden N] [--seq N]
 *                        [--batch N] [--iters N] [--lr X] [--clip X]
 *                        [--dropout P] [--eval-every N] [--backend NAME]
 *                        [--device N] [--save FILE] [--resume FILE] [--seed N]
 *
 * The last line printed to stdout is machine-readable and stable:
 *   val_loss=1.6550 tokens_per_s=9700.0 iters=2000 backend=cpu device="NAME"
 * (validation loss in nats per character over the whole validation split).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "char_model.h"
#include "ckpt_io.h"
#include "loss_lag.h"
#include "commands.h"
#include "kiln/data.h"
#include "kiln/text.h"

typedef struct char_opts {
  int cell;
  const char *data, *backend, *save, *resume;
  int device, layers, hidden, seq, batch, eval_every;
  int64_t iters;
  double lr, clip, dropout;
  uint64_t seed;
  int have[16];
} char_opts;

enum { H_LAYERS, H_HIDDEN, H_SEQ, H_BATCH, H_LR, H_CLIP, H_DROPOUT, H_SEED };

static void usage(FILE *f, const char *model) {
  fprintf(f,
          "usage: kiln train %s [options]\n"
          "\n"
          "Trains a character-level %s language model on a text file (char-rnn's\n"
          "recipe: truncated BPTT with the hidden state carried between batches, Adam,\n"
          "gradient clipping by global norm) and reports the validation loss in nats\n"
          "per character on the last 10%% of the file.\n"
          "\n"
          "options:\n"
          "  --data FILE          text file (default: DATA_DIR/tinyshakespeare.txt, where\n"
          "                       DATA_DIR is $KILN_DATA or the cache `kiln fetch` fills)\n"
          "  --layers N           recurrent layers (default 2)\n"
          "  --hidden N           units per layer (default 128)\n"
          "  --seq N              characters per training sequence (default 50)\n"
          "  --batch N            sequences per batch (default 50)\n"
          "  --iters N            training iterations to reach (default 2000)\n"
          "  --lr X               Adam learning rate (default 2e-3)\n"
          "  --clip X             clip gradients to this global norm (default 5; 0: off)\n"
          "  --dropout P          dropout between layers (default 0)\n"
          "  --eval-every N       validate every N iterations (default 500; 0: at the end)\n"
          "  --backend NAME       cpu, vulkan or auto (default auto)\n"
          "  --device N           device index within the backend\n"
          "  --save FILE          write a checkpoint (safetensors) at the end\n"
          "  --resume FILE        continue from a checkpoint (its architecture and\n"
          "                       hyperparameters unless given here)\n"
          "  --seed N             initialisation and dropout seed (default 1)\n"
          "\n"
          "The last line is machine-readable:\n"
          "  val_loss=... tokens_per_s=... iters=... backend=... device=\"...\"\n",
          model, strcmp(model, "char-gru") ? "LSTM" : "GRU");
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (!s || !*s) return 0;
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

static int parse_real(const char *s, double lo, double hi, double *out) {
  if (!s || !*s) return 0;
  errno = 0;
  char *end;
  double v = strtod(s, &end);
  if (errno || *end || !(v >= lo && v <= hi)) return 0;
  *out = v;
  return 1;
}

/* Returns 0, 2 (usage error, printed) or -1 (help printed). */
static int parse(int argc, char **argv, char_opts *o) {
  const char *model = argv[1];
  memset(o, 0, sizeof *o);
  o->cell = strcmp(model, "char-gru") ? CHAR_LSTM : CHAR_GRU;
  o->backend = "auto";
  o->device = -1;
  o->layers = 2;
  o->hidden = 128;
  o->seq = 50;
  o->batch = 50;
  o->iters = 2000;
  o->lr = 2e-3;
  o->clip = 5.0;
  o->eval_every = 500;
  o->seed = 1;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout, model);
      return -1;
    }
    char flag[64];
    const char *eq = strchr(a, '='), *val;
    size_t flen = eq ? (size_t)(eq - a) : strlen(a);
    if (strncmp(a, "--", 2) != 0 || flen >= sizeof flag) {
      fprintf(stderr, "kiln train %s: unexpected argument '%s' (see --help)\n", model, a);
      return 2;
    }
    memcpy(flag, a, flen);
    flag[flen] = '\0';
    static const char *const known[] = {"--data", "--layers", "--hidden", "--seq", "--batch",
                                        "--iters", "--lr", "--clip", "--dropout", "--eval-every",
                                        "--backend", "--device", "--save", "--resume", "--seed", NULL};
    int ok = 0;
    for (int k = 0; known[k]; k++) ok |= !strcmp(flag, known[k]);
    if (!ok) {
      fprintf(stderr, "kiln train %s: unknown option '%s' (see --help)\n", model, flag);
      return 2;
    }
    if (eq) val = eq + 1;
    else if (i + 1 < argc) val = argv[++i];
    else {
      fprintf(stderr, "kiln train %s: option %s needs a value\n", model, flag);
      return 2;
    }
    int64_t v = 0;
    int good = 1;
    if (!strcmp(flag, "--data")) o->data = val, good = *val != '\0';
    else if (!strcmp(flag, "--backend")) o->backend = val, good = *val != '\0';
    else if (!strcmp(flag, "--save")) o->save = val, good = *val != '\0';
    else if (!strcmp(flag, "--resume")) o->resume = val, good = *val != '\0';
    else if (!strcmp(flag, "--device")) good = parse_int(val, 0, 1 << 20, &v), o->device = (int)v;
    else if (!strcmp(flag, "--layers")) good = parse_int(val, 1, CHAR_MAX_LAYERS, &v), o->layers = (int)v, o->have[H_LAYERS] = 1;
    else if (!strcmp(flag, "--hidden")) good = parse_int(val, 1, 65536, &v), o->hidden = (int)v, o->have[H_HIDDEN] = 1;
    else if (!strcmp(flag, "--seq")) good = parse_int(val, 1, 512, &v), o->seq = (int)v, o->have[H_SEQ] = 1;
    else if (!strcmp(flag, "--batch")) good = parse_int(val, 1, 4096, &v), o->batch = (int)v, o->have[H_BATCH] = 1;
    else if (!strcmp(flag, "--iters")) good = parse_int(val, 0, INT_MAX, &o->iters);
    else if (!strcmp(flag, "--eval-every")) good = parse_int(val, 0, INT_MAX, &v), o->eval_every = (int)v;
    else if (!strcmp(flag, "--seed")) good = parse_int(val, 0, INT64_MAX, &v), o->seed = (uint64_t)v, o->have[H_SEED] = 1;
    else if (!strcmp(flag, "--lr")) good = parse_real(val, 1e-9, 10.0, &o->lr), o->have[H_LR] = 1;
    else if (!strcmp(flag, "--clip")) good = parse_real(val, 0.0, 1e9, &o->clip), o->have[H_CLIP] = 1;
    else if (!strcmp(flag, "--dropout")) good = parse_real(val, 0.0, 0.99, &o->dropout), o->have[H_DROPOUT] = 1;
    if (!good) {
      fprintf(stderr, "kiln train %s: bad value '%s' for %s\n", model, val, flag);
      return 2;
    }
  }
  return 0;
}

/* With --resume: the checkpoint's architecture must match the command, and
 * its hyperparameters are taken unless given on the command line. */
static int resume_settings(const char *model, char_opts *o) {
  kiln_safetensors *f;
  if (kiln_safetensors_open(o->resume, &f) != KILN_OK) {
    fprintf(stderr, "kiln train %s: cannot resume: %s\n", model, kiln_last_error());
    return 0;
  }
  int ok = 1;
  const char *kind = kiln_safetensors_meta(f, "kiln.model");
  if (!kind || strcmp(kind, model)) {
    fprintf(stderr, "kiln train %s: checkpoint %s holds a %s model, not %s\n", model, o->resume,
            kind ? kind : "non-kiln", model);
    ok = 0;
  }
  static const struct { const char *key; int h; } keys[] = {
      {"layers", H_LAYERS}, {"hidden", H_HIDDEN}, {"seq", H_SEQ}, {"batch", H_BATCH},
      {"lr", H_LR}, {"clip", H_CLIP}, {"dropout", H_DROPOUT}, {"seed", H_SEED}};
  for (size_t i = 0; ok && i < sizeof keys / sizeof keys[0]; i++) {
    const char *s = kiln_safetensors_meta(f, keys[i].key);
    if (!s) continue;
    int64_t v;
    double d;
    int good = 1;
    int arch = keys[i].h == H_LAYERS || keys[i].h == H_HIDDEN;
    if (o->have[keys[i].h] && !arch) continue;
    switch (keys[i].h) {
      case H_LAYERS: good = parse_int(s, 1, CHAR_MAX_LAYERS, &v); if (good && o->have[H_LAYERS] && v != o->layers) good = -1; o->layers = (int)v; break;
      case H_HIDDEN: good = parse_int(s, 1, 65536, &v); if (good && o->have[H_HIDDEN] && v != o->hidden) good = -1; o->hidden = (int)v; break;
      case H_SEQ: good = parse_int(s, 1, 512, &v), o->seq = (int)v; break;
      case H_BATCH: good = parse_int(s, 1, 4096, &v), o->batch = (int)v; break;
      case H_SEED: good = parse_int(s, 0, INT64_MAX, &v), o->seed = (uint64_t)v; break;
      case H_LR: good = parse_real(s, 1e-9, 10.0, &d), o->lr = d; break;
      case H_CLIP: good = parse_real(s, 0.0, 1e9, &d), o->clip = d; break;
      case H_DROPOUT: good = parse_real(s, 0.0, 0.99, &d), o->dropout = d; break;
    }
    if (good == -1) {
      fprintf(stderr, "kiln train %s: checkpoint %s has %s=%s, but the command line asks for another\n",
              model, o->resume, keys[i].key, s);
      ok = 0;
    } else if (!good) {
      fprintf(stderr, "kiln train %s: checkpoint %s has unreadable metadata %s=%s\n", model, o->resume,
              keys[i].key, s);
      ok = 0;
    }
  }
  kiln_safetensors_close(f);
  return ok;
}

/* loss_lag's view of a training graph. */
static kiln_status read_loss(void *tg, int back, float *loss) { return char_graph_loss(tg, back, loss); }

/* Mean loss over every validation stream batch, from a zero state. */
static int validate(char_graph *eg, const kiln_text *t, int32_t *x, int32_t *y, double *loss) {
  int64_t nb = kiln_text_stream_batches(t, 1, eg->B, eg->T);
  double sum = 0.0;
  if (char_graph_reset_state(eg) != KILN_OK) return 0;
  for (int64_t k = 0; k < nb; k++) {
    float l;
    if (kiln_text_stream_batch(t, 1, eg->B, eg->T, k, x, y) != KILN_OK ||
        char_graph_run(eg, x, y, &l) != KILN_OK)
      return 0;
    sum += l;
  }
  *loss = sum / (double)nb;
  return 1;
}

int kiln_cmd_train_char(int argc, char **argv) {
  const char *model = argv[1];
  char_opts o;
  int rc = parse(argc, argv, &o);
  if (rc == -1) return 0;
  if (rc) return rc;
  if (o.resume && !resume_settings(model, &o)) return 1;

  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  char_model *m = NULL;
  char_graph *tg = NULL, *eg = NULL;
  int32_t *x = NULL, *y = NULL;
  kiln_text text;
  memset(&text, 0, sizeof text);
  rc = 1;

  char path[4096];
  if (o.data) {
    snprintf(path, sizeof path, "%s", o.data);
  } else {
    char dir[4000];
    if (kiln_data_dir(NULL, dir, sizeof dir) != KILN_OK) {
      fprintf(stderr, "kiln train %s: %s\n", model, kiln_last_error());
      return 1;
    }
    snprintf(path, sizeof path, "%s/tinyshakespeare.txt", dir);
  }
  uint8_t vocab[256];
  int V = 0;
  char err[512];
  if (o.resume && !ckpt_read_vocab(o.resume, vocab, &V, err, sizeof err)) {
    fprintf(stderr, "kiln train %s: %s\n", model, err);
    return 1;
  }
  if (kiln_text_load(path, o.resume ? vocab : NULL, V, &text) != KILN_OK) {
    fprintf(stderr, "kiln train %s: %s\n", model, kiln_last_error());
    if (!o.data)
      fprintf(stderr, "kiln train %s: run `kiln fetch shakespeare`, or give --data FILE\n", model);
    return 1;
  }
  int64_t nb_train = kiln_text_stream_batches(&text, 0, o.batch, o.seq);
  int64_t nb_val = kiln_text_stream_batches(&text, 1, o.batch, o.seq);
  if (nb_train < 1 || nb_val < 1) {
    fprintf(stderr,
            "kiln train %s: %s: %lld characters are too few for %d streams of %d + 1 in both the "
            "train (90%%) and validation (10%%) split; lower --batch or --seq\n",
            model, path, (long long)text.n, o.batch, o.seq);
    goto done;
  }
  if (kiln_context_create(NULL, &ctx) != KILN_OK ||
      kiln_device_open(ctx, o.backend, o.device, &dev) != KILN_OK) {
    fprintf(stderr, "kiln train %s: cannot open device (backend %s): %s\n", model, o.backend,
            kiln_last_error());
    goto done;
  }
  char backend[64], devname[256];
  kiln_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  snprintf(backend, sizeof backend, "%s", kiln_plugin_name(kiln_device_plugin(dev)));
  if (kiln_device_get_info(dev, &info) != KILN_OK) snprintf(info.name, sizeof info.name, "?");
  snprintf(devname, sizeof devname, "%s", info.name);
  for (char *p = devname; *p; p++)
    if (*p == '"' || *p == '\n') *p = '\'';

  char_train_opts to = {(float)o.lr, (float)o.clip, (float)o.dropout, o.seed};
  if (char_model_create(dev, o.cell, text.vocab_size, text.vocab, o.hidden, o.layers, &m) != KILN_OK ||
      char_model_init(m, o.seed) != KILN_OK ||
      char_graph_create(m, o.batch, o.seq, 1, &to, &tg) != KILN_OK ||
      char_graph_create(m, o.batch, o.seq, 0, NULL, &eg) != KILN_OK) {
    fprintf(stderr, "kiln train %s: %s\n", model, char_error());
    goto done;
  }
  int64_t iter = 0;
  if (o.resume) {
    char_model *lm = NULL;
    if (char_load_model(o.resume, dev, &lm) != KILN_OK) {
      fprintf(stderr, "kiln train %s: cannot resume: %s\n", model, char_error());
      goto done;
    }
    int same = lm->L == m->L && lm->H == m->H && lm->V == m->V && lm->cell == m->cell;
    for (int i = 0; same && i < m->n_params; i++) same = kiln_tensor_copy(m->params[i], lm->params[i]) == KILN_OK;
    char_model_destroy(lm);
    if (!same || char_load_train_state(o.resume, tg, &iter) != KILN_OK) {
      fprintf(stderr, "kiln train %s: cannot resume from %s: %s\n", model, o.resume,
              same ? char_error() : "the architecture differs");
      goto done;
    }
  }
  x = malloc((size_t)o.batch * o.seq * sizeof *x);
  y = malloc((size_t)o.batch * o.seq * sizeof *y);
  if (!x || !y) {
    fprintf(stderr, "kiln train %s: out of memory\n", model);
    goto done;
  }

  double baseline = loss_unigram_baseline(&text);
  printf("kiln train %s: %s device \"%s\", %lld parameters (%d layers of %d, vocabulary %d)\n", model,
         backend, devname, (long long)char_model_numel(m), o.layers, o.hidden, text.vocab_size);
  printf("  %s: %lld characters, %lld train / %lld validation; batch %d x seq %d, %lld batches per pass\n",
         path, (long long)text.n, (long long)text.n_train, (long long)(text.n - text.n_train), o.batch,
         o.seq, (long long)nb_train);
  printf("  Adam lr %g, clip %g, dropout %g, seed %llu; unigram baseline %.4f nats/char\n", o.lr,
         o.clip, o.dropout, (unsigned long long)o.seed, baseline);
  if (o.resume) printf("  resumed from %s at iteration %lld\n", o.resume, (long long)iter);
  fflush(stdout);

  double train_s = 0.0, val = NAN;
  int64_t tokens = 0;
  int tty = isatty(STDOUT_FILENO);
  loss_progress prog = {.first_it = iter + 1, .tty = tty};
  loss_lag lag;
  loss_lag_init(&lag, kiln_compiled_output_depth(tg->c, tg->loss));
  for (; iter < o.iters; iter++) {
    int64_t k = iter % nb_train, it = iter + 1;
    if (k == 0 && char_graph_reset_state(tg) != KILN_OK) goto fail_run;
    kiln_text_stream_batch(&text, 0, o.batch, o.seq, k, x, y);
    int sync = (o.eval_every && it % o.eval_every == 0) || it == o.iters;
    double t0 = now_s();
    int64_t its[LOSS_LAG_MAX];
    float losses[LOSS_LAG_MAX];
    if (char_graph_submit(tg, x, y) != KILN_OK) goto fail_run;
    int n_due = loss_lag_after(&lag, tg, read_loss, it, sync, its, losses);
    if (n_due < 0) goto fail_run;
    train_s += now_s() - t0;
    for (int j = 0; j < n_due; j++) {   /* steps whose loss came back, in order */
      int64_t done_it = its[j];
      tokens += (int64_t)o.batch * o.seq;
      if (!isfinite(losses[j])) {
        fprintf(stderr, "kiln train %s: iteration %lld: the loss is %g (diverged; lower --lr or --clip)\n",
                model, (long long)done_it, (double)losses[j]);
        goto done;
      }
      loss_progress_add(&prog, done_it, o.iters, losses[j], tokens, train_s);
      if ((o.eval_every && done_it % o.eval_every == 0) || done_it == o.iters) {
        if (!validate(eg, &text, x, y, &val)) goto fail_run;
        printf("%siter %lld  val loss %.4f nats/char\n", tty ? "\n" : "", (long long)done_it, val);
        fflush(stdout);
      }
    }
  }
  if (isnan(val) && !validate(eg, &text, x, y, &val)) goto fail_run;
  if (o.save) {
    char s_seq[16], s_batch[16], s_lr[32], s_clip[32], s_drop[32], s_seed[32];
    snprintf(s_seq, sizeof s_seq, "%d", o.seq);
    snprintf(s_batch, sizeof s_batch, "%d", o.batch);
    snprintf(s_lr, sizeof s_lr, "%.9g", o.lr);
    snprintf(s_clip, sizeof s_clip, "%.9g", o.clip);
    snprintf(s_drop, sizeof s_drop, "%.9g", o.dropout);
    snprintf(s_seed, sizeof s_seed, "%llu", (unsigned long long)o.seed);
    const char *keys[] = {"seq", "batch", "lr", "clip", "dropout", "seed", "kiln.version"};
    const char *vals[] = {s_seq, s_batch, s_lr, s_clip, s_drop, s_seed, kiln_version_string()};
    if (char_save(o.save, m, tg, iter, keys, vals, 7) != KILN_OK) {
      fprintf(stderr, "kiln train %s: cannot save: %s\n", model, char_error());
      goto done;
    }
    printf("  saved %s\n", o.save);
  }
  printf("val_loss=%.4f tokens_per_s=%.1f iters=%lld backend=%s device=\"%s\"\n", val,
         train_s > 0 ? (double)tokens / train_s : 0.0, (long long)iter, backend, devname);
  rc = 0;
  goto done;

fail_run:
  fprintf(stderr, "kiln train %s: iteration %lld: %s\n", model, (long long)iter + 1, char_error());
done:
  free(x);
  free(y);
  char_graph_destroy(tg);
  char_graph_destroy(eg);
  char_model_destroy(m);
  if (dev) kiln_device_close(dev);
  kiln_context_destroy(ctx);
  kiln_text_free(&text);
  return rc;
}
