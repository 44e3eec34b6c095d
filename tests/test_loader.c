/*
 * test_loader.c - the plugin loader: each refusal with its status, report
 * and message; the good plugin and its device; duplicates; discovery order;
 * device choice; status strings; the per-thread last error.
 *
 * The fake plugins (tests/fake_plugins/) each carry one defect by design.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/kiln.h"
#include "kiln/plugin.h"

#define FAKE(name) KILN_FAKE_PLUGIN_DIR "/lib" name ".so"

static kiln_context *bare_context(void) {
  kiln_context_options o = {sizeof o, KILN_CONTEXT_NO_DISCOVERY, NULL};
  kiln_context *ctx = NULL;
  cr_assert_eq(kiln_context_create(&o, &ctx), KILN_OK, "%s", kiln_last_error());
  return ctx;
}

static kiln_load_report report_at(kiln_context *ctx, size_t i) {
  kiln_load_report r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  cr_assert_eq(kiln_load_report_get(ctx, i, &r), KILN_OK, "%s", kiln_last_error());
  return r;
}

/* Loads path into a fresh bare context and checks the refusal. */
static void expect_refusal(const char *path, kiln_status status, kiln_load_result result,
                           const char *message) {
  kiln_context *ctx = bare_context();
  kiln_plugin *p = (kiln_plugin *)1;
  kiln_status st = kiln_plugin_load(ctx, path, &p);
  cr_assert_eq(st, status, "%s: status %s, expected %s (%s)", path, kiln_status_name(st),
               kiln_status_name(status), kiln_last_error());
  cr_assert_null(p, "a refused plugin must not be handed out");
  cr_assert_eq(kiln_plugin_count(ctx), 0);
  cr_assert_eq(kiln_load_report_count(ctx), 1);
  kiln_load_report r = report_at(ctx, 0);
  cr_assert_eq(r.result, result, "%s: result %d, expected %d", path, r.result, result);
  cr_assert_str_eq(r.path, path);
  cr_assert(strstr(r.message, message), "report message '%s' lacks '%s'", r.message, message);
  cr_assert(strstr(kiln_last_error(), message), "last error '%s' lacks '%s'", kiln_last_error(),
            message);
  cr_assert(strstr(kiln_last_error(), path), "last error '%s' does not name the file",
            kiln_last_error());
  kiln_context_destroy(ctx);
}

/* ---- refusals -------------------------------------------------------------- */

Test(refuse, missing_file) {
  expect_refusal("/nonexistent/libkiln-nothing.so", KILN_IO_ERROR, KILN_LOAD_DLOPEN_FAILED,
                 "cannot open shared object file");
}

Test(refuse, not_a_shared_object) {
  char path[] = "/tmp/kiln-test-notelf-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  cr_assert_eq(write(fd, "this is text, not ELF\n", 22), 22);
  close(fd);
  kiln_context *ctx = bare_context();
  cr_assert_eq(kiln_plugin_load(ctx, path, NULL), KILN_IO_ERROR);
  kiln_load_report r = report_at(ctx, 0);
  cr_assert_eq(r.result, KILN_LOAD_DLOPEN_FAILED);
  cr_assert(strlen(r.message) > 0 && strstr(r.message, path), "dlerror text expected: '%s'",
            r.message);
  kiln_context_destroy(ctx);
  unlink(path);
}

Test(refuse, no_entry_symbol) {
  expect_refusal(FAKE("fake_noentry"), KILN_PLUGIN_ERROR, KILN_LOAD_NO_ENTRY,
                 "not a kiln plugin (no entry symbol 'kiln_plugin_entry')");
}

