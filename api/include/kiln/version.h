/*
 * kiln/version.h - library and plugin-ABI versions.
 *
 * The promise (see docs/plugin-abi.md):
 *  - A PATCH release changes no declaration.
 *  - A MINOR release only adds: new functions, new enum values with new
 *    numbers, new fields at the END of size-prefixed structs. Programs and
 *    plugins built against an older minor of the same major keep working.
 *  - A MAJOR release may break; the loader refuses a plugin whose plugin-ABI
 *    major differs from the host's.
 */
#ifndef KILN_VERSION_H
#define KILN_VERSION_H

#include "export.h"

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0

/* Packed library version: major * 10000 + minor * 100 + patch. */
#define KILN_VERSION_HEX \
  ((KILN_VERSION_MAJOR * 10000) + (KILN_VERSION_MINOR * 100) + KILN_VERSION_PATCH)

#define KILN_STRINGIFY_(x) #x
#define KILN_STRINGIFY(x) KILN_STRINGIFY_(x)
#define KILN_VERSION_STRING                                                   \
  KILN_STRINGIFY(KILN_VERSION_MAJOR) "." KILN_STRINGIFY(KILN_VERSION_MINOR) "." \
  KILN_STRINGIFY(KILN_VERSION_PATCH)

/* Plugin ABI version (independent of the library version). */
#define KILN_PLUGIN_ABI_MAJOR 1
#define KILN_PLUGIN_ABI_MINOR 3
/* Packed as (major << 16) | minor, as carried in plugin tables. */
#define KILN_PLUGIN_ABI_VERSION \
  (((uint32_t)KILN_PLUGIN_ABI_MAJOR << 16) | (uint32_t)KILN_PLUGIN_ABI_MINOR)
#define KILN_ABI_MAJOR_OF(v) ((uint32_t)(v) >> 16)
#define KILN_ABI_MINOR_OF(v) ((uint32_t)(v) & 0xffffu)

KILN_EXTERN_C_BEGIN

/** Returns the packed version (KILN_VERSION_HEX) of the libkiln actually loaded. */
KILN_API unsigned kiln_version(void);
/** Returns "MAJOR.MINOR.PATCH" of the loaded libkiln; static storage, do not free. */
KILN_API const char *kiln_version_string(void);

KILN_EXTERN_C_END

#endif /* KILN_VERSION_H */
