/* Its api table ends before graph_run: too short for ABI 1.0. */
#define FAKE_API_SIZE ((uint32_t)offsetof(kiln_plugin_api, graph_run))
#include "fake_plugin.h"