Test(refuse, abi_major_before_init) {
  /* fake_abi_major's init aborts: reaching it would crash this test. */
  char msg[128];
  snprintf(msg, sizeof msg, "ABI major %u, host supports %u", KILN_PLUGIN_ABI_MAJOR + 1,
           KILN_PLUGIN_ABI_MAJOR);
  expect_refusal(FAKE("fake_abi_major"), KILN_ABI_MISMATCH, KILN_LOAD_ABI_MISMATCH, msg);

  kiln_context *ctx = bare_context();
  kiln_plugin_load(ctx, FAKE("fake_abi_major"), NULL);
  kiln_load_report r = report_at(ctx, 0);
  cr_assert_eq(r.abi_version, (uint32_t)(KILN_PLUGIN_ABI_MAJOR + 1) << 16,
               "the report keeps the plugin's ABI version (0x%x)", r.abi_version);
  kiln_context_destroy(ctx);
}

Test(refuse, table_too_short) {
  char msg[160];
  snprintf(msg, sizeof msg,
           "plugin table too short: struct_size %zu bytes, ABI 1.0 needs at least %zu",
           offsetof(kiln_plugin_api, graph_run),
           offsetof(kiln_plugin_api, synchronize) + sizeof(void (*)(void)));
  expect_refusal(FAKE("fake_short_table"), KILN_PLUGIN_ERROR, KILN_LOAD_BAD_TABLE, msg);
}

Test(refuse, null_member) {
  expect_refusal(FAKE("fake_null_member"), KILN_PLUGIN_ERROR, KILN_LOAD_BAD_TABLE,
                 "plugin table member 'graph_run' is NULL");
}

Test(refuse, init_failure_keeps_plugin_message) {
  /* fake_init_fail's shutdown aborts: calling it after a failed init would
   * crash this test. */
  expect_refusal(FAKE("fake_init_fail"), KILN_PLUGIN_ERROR, KILN_LOAD_INIT_FAILED,
                 "init failed: fake: probing the widget failed: no widget on bus 7");
  kiln_context *ctx = bare_context();
  kiln_plugin_load(ctx, FAKE("fake_init_fail"), NULL);
  kiln_load_report r = report_at(ctx, 0);
  cr_assert_str_eq(r.name, "fake", "the name is known once the descriptor was accepted");
  cr_assert_eq(r.abi_version, KILN_PLUGIN_ABI_VERSION);
  kiln_context_destroy(ctx);
}

Test(refuse, bad_name_before_init) {
  expect_refusal(FAKE("fake_bad_name"), KILN_PLUGIN_ERROR, KILN_LOAD_BAD_TABLE,
                 "bad plugin name 'Fake Backend!'");
}

Test(refuse, duplicate_name) {
  kiln_context *ctx = bare_context();
  kiln_plugin *p = NULL;
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_good"), &p), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_good"), NULL), KILN_PLUGIN_ERROR);
  char msg[PATH_MAX + 64];
  snprintf(msg, sizeof msg, "duplicate plugin name 'fake' (already loaded from %s)",
           FAKE("fake_good"));
  cr_assert(strstr(kiln_last_error(), msg), "'%s' lacks '%s'", kiln_last_error(), msg);
  cr_assert_eq(kiln_plugin_count(ctx), 1);
  cr_assert_eq(kiln_load_report_count(ctx), 2);
  kiln_load_report r = report_at(ctx, 1);
  cr_assert_eq(r.result, KILN_LOAD_DUPLICATE);
  cr_assert_str_eq(r.name, "fake");
  cr_assert_str_eq(r.message, msg);
  /* The first one still works after the refused second load. */
  cr_assert_eq(kiln_plugin_device_count(p), 1);
  kiln_context_destroy(ctx);
}

Test(refuse, bad_arguments) {
  kiln_context *ctx = bare_context();
  cr_assert_eq(kiln_plugin_load(NULL, FAKE("fake_good"), NULL), KILN_INVALID_ARGUMENT);
  cr_assert_eq(kiln_plugin_load(ctx, NULL, NULL), KILN_INVALID_ARGUMENT);
  cr_assert_eq(kiln_plugin_load(ctx, "", NULL), KILN_INVALID_ARGUMENT);
  cr_assert_eq(kiln_load_report_count(ctx), 0);
  kiln_load_report r = {.struct_size = sizeof r};
  cr_assert_eq(kiln_load_report_get(ctx, 0, &r), KILN_NOT_FOUND);
  kiln_context_destroy(ctx);
}

