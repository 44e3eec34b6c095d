/*
 * test_example_mlp.c - runs the MLP example (B/bin/example-mlp) as a user
 * would and checks that it really learns the three spirals.
 *
 * Bounds, for 600 full-batch Adam steps (lr 0.01) on 300 points:
 *  - final loss < 0.05. A model that has learned nothing sits at
 *    ln 3 = 1.0986 (uniform over 3 classes), and no linear separator
 *    untangles three interleaved spirals. The example reaches about
 *    0.05 by step 300 and about 0.015 by step 600 on the CPU, so the bound
 *    leaves a 3x margin for thread-count and summation-order differences
 *    while still failing if, say, one layer's gradient were wrong or the
 *    optimizer state were not carried across runs.
 *  - accuracy > 0.95: the spirals' angular noise (0.15 rad) makes a few
 *    points ambiguous, and the example gets 0.99 (chance is 0.33).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXAMPLE KILN_BUILD_DIR "/bin/example-mlp"

/* Runs the example with args; returns its exit status and its stdout in out. */
static int run_example(const char *args, char *out, size_t size) {
  cr_assert(access(EXAMPLE, X_OK) == 0, "%s is missing: build the example-mlp target first", EXAMPLE);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", EXAMPLE, args);
  FILE *f = popen(cmd, "r");
  cr_assert_not_null(f, "popen(%s) failed", cmd);
  size_t n = fread(out, 1, size - 1, f);
  out[n] = '\0';
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(example_mlp, learns_the_spirals) {
  static char out[1 << 16];
  int rc = run_example("--steps 600 --backend cpu", out, sizeof out);
  cr_assert_eq(rc, 0, "example-mlp exited with %d:\n%s", rc, out);
  const char *line = strstr(out, "final_loss=");
  cr_assert_not_null(line, "no final_loss line in:\n%s", out);
  double loss = -1.0, accuracy = -1.0;
  cr_assert_eq(sscanf(line, "final_loss=%lf accuracy=%lf", &loss, &accuracy), 2, "cannot parse: %s", line);
  cr_assert_lt(loss, 0.05, "final loss %.4f not below 0.05:\n%s", loss, out);
  cr_assert_gt(accuracy, 0.95, "accuracy %.3f not above 0.95:\n%s", accuracy, out);
  /* the loss went down from chance level: the first report is near ln 3 */
  double first = -1.0;
  const char *s1 = strstr(out, "step     1  loss ");
  cr_assert_not_null(s1, "no step 1 report in:\n%s", out);
  cr_assert_eq(sscanf(s1, "step     1  loss %lf", &first), 1);
  cr_assert_gt(first, 0.9, "step 1 loss %.4f: the model should start near ln 3", first);
}

Test(example_mlp, help_and_bad_arguments) {
  static char out[1 << 12];
  cr_assert_eq(run_example("--help", out, sizeof out), 0, "%s", out);
  cr_assert(strstr(out, "usage:") && strstr(out, "--steps") && strstr(out, "--backend"), "%s", out);
  cr_assert_eq(run_example("--steps 0", out, sizeof out), 2, "%s", out);
  cr_assert_eq(run_example("--no-such-flag", out, sizeof out), 2, "%s", out);
  cr_assert(strstr(out, "usage:"), "%s", out);
}

Test(example_mlp, unknown_backend_fails_with_a_message) {
  static char out[1 << 12];
  int rc = run_example("--steps 1 --backend no-such-backend", out, sizeof out);
  cr_assert_eq(rc, 1, "exit %d:\n%s", rc, out);
  cr_assert(strstr(out, "example-mlp: ") && strstr(out, "no-such-backend"), "%s", out);
}
