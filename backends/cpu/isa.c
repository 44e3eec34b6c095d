/*
 * isa.c - which instruction set the CPU kernels use.
 *
 *   avx512   x86-64: AVX-512F, plus AVX2 and FMA (the kernels without an
 *            AVX-512 variant use the AVX2 one), with the OS saving the
 *            ymm and zmm/opmask state (XCR0 bits 1, 2, 5, 6, 7)
 *   avx2     x86-64: AVX2 and FMA, with ymm state saved (XCR0 bits 1, 2)
 *   neon     aarch64, where it is the baseline
 *   scalar   anywhere: the reference kernels, built for the baseline ISA
 *
 * cpuid says what the processor has; XGETBV says what the OS has enabled.
 * A processor with AVX-512 under an OS (or hypervisor) that does not save
 * zmm state faults on the first zmm instruction, so both are required.
 *
 * KILN_CPU_ISA=auto|scalar|avx2|avx512|neon picks one (auto, or unset: the
 * best usable). It is read when a device is opened; forcing one this
 * machine cannot run is an error there, never a SIGILL later. The choice is
 * process-wide (kernels get no device), so a device opened while another
 * is open must choose the same one.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "cpu-impl.h"

kcpu_isa kcpu_isa_active = KCPU_ISA_SCALAR;

static const char *const isa_names[KCPU_ISA_COUNT_] = {
    [KCPU_ISA_SCALAR] = "scalar",
    [KCPU_ISA_AVX2] = "avx2",
    [KCPU_ISA_AVX512] = "avx512",
    [KCPU_ISA_NEON] = "neon",
};

const char *kcpu_isa_name(kcpu_isa isa) {
  return (unsigned)isa < KCPU_ISA_COUNT_ ? isa_names[isa] : "unknown";
}

#if defined(__x86_64__)
/* XCR0: the register state the OS saves (valid only when OSXSAVE is set). */
static uint64_t xgetbv0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}
#endif

int kcpu_isa_usable(kcpu_isa isa, char *why, size_t size) {
  if (size) why[0] = '\0';
  switch (isa) {
    case KCPU_ISA_SCALAR:
      return 1;
    case KCPU_ISA_NEON:
#if defined(__aarch64__)
      return 1;
#else
      snprintf(why, size, "neon kernels exist only in aarch64 builds");
      return 0;
#endif
    case KCPU_ISA_AVX2:
    case KCPU_ISA_AVX512: {
#if defined(__x86_64__)
      unsigned a, b, c, d;
      if (!__get_cpuid(1, &a, &b, &c, &d)) {
        snprintf(why, size, "cpuid leaf 1 is not available");
        return 0;
      }
      int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
      unsigned b7 = 0;
      if (__get_cpuid_count(7, 0, &a, &b7, &c, &d) == 0) b7 = 0;
      int avx2 = (b7 >> 5) & 1, avx512f = (b7 >> 16) & 1;
      uint64_t xcr0 = osxsave ? xgetbv0() : 0;
      if (!avx || !avx2 || !fma) {
        snprintf(why, size, "%s%s%snot present", avx ? "" : "avx ", avx2 ? "" : "avx2 ",
                 fma ? "" : "fma ");
        return 0;
      }
      if (!osxsave || (xcr0 & 0x6) != 0x6) {
        snprintf(why, size, "the OS does not enable ymm state (OSXSAVE %d, XCR0 0x%llx)",
                 osxsave, (unsigned long long)xcr0);
        return 0;
      }
      if (isa == KCPU_ISA_AVX2) return 1;
      if (!avx512f) {
        snprintf(why, size, "avx512f not present");
        return 0;
      }
      if ((xcr0 & 0xe6) != 0xe6) {
        snprintf(why, size, "avx512f present but the OS does not enable zmm state (XCR0 0x%llx)",
                 (unsigned long long)xcr0);
        return 0;
      }
      return 1;
#else
      snprintf(why, size, "%s kernels exist only in x86-64 builds", kcpu_isa_name(isa));
      return 0;
#endif
    }
    default:
      snprintf(why, size, "unknown instruction set %d", (int)isa);
      return 0;
  }
}

kiln_status kcpu_isa_choose(const char *env, kcpu_isa *out, char *note, size_t size) {
  char why[160];
  if (!env || !*env || strcmp(env, "auto") == 0) {
    static const kcpu_isa best[] = {KCPU_ISA_AVX512, KCPU_ISA_AVX2, KCPU_ISA_NEON};
    const char *first_why = NULL;
    char first[160] = "";
    for (size_t i = 0; i < sizeof best / sizeof best[0]; i++) {
      if (kcpu_isa_usable(best[i], why, sizeof why)) {
        *out = best[i];
        if (first_why) snprintf(note, size, "%s (auto; %s)", kcpu_isa_name(best[i]), first_why);
        else snprintf(note, size, "%s (auto)", kcpu_isa_name(best[i]));
        return KILN_OK;
      }
      /* The reason the best candidate of this architecture was passed over. */
      if (!first_why && !strstr(why, "only in")) {
        snprintf(first, sizeof first, "%s", why);
        first_why = first;
      }
    }
    *out = KCPU_ISA_SCALAR;
    snprintf(note, size, "scalar (auto; %s)", first_why ? first_why : "no SIMD kernels for this "
                                                                      "architecture");
    return KILN_OK;
  }
  for (int i = 0; i < KCPU_ISA_COUNT_; i++) {
    if (strcmp(env, isa_names[i]) != 0) continue;
    if (!kcpu_isa_usable((kcpu_isa)i, why, sizeof why)) {
      snprintf(note, size, "KILN_CPU_ISA=%s: this machine cannot run it (%s); choose one of "
               "auto, scalar, avx2, avx512, neon that it supports, or unset it",
               env, why);
      return KILN_UNSUPPORTED;
    }
    *out = (kcpu_isa)i;
    snprintf(note, size, "%s (KILN_CPU_ISA=%s)", isa_names[i], env);
    return KILN_OK;
  }
  snprintf(note, size, "KILN_CPU_ISA=\"%s\" is not an instruction set; use auto, scalar, avx2, "
           "avx512 or neon",
           env);
  return KILN_INVALID_ARGUMENT;
}

/* Devices open, and the ISA they chose. */
static pthread_mutex_t isa_lock = PTHREAD_MUTEX_INITIALIZER;
static int isa_users;

kiln_status kcpu_isa_acquire(void) {
  char note[256];
  kcpu_isa isa;
  kiln_status st = kcpu_isa_choose(getenv("KILN_CPU_ISA"), &isa, note, sizeof note);
  if (st != KILN_OK) {
    kcpu_host->set_error("cpu: device_open: %s", note);
    return st;
  }
  pthread_mutex_lock(&isa_lock);
  if (isa_users > 0 && isa != kcpu_isa_active) {
    kcpu_isa held = kcpu_isa_active;
    pthread_mutex_unlock(&isa_lock);
    kcpu_host->set_error("cpu: device_open: KILN_CPU_ISA chooses %s, but a device open in this "
                         "process uses %s (the choice is process-wide); close it first or keep "
                         "KILN_CPU_ISA the same",
                         note, kcpu_isa_name(held));
    return KILN_INVALID_ARGUMENT;
  }
  /* Written only while no device is open, hence no kernel runs. */
  if (isa_users == 0) kcpu_isa_active = isa;
  isa_users++;
  pthread_mutex_unlock(&isa_lock);
  return KILN_OK;
}

void kcpu_isa_release(void) {
  pthread_mutex_lock(&isa_lock);
  if (isa_users > 0) isa_users--;
  pthread_mutex_unlock(&isa_lock);
}