/* ---- loading ------------------------------------------------------------------ */

Test(load, good_plugin_and_its_device) {
  kiln_context *ctx = bare_context();
  kiln_plugin *p = NULL;
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_good"), &p), KILN_OK, "%s", kiln_last_error());
  cr_assert_not_null(p);
  cr_assert_eq(kiln_plugin_count(ctx), 1);
  cr_assert_eq(kiln_plugin_at(ctx, 0), p);
  cr_assert_null(kiln_plugin_at(ctx, 1));
  cr_assert_eq(kiln_plugin_find(ctx, "fake"), p);
  cr_assert_null(kiln_plugin_find(ctx, "vulkan"));
  cr_assert_str_eq(kiln_plugin_name(p), "fake");
  cr_assert_str_eq(kiln_plugin_version(p), "0.0.1-test");
  cr_assert_str_eq(kiln_plugin_description(p), "fake backend for the loader tests");
  cr_assert_str_eq(kiln_plugin_path(p), FAKE("fake_good"));
  cr_assert_eq(kiln_plugin_abi_version(p), KILN_PLUGIN_ABI_VERSION);

  kiln_load_report r = report_at(ctx, 0);
  cr_assert_eq(r.result, KILN_LOAD_OK);
  cr_assert_str_eq(r.message, "loaded");
  cr_assert_str_eq(r.name, "fake");

  cr_assert_eq(kiln_plugin_device_count(p), 1);
  kiln_device_info info = {.struct_size = sizeof info};
  cr_assert_eq(kiln_plugin_device_info(p, 0, &info), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(info.kind, KILN_DEVICE_VIRTUAL_GPU);
  cr_assert_str_eq(info.name, "Fake Device 0");
  cr_assert_eq(kiln_plugin_device_info(p, 1, &info), KILN_NO_DEVICE);
  cr_assert(strstr(kiln_last_error(), "1 device(s); index 1"), "%s", kiln_last_error());

  cr_assert_eq(kiln_plugin_op_support(p, 0, KILN_OP_ADD, KILN_F32), 1);
  cr_assert_eq(kiln_plugin_op_support(p, 0, KILN_OP_MATMUL, KILN_F32), 0);
  cr_assert_eq(kiln_plugin_op_support(p, 0, (kiln_op)9999, KILN_F32), 0);
  cr_assert_eq(kiln_plugin_op_support(p, 3, KILN_OP_ADD, KILN_F32), 0);
  kiln_context_destroy(ctx);
}

Test(load, newer_minor_loads) {
  kiln_context *ctx = bare_context();
  kiln_plugin *p = NULL;
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_newer_minor"), &p), KILN_OK, "%s",
               kiln_last_error());
  cr_assert_eq(kiln_plugin_abi_version(p), KILN_PLUGIN_ABI_VERSION + 1);
  cr_assert_eq(kiln_plugin_device_count(p), 1);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "fake-newer", 0, &dev), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_device_synchronize(dev), KILN_OK);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

Test(load, shutdown_on_destroy) {
  char log[] = "/tmp/kiln-test-log-XXXXXX";
  int fd = mkstemp(log);
  cr_assert(fd >= 0);
  close(fd);
  setenv("KILN_FAKE_LOG", log, 1);
  kiln_context *ctx = bare_context();
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_good"), NULL), KILN_OK);
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_other"), NULL), KILN_OK);
  kiln_context_destroy(ctx);
  unsetenv("KILN_FAKE_LOG");
  char buf[256] = {0};
  FILE *f = fopen(log, "r");
  cr_assert_not_null(f);
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  unlink(log);
  buf[n] = '\0';
  cr_assert_str_eq(buf, "fake init\nfake2 init\nfake2 shutdown\nfake shutdown\n",
                   "init in load order, shutdown in reverse; got:\n%s", buf);
}

