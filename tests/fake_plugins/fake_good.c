/* A valid plugin named "fake" with one virtual-GPU device. */

#include "fake_plugin.h"
