/*
 * cmd_sample.c - `kiln sample --load FILE [--prompt TEXT] [--tokens N]
 *                [--temperature T] [--top-k K] [--seed S] [--backend NAME]`:
 * streams characters from a char-lstm/char-gru checkpoint. The prompt is
 * fed one character at a time (echoed), then each next character is drawn
 * from softmax(logits / T), restricted to the K most likely if --top-k is
 * given, and fed back. Without a prompt the model starts from a newline
 * (or the first character of its vocabulary), which is not printed.
 *
 * A char-gpt checkpoint (kiln.model metadata) is sampled as nanoGPT's
 * generate() does: the context is the last `block` characters (a sliding
 * window), run through the model at once, and the next character is drawn
 * from the logits of its last position.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "char_model.h"
#include "commands.h"
#include "gpt_model.h"
#include "kiln/data.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: kiln sample --load FILE [options]\n"
          "\n"
          "Generates text from a checkpoint of `kiln train char-lstm|char-gru|char-gpt`.\n"
          "\n"
          "options:\n"
          "  --load FILE          the checkpoint (required)\n"
          "  --prompt TEXT        text to start from (echoed; default: a newline, not shown)\n"
          "  --tokens N           characters to generate (default 500)\n"
          "  --temperature T      softmax temperature, > 0 (default 1.0)\n"
          "  --top-k K            sample among the K most likely characters (default: all)\n"
          "  --seed S             sampling seed (default 1)\n"
          "  --backend NAME       cpu, vulkan or auto (default cpu)\n");
}

static uint64_t rng_next(uint64_t *s) {
  uint64_t x = (*s += 0x9E3779B97F4A7C15ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* Draws an index from softmax(logits / temp) over the top_k largest (0: all). */
static int draw(const float *logits, int V, double temp, int top_k, uint64_t *rng) {
  double p[256], mx = -INFINITY;
  int keep[256];
  for (int i = 0; i < V; i++) keep[i] = 1;
  if (top_k > 0 && top_k < V) {
    /* the K-th largest logit is the threshold (ties at it stay in) */
    float sorted[256];
    memcpy(sorted, logits, (size_t)V * sizeof *sorted);
    for (int i = 0; i < top_k; i++)
      for (int j = i + 1; j < V; j++)
        if (sorted[j] > sorted[i]) {
          float t = sorted[i];
          sorted[i] = sorted[j];
          sorted[j] = t;
        }
    for (int i = 0; i < V; i++) keep[i] = logits[i] >= sorted[top_k - 1];
  }
  for (int i = 0; i < V; i++)
    if (keep[i] && logits[i] / temp > mx) mx = logits[i] / temp;
  double sum = 0.0;
  for (int i = 0; i < V; i++) sum += p[i] = keep[i] ? exp(logits[i] / temp - mx) : 0.0;
  double u = (double)(rng_next(rng) >> 11) * (1.0 / 9007199254740992.0) * sum;
  int last = 0;
  for (int i = 0; i < V; i++) {
    if (!keep[i]) continue;
    last = i;
    if (u < p[i]) return i;
    u -= p[i];
  }
  return last;
}

/* Samples a char-gpt checkpoint with a sliding window of its block size:
 * the graph always sees `block` positions (the context left-aligned, the
 * rest padding that causal attention keeps from the positions read). */
static int sample_gpt(kiln_device *dev, const char *load, const char *prompt, long long tokens,
                      double temp, int top_k, uint64_t seed) {
  gpt_model *m = NULL;
  gpt_graph *sg = NULL;
  int32_t *win = NULL;
  float *logits = NULL;
  int rc = 1;
  if (gpt_load_model(load, dev, &m) != KILN_OK || gpt_graph_create(m, 1, m->block, 0, 0, NULL, &sg) != KILN_OK) {
    fprintf(stderr, "kiln sample: %s\n", gpt_error());
    goto done;
  }
  int T = m->block, V = m->V, n = 0;
  win = calloc((size_t)T, sizeof *win);
  logits = malloc((size_t)T * V * sizeof *logits);
  if (!win || !logits) {
    fprintf(stderr, "kiln sample: out of memory\n");
    goto done;
  }
  int16_t index[256];
  memset(index, 0xff, sizeof index);
  for (int i = 0; i < V; i++) index[m->vocab[i]] = (int16_t)i;
  if (prompt && *prompt) {
    size_t len = strlen(prompt);
    for (size_t i = 0; i < len; i++) {
      unsigned char c = (unsigned char)prompt[i];
      if (index[c] < 0) {
        fprintf(stderr, "kiln sample: the prompt's character 0x%02x ('%c') at offset %d is not in the "
                        "model's vocabulary of %d characters\n", c, c >= 32 && c < 127 ? c : '?', (int)i, V);
        goto done;
      }
    }
    /* the last `block` characters of the prompt are the context */
    for (size_t i = len > (size_t)T ? len - (size_t)T : 0; i < len; i++) win[n++] = index[(unsigned char)prompt[i]];
    fputs(prompt, stdout);
  } else {
    win[n++] = index['\n'] >= 0 ? index['\n'] : 0;
  }
  uint64_t rng = seed;
  for (long long k = 0; k < tokens; k++) {
    if (gpt_graph_run(sg, win, NULL, NULL) != KILN_OK ||
        kiln_compiled_get_output(sg->c, sg->logits, logits, (size_t)T * V * sizeof *logits) != KILN_OK) {
      fprintf(stderr, "\nkiln sample: %s\n", gpt_error());
      goto done;
    }
    int32_t next = draw(logits + (size_t)(n - 1) * V, V, temp, top_k, &rng);
    putchar(m->vocab[next]);
    if (m->vocab[next] == '\n') fflush(stdout);
    if (n == T) { /* slide: drop the oldest character */
      memmove(win, win + 1, (size_t)(T - 1) * sizeof *win);
      n--;
    }
    win[n++] = next;
  }
  putchar('\n');
  rc = 0;
done:
  fflush(stdout);
  free(win);
  free(logits);
  gpt_graph_destroy(sg);
  gpt_model_destroy(m);
  return rc;
}