/* ---- discovery ------------------------------------------------------------- */

static void make_dir(char *tmpl) { cr_assert_not_null(mkdtemp(tmpl), "mkdtemp %s", tmpl); }

static void link_in(const char *dir, const char *name, const char *target) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  cr_assert_eq(symlink(target, path), 0, "symlink %s", path);
}

static void remove_dir(const char *dir, const char *const *names) {
  char path[PATH_MAX];
  for (; *names; names++) {
    snprintf(path, sizeof path, "%s/%s", dir, *names);
    unlink(path);
  }
  rmdir(dir);
}

Test(discover, plugin_path_env) {
  char dir[] = "/tmp/kiln-test-plugins-XXXXXX";
  make_dir(dir);
  link_in(dir, "libkiln-fake.so", FAKE("fake_good"));
  link_in(dir, "libfake_other.so", FAKE("fake_other"));        /* wrong prefix: ignored */
  link_in(dir, "libkiln-other.so.1", FAKE("fake_other"));      /* wrong suffix: ignored */
  char list[PATH_MAX + 32];
  snprintf(list, sizeof list, "/nonexistent/kiln-plugins:%s", dir); /* missing dir: skipped */
  setenv("KILN_PLUGIN_PATH", list, 1);

  kiln_context *ctx = NULL;
  cr_assert_eq(kiln_context_create(NULL, &ctx), KILN_OK, "%s", kiln_last_error());
  kiln_plugin *p = kiln_plugin_find(ctx, "fake");
  cr_assert_not_null(p, "fake not discovered through KILN_PLUGIN_PATH");
  cr_assert_eq(kiln_plugin_at(ctx, 0), p, "KILN_PLUGIN_PATH comes before the built-in dir");
  char want[PATH_MAX];
  snprintf(want, sizeof want, "%s/libkiln-fake.so", dir);
  cr_assert_str_eq(kiln_plugin_path(p), want);
  cr_assert_null(kiln_plugin_find(ctx, "fake2"), "files not named libkiln-*.so are ignored");
  for (size_t i = 0; i < kiln_load_report_count(ctx); i++)
    cr_assert_null(strstr(report_at(ctx, i).path, "/nonexistent/"));
  kiln_context_destroy(ctx);

  /* The flag turns discovery off, environment or not. */
  kiln_context_options o = {sizeof o, KILN_CONTEXT_NO_DISCOVERY, dir};
  cr_assert_eq(kiln_context_create(&o, &ctx), KILN_OK);
  cr_assert_eq(kiln_plugin_count(ctx), 0);
  cr_assert_eq(kiln_load_report_count(ctx), 0);
  kiln_context_destroy(ctx);

  unsetenv("KILN_PLUGIN_PATH");
  remove_dir(dir, (const char *const[]){"libkiln-fake.so", "libfake_other.so",
                                        "libkiln-other.so.1", NULL});
}

