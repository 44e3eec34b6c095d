/* init sets an error and fails; its shutdown aborts if the host calls it. */
#define FAKE_INIT_FAILS 1
#include "fake_plugin.h"
