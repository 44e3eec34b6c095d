/*
 * conv.c - 2-D convolution, NCHW: forward and both backward passes.
 *
 * Shapes (kiln/ops.h): x [N, C, H, W], w [O, C/G, KH, KW], bias [O],
 * y [N, O, OH, OW]. For one image and one group g, with Cg = C/G input and
 * Og = O/G output channels, K = Cg*KH*KW and P = OH*OW:
 *
 *   forward          y[g] [Og, P]  = w[g] [Og, K] @ cols [K, P]  (+ bias)
 *   backward input   cols [K, P]   = w[g]^T @ dy[g] [Og, P];  dx[g] = col2im(cols)
 *   backward weight  dw[g] [Og, K] = sum over images of dy[g] @ cols^T
 *
 * where cols = im2col(x[g]): row (c, kh, kw), column (oh, ow) holds
 * x[c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw], zero in the padding.
 * A GEMM call covers one block of columns: equal tiles of one image's
 * pixels when the image is large, so a block stays in L2, or several whole
 * images side by side when it is small (the CNN's last 3x3 layer has only
 * 9 output pixels), so a call has enough columns to be efficient. A 1x1,
 * stride-1, unpadded convolution reads x itself as cols. Otherwise the
 * forward pass and the weight gradient never store cols as a matrix: they
 * gather it straight into the GEMM's packed B (cols, or cols^T), through
 * offset tables; the backward input pass stores the GEMM's cols and adds
 * them into dx (col2im). With a bias the forward GEMM adds it as its last
 * product (see conv_pack_weights).
 *
 * Depthwise convolutions with one or two outputs per group gain nothing
 * from a GEMM with K = KH*KW and so few rows, and use direct loops; the
 * same loops are the fallback when scratch memory cannot be allocated (the
 * kernels return nothing, so they must not fail).
 *
 * Convolutions with a small K (Cg*KH*KW <= CONV_SMALL_MAX_K, 72, for the
 * forward pass, <= 27 for the weight gradient: the CNN's first layer has
 * K = 9) skip the GEMM there: direct vectorized loops over a gathered cols
 * (see "small K"), with the GEMM path's bits for y.
 *
 * Threads: with at least as many images as threads the batch is split
 * across the pool and each block runs a single-threaded GEMM (kcpu_sgemm
 * with a NULL pool); with fewer images the blocks run one after another
 * with pooled GEMMs. The weight gradient sums one partial per chunk of the
 * batch (a few chunks per thread, fixed by the batch size and the thread
 * count, never by timing; on the small-K path fixed by the batch size
 * alone) in chunk order. So nothing depends on scheduling: y and dx depend
 * only on the shapes, dw also on the thread count (not on the small-K
 * path), and a run is bitwise reproducible.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"

/* Floats of im2col columns per block: 256 KiB stays within a core's L2. */
#define CONV_BLOCK_FLOATS (64 * 1024)
/* Columns a GEMM call wants at least (8 micro-tiles of 16); images with
 * fewer output pixels are batched into one call. Pixel tiles are multiples
 * of CONV_TILE_ALIGN columns. */
#define CONV_MIN_COLS 128
#define CONV_TILE_ALIGN 16
/* Images of fewer output pixels than one GEMM sliver (NR: the CNN's last
 * layer has 9) go in blocks of about CONV_TINY_COLS columns (9 slivers of
 * 32), in up to 768 KiB of cols: with 12 images (108 columns in 4 slivers
 * of 32) conv3's forward pass ran 89-126 GFLOP/s, with 32 (288 columns)
 * 159-162, its input gradient 84-99 against 105-123 (AVX-512 EPYC, 2
 * threads, alternating runs). */
#define CONV_TINY_COLS 288
#define CONV_TINY_BLOCK_FLOATS (192 * 1024)
/* Depthwise-style convolutions with at most this many outputs per group use
 * direct loops: a GEMM with so few rows wastes most of its micro-tiles. */
#define CONV_DIRECT_MAX_OG 2
/* Memory for the weight gradient's per-chunk partial sums; beyond it the
 * batch is cut into fewer chunks (wide layers on many threads). */
#define CONV_PARTIALS_BYTES (64 << 20)
#define CONV_CHUNKS_PER_THREAD 4
/* Convolutions with K = Cg*KH*KW up to these use the small-K direct path
 * (see "small K" below) instead of the GEMM: the forward pass, and the
 * weight gradient. Measured on the CNN's conv1 shape with 1 to 32 input
 * channels (docs/benchmarks.md): the forward pass is 1.2-2x the GEMM's
 * speed up to K = 72 and even beyond; the weight gradient 2.5x at K = 9,
 * even from K = 36 on. */
#define CONV_SMALL_MAX_K 72
#define CONV_SMALL_MAX_K_DW 27

/* ---- geometry ------------------------------------------------------------ */

typedef struct conv_geom {
  int64_t N, C, H, W;       /* x */
  int64_t O, KH, KW;        /* w [O, Cg, KH, KW] */
  int64_t OH, OW;           /* y */
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t G, Cg, Og;        /* groups and channels per group */
  int64_t K, P;             /* Cg*KH*KW and OH*OW */
  int64_t nb, pt;           /* a GEMM block: nb whole images, or pt pixels of one */
  int pointwise;            /* 1x1, stride 1, no padding: cols is x itself */
  int direct;               /* depthwise, few outputs per group: direct loops */
  int small, small_dw;      /* small K: the vectorized direct path (forward, dw) */
} conv_geom;

/* $KILN_CPU_CONV=gemm: no small-K path (A/B benchmarks, tests). */
static int conv_small_off(void) {
  const char *s = getenv("KILN_CPU_CONV");
  return s && strcmp(s, "gemm") == 0;
}

static void conv_geom_init(conv_geom *g, const kcpu_node *n, const int64_t *xs, const int64_t *ws,
                           const int64_t *ys) {
  g->N = xs[0], g->C = xs[1], g->H = xs[2], g->W = xs[3];
  g->O = ws[0], g->KH = ws[2], g->KW = ws[3];
  g->OH = ys[2], g->OW = ys[3];
  g->sh = n->ip[0], g->sw = n->ip[1], g->ph = n->ip[2], g->pw = n->ip[3];
  g->dh = n->ip[4], g->dw = n->ip[5], g->G = n->ip[6];
  g->Cg = g->C / g->G, g->Og = g->O / g->G;
  g->K = g->Cg * g->KH * g->KW;
  g->P = g->OH * g->OW;
  g->pointwise = g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
  g->direct = g->Cg == 1 && g->Og <= CONV_DIRECT_MAX_OG && !g->pointwise;

  int64_t max_cols = CONV_BLOCK_FLOATS / g->K;
  if (max_cols < CONV_TILE_ALIGN) max_cols = CONV_TILE_ALIGN;
  g->nb = 1;
  if (g->P < CONV_MIN_COLS) {
    int tiny = g->P < kcpu_sgemm_nr();   /* an image is less than one sliver */
    int64_t want = ((tiny ? CONV_TINY_COLS : CONV_MIN_COLS) + g->P - 1) / g->P;
    int64_t fit = (tiny ? CONV_TINY_BLOCK_FLOATS / g->K : max_cols) / g->P;
    g->nb = want < fit ? want : fit;
    if (g->nb > g->N) g->nb = g->N;
    if (g->nb < 1) g->nb = 1;
  }
  if (g->nb > 1 || g->P <= max_cols) {
    g->pt = g->P;
  } else {
    /* Equal tiles rounded up to whole micro-tiles. */
    int64_t tiles = (g->P + max_cols - 1) / max_cols;
    int64_t pt = (g->P + tiles - 1) / tiles;
    pt = (pt + CONV_TILE_ALIGN - 1) / CONV_TILE_ALIGN * CONV_TILE_ALIGN;
    g->pt = pt < g->P ? pt : g->P;
  }
  /* An image's cols must fit one block (the path gathers it whole). */
  g->small = g->K <= CONV_SMALL_MAX_K && !g->pointwise && !g->direct && g->pt == g->P &&
             !conv_small_off();
  g->small_dw = g->small && g->K <= CONV_SMALL_MAX_K_DW;
}

/* Output positions o in [0, n_out) whose input index o*stride + off lies in
 * [0, limit) form one interval [*lo, *hi). */
