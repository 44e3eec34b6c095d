/*
 * cmd_train.c - `kiln train MODEL` and `kiln eval MODEL`.
 *
 *   kiln train mnist-cnn [--backend cpu|vulkan|auto] [--device N] [--epochs N]
 *                        [--batch N] [--lr X] [--seed N] [--data DIR]
 *                        [--train-samples N] [--test-samples N] [--save FILE]
 *                        [--resume FILE] [--metrics FILE.csv]
 *   kiln eval mnist-cnn --load FILE [--backend ...] [--device N] [--data DIR]
 *                        [--test-samples N] [--batch N]
 *
 * The last line `kiln train` prints to stdout is machine-readable and stable:
 *   test_accuracy=0.9921 test_loss=0.0270 images_per_s=1234.5 epochs=10 backend=cpu device="NAME"
 * (keys in this order; device quoted, with any '"' in the name replaced by '\'').
 * `kiln eval` ends the same way with test_accuracy, test_loss, samples,
 * backend and device.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "kiln/data.h"
#include "kiln/kiln.h"
#include "kiln/nn.h"

typedef struct train_opts {
  const char *model;
  const char *backend;      /* "auto" */
  int device;               /* -1: the backend's best */
  int epochs;               /* 10 */
  int batch;                /* 64 */
  double lr;                /* 1e-3 */
  uint64_t seed;            /* 1 */
  const char *data;         /* NULL: KILN_DATA, then the cache */
  int64_t train_samples;    /* 0: all */
  int64_t test_samples;     /* 0: all */
  const char *save;
  const char *resume;
  const char *load;         /* eval */
  const char *metrics;
  int have_batch, have_lr, have_seed;
} train_opts;

static void train_usage(FILE *f) {
  fprintf(f,
          "usage: kiln train MODEL [options]\n"
          "\n"
          "models:\n"
          "  mnist-cnn            the reference CNN on MNIST (options below)\n"
          "  char-lstm, char-gru  character-level RNN language models\n"
          "                       (`kiln train char-lstm --help`)\n"
          "  char-gpt             a character-level GPT (`kiln train char-gpt --help`)\n"
          "\n"
          "usage: kiln train mnist-cnn [options]\n"
          "\n"
          "Trains the reference MNIST CNN (conv 32-64-64, dense 64-10, Adam,\n"
          "cross-entropy) and evaluates it on the test set after each epoch.\n"
          "\n"
          "options:\n"
          "  --backend NAME       cpu, vulkan or auto (default auto: the best device)\n"
          "  --device N           device index within the backend (default: its best)\n"
          "  --epochs N           total epochs to reach (default 10; with --resume,\n"
          "                       training continues up to epoch N)\n"
          "  --batch N            batch size (default 64)\n"
          "  --lr X               Adam learning rate (default 0.001)\n"
          "  --seed N             initialisation and shuffling seed (default 1)\n"
          "  --data DIR           data directory holding mnist/ (default $KILN_DATA,\n"
          "                       else the cache that `kiln fetch mnist` fills)\n"
          "  --train-samples N    use only the first N training images\n"
          "  --test-samples N     use only the first N test images\n"
          "  --save FILE          save a checkpoint after each epoch (atomic)\n"
          "  --resume FILE        continue from a checkpoint: epoch, step, optimizer\n"
          "                       state, and its seed, batch and lr unless given\n"
          "  --metrics FILE.csv   append per-epoch metrics (epoch,step,train_loss,\n"
          "                       train_acc,test_loss,test_acc,images_per_s,seconds)\n"
          "  --help               show this help\n"
          "\n"
          "Every sample is trained on each epoch: the final partial batch has its\n"
          "own compiled graph. The last line printed is machine-readable:\n"
          "  test_accuracy=A test_loss=L images_per_s=R epochs=E backend=B device=\"NAME\"\n");
}

