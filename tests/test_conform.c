/*
 * test_conform.c - `kiln conform` on plugins that conform and plugins that
 * do not: the CPU plugin, the template plugin, a template whose ADD computes
 * a - b, a fake plugin that crashes on NULL arguments and refuses every
 * graph, a plugin of another ABI major, and (when built) the Vulkan plugin.
 * Each runs B/bin/kiln as a subprocess and reads its exit status, its table
 * and its --json file.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define KILN_BIN KILN_BUILD_DIR "/bin/kiln"
#define CPU_PLUGIN KILN_BUILD_DIR "/lib/kiln/libkiln-cpu.so"
#define VULKAN_PLUGIN KILN_BUILD_DIR "/lib/kiln/libkiln-vulkan.so"
#define TEMPLATE_PLUGIN KILN_BUILD_DIR "/lib/kiln-extra/libkiln-template.so"
#define FAKE(name) KILN_FAKE_PLUGIN_DIR "/lib" name ".so"

typedef struct conform_result {
  int exit_code;     /* -1 if the tool itself died */
  char *table;       /* stdout + stderr */
  char *json;        /* the --json file */
} conform_result;

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  cr_assert_not_null(s);
  size_t got = fread(s, 1, (size_t)n, f);
  s[got] = '\0';
  fclose(f);
  return s;
}

/* Runs `kiln conform PLUGIN EXTRA --json TMP`. */
static conform_result run_conform(const char *plugin, const char *extra) {
  char dir[] = "/tmp/kiln-conform-XXXXXX";
  cr_assert_not_null(mkdtemp(dir));
  char cmd[4096], out[512], json[512];
  snprintf(out, sizeof out, "%s/out.txt", dir);
  snprintf(json, sizeof json, "%s/result.json", dir);
  snprintf(cmd, sizeof cmd, "'%s' conform '%s' %s --json '%s' > '%s' 2>&1", KILN_BIN, plugin,
           extra ? extra : "", json, out);
  int status = system(cmd);
  conform_result r = {.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1};
  r.table = slurp(out);
  r.json = slurp(json);
  cr_assert_not_null(r.table, "no output from: %s", cmd);
  unlink(out);
  unlink(json);
  rmdir(dir);
  return r;
}

static void free_result(conform_result *r) {
  free(r->table);
  free(r->json);
}

/* The verdict ("pass", "fail", "untested") of the JSON row named `name`
 * (an op, or a check) into buf; "" if there is no such row. */
static const char *verdict_of(const char *json, const char *name, char *buf, size_t n) {
  char key[160];
  snprintf(key, sizeof key, "{\"name\": \"%s\",", name);
  buf[0] = '\0';
  const char *row = json ? strstr(json, key) : NULL;
  if (!row) return buf;
  const char *v = strstr(row, "\"verdict\": \"");
  if (!v) return buf;
  v += strlen("\"verdict\": \"");
  size_t i = 0;
  while (v[i] && v[i] != '"' && i + 1 < n) {
    buf[i] = v[i];
    i++;
  }
  buf[i] = '\0';
  return buf;
}

static void assert_verdict(const conform_result *r, const char *name, const char *want) {
  char got[32];
  verdict_of(r->json, name, got, sizeof got);
  cr_assert_str_eq(got, want, "row '%s': verdict '%s', want '%s'\n%s", name, got, want, r->table);
}

Test(conform, cpu_plugin_conforms) {
  conform_result r = run_conform(CPU_PLUGIN, NULL);
  cr_assert_eq(r.exit_code, 0, "exit %d\n%s", r.exit_code, r.table);
  cr_assert_not_null(r.json);
  cr_assert_not_null(strstr(r.json, "\"failures\": 0,"), "%s", r.json);
  static const char *const ops[] = {"add", "matmul", "sum", "softmax", "cross_entropy",
                                    "conv2d", "conv2d_backward_weight", "maxpool2d",
                                    "avgpool2d_backward", "adam", "sgd", "transpose"};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) assert_verdict(&r, ops[i], "pass");
  assert_verdict(&r, "graph_compile mismatched shapes", "pass");
  assert_verdict(&r, "device_info(0) short struct", "pass");
  assert_verdict(&r, "exec_write/exec_read (ABI 1.1)", "pass");   /* not offered: optional */
  cr_assert_not_null(strstr(r.json, "not offered (optional since ABI 1.1)"), "%s", r.json);
  cr_assert_not_null(strstr(r.table, "conformant"), "%s", r.table);
  free_result(&r);
}

Test(conform, template_plugin_conforms_with_exactly_its_ops) {
  conform_result r = run_conform(TEMPLATE_PLUGIN, NULL);
  cr_assert_eq(r.exit_code, 0, "exit %d\n%s", r.exit_code, r.table);
  static const char *const ops[] = {"add", "mul", "relu", "relu_backward", "matmul", "sum",
                                    "fill"};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) assert_verdict(&r, ops[i], "pass");
  /* What it does not claim is not tried. */
  char got[32];
  cr_assert_str_empty(verdict_of(r.json, "conv2d", got, sizeof got), "%s", r.table);
  cr_assert_str_empty(verdict_of(r.json, "sub", got, sizeof got), "%s", r.table);
  cr_assert_not_null(strstr(r.table, "7 claimed op/dtype pairs, 0 untested, 0 failures"), "%s",
                     r.table);
  free_result(&r);
}

