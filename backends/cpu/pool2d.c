/*
 * pool2d.c - 2-D max and average pooling, NCHW, forward and backward.
 *
 * Shapes (kiln/ops.h): x [N, C, H, W], y [N, C, OH, OW] with
 * OH = (H + 2*ph - KH) / sh + 1 (OW likewise). Window (oh, ow) covers rows
 * oh*sh - ph .. +KH-1 and columns ow*sw - pw .. +KW-1, clipped to the input.
 * ip[0] KH, ip[1] KW, ip[2] sh, ip[3] sw, ip[4] ph, ip[5] pw,
 * ip[6] count_include_pad (average pooling only).
 *
 * Max pooling ignores padding and sends the gradient to the first maximum
 * of a window in row-major order (a NaN counts as the maximum, as in
 * PyTorch). Each padding must be smaller than its kernel size, so every
 * window holds at least one input element.
 *
 * Every (n, c) plane is independent: the kernels run planes in parallel
 * and each plane in a fixed order, so results never depend on scheduling.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cpu-impl.h"

typedef struct pool_geom {
  int64_t planes, H, W, OH, OW;   /* planes = N*C */
  int64_t KH, KW, sh, sw, ph, pw;
  int include_pad;
} pool_geom;

typedef struct pool_job {
  pool_geom g;
  const float *a;   /* x (forward) or dy (backward) */
  const float *b;   /* x (max backward) */
  float *out;
  const kcpu_node *node;   /* for its epilogue (kcpu_node_done) */
  kcpu_range_fn fn;        /* the planes' kernel, under pool_range_epi */
} pool_job;

/* xs is x's shape [N, C, H, W], ys y's [N, C, OH, OW]. */
static void pool_geom_init(pool_geom *g, const kcpu_node *n, const int64_t *xs, const int64_t *ys) {
  g->planes = xs[0] * xs[1];
  g->H = xs[2], g->W = xs[3], g->OH = ys[2], g->OW = ys[3];
  g->KH = n->ip[0], g->KW = n->ip[1], g->sh = n->ip[2], g->sw = n->ip[3];
  g->ph = n->ip[4], g->pw = n->ip[5];
  g->include_pad = n->ip[6] != 0;
}

/* ---- window rows ------------------------------------------------------------
 * The kernels work one output row at a time, on up to POOL_COLS output
 * columns held in stack buffers: for each window row ih and column tap kw,
 * one pass over the columns updates every window at once. Passes run in
 * row-major window order, so each window still sees its elements in that
 * order, and the inner loops vectorize. */

#define POOL_COLS 128

/* Rows [*h0, *h1) of the input that output row oh's windows cover. */
static void pool_rows(const pool_geom *g, int64_t oh, int64_t *h0, int64_t *h1) {
  int64_t hs = oh * g->sh - g->ph;
  *h0 = hs < 0 ? 0 : hs;
  *h1 = hs + g->KH > g->H ? g->H : hs + g->KH;
}

/* Output columns in [c0, c1) whose tap kw lands inside the input: [*a, *b). */
static void pool_cols(const pool_geom *g, int64_t kw, int64_t c0, int64_t c1, int64_t *a,
                      int64_t *b) {
  if (g->pw == 0) { /* every tap of every window lies inside the input */
    *a = c0;
    *b = c1;
    return;
  }
  int64_t off = kw - g->pw;
  int64_t lo = off >= 0 ? 0 : (-off + g->sw - 1) / g->sw;
  int64_t hi = g->W - 1 - off < 0 ? 0 : (g->W - 1 - off) / g->sw + 1;
  if (lo < c0) lo = c0;
  if (hi > c1) hi = c1;
  *a = lo;
  *b = hi > lo ? hi : lo;
}

/* In-bounds elements of window column ow: [w0, w1) clipped to the input. */
static int64_t pool_width(const pool_geom *g, int64_t ow) {
  int64_t ws = ow * g->sw - g->pw;
  int64_t w0 = ws < 0 ? 0 : ws, w1 = ws + g->KW > g->W ? g->W : ws + g->KW;
  return w1 - w0;
}

/* One max pass: window i = ow - c0 takes xp[base + ow*sw] if it is greater
 * than its maximum so far, or the first NaN. `sw` is a constant where it is
 * inlined, so the strided load vectorizes. */