int kiln_cmd_sample(int argc, char **argv) {
  const char *load = NULL, *prompt = NULL, *backend = "cpu";
  long long tokens = 500, top_k = 0;
  unsigned long long seed = 1;
  double temp = 1.0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    const char *eq = strchr(a, '=');
    char flag[32];
    size_t flen = eq ? (size_t)(eq - a) : strlen(a);
    if (strncmp(a, "--", 2) || flen >= sizeof flag) {
      fprintf(stderr, "kiln sample: unexpected argument '%s' (see kiln sample --help)\n", a);
      return 2;
    }
    memcpy(flag, a, flen);
    flag[flen] = '\0';
    const char *val = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
    if (!val) {
      fprintf(stderr, "kiln sample: option %s needs a value\n", flag);
      return 2;
    }
    char *end = NULL;
    errno = 0;
    int good = 1;
    if (!strcmp(flag, "--load")) load = val, good = *val != '\0';
    else if (!strcmp(flag, "--prompt")) prompt = val;
    else if (!strcmp(flag, "--backend")) backend = val, good = *val != '\0';
    else if (!strcmp(flag, "--tokens")) tokens = strtoll(val, &end, 10), good = tokens >= 0 && tokens <= INT_MAX;
    else if (!strcmp(flag, "--top-k")) top_k = strtoll(val, &end, 10), good = top_k >= 0 && top_k <= 256;
    else if (!strcmp(flag, "--seed")) seed = strtoull(val, &end, 10), good = val[0] != '-';
    else if (!strcmp(flag, "--temperature")) temp = strtod(val, &end), good = temp > 0 && temp <= 100;
    else {
      fprintf(stderr, "kiln sample: unknown option '%s' (see kiln sample --help)\n", flag);
      return 2;
    }
    if (!good || errno || (end && (*end || end == val))) {
      fprintf(stderr, "kiln sample: bad value '%s' for %s\n", val, flag);
      return 2;
    }
  }
  if (!load) {
    fprintf(stderr, "kiln sample: --load FILE is required\n");
    usage(stderr);
    return 2;
  }

  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  char_model *m = NULL;
  char_graph *sg = NULL;
  int rc = 1;
  if (kiln_context_create(NULL, &ctx) != KILN_OK || kiln_device_open(ctx, backend, -1, &dev) != KILN_OK) {
    fprintf(stderr, "kiln sample: cannot open device (backend %s): %s\n", backend, kiln_last_error());
    goto done;
  }
  kiln_safetensors *f = NULL;
  int is_gpt = 0;
  if (kiln_safetensors_open(load, &f) == KILN_OK) {
    const char *kind = kiln_safetensors_meta(f, "kiln.model");
    is_gpt = kind && !strcmp(kind, "char-gpt");
    kiln_safetensors_close(f);
  }
  if (is_gpt) {
    rc = sample_gpt(dev, load, prompt, tokens, temp, (int)top_k, seed);
    goto done;
  }
  if (char_load_model(load, dev, &m) != KILN_OK || char_graph_create(m, 1, 1, 0, NULL, &sg) != KILN_OK) {
    fprintf(stderr, "kiln sample: %s\n", char_error());
    goto done;
  }
  int16_t index[256];
  memset(index, 0xff, sizeof index);
  for (int i = 0; i < m->V; i++) index[m->vocab[i]] = (int16_t)i;
  if (prompt) {
    for (const unsigned char *p = (const unsigned char *)prompt; *p; p++)
      if (index[*p] < 0) {
        fprintf(stderr, "kiln sample: the prompt's character 0x%02x ('%c') at offset %d is not in the "
                        "model's vocabulary of %d characters\n",
                *p, *p >= 32 && *p < 127 ? *p : '?', (int)(p - (const unsigned char *)prompt), m->V);
        goto done;
      }
  }
  const unsigned char *feed = (const unsigned char *)(prompt && *prompt ? prompt : NULL);
  int32_t cur = feed ? index[*feed] : index['\n'] >= 0 ? index['\n'] : 0;
  float logits[256];
  uint64_t rng = seed;
  if (feed) fputs(prompt, stdout);
  for (long long n = 0; n < tokens;) {
    if (char_graph_run(sg, &cur, NULL, NULL) != KILN_OK ||
        kiln_compiled_get_output(sg->c, sg->logits, logits, (size_t)m->V * sizeof *logits) != KILN_OK) {
      fprintf(stderr, "\nkiln sample: %s\n", char_error());
      goto done;
    }
    if (feed && feed[1]) { /* still inside the prompt */
      feed++;
      cur = index[*feed];
      continue;
    }
    feed = NULL;
    cur = draw(logits, m->V, temp, (int)top_k, &rng);
    putchar(m->vocab[cur]);
    if (m->vocab[cur] == '\n') fflush(stdout);
    n++;
  }
  putchar('\n');
  rc = 0;
done:
  fflush(stdout);
  char_graph_destroy(sg);
  char_model_destroy(m);
  if (dev) kiln_device_close(dev);
  kiln_context_destroy(ctx);
  return rc;
}
