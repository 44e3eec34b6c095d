/*
 * cmd_gpt.c - `kiln train char-gpt`: a character-level GPT (nanoGPT's
 * model, gpt_model.h) trained on a text file (default: tinyshakespeare in
 * the data directory), nanoGPT's recipe: random windows of the training
 * split, AdamW (betas 0.9, 0.99) with weight decay on the 2-D weights,
 * linear warmup then cosine decay of the learning rate, gradient clipping
 * by global norm.
 *
 *   kiln train char-gpt [--data FILE] [--preset cpu|gpu] [--layers N]
 *                       [--heads N] [--embd N] [--block N] [--batch N]
 *                       [--iters N] [--lr X] [--min-lr X] [--warmup N]
 *                       [--lr-decay-iters N] [--weight-decay X] [--clip X]
 *                       [--dropout P] [--eval-every N] [--backend NAME]
 *                       [--device N] [--save FILE] [--resume FILE] [--seed N]
 *
 * Validation is char-lstm's protocol (cmd_char.c): the mean loss over every
 * batch of the validation split cut into `batch` contiguous streams read in
 * windows of `block` characters. The last line printed to stdout is
 * machine-readable and stable, as char-lstm's:
 *   val_loss=1.8800 tokens_per_s=5000.0 iters=2000 backend=cpu device="NAME"
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "gpt_model.h"
#include "ckpt_io.h"
#include "loss_lag.h"
#include "kiln/data.h"
#include "kiln/text.h"

#define MODEL "char-gpt"

/* Options with a checkpoint key: given on the command line (have[]) they
 * win over --resume's checkpoint; the architecture must match it. */
enum { H_LAYERS, H_HEADS, H_EMBD, H_BLOCK, H_BATCH, H_LR, H_MIN_LR, H_WARMUP, H_DECAY, H_WD,
       H_CLIP, H_DROPOUT, H_SEED, H_COUNT };

typedef struct gpt_opts {
  const char *data, *backend, *save, *resume;
  int device, layers, heads, embd, block, batch, eval_every;
  int64_t iters, warmup, decay_iters;
  double lr, min_lr, weight_decay, clip, dropout;
  uint64_t seed;
  int have[H_COUNT];
} gpt_opts;