static inline __attribute__((always_inline)) void
maxpool_pass(float *restrict m, int32_t *restrict arg, const float *restrict xp, int64_t base,
             int64_t sw, int64_t c0, int64_t a, int64_t b) {
  for (int64_t ow = a; ow < b; ow++) {
    int32_t idx = (int32_t)(base + ow * sw);
    float v = xp[idx], cur = m[ow - c0];
    int take = (v > cur) | ((v != v) & (cur == cur));
    m[ow - c0] = take ? v : cur;
    arg[ow - c0] = take ? idx : arg[ow - c0];
  }
}

/* One max pass without indices: the forward pass only needs the values. */
static inline __attribute__((always_inline)) void
maxpool_pass_value(float *restrict m, const float *restrict xp, int64_t base, int64_t sw, int64_t c0,
                   int64_t a, int64_t b) {
  for (int64_t ow = a; ow < b; ow++) {
    float v = xp[base + ow * sw], cur = m[ow - c0];
    m[ow - c0] = ((v > cur) | (v != v)) ? v : cur;
  }
}

/* m[i], i < c1 - c0: the maximum of window (oh, c0 + i) of the plane
 * xp [H, W] (NaN if the window holds one). */
KCPU_BODY void maxpool_row_value(const pool_geom *g, const float *xp, int64_t oh, int64_t c0,
                              int64_t c1, float *m) {
  int64_t h0, h1;
  pool_rows(g, oh, &h0, &h1);
  for (int64_t ow = c0; ow < c1; ow++) {
    int64_t ws = ow * g->sw - g->pw;
    m[ow - c0] = xp[h0 * g->W + (ws < 0 ? 0 : ws)];
  }
  for (int64_t ih = h0; ih < h1; ih++) {
    for (int64_t kw = 0; kw < g->KW; kw++) {
      int64_t a, b, base = ih * g->W + kw - g->pw;
      pool_cols(g, kw, c0, c1, &a, &b);
      if (g->sw == 1) maxpool_pass_value(m, xp, base, 1, c0, a, b);
      else if (g->sw == 2) maxpool_pass_value(m, xp, base, 2, c0, a, b);
      else maxpool_pass_value(m, xp, base, g->sw, c0, a, b);
    }
  }
}

/* m[i] and arg[i], i < c1 - c0: the maximum of window (oh, c0 + i) of the
 * plane xp [H, W] and its index in the plane, the first maximum in
 * row-major window order (a NaN counts as the maximum). */
KCPU_BODY void maxpool_row(const pool_geom *g, const float *xp, int64_t oh, int64_t c0, int64_t c1,
                        float *m, int32_t *arg) {
  int64_t h0, h1;
  pool_rows(g, oh, &h0, &h1);
  for (int64_t ow = c0; ow < c1; ow++) {
    int64_t ws = ow * g->sw - g->pw;
    arg[ow - c0] = (int32_t)(h0 * g->W + (ws < 0 ? 0 : ws));
    m[ow - c0] = xp[arg[ow - c0]];
  }
  for (int64_t ih = h0; ih < h1; ih++) {
    for (int64_t kw = 0; kw < g->KW; kw++) {
      int64_t a, b, base = ih * g->W + kw - g->pw;
      pool_cols(g, kw, c0, c1, &a, &b);
      if (g->sw == 1) maxpool_pass(m, arg, xp, base, 1, c0, a, b);
      else if (g->sw == 2) maxpool_pass(m, arg, xp, base, 2, c0, a, b);
      else maxpool_pass(m, arg, xp, base, g->sw, c0, a, b);
    }
  }
}

/* s[i], i < c1 - c0: the sum of window (oh, c0 + i) of xp in row-major
 * window order, divided by its divisor (KH*KW with count_include_pad, else
 * the number of in-bounds elements). */
