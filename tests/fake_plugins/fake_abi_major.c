/* Built for plugin ABI major + 1: refused before init (init aborts). */
#define FAKE_ENTRY_ABI ((uint32_t)(KILN_PLUGIN_ABI_MAJOR + 1) << 16)
#define FAKE_MUST_NOT_INIT 1
#include "fake_plugin.h"
