/*
 * vmath.h - exp, tanh, sigmoid and the normal CDF on eight floats at a time.
 *
 * glibc's scalar expf/tanhf/erff cost 10-20 ns an element, which made them
 * a quarter of an LSTM step and most of a GPT step's GELU and attention.
 * These are Cephes' single-precision expf and tanhf (Moshier) and Numerical
 * Recipes' erfcc, in GCC vector extensions, so one source runs as AVX2
 * (or two SSE, or two NEON) instructions in whichever ISA variant includes
 * it. Accuracy, checked against double precision by the op tests: exp and
 * tanh within a few ulp, erfc within 1.2e-7 relative (the fit) plus a few
 * ulp of rounding. NaN in gives NaN out.
 *
 * Functions are always_inline and take vectors by pointer: a 32-byte
 * vector passed by value has an ABI that depends on the caller's ISA
 * (-Wpsabi), and inlining gives each variant its own instructions.
 */
#ifndef KCPU_VMATH_H
#define KCPU_VMATH_H

#include <stdint.h>
#include <string.h>

typedef float kv8 __attribute__((vector_size(32), aligned(32)));
typedef int32_t kv8i __attribute__((vector_size(32), aligned(32)));

#define KV_INLINE static inline __attribute__((always_inline))
/* m ? a : b per lane, m from a vector comparison (all ones or zeros). */
#define KV8_SELECT(m, a, b) ((kv8)(((kv8i)(a) & (m)) | ((kv8i)(b) & ~(m))))
#define KV8_SPLAT(v) ((kv8){(v), (v), (v), (v), (v), (v), (v), (v)})

/* *x = exp(*x): above 88 the result is exp(88) (1.7e38), below -87 it is 0
 * (the exact value is below FLT_MIN, 1.2e-38, there). */
KV_INLINE void kv8_exp(kv8 *px) {
  kv8 x = *px;
  kv8i nan = x != x;
  x = KV8_SELECT(nan, KV8_SPLAT(0.0f), x);
  x = KV8_SELECT(x > 88.0f, KV8_SPLAT(88.0f), x);
  x = KV8_SELECT(x < -87.0f, KV8_SPLAT(-87.0f), x);
  /* n = round(x / ln 2) by the 1.5 * 2^23 trick; r = x - n ln 2 in two parts */
  kv8 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  kv8 r = x - n * 0.693359375f - n * -2.12194440e-4f;
  kv8 z = r * r;
  kv8 p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  kv8i e = (__builtin_convertvector(n, kv8i) + 127) << 23;   /* 2^n, n in [-126, 127] */
  p = p * (kv8)e;
  p = KV8_SELECT(*px < -87.0f, KV8_SPLAT(0.0f), p);
  *px = KV8_SELECT(nan, *px, p);
}

KV_INLINE void kv8_sigmoid(kv8 *px) {
  kv8 x = *px, e = -x;
  kv8_exp(&e);
  kv8 y = 1.0f / (1.0f + e);
  *px = KV8_SELECT(x != x, x, y);
}

/* Cephes tanhf: an odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1)
 * with x's sign above. */
KV_INLINE void kv8_tanh(kv8 *px) {
  kv8 x = *px;
  kv8i sign = (kv8i)x & (int32_t)0x80000000;
  kv8 ax = (kv8)((kv8i)x & 0x7fffffff);
  kv8 e = ax + ax;
  kv8_exp(&e);
  kv8 big = 1.0f - 2.0f / (e + 1.0f);
  big = (kv8)((kv8i)big | sign);
  kv8 z = x * x;
  kv8 p = -5.70498872745e-3f * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  kv8 small = p * z * x + x;
  *px = KV8_SELECT(ax > 0.625f, big, small);
}

/* *z = erfc(*z) for z >= 0 (Numerical Recipes in C, 2nd ed., 6.2: erfcc, a
 * Chebyshev fit with relative error below 1.2e-7 everywhere); the same fit
 * as shaders/gelu.comp. */
KV_INLINE void kv8_erfc_pos(kv8 *pz) {
  kv8 z = *pz;
  kv8 t = 1.0f / (1.0f + 0.5f * z);
  kv8 p = 0.17087277f * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  kv8 e = p - z * z;
  kv8_exp(&e);
  *pz = t * e;
}

/* *v = Phi(*v) = 0.5 (1 + erf(v / sqrt 2)), the normal CDF: 0.5 erfc(|u|)
 * for v < 0, so the small tail keeps its relative precision, and
 * 1 - 0.5 erfc(u) otherwise. */
KV_INLINE void kv8_normal_cdf(kv8 *pv) {
  kv8 v = *pv;
  kv8 u = (kv8)((kv8i)v & 0x7fffffff) * 0.70710678118654752f;
  kv8_erfc_pos(&u);
  kv8 h = 0.5f * u;
  *pv = KV8_SELECT(v < 0.0f, h, 1.0f - h);
  *pv = KV8_SELECT(v != v, v, *pv);
}

/* Loads n <= 8 floats (the rest zero) and stores n: the tail of a loop
 * goes through the same vector code as the rest. A whole vector is one
 * fixed-size copy (a single load or store); only the tail pays for a
 * variable-length one (a library call, and a store-forwarding stall). */
KV_INLINE void kv8_load_n(kv8 *v, const float *x, int64_t n) {
  if (n == 8) {
    memcpy(v, x, sizeof *v);
    return;
  }
  *v = (kv8){0};
  memcpy(v, x, (size_t)n * sizeof *x);
}
KV_INLINE void kv8_store_n(float *y, const kv8 *v, int64_t n) {
  if (n == 8) memcpy(y, v, sizeof *v);
  else memcpy(y, v, (size_t)n * sizeof *y);
}

#endif /* KCPU_VMATH_H */