KCPU_BODY void avgpool_row(const pool_geom *g, const float *xp, int64_t oh, int64_t c0, int64_t c1,
                        float *s) {
  int64_t h0, h1;
  pool_rows(g, oh, &h0, &h1);
  for (int64_t i = 0; i < c1 - c0; i++) s[i] = 0.0f;
  for (int64_t ih = h0; ih < h1; ih++) {
    for (int64_t kw = 0; kw < g->KW; kw++) {
      int64_t a, b, base = ih * g->W + kw - g->pw;
      pool_cols(g, kw, c0, c1, &a, &b);
      for (int64_t ow = a; ow < b; ow++) s[ow - c0] += xp[base + ow * g->sw];
    }
  }
  for (int64_t ow = c0; ow < c1; ow++)
    s[ow - c0] /= g->include_pad ? (float)(g->KH * g->KW) : (float)((h1 - h0) * pool_width(g, ow));
}

/* ---- kernels ------------------------------------------------------------- */

/* ---- 2x2, stride 2, no padding -------------------------------------------
 * The CNN's pooling. Windows tile the input without overlap, so the
 * forward pass takes the maximum of four loads and the backward pass
 * writes every input element once: dy to the window's first maximum, 0 to
 * the rest and to the row and column no window covers (odd H or W). The
 * order of comparisons and the NaN rule are those of the general path, and
 * 0 + dy keeps its sign rule (-0 becomes +0), so results are the same bit
 * for bit. */

static int pool_is_2x2(const pool_geom *g) {
  return g->KH == 2 && g->KW == 2 && g->sh == 2 && g->sw == 2 && g->ph == 0 && g->pw == 0;
}


/* The first maximum of a, b, c, d in that order (a NaN counts as the
 * maximum): its position 0..3. Branch-free: on real data the outcome is
 * random, and mispredicted branches cost more than the comparisons. */
static inline int max4_first(float a, float b, float c, float d) {
  float m = a;
  int k = 0, t;
  t = (b > m) | ((b != b) & (m == m)), m = t ? b : m, k = t ? 1 : k;
  t = (c > m) | ((c != c) & (m == m)), m = t ? c : m, k = t ? 2 : k;
  t = (d > m) | ((d != d) & (m == m)), k = t ? 3 : k;
  return k;
}

/* dy where sel, else +0: a bit mask, so no branch and dy's bits unchanged. */
static inline float pick(int sel, float dy) {
  uint32_t u;
  memcpy(&u, &dy, sizeof u);
  u &= -(uint32_t)sel;
  memcpy(&dy, &u, sizeof dy);
  return dy;
}

/* Four windows at a time in 4-float vectors (GCC vector extensions, SSE on
 * the baseline ISA): even and odd columns of each input row are split by
 * shuffles, the first-maximum rule becomes masks (a comparison gives all
 * ones or zero per lane), and the four picks are interleaved back. The
 * same comparisons in the same order as max4_first, and selects are exact,
 * so the bits are those of the scalar loop, which was 12% of a CNN step
 * (GCC does not vectorize it: the winner index k). */
typedef float pool_v4 __attribute__((vector_size(16)));
typedef int32_t pool_v4i __attribute__((vector_size(16)));
#if defined(__clang__)
#define POOL_SHUF(a, b, i0, i1, i2, i3) __builtin_shufflevector(a, b, i0, i1, i2, i3)
#else
#define POOL_SHUF(a, b, i0, i1, i2, i3) __builtin_shuffle(a, b, (pool_v4i){i0, i1, i2, i3})
#endif

/* v where t (all ones), m where t is 0: as integer lanes. */
static inline __attribute__((always_inline)) pool_v4i pool_sel(pool_v4i t, pool_v4i v, pool_v4i m) {
  return (v & t) | (m & ~t);
}

/* y for one output row: the maximum of a, b, c, d in that order, a NaN
 * taking over (v > m or v is NaN). Four windows at a time in vectors, as
 * maxpool_2x2_backward_row below (same comparisons, exact selects: the
 * scalar loop's bits); the scalar loop does the rest. */
