/*
 * cmd_fetch.c - `kiln fetch [mnist|shakespeare|all] [--data DIR]`.
 *
 * Downloads datasets into the data directory (the same one kiln_data_dir
 * resolves: --data, $KILN_DATA, $XDG_CACHE_HOME/kiln, ~/.cache/kiln) by
 * running the `fetch-data` script, which knows the mirrors and the SHA-256
 * sums. The script is looked for, in order:
 *   1. installed beside this executable: BIN/../share/kiln/fetch-data
 *      (a relocated install);
 *   2. in the source tree this binary was built from (KILN_SOURCE_DIR);
 *   3. at the install path configured at build time (KILN_INSTALL_DATADIR).
 * The script runs through /bin/sh, so a lost executable bit does not matter.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "commands.h"
#include "kiln/data.h"

static void fetch_usage(FILE *f) {
  fprintf(f,
          "usage: kiln fetch [mnist|shakespeare|all] [--data DIR]\n"
          "\n"
          "Downloads a dataset into the data directory, checks its SHA-256 sums,\n"
          "and skips files already present and valid.\n"
          "\n"
          "  mnist         the four MNIST IDX files, into DIR/mnist/ (default)\n"
          "  shakespeare   tinyshakespeare.txt, into DIR/\n"
          "  all           both\n"
          "\n"
          "options:\n"
          "  --data DIR    data directory (default $KILN_DATA, else\n"
          "                $XDG_CACHE_HOME/kiln, else ~/.cache/kiln)\n"
          "  --help        show this help\n");
}

static int is_file(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Finds the fetch-data script (see the top of this file); writes its path
 * to buf and returns 1, or lists the places tried in `tried` and returns 0. */
static int find_script(char *buf, size_t size, char *tried, size_t tried_size) {
  char exe[PATH_MAX];
  size_t used = 0;
  tried[0] = '\0';

  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      snprintf(buf, size, "%s/../share/kiln/fetch-data", exe);
      if (is_file(buf)) return 1;
      used += (size_t)snprintf(tried + used, tried_size - used, "  %s\n", buf);
    }
  }
#ifdef KILN_SOURCE_DIR
  snprintf(buf, size, "%s/tools/fetch-data", KILN_SOURCE_DIR);
  if (is_file(buf)) return 1;
  if (used < tried_size) used += (size_t)snprintf(tried + used, tried_size - used, "  %s\n", buf);
#endif
#ifdef KILN_INSTALL_DATADIR
  snprintf(buf, size, "%s/kiln/fetch-data", KILN_INSTALL_DATADIR);
  if (is_file(buf)) return 1;
  if (used < tried_size) used += (size_t)snprintf(tried + used, tried_size - used, "  %s\n", buf);
#endif
  (void)used;
  return 0;
}

int kiln_cmd_fetch(int argc, char **argv) {
  const char *what = NULL;
  const char *data = NULL;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      fetch_usage(stdout);
      return 0;
    } else if (!strcmp(a, "--data")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "kiln fetch: --data needs a directory\n");
        return 2;
      }
      data = argv[++i];
    } else if (!strncmp(a, "--data=", 7)) {
      data = a + 7;
    } else if (a[0] == '-') {
      fprintf(stderr, "kiln fetch: unknown option '%s'\n", a);
      fetch_usage(stderr);
      return 2;
    } else if (what) {
      fprintf(stderr, "kiln fetch: one dataset at a time ('%s' and '%s'); use 'all' for both\n",
              what, a);
      return 2;
    } else {
      what = a;
    }
  }
  if (!what) what = "mnist";
  if (strcmp(what, "mnist") && strcmp(what, "shakespeare") && strcmp(what, "all")) {
    fprintf(stderr, "kiln fetch: unknown dataset '%s' (known: mnist, shakespeare, all)\n", what);
    return 2;
  }
  if (data && !data[0]) {
    fprintf(stderr, "kiln fetch: --data is empty\n");
    return 2;
  }

  /* Resolve the directory here too, so the message below names it and the
   * script and the library can never disagree about where data goes. */
  char dir[4096];
  if (kiln_data_dir(data, dir, sizeof dir) != KILN_OK) {
    fprintf(stderr, "kiln fetch: %s\n", kiln_last_error());
    return 1;
  }

  char script[PATH_MAX + 64], tried[3 * (PATH_MAX + 64)];
  if (!find_script(script, sizeof script, tried, sizeof tried)) {
    fprintf(stderr,
            "kiln fetch: cannot find the fetch-data script; looked for:\n%s"
            "kiln fetch: reinstall kiln (`cmake --install`), or run tools/fetch-data from a\n"
            "kiln source checkout\n",
            tried);
    return 1;
  }

  char *args[] = {"/bin/sh", script, "--data", dir, (char *)what, NULL};
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "kiln fetch: cannot start %s: fork: %s\n", script, strerror(errno));
    return 1;
  }
  if (pid == 0) {
    execv(args[0], args);
    fprintf(stderr, "kiln fetch: cannot run %s %s: %s\n", args[0], script, strerror(errno));
    _exit(127);
  }

  int wstatus;
  while (waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) {
      fprintf(stderr, "kiln fetch: waiting for %s: %s\n", script, strerror(errno));
      return 1;
    }
  }
  if (WIFEXITED(wstatus)) {
    int rc = WEXITSTATUS(wstatus);
    if (rc == 0) return 0;
    fprintf(stderr, "kiln fetch: %s failed (exit status %d)\n", script, rc);
    return 1;
  }
  if (WIFSIGNALED(wstatus))
    fprintf(stderr, "kiln fetch: %s was killed by signal %d\n", script, WTERMSIG(wstatus));
  return 1;
}