static void conv_valid_range(int64_t off, int64_t stride, int64_t limit, int64_t n_out, int64_t *lo,
                             int64_t *hi) {
  int64_t l, h;
  if (stride == 1) {
    l = off >= 0 ? 0 : -off;
    h = limit - off < 0 ? 0 : limit - off;
  } else {
    l = off >= 0 ? 0 : (-off + stride - 1) / stride;
    h = limit - 1 - off < 0 ? 0 : (limit - 1 - off) / stride + 1;
  }
  if (h > n_out) h = n_out;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

/* ---- im2col through offset tables ----------------------------------------
 * Column p of a block (pixel (oh, ow) of image n0 + i) and row t = (c, kh,
 * kw) of cols meet at one element of x: with ih0 = oh*sh - ph and iw0 =
 * ow*sw - pw, it is xg[pix[p] + tap[t]] where
 *
 *   pix[p] = i*C*H*W + ih0*W + iw0         (per block: pixel table)
 *   tap[t] = c*H*W + kh*dh*W + kw*dw       (per geometry: tap table)
 *
 * and it is padding (zero) unless ih0 + kh*dh is in [0, H) and iw0 + kw*dw
 * in [0, W) (pih/piw and tkh/tkw hold the parts). Without padding every
 * element is inside. So im2col is a gather by pix[p] + tap[t], which can
 * write each element straight where the GEMM's packed B wants it (the
 * forward pass: op(B) = cols, slivers of nr pixels; the weight gradient:
 * op(B) = cols^T, slivers of nr taps) instead of filling cols and then
 * packing it (the two passes were 20% of a CNN step, most of it in per-row
 * memcpy calls of 11 floats), and col2im a scatter-add in the order the
 * matrix-based col2im used (per element: tap by tap), hence the same bits. */

typedef struct conv_tab {
  int64_t *pix, *pih, *piw;   /* [ncols] */
  int64_t *tap, *tkh, *tkw;   /* [K] */
  int padded;
  /* Stretches of consecutive pix: columns [run[r], run[r + 1]) for r <
   * n_runs (an output row, or what of it the block holds). */
  int64_t *run, n_runs;       /* [ncols + 1] */
  /* The block the pixel table holds: nb, p0, pt and its n_runs. The table
   * does not depend on the block's first image, so consecutive blocks of
   * one shape (every image of the CNN's conv1) reuse it. */
  int64_t *key;               /* [4] */
} conv_tab;

/* Floats of scratch for a block of ncols columns: cols [K, ncols] or its
 * packed form either way round, then (nb > 1) a staging matrix [Og, ncols],
 * then the tables (int64, counted as two floats each). */
static int64_t conv_round16(int64_t n) { return (n + 15) / 16 * 16; }

static int64_t conv_cols_floats(const conv_geom *g, int64_t ncols) {
  int64_t nr = kcpu_sgemm_nr();
  int64_t a = g->K * ncols, b = (ncols + nr - 1) / nr * nr * (g->K + 1); /* + 1: a fused bias */
  int64_t c = (g->K + nr - 1) / nr * nr * ncols;
  int64_t m = a > b ? a : b;
  return conv_round16(m > c ? m : c);
}

static int64_t conv_stage_floats(const conv_geom *g, int64_t ncols) {
  return g->nb > 1 ? conv_round16(g->Og * ncols) : 0;
}

static int64_t conv_scratch_floats(const conv_geom *g) {
  int64_t ncols = g->nb * g->pt;
  return conv_cols_floats(g, ncols) + conv_stage_floats(g, ncols) + 2 * (4 * ncols + 5 + 3 * g->K);
}

/* The tables inside scratch; the tap table is filled by conv_tab_taps. */
static conv_tab conv_tab_of(const conv_geom *g, float *scratch) {
  int64_t ncols = g->nb * g->pt;
  int64_t *t = (int64_t *)(scratch + conv_cols_floats(g, ncols) + conv_stage_floats(g, ncols));
  conv_tab tb = {.pix = t, .pih = t + ncols, .piw = t + 2 * ncols, .tap = t + 3 * ncols,
                 .tkh = t + 3 * ncols + g->K, .tkw = t + 3 * ncols + 2 * g->K,
                 .padded = g->ph > 0 || g->pw > 0, .run = t + 3 * ncols + 3 * g->K,
                 .key = t + 4 * ncols + 1 + 3 * g->K};
  return tb;
}

static void conv_tab_taps(const conv_geom *g, const conv_tab *tb) {
  for (int64_t c = 0, t = 0; c < g->Cg; c++)
    for (int64_t kh = 0; kh < g->KH; kh++)
      for (int64_t kw = 0; kw < g->KW; kw++, t++) {
        tb->tkh[t] = kh * g->dh, tb->tkw[t] = kw * g->dw;
        tb->tap[t] = c * g->H * g->W + tb->tkh[t] * g->W + tb->tkw[t];
      }
}

/* The pixel table of a block: nb images from n0 (whole, pt == P) or pixels
 * [p0, p0 + pt) of one. */
static void conv_tab_pixels(const conv_geom *g, conv_tab *tb, int64_t nb, int64_t p0, int64_t pt) {
  if (tb->key[0] == nb && tb->key[1] == p0 && tb->key[2] == pt) {
    tb->n_runs = tb->key[3];
    return;
  }
  tb->n_runs = 0;
  for (int64_t i = 0, q = 0; i < nb; i++)
    for (int64_t p = p0, oh = p0 / g->OW, ow = p0 % g->OW; p < p0 + pt; p++, q++) {
      tb->pih[q] = oh * g->sh - g->ph, tb->piw[q] = ow * g->sw - g->pw;
      tb->pix[q] = i * g->C * g->H * g->W + tb->pih[q] * g->W + tb->piw[q];
      if (q == 0 || tb->pix[q] != tb->pix[q - 1] + 1) tb->run[tb->n_runs++] = q;
      if (++ow == g->OW) ow = 0, oh++;
    }
  tb->run[tb->n_runs] = nb * pt;
  tb->key[0] = nb, tb->key[1] = p0, tb->key[2] = pt, tb->key[3] = tb->n_runs;
}

/* Element (tap t, column q) of cols, or 0 in the padding. */
static inline float conv_tab_at(const conv_geom *g, const conv_tab *tb, const float *xg, int64_t t,
                                int64_t q) {
  int64_t ih = tb->pih[q] + tb->tkh[t], iw = tb->piw[q] + tb->tkw[t];
  return (uint64_t)ih < (uint64_t)g->H && (uint64_t)iw < (uint64_t)g->W ? xg[tb->pix[q] + tb->tap[t]]
                                                                        : 0.0f;
}

/* ---- filling a sliver row by 4-lane vector loads ---------------------------
 * A row of a packed sliver is d[i] = base[idx[i]] for i < n and 0 for n <= i
 * < nr, the idx fixed per sliver and the base changing row by row (the
 * forward pass: idx = pixel offsets, base = x at a tap; the weight
 * gradient: idx = tap offsets, base = x at a pixel). Without padding idx
 * runs in consecutive stretches (an output row, a kernel row), so lane l of
 * a group of 4 reads base + (idx[i] - l) + l: the lanes whose idx[i] - l
 * agree come from one unaligned 4-float load, masked. A group of 4 lanes
 * meets at most 2 stretches when they are 3 or more long (3x3 kernels,
 * output rows of 3 and more pixels): 2 loads and one store instead of 4
 * scalar loads of idx and x and 4 stores; the scalar gather was 20% of a
 * CNN step. Loads read whole groups, so up to 3 floats beyond the ones
 * used: the callers use this only where every such load stays inside x.
 * The bits are copied (masks and ors), so the result is the scalar
 * gather's. */

typedef float conv_v4 __attribute__((vector_size(16)));
typedef int32_t conv_v4i __attribute__((vector_size(16)));

typedef struct conv_lanes {
  int groups;                          /* nr / 4 */
  int ok;                              /* no group needs more than 2 loads */
  int64_t off[KCPU_NR_MAX / 4][2];     /* each group's 2 loads: offsets from base */
  conv_v4i mask[KCPU_NR_MAX / 4][2];   /* and the lanes they fill (all ones) */
  int64_t lo, hi;                      /* every load reads [base + lo, base + hi) */
} conv_lanes;

/* A group always does 2 loads (a second one with no lanes repeats the
 * first), so filling has no data-dependent branches; a group that needs 3
 * or 4 (strided idx) makes the pattern not ok, and the caller gathers. */
static void conv_lanes_of(const int64_t *idx, int n, int nr, conv_lanes *L) {
  L->groups = nr / 4;
  L->ok = 1;
  L->lo = INT64_MAX, L->hi = INT64_MIN;
  for (int gi = 0; gi < L->groups; gi++) {
    const int64_t *ix = idx + 4 * gi;
    if (4 * gi + 4 <= n && ix[1] == ix[0] + 1 && ix[2] == ix[0] + 2 && ix[3] == ix[0] + 3) {
      /* the common case, one stretch: one load (done twice) */
      L->off[gi][0] = L->off[gi][1] = ix[0];
      L->mask[gi][0] = (conv_v4i){-1, -1, -1, -1};
      L->mask[gi][1] = (conv_v4i){0, 0, 0, 0};
      if (ix[0] < L->lo) L->lo = ix[0];
      if (ix[0] + 4 > L->hi) L->hi = ix[0] + 4;
      continue;
    }
    int used = 0;
    for (int e = 0; e < 2; e++) {
      L->off[gi][e] = 0;
      L->mask[gi][e] = (conv_v4i){0, 0, 0, 0};
    }
    for (int l = 0; l < 4 && 4 * gi + l < n; l++) {
      int64_t off = idx[4 * gi + l] - l;
      int e = 0;
      while (e < used && L->off[gi][e] != off) e++;
      if (e == 2) {
        L->ok = 0;
        return;
      }
      if (e == used) L->off[gi][used++] = off;
      L->mask[gi][e][l] = -1;
      if (off < L->lo) L->lo = off;
      if (off + 4 > L->hi) L->hi = off + 4;
    }
    if (used < 2) L->off[gi][1] = L->off[gi][0];
    if (used == 0) L->off[gi][0] = L->off[gi][1] = L->off[gi - 1][0]; /* pad lanes; gi > 0 */
  }
}

/* d[0 .. nr) = the row at base (see above). */
static inline void conv_lanes_fill(const conv_lanes *L, const float *base, float *d) {
  for (int gi = 0; gi < L->groups; gi++) {
    conv_v4 v0, v1;
    memcpy(&v0, base + L->off[gi][0], sizeof v0);
    memcpy(&v1, base + L->off[gi][1], sizeof v1);
    conv_v4i acc = ((conv_v4i)v0 & L->mask[gi][0]) | ((conv_v4i)v1 & L->mask[gi][1]);
    memcpy(d + 4 * gi, &acc, sizeof acc);
  }
}

static int conv_lanes_worth(const conv_lanes *L) { return L->ok; }

/* Bp = kcpu_sgemm_pack_b of cols [K, ncols] (the forward pass's op(B)),
 * from x [xlen] whose group xoff on holds the block's first image; with kb
 * = K + 1 a last row of ones (the fused bias). */
static void conv_pack_cols(const conv_geom *g, const conv_tab *tb, const float *x, int64_t xlen,
                           int64_t xoff, int64_t ncols, int64_t kb, float *Bp) {
  const int nr = kcpu_sgemm_nr();
  const float *xg = x + xoff;
  for (int64_t j0 = 0; j0 < ncols; j0 += nr) {
    int n = (int)(ncols - j0 < nr ? ncols - j0 : nr);
    const int64_t *pix = tb->pix + j0;
    /* Rows read from xg + tap[k] + [lo, hi), tap[0] = 0 the least and
     * tap[K-1] the most. */
    conv_lanes L;
    int lanes = 0;
    if (!tb->padded && nr % 4 == 0) {
      conv_lanes_of(pix, n, nr, &L);
      lanes = conv_lanes_worth(&L) && xoff + L.lo >= 0 && xoff + tb->tap[g->K - 1] + L.hi <= xlen;
    }
    for (int64_t k = 0, k_end; k < kb;) {
      float *d = Bp + kcpu_sgemm_packed_b_sliver(ncols, kb, k, j0, &k_end);
      for (; k < k_end; k++, d += nr) {
        if (k >= g->K) { /* the fused bias's row of ones */
          for (int i = 0; i < nr; i++) d[i] = i < n ? 1.0f : 0.0f;
          continue;
        }
        if (lanes) {
          conv_lanes_fill(&L, xg + tb->tap[k], d);
          continue;
        }
        int i = 0;
        if (!tb->padded)
          for (const float *xs = xg + tb->tap[k]; i < n; i++) d[i] = xs[pix[i]];
        else
          for (; i < n; i++) d[i] = conv_tab_at(g, tb, xg, k, j0 + i);
        for (; i < nr; i++) d[i] = 0.0f;
      }
    }
  }
}

/* Bp = kcpu_sgemm_pack_b of cols^T [ncols, K] (the weight gradient's op(B)),
 * x, xlen and xoff as for conv_pack_cols. */
static void conv_pack_cols_t(const conv_geom *g, const conv_tab *tb, const float *x, int64_t xlen,
                             int64_t xoff, int64_t ncols, float *Bp) {
  const int nr = kcpu_sgemm_nr();
  const float *xg = x + xoff;
  for (int64_t t0 = 0; t0 < g->K; t0 += nr) {
    int n = (int)(g->K - t0 < nr ? g->K - t0 : nr);
    const int64_t *tap = tb->tap + t0;
    conv_lanes L;
    int lanes = 0;
    if (!tb->padded && nr % 4 == 0) {
      conv_lanes_of(tap, n, nr, &L);
      lanes = conv_lanes_worth(&L);
    }
    for (int64_t q = 0, q_end; q < ncols;) {
      float *d = Bp + kcpu_sgemm_packed_b_sliver(g->K, ncols, q, t0, &q_end);
      for (; q < q_end; q++, d += nr) {
        int i = 0;
        if (!tb->padded) { /* pix[q] >= 0 without padding */
          int64_t at = xoff + tb->pix[q];
          if (lanes && at + L.lo >= 0 && at + L.hi <= xlen) {
            conv_lanes_fill(&L, x + at, d);
            continue;
          }
          for (const float *xs = x + at; i < n; i++) d[i] = xs[tap[i]];
        } else {
          for (; i < n; i++) d[i] = conv_tab_at(g, tb, xg, t0 + i, q);
        }
        for (; i < nr; i++) d[i] = 0.0f;
      }
    }
  }
}

/* ---- vectors ------------------------------------------------------------- */

typedef float conv_v8 __attribute__((vector_size(32)));
/* For unaligned loads and stores: memcpy into a conv_v8 went through the
 * stack in 16-byte halves, and each load of it waited on both (failed
 * store forwarding: the weight gradient took 1.3x the GEMM's time). */
typedef float conv_v8u __attribute__((vector_size(32), aligned(4)));

typedef int32_t conv_v8i __attribute__((vector_size(32)));

/* The variants of the small-K kernels and the row col2im: fused products
 * for the ISAs whose GEMM kernel fuses (avx2, avx512, neon), plain ones for
 * the scalar reference kernel. (col2im only adds: the same bits either
 * way.) */
#define CONV_INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__)
#define CONV_FUSED __attribute__((target("avx2,fma") KCPU_FP_CONTRACT))
static int conv_fused(void) { return kcpu_isa_x86_simd(); }
#elif defined(__aarch64__)
#define CONV_FUSED __attribute__((unused KCPU_FP_CONTRACT))
static int conv_fused(void) { return kcpu_isa_active == KCPU_ISA_NEON; }
#else
#define CONV_FUSED
static int conv_fused(void) { return 0; }
#endif

/* d[i] += s[i] for i < n: vectorizes (d and s never overlap here). */
static inline void conv_add_run(float *restrict d, const float *restrict s, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] += s[i];
}