static inline __attribute__((always_inline)) void
maxpool_2x2_row(const float *restrict r0, const float *restrict r1, float *restrict y, int64_t OW) {
  int64_t ow = 0;
  for (; ow + 4 <= OW; ow += 4) {
    pool_v4 x00, x01, x10, x11;
    memcpy(&x00, r0 + 2 * ow, 16), memcpy(&x01, r0 + 2 * ow + 4, 16);
    memcpy(&x10, r1 + 2 * ow, 16), memcpy(&x11, r1 + 2 * ow + 4, 16);
    pool_v4 m = POOL_SHUF(x00, x01, 0, 2, 4, 6), v = POOL_SHUF(x00, x01, 1, 3, 5, 7);
    m = (pool_v4)pool_sel((v > m) | (v != v), (pool_v4i)v, (pool_v4i)m);
    v = POOL_SHUF(x10, x11, 0, 2, 4, 6);
    m = (pool_v4)pool_sel((v > m) | (v != v), (pool_v4i)v, (pool_v4i)m);
    v = POOL_SHUF(x10, x11, 1, 3, 5, 7);
    m = (pool_v4)pool_sel((v > m) | (v != v), (pool_v4i)v, (pool_v4i)m);
    memcpy(y + ow, &m, 16);
  }
  for (; ow < OW; ow++) {
    float m = r0[2 * ow], v;
    v = r0[2 * ow + 1], m = ((v > m) | (v != v)) ? v : m;
    v = r1[2 * ow], m = ((v > m) | (v != v)) ? v : m;
    v = r1[2 * ow + 1], m = ((v > m) | (v != v)) ? v : m;
    y[ow] = m;
  }
}

KCPU_BODY void maxpool_2x2_range_body(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const pool_geom *g = &j->g;
  const int64_t W = g->W, OW = g->OW;
  for (int64_t p = begin; p < end; p++) {
    const float *xp = j->a + p * g->H * W;
    float *yp = j->out + p * g->OH * OW;
    for (int64_t oh = 0; oh < g->OH; oh++) {
      const float *r0 = xp + 2 * oh * W;
      maxpool_2x2_row(r0, r0 + W, yp + oh * OW, OW);
    }
  }
}
KCPU_RANGE_VARIANTS(maxpool_2x2_range)

/* One output row of windows: r0, r1 the window rows of x, d0, d1 those of
 * dx, dy the row's OW gradients. */
static inline __attribute__((always_inline)) void
maxpool_2x2_backward_row(const float *restrict r0, const float *restrict r1,
                         const float *restrict dy, float *restrict d0, float *restrict d1,
                         int64_t OW) {
  int64_t ow = 0;
  for (; ow + 4 <= OW; ow += 4) {
    pool_v4 x00, x01, x10, x11, gv;
    memcpy(&x00, r0 + 2 * ow, 16), memcpy(&x01, r0 + 2 * ow + 4, 16);
    memcpy(&x10, r1 + 2 * ow, 16), memcpy(&x11, r1 + 2 * ow + 4, 16);
    memcpy(&gv, dy + ow, 16);
    pool_v4 a = POOL_SHUF(x00, x01, 0, 2, 4, 6), b = POOL_SHUF(x00, x01, 1, 3, 5, 7);
    pool_v4 c = POOL_SHUF(x10, x11, 0, 2, 4, 6), d = POOL_SHUF(x10, x11, 1, 3, 5, 7);
    pool_v4i tb = (b > a) | ((b != b) & (a == a));
    pool_v4 m = (pool_v4)pool_sel(tb, (pool_v4i)b, (pool_v4i)a);
    pool_v4i tc = (c > m) | ((c != c) & (m == m));
    m = (pool_v4)pool_sel(tc, (pool_v4i)c, (pool_v4i)m);
    pool_v4i td = (d > m) | ((d != d) & (m == m));
    pool_v4i g = (pool_v4i)(gv + (pool_v4){0.0f, 0.0f, 0.0f, 0.0f});
    pool_v4i k3 = td, k2 = tc & ~td, k1 = tb & ~tc & ~td, k0 = ~(tb | tc | td);
    pool_v4i p0 = g & k0, p1 = g & k1, p2 = g & k2, p3 = g & k3;
    pool_v4i o00 = POOL_SHUF(p0, p1, 0, 4, 1, 5), o01 = POOL_SHUF(p0, p1, 2, 6, 3, 7);
    pool_v4i o10 = POOL_SHUF(p2, p3, 0, 4, 1, 5), o11 = POOL_SHUF(p2, p3, 2, 6, 3, 7);
    memcpy(d0 + 2 * ow, &o00, 16), memcpy(d0 + 2 * ow + 4, &o01, 16);
    memcpy(d1 + 2 * ow, &o10, 16), memcpy(d1 + 2 * ow + 4, &o11, 16);
  }
  for (; ow < OW; ow++) {
    int k = max4_first(r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1]);
    float g = 0.0f + dy[ow];
    d0[2 * ow] = pick(k == 0, g);
    d0[2 * ow + 1] = pick(k == 1, g);
    d1[2 * ow] = pick(k == 2, g);
    d1[2 * ow + 1] = pick(k == 3, g);
  }
}

