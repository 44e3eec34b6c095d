/* ABI 1.(minor+1) with a larger table: a newer minor must load. */
#define FAKE_NEWER_MINOR 1
#define FAKE_NAME "fake-newer"
#include "fake_plugin.h"
