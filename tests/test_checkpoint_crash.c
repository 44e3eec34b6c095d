/*
 * test_checkpoint_crash.c - `kiln train mnist-cnn --save` is SIGKILLed at
 * random moments, half of them the instant its temporary file appears (in
 * the middle of a save). After every kill the checkpoint on disk must be
 * whole (a trainer loads it: every tensor, the optimizer state, the epoch)
 * and be the one saved last before the kill or a newer one, never older and
 * never torn. Then `--resume` from it trains on to a later epoch.
 *
 * Data: KILN_TEST_DATA/mnist (64 training images, so an epoch is short and
 * saves are frequent). KILN_TEST_SKIP_SLOW=1 (the sanitizer stage) makes
 * fewer kills.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kiln/kiln.h"
#include "kiln/nn.h"
#include "testutil.h"

#define KILN_BIN KILN_BUILD_DIR "/bin/kiln"
#define EPOCHS_FOREVER "100000"

static char dir[256], ckpt[300], logpath[300];

static void mkdir_tmp(void) {
  snprintf(dir, sizeof dir, "/tmp/kiln-crash-XXXXXX");
  cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
  snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", dir);
  snprintf(logpath, sizeof logpath, "%s/train.log", dir);
}

static void rm_tmp(void) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  char p[600];
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

/* Starts kiln train; stdout and stderr go to the log. */
static pid_t start_train(const char *epochs, int resume) {
  pid_t pid = fork();
  cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
  if (pid == 0) {
    FILE *f = freopen(logpath, "a", stdout);
    if (f) dup2(fileno(stdout), 2);
    const char *argv[32];
    int a = 0;
    argv[a++] = KILN_BIN;
    argv[a++] = "train";
    argv[a++] = "mnist-cnn";
    argv[a++] = "--backend";
    argv[a++] = "cpu";
    argv[a++] = "--epochs";
    argv[a++] = epochs;
    argv[a++] = "--batch";
    argv[a++] = "32";
    argv[a++] = "--train-samples";
    argv[a++] = "64";
    argv[a++] = "--test-samples";
    argv[a++] = "16";
    argv[a++] = "--data";
    argv[a++] = tu_data_path("");
    argv[a++] = "--save";
    argv[a++] = ckpt;
    if (resume) {
      argv[a++] = "--resume";
      argv[a++] = ckpt;
    }
    argv[a] = NULL;
    execv(KILN_BIN, (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

/* 1 if dir holds PATH.tmp-PID (a save in progress). */
static int save_in_progress(pid_t pid) {
  char tmp[400];
  snprintf(tmp, sizeof tmp, "%s.tmp-%d", ckpt, (int)pid);
  return access(tmp, F_OK) == 0;
}

/* The epoch a checkpoint holds after loading it whole into a fresh trainer,
 * or -1 if there is no checkpoint yet. Fails the test if it is not whole. */
static long load_whole(kiln_device *dev) {
  struct stat sb;
  if (stat(ckpt, &sb) != 0) return -1;
  kiln_model *m = NULL;
  kiln_trainer *t = NULL;
  kiln_optimizer_config adam;
  cr_assert_eq(kiln_model_mnist_cnn(dev, 1, &m), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_optimizer_defaults(KILN_OPTIM_ADAM, &adam), KILN_OK);
  cr_assert_eq(kiln_trainer_create(m, &adam, 32, 1, &t), KILN_OK, "%s", kiln_last_error());
  kiln_status st = kiln_trainer_load(t, ckpt);
  cr_assert_eq(st, KILN_OK, "the checkpoint left by a killed save does not load: %s",
               kiln_last_error());
  char buf[64];
  cr_assert_eq(kiln_checkpoint_meta(ckpt, "epoch", buf, sizeof buf), KILN_OK);
  long epoch = (long)kiln_trainer_epoch(t);
  cr_assert_eq(epoch, atol(buf), "trainer epoch %ld, metadata %s", epoch, buf);
  cr_assert_gt(epoch, 0, "a saved checkpoint holds epoch %ld", epoch);
  kiln_trainer_destroy(t);
  kiln_model_destroy(m);
  return epoch;
}

Test(checkpoint, sigkill_never_leaves_a_torn_checkpoint_and_resume_continues, .timeout = 900) {
  const char *slow = getenv("KILN_TEST_SKIP_SLOW");
  int kills = slow && *slow && strcmp(slow, "0") != 0 ? 6 : 16;
  kiln_context *ctx;
  kiln_device *dev;
  tu_open_cpu(&ctx, &dev);
  mkdir_tmp();

  uint64_t rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
  long last = -1;        /* epoch of the newest checkpoint seen on disk */
  int mid_save = 0, grew = 0;
  for (int k = 0; k < kills; k++) {
    pid_t pid = start_train(EPOCHS_FOREVER, last > 0);
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    if (k % 2 == 0) {
      /* at a random moment: loading, training, evaluating or saving */
      sleep_us(200000 + (long)(rng % 1500000));
    } else {
      /* the moment a save has begun: the first, second or third one seen */
      int want = 1 + (int)(rng % 3), seen = 0, was = 0;
      for (long waited = 0; waited < 120000000; waited += 100) {
        int now = save_in_progress(pid);
        if (now && !was && ++seen == want) break;
        was = now;
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "kiln train exited early (log %s)",
                     logpath);
        sleep_us(100);
      }
      if (save_in_progress(pid)) mid_save++;
    }
    cr_assert_eq(kill(pid, SIGKILL), 0);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "kiln train ended by itself before the kill (status %d; log %s)", status, logpath);
    long now = load_whole(dev);
    cr_assert_geq(now, last, "kill %d: the checkpoint went back from epoch %ld to %ld", k, last,
                  now);
    if (now > last) grew++;
    last = now;
  }
  cr_assert_gt(last, 0, "no checkpoint was ever saved in %d runs (log %s)", kills, logpath);
  cr_assert_gt(mid_save, 0, "no kill landed in the middle of a save");
  cr_log_info("%d kills, %d in the middle of a save, checkpoint grew %d times to epoch %ld", kills,
              mid_save, grew, last);

  /* resume to two epochs past the checkpoint, to the end this time */
  char target[32];
  snprintf(target, sizeof target, "%ld", last + 2);
  pid_t pid = start_train(target, 1);
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "kiln train --resume from the killed run's checkpoint failed (log %s)", logpath);
  cr_assert_eq(load_whole(dev), last + 2, "resumed training did not reach epoch %ld", last + 2);
  /* the killed saves' PATH.tmp-PID files went with the resumed run's saves */
  DIR *d = opendir(dir);
  cr_assert_not_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    cr_expect_null(strstr(e->d_name, ".tmp-"), "a killed save's temporary file remains: %s/%s", dir,
                   e->d_name);
  closedir(d);

  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  rm_tmp();
}