KCPU_BODY void maxpool_2x2_backward_range_body(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const pool_geom *g = &j->g;
  const int64_t H = g->H, W = g->W, OW = g->OW;
  for (int64_t p = begin; p < end; p++) {
    const float *dyp = j->a + p * g->OH * OW;
    const float *xp = j->b + p * H * W;
    float *dxp = j->out + p * H * W;
    for (int64_t oh = 0; oh < g->OH; oh++) {
      const float *r0 = xp + 2 * oh * W;
      float *d0 = dxp + 2 * oh * W;
      maxpool_2x2_backward_row(r0, r0 + W, dyp + oh * OW, d0, d0 + W, OW);
      if (W > 2 * OW) d0[W - 1] = d0[2 * W - 1] = 0.0f;
    }
    if (H > 2 * g->OH) memset(dxp + 2 * g->OH * W, 0, (size_t)((H - 2 * g->OH) * W) * sizeof *dxp);
  }
}
KCPU_RANGE_VARIANTS(maxpool_2x2_backward_range)

/* ---- general windows ------------------------------------------------------ */

/* y[p, oh, ow] = max of x[p] over window (oh, ow), for planes p in [begin, end). */
KCPU_BODY void maxpool_range_body(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const pool_geom *g = &j->g;
  for (int64_t p = begin; p < end; p++) {
    const float *xp = j->a + p * g->H * g->W;
    float *yp = j->out + p * g->OH * g->OW;
    for (int64_t oh = 0; oh < g->OH; oh++) {
      for (int64_t c0 = 0; c0 < g->OW; c0 += POOL_COLS) {
        int64_t c1 = c0 + POOL_COLS < g->OW ? c0 + POOL_COLS : g->OW;
        maxpool_row_value(g, xp, oh, c0, c1, yp + oh * g->OW + c0);
      }
    }
  }
}
KCPU_RANGE_VARIANTS(maxpool_range)

/* dx[p] = 0, then dx[p, argmax of window (oh, ow)] += dy[p, oh, ow] in
 * (oh, ow) order. */
KCPU_BODY void maxpool_backward_range_body(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const pool_geom *g = &j->g;
  float m[POOL_COLS];
  int32_t idx[POOL_COLS];
  for (int64_t p = begin; p < end; p++) {
    const float *dyp = j->a + p * g->OH * g->OW;
    const float *xp = j->b + p * g->H * g->W;
    float *dxp = j->out + p * g->H * g->W;
    memset(dxp, 0, (size_t)(g->H * g->W) * sizeof(float));
    for (int64_t oh = 0; oh < g->OH; oh++) {
      for (int64_t c0 = 0; c0 < g->OW; c0 += POOL_COLS) {
        int64_t c1 = c0 + POOL_COLS < g->OW ? c0 + POOL_COLS : g->OW;
        maxpool_row(g, xp, oh, c0, c1, m, idx);
        for (int64_t ow = c0; ow < c1; ow++) dxp[idx[ow - c0]] += dyp[oh * g->OW + ow];
      }
    }
  }
}
KCPU_RANGE_VARIANTS(maxpool_backward_range)

/* y[p, oh, ow] = sum of x[p] over window (oh, ow) / divisor. */
KCPU_BODY void avgpool_range_body(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const pool_geom *g = &j->g;
  for (int64_t p = begin; p < end; p++) {
    const float *xp = j->a + p * g->H * g->W;
    float *yp = j->out + p * g->OH * g->OW;
    for (int64_t oh = 0; oh < g->OH; oh++) {
      for (int64_t c0 = 0; c0 < g->OW; c0 += POOL_COLS) {
        int64_t c1 = c0 + POOL_COLS < g->OW ? c0 + POOL_COLS : g->OW;
        avgpool_row(g, xp, oh, c0, c1, yp + oh * g->OW + c0);
      }
    }
  }
}
KCPU_RANGE_VARIANTS(avgpool_range)

