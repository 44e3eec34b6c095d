/* A valid plugin that calls itself "cpu", to override the built-in one. */
#define FAKE_NAME "cpu"
#include "fake_plugin.h"