/* conv_col2im's narrow case: no padding, stride and dilation 1 along W, W
 * <= 16, KH <= 16, whole images in the block (the CNN's conv2 and conv3).
 * Tap by tap the runs were output rows of 11 or 3 floats, and their
 * bookkeeping was most of col2im's time (18% of conv2's input gradient,
 * 30% of conv3's, perf). Here a row of dx (16 floats, two vectors) takes
 * all its taps in registers, kernel row kh by kh (the output row that
 * reads it through kh), tap kw adding that row of cols shifted by kw, the
 * lanes outside [kw, kw + OW) masked to +0. Each element still gets its
 * terms in (kh, kw) order, and x + +0 is x for every x but -0, which dx
 * never holds (it starts at +0, and a sum is -0 only if both terms are),
 * so the bits are the tap-by-tap loop's. Lanes past W belong to the
 * image's next rows (this thread's): they are stored back unchanged; a row
 * whose 16 floats would pass the image's end goes element by element. The
 * shifted loads reach at most KW floats before a tap's row and 16 past the
 * last (inside scratch: the tables follow cols). */
#define CONV_ROWS_MAX_KH 16
CONV_INLINE void conv_col2im_rows_body(const conv_geom *g, const float *cols, int64_t ld,
                                       int64_t ncols, float *dxg, int64_t grp) {
  int64_t HW = g->H * g->W, CHW = g->C * HW, OW = g->OW, KW = g->KW;
  conv_v8i lane0 = {0, 1, 2, 3, 4, 5, 6, 7}, lane1 = lane0 + 8;
  conv_v8i m[16][2];
  for (int64_t kw = 0; kw < KW; kw++) {
    m[kw][0] = (lane0 >= (int32_t)kw) & (lane0 < (int32_t)(kw + OW));
    m[kw][1] = (lane1 >= (int32_t)kw) & (lane1 < (int32_t)(kw + OW));
  }
  for (int64_t i = 0; i < ncols / g->P; i++) {
    float *dxi = dxg + i * CHW;
    const float *end = dxi + (g->C - grp * g->Cg) * HW;
    for (int64_t c = 0; c < g->Cg; c++)
      for (int64_t ih = 0; ih < g->H; ih++) {
        /* the kernel rows kh (in order) whose output row oh reads ih */
        const float *src[CONV_ROWS_MAX_KH];
        int n = 0;
        for (int64_t kh = 0; kh < g->KH; kh++) {
          int64_t th = ih - kh * g->dh, oh = th / g->sh;
          if (th < 0 || th % g->sh || oh >= g->OH) continue;
          src[n++] = cols + (c * g->KH + kh) * KW * ld + i * g->P + oh * OW;
        }
        if (n == 0) continue;
        float *d = dxi + c * HW + ih * g->W;
        if (d + 16 > end) {
          for (int r = 0; r < n; r++)
            for (int64_t kw = 0; kw < KW; kw++)
              for (int64_t ow = 0; ow < OW; ow++) d[kw + ow] += src[r][kw * ld + ow];
          continue;
        }
        conv_v8 a0 = *(const conv_v8u *)d, a1 = *(const conv_v8u *)(d + 8);
        for (int r = 0; r < n; r++)
          for (int64_t kw = 0; kw < KW; kw++) {
            const float *s = src[r] + kw * ld - kw;
            conv_v8 b0 = *(const conv_v8u *)s, b1 = *(const conv_v8u *)(s + 8);
            a0 += (conv_v8)((conv_v8i)b0 & m[kw][0]);
            a1 += (conv_v8)((conv_v8i)b1 & m[kw][1]);
          }
        *(conv_v8u *)d = a0;
        *(conv_v8u *)(d + 8) = a1;
      }
  }
}

CONV_FUSED static void conv_col2im_rows_simd(const conv_geom *g, const float *cols, int64_t ld,
                                             int64_t ncols, float *dxg, int64_t grp) {
  conv_col2im_rows_body(g, cols, ld, ncols, dxg, grp);
}
static void conv_col2im_rows_plain(const conv_geom *g, const float *cols, int64_t ld,
                                   int64_t ncols, float *dxg, int64_t grp) {
  conv_col2im_rows_body(g, cols, ld, ncols, dxg, grp);
}

/* dxg (group grp) += col2im of cols [K, ncols] (leading dimension ld),
 * tap by tap: each element of dx gets its terms in tap order, as the
 * matrix-based col2im gave them (narrow rows: see above). Without padding a
 * stretch of pixels adds to a stretch of dx, element-wise (no two columns
 * of a tap share an element). The taps go
 * (kh, kw) outer and channel inner: the order per element is the same (an
 * element sees only its channel's taps), but consecutive stretches now land
 * in different channels, where (kw, kw + 1) inner wrote one float apart and
 * each load waited on the store before it (failed store forwarding). */
static void conv_col2im(const conv_geom *g, const conv_tab *tb, const float *cols, int64_t ld,
                        int64_t ncols, float *dxg, int64_t grp) {
  if (!tb->padded && g->sw == 1 && g->dw == 1 && g->W <= 16 && g->KH <= CONV_ROWS_MAX_KH &&
      g->pt == g->P) {
    if (conv_fused()) conv_col2im_rows_simd(g, cols, ld, ncols, dxg, grp);
    else conv_col2im_rows_plain(g, cols, ld, ncols, dxg, grp);
    return;
  }
  for (int64_t kk = 0; kk < g->KH * g->KW; kk++) {
    for (int64_t c = 0; c < g->Cg; c++) {
      int64_t t = c * g->KH * g->KW + kk;
      const float *row = cols + t * ld;
      float *ds = dxg + tb->tap[t];
      if (!tb->padded) { /* pix >= 0 */
        for (int64_t r = 0; r < tb->n_runs; r++) {
          int64_t q0 = tb->run[r];
          conv_add_run(ds + tb->pix[q0], row + q0, tb->run[r + 1] - q0);
        }
        continue;
      }
      for (int64_t q = 0; q < ncols; q++) {
        int64_t ih = tb->pih[q] + tb->tkh[t], iw = tb->piw[q] + tb->tkw[t];
        if ((uint64_t)ih < (uint64_t)g->H && (uint64_t)iw < (uint64_t)g->W) ds[tb->pix[q]] += row[q];
      }
    }
  }
}

/* ---- direct loops (depthwise, and the fallback without scratch) ---------- */

/* dst[i] += a * src[i*stride] for i < n. */
static void conv_axpy(float *restrict dst, const float *restrict src, int64_t stride, float a,
                      int64_t n) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; i++) dst[i] += a * src[i];
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] += a * src[i * stride];
  }
}

/* dst[i*stride] += a * src[i] for i < n. */
static void conv_axpy_scatter(float *restrict dst, int64_t stride, const float *restrict src,
                              float a, int64_t n) {
  if (stride == 1) {
    for (int64_t i = 0; i < n; i++) dst[i] += a * src[i];
  } else {
    for (int64_t i = 0; i < n; i++) dst[i * stride] += a * src[i];
  }
}

/* The sum of a[i] * b[i*stride] for i < n, kept in 8 interleaved partial
 * sums so it vectorizes; the order of additions depends on n alone. */
