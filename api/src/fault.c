/*
 * fault.c - allocation-failure injection for the test suites.
 *
 * Every checked allocation (kiln__malloc, kiln__calloc, kiln__realloc and
 * kiln__strdup) asks kiln__fault_alloc_now() first. When armed with N, the
 * N-th allocation after arming fails as if malloc had returned NULL, exactly
 * once: the caller's out-of-memory path runs, and the next attempt finds
 * memory again. Tests walk N over every allocation of a scenario this way.
 *
 * $KILN_FAULT_ALLOC=N arms it at the first allocation of the process (for
 * driving the CLI); tests call kiln__fault_alloc_arm() directly.
 * The counters are atomics: plugins' worker threads never allocate through
 * libkiln, but a user's threads might.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "kiln-impl.h"

static atomic_long fault_count;    /* allocations since arming */
static atomic_long fault_target;   /* fail when the count reaches this; 0: never */
static atomic_int fault_fired;
static atomic_int fault_env_read;

void kiln__fault_alloc_arm(long n) {
  atomic_store(&fault_env_read, 1);  /* an explicit arm overrides the environment */
  atomic_store(&fault_count, 0);
  atomic_store(&fault_fired, 0);
  atomic_store(&fault_target, n > 0 ? n : 0);
}

long kiln__fault_alloc_count(void) { return atomic_load(&fault_count); }

int kiln__fault_alloc_fired(void) { return atomic_load(&fault_fired); }

int kiln__fault_alloc_now(void) {
  if (!atomic_exchange(&fault_env_read, 1)) {
    const char *s = getenv("KILN_FAULT_ALLOC");
    if (s && *s) {
      char *end;
      long n = strtol(s, &end, 10);
      if (*end == '\0' && n > 0) atomic_store(&fault_target, n);
    }
  }
  long c = atomic_fetch_add(&fault_count, 1) + 1;
  long t = atomic_load(&fault_target);
  if (t > 0 && c == t) {
    atomic_store(&fault_fired, 1);
    return 1;
  }
  return 0;
}
