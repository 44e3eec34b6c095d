/*
 * fuzz_plugin_table.c - the loader and device layer against a plugin whose
 * descriptor and table the fuzz input shapes (sizes, ABI versions, names,
 * NULL members, what each call answers; see shaped_plugin.c). Loading must
 * either refuse with a status and a load report, or accept a table that
 * then works: devices are listed, opened, and a tensor round-trips.
 * Input: 32 bytes of shape, then the bytes of a tensor to round-trip.
 */
#include <dlfcn.h>

#include "fuzz_common.h"
#include "kiln/kiln.h"

#ifndef KILN_FUZZ_SHAPED_PLUGIN
#error "KILN_FUZZ_SHAPED_PLUGIN must name libkiln-fuzzshaped.so"
#endif

typedef void (*shape_fn)(const uint8_t *, size_t);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* Keep the plugin loaded across inputs, so its statics stay ours. */
  static void *handle;
  static shape_fn set_shape;
  if (!handle) {
    handle = dlopen(KILN_FUZZ_SHAPED_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      fprintf(stderr, "fuzz_plugin_table: %s\n", dlerror());
      exit(1);
    }
    void *sym = dlsym(handle, "fuzz_shaped_set");
    FZ_CHECK(sym != NULL);
    memcpy(&set_shape, &sym, sizeof set_shape);
  }
  set_shape(data, size);

  kiln_context_options o = {.struct_size = sizeof o, .flags = KILN_CONTEXT_NO_DISCOVERY};
  kiln_context *ctx = NULL;
  FZ_CHECK(kiln_context_create(&o, &ctx) == KILN_OK);
  kiln_plugin *p = NULL;
  kiln_status st = kiln_plugin_load(ctx, KILN_FUZZ_SHAPED_PLUGIN, &p);
  FZ_CHECK(kiln_load_report_count(ctx) == 1);
  kiln_load_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  FZ_CHECK(kiln_load_report_get(ctx, 0, &rep) == KILN_OK);
  if (st != KILN_OK) {
    FZ_CHECK(p == NULL && kiln_plugin_count(ctx) == 0);
    FZ_CHECK(rep.result != KILN_LOAD_OK && rep.message && rep.message[0]);
    kiln_context_destroy(ctx);
    return 0;
  }
  FZ_CHECK(p != NULL && rep.result == KILN_LOAD_OK);
  (void)kiln_plugin_version(p);
  (void)kiln_plugin_description(p);
  uint32_t n = kiln_plugin_device_count(p);
  for (uint32_t i = 0; i < n && i < 4; i++) {
    kiln_device_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    (void)kiln_plugin_device_info(p, i, &info);
    (void)kiln_plugin_op_support(p, i, KILN_OP_ADD, KILN_F32);
    (void)kiln_plugin_op_support(p, i, (kiln_op)0xFFFF, (kiln_dtype)77);
  }
  kiln_device *dev = NULL;
  st = kiln_device_open(ctx, kiln_plugin_name(p), size > 15 ? data[15] % 3 : 0, &dev);
  if (st == KILN_OK) {
    /* the bytes past the shape, as floats (at least one, then not uploaded) */
    int64_t len = size > 32 ? (int64_t)(size - 32) / 4 : 0;
    const uint8_t *rest = len > 0 ? data + 32 : NULL;
    if (len == 0) len = 1;
    kiln_tensor *t = NULL;
    if (kiln_tensor_create(dev, KILN_F32, 1, &len, &t) == KILN_OK) {
      float *back = calloc((size_t)len, sizeof *back);
      FZ_CHECK(back != NULL);
      if (rest && kiln_tensor_upload(t, rest, (size_t)len * 4) == KILN_OK &&
          kiln_tensor_download(t, back, (size_t)len * 4) == KILN_OK)
        FZ_CHECK(memcmp(back, rest, (size_t)len * 4) == 0);
      free(back);
      kiln_tensor_destroy(t);
    }
    kiln_device_close(dev);
  } else {
    FZ_CHECK(kiln_last_error()[0] != '\0');
  }
  kiln_context_destroy(ctx);
  return 0;
}
