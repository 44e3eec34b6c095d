/*
 * alloc.c - the CPU plugin's allocations, with failure injection for tests.
 *
 * The plugin's device, buffer, executable and thread-pool allocations go
 * through kcpu_malloc/kcpu_calloc/kcpu_aligned_alloc. $KILN_FAULT_ALLOC_CPU=N,
 * read each time the plugin is initialised (once per kiln_context), makes
 * the N-th of them after init fail once, as if memory had run out, so tests
 * can walk every out-of-memory path of the plugin. Unset, they are plain
 * malloc/calloc/aligned_alloc.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "cpu-impl.h"

static atomic_long fault_count;
static atomic_long fault_target;   /* 0: never fail */

void kcpu_fault_init(void) {
  long n = 0;
  const char *s = getenv("KILN_FAULT_ALLOC_CPU");
  if (s && *s) {
    char *end;
    n = strtol(s, &end, 10);
    if (*end != '\0' || n < 0) n = 0;
  }
  atomic_store(&fault_count, 0);
  atomic_store(&fault_target, n);
}

static int fault_now(void) {
  long t = atomic_load(&fault_target);
  return t > 0 && atomic_fetch_add(&fault_count, 1) + 1 == t;
}

void *kcpu_malloc(size_t size) { return fault_now() ? NULL : malloc(size ? size : 1); }

void *kcpu_calloc(size_t n, size_t size) {
  return fault_now() ? NULL : calloc(n ? n : 1, size ? size : 1);
}

void *kcpu_aligned_alloc(size_t align, size_t size) {
  if (fault_now()) return NULL;
  size_t rounded = (size + align - 1) / align * align;
  return aligned_alloc(align, rounded ? rounded : align);
}