static void eval_usage(FILE *f) {
  fprintf(f,
          "usage: kiln eval mnist-cnn --load FILE [options]\n"
          "\n"
          "Evaluates a checkpoint on the MNIST test set.\n"
          "\n"
          "options:\n"
          "  --load FILE          the checkpoint (from kiln train --save)\n"
          "  --backend NAME       cpu, vulkan or auto (default auto)\n"
          "  --device N           device index within the backend\n"
          "  --batch N            evaluation batch size (default 64)\n"
          "  --data DIR           data directory holding mnist/\n"
          "  --test-samples N     use only the first N test images\n"
          "  --help               show this help\n"
          "\n"
          "The last line printed is machine-readable:\n"
          "  test_accuracy=A test_loss=L samples=N backend=B device=\"NAME\"\n");
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Parses a whole decimal integer in [lo, hi]. */
static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (!s || !*s) return 0;
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return 0;
  *out = v;
  return 1;
}

static int parse_f64(const char *s, double *out) {
  if (!s || !*s) return 0;
  errno = 0;
  char *end;
  double v = strtod(s, &end);
  if (errno || *end || !(v > 0) || v > 1e3) return 0;
  *out = v;
  return 1;
}

/* Parses argv[1..] of `kiln train`/`kiln eval`. Returns 0 on success, 2 on
 * a usage error (after printing it), -1 when --help was printed. */
static int parse_opts(int argc, char **argv, int is_eval, train_opts *o) {
  const char *cmd = argv[0];
  memset(o, 0, sizeof *o);
  o->backend = "auto";
  o->device = -1;
  o->epochs = 10;
  o->batch = 64;
  o->lr = 1e-3;
  o->seed = 1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      (is_eval ? eval_usage : train_usage)(stdout);
      return -1;
    }
    if (strncmp(a, "--", 2) != 0) {
      if (o->model) {
        fprintf(stderr, "kiln %s: unexpected argument '%s' (the model is already '%s')\n", cmd, a,
                o->model);
        return 2;
      }
      o->model = a;
      continue;
    }
    /* --flag VALUE or --flag=VALUE */
    char flag[64];
    const char *val = NULL;
    const char *eq = strchr(a, '=');
    size_t flen = eq ? (size_t)(eq - a) : strlen(a);
    if (flen >= sizeof flag) flen = sizeof flag - 1;
    memcpy(flag, a, flen);
    flag[flen] = '\0';
    static const char *const train_flags[] = {"--backend", "--device", "--epochs", "--batch",
                                              "--lr", "--seed", "--data", "--train-samples",
                                              "--test-samples", "--save", "--resume",
                                              "--metrics", NULL};
    static const char *const eval_flags[] = {"--backend", "--device", "--batch", "--data",
                                             "--test-samples", "--load", NULL};
    const char *const *known = is_eval ? eval_flags : train_flags;
    int ok = 0;
    for (int k = 0; known[k]; k++)
      if (!strcmp(flag, known[k])) ok = 1;
    if (!ok) {
      fprintf(stderr, "kiln %s: unknown option '%s' (see kiln %s --help)\n", cmd, flag, cmd);
      return 2;
    }
    if (eq) {
      val = eq + 1;
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      fprintf(stderr, "kiln %s: option %s needs a value\n", cmd, flag);
      return 2;
    }
    int64_t v = 0;
    int good = 1;
    if (!strcmp(flag, "--backend")) {
      o->backend = val;
      good = *val != '\0';
    } else if (!strcmp(flag, "--device")) {
      good = parse_i64(val, 0, 1 << 20, &v);
      o->device = (int)v;
    } else if (!strcmp(flag, "--epochs")) {
      good = parse_i64(val, 1, 1000000, &v);
      o->epochs = (int)v;
    } else if (!strcmp(flag, "--batch")) {
      good = parse_i64(val, 1, 1 << 20, &v);
      o->batch = (int)v;
      o->have_batch = 1;
    } else if (!strcmp(flag, "--lr")) {
      good = parse_f64(val, &o->lr);
      o->have_lr = 1;
    } else if (!strcmp(flag, "--seed")) {
      good = parse_i64(val, 0, INT64_MAX, &v);
      o->seed = (uint64_t)v;
      o->have_seed = 1;
    } else if (!strcmp(flag, "--data")) {
      o->data = val;
      good = *val != '\0';
    } else if (!strcmp(flag, "--train-samples")) {
      good = parse_i64(val, 1, INT64_MAX, &o->train_samples);
    } else if (!strcmp(flag, "--test-samples")) {
      good = parse_i64(val, 1, INT64_MAX, &o->test_samples);
    } else if (!strcmp(flag, "--save")) {
      o->save = val;
      good = *val != '\0';
    } else if (!strcmp(flag, "--resume")) {
      o->resume = val;
      good = *val != '\0';
    } else if (!strcmp(flag, "--load")) {
      o->load = val;
      good = *val != '\0';
    } else if (!strcmp(flag, "--metrics")) {
      o->metrics = val;
      good = *val != '\0';
    }
    if (!good) {
      fprintf(stderr, "kiln %s: bad value '%s' for %s\n", cmd, val, flag);
      return 2;
    }
  }
  if (!o->model) {
    fprintf(stderr, "kiln %s: which model? (known: %s)\n", cmd,
            is_eval ? "mnist-cnn" : "mnist-cnn, char-lstm, char-gru, char-gpt");
    (is_eval ? eval_usage : train_usage)(stderr);
    return 2;
  }
  if (strcmp(o->model, "mnist-cnn") != 0) {
    fprintf(stderr, "kiln %s: unknown model '%s' (known: %s)\n", cmd, o->model,
            is_eval ? "mnist-cnn; char models are checked by their validation loss in training"
                    : "mnist-cnn, char-lstm, char-gru, char-gpt");
    return 2;
  }
  if (is_eval && !o->load) {
    fprintf(stderr, "kiln eval: --load FILE is required\n");
    return 2;
  }
  return 0;
}