Test(conform, wrong_add_fails_and_only_add) {
  conform_result r = run_conform(FAKE("fake_wrong_add"), NULL);
  cr_assert_eq(r.exit_code, 1, "exit %d\n%s", r.exit_code, r.table);
  assert_verdict(&r, "add", "fail");
  assert_verdict(&r, "mul", "pass");
  assert_verdict(&r, "matmul", "pass");
  cr_assert_not_null(strstr(r.table, "NOT CONFORMANT"), "%s", r.table);
  cr_assert_not_null(strstr(r.json, "\"failures\": 1,"), "%s", r.json);
  free_result(&r);
}

Test(conform, a_false_in_place_claim_fails) {
  conform_result r = run_conform(FAKE("fake_in_place_clobber"), NULL);
  cr_assert_eq(r.exit_code, 1, "exit %d\n%s", r.exit_code, r.table);
  assert_verdict(&r, "add", "fail");
  assert_verdict(&r, "mul", "pass");
  cr_assert_not_null(strstr(r.table, "claimed in place"), "%s", r.table);
  free_result(&r);
}

/* fake_good dereferences NULL arguments and refuses every graph while it
 * claims ADD: the crashes are reported per probe, the tool survives, and the
 * ADD claim fails. */
Test(conform, crashes_are_failures_not_crashes_of_the_tool) {
  conform_result r = run_conform(FAKE("fake_good"), NULL);
  cr_assert_eq(r.exit_code, 1, "exit %d\n%s", r.exit_code, r.table);
  assert_verdict(&r, "init", "pass");
  assert_verdict(&r, "device_info NULL info", "fail");
  assert_verdict(&r, "buffer_write NULL buffer", "fail");
  assert_verdict(&r, "add", "fail");
  cr_assert_not_null(strstr(r.table, "crashed (signal"), "%s", r.table);
  cr_assert_not_null(strstr(r.table, "graph_compile refused"), "%s", r.table);
  free_result(&r);
}

Test(conform, another_abi_major_stops_at_negotiation) {
  conform_result r = run_conform(FAKE("fake_abi_major"), NULL);
  cr_assert_eq(r.exit_code, 1, "exit %d\n%s", r.exit_code, r.table);
  assert_verdict(&r, "entry ABI version", "fail");
  char got[32];
  cr_assert_str_empty(verdict_of(r.json, "init", got, sizeof got),
                      "init of a plugin of another major must not run\n%s", r.table);
  cr_assert_not_null(strstr(r.table, "negotiation failed"), "%s", r.table);
  free_result(&r);
}

Test(conform, not_a_plugin) {
  conform_result r = run_conform(FAKE("fake_noentry"), NULL);
  cr_assert_eq(r.exit_code, 1, "exit %d\n%s", r.exit_code, r.table);
  assert_verdict(&r, "entry symbol", "fail");
  free_result(&r);
}

Test(conform, usage_errors) {
  int st = system("'" KILN_BIN "' conform > /dev/null 2>&1");
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "no plugin: status %d", st);
  st = system("'" KILN_BIN "' conform '" CPU_PLUGIN "' --device x > /dev/null 2>&1");
  cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "bad --device: status %d", st);
  conform_result r = run_conform(CPU_PLUGIN, "--reference /nonexistent/libkiln-cpu.so");
  cr_assert_eq(r.exit_code, 1, "a missing reference must fail\n%s", r.table);
  cr_assert_not_null(strstr(r.table, "/nonexistent/libkiln-cpu.so"), "%s", r.table);
  free_result(&r);
}

Test(conform, device_out_of_range_fails) {
  conform_result r = run_conform(TEMPLATE_PLUGIN, "--device 5");
  cr_assert_eq(r.exit_code, 1, "exit %d\n%s", r.exit_code, r.table);
  free_result(&r);
}

Test(conform, vulkan_plugin_if_built, .timeout = 1200) {
  if (access(VULKAN_PLUGIN, R_OK) != 0) cr_skip_test("the Vulkan plugin is not built");
  conform_result r = run_conform(VULKAN_PLUGIN, NULL);
  if (r.exit_code == 1 && strstr(r.table, "device_count") && strstr(r.table, "0 devices"))
    cr_skip_test("no Vulkan device here");
  cr_assert_eq(r.exit_code, 0, "exit %d\n%s", r.exit_code, r.table);
  assert_verdict(&r, "matmul", "pass");
  /* the Vulkan plugin offers ABI 1.1's staged io, four runs deep */
  assert_verdict(&r, "exec_write/exec_read (ABI 1.1)", "pass");
  cr_assert_not_null(strstr(r.json, "history 4"), "%s", r.json);
  free_result(&r);
}
