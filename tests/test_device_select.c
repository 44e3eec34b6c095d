/* Device choice through the environment: KILN_VK_DEVICE picks the Vulkan
 * plugin's device by index or by a substring of its name. */
#include <criterion/criterion.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/kiln.h"
#include "testutil.h"

static kiln_context *ctx;

static void setup(void) {
  cr_assert_eq(kiln_context_create(NULL, &ctx), KILN_OK, "%s", kiln_last_error());
  if (!kiln_plugin_find(ctx, "vulkan") || kiln_plugin_device_count(kiln_plugin_find(ctx, "vulkan")) == 0)
    cr_skip_test("no Vulkan plugin with a device here (see `kiln info`)");
}
static void teardown(void) { kiln_context_destroy(ctx); }

TestSuite(device_select, .init = setup, .fini = teardown);

Test(device_select, vk_device_by_name_substring) {
  kiln_device_info info0 = {.struct_size = sizeof info0};
  cr_assert_eq(kiln_plugin_device_info(kiln_plugin_find(ctx, "vulkan"), 0, &info0), KILN_OK);
  char sub[8] = {0};
  memcpy(sub, info0.name, 4); /* a prefix of device 0's name */
  for (char *c = sub; *c; c++) *c = (char)toupper((unsigned char)*c); /* case-insensitive */
  setenv("KILN_VK_DEVICE", sub, 1);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "vulkan", -1, &dev), KILN_OK, "%s", kiln_last_error());
  kiln_device_info info = {.struct_size = sizeof info};
  cr_assert_eq(kiln_device_get_info(dev, &info), KILN_OK);
  cr_expect_str_eq(info.name, info0.name);
  kiln_device_close(dev);
}

Test(device_select, vk_device_no_match_is_refused) {
  setenv("KILN_VK_DEVICE", "no-such-gpu-xyz", 1);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "vulkan", -1, &dev), KILN_NO_DEVICE);
  cr_expect_null(dev);
  cr_expect(strstr(kiln_last_error(), "KILN_VK_DEVICE=no-such-gpu-xyz matches no Vulkan device"),
            "message: %s", kiln_last_error());
}

Test(device_select, vk_device_index_out_of_range) {
  setenv("KILN_VK_DEVICE", "99", 1);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "vulkan", -1, &dev), KILN_NO_DEVICE);
  cr_expect(strstr(kiln_last_error(), "KILN_VK_DEVICE=99"), "message: %s", kiln_last_error());
}

Test(device_select, explicit_index_wins_over_env) {
  setenv("KILN_VK_DEVICE", "no-such-gpu-xyz", 1);
  kiln_device *dev = NULL;
  cr_assert_eq(kiln_device_open(ctx, "vulkan", 0, &dev), KILN_OK, "%s", kiln_last_error());
  kiln_device_close(dev);
}