static int is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Loads MNIST's split from DIR/mnist (or DIR itself if it holds the files). */
static int load_mnist(const char *cmd, const char *data_opt, int train, int64_t limit,
                      kiln_mnist *out) {
  char base[4096], dir[4200];
  if (kiln_data_dir(data_opt, base, sizeof base) != KILN_OK) {
    fprintf(stderr, "kiln %s: %s\n", cmd, kiln_last_error());
    return 0;
  }
  snprintf(dir, sizeof dir, "%s/mnist", base);
  if (!is_dir(dir)) snprintf(dir, sizeof dir, "%s", base);
  kiln_status st = kiln_mnist_load(dir, train, limit, out);
  if (st != KILN_OK) {
    fprintf(stderr, "kiln %s: cannot load the MNIST %s set from %s: %s\n", cmd,
            train ? "training" : "test", dir, kiln_last_error());
    if ((st == KILN_NOT_FOUND || st == KILN_IO_ERROR) && !strstr(kiln_last_error(), "kiln fetch"))
      fprintf(stderr, "kiln %s: run `kiln fetch mnist` to download it, or give --data DIR "
                      "(or KILN_DATA) naming a directory that holds mnist/\n", cmd);
    return 0;
  }
  return 1;
}

static kiln_dataset mnist_dataset(const kiln_mnist *m) {
  kiln_dataset ds;
  memset(&ds, 0, sizeof ds);
  ds.n = m->n;
  ds.x_u8 = m->images;
  ds.x_scale = 1.0f / 255.0f;
  ds.y_u8 = m->labels;
  return ds;
}

/* The device's name with any '"' replaced, for the machine-readable line. */
static void device_label(kiln_device *dev, char *backend, size_t bsize, char *name,
                         size_t nsize) {
  kiln_device_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  snprintf(backend, bsize, "%s", kiln_plugin_name(kiln_device_plugin(dev)));
  if (kiln_device_get_info(dev, &info) != KILN_OK) snprintf(info.name, sizeof info.name, "?");
  snprintf(name, nsize, "%s", info.name);
  for (char *p = name; *p; p++)
    if (*p == '"' || *p == '\n') *p = '\'';
}

static int open_device(const char *cmd, const train_opts *o, kiln_context **ctx,
                       kiln_device **dev) {
  if (kiln_context_create(NULL, ctx) != KILN_OK) {
    fprintf(stderr, "kiln %s: %s\n", cmd, kiln_last_error());
    return 0;
  }
  if (kiln_device_open(*ctx, o->backend, o->device, dev) != KILN_OK) {
    fprintf(stderr, "kiln %s: cannot open device (backend %s, device %d): %s\n", cmd,
            o->backend, o->device, kiln_last_error());
    fprintf(stderr, "kiln %s: `kiln info` lists the plugins and devices found\n", cmd);
    return 0;
  }
  return 1;
}

