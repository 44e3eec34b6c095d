/* Helpers shared by the test suites. */
#ifndef KILN_TESTUTIL_H
#define KILN_TESTUTIL_H

#include <stdint.h>
#include "kiln/kiln.h"

/* Creates a context with plugin discovery (finds B/lib/kiln) and opens the
 * CPU device; aborts the test with the kiln error on failure. */
void tu_open_cpu(kiln_context **ctx, kiln_device **dev);
/* Deterministic uniform floats in [lo, hi) from a 64-bit seed. */
void tu_fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi);
/* Path of a file under the shared test data directory (static buffer). */
const char *tu_data_path(const char *rel);

/* Sends stderr (descriptor 2) to a temporary file until tu_stderr_end(),
 * which restores it and returns what was written (malloc'd, NUL-ended). */
typedef struct tu_capture {
  void *file;   /* FILE * */
  int saved;
} tu_capture;
void tu_stderr_begin(tu_capture *c);
char *tu_stderr_end(tu_capture *c);

#endif