static float conv_dot(const float *restrict a, const float *restrict b, int64_t stride, int64_t n) {
  float part[8] = {0};
  int64_t i = 0;
  if (stride == 1) {
    for (; i + 8 <= n; i += 8)
      for (int l = 0; l < 8; l++) part[l] += a[i + l] * b[i + l];
  } else {
    for (; i + 8 <= n; i += 8)
      for (int l = 0; l < 8; l++) part[l] += a[i + l] * b[(i + l) * stride];
  }
  for (int l = 0; i < n; i++, l++) part[l] += a[i] * b[i * stride];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/* y[n, o] [OH, OW] = bias[o] + sum over c, kh, kw of w[o, c, kh, kw] * x[n, g*Cg + c, ...]. */
static void conv_forward_direct_plane(const conv_geom *g, const float *x, const float *w,
                                      const float *bias, float *y, int64_t n, int64_t o) {
  int64_t grp = o / g->Og;
  float *yo = y + (n * g->O + o) * g->P;
  float b0 = bias ? bias[o] : 0.0f;
  for (int64_t p = 0; p < g->P; p++) yo[p] = b0;
  for (int64_t c = 0; c < g->Cg; c++) {
    const float *xc = x + (n * g->C + grp * g->Cg + c) * g->H * g->W;
    for (int64_t kh = 0; kh < g->KH; kh++) {
      for (int64_t kw = 0; kw < g->KW; kw++) {
        float wv = w[((o * g->Cg + c) * g->KH + kh) * g->KW + kw];
        int64_t iw_off = kw * g->dw - g->pw, lo, hi;
        conv_valid_range(iw_off, g->sw, g->W, g->OW, &lo, &hi);
        for (int64_t oh = 0; oh < g->OH; oh++) {
          int64_t ih = oh * g->sh + kh * g->dh - g->ph;
          if (ih < 0 || ih >= g->H) continue;
          if (hi > lo)
            conv_axpy(yo + oh * g->OW + lo, xc + ih * g->W + lo * g->sw + iw_off, g->sw, wv, hi - lo);
        }
      }
    }
  }
}

/* dx[n, ci] [H, W] = sum over the group's o, kh, kw of w[o, c, kh, kw] * dy[n, o]
 * scattered back through the window (the transposed convolution). */
static void conv_backward_input_direct_plane(const conv_geom *g, const float *dy, const float *w,
                                             float *dx, int64_t n, int64_t ci) {
  int64_t grp = ci / g->Cg, c = ci % g->Cg;
  float *dxc = dx + (n * g->C + ci) * g->H * g->W;
  memset(dxc, 0, (size_t)(g->H * g->W) * sizeof(float));
  for (int64_t o = grp * g->Og; o < (grp + 1) * g->Og; o++) {
    const float *dyo = dy + (n * g->O + o) * g->P;
    for (int64_t kh = 0; kh < g->KH; kh++) {
      for (int64_t kw = 0; kw < g->KW; kw++) {
        float wv = w[((o * g->Cg + c) * g->KH + kh) * g->KW + kw];
        int64_t iw_off = kw * g->dw - g->pw, lo, hi;
        conv_valid_range(iw_off, g->sw, g->W, g->OW, &lo, &hi);
        for (int64_t oh = 0; oh < g->OH; oh++) {
          int64_t ih = oh * g->sh + kh * g->dh - g->ph;
          if (ih < 0 || ih >= g->H) continue;
          if (hi > lo)
            conv_axpy_scatter(dxc + ih * g->W + lo * g->sw + iw_off, g->sw, dyo + oh * g->OW + lo, wv,
                              hi - lo);
        }
      }
    }
  }
}

/* dw_row [K] (row o of dw) = sum over images n0 .. n1-1 and output pixels of
 * dy[n, o, oh, ow] * x[n, g*Cg + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw]. */
static void conv_backward_weight_direct_row(const conv_geom *g, const float *dy, const float *x,
                                            float *dw_row, int64_t o, int64_t n0, int64_t n1) {
  int64_t grp = o / g->Og;
  for (int64_t c = 0; c < g->Cg; c++) {
    for (int64_t kh = 0; kh < g->KH; kh++) {
      for (int64_t kw = 0; kw < g->KW; kw++) {
        int64_t iw_off = kw * g->dw - g->pw, lo, hi;
        conv_valid_range(iw_off, g->sw, g->W, g->OW, &lo, &hi);
        float sum = 0.0f;
        for (int64_t n = n0; n < n1; n++) {
          const float *dyo = dy + (n * g->O + o) * g->P;
          const float *xc = x + (n * g->C + grp * g->Cg + c) * g->H * g->W;
          for (int64_t oh = 0; oh < g->OH; oh++) {
            int64_t ih = oh * g->sh + kh * g->dh - g->ph;
            if (ih < 0 || ih >= g->H) continue;
            if (hi > lo)
              sum += conv_dot(dyo + oh * g->OW + lo, xc + ih * g->W + lo * g->sw + iw_off, g->sw,
                              hi - lo);
          }
        }
        dw_row[(c * g->KH + kh) * g->KW + kw] = sum;
      }
    }
  }
}

typedef struct conv_job {
  conv_geom g;
  const float *a;     /* x (forward, backward weight) or dy (backward input) */
  const float *b;     /* w (forward, backward input) or dy (backward weight) */
  const float *bias;  /* forward only, may be NULL */
  float *out;         /* y, dx, or the weight-gradient partials */
  int64_t n_chunks;   /* backward weight: batch chunks */
  const float *wp;    /* forward, backward input: each group's weights packed once */
  int64_t wp_group;   /* (kcpu_sgemm_pack_a), wp_group floats apart; NULL: none */
  int64_t kb;         /* forward: the GEMM's depth, K, or K + 1 with the bias fused */
  int64_t ob;         /* small-K forward: outputs per work item */
  const kcpu_node *node;  /* forward: for its epilogue (kcpu_node_done) */
} conv_job;

/* Packs each group's w [Og, K] (forward) or w^T [K, Og] (backward input,
 * trans 1) for kcpu_sgemm_apacked, so the blocks of a call do not pack the
 * same weights again (they did: 17% of conv2's forward pass). NULL without
 * memory; the blocks then pack as before, with the same results.
 *
 * With a bias (forward only) the packed matrix is [Og, K + 1], the bias its
 * last column, and the packed cols get a last row of ones: the GEMM adds
 * the bias as its last product, bias * 1 + sum, and the separate pass over
 * y is gone (it re-read all of y: 5.5 MB for the CNN's conv1). That rounds
 * as the pass did (sum + bias) when K + 1 is a single K block of the GEMM
 * (up to 384); kcpu_conv2d fuses only then (deeper layers would split K + 1
 * into blocks differently from K, and round differently). */
static float *conv_pack_weights(kcpu_pool *pool, const conv_geom *g, const float *w,
                                const float *bias, int trans, int64_t *per_group) {
  int64_t M = trans ? g->K : g->Og, K = trans ? g->Og : g->K;
  int64_t Kb = bias ? K + 1 : K;
  float *wb = NULL;
  *per_group = kcpu_sgemm_packed_a_floats(M, Kb);
  size_t bytes = ((size_t)(g->G * *per_group) * sizeof(float) + 63) & ~(size_t)63;
  float *wp = aligned_alloc(64, bytes ? bytes : 64);
  if (!wp) return NULL;
  if (bias) {
    wb = malloc((size_t)(g->Og * Kb) * sizeof(float));
    if (!wb) {
      free(wp);
      return NULL;
    }
  }
  for (int64_t grp = 0; grp < g->G; grp++) {
    const float *wg = w + grp * g->Og * g->K;
    if (bias) {
      for (int64_t o = 0; o < g->Og; o++) {
        memcpy(wb + o * Kb, wg + o * K, (size_t)K * sizeof(float));
        wb[o * Kb + K] = bias[grp * g->Og + o];
      }
      kcpu_sgemm_pack_a(pool, 0, M, Kb, wb, Kb, wp + grp * *per_group);
    } else {
      kcpu_sgemm_pack_a(pool, trans, M, K, wg, g->K, wp + grp * *per_group);
    }
  }
  free(wb);
  return wp;
}

/* C [M, N] = op(w of group grp) @ B, op = transpose for the backward input
 * pass, from the packed weights when there are some. */
static void conv_gemm_w(const conv_job *j, kcpu_pool *gp, int64_t grp, int trans, int64_t N,
                        const float *B, int64_t ldb, float *C, int64_t ldc) {
  const conv_geom *g = &j->g;
  int64_t M = trans ? g->K : g->Og, K = trans ? g->Og : g->K;
  if (j->wp)
    kcpu_sgemm_apacked(gp, M, N, K, 1.0f, j->wp + grp * j->wp_group, 0, B, ldb, 0.0f, C, ldc);
  else
    kcpu_sgemm(gp, trans, 0, M, N, K, 1.0f, j->b + grp * g->Og * g->K, g->K, B, ldb, 0.0f, C, ldc);
}

/* ---- GEMM paths ---------------------------------------------------------- */

/* A block is the set of GEMM columns done at once: pixels [p0, p0+pt) of
 * image n0 (nb == 1), or every pixel of images n0 .. n0+nb-1 (nb > 1, pt ==
 * P), column i*P + p holding pixel p of image n0+i. Scratch holds the block's
 * cols [K, nb*pt] or its packed form, for nb > 1 a staging matrix [Og,
 * nb*pt] for y or dy, and the offset tables (conv_scratch_floats). */

/* C [Og, N] = w of group grp @ op(B), op(B) = cols packed in Bp. */
static void conv_gemm_w_packed(const conv_job *j, kcpu_pool *gp, int64_t grp, int64_t N,
                               const float *Bp, float *C, int64_t ldc) {
  const conv_geom *g = &j->g;
  if (j->wp)
    kcpu_sgemm_abpacked(gp, g->Og, N, j->kb, 1.0f, j->wp + grp * j->wp_group, Bp, 0.0f, C, ldc);
  else
    kcpu_sgemm_packed(gp, 0, g->Og, N, g->K, 1.0f, j->b + grp * g->Og * g->K, g->K, Bp, 0.0f, C,
                      ldc);
}

/* y[n0 .. n0+nb), pixels [p0, p0+pt) = w @ cols + bias, group by group. */
static void conv_forward_block(const conv_job *j, kcpu_pool *gp, float *acc, int64_t n0, int64_t nb,
                               int64_t p0, int64_t pt, float *scratch) {
  const conv_geom *g = &j->g;
  int64_t cols = nb * pt, HW = g->H * g->W;
  (void)acc;
  if (g->pointwise && g->nb == 1) {
    /* x is cols, leading dimension P (not for the last, single-image block
     * of a batched geometry: its weights may hold the fused bias) */
    for (int64_t grp = 0; grp < g->G; grp++)
      conv_gemm_w(j, gp, grp, 0, pt, j->a + (n0 * g->C + grp * g->Cg) * HW + p0, g->P,
                  j->out + (n0 * g->O + grp * g->Og) * g->P + p0, g->P);
  } else {
    float *stage = scratch + conv_cols_floats(g, cols); /* used only when nb > 1 */
    conv_tab tb = conv_tab_of(g, scratch);
    conv_tab_pixels(g, &tb, nb, p0, pt);
    for (int64_t grp = 0; grp < g->G; grp++) {
      float *yg = j->out + (n0 * g->O + grp * g->Og) * g->P;
      conv_pack_cols(g, &tb, j->a, g->N * g->C * HW, (n0 * g->C + grp * g->Cg) * HW, cols, j->kb,
                     scratch);
      if (nb == 1) {
        conv_gemm_w_packed(j, gp, grp, pt, scratch, yg + p0, g->P);
        continue;
      }
      conv_gemm_w_packed(j, gp, grp, cols, scratch, stage, cols);
      for (int64_t i = 0; i < nb; i++)
        for (int64_t o = 0; o < g->Og; o++)
          memcpy(yg + (i * g->O + o) * g->P, stage + o * cols + i * pt, (size_t)pt * sizeof(float));
    }
  }
  if (j->bias && j->kb == g->K) { /* not fused */
    for (int64_t i = 0; i < nb; i++) {
      for (int64_t o = 0; o < g->O; o++) {
        float *yo = j->out + ((n0 + i) * g->O + o) * g->P + p0;
        for (int64_t p = 0; p < pt; p++) yo[p] += j->bias[o];
      }
    }
  }
  if (pt == g->P) {
    kcpu_node_done(j->node, n0 * g->O * g->P, (n0 + nb) * g->O * g->P);
  } else {
    for (int64_t o = 0; o < g->O; o++)
      kcpu_node_done(j->node, (n0 * g->O + o) * g->P + p0, (n0 * g->O + o) * g->P + p0 + pt);
  }
}

/* dx[n0 .. n0+nb) += col2im(w^T @ dy) for the block's pixels, group by group.
 * An image's first block zeroes it (a pointwise one writes it whole). */
static void conv_backward_input_block(const conv_job *j, kcpu_pool *gp, float *acc, int64_t n0,
                                      int64_t nb, int64_t p0, int64_t pt, float *scratch) {
  const conv_geom *g = &j->g;
  int64_t cols = nb * pt, HW = g->H * g->W;
  (void)acc;
  if (g->pointwise && nb == 1) {
    for (int64_t grp = 0; grp < g->G; grp++)
      conv_gemm_w(j, gp, grp, 1, pt, j->a + (n0 * g->O + grp * g->Og) * g->P + p0, g->P,
                  j->out + (n0 * g->C + grp * g->Cg) * HW + p0, g->P);
    return;
  }
  float *stage = scratch + conv_cols_floats(g, cols); /* used only when nb > 1 */
  conv_tab tb = conv_tab_of(g, scratch);
  conv_tab_pixels(g, &tb, nb, p0, pt);
  if (p0 == 0) memset(j->out + n0 * g->C * HW, 0, (size_t)(nb * g->C * HW) * sizeof(float));
  for (int64_t grp = 0; grp < g->G; grp++) {
    const float *dyg = j->a + (n0 * g->O + grp * g->Og) * g->P;
    float *dxg = j->out + (n0 * g->C + grp * g->Cg) * HW;
    if (nb == 1) {
      conv_gemm_w(j, gp, grp, 1, pt, dyg + p0, g->P, scratch, pt);
    } else {
      for (int64_t i = 0; i < nb; i++)
        for (int64_t o = 0; o < g->Og; o++)
          memcpy(stage + o * cols + i * pt, dyg + (i * g->O + o) * g->P, (size_t)pt * sizeof(float));
      conv_gemm_w(j, gp, grp, 1, cols, stage, cols, scratch, cols);
    }
    conv_col2im(g, &tb, scratch, cols, cols, dxg, grp);
  }
}

/* acc [O, K] += dy @ cols^T over the block's columns, group by group. */
static void conv_backward_weight_block(const conv_job *j, kcpu_pool *gp, float *acc, int64_t n0,
                                       int64_t nb, int64_t p0, int64_t pt, float *scratch) {
  const conv_geom *g = &j->g;
  int64_t cols = nb * pt, HW = g->H * g->W;
  if (g->pointwise && nb == 1) {
    for (int64_t grp = 0; grp < g->G; grp++)
      kcpu_sgemm(gp, 0, 1, g->Og, g->K, pt, 1.0f, j->b + (n0 * g->O + grp * g->Og) * g->P + p0,
                 g->P, j->a + (n0 * g->C + grp * g->Cg) * HW + p0, g->P, 1.0f,
                 acc + grp * g->Og * g->K, g->K);
    return;
  }
  float *stage = scratch + conv_cols_floats(g, cols); /* used only when nb > 1 */
  conv_tab tb = conv_tab_of(g, scratch);
  conv_tab_pixels(g, &tb, nb, p0, pt);
  for (int64_t grp = 0; grp < g->G; grp++) {
    const float *dyg = j->b + (n0 * g->O + grp * g->Og) * g->P;
    float *accg = acc + grp * g->Og * g->K;
    conv_pack_cols_t(g, &tb, j->a, g->N * g->C * HW, (n0 * g->C + grp * g->Cg) * HW, cols,
                     scratch);
    if (nb == 1) {
      kcpu_sgemm_packed(gp, 0, g->Og, g->K, pt, 1.0f, dyg + p0, g->P, scratch, 1.0f, accg, g->K);
      continue;
    }
    for (int64_t i = 0; i < nb; i++)
      for (int64_t o = 0; o < g->Og; o++)
        memcpy(stage + o * cols + i * pt, dyg + (i * g->O + o) * g->P, (size_t)pt * sizeof(float));
    kcpu_sgemm_packed(gp, 0, g->Og, g->K, cols, 1.0f, stage, cols, scratch, 1.0f, accg, g->K);
  }
}

typedef void (*conv_block_fn)(const conv_job *j, kcpu_pool *gp, float *acc, int64_t n0, int64_t nb,
                              int64_t p0, int64_t pt, float *scratch);

/* Runs fn over images [n_begin, n_end) block by block, in order. */
static void conv_blocks(const conv_job *j, kcpu_pool *gp, float *acc, int64_t n_begin,
                        int64_t n_end, conv_block_fn fn, float *scratch) {
  const conv_geom *g = &j->g;
  if (g->nb > 1) {
    for (int64_t n0 = n_begin; n0 < n_end; n0 += g->nb)
      fn(j, gp, acc, n0, n_end - n0 < g->nb ? n_end - n0 : g->nb, 0, g->P, scratch);
    return;
  }
  for (int64_t n = n_begin; n < n_end; n++)
    for (int64_t p0 = 0; p0 < g->P; p0 += g->pt)
      fn(j, gp, acc, n, 1, p0, g->P - p0 < g->pt ? g->P - p0 : g->pt, scratch);
}

/* ---- scheduling ---------------------------------------------------------- */

static int conv_threads(const kcpu_pool *pool) {
  return pool ? kcpu_pool_size(pool) : 1;
}

/* kcpu_parallel_for, or an inline call without a pool. */
static void conv_parallel(kcpu_pool *pool, int64_t n, int64_t grain, kcpu_range_fn fn, void *arg) {
  if (n <= 0) return;
  if (conv_threads(pool) <= 1) fn(arg, 0, n);
  else kcpu_parallel_for(pool, n, grain, fn, arg);
}

/* Scratch for one block (conv_scratch_floats, 64-byte aligned for the
 * packed B, the tap table filled), or NULL when none is needed or none
 * could be had (*failed says which). */
static float *conv_scratch(const conv_geom *g, int *failed) {
  *failed = 0;
  if (g->pointwise && g->nb == 1) return NULL;
  int64_t n = conv_scratch_floats(g);
  float *s = aligned_alloc(64, (size_t)conv_round16(n) * sizeof(float));
  if (!s) {
    *failed = 1;
    kcpu_host->log(1, "cpu: conv2d: no memory for a %lld-float im2col block; using direct loops",
                   (long long)n);
    return NULL;
  }
  conv_tab tb = conv_tab_of(g, s);
  conv_tab_taps(g, &tb);
  tb.key[0] = -1; /* no pixel table yet */
  return s;
}

/* ---- small K: direct vectorized loops -------------------------------------
 * With K = Cg*KH*KW small (the CNN's conv1: one channel, 3x3, K = 9) the
 * GEMM is mostly overhead: each micro-tile zeroes its accumulators, does K
 * products each and stores them, and the weight gradient's GEMM (N = K = 9
 * of a 16-wide tile) packs all of dy as its A to make 9 columns. Here each
 * image and group gathers its cols [K, P] once, through the offset tables,
 * into rows ld = P rounded up to 16 apart (zero beyond P), and then:
 *
 *   forward          y[o, p] = sum over k of w[o, k] * cols[k, p] (+ bias[o])
 *                    with 6 outputs x 16 pixels in registers. Each sum runs
 *                    in k order from 0, products fused (FMA) exactly where
 *                    the GEMM's micro-kernel fuses them, and the bias is
 *                    added after it: the GEMM path's bits.
 *   backward weight  dw[o, k] = sum over images and pixels of dy * cols
 *                    with 4 outputs x 2 taps x 8 pixels in registers. The
 *                    order: per image, lane l sums pixels p = l (mod 8) in
 *                    increasing p (fused where the GEMM fuses), the lanes
 *                    are summed ((0+1)+(2+3))+((4+5)+(6+7)), images are
 *                    added from 0 in batch order within a chunk of
 *                    CONV_SMALL_DW_IMAGES, and the chunks' partial sums in
 *                    chunk order. Not the GEMM's order (it sums pixels
 *                    across lanes in K blocks), so not its bits.
 *
 * Threads split the forward pass by image, group and block of outputs, and
 * the weight gradient by chunk; neither split changes an element's sum, so
 * y and dw are the same bits on any pool.
 *
 * Used where K <= CONV_SMALL_MAX_K (the weight gradient: _DW) and an
 * image's cols fit one GEMM block; not for pointwise (cols is x itself) or
 * the depthwise direct loops. The input gradient keeps the GEMM path (the
 * CNN never computes conv1's dx).
 * $KILN_CPU_CONV=gemm turns this path off (A/B benchmarks, tests). */
#define CONV_SMALL_OT 6      /* forward: outputs per register tile (x 16 pixels) */
#define CONV_SMALL_DW_OT 4   /* weight gradient: outputs x */
#define CONV_SMALL_DW_KT 2   /* taps per register tile (x 8 pixel lanes) */
#define CONV_SMALL_DW_IMAGES 4 /* weight gradient: images per partial sum */

static int64_t conv_small_ld(const conv_geom *g) { return conv_round16(g->P); }

/* cols [K, ld] of one image and group (xg: its first channel), zero for
 * padding and for columns P .. ld-1. */
static void conv_small_gather(const conv_geom *g, const conv_tab *tb, const float *xg, float *cols,
                              int64_t ld) {
  for (int64_t t = 0; t < g->K; t++) {
    float *row = cols + t * ld;
    if (!tb->padded) {
      const float *xs = xg + tb->tap[t];
      for (int64_t r = 0; r < tb->n_runs; r++) {
        int64_t q0 = tb->run[r], n = tb->run[r + 1] - q0;
        const float *s = xs + tb->pix[q0];
        for (int64_t i = 0; i < n; i++) row[q0 + i] = s[i];
      }
    } else {
      for (int64_t q = 0; q < g->P; q++) row[q] = conv_tab_at(g, tb, xg, t, q);
    }
    for (int64_t q = g->P; q < ld; q++) row[q] = 0.0f;
  }
}

/* Pixels per block of the kernels below: a block of cols [K, pb] stays in
 * L1 (16 KiB) while every output tile passes over it; a multiple of 16. */
static int64_t conv_small_pb(int64_t K) {
  int64_t pb = 4096 / K / 16 * 16;
  return pb < 16 ? 16 : pb;
}

/* y [OT, n] (rows ldy apart) = w [OT, K] @ cols [K, n] (rows ld apart) (+
 * bias [OT]); OT is a constant after inlining, so the tile lives in
 * registers. */
CONV_INLINE void conv_small_forward_tile(const float *cols, int64_t ld, int64_t K, int64_t n,
                                         const float *w, const float *bias, float *y, int64_t ldy,
                                         int OT) {
  for (int64_t p = 0; p < n; p += 16) {
    conv_v8 acc[CONV_SMALL_OT][2];
    for (int i = 0; i < OT; i++) acc[i][0] = acc[i][1] = (conv_v8){0};
    for (int64_t k = 0; k < K; k++) {
      conv_v8 b0 = *(const conv_v8 *)(cols + k * ld + p);
      conv_v8 b1 = *(const conv_v8 *)(cols + k * ld + p + 8);
      for (int i = 0; i < OT; i++) {
        float s = w[i * K + k];
        acc[i][0] += s * b0;
        acc[i][1] += s * b1;
      }
    }
    int64_t m = n - p < 16 ? n - p : 16;
    for (int i = 0; i < OT; i++) {
      if (bias) acc[i][0] += bias[i], acc[i][1] += bias[i];
      float *yo = y + i * ldy + p;
      if (m == 16) {
        *(conv_v8u *)yo = acc[i][0];
        *(conv_v8u *)(yo + 8) = acc[i][1];
      } else {
        float t[16];
        memcpy(t, acc[i], sizeof t);
        memcpy(yo, t, (size_t)m * sizeof(float));
      }
    }
  }
}

/* Outputs [0, n_out) of one image and group (w, bias and y at the first),
 * block of pixels by block: each output's sum is within one pixel, so the
 * blocks do not change it. */
CONV_INLINE void conv_small_forward_body(const float *cols, int64_t ld, int64_t K, int64_t P,
                                         const float *w, const float *bias, float *y,
                                         int64_t n_out) {
  int64_t pb = conv_small_pb(K);
  for (int64_t p0 = 0; p0 < P; p0 += pb) {
    int64_t n = P - p0 < pb ? P - p0 : pb, o = 0;
    const float *cb = cols + p0;
    for (; o + CONV_SMALL_OT <= n_out; o += CONV_SMALL_OT)
      conv_small_forward_tile(cb, ld, K, n, w + o * K, bias ? bias + o : NULL, y + o * P + p0, P,
                              CONV_SMALL_OT);
    const float *wo = w + o * K, *bo = bias ? bias + o : NULL;
    float *yo = y + o * P + p0;
    switch (n_out - o) {
      case 5: conv_small_forward_tile(cb, ld, K, n, wo, bo, yo, P, 5); break;
      case 4: conv_small_forward_tile(cb, ld, K, n, wo, bo, yo, P, 4); break;
      case 3: conv_small_forward_tile(cb, ld, K, n, wo, bo, yo, P, 3); break;
      case 2: conv_small_forward_tile(cb, ld, K, n, wo, bo, yo, P, 2); break;
      case 1: conv_small_forward_tile(cb, ld, K, n, wo, bo, yo, P, 1); break;
      default: break;
    }
  }
}

/* ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)). */
CONV_INLINE float conv_hsum8(const conv_v8 *v) {
  return (((*v)[0] + (*v)[1]) + ((*v)[2] + (*v)[3])) + (((*v)[4] + (*v)[5]) + ((*v)[6] + (*v)[7]));
}

/* The lane sums part [OT, K] (rows K apart; at this tile's first tap) +=
 * dy [OT, n] (rows ldy apart) times cols [KT, n] (rows ld apart), lane l
 * summing pixels l, l + 8, ...; n is a multiple of 8 but for an image's
 * last block, whose last pixels are read with dy padded by zeros (cols
 * is). OT and KT are constants after inlining. */
CONV_INLINE void conv_small_weight_tile(const float *cols, int64_t ld, int64_t n, const float *dy,
                                        int64_t ldy, conv_v8 *part, int64_t K, int OT, int KT) {
  conv_v8 s[CONV_SMALL_DW_OT][CONV_SMALL_DW_KT];
  for (int i = 0; i < OT; i++)
    for (int t = 0; t < KT; t++) s[i][t] = part[i * K + t];
  int64_t p = 0;
  for (; p + 8 <= n; p += 8) {
    conv_v8 d[CONV_SMALL_DW_OT];
    for (int i = 0; i < OT; i++) d[i] = *(const conv_v8u *)(dy + i * ldy + p);
    for (int t = 0; t < KT; t++) {
      conv_v8 c = *(const conv_v8 *)(cols + t * ld + p);
      for (int i = 0; i < OT; i++) s[i][t] += d[i] * c;
    }
  }
  if (p < n) {
    conv_v8 d[CONV_SMALL_DW_OT];
    for (int i = 0; i < OT; i++) {
      float tmp[8] = {0};
      memcpy(tmp, dy + i * ldy + p, (size_t)(n - p) * sizeof(float));
      memcpy(&d[i], tmp, sizeof d[i]);
    }
    for (int t = 0; t < KT; t++) {
      conv_v8 c = *(const conv_v8 *)(cols + t * ld + p);
      for (int i = 0; i < OT; i++) s[i][t] += d[i] * c;
    }
  }
  for (int i = 0; i < OT; i++)
    for (int t = 0; t < KT; t++) part[i * K + t] = s[i][t];
}

#define CONV_SMALL_WT(OT, KT)                                                                  \
  conv_small_weight_tile(cb + k * ld, ld, n, dy + o * P + p0, P, part + o * K + k, K, \
                         OT, KT)

/* acc [n_out, K] += dy [n_out, P] @ cols^T for one image and group, through
 * the lane sums part [n_out, K] (zeroed here), block of pixels by block:
 * the lane sums carry across blocks, so the blocks do not change them. */
CONV_INLINE void conv_small_weight_body(const float *cols, int64_t ld, int64_t K, int64_t P,
                                        const float *dy, float *acc, int64_t n_out,
                                        conv_v8 *part) {
  int64_t pb = conv_small_pb(K);
  for (int64_t e = 0; e < n_out * K; e++) part[e] = (conv_v8){0};
  for (int64_t p0 = 0; p0 < P; p0 += pb) {
    int64_t n = P - p0 < pb ? P - p0 : pb;
    const float *cb = cols + p0;
    for (int64_t o = 0; o < n_out; o += CONV_SMALL_DW_OT) {
      int64_t k = 0;
      if (n_out - o >= CONV_SMALL_DW_OT) {
        for (; k + CONV_SMALL_DW_KT <= K; k += CONV_SMALL_DW_KT) CONV_SMALL_WT(4, 2);
        if (k < K) CONV_SMALL_WT(4, 1);
        continue;
      }
      for (; k < K; k++) {
        switch (n_out - o) {
          case 3: CONV_SMALL_WT(3, 1); break;
          case 2: CONV_SMALL_WT(2, 1); break;
          default: CONV_SMALL_WT(1, 1); break;
        }
      }
    }
  }
  for (int64_t e = 0; e < n_out * K; e++) acc[e] += conv_hsum8(&part[e]);
}
#undef CONV_SMALL_WT
_Static_assert(CONV_SMALL_DW_OT == 4 && CONV_SMALL_DW_KT == 2, "conv_small_weight_body's tiles");

CONV_FUSED static void conv_small_forward_fused(const float *cols, int64_t ld, int64_t K, int64_t P,
                                                const float *w, const float *bias, float *y,
                                                int64_t n_out) {
  conv_small_forward_body(cols, ld, K, P, w, bias, y, n_out);
}
static void conv_small_forward_plain(const float *cols, int64_t ld, int64_t K, int64_t P,
                                     const float *w, const float *bias, float *y, int64_t n_out) {
  conv_small_forward_body(cols, ld, K, P, w, bias, y, n_out);
}
CONV_FUSED static void conv_small_weight_fused(const float *cols, int64_t ld, int64_t K, int64_t P,
                                               const float *dy, float *acc, int64_t n_out,
                                               conv_v8 *part) {
  conv_small_weight_body(cols, ld, K, P, dy, acc, n_out, part);
}
static void conv_small_weight_plain(const float *cols, int64_t ld, int64_t K, int64_t P,
                                    const float *dy, float *acc, int64_t n_out, conv_v8 *part) {
  conv_small_weight_body(cols, ld, K, P, dy, acc, n_out, part);
}

/* Scratch for the small path: the tables for one whole image (conv_scratch
 * of the geometry with one image a block), then cols [K, ld], then the
 * weight gradient's lane sums [Og, K] of 8 floats. NULL without memory. */
static float *conv_small_scratch(const conv_geom *g, conv_geom *one, conv_tab *tb, float **cols) {
  *one = *g;
  one->nb = 1, one->pt = g->P;
  int64_t before = conv_round16(conv_scratch_floats(one)), ld = conv_small_ld(g);
  int64_t n = before + g->K * ld + 8 * g->Og * g->K;
  float *s = aligned_alloc(64, (size_t)conv_round16(n) * sizeof(float));
  if (!s) {
    kcpu_host->log(1, "cpu: conv2d: no memory for %lld floats of cols; using direct loops",
                   (long long)n);
    return NULL;
  }
  *tb = conv_tab_of(one, s);
  conv_tab_taps(one, tb);
  tb->key[0] = -1;
  conv_tab_pixels(one, tb, 1, 0, g->P);
  *cols = s + before;
  return s;
}

/* Work items [begin, end) of the small-K forward pass: item i is outputs
 * [b*ob, (b+1)*ob) of group grp of image n, i = (n*G + grp)*nob + b. An
 * item's results do not depend on how the items are split. */
static void conv_small_forward_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  const conv_geom *g = &j->g;
  int64_t nob = (g->Og + j->ob - 1) / j->ob, HW = g->H * g->W, ld = conv_small_ld(g), have = -1;
  conv_geom one;
  conv_tab tb;
  float *cols = NULL;
  float *s = conv_small_scratch(g, &one, &tb, &cols);
  int fused = conv_fused();
  for (int64_t i = begin; i < end; i++) {
    int64_t ng = i / nob, n = ng / g->G, grp = ng % g->G;
    int64_t o0 = grp * g->Og + i % nob * j->ob, o1 = o0 + j->ob;
    if (o1 > (grp + 1) * g->Og) o1 = (grp + 1) * g->Og;
    if (!s) {
      for (int64_t o = o0; o < o1; o++)
        conv_forward_direct_plane(g, j->a, j->b, j->bias, j->out, n, o);
    } else {
      if (ng != have) conv_small_gather(g, &tb, j->a + (n * g->C + grp * g->Cg) * HW, cols, ld);
      have = ng;
      const float *w = j->b + o0 * g->K, *bias = j->bias ? j->bias + o0 : NULL;
      float *y = j->out + (n * g->O + o0) * g->P;
      if (fused) conv_small_forward_fused(cols, ld, g->K, g->P, w, bias, y, o1 - o0);
      else conv_small_forward_plain(cols, ld, g->K, g->P, w, bias, y, o1 - o0);
    }
    kcpu_node_done(j->node, (n * g->O + o0) * g->P, (n * g->O + o1) * g->P);
  }
  free(s);
}