/* dx[p] = 0, then every input element of window (oh, ow) += dy[p, oh, ow] /
 * divisor, window row by window row. */
KCPU_BODY void avgpool_backward_range_body(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const pool_geom *g = &j->g;
  float d[POOL_COLS];
  for (int64_t p = begin; p < end; p++) {
    const float *dyp = j->a + p * g->OH * g->OW;
    float *dxp = j->out + p * g->H * g->W;
    memset(dxp, 0, (size_t)(g->H * g->W) * sizeof(float));
    for (int64_t oh = 0; oh < g->OH; oh++) {
      int64_t h0, h1;
      pool_rows(g, oh, &h0, &h1);
      for (int64_t c0 = 0; c0 < g->OW; c0 += POOL_COLS) {
        int64_t c1 = c0 + POOL_COLS < g->OW ? c0 + POOL_COLS : g->OW;
        for (int64_t ow = c0; ow < c1; ow++)
          d[ow - c0] = dyp[oh * g->OW + ow] /
                       (g->include_pad ? (float)(g->KH * g->KW)
                                       : (float)((h1 - h0) * pool_width(g, ow)));
        for (int64_t ih = h0; ih < h1; ih++) {
          for (int64_t kw = 0; kw < g->KW; kw++) {
            int64_t a, b, base = ih * g->W + kw - g->pw;
            pool_cols(g, kw, c0, c1, &a, &b);
            for (int64_t ow = a; ow < b; ow++) dxp[base + ow * g->sw] += d[ow - c0];
          }
        }
      }
    }
  }
}
KCPU_RANGE_VARIANTS(avgpool_backward_range)

/* Floats of output after which a kernel with an epilogue stops for it, so
 * the epilogue finds them in L1/L2. */
#define POOL_EPI_FLOATS 8192

/* j->fn over planes [begin, end), with the node's epilogue after each few
 * planes (their output is final once their planes are done). */
static void pool_range_epi(void *arg, int64_t begin, int64_t end) {
  const pool_job *j = arg;
  const kcpu_node *n = j->node;
  int64_t per = n->out.numel / j->g.planes;   /* output floats per plane */
  int64_t step = POOL_EPI_FLOATS / (per > 0 ? per : 1) + 1;
  for (int64_t p = begin; p < end; p += step) {
    int64_t q = end - p < step ? end : p + step;
    j->fn(arg, p, q);
    kcpu_node_done(n, p * per, q * per);
  }
}

/* Planes in parallel; a plane is small, so ask for enough of them per chunk
 * to be worth a hand-off. */
static void pool_run(kcpu_pool *pool, pool_job *j, kcpu_range_fn fn) {
  const pool_geom *g = &j->g;
  if (g->planes <= 0) return;
  int64_t work = (g->H * g->W + g->OH * g->OW * g->KH * g->KW) | 1;
  int64_t grain = 16384 / work + 1;
  if (j->node && j->node->epi) {
    j->fn = fn;
    fn = pool_range_epi;
  }
  if (!pool || kcpu_pool_size(pool) <= 1) fn(j, 0, g->planes);
  else kcpu_parallel_for(pool, g->planes, grain, fn, j);
}

/* x = in[0] [N, C, H, W]; y = out [N, C, OH, OW]. */
void kcpu_maxpool2d(kcpu_pool *pool, const kcpu_node *n) {
  pool_job j = {.a = n->in[0].data, .out = n->out.data, .node = n};
  pool_geom_init(&j.g, n, n->in[0].shape, n->out.shape);
  pool_run(pool, &j, pool_is_2x2(&j.g) ? maxpool_2x2_range : maxpool_range);
}

/* dy = in[0] [N, C, OH, OW], x = in[1] [N, C, H, W]; dx = out [N, C, H, W]. */
void kcpu_maxpool2d_backward(kcpu_pool *pool, const kcpu_node *n) {
  pool_job j = {.a = n->in[0].data, .b = n->in[1].data, .out = n->out.data, .node = n};
  pool_geom_init(&j.g, n, n->out.shape, n->in[0].shape);
  pool_run(pool, &j, pool_is_2x2(&j.g) ? maxpool_2x2_backward_range : maxpool_backward_range);
}

