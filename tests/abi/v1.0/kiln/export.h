/*
 * kiln/export.h - symbol visibility for the public API.
 *
 * libkiln is built with -fvisibility=hidden and KILN_BUILDING defined; only
 * declarations marked KILN_API are exported. Programs that use kiln see
 * KILN_API as a plain declaration (or dllimport on Windows).
 */
#ifndef KILN_EXPORT_H
#define KILN_EXPORT_H

#if defined(_WIN32)
#  if defined(KILN_BUILDING)
#    define KILN_API __declspec(dllexport)
#  else
#    define KILN_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define KILN_API __attribute__((visibility("default")))
#else
#  define KILN_API
#endif

#ifdef __cplusplus
#  define KILN_EXTERN_C_BEGIN extern "C" {
#  define KILN_EXTERN_C_END }
#else
#  define KILN_EXTERN_C_BEGIN
#  define KILN_EXTERN_C_END
#endif

#endif /* KILN_EXPORT_H */
