/*
 * kiln/status.h - status codes and the thread-local last-error message.
 *
 * Every fallible public function returns a kiln_status. On failure it also
 * leaves a message for the calling thread, readable with kiln_last_error(),
 * that names the operation, the shapes involved and what is wrong.
 *
 * Numbers are explicit and never reused. Plugins return the same codes.
 */
#ifndef KILN_STATUS_H
#define KILN_STATUS_H

#include "export.h"

/* XX(NAME, number, "description"). One list, so codes and strings never disagree. */
#define KILN_STATUS_MAP(XX)                                                     \
  XX(OK,                0,  "success")                                         \
  XX(INVALID_ARGUMENT,  1,  "invalid argument")                                \
  XX(SHAPE_MISMATCH,    2,  "shape mismatch")                                  \
  XX(DTYPE_MISMATCH,    3,  "dtype mismatch")                                  \
  XX(UNSUPPORTED,       4,  "unsupported operation")                           \
  XX(OUT_OF_MEMORY,     5,  "out of memory")                                   \
  XX(IO_ERROR,          6,  "input/output error")                              \
  XX(CORRUPT_DATA,      7,  "corrupt or malformed data")                       \
  XX(NOT_FOUND,         8,  "not found")                                       \
  XX(PLUGIN_ERROR,      9,  "plugin error")                                    \
  XX(ABI_MISMATCH,      10, "plugin ABI mismatch")                             \
  XX(NO_DEVICE,         11, "no device available")                             \
  XX(DEVICE_LOST,       12, "device lost")                                     \
  XX(INTERNAL,          13, "internal error")                                  \
  XX(INVALID_STATE,     14, "invalid state")

typedef enum kiln_status {
#define KILN_STATUS_ENUM_(name, num, desc) KILN_##name = num,
  KILN_STATUS_MAP(KILN_STATUS_ENUM_)
#undef KILN_STATUS_ENUM_
  KILN_STATUS_MAX_ = 0x7fffffff /* keeps the enum 32 bits wide */
} kiln_status;

KILN_EXTERN_C_BEGIN

/** Returns a short static description of `s` ("shape mismatch"); never NULL.
 *  Unknown codes give "unknown status". */
KILN_API const char *kiln_status_string(kiln_status s);

/** Returns the symbolic name of `s` ("KILN_SHAPE_MISMATCH"); never NULL. */
KILN_API const char *kiln_status_name(kiln_status s);

/** Returns the calling thread's last error message, or "" if none.
 *  The string stays valid until the next kiln call on this thread. */
KILN_API const char *kiln_last_error(void);

/** Clears the calling thread's last error message. */
KILN_API void kiln_clear_error(void);

KILN_EXTERN_C_END

#endif /* KILN_STATUS_H */
