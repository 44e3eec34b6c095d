/*
 * fake_shaped.c - the plugin whose tables and answers a caller shapes with
 * fuzz_shaped_set() (see tests/fuzz/shaped_plugin.c, which fuzz_plugin_table
 * drives). test_errors uses it to make a device report KILN_DEVICE_LOST.
 */
#include "../fuzz/shaped_plugin.c"