/* x = in[0] [N, C, H, W]; y = out [N, C, OH, OW]. */
void kcpu_avgpool2d(kcpu_pool *pool, const kcpu_node *n) {
  pool_job j = {.a = n->in[0].data, .out = n->out.data, .node = n};
  pool_geom_init(&j.g, n, n->in[0].shape, n->out.shape);
  pool_run(pool, &j, avgpool_range);
}

/* dy = in[0] [N, C, OH, OW]; dx = out [N, C, H, W]. */
void kcpu_avgpool2d_backward(kcpu_pool *pool, const kcpu_node *n) {
  pool_job j = {.a = n->in[0].data, .out = n->out.data, .node = n};
  pool_geom_init(&j.g, n, n->out.shape, n->in[0].shape);
  pool_run(pool, &j, avgpool_backward_range);
}

/* ---- validation ---------------------------------------------------------- */

static const char *pool_op_name(uint32_t op) {
  switch (op) {
    case KILN_OP_MAXPOOL2D: return "maxpool2d";
    case KILN_OP_MAXPOOL2D_BACKWARD: return "maxpool2d_backward";
    case KILN_OP_AVGPOOL2D: return "avgpool2d";
    case KILN_OP_AVGPOOL2D_BACKWARD: return "avgpool2d_backward";
    default: return "pool2d(?)";
  }
}

static const char *pool_dtype_name(uint32_t dt) {
  switch (dt) {
    case KILN_F32: return "f32";
    case KILN_F16: return "f16";
    case KILN_BF16: return "bf16";
    case KILN_I32: return "i32";
    case KILN_U8: return "u8";
    default: return "unknown";
  }
}

/* "[64, 32, 26, 26]" into buf. */
static const char *pool_shape_str(const kcpu_tensor *t, char *buf, size_t cap) {
  size_t len = 0;
  int w = snprintf(buf, cap, "[");
  len = w > 0 ? (size_t)w : 0;
  for (int i = 0; i < t->ndim && len < cap; i++) {
    w = snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    len += w > 0 ? (size_t)w : 0;
  }
  if (len < cap) snprintf(buf + len, cap - len, "]");
  return buf;
}

