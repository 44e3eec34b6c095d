/* A name outside [a-z0-9_-]: refused before init. */
#define FAKE_NAME "Fake Backend!"
#define FAKE_MUST_NOT_INIT 1
#include "fake_plugin.h"