/* ---- progress display ----------------------------------------------------- */

typedef struct progress_state {
  int tty;
  int epochs;
  double last_draw;
  int64_t last_line_batch;
} progress_state;

static void fmt_eta(char *buf, size_t size, double s) {
  if (!(s >= 0) || s > 1e7) {
    snprintf(buf, size, "--:--");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, size, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    snprintf(buf, size, "%02ld:%02ld", t / 60, t % 60);
}

static void on_progress(const kiln_progress *p, void *user) {
  progress_state *ps = user;
  double rate = p->seconds > 0 ? (double)p->samples / p->seconds : 0;
  double eta = rate > 0 ? (double)(p->n_samples - p->samples) / rate : -1;
  char etab[32];
  fmt_eta(etab, sizeof etab, eta);
  int done = p->batch == p->n_batches;
  if (ps->tty) {
    double t = now_s();
    if (!done && t - ps->last_draw < 0.1) return;
    ps->last_draw = t;
    int width = 30;
    int filled = (int)((double)width * (double)p->samples / (double)p->n_samples);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    printf("\repoch %lld/%d [%s] %lld/%lld loss %.4f acc %.4f %.0f img/s ETA %s ",
           (long long)p->epoch + 1, ps->epochs, bar, (long long)p->samples,
           (long long)p->n_samples, p->loss, p->accuracy, rate, etab);
    if (done) printf("\n");
    fflush(stdout);
  } else {
    int64_t every = p->n_batches / 10 > 0 ? p->n_batches / 10 : 1;
    if (!done && p->batch - ps->last_line_batch < every) return;
    ps->last_line_batch = done ? 0 : p->batch;
    printf("epoch %lld/%d: %lld/%lld images, loss %.4f, acc %.4f, %.0f images/s, ETA %s\n",
           (long long)p->epoch + 1, ps->epochs, (long long)p->samples, (long long)p->n_samples,
           p->loss, p->accuracy, rate, etab);
    fflush(stdout);
  }
}

/* Appends one metrics row, writing the header first if the file is new. */
static int append_metrics(const char *path, int64_t epoch, int64_t step,
                          const kiln_epoch_stats *tr, const kiln_epoch_stats *te) {
  struct stat sb;
  int fresh = stat(path, &sb) != 0 || sb.st_size == 0;
  FILE *f = fopen(path, "a");
  if (!f) {
    fprintf(stderr, "kiln train: cannot open metrics file %s: %s\n", path, strerror(errno));
    return 0;
  }
  if (fresh) fprintf(f, "epoch,step,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds\n");
  double ips = tr->seconds > 0 ? (double)tr->samples / tr->seconds : 0;
  fprintf(f, "%lld,%lld,%.6f,%.6f,%.6f,%.6f,%.1f,%.3f\n", (long long)epoch, (long long)step,
          tr->loss, tr->accuracy, te->loss, te->accuracy, ips, tr->seconds);
  int ok = fclose(f) == 0;
  if (!ok) fprintf(stderr, "kiln train: cannot write metrics file %s\n", path);
  return ok;
}

/* With --resume, takes seed, batch and lr from the checkpoint unless the
 * command line gave them. */
static int resume_settings(const char *path, train_opts *o) {
  char buf[128];
  int64_t v;
  if (!o->have_seed && kiln_checkpoint_meta(path, "seed", buf, sizeof buf) == KILN_OK) {
    if (!parse_i64(buf, 0, INT64_MAX, &v)) goto bad;
    o->seed = (uint64_t)v;
  }
  if (!o->have_batch && kiln_checkpoint_meta(path, "batch", buf, sizeof buf) == KILN_OK) {
    if (!parse_i64(buf, 1, 1 << 20, &v)) goto bad;
    o->batch = (int)v;
  }
  if (!o->have_lr && kiln_checkpoint_meta(path, "lr", buf, sizeof buf) == KILN_OK) {
    if (!parse_f64(buf, &o->lr)) goto bad;
  }
  return 1;
bad:
  fprintf(stderr, "kiln train: checkpoint %s has unreadable metadata '%s'\n", path, buf);
  return 0;
}

int kiln_cmd_train(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "char-lstm") || !strcmp(argv[1], "char-gru")))
    return kiln_cmd_train_char(argc, argv); /* cmd_char.c */
  if (argc > 1 && !strcmp(argv[1], "char-gpt")) return kiln_cmd_train_gpt(argc, argv); /* cmd_gpt.c */
  train_opts o;
  int rc = parse_opts(argc, argv, 0, &o);
  if (rc == -1) return 0;
  if (rc) return rc;
  if (o.resume && !resume_settings(o.resume, &o)) return 1;

  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  kiln_model *model = NULL;
  kiln_trainer *tr = NULL;
  kiln_mnist train, test;
  memset(&train, 0, sizeof train);
  memset(&test, 0, sizeof test);
  rc = 1;

  if (!load_mnist("train", o.data, 1, o.train_samples, &train)) goto done;
  if (!load_mnist("train", o.data, 0, o.test_samples, &test)) goto done;
  if (!open_device("train", &o, &ctx, &dev)) goto done;

  char backend[64], devname[256];
  device_label(dev, backend, sizeof backend, devname, sizeof devname);

  kiln_optimizer_config optim;
  kiln_optimizer_defaults(KILN_OPTIM_ADAM, &optim);
  optim.lr = (float)o.lr;
  if (kiln_model_mnist_cnn(dev, o.seed, &model) != KILN_OK ||
      kiln_trainer_create(model, &optim, o.batch, o.seed, &tr) != KILN_OK) {
    fprintf(stderr, "kiln train: %s\n", kiln_last_error());
    goto done;
  }
  if (o.resume) {
    if (kiln_trainer_load(tr, o.resume) != KILN_OK) {
      fprintf(stderr, "kiln train: cannot resume: %s\n", kiln_last_error());
      goto done;
    }
  }

  kiln_dataset dtrain = mnist_dataset(&train), dtest = mnist_dataset(&test);
  int64_t start_epoch = kiln_trainer_epoch(tr);
  printf("kiln train mnist-cnn: %s device \"%s\", %lld parameters\n", backend, devname,
         (long long)kiln_model_numel(model));
  printf("  %lld training and %lld test images, batch %d, Adam lr %g, seed %llu, epochs %d\n",
         (long long)train.n, (long long)test.n, o.batch, o.lr, (unsigned long long)o.seed,
         o.epochs);
  char tail[96] = "";
  if (train.n % o.batch)
    snprintf(tail, sizeof tail, " + a final partial batch of %lld (its own compiled graph)",
             (long long)(train.n % o.batch));
  printf("  %lld batches of %d per epoch%s\n", (long long)(train.n / o.batch), o.batch, tail);
  if (o.resume)
    printf("  resumed from %s at epoch %lld, step %lld\n", o.resume, (long long)start_epoch,
           (long long)kiln_trainer_step(tr));
  if (start_epoch >= o.epochs)
    printf("  the checkpoint has already trained %lld epochs (--epochs %d): evaluating only\n",
           (long long)start_epoch, o.epochs);
  fflush(stdout);

  progress_state ps = {isatty(STDOUT_FILENO), o.epochs, 0, 0};
  double train_seconds = 0;
  int64_t train_images = 0;
  kiln_epoch_stats te = {0};
  for (int64_t e = start_epoch; e < o.epochs; e++) {
    kiln_epoch_stats ts;
    if (kiln_trainer_fit_epoch(tr, &dtrain, on_progress, &ps, &ts) != KILN_OK) {
      if (ps.tty) printf("\n");
      fprintf(stderr, "kiln train: epoch %lld: %s\n", (long long)e + 1, kiln_last_error());
      goto done;
    }
    train_seconds += ts.seconds;
    train_images += ts.samples;
    if (kiln_trainer_evaluate(tr, &dtest, &te) != KILN_OK) {
      fprintf(stderr, "kiln train: evaluation after epoch %lld: %s\n", (long long)e + 1,
              kiln_last_error());
      goto done;
    }
    double ips = ts.seconds > 0 ? (double)ts.samples / ts.seconds : 0;
    printf("epoch %lld/%d: train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.1f images/s, "
           "%.1f s\n",
           (long long)e + 1, o.epochs, ts.loss, ts.accuracy, te.loss, te.accuracy, ips,
           ts.seconds);
    fflush(stdout);
    if (o.metrics && !append_metrics(o.metrics, e + 1, kiln_trainer_step(tr), &ts, &te))
      goto done;
    if (o.save) {
      if (kiln_trainer_save(tr, o.save) != KILN_OK) {
        fprintf(stderr, "kiln train: %s\n", kiln_last_error());
        goto done;
      }
    }
  }
  if (start_epoch >= o.epochs && kiln_trainer_evaluate(tr, &dtest, &te) != KILN_OK) {
    fprintf(stderr, "kiln train: evaluation: %s\n", kiln_last_error());
    goto done;
  }
  double ips = train_seconds > 0 ? (double)train_images / train_seconds : 0;
  printf("done: %lld epochs, %lld steps (partial batches trained, none dropped), %.1f s "
         "training, test accuracy %.2f%% on %lld images%s%s\n",
         (long long)kiln_trainer_epoch(tr), (long long)kiln_trainer_step(tr), train_seconds,
         100.0 * te.accuracy, (long long)te.samples, o.save ? ", saved to " : "",
         o.save ? o.save : "");
  printf("test_accuracy=%.4f test_loss=%.4f images_per_s=%.1f epochs=%lld backend=%s device=\"%s\"\n",
         te.accuracy, te.loss, ips, (long long)kiln_trainer_epoch(tr), backend, devname);
  fflush(stdout);
  rc = 0;

