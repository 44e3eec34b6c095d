/*
 * kiln/dtype.h - element types. Numbers are explicit and never reused.
 * Only F32 (and I32 for integer labels/indices) are computed today; the
 * others are numbered so plugins and files can name them already.
 */
#ifndef KILN_DTYPE_H
#define KILN_DTYPE_H

#include <stddef.h>
#include "export.h"

typedef enum kiln_dtype {
  KILN_DTYPE_INVALID = 0,
  KILN_F32  = 1,
  KILN_F16  = 2,
  KILN_BF16 = 3,
  KILN_I32  = 4,
  KILN_U8   = 5,
  KILN_DTYPE_MAX_ = 0x7fffffff
} kiln_dtype;

/* Maximum tensor rank. */
#define KILN_MAX_DIMS 8

KILN_EXTERN_C_BEGIN

/** Size in bytes of one element of `dt`, or 0 for an unknown dtype. */
KILN_API size_t kiln_dtype_size(kiln_dtype dt);
/** Lower-case name ("f32"); "unknown" for an unknown dtype. Static storage. */
KILN_API const char *kiln_dtype_name(kiln_dtype dt);

KILN_EXTERN_C_END

#endif /* KILN_DTYPE_H */
