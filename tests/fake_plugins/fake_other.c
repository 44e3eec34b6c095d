/* A second valid plugin ("fake2"), for ordering and multi-plugin device tests. */
#define FAKE_NAME "fake2"
#include "fake_plugin.h"
