/*
 * test_sdk.c - the installed SDK, as a third party sees it.
 *
 * Installs this build tree into a temporary prefix (cmake --install), copies
 * plugins/template/ out of the source tree and builds it against that prefix
 * alone: with CMake (find_package(kiln) + kiln_add_plugin()) and with plain
 * cc + pkg-config. The results are loaded in this process, checked against
 * the CPU plugin, run through the INSTALLED `kiln conform`, and installed as
 * plugins that the installed `kiln info` discovers.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kiln/kiln.h"
#include "testutil.h"

typedef struct sdk {
  char dir[64];          /* the temporary directory */
  char prefix[128];      /* dir/prefix: the install */
  char libdir[256];      /* prefix/LIBDIR */
} sdk;

/* Runs a shell command built from fmt; returns its exit status (-1 if it
 * died). Output goes to dir/log.txt, which a failing assertion prints. */
static int sh(const sdk *s, const char *fmt, ...) {
  char cmd[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  char full[9000];
  snprintf(full, sizeof full, "( %s ) > '%s/log.txt' 2>&1", cmd, s->dir);
  int st = system(full);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const char *log_text(const sdk *s) {
  static char buf[16384];
  char path[256];
  snprintf(path, sizeof path, "%s/log.txt", s->dir);
  FILE *f = fopen(path, "r");
  buf[0] = '\0';
  if (!f) return buf;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static int exists(const char *fmt, ...) {
  char path[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(path, sizeof path, fmt, ap);
  va_end(ap);
  return access(path, R_OK) == 0;
}

/* Installs the build tree into a fresh temporary prefix and copies the
 * template's sources to dir/src (outside the source tree). */
static void sdk_install(sdk *s) {
  snprintf(s->dir, sizeof s->dir, "/tmp/kiln-sdk-XXXXXX");
  cr_assert_not_null(mkdtemp(s->dir));
  snprintf(s->prefix, sizeof s->prefix, "%s/prefix", s->dir);
  snprintf(s->libdir, sizeof s->libdir, "%s/%s", s->prefix, KILN_INSTALL_LIBDIR);
  cr_assert_eq(sh(s, "'%s' --install '%s' --prefix '%s'", KILN_CMAKE_COMMAND, KILN_BUILD_DIR,
                  s->prefix), 0, "cmake --install failed:\n%s", log_text(s));
  cr_assert(exists("%s/%s/kiln/plugin.h", s->prefix, KILN_INSTALL_INCLUDEDIR));
  cr_assert(exists("%s/%s/kiln/kiln.h", s->prefix, KILN_INSTALL_INCLUDEDIR));
  cr_assert(exists("%s/cmake/kiln/kilnConfig.cmake", s->libdir));
  cr_assert(exists("%s/cmake/kiln/kilnConfigVersion.cmake", s->libdir));
  cr_assert(exists("%s/pkgconfig/kiln.pc", s->libdir));
  cr_assert(exists("%s/libkiln.so", s->libdir));
  cr_assert(exists("%s/kiln/libkiln-cpu.so", s->libdir));
  cr_assert(exists("%s/%s/kiln", s->prefix, KILN_INSTALL_BINDIR));
  cr_assert_eq(sh(s, "mkdir '%s/src' && cp '%s/plugins/template/template.c' "
                     "'%s/plugins/template/CMakeLists.txt' '%s/src/'",
                  s->dir, KILN_SOURCE_DIR, KILN_SOURCE_DIR, s->dir), 0, "%s", log_text(s));
}

static void sdk_cleanup(sdk *s) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", s->dir);
}

/* Loads plugin_path into a context of its own with the CPU plugin, runs
 * y = relu(a @ b^T + c) and sum(y) on both and compares. */
static void load_and_compare(const char *plugin_path) {
  kiln_context *ctx = NULL;
  kiln_context_options opts = {.struct_size = sizeof opts, .flags = KILN_CONTEXT_NO_DISCOVERY};
  cr_assert_eq(kiln_context_create(&opts, &ctx), KILN_OK, "%s", kiln_last_error());
  kiln_plugin *p = NULL;
  cr_assert_eq(kiln_plugin_load(ctx, plugin_path, &p), KILN_OK, "%s: %s", plugin_path,
               kiln_last_error());
  cr_assert_str_eq(kiln_plugin_name(p), "template");
  cr_assert_eq(kiln_plugin_load(ctx, KILN_BUILD_DIR "/lib/kiln/libkiln-cpu.so", NULL), KILN_OK,
               "%s", kiln_last_error());
  float y[2][12], total[2];
  const char *backends[2] = {"template", "cpu"};
  for (int k = 0; k < 2; k++) {
    kiln_device *dev = NULL;
    cr_assert_eq(kiln_device_open(ctx, backends[k], 0, &dev), KILN_OK, "%s", kiln_last_error());
    kiln_graph *g = NULL;
    cr_assert_eq(kiln_graph_create(&g), KILN_OK);
    kiln_node *a = kiln_input(g, "a", KILN_F32, 2, (int64_t[]){4, 5});
    kiln_node *b = kiln_input(g, "b", KILN_F32, 2, (int64_t[]){3, 5});
    kiln_node *c = kiln_input(g, "c", KILN_F32, 1, (int64_t[]){3});
    kiln_node *h = kiln_relu(g, kiln_add(g, kiln_matmul(g, a, b, 0, 1), c));
    kiln_node *s = kiln_sum(g, h, 3u, 0);
    cr_assert_eq(kiln_graph_output(g, h), KILN_OK, "%s", kiln_graph_error(g));
    cr_assert_eq(kiln_graph_output(g, s), KILN_OK, "%s", kiln_graph_error(g));
    kiln_compiled *cg = NULL;
    cr_assert_eq(kiln_graph_compile(g, dev, &cg), KILN_OK, "%s: %s", backends[k],
                 kiln_last_error());
    float av[20], bv[15], cv[3];
    tu_fill_uniform(av, 20, 11, -1, 1);
    tu_fill_uniform(bv, 15, 12, -1, 1);
    tu_fill_uniform(cv, 3, 13, -1, 1);
    cr_assert_eq(kiln_compiled_set_input(cg, a, av, sizeof av), KILN_OK);
    cr_assert_eq(kiln_compiled_set_input(cg, b, bv, sizeof bv), KILN_OK);
    cr_assert_eq(kiln_compiled_set_input(cg, c, cv, sizeof cv), KILN_OK);
    cr_assert_eq(kiln_compiled_run(cg), KILN_OK, "%s", kiln_last_error());
    cr_assert_eq(kiln_compiled_get_output(cg, h, y[k], sizeof y[k]), KILN_OK);
    cr_assert_eq(kiln_compiled_get_output(cg, s, &total[k], sizeof total[k]), KILN_OK);
    kiln_compiled_destroy(cg);
    kiln_graph_destroy(g);
    kiln_device_close(dev);
  }
  for (int i = 0; i < 12; i++)
    cr_expect_float_eq(y[0][i], y[1][i], 1e-5f, "y[%d]: template %g, cpu %g", i, y[0][i],
                       y[1][i]);
  cr_expect_float_eq(total[0], total[1], 1e-4f, "sum: template %g, cpu %g", total[0], total[1]);
  kiln_context_destroy(ctx);
}

Test(sdk, cmake_package_builds_the_template_out_of_tree, .timeout = 1500) {
  sdk s;
  sdk_install(&s);
  /* Only the prefix: no package registry, nothing from this source tree. */
  cr_assert_eq(sh(&s, "'%s' -S '%s/src' -B '%s/build' -DCMAKE_BUILD_TYPE=Release "
                      "-DCMAKE_PREFIX_PATH='%s' -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF "
                      "-DCMAKE_INSTALL_PREFIX='%s'",
                  KILN_CMAKE_COMMAND, s.dir, s.dir, s.prefix, s.prefix), 0,
               "configure failed:\n%s", log_text(&s));
  cr_assert_eq(sh(&s, "'%s' --build '%s/build'", KILN_CMAKE_COMMAND, s.dir), 0,
               "build failed:\n%s", log_text(&s));
  char plugin[512];
  snprintf(plugin, sizeof plugin, "%s/build/libkiln-template.so", s.dir);
  cr_assert(exists("%s", plugin), "no %s", plugin);
  /* A plugin links nothing of libkiln. */
  cr_assert_neq(sh(&s, "readelf -d '%s' | grep -q 'libkiln\\.so'", plugin), 0,
                "the plugin links libkiln");

  load_and_compare(plugin);

  /* The installed tool checks it against the installed CPU plugin. */
  cr_assert_eq(sh(&s, "'%s/%s/kiln' conform '%s'", s.prefix, KILN_INSTALL_BINDIR, plugin), 0,
               "installed kiln conform:\n%s", log_text(&s));
  cr_assert_not_null(strstr(log_text(&s), "0 failures: conformant"), "%s", log_text(&s));

  /* Installing the plugin puts it where the installed host discovers it. */
  cr_assert_eq(sh(&s, "'%s' --install '%s/build'", KILN_CMAKE_COMMAND, s.dir), 0, "%s",
               log_text(&s));
  cr_assert(exists("%s/kiln/libkiln-template.so", s.libdir));
  cr_assert_eq(sh(&s, "env -u KILN_PLUGIN_PATH '%s/%s/kiln' info", s.prefix, KILN_INSTALL_BINDIR),
               0, "%s", log_text(&s));
  cr_assert_not_null(strstr(log_text(&s), "template"), "kiln info:\n%s", log_text(&s));
  sdk_cleanup(&s);
}

Test(sdk, find_package_refuses_another_major, .timeout = 600) {
  sdk s;
  sdk_install(&s);
  FILE *f;
  char path[256];
  snprintf(path, sizeof path, "%s/major/CMakeLists.txt", s.dir);
  cr_assert_eq(sh(&s, "mkdir '%s/major'", s.dir), 0);
  f = fopen(path, "w");
  cr_assert_not_null(f);
  fprintf(f, "cmake_minimum_required(VERSION 3.16)\nproject(m LANGUAGES C)\n"
             "find_package(kiln %d.0 REQUIRED)\n", KILN_VERSION_MAJOR + 1);
  fclose(f);
  cr_assert_neq(sh(&s, "'%s' -S '%s/major' -B '%s/major/build' -DCMAKE_PREFIX_PATH='%s' "
                       "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF",
                   KILN_CMAKE_COMMAND, s.dir, s.dir, s.prefix), 0,
                "find_package(kiln %d.0) accepted version %s", KILN_VERSION_MAJOR + 1,
                KILN_VERSION_STRING);
  cr_assert_not_null(strstr(log_text(&s), "kiln"), "%s", log_text(&s));
  sdk_cleanup(&s);
}

Test(sdk, pkg_config_builds_the_template_with_plain_cc, .timeout = 600) {
  sdk s;
  sdk_install(&s);
  /* pkg-config's flags alone (the .pc file finds its prefix from where it lies). */
  cr_assert_eq(sh(&s, "PKG_CONFIG_PATH='%s/pkgconfig' pkg-config --cflags kiln > '%s/cflags' && "
                      "cc -std=c11 -Wall -Wextra -Werror -O2 -shared -fPIC "
                      "-fvisibility=hidden $(cat '%s/cflags') -Wl,--no-undefined "
                      "'%s/src/template.c' -o '%s/libkiln-template.so'",
                  s.libdir, s.dir, s.dir, s.dir, s.dir), 0,
               "cc with pkg-config failed:\n%s", log_text(&s));
  cr_assert_eq(sh(&s, "PKG_CONFIG_PATH='%s/pkgconfig' pkg-config --modversion kiln", s.libdir), 0);
  cr_assert_not_null(strstr(log_text(&s), KILN_VERSION_STRING), "%s", log_text(&s));
  cr_assert_eq(sh(&s, "PKG_CONFIG_PATH='%s/pkgconfig' pkg-config --variable=pluginsdir kiln && "
                      "test -f \"$(PKG_CONFIG_PATH='%s/pkgconfig' pkg-config "
                      "--variable=pluginsdir kiln)/libkiln-cpu.so\"",
                  s.libdir, s.libdir), 0, "pluginsdir is wrong:\n%s", log_text(&s));
  char plugin[512];
  snprintf(plugin, sizeof plugin, "%s/libkiln-template.so", s.dir);
  load_and_compare(plugin);
  sdk_cleanup(&s);
}
