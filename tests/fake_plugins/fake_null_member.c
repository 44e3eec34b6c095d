/* Its api table has the right size but graph_run is NULL. */
#define FAKE_NULL_GRAPH_RUN 1
#include "fake_plugin.h"