/* acc [O, K] = the weight gradient of images [n0, n1) by the small-K path
 * (direct loops without memory). */
static void conv_small_weight_images(const conv_job *j, float *acc, int64_t n0, int64_t n1) {
  const conv_geom *g = &j->g;
  int64_t HW = g->H * g->W, ld = conv_small_ld(g);
  conv_geom one;
  conv_tab tb;
  float *cols = NULL;
  float *s = conv_small_scratch(g, &one, &tb, &cols);
  if (!s) {
    for (int64_t o = 0; o < g->O; o++)
      conv_backward_weight_direct_row(g, j->b, j->a, acc + o * g->K, o, n0, n1);
    return;
  }
  int fused = conv_fused();
  conv_v8 *part = (conv_v8 *)(cols + g->K * ld);
  memset(acc, 0, (size_t)(g->O * g->K) * sizeof(float));
  for (int64_t n = n0; n < n1; n++) {
    for (int64_t grp = 0; grp < g->G; grp++) {
      conv_small_gather(g, &tb, j->a + (n * g->C + grp * g->Cg) * HW, cols, ld);
      const float *dy = j->b + (n * g->O + grp * g->Og) * g->P;
      float *accg = acc + grp * g->Og * g->K;
      if (fused) conv_small_weight_fused(cols, ld, g->K, g->P, dy, accg, g->Og, part);
      else conv_small_weight_plain(cols, ld, g->K, g->P, dy, accg, g->Og, part);
    }
  }
  free(s);
}