Test(discover, order_and_duplicates) {
  char d1[] = "/tmp/kiln-test-opts-XXXXXX", d2[] = "/tmp/kiln-test-env-XXXXXX";
  make_dir(d1);
  make_dir(d2);
  /* Sorted within a directory: libkiln-a (fake) before libkiln-b (fake2). */
  link_in(d1, "libkiln-b.so", FAKE("fake_other"));
  link_in(d1, "libkiln-a.so", FAKE("fake_good"));
  /* The env directory comes after opts->plugin_path: its fake is a duplicate. */
  link_in(d2, "libkiln-fake.so", FAKE("fake_good"));
  link_in(d2, "libkiln-broken.so", FAKE("fake_abi_major"));
  setenv("KILN_PLUGIN_PATH", d2, 1);

  kiln_context_options o = {sizeof o, 0, d1};
  kiln_context *ctx = NULL;
  cr_assert_eq(kiln_context_create(&o, &ctx), KILN_OK, "a refusal must not fail creation: %s",
               kiln_last_error());
  cr_assert_str_eq(kiln_plugin_name(kiln_plugin_at(ctx, 0)), "fake");
  cr_assert_str_eq(kiln_plugin_name(kiln_plugin_at(ctx, 1)), "fake2");
  cr_assert(kiln_load_report_count(ctx) >= 4);
  kiln_load_report r = report_at(ctx, 2);
  cr_assert_eq(r.result, KILN_LOAD_ABI_MISMATCH, "d2 sorted: libkiln-broken.so first");
  r = report_at(ctx, 3);
  cr_assert_eq(r.result, KILN_LOAD_DUPLICATE);
  char msg[PATH_MAX + 64];
  snprintf(msg, sizeof msg, "duplicate plugin name 'fake' (already loaded from %s/libkiln-a.so)",
           d1);
  cr_assert_str_eq(r.message, msg);
  kiln_context_destroy(ctx);

  unsetenv("KILN_PLUGIN_PATH");
  remove_dir(d1, (const char *const[]){"libkiln-a.so", "libkiln-b.so", NULL});
  remove_dir(d2, (const char *const[]){"libkiln-fake.so", "libkiln-broken.so", NULL});
}

Test(discover, never_the_current_directory) {
  char dir[] = "/tmp/kiln-test-cwd-XXXXXX";
  make_dir(dir);
  link_in(dir, "libkiln-fake.so", FAKE("fake_good"));
  cr_assert_eq(chdir(dir), 0);
  setenv("KILN_PLUGIN_PATH", "::", 1); /* empty entries are not "." */
  kiln_context *ctx = NULL;
  cr_assert_eq(kiln_context_create(NULL, &ctx), KILN_OK);
  cr_assert_null(kiln_plugin_find(ctx, "fake"), "a plugin was loaded from the current directory");
  kiln_context_destroy(ctx);
  unsetenv("KILN_PLUGIN_PATH");
  remove_dir(dir, (const char *const[]){"libkiln-fake.so", NULL});
}

static const char cpu_plugin[] = KILN_BUILD_DIR "/lib/kiln/libkiln-cpu.so";

Test(discover, cpu_beside_libkiln) {
  if (access(cpu_plugin, F_OK) != 0) cr_skip_test("%s is not built yet", cpu_plugin);
  unsetenv("KILN_PLUGIN_PATH");
  kiln_context *ctx = NULL;
  cr_assert_eq(kiln_context_create(NULL, &ctx), KILN_OK, "%s", kiln_last_error());
  kiln_plugin *cpu = kiln_plugin_find(ctx, "cpu");
  cr_assert_not_null(cpu, "the CPU plugin beside libkiln was not discovered");
  char want[PATH_MAX], got[PATH_MAX];
  cr_assert_not_null(realpath(cpu_plugin, want));
  cr_assert_not_null(realpath(kiln_plugin_path(cpu), got));
  cr_assert_str_eq(got, want);
  cr_assert(kiln_plugin_device_count(cpu) >= 1);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, NULL, -1, &dev), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_device_plugin(dev), cpu);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

Test(discover, env_overrides_builtin) {
  if (access(cpu_plugin, F_OK) != 0) cr_skip_test("%s is not built yet", cpu_plugin);
  char dir[] = "/tmp/kiln-test-override-XXXXXX";
  make_dir(dir);
  link_in(dir, "libkiln-cpu.so", FAKE("fake_cpu_override"));
  setenv("KILN_PLUGIN_PATH", dir, 1);
  kiln_context *ctx = NULL;
  cr_assert_eq(kiln_context_create(NULL, &ctx), KILN_OK, "%s", kiln_last_error());
  kiln_plugin *cpu = kiln_plugin_find(ctx, "cpu");
  cr_assert_str_eq(kiln_plugin_description(cpu), "fake backend for the loader tests");
  int refused_builtin = 0;
  for (size_t i = 0; i < kiln_load_report_count(ctx); i++) {
    kiln_load_report r = report_at(ctx, i);
    if (r.result == KILN_LOAD_DUPLICATE && strstr(r.message, "duplicate plugin name 'cpu'"))
      refused_builtin = 1;
  }
  cr_assert(refused_builtin, "the built-in cpu plugin should be reported as a duplicate");
  kiln_context_destroy(ctx);
  unsetenv("KILN_PLUGIN_PATH");
  remove_dir(dir, (const char *const[]){"libkiln-cpu.so", NULL});
}