static void usage(FILE *f) {
  fprintf(f,
          "usage: kiln train char-gpt [options]\n"
          "\n"
          "Trains a character-level GPT (nanoGPT's model: pre-norm blocks of causal\n"
          "multi-head attention and a 4x GELU MLP, biases in every Linear and LayerNorm,\n"
          "lm_head tied to the token embedding) on a text file with AdamW, linear warmup\n"
          "and cosine learning-rate decay, and reports the validation loss in nats per\n"
          "character on the last 10%% of the file.\n"
          "\n"
          "options:\n"
          "  --data FILE          text file (default: DATA_DIR/tinyshakespeare.txt, where\n"
          "                       DATA_DIR is $KILN_DATA or the cache `kiln fetch` fills)\n"
          "  --preset NAME        cpu (default: nanoGPT's baby GPT on a CPU) or gpu\n"
          "                       (6 layers, 6 heads, embd 384, block 256, batch 64,\n"
          "                       5000 iters, dropout 0.2); options given win\n"
          "  --layers N           transformer blocks (default 4)\n"
          "  --heads N            attention heads; must divide --embd (default 4)\n"
          "  --embd N             embedding width (default 128)\n"
          "  --block N            context length in characters (default 64)\n"
          "  --batch N            sequences per batch (default 12)\n"
          "  --iters N            training iterations to reach (default 2000)\n"
          "  --lr X               peak AdamW learning rate (default 1e-3)\n"
          "  --min-lr X           learning rate at the end of the decay (default 1e-4)\n"
          "  --warmup N           linear warmup iterations (default 100)\n"
          "  --lr-decay-iters N   iteration where the cosine decay ends (default\n"
          "                       --iters, or --warmup if that is longer)\n"
          "  --weight-decay X     AdamW weight decay of the 2-D weights (default 0.1)\n"
          "  --clip X             clip gradients to this global norm (default 1; 0: off)\n"
          "  --dropout P          dropout on embeddings and residual branches (default 0)\n"
          "  --eval-every N       validate every N iterations (default 250; 0: at the end)\n"
          "  --backend NAME       cpu, vulkan or auto (default auto)\n"
          "  --device N           device index within the backend\n"
          "  --save FILE          write a checkpoint (safetensors) at the end\n"
          "  --resume FILE        continue from a checkpoint (its architecture and\n"
          "                       hyperparameters unless given here)\n"
          "  --seed N             initialisation, batch and dropout seed (default 1)\n"
          "\n"
          "The last line is machine-readable:\n"
          "  val_loss=... tokens_per_s=... iters=... backend=... device=\"...\"\n");
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

/* One option's value into o; returns 0 if it is bad. */
static int set_opt(gpt_opts *o, const char *flag, const char *val) {
  int64_t v = 0;
  int good = 1;
  if (!strcmp(flag, "--data")) o->data = val, good = *val != '\0';
  else if (!strcmp(flag, "--backend")) o->backend = val, good = *val != '\0';
  else if (!strcmp(flag, "--save")) o->save = val, good = *val != '\0';
  else if (!strcmp(flag, "--resume")) o->resume = val, good = *val != '\0';
  else if (!strcmp(flag, "--preset")) good = !strcmp(val, "cpu") || !strcmp(val, "gpu");
  else if (!strcmp(flag, "--device")) good = parse_int(val, 0, 1 << 20, &v), o->device = (int)v;
  else if (!strcmp(flag, "--layers")) good = parse_int(val, 1, GPT_MAX_LAYERS, &v), o->layers = (int)v, o->have[H_LAYERS] = 1;
  else if (!strcmp(flag, "--heads")) good = parse_int(val, 1, GPT_MAX_EMBD, &v), o->heads = (int)v, o->have[H_HEADS] = 1;
  else if (!strcmp(flag, "--embd")) good = parse_int(val, 1, GPT_MAX_EMBD, &v), o->embd = (int)v, o->have[H_EMBD] = 1;
  else if (!strcmp(flag, "--block")) good = parse_int(val, 1, GPT_MAX_BLOCK, &v), o->block = (int)v, o->have[H_BLOCK] = 1;
  else if (!strcmp(flag, "--batch")) good = parse_int(val, 1, 65536, &v), o->batch = (int)v, o->have[H_BATCH] = 1;
  else if (!strcmp(flag, "--iters")) good = parse_int(val, 0, INT_MAX, &o->iters);
  else if (!strcmp(flag, "--warmup")) good = parse_int(val, 0, INT_MAX, &o->warmup), o->have[H_WARMUP] = 1;
  else if (!strcmp(flag, "--lr-decay-iters")) good = parse_int(val, 0, INT_MAX, &o->decay_iters), o->have[H_DECAY] = 1;
  else if (!strcmp(flag, "--eval-every")) good = parse_int(val, 0, INT_MAX, &v), o->eval_every = (int)v;
  else if (!strcmp(flag, "--seed")) good = parse_int(val, 0, INT64_MAX, &v), o->seed = (uint64_t)v, o->have[H_SEED] = 1;
  else if (!strcmp(flag, "--lr")) good = parse_real(val, 1e-9, 10.0, &o->lr), o->have[H_LR] = 1;
  else if (!strcmp(flag, "--min-lr")) good = parse_real(val, 0.0, 10.0, &o->min_lr), o->have[H_MIN_LR] = 1;
  else if (!strcmp(flag, "--weight-decay")) good = parse_real(val, 0.0, 10.0, &o->weight_decay), o->have[H_WD] = 1;
  else if (!strcmp(flag, "--clip")) good = parse_real(val, 0.0, 1e9, &o->clip), o->have[H_CLIP] = 1;
  else if (!strcmp(flag, "--dropout")) good = parse_real(val, 0.0, 0.99, &o->dropout), o->have[H_DROPOUT] = 1;
  return good;
}

/* Returns 0, 2 (usage error, printed) or -1 (help printed). */
static int parse(int argc, char **argv, gpt_opts *o) {
  memset(o, 0, sizeof *o);
  o->backend = "auto";
  o->device = -1;
  o->layers = 4, o->heads = 4, o->embd = 128, o->block = 64, o->batch = 12;
  o->iters = 2000, o->warmup = 100, o->decay_iters = -1;
  o->lr = 1e-3, o->min_lr = 1e-4, o->weight_decay = 0.1, o->clip = 1.0, o->dropout = 0.0;
  o->eval_every = 250;
  o->seed = 1;
  /* the preset first, so that options given on the command line win */
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *val = NULL;
    if (!strncmp(a, "--preset=", 9)) val = a + 9;
    else if (!strcmp(a, "--preset") && i + 1 < argc) val = argv[i + 1];
    if (val && !strcmp(val, "gpu")) {
      o->layers = 6, o->heads = 6, o->embd = 384, o->block = 256, o->batch = 64;
      o->iters = 5000, o->dropout = 0.2;
    }
  }
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return -1;
    }
    char flag[64];
    const char *eq = strchr(a, '='), *val;
    size_t flen = eq ? (size_t)(eq - a) : strlen(a);
    if (strncmp(a, "--", 2) != 0 || flen >= sizeof flag) {
      fprintf(stderr, "kiln train " MODEL ": unexpected argument '%s' (see --help)\n", a);
      return 2;
    }
    memcpy(flag, a, flen);
    flag[flen] = '\0';
    static const char *const known[] = {
        "--data", "--preset", "--layers", "--heads", "--embd", "--block", "--batch", "--iters", "--lr",
        "--min-lr", "--warmup", "--lr-decay-iters", "--weight-decay", "--clip", "--dropout",
        "--eval-every", "--backend", "--device", "--save", "--resume", "--seed", NULL};
    int ok = 0;
    for (int k = 0; known[k]; k++) ok |= !strcmp(flag, known[k]);
    if (!ok) {
      fprintf(stderr, "kiln train " MODEL ": unknown option '%s' (see --help)\n", flag);
      return 2;
    }
    if (eq) val = eq + 1;
    else if (i + 1 < argc) val = argv[++i];
    else {
      fprintf(stderr, "kiln train " MODEL ": option %s needs a value\n", flag);
      return 2;
    }
    if (!set_opt(o, flag, val)) {
      fprintf(stderr, "kiln train " MODEL ": bad value '%s' for %s\n", val, flag);
      return 2;
    }
  }
  return 0;
}