static void conv_forward_direct_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  for (int64_t i = begin; i < end; i++) {
    conv_forward_direct_plane(&j->g, j->a, j->b, j->bias, j->out, i / j->g.O, i % j->g.O);
    kcpu_node_done(j->node, i * j->g.P, (i + 1) * j->g.P);
  }
}

static void conv_forward_images_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  int failed;
  float *scratch = conv_scratch(&j->g, &failed);
  if (failed) {
    conv_forward_direct_range(arg, begin * j->g.O, end * j->g.O);
    return;
  }
  conv_blocks(j, NULL, NULL, begin, end, conv_forward_block, scratch);
  free(scratch);
}

/* x = in[0] [N, C, H, W], w = in[1] [O, C/G, KH, KW], bias = in[2] [O]
 * (optional); y = out [N, O, OH, OW] = conv2d(x, w) + bias. */
void kcpu_conv2d(kcpu_pool *pool, const kcpu_node *n) {
  conv_job j = {0};
  conv_geom_init(&j.g, n, n->in[0].shape, n->in[1].shape, n->out.shape);
  j.a = n->in[0].data;
  j.b = n->in[1].data;
  j.bias = n->n_inputs > 2 ? n->in[2].data : NULL;
  j.out = n->out.data;
  j.node = n;
  const conv_geom *g = &j.g;

  if (g->direct) {
    conv_parallel(pool, g->N * g->O, 1, conv_forward_direct_range, &j);
    return;
  }
  if (g->small) {
    /* Whole groups of an image per item while there are a few items per
     * thread; else blocks of whole register tiles. */
    int64_t ng = g->N * g->G, want = 4 * (int64_t)conv_threads(pool);
    int64_t split = ng >= want ? 1 : (want + ng - 1) / ng;
    j.ob = (g->Og + split - 1) / split;
    j.ob = (j.ob + CONV_SMALL_OT - 1) / CONV_SMALL_OT * CONV_SMALL_OT;
    conv_parallel(pool, ng * ((g->Og + j.ob - 1) / j.ob), 1, conv_small_forward_range, &j);
    return;
  }
  /* The bias is fused where every block packs cols (not pointwise ones)
   * and K + 1 is one K block of the GEMM, so the bits stay the same. */
  int fuse = j.bias && !(g->pointwise && g->nb == 1) && kcpu_sgemm_k_block(g->K + 1) == g->K + 1;
  float *wp = conv_pack_weights(pool, g, j.b, fuse ? j.bias : NULL, 0, &j.wp_group);
  if (!wp && fuse) wp = conv_pack_weights(pool, g, j.b, NULL, 0, &j.wp_group);
  else if (wp && fuse) j.kb = g->K + 1;
  if (!j.kb) j.kb = g->K;
  j.wp = wp;
  if (g->N >= conv_threads(pool)) {
    conv_parallel(pool, g->N, g->nb, conv_forward_images_range, &j);
  } else {
    int failed;
    float *scratch = conv_scratch(g, &failed);
    if (failed) conv_parallel(pool, g->N * g->O, 1, conv_forward_direct_range, &j);
    else conv_blocks(&j, pool, NULL, 0, g->N, conv_forward_block, scratch);
    free(scratch);
  }
  free(wp);
}