/* ---- devices ------------------------------------------------------------------- */

Test(device, choice) {
  kiln_context *ctx = bare_context();
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "auto", -1, &dev), KILN_NO_DEVICE);
  cr_assert(strstr(kiln_last_error(), "kiln info"), "%s", kiln_last_error());

  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_good"), NULL), KILN_OK);
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_other"), NULL), KILN_OK);

  cr_assert_eq(kiln_device_open(ctx, "vulkan", -1, &dev), KILN_NOT_FOUND);
  cr_assert(strstr(kiln_last_error(), "'vulkan' is not loaded (loaded: fake, fake2)"), "%s",
            kiln_last_error());
  cr_assert(strstr(kiln_last_error(), "kiln info"), "%s", kiln_last_error());
  cr_assert_null(dev);

  cr_assert_eq(kiln_device_open(ctx, "fake", 5, &dev), KILN_NO_DEVICE);
  cr_assert(strstr(kiln_last_error(), "'fake' has 1 device(s); index 5"), "%s",
            kiln_last_error());
  cr_assert_eq(kiln_device_open(ctx, "auto", 2, &dev), KILN_NO_DEVICE);
  cr_assert(strstr(kiln_last_error(), "2 device(s) over all plugins"), "%s", kiln_last_error());

  /* Equal kinds: the first loaded wins. */
  cr_assert_eq(kiln_device_open(ctx, NULL, -1, &dev), KILN_OK, "%s", kiln_last_error());
  cr_assert_str_eq(kiln_plugin_name(kiln_device_plugin(dev)), "fake");
  kiln_device_close(dev);
  /* auto with an index counts over all plugins in load order. */
  cr_assert_eq(kiln_device_open(ctx, "auto", 1, &dev), KILN_OK, "%s", kiln_last_error());
  cr_assert_str_eq(kiln_plugin_name(kiln_device_plugin(dev)), "fake2");
  kiln_device_info info = {.struct_size = sizeof info};
  cr_assert_eq(kiln_device_get_info(dev, &info), KILN_OK);
  cr_assert_str_eq(info.name, "Fake Device 0");
  cr_assert_eq(info.kind, KILN_DEVICE_VIRTUAL_GPU);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

