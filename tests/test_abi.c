/*
 * test_abi.c - the plugin ABI stability guard.
 *
 *  - layout: every field of every ABI 1.0 struct has the same offset and
 *    size in the current headers as in the frozen copy (tests/abi/v1.0/),
 *    every struct is at least as large, and every numbered constant (ops,
 *    dtypes, statuses, device kinds, flags) keeps its number;
 *  - binary: the template plugin compiled against the frozen headers alone
 *    (B/tests/abi/libkiln-abi10.so) loads in today's host and computes the
 *    same results as the CPU plugin.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "abi_fields.h"
#include "kiln/kiln.h"
#include "kiln/plugin.h"
#include "testutil.h"

#define FIELD(s, f) {#s "." #f, offsetof(s, f), sizeof(((s *)0)->f)},
#define STRUCT(s) {"sizeof " #s, sizeof(s), 0},
#define CONSTANT(c) {#c, (unsigned long long)(c), 0},

static const abi_item now_fields[] = {ABI_FIELDS_1_0(FIELD)};
static const abi_item now_structs[] = {ABI_STRUCTS_1_0(STRUCT)};
static const abi_item now_constants[] = {ABI_CONSTANTS_1_0(CONSTANT)};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

Test(abi, every_v1_0_field_keeps_its_offset_and_size) {
  cr_assert_eq(abi10_n_fields, COUNT(now_fields));
  for (int i = 0; i < abi10_n_fields; i++) {
    cr_assert_str_eq(abi10_fields[i].name, now_fields[i].name);
    cr_expect_eq(now_fields[i].a, abi10_fields[i].a, "%s moved: offset %llu in ABI 1.0, %llu now",
                 now_fields[i].name, abi10_fields[i].a, now_fields[i].a);
    cr_expect_eq(now_fields[i].b, abi10_fields[i].b, "%s changed size: %llu in ABI 1.0, %llu now",
                 now_fields[i].name, abi10_fields[i].b, now_fields[i].b);
  }
}

Test(abi, structs_only_grow) {
  cr_assert_eq(abi10_n_structs, COUNT(now_structs));
  for (int i = 0; i < abi10_n_structs; i++)
    cr_expect_geq(now_structs[i].a, abi10_structs[i].a, "%s shrank: %llu in ABI 1.0, %llu now",
                  now_structs[i].name, abi10_structs[i].a, now_structs[i].a);
}

Test(abi, numbers_are_never_reused) {
  cr_assert_eq(abi10_n_constants, COUNT(now_constants));
  for (int i = 0; i < abi10_n_constants; i++)
    cr_expect_eq(now_constants[i].a, abi10_constants[i].a, "%s was %llu in ABI 1.0, is %llu now",
                 now_constants[i].name, abi10_constants[i].a, now_constants[i].a);
  cr_expect_str_eq(abi10_entry_name, KILN_PLUGIN_ENTRY_NAME);
  cr_expect_geq(KILN_PLUGIN_ABI_MINOR, 0);
}

/* The guard must be able to fail: a field list measured against a struct
 * with one member inserted disagrees. */
typedef struct moved_api {
  uint32_t struct_size;
  uint32_t abi_version;
  void (*inserted)(void);   /* what "never insert" forbids */
  void (*shutdown)(void);
} moved_api;

Test(abi, the_layout_check_detects_an_insertion) {
  int found = 0;
  for (int i = 0; i < abi10_n_fields; i++)
    if (!strcmp(abi10_fields[i].name, "kiln_plugin_api.shutdown")) {
      found = 1;
      cr_assert_neq(abi10_fields[i].a, (unsigned long long)offsetof(moved_api, shutdown));
    }
  cr_assert(found);
}

/* y = relu(a @ b + c) and sum(y), on a device of `backend`. */
static void run_small_graph(kiln_context *ctx, const char *backend, float *y, float *total) {
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, backend, 0, &dev), KILN_OK, "%s: %s", backend,
               kiln_last_error());
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
  cr_assert_eq(kiln_graph_compile(g, dev, &cg), KILN_OK, "%s: %s", backend, kiln_last_error());
  float av[20], bv[15], cv[3];
  tu_fill_uniform(av, 20, 1, -1, 1);
  tu_fill_uniform(bv, 15, 2, -1, 1);
  tu_fill_uniform(cv, 3, 3, -1, 1);
  cr_assert_eq(kiln_compiled_set_input(cg, a, av, sizeof av), KILN_OK);
  cr_assert_eq(kiln_compiled_set_input(cg, b, bv, sizeof bv), KILN_OK);
  cr_assert_eq(kiln_compiled_set_input(cg, c, cv, sizeof cv), KILN_OK);
  cr_assert_eq(kiln_compiled_run(cg), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_compiled_get_output(cg, h, y, 12 * sizeof(float)), KILN_OK);
  cr_assert_eq(kiln_compiled_get_output(cg, s, total, sizeof *total), KILN_OK);
  kiln_compiled_destroy(cg);
  kiln_graph_destroy(g);
  kiln_device_close(dev);
}

Test(abi, a_plugin_built_against_v1_0_loads_and_runs) {
  kiln_context *ctx = NULL;
  kiln_context_options opts = {.struct_size = sizeof opts, .flags = KILN_CONTEXT_NO_DISCOVERY};
  cr_assert_eq(kiln_context_create(&opts, &ctx), KILN_OK, "%s", kiln_last_error());
  kiln_plugin *p = NULL;
  cr_assert_eq(kiln_plugin_load(ctx, KILN_ABI10_PLUGIN, &p), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(KILN_ABI_MAJOR_OF(kiln_plugin_abi_version(p)), 1);
  cr_assert_eq(KILN_ABI_MINOR_OF(kiln_plugin_abi_version(p)), 0);
  cr_assert_eq(kiln_plugin_load(ctx, KILN_BUILD_DIR "/lib/kiln/libkiln-cpu.so", NULL), KILN_OK,
               "%s", kiln_last_error());

  float y_old[12], y_cpu[12], s_old, s_cpu;
  run_small_graph(ctx, kiln_plugin_name(p), y_old, &s_old);
  run_small_graph(ctx, "cpu", y_cpu, &s_cpu);
  int positive = 0;
  for (int i = 0; i < 12; i++) {
    cr_expect_float_eq(y_old[i], y_cpu[i], 1e-5f, "y[%d]: %g (ABI 1.0 plugin) vs %g (cpu)", i,
                       y_old[i], y_cpu[i]);
    positive += y_cpu[i] > 0;
  }
  cr_assert(positive > 0 && positive < 12, "the relu should cut some and keep some");
  cr_expect_float_eq(s_old, s_cpu, 1e-4f, "sum: %g vs %g", s_old, s_cpu);
  kiln_context_destroy(ctx);
}