static void conv_backward_input_direct_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  for (int64_t i = begin; i < end; i++)
    conv_backward_input_direct_plane(&j->g, j->a, j->b, j->out, i / j->g.C, i % j->g.C);
}

static void conv_backward_input_images_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  int failed;
  float *scratch = conv_scratch(&j->g, &failed);
  if (failed) {
    conv_backward_input_direct_range(arg, begin * j->g.C, end * j->g.C);
    return;
  }
  conv_blocks(j, NULL, NULL, begin, end, conv_backward_input_block, scratch);
  free(scratch);
}

/* dy = in[0] [N, O, OH, OW], w = in[1] [O, C/G, KH, KW]; dx = out [N, C, H, W]
 * with dx[n, c, ih, iw] = sum of w[o, c%Cg, kh, kw] * dy[n, o, oh, ow] over the
 * group's o and every (oh, ow, kh, kw) whose window tap lands on (ih, iw). */
void kcpu_conv2d_backward_input(kcpu_pool *pool, const kcpu_node *n) {
  conv_job j = {0};
  conv_geom_init(&j.g, n, n->out.shape, n->in[1].shape, n->in[0].shape);
  j.a = n->in[0].data;
  j.b = n->in[1].data;
  j.out = n->out.data;
  j.node = n;
  const conv_geom *g = &j.g;

  if (g->direct) {
    conv_parallel(pool, g->N * g->C, 1, conv_backward_input_direct_range, &j);
    return;
  }
  float *wp = conv_pack_weights(pool, g, j.b, NULL, 1, &j.wp_group);
  j.wp = wp;
  if (g->N >= conv_threads(pool)) {
    conv_parallel(pool, g->N, g->nb, conv_backward_input_images_range, &j);
  } else {
    int failed;
    float *scratch = conv_scratch(g, &failed);
    if (failed) conv_parallel(pool, g->N * g->C, 1, conv_backward_input_direct_range, &j);
    else conv_blocks(&j, pool, NULL, 0, g->N, conv_backward_input_block, scratch);
    free(scratch);
  }
  free(wp);
}

/* Rows o of dw (= out) over the whole batch, by direct loops. */
static void conv_backward_weight_direct_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  for (int64_t o = begin; o < end; o++)
    conv_backward_weight_direct_row(&j->g, j->b, j->a, j->out + o * j->g.K, o, 0, j->g.N);
}

/* Chunk c of the batch into its partial sum out + c*O*K. */
static void conv_backward_weight_chunks_range(void *arg, int64_t begin, int64_t end) {
  const conv_job *j = arg;
  const conv_geom *g = &j->g;
  if (g->small_dw) {
    for (int64_t c = begin; c < end; c++)
      conv_small_weight_images(j, j->out + c * g->O * g->K, c * g->N / j->n_chunks,
                               (c + 1) * g->N / j->n_chunks);
    return;
  }
  int failed;
  float *scratch = conv_scratch(g, &failed);
  for (int64_t c = begin; c < end; c++) {
    int64_t n0 = c * g->N / j->n_chunks, n1 = (c + 1) * g->N / j->n_chunks;
    float *acc = j->out + c * g->O * g->K;
    if (failed) {
      for (int64_t o = 0; o < g->O; o++)
        conv_backward_weight_direct_row(g, j->b, j->a, acc + o * g->K, o, n0, n1);
      continue;
    }
    memset(acc, 0, (size_t)(g->O * g->K) * sizeof(float));
    conv_blocks(j, NULL, acc, n0, n1, conv_backward_weight_block, scratch);
  }
  free(scratch);
}

typedef struct conv_reduce_job {
  float *dst;
  const float *parts;
  int64_t n_parts, stride;
} conv_reduce_job;

/* dst[i] = parts[0][i] + parts[1][i] + ... in part order. */
static void conv_reduce_range(void *arg, int64_t begin, int64_t end) {
  const conv_reduce_job *r = arg;
  for (int64_t i = begin; i < end; i++) {
    float s = r->parts[i];
    for (int64_t c = 1; c < r->n_parts; c++) s += r->parts[c * r->stride + i];
    r->dst[i] = s;
  }
}