/* With --resume: the checkpoint's architecture must match the command, and
 * its hyperparameters are taken unless given on the command line. */
static int resume_settings(gpt_opts *o) {
  kiln_safetensors *f;
  if (kiln_safetensors_open(o->resume, &f) != KILN_OK) {
    fprintf(stderr, "kiln train " MODEL ": cannot resume: %s\n", kiln_last_error());
    return 0;
  }
  int ok = 1;
  const char *kind = kiln_safetensors_meta(f, "kiln.model");
  if (!kind || strcmp(kind, MODEL)) {
    fprintf(stderr, "kiln train " MODEL ": checkpoint %s holds a %s model, not " MODEL "\n", o->resume,
            kind ? kind : "non-kiln");
    ok = 0;
  }
  static const struct { const char *key, *flag; int h, arch; } keys[] = {
      {"n_layer", "--layers", H_LAYERS, 1}, {"n_head", "--heads", H_HEADS, 1},
      {"n_embd", "--embd", H_EMBD, 1}, {"block_size", "--block", H_BLOCK, 1},
      {"batch", "--batch", H_BATCH, 0}, {"lr", "--lr", H_LR, 0}, {"min_lr", "--min-lr", H_MIN_LR, 0},
      {"warmup", "--warmup", H_WARMUP, 0}, {"lr_decay_iters", "--lr-decay-iters", H_DECAY, 0},
      {"weight_decay", "--weight-decay", H_WD, 0}, {"clip", "--clip", H_CLIP, 0},
      {"dropout", "--dropout", H_DROPOUT, 0}, {"seed", "--seed", H_SEED, 0}};
  for (size_t i = 0; ok && i < sizeof keys / sizeof keys[0]; i++) {
    const char *s = kiln_safetensors_meta(f, keys[i].key);
    if (!s || (o->have[keys[i].h] && !keys[i].arch)) continue;
    int *arch[] = {&o->layers, &o->heads, &o->embd, &o->block};
    int given = o->have[keys[i].h], was = keys[i].arch ? *arch[keys[i].h] : 0;
    if (!set_opt(o, keys[i].flag, s)) {
      fprintf(stderr, "kiln train " MODEL ": checkpoint %s has unreadable metadata %s=%s\n", o->resume,
              keys[i].key, s);
      ok = 0;
    } else if (keys[i].arch && given && *arch[keys[i].h] != was) {
      fprintf(stderr, "kiln train " MODEL ": checkpoint %s has %s=%s, but the command line asks for %d\n",
              o->resume, keys[i].key, s, was);
      ok = 0;
    }
  }
  kiln_safetensors_close(f);
  return ok;
}