kiln_status kcpu_pool2d_validate(const kcpu_node *n) {
  const char *op = pool_op_name(n->op);
  char s0[128], s1[128];
  int is_max = n->op == KILN_OP_MAXPOOL2D || n->op == KILN_OP_MAXPOOL2D_BACKWARD;
  int backward = n->op == KILN_OP_MAXPOOL2D_BACKWARD || n->op == KILN_OP_AVGPOOL2D_BACKWARD;
  int want_inputs = n->op == KILN_OP_MAXPOOL2D_BACKWARD ? 2 : 1;

  if (n->n_inputs != want_inputs) {
    kcpu_host->set_error("cpu: %s: expects %d input%s (%s), got %d", op, want_inputs,
                         want_inputs == 1 ? "" : "s",
                         n->op == KILN_OP_MAXPOOL2D_BACKWARD ? "dy, x" : backward ? "dy" : "x",
                         n->n_inputs);
    return KILN_INVALID_ARGUMENT;
  }
  for (int i = 0; i <= n->n_inputs; i++) {
    const kcpu_tensor *t = i < n->n_inputs ? &n->in[i] : &n->out;
    if (t->dtype != KILN_F32) {
      char idx[24];
      snprintf(idx, sizeof idx, "input %d", i);
      kcpu_host->set_error("cpu: %s: %s %s has dtype %s; only f32 is supported", op,
                           i < n->n_inputs ? idx : "the output", pool_shape_str(t, s0, sizeof s0),
                           pool_dtype_name(t->dtype));
      return KILN_DTYPE_MISMATCH;
    }
  }

  /* x: the input of the forward pass; y: its output. */
  const kcpu_tensor *x = backward ? &n->out : &n->in[0];
  const kcpu_tensor *y = backward ? &n->in[0] : &n->out;
  const char *xn = backward ? "dx" : "x", *yn = backward ? "dy" : "y";
  if (x->ndim != 4 || y->ndim != 4) {
    const kcpu_tensor *t = x->ndim != 4 ? x : y;
    kcpu_host->set_error("cpu: %s: %s %s has rank %d; expected rank 4 (N, C, H, W)", op,
                         t == x ? xn : yn, pool_shape_str(t, s0, sizeof s0), t->ndim);
    return KILN_SHAPE_MISMATCH;
  }
  for (int d = 0; d < 4; d++) {
    if (x->shape[d] < 1) {
      kcpu_host->set_error("cpu: %s: %s %s has an empty dimension %d", op, xn,
                           pool_shape_str(x, s0, sizeof s0), d);
      return KILN_SHAPE_MISMATCH;
    }
  }
  if (n->op == KILN_OP_MAXPOOL2D_BACKWARD) {
    const kcpu_tensor *xin = &n->in[1];
    int same = xin->ndim == x->ndim;
    for (int d = 0; same && d < x->ndim; d++) same = xin->shape[d] == x->shape[d];
    if (!same) {
      kcpu_host->set_error("cpu: %s: x %s and dx %s must have the same shape", op,
                           pool_shape_str(xin, s0, sizeof s0), pool_shape_str(x, s1, sizeof s1));
      return KILN_SHAPE_MISMATCH;
    }
  }

  if (is_max && x->shape[2] * x->shape[3] > INT32_MAX) {
    kcpu_host->set_error("cpu: %s: %s %s has planes of %lld elements; the CPU plugin indexes a "
                         "plane with 32 bits (at most %d)",
                         op, xn, pool_shape_str(x, s0, sizeof s0),
                         (long long)(x->shape[2] * x->shape[3]), INT32_MAX);
    return KILN_UNSUPPORTED;
  }

  const int64_t *ip = n->ip;
  int64_t KH = ip[0], KW = ip[1], sh = ip[2], sw = ip[3], ph = ip[4], pw = ip[5];
  if (KH < 1 || KW < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || ph >= KH || pw >= KW) {
    kcpu_host->set_error("cpu: %s: bad parameters kernel [%lld, %lld], stride [%lld, %lld], "
                         "padding [%lld, %lld]: kernel and stride must be >= 1, padding >= 0 and "
                         "smaller than the kernel",
                         op, (long long)KH, (long long)KW, (long long)sh, (long long)sw,
                         (long long)ph, (long long)pw);
    return KILN_INVALID_ARGUMENT;
  }
  if (!is_max && ip[6] != 0 && ip[6] != 1) {
    kcpu_host->set_error("cpu: %s: count_include_pad (ip[6]) is %lld; expected 0 or 1", op,
                         (long long)ip[6]);
    return KILN_INVALID_ARGUMENT;
  }
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  if (H + 2 * ph < KH || W + 2 * pw < KW) {
    kcpu_host->set_error("cpu: %s: %s %s padded by [%lld, %lld] is %lldx%lld, smaller than the "
                         "kernel %lldx%lld",
                         op, xn, pool_shape_str(x, s0, sizeof s0), (long long)ph, (long long)pw,
                         (long long)(H + 2 * ph), (long long)(W + 2 * pw), (long long)KH,
                         (long long)KW);
    return KILN_SHAPE_MISMATCH;
  }
  int64_t OH = (H + 2 * ph - KH) / sh + 1, OW = (W + 2 * pw - KW) / sw + 1;
  if (y->shape[0] != N || y->shape[1] != C || y->shape[2] != OH || y->shape[3] != OW) {
    kcpu_host->set_error("cpu: %s: %s is %s, expected [%lld, %lld, %lld, %lld] for %s %s "
                         "(kernel [%lld, %lld], stride [%lld, %lld], padding [%lld, %lld])",
                         op, yn, pool_shape_str(y, s1, sizeof s1), (long long)N, (long long)C,
                         (long long)OH, (long long)OW, xn, pool_shape_str(x, s0, sizeof s0),
                         (long long)KH, (long long)KW, (long long)sh, (long long)sw, (long long)ph,
                         (long long)pw);
    return KILN_SHAPE_MISMATCH;
  }
  return KILN_OK;
}