/* dy = in[0] [N, O, OH, OW], x = in[1] [N, C, H, W]; dw = out [O, C/G, KH, KW]
 * with dw[o, c, kh, kw] = sum over n, oh, ow of dy[n, o, oh, ow] *
 * x[n, g*Cg + c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] (zero in the padding). */
void kcpu_conv2d_backward_weight(kcpu_pool *pool, const kcpu_node *n) {
  conv_job j = {0};
  conv_geom_init(&j.g, n, n->in[1].shape, n->out.shape, n->in[0].shape);
  j.a = n->in[1].data;
  j.b = n->in[0].data;
  float *dw = n->out.data;
  const conv_geom *g = &j.g;
  int64_t OK = g->O * g->K;
  float *parts = NULL;

  j.out = dw;
  if (g->direct) goto direct;

  /* A few chunks per thread, so a thread that the OS delays does not hold
   * up the others for long. */
  int64_t n_chunks = conv_threads(pool) > 1 ? CONV_CHUNKS_PER_THREAD * conv_threads(pool) : 1;
  /* The small-K path's chunks are fixed by the batch alone, so its dw does
   * not depend on the thread count either. */
  if (g->small_dw) n_chunks = (g->N + CONV_SMALL_DW_IMAGES - 1) / CONV_SMALL_DW_IMAGES;
  if (n_chunks > g->N) n_chunks = g->N;
  int64_t fit = CONV_PARTIALS_BYTES / ((int64_t)sizeof(float) * OK);
  if (n_chunks > fit) n_chunks = fit;
  if (n_chunks <= 1) {
    /* One chunk: accumulate straight into dw, GEMMs on the whole pool. */
    if (g->small_dw) {
      conv_small_weight_images(&j, dw, 0, g->N);
      return;
    }
    int failed;
    float *scratch = conv_scratch(g, &failed);
    if (failed) goto direct;
    memset(dw, 0, (size_t)OK * sizeof(float));
    conv_blocks(&j, pool, dw, 0, g->N, conv_backward_weight_block, scratch);
    free(scratch);
    return;
  }
  parts = malloc((size_t)(n_chunks * OK) * sizeof(float));
  if (!parts) {
    kcpu_host->log(1, "cpu: conv2d_backward_weight: no memory for %lld partial sums; using direct loops",
                   (long long)n_chunks);
    goto direct;
  }
  j.out = parts;
  j.n_chunks = n_chunks;
  conv_parallel(pool, n_chunks, 1, conv_backward_weight_chunks_range, &j);
  conv_reduce_job r = {.dst = dw, .parts = parts, .n_parts = n_chunks, .stride = OK};
  conv_parallel(pool, OK, 4096, conv_reduce_range, &r);
  free(parts);
  return;

direct:
  conv_parallel(pool, g->O, 1, conv_backward_weight_direct_range, &j);
}

/* ---- validation ---------------------------------------------------------- */

static const char *conv_op_name(uint32_t op) {
  switch (op) {
    case KILN_OP_CONV2D: return "conv2d";
    case KILN_OP_CONV2D_BACKWARD_INPUT: return "conv2d_backward_input";
    case KILN_OP_CONV2D_BACKWARD_WEIGHT: return "conv2d_backward_weight";
    default: return "conv2d(?)";
  }
}

static const char *conv_dtype_name(uint32_t dt) {
  switch (dt) {
    case KILN_F32: return "f32";
    case KILN_F16: return "f16";
    case KILN_BF16: return "bf16";
    case KILN_I32: return "i32";
    case KILN_U8: return "u8";
    default: return "unknown";
  }
}

/* "[64, 1, 28, 28]" into buf. */
static const char *conv_shape_str(const kcpu_tensor *t, char *buf, size_t cap) {
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

kiln_status kcpu_conv2d_validate(const kcpu_node *n) {
  const char *op = conv_op_name(n->op);
  char s0[128], s1[128], s2[128];
  int fwd = n->op == KILN_OP_CONV2D;

  if (fwd ? (n->n_inputs < 2 || n->n_inputs > 3) : n->n_inputs != 2) {
    kcpu_host->set_error("cpu: %s: expects %s inputs, got %d", op,
                         fwd ? "2 or 3 (x, w[, bias])"
                         : n->op == KILN_OP_CONV2D_BACKWARD_INPUT ? "2 (dy, w)" : "2 (dy, x)",
                         n->n_inputs);
    return KILN_INVALID_ARGUMENT;
  }
  for (int i = 0; i <= n->n_inputs; i++) {
    const kcpu_tensor *t = i < n->n_inputs ? &n->in[i] : &n->out;
    if (t->dtype != KILN_F32) {
      char idx[24];
      snprintf(idx, sizeof idx, "input %d", i);
      kcpu_host->set_error("cpu: %s: %s %s has dtype %s; only f32 is supported", op,
                           i < n->n_inputs ? idx : "the output", conv_shape_str(t, s0, sizeof s0),
                           conv_dtype_name(t->dtype));
      return KILN_DTYPE_MISMATCH;
    }
  }

  /* Name each tensor by its role: x, w and y shapes, whichever are given. */
  const kcpu_tensor *x, *w, *y;
  const char *xn, *wn, *yn;
  if (fwd) {
    x = &n->in[0], w = &n->in[1], y = &n->out, xn = "x", wn = "w", yn = "y";
  } else if (n->op == KILN_OP_CONV2D_BACKWARD_INPUT) {
    x = &n->out, w = &n->in[1], y = &n->in[0], xn = "dx", wn = "w", yn = "dy";
  } else {
    x = &n->in[1], w = &n->out, y = &n->in[0], xn = "x", wn = "dw", yn = "dy";
  }
  const kcpu_tensor *ranked[3] = {x, w, y};
  const char *names[3] = {xn, wn, yn};
  for (int i = 0; i < 3; i++) {
    const kcpu_tensor *t = ranked[i];
    if (t->ndim != 4) {
      kcpu_host->set_error("cpu: %s: %s %s has rank %d; expected rank 4 (%s)", op, names[i],
                           conv_shape_str(t, s0, sizeof s0), t->ndim,
                           i == 0 ? "N, C, H, W" : i == 1 ? "O, C/groups, KH, KW" : "N, O, OH, OW");
      return KILN_SHAPE_MISMATCH;
    }
    for (int d = 0; d < 4; d++) {
      if (t->shape[d] < 1) {
        kcpu_host->set_error("cpu: %s: %s %s has an empty dimension %d", op, names[i],
                             conv_shape_str(t, s0, sizeof s0), d);
        return KILN_SHAPE_MISMATCH;
      }
    }
  }

  const int64_t *ip = n->ip;
  if (ip[0] < 1 || ip[1] < 1 || ip[2] < 0 || ip[3] < 0 || ip[4] < 1 || ip[5] < 1 || ip[6] < 1) {
    kcpu_host->set_error("cpu: %s: bad parameters stride [%lld, %lld], padding [%lld, %lld], "
                         "dilation [%lld, %lld], groups %lld: stride, dilation and groups must be "
                         ">= 1 and padding >= 0",
                         op, (long long)ip[0], (long long)ip[1], (long long)ip[2], (long long)ip[3],
                         (long long)ip[4], (long long)ip[5], (long long)ip[6]);
    return KILN_INVALID_ARGUMENT;
  }
  int64_t G = ip[6];
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t O = w->shape[0], KH = w->shape[2], KW = w->shape[3];
  conv_shape_str(x, s0, sizeof s0);
  conv_shape_str(w, s1, sizeof s1);
  if (C % G != 0) {
    kcpu_host->set_error("cpu: %s: %s %s has %lld channels, not divisible by groups %lld", op, xn,
                         s0, (long long)C, (long long)G);
    return KILN_SHAPE_MISMATCH;
  }
  if (O % G != 0) {
    kcpu_host->set_error("cpu: %s: %s %s has %lld output channels, not divisible by groups %lld", op,
                         wn, s1, (long long)O, (long long)G);
    return KILN_SHAPE_MISMATCH;
  }
  if (w->shape[1] != C / G) {
    kcpu_host->set_error("cpu: %s: %s %s and %s %s: %s expects %lld input channels per group, "
                         "%s has %lld (groups %lld)",
                         op, xn, s0, wn, s1, wn, (long long)w->shape[1], xn, (long long)(C / G),
                         (long long)G);
    return KILN_SHAPE_MISMATCH;
  }
  if (fwd && n->n_inputs == 3 &&
      (n->in[2].ndim != 1 || n->in[2].shape[0] != O)) {
    kcpu_host->set_error("cpu: %s: bias %s does not match w %s: expected [%lld]", op,
                         conv_shape_str(&n->in[2], s2, sizeof s2), s1, (long long)O);
    return KILN_SHAPE_MISMATCH;
  }
  int64_t ekh = ip[4] * (KH - 1) + 1, ekw = ip[5] * (KW - 1) + 1;
  if (H + 2 * ip[2] < ekh || W + 2 * ip[3] < ekw) {
    kcpu_host->set_error("cpu: %s: %s %s padded by [%lld, %lld] is %lldx%lld, smaller than the "
                         "kernel of %s %s, %lldx%lld with dilation [%lld, %lld]",
                         op, xn, s0, (long long)ip[2], (long long)ip[3],
                         (long long)(H + 2 * ip[2]), (long long)(W + 2 * ip[3]), wn, s1,
                         (long long)ekh, (long long)ekw, (long long)ip[4], (long long)ip[5]);
    return KILN_SHAPE_MISMATCH;
  }
  int64_t OH = (H + 2 * ip[2] - ekh) / ip[0] + 1, OW = (W + 2 * ip[3] - ekw) / ip[1] + 1;
  if (y->shape[0] != N || y->shape[1] != O || y->shape[2] != OH || y->shape[3] != OW) {
    kcpu_host->set_error("cpu: %s: %s is %s, expected [%lld, %lld, %lld, %lld] for %s %s and %s %s "
                         "(stride [%lld, %lld], padding [%lld, %lld], dilation [%lld, %lld])",
                         op, yn, conv_shape_str(y, s2, sizeof s2), (long long)N, (long long)O,
                         (long long)OH, (long long)OW, xn, s0, wn, s1, (long long)ip[0],
                         (long long)ip[1], (long long)ip[2], (long long)ip[3], (long long)ip[4],
                         (long long)ip[5]);
    return KILN_SHAPE_MISMATCH;
  }
  return KILN_OK;
}