done:
  kiln_trainer_destroy(tr);
  kiln_model_destroy(model);
  kiln_mnist_free(&train);
  kiln_mnist_free(&test);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return rc;
}

int kiln_cmd_eval(int argc, char **argv) {
  train_opts o;
  int rc = parse_opts(argc, argv, 1, &o);
  if (rc == -1) return 0;
  if (rc) return rc;

  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  kiln_model *model = NULL;
  kiln_trainer *tr = NULL;
  kiln_mnist test;
  memset(&test, 0, sizeof test);
  rc = 1;

  if (!load_mnist("eval", o.data, 0, o.test_samples, &test)) goto done;
  if (!open_device("eval", &o, &ctx, &dev)) goto done;
  char backend[64], devname[256];
  device_label(dev, backend, sizeof backend, devname, sizeof devname);

  if (kiln_model_mnist_cnn(dev, 0, &model) != KILN_OK) {
    fprintf(stderr, "kiln eval: %s\n", kiln_last_error());
    goto done;
  }
  if (kiln_model_load(model, o.load) != KILN_OK) {
    fprintf(stderr, "kiln eval: %s\n", kiln_last_error());
    goto done;
  }
  if (kiln_trainer_create(model, NULL, o.batch, 0, &tr) != KILN_OK) {
    fprintf(stderr, "kiln eval: %s\n", kiln_last_error());
    goto done;
  }
  kiln_dataset dtest = mnist_dataset(&test);
  kiln_epoch_stats te;
  if (kiln_trainer_evaluate(tr, &dtest, &te) != KILN_OK) {
    fprintf(stderr, "kiln eval: %s\n", kiln_last_error());
    goto done;
  }
  char epoch[64] = "?";
  kiln_checkpoint_meta(o.load, "epoch", epoch, sizeof epoch);
  printf("%s (epoch %s): test accuracy %.2f%%, loss %.4f on %lld images (%.1f images/s)\n",
         o.load, epoch, 100.0 * te.accuracy, te.loss, (long long)te.samples,
         te.seconds > 0 ? (double)te.samples / te.seconds : 0.0);
  printf("test_accuracy=%.4f test_loss=%.4f samples=%lld backend=%s device=\"%s\"\n",
         te.accuracy, te.loss, (long long)te.samples, backend, devname);
  fflush(stdout);
  rc = 0;

done:
  kiln_trainer_destroy(tr);
  kiln_model_destroy(model);
  kiln_mnist_free(&test);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return rc;
}
