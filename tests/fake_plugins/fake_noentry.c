/* A shared library that exports no kiln_plugin_entry. */
#define FAKE_NO_ENTRY 1
#include "fake_plugin.h"
