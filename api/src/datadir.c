/*
 * datadir.c - where datasets live: kiln_data_dir.
 *
 * Resolution order (tools/fetch-data implements the same one):
 *   1. the explicit directory (a --data option),
 *   2. $KILN_DATA,
 *   3. $XDG_CACHE_HOME/kiln (only if XDG_CACHE_HOME is absolute, as the XDG
 *      base directory specification requires),
 *   4. $HOME/.cache/kiln, with HOME from the password database if unset.
 * Empty values count as unset. The directory need not exist.
 */
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln-impl.h"
#include "kiln/data.h"

static kiln_status put(char *buf, size_t size, const char *from, const char *a, const char *b) {
  int n = snprintf(buf, size, "%s%s", a, b);
  if (n < 0 || (size_t)n >= size)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "data directory: %s gives '%s%s' (%d bytes), longer than the %zu-byte "
                       "buffer",
                       from, a, b, n, size);
  return KILN_OK;
}

static const char *nonempty_env(const char *name) {
  const char *v = getenv(name);
  return v && v[0] ? v : NULL;
}

kiln_status kiln_data_dir(const char *explicit_dir, char *buf, size_t size) {
  if (!buf || size == 0)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_data_dir: buf is NULL or size is 0");
  buf[0] = '\0';

  if (explicit_dir && explicit_dir[0]) return put(buf, size, "the --data option", explicit_dir, "");

  const char *v = nonempty_env("KILN_DATA");
  if (v) return put(buf, size, "$KILN_DATA", v, "");

  v = nonempty_env("XDG_CACHE_HOME");
  if (v && v[0] == '/') return put(buf, size, "$XDG_CACHE_HOME", v, "/kiln");

  v = nonempty_env("HOME");
  if (!v) {
    struct passwd *pw = getpwuid(getuid());
    if (pw && pw->pw_dir && pw->pw_dir[0]) v = pw->pw_dir;
  }
  if (!v)
    return kiln__error(KILN_NOT_FOUND,
                       "data directory: none of --data, $KILN_DATA, $XDG_CACHE_HOME or $HOME "
                       "is set, and user %ld has no home directory; give --data DIR",
                       (long)getuid());
  return put(buf, size, "$HOME", v, "/.cache/kiln");
}