/* loss_lag's view of a training graph. */
static kiln_status read_loss(void *tg, int back, float *loss) { return gpt_graph_loss(tg, back, loss); }

/* char-lstm's protocol: the mean loss over every validation stream batch. */
static int validate(gpt_graph *eg, const kiln_text *t, int32_t *x, int32_t *y, double *loss) {
  int64_t nb = kiln_text_stream_batches(t, 1, eg->B, eg->T);
  double sum = 0.0;
  for (int64_t k = 0; k < nb; k++) {
    float l;
    if (kiln_text_stream_batch(t, 1, eg->B, eg->T, k, x, y) != KILN_OK || gpt_graph_run(eg, x, y, &l) != KILN_OK)
      return 0;
    sum += l;
  }
  *loss = sum / (double)nb;
  return 1;
}

int kiln_cmd_train_gpt(int argc, char **argv) {
  gpt_opts o;
  int rc = parse(argc, argv, &o);
  if (rc == -1) return 0;
  if (rc) return rc;
  if (o.resume && !resume_settings(&o)) return 1;
  if (o.decay_iters < 0) o.decay_iters = o.iters > o.warmup ? o.iters : o.warmup;
  if (o.decay_iters < o.warmup) {
    fprintf(stderr, "kiln train " MODEL ": --lr-decay-iters %lld is below --warmup %lld; the decay "
                    "must end after the warmup\n", (long long)o.decay_iters, (long long)o.warmup);
    return 2;
  }
  if (o.min_lr > o.lr) {
    fprintf(stderr, "kiln train " MODEL ": --min-lr %g is above --lr %g\n", o.min_lr, o.lr);
    return 2;
  }
  if (gpt_check_config(2, o.layers, o.heads, o.embd, o.block) != KILN_OK) {
    fprintf(stderr, "kiln train " MODEL ": %s\n", gpt_error());
    return 2;
  }

  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  gpt_model *m = NULL;
  gpt_graph *tg = NULL, *eg = NULL;
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
      fprintf(stderr, "kiln train " MODEL ": %s\n", kiln_last_error());
      return 1;
    }
    snprintf(path, sizeof path, "%s/tinyshakespeare.txt", dir);
  }
  uint8_t vocab[256];
  int V = 0;
  char err[512];
  if (o.resume && !ckpt_read_vocab(o.resume, vocab, &V, err, sizeof err)) {
    fprintf(stderr, "kiln train " MODEL ": %s\n", err);
    return 1;
  }
  if (kiln_text_load(path, o.resume ? vocab : NULL, V, &text) != KILN_OK) {
    fprintf(stderr, "kiln train " MODEL ": %s\n", kiln_last_error());
    if (!o.data) fprintf(stderr, "kiln train " MODEL ": run `kiln fetch shakespeare`, or give --data FILE\n");
    return 1;
  }
  int64_t nb_val = kiln_text_stream_batches(&text, 1, o.batch, o.block);
  if (text.n_train < (int64_t)o.block + 1 || nb_val < 1) {
    fprintf(stderr,
            "kiln train " MODEL ": %s: %lld characters are too few for windows of %d + 1 in the train "
            "(90%%) split and %d validation streams of %d + 1 (10%%); lower --batch or --block\n",
            path, (long long)text.n, o.block, o.batch, o.block);
    goto done;
  }
  if (kiln_context_create(NULL, &ctx) != KILN_OK || kiln_device_open(ctx, o.backend, o.device, &dev) != KILN_OK) {
    fprintf(stderr, "kiln train " MODEL ": cannot open device (backend %s): %s\n", o.backend, kiln_last_error());
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

  gpt_train_opts to = {(float)o.lr, (float)o.min_lr, o.warmup, o.decay_iters, (float)o.weight_decay,
                       0.9f, 0.99f, (float)o.clip, (float)o.dropout, o.seed};
  if (gpt_model_create(dev, text.vocab_size, text.vocab, o.layers, o.heads, o.embd, o.block, &m) != KILN_OK ||
      gpt_model_init(m, o.seed) != KILN_OK ||
      gpt_graph_create(m, o.batch, o.block, 1, 1, &to, &tg) != KILN_OK ||
      gpt_graph_create(m, o.batch, o.block, 0, 1, NULL, &eg) != KILN_OK) {
    fprintf(stderr, "kiln train " MODEL ": %s\n", gpt_error());
    goto done;
  }
  int64_t iter = 0;
  if (o.resume) {
    gpt_model *lm = NULL;
    if (gpt_load_model(o.resume, dev, &lm) != KILN_OK) {
      fprintf(stderr, "kiln train " MODEL ": cannot resume: %s\n", gpt_error());
      goto done;
    }
    int same = lm->L == m->L && lm->NH == m->NH && lm->C == m->C && lm->block == m->block && lm->V == m->V;
    for (int i = 0; same && i < m->n_params; i++) same = kiln_tensor_copy(m->params[i], lm->params[i]) == KILN_OK;
    gpt_model_destroy(lm);
    if (!same || gpt_load_train_state(o.resume, tg, &iter) != KILN_OK) {
      fprintf(stderr, "kiln train " MODEL ": cannot resume from %s: %s\n", o.resume,
              same ? gpt_error() : "the architecture differs");
      goto done;
    }
  }
  x = malloc((size_t)o.batch * o.block * sizeof *x);
  y = malloc((size_t)o.batch * o.block * sizeof *y);
  if (!x || !y) {
    fprintf(stderr, "kiln train " MODEL ": out of memory\n");
    goto done;
  }

  printf("kiln train " MODEL ": %s device \"%s\", %lld parameters (%d layers, %d heads, embd %d, block %d, "
         "vocabulary %d)\n", backend, devname, (long long)gpt_model_numel(m), o.layers, o.heads, o.embd,
         o.block, text.vocab_size);
  printf("  %s: %lld characters, %lld train / %lld validation; batch %d x block %d, %lld validation batches\n",
         path, (long long)text.n, (long long)text.n_train, (long long)(text.n - text.n_train), o.batch,
         o.block, (long long)nb_val);
  printf("  AdamW lr %g -> %g (warmup %lld, cosine to %lld), weight decay %g, clip %g, dropout %g, seed %llu; "
         "unigram baseline %.4f nats/char\n", o.lr, o.min_lr, (long long)o.warmup, (long long)o.decay_iters,
         o.weight_decay, o.clip, o.dropout, (unsigned long long)o.seed, loss_unigram_baseline(&text));
  if (o.resume) printf("  resumed from %s at iteration %lld\n", o.resume, (long long)iter);
  fflush(stdout);

  double train_s = 0.0, val = NAN;
  int64_t tokens = 0;
  int tty = isatty(STDOUT_FILENO);
  loss_progress prog = {.first_it = iter + 1, .tty = tty};
  loss_lag lag;
  loss_lag_init(&lag, kiln_compiled_output_depth(tg->c, tg->loss));
  for (; iter < o.iters; iter++) {
    int64_t it = iter + 1;
    /* the draw is the iteration, so a resumed run reads the same batches */
    if (kiln_text_random_windows(&text, 0, o.batch, o.block, o.seed, (uint64_t)iter, x, y) != KILN_OK) goto fail_run;
    int sync = (o.eval_every && it % o.eval_every == 0) || it == o.iters;
    double t0 = now_s();
    int64_t its[LOSS_LAG_MAX];
    float losses[LOSS_LAG_MAX];
    if (gpt_graph_submit(tg, x, y) != KILN_OK) goto fail_run;
    int n_due = loss_lag_after(&lag, tg, read_loss, it, sync, its, losses);
    if (n_due < 0) goto fail_run;
    train_s += now_s() - t0;
    for (int j = 0; j < n_due; j++) {   /* steps whose loss came back, in order */
      int64_t done_it = its[j];
      tokens += (int64_t)o.batch * o.block;
      if (!isfinite(losses[j])) {
        fprintf(stderr, "kiln train " MODEL ": iteration %lld: the loss is %g (diverged; lower --lr)\n",
                (long long)done_it, (double)losses[j]);
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
    char s_batch[16], s_lr[32], s_min[32], s_warm[32], s_decay[32], s_wd[32], s_clip[32], s_drop[32], s_seed[32];
    snprintf(s_batch, sizeof s_batch, "%d", o.batch);
    snprintf(s_lr, sizeof s_lr, "%.9g", o.lr);
    snprintf(s_min, sizeof s_min, "%.9g", o.min_lr);
    snprintf(s_warm, sizeof s_warm, "%lld", (long long)o.warmup);
    snprintf(s_decay, sizeof s_decay, "%lld", (long long)o.decay_iters);
    snprintf(s_wd, sizeof s_wd, "%.9g", o.weight_decay);
    snprintf(s_clip, sizeof s_clip, "%.9g", o.clip);
    snprintf(s_drop, sizeof s_drop, "%.9g", o.dropout);
    snprintf(s_seed, sizeof s_seed, "%llu", (unsigned long long)o.seed);
    const char *keys[] = {"batch", "lr", "min_lr", "warmup", "lr_decay_iters", "weight_decay", "clip",
                          "dropout", "seed", "kiln.version"};
    const char *vals[] = {s_batch, s_lr, s_min, s_warm, s_decay, s_wd, s_clip, s_drop, s_seed,
                          kiln_version_string()};
    if (gpt_save(o.save, m, tg, iter, keys, vals, 10) != KILN_OK) {
      fprintf(stderr, "kiln train " MODEL ": cannot save: %s\n", gpt_error());
      goto done;
    }
    printf("  saved %s\n", o.save);
  }
  printf("val_loss=%.4f tokens_per_s=%.1f iters=%lld backend=%s device=\"%s\"\n", val,
         train_s > 0 ? (double)tokens / train_s : 0.0, (long long)iter, backend, devname);
  rc = 0;
  goto done;

fail_run:
  fprintf(stderr, "kiln train " MODEL ": iteration %lld: %s\n", (long long)iter + 1, gpt_error());
done:
  free(x);
  free(y);
  gpt_graph_destroy(tg);
  gpt_graph_destroy(eg);
  gpt_model_destroy(m);
  if (dev) kiln_device_close(dev);
  kiln_context_destroy(ctx);
  kiln_text_free(&text);
  return rc;
}