Test(device, gpu_preferred_over_cpu) {
  if (access(cpu_plugin, F_OK) != 0) cr_skip_test("%s is not built yet", cpu_plugin);
  kiln_context *ctx = bare_context();
  cr_assert_eq(kiln_plugin_load(ctx, cpu_plugin, NULL), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_good"), NULL), KILN_OK);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "auto", -1, &dev), KILN_OK, "%s", kiln_last_error());
  cr_assert_str_eq(kiln_plugin_name(kiln_device_plugin(dev)), "fake",
                   "a virtual GPU ranks above a CPU even when loaded later");
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

/* ---- statuses and the last error --------------------------------------------- */

Test(status, strings_and_names) {
  cr_assert_str_eq(kiln_status_string(KILN_OK), "success");
  cr_assert_str_eq(kiln_status_string(KILN_SHAPE_MISMATCH), "shape mismatch");
  cr_assert_str_eq(kiln_status_name(KILN_ABI_MISMATCH), "KILN_ABI_MISMATCH");
  cr_assert_str_eq(kiln_status_string((kiln_status)999), "unknown status");
  cr_assert_str_eq(kiln_status_name((kiln_status)-1), "KILN_UNKNOWN_STATUS");
#define CHECK_(name, num, desc)                                                 \
  cr_assert_str_eq(kiln_status_string((kiln_status)num), desc);                 \
  cr_assert_str_eq(kiln_status_name((kiln_status)num), "KILN_" #name);
  KILN_STATUS_MAP(CHECK_)
#undef CHECK_
}

Test(status, names_of_things) {
  cr_assert_str_eq(kiln_op_name(KILN_OP_CONV2D_BACKWARD_INPUT), "conv2d_backward_input");
  cr_assert_str_eq(kiln_op_name(KILN_OP_MATMUL), "matmul");
  cr_assert_str_eq(kiln_op_name((kiln_op)5), "unknown");
  cr_assert_str_eq(kiln_device_kind_name(KILN_DEVICE_DISCRETE_GPU), "discrete GPU");
  cr_assert_str_eq(kiln_dtype_name(KILN_BF16), "bf16");
  cr_assert_eq(kiln_dtype_size(KILN_F16), 2);
  cr_assert_eq(kiln_dtype_size((kiln_dtype)77), 0);
  cr_assert_eq(kiln_version(), KILN_VERSION_HEX);
  cr_assert_str_eq(kiln_version_string(), KILN_VERSION_STRING);
  /* Every op number in use has a real name. */
  for (int op = 1; op < KILN_OP_COUNT_; op++) {
    const char *n = kiln_op_name((kiln_op)op);
    for (const char *c = n; *c; c++)
      cr_assert((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_', "%s", n);
  }
}

static void *other_thread(void *arg) {
  (void)arg;
  if (kiln_last_error()[0] != '\0') return (void *)"new thread did not start empty";
  kiln_context *ctx = NULL;
  kiln_plugin_load(NULL, "x", NULL); /* sets this thread's error */
  (void)ctx;
  if (!strstr(kiln_last_error(), "kiln_plugin_load")) return (void *)"no error on thread";
  return NULL;
}

Test(status, last_error_is_per_thread) {
  kiln_context *ctx = bare_context();
  cr_assert_eq(kiln_plugin_load(ctx, FAKE("fake_noentry"), NULL), KILN_PLUGIN_ERROR);
  char mine[1024];
  snprintf(mine, sizeof mine, "%s", kiln_last_error());
  pthread_t th;
  void *res = NULL;
  cr_assert_eq(pthread_create(&th, NULL, other_thread, NULL), 0);
  pthread_join(th, &res);
  cr_assert_null(res, "%s", (const char *)res);
  cr_assert_str_eq(kiln_last_error(), mine, "another thread's error leaked into this one");
  kiln_clear_error();
  cr_assert_str_eq(kiln_last_error(), "");
  kiln_context_destroy(ctx);
}

/* ---- plugin logging ----------------------------------------------------------- */

/* Loads fake_good with stderr sent to a file; returns what was printed. */
static void load_capturing_stderr(char *out, size_t size) {
  char path[] = "/tmp/kiln-test-stderr-XXXXXX";
  int fd = mkstemp(path);
  cr_assert(fd >= 0);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  kiln_context *ctx = bare_context();
  kiln_status st = kiln_plugin_load(ctx, FAKE("fake_good"), NULL);
  kiln_context_destroy(ctx);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  cr_assert_eq(st, KILN_OK);
  ssize_t n = pread(fd, out, size - 1, 0);
  out[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(path);
}

Test(log, filtered_by_level) {
  char buf[1024];
  char want[128];
  snprintf(want, sizeof want, "kiln[plugin]: info: fake: initialised for host ABI %u.%u\n",
           KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR);

  unsetenv("KILN_LOG_LEVEL");
  load_capturing_stderr(buf, sizeof buf);
  cr_assert_str_eq(buf, "", "info is hidden by default, got: %s", buf);

  setenv("KILN_LOG_LEVEL", "info", 1);
  load_capturing_stderr(buf, sizeof buf);
  cr_assert_str_eq(buf, want);

  setenv("KILN_LOG_LEVEL", "3", 1);
  load_capturing_stderr(buf, sizeof buf);
  cr_assert_str_eq(buf, want);

  setenv("KILN_LOG_LEVEL", "error", 1);
  load_capturing_stderr(buf, sizeof buf);
  cr_assert_str_eq(buf, "");
  unsetenv("KILN_LOG_LEVEL");
}

/* ---- the CLI over the loader ------------------------------------------------------ */

static const char kiln_exe[] = KILN_BUILD_DIR "/bin/kiln";

/* Runs a shell command; returns its exit status and its stdout in out. */
static int run(const char *cmd, char *out, size_t size) {
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p, "popen %s", cmd);
  size_t n = fread(out, 1, size - 1, p);
  out[n] = '\0';
  int rc = pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

Test(cli, version_help_and_unknown_command) {
  if (access(kiln_exe, X_OK) != 0) cr_skip_test("%s is not built", kiln_exe);
  char out[8192], cmd[PATH_MAX + 64];
  snprintf(cmd, sizeof cmd, "%s --version", kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 0);
  char want[64];
  snprintf(want, sizeof want, "kiln %s (plugin ABI %u.%u)\n", KILN_VERSION_STRING,
           KILN_PLUGIN_ABI_MAJOR, KILN_PLUGIN_ABI_MINOR);
  cr_assert_str_eq(out, want);

  snprintf(cmd, sizeof cmd, "%s --help", kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 0);
  cr_assert(strstr(out, "  info ") && strstr(out, "  train ") && strstr(out, "  fetch "), "%s",
            out);

  snprintf(cmd, sizeof cmd, "%s frobnicate 2>&1", kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 2);
  cr_assert(strstr(out, "unknown command 'frobnicate'") && strstr(out, "usage: kiln"), "%s", out);

  snprintf(cmd, sizeof cmd, "%s 2>/dev/null", kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 2, "no command is a usage error");
}

Test(cli, info_lists_plugins_and_refusals) {
  if (access(kiln_exe, X_OK) != 0) cr_skip_test("%s is not built", kiln_exe);
  char dir[] = "/tmp/kiln-test-info-XXXXXX";
  make_dir(dir);
  link_in(dir, "libkiln-fake.so", FAKE("fake_good"));
  link_in(dir, "libkiln-old.so", FAKE("fake_abi_major"));
  char out[65536], cmd[2 * PATH_MAX];
  snprintf(cmd, sizeof cmd, "KILN_PLUGIN_PATH=%s %s info", dir, kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 0);
  cr_assert(strstr(out, "plugin fake 0.0.1-test: fake backend for the loader tests"), "%s", out);
  cr_assert(strstr(out, "device 0: Fake Device 0 (virtual GPU)"), "%s", out);
  cr_assert(strstr(out, "ops on f32:     1 of "), "%s", out);
  cr_assert(strstr(out, "libkiln-old.so: ABI major 2, host supports 1"), "%s", out);

  snprintf(cmd, sizeof cmd, "KILN_PLUGIN_PATH=%s %s info --json", dir, kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 0);
  cr_assert(out[0] == '{' && strstr(out, "\"name\":\"fake\""), "%s", out);
  cr_assert(strstr(out, "\"loaded\":false,\"result\":\"abi_mismatch\","
                        "\"message\":\"ABI major 2, host supports 1\""),
            "%s", out);

  snprintf(cmd, sizeof cmd, "%s info --bogus 2>/dev/null", kiln_exe);
  cr_assert_eq(run(cmd, out, sizeof out), 2);
  remove_dir(dir, (const char *const[]){"libkiln-fake.so", "libkiln-old.so", NULL});
}
