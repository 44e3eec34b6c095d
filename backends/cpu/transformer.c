/*
 * transformer.c - the transformer ops (kiln/ops.h numbers 100..). N is the
 * number of rows (the product of all axes but the last), C the last axis:
 *
 *   layernorm          x [N, C], gamma [C], beta [C] -> y [N, C]:
 *                      y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps)
 *   layernorm_backward dy [N, C], x, gamma -> dx [N, C]: with g = dy * gamma,
 *                      dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
 *   .._backward_params dy [N, C], x -> [2, C]: sums over rows of dy * xhat, of dy
 *   gelu(_backward)    elementwise, exact (erf) or tanh form
 *   attention          qkv [B, T, 3C] -> y [B, T, C], H heads of D = C / H
 *   attention_backward dy [B, T, C], qkv, y -> dqkv [B, T, 3C]
 *   lr_schedule        step [] -> lr [] (warmup, then cosine decay)
 *
 * Attention is computed flash-attention style: a work item is one (batch,
 * head, tile of ATT_BQ queries); it walks the keys in tiles of ATT_BK with
 * an online softmax (a running max m and sum l per query row, the output
 * rows rescaled when m grows), accumulating straight into y. Causal tiles
 * past the diagonal are never visited. A tile's scores are a small product
 * against a transposed copy of the key tile (ATT_DC head dimensions at a
 * time), each score row held in registers (tile_dots); P V and the other
 * products keep blocks of their output rows in registers (pv_accum). No
 * [T, T] matrix exists anywhere: the kernels use fixed stack buffers of
 * ATT_BQ x ATT_BK and ATT_DC x ATT_BK floats per thread, and no heap.
 *
 * The backward pass runs in three parallel passes, each writing disjoint
 * parts of dqkv, so threads never race:
 *   A (query tiles): each row's logsumexp L_i = m_i + log l_i, recomputed
 *     from q and k, parked in the first dq column of the row's head (that
 *     slot is dq's own, and dq is only written in pass C);
 *   B (key tiles):   dv_j = sum_i P_ij dy_i, dk_j = scale sum_i dS_ij q_i,
 *     P_ij = exp(scale q_i.k_j - L_i), dS_ij = P_ij (dy_i.v_j - D_i),
 *     D_i = dy_i.y_i (recomputed, D floats), over blocks of ATT_BQ queries;
 *   C (query tiles): read the tile's L_i, then dq_i = scale sum_j dS_ij k_j.
 * Every output element is written by one item in a fixed order, so results
 * do not depend on the pool or its size.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu-impl.h"
#include "vmath.h"

#define TF_GRAIN 16384  /* elements per chunk of the elementwise ops */
#define ATT_BQ 32       /* queries per attention work item */
#define ATT_BK 64       /* keys per tile */
#define ATT_DC 64       /* head dimensions packed at once */
#define LN_CHUNK 256    /* rows per partial sum of layernorm_backward_params */

/* The attention kernels are bodies (TF_INLINE) compiled twice: for AVX2 +
 * FMA (TF_AVX2), used when kcpu_isa_active is avx2 or avx512, and for the
 * baseline ISA (scalar, and NEON on aarch64); TF_DISPATCH writes both and
 * the function that picks one. */
#if defined(__x86_64__)
#define TF_AVX2 __attribute__((target("avx2,fma") KCPU_FP_CONTRACT))
#define TF_DISPATCH(name, params, args)                         \
  TF_AVX2 static void name##_avx2 params { name##_body args; }  \
  static void name##_base params { name##_body args; }          \
  static void name params {                                     \
    if (kcpu_isa_x86_simd()) name##_avx2 args;                  \
    else name##_base args;                                      \
  }
#else
#define TF_DISPATCH(name, params, args) \
  static void name params { name##_body args; }
#endif

/* Helpers of the attention kernels are inlined into each variant, so they
 * run with its instruction set. */
#define TF_INLINE static inline __attribute__((always_inline))

/* Eight floats (GCC vector extension: one AVX or two SSE registers). */
typedef float tf_v8 __attribute__((vector_size(32)));

/* By pointer: a 32-byte vector passed by value has two ABIs (AVX or not). */
TF_INLINE float hsum8(const tf_v8 *v) {
  return (((*v)[0] + (*v)[1]) + ((*v)[2] + (*v)[3])) + (((*v)[4] + (*v)[5]) + ((*v)[6] + (*v)[7]));
}

/* sum a[i] * b[i], eight lanes then the tail: a fixed order for each n. */
TF_INLINE float dot(const float *restrict a, const float *restrict b, int64_t n) {
  tf_v8 acc = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    tf_v8 va, vb;
    memcpy(&va, a + i, sizeof va);
    memcpy(&vb, b + i, sizeof vb);
    acc += va * vb;
  }
  float s = hsum8(&acc);
  for (; i < n; i++) s += a[i] * b[i];
  return s;
}

TF_INLINE float vsum(const float *x, int64_t n) {
  tf_v8 acc = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    tf_v8 v;
    memcpy(&v, x + i, sizeof v);
    acc += v;
  }
  float s = hsum8(&acc);
  for (; i < n; i++) s += x[i];
  return s;
}

/* ---- validation ---------------------------------------------------------- */

static int64_t rows_of(const kcpu_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim - 1; i++) n *= t->shape[i];
  return n;
}

static int is_vec(const kcpu_tensor *t, int64_t C) { return t->ndim == 1 && t->shape[0] == C; }

static kiln_status validate_attention(int index, const kcpu_node *n, const kcpu_tensor *qkv) {
  char s0[KCPU_SHAPE_STR], s1[KCPU_SHAPE_STR], s2[KCPU_SHAPE_STR], s3[KCPU_SHAPE_STR];
  if (qkv->ndim != 3 || qkv->shape[2] % 3 != 0)
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "qkv %s must be [B, T, 3C] (rank 3, last axis a multiple of 3)",
                           KCPU_SHAPE(s0, qkv));
  int64_t B = qkv->shape[0], T = qkv->shape[1], C = qkv->shape[2] / 3;
  if (n->ip[0] < 1 || C % n->ip[0] != 0)
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "heads ip[0] = %lld must be >= 1 and divide C = %lld (qkv %s)",
                           (long long)n->ip[0], (long long)C, KCPU_SHAPE(s0, qkv));
  if ((n->ip[1] != 0 && n->ip[1] != 1) || !isfinite(n->fp[0]))
    return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                           "causal ip[1] = %lld must be 0 or 1 and scale fp[0] = %g finite",
                           (long long)n->ip[1], (double)n->fp[0]);
  const kcpu_tensor *y = &n->out;
  int fwd = n->op == KILN_OP_ATTENTION;
  int ok = y->ndim == 3 && y->shape[0] == B && y->shape[1] == T && y->shape[2] == (fwd ? C : 3 * C);
  for (int k = 0; ok && !fwd && k < 3; k += 2)   /* dy and y: [B, T, C] */
    ok = n->in[k].ndim == 3 && n->in[k].shape[0] == B && n->in[k].shape[1] == T && n->in[k].shape[2] == C;
  if (!ok) {
    if (fwd)
      return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "qkv %s needs an output [B, T, C], got %s",
                             KCPU_SHAPE(s0, qkv), KCPU_SHAPE(s1, y));
    return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                           "qkv %s needs dy and y [B, T, C] and an output [B, T, 3C]; got dy %s, y %s, output %s",
                           KCPU_SHAPE(s0, qkv), KCPU_SHAPE(s1, &n->in[0]), KCPU_SHAPE(s2, &n->in[2]),
                           KCPU_SHAPE(s3, y));
  }
  return KILN_OK;
}

kiln_status kcpu_tf_validate(int index, const kcpu_node *n) {
  char s0[KCPU_SHAPE_STR], s1[KCPU_SHAPE_STR], s2[KCPU_SHAPE_STR];
  const kcpu_tensor *a = &n->in[0], *b = &n->in[1], *y = &n->out;
  switch (n->op) {
    case KILN_OP_LAYERNORM: case KILN_OP_LAYERNORM_BACKWARD: case KILN_OP_LAYERNORM_BACKWARD_PARAMS: {
      const kcpu_tensor *x = n->op == KILN_OP_LAYERNORM ? a : b;
      if (x->ndim < 1)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "x %s needs rank >= 1", KCPU_SHAPE(s0, x));
      int64_t C = x->shape[x->ndim - 1];
      if (n->op != KILN_OP_LAYERNORM && !kcpu_same_shape(a, b))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "dy %s and x %s must have one shape",
                               KCPU_SHAPE(s0, a), KCPU_SHAPE(s1, b));
      if (n->op == KILN_OP_LAYERNORM && (!is_vec(b, C) || !is_vec(&n->in[2], C)))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "gamma %s and beta %s must be [%lld] for x %s",
                               KCPU_SHAPE(s0, b), KCPU_SHAPE(s1, &n->in[2]), (long long)C, KCPU_SHAPE(s2, x));
      if (n->op == KILN_OP_LAYERNORM_BACKWARD && !is_vec(&n->in[2], C))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "gamma %s must be [%lld] for x %s",
                               KCPU_SHAPE(s0, &n->in[2]), (long long)C, KCPU_SHAPE(s1, x));
      int ok = n->op == KILN_OP_LAYERNORM_BACKWARD_PARAMS
                   ? y->ndim == 2 && y->shape[0] == 2 && y->shape[1] == C
                   : kcpu_same_shape(x, y);
      if (!ok)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "output %s does not fit x %s (need %s)",
                               KCPU_SHAPE(s0, y), KCPU_SHAPE(s1, x),
                               n->op == KILN_OP_LAYERNORM_BACKWARD_PARAMS ? "[2, C]" : "x's shape");
      if (!(n->fp[0] > 0.0f) || isinf(n->fp[0]))
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "eps fp[0] = %g must be finite and > 0",
                               (double)n->fp[0]);
      return KILN_OK;
    }
    case KILN_OP_GELU: case KILN_OP_GELU_BACKWARD:
      if (!kcpu_same_shape(a, y) || (n->op == KILN_OP_GELU_BACKWARD && !kcpu_same_shape(a, b)))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "inputs %s%s%s and output %s must have one shape",
                               KCPU_SHAPE(s0, a), n->n_inputs > 1 ? ", " : "",
                               n->n_inputs > 1 ? KCPU_SHAPE(s1, b) : "", KCPU_SHAPE(s2, y));
      if (n->ip[0] != 0 && n->ip[0] != 1)
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT, "approximate ip[0] = %lld must be 0 or 1",
                               (long long)n->ip[0]);
      return KILN_OK;
    case KILN_OP_ATTENTION: return validate_attention(index, n, a);
    case KILN_OP_ATTENTION_BACKWARD: return validate_attention(index, n, b);
    case KILN_OP_LR_SCHEDULE:
      if (a->numel != 1 || y->numel != 1)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH, "step %s and output %s must be one element",
                               KCPU_SHAPE(s0, a), KCPU_SHAPE(s1, y));
      if (n->ip[0] < 0 || n->ip[1] < n->ip[0] || !isfinite(n->fp[0]) || !isfinite(n->fp[1]))
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                               "need 0 <= warmup ip[0] (%lld) <= decay ip[1] (%lld) and finite lrs fp[0] %g, fp[1] %g",
                               (long long)n->ip[0], (long long)n->ip[1], (double)n->fp[0], (double)n->fp[1]);
      return KILN_OK;
    default:
      return kcpu_node_error(index, n, KILN_INTERNAL, "not a transformer op");
  }
}

/* ---- layer norm ---------------------------------------------------------- */

typedef struct ln_args {
  const kcpu_node *n;
  int64_t N, C, n_chunks;
  float eps;
  float *partial;            /* [n_chunks, 2, C] for the params' sums */
} ln_args;

/* The layer norm kernels are plain loops compiled twice by
 * KCPU_RANGE_VARIANTS (AVX2 without FMA contraction, and the baseline ISA),
 * which give the same bits; their helpers are inlined into each. */

/* mean and 1 / sqrt(var + eps) of one row (two passes, biased variance). */
KCPU_BODY void row_stats(const float *restrict x, int64_t C, float eps, float *mean, float *rstd) {
  float mu = vsum(x, C) / (float)C;
  tf_v8 acc = {0};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    tf_v8 v;
    memcpy(&v, x + c, sizeof v);
    v -= mu;
    acc += v * v;
  }
  float ss = hsum8(&acc);
  for (; c < C; c++) ss += (x[c] - mu) * (x[c] - mu);
  *mean = mu;
  *rstd = 1.0f / sqrtf(ss / (float)C + eps);
}

KCPU_BODY void layernorm_rows_body(void *arg, int64_t begin, int64_t end) {
  const ln_args *s = arg;
  const float *x = s->n->in[0].data, *gamma = s->n->in[1].data, *beta = s->n->in[2].data;
  float *y = s->n->out.data;
  int64_t C = s->C;
  for (int64_t r = begin; r < end; r++) {
    const float *xr = x + r * C;
    float *yr = y + r * C, mean, rstd;
    row_stats(xr, C, s->eps, &mean, &rstd);
    for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
  }
}

KCPU_RANGE_VARIANTS(layernorm_rows)

KCPU_BODY void layernorm_backward_rows_body(void *arg, int64_t begin, int64_t end) {
  const ln_args *s = arg;
  const float *dy = s->n->in[0].data, *x = s->n->in[1].data, *gamma = s->n->in[2].data;
  float *dx = s->n->out.data;
  int64_t C = s->C;
  for (int64_t r = begin; r < end; r++) {
    const float *xr = x + r * C, *dyr = dy + r * C;
    float *dxr = dx + r * C, mean, rstd;
    row_stats(xr, C, s->eps, &mean, &rstd);
    /* sum g, sum g * xhat: eight lanes then the tail, as dot() (one
     * running sum was a chain of dependent adds, most of the kernel). */
    tf_v8 ag = {0}, agx = {0};
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      tf_v8 vd, vg, vx;
      memcpy(&vd, dyr + c, sizeof vd);
      memcpy(&vg, gamma + c, sizeof vg);
      memcpy(&vx, xr + c, sizeof vx);
      tf_v8 g = vd * vg, xh = (vx - mean) * rstd;
      ag += g;
      agx += g * xh;
    }
    float sg = hsum8(&ag), sgx = hsum8(&agx);
    for (; c < C; c++) {
      float g = dyr[c] * gamma[c], xh = (xr[c] - mean) * rstd;
      sg += g;
      sgx += g * xh;
    }
    float mg = sg / (float)C, mgx = sgx / (float)C;
    for (int64_t c = 0; c < C; c++) {
      float g = dyr[c] * gamma[c], xh = (xr[c] - mean) * rstd;
      dxr[c] = rstd * (g - mg - xh * mgx);
    }
  }
}

KCPU_RANGE_VARIANTS(layernorm_backward_rows)

TF_INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Chunk k's sums [2, C] into partial + k * 2C, rows in order. */
KCPU_BODY void ln_params_chunks_body(void *arg, int64_t begin, int64_t end) {
  const ln_args *s = arg;
  const float *dy = s->n->in[0].data, *x = s->n->in[1].data;
  int64_t C = s->C;
  for (int64_t k = begin; k < end; k++) {
    float *pg = s->partial + k * 2 * C, *pb = pg + C;
    memset(pg, 0, (size_t)(2 * C) * sizeof *pg);
    for (int64_t r = k * LN_CHUNK; r < min64(s->N, (k + 1) * LN_CHUNK); r++) {
      const float *xr = x + r * C, *dyr = dy + r * C;
      float mean, rstd;
      row_stats(xr, C, s->eps, &mean, &rstd);
      for (int64_t c = 0; c < C; c++) {
        pg[c] += dyr[c] * ((xr[c] - mean) * rstd);
        pb[c] += dyr[c];
      }
    }
  }
}

KCPU_RANGE_VARIANTS(ln_params_chunks)

/* out[c] = sum over chunks k in order of partial[k][c], for columns of [2, C]. */
static void ln_params_combine(void *arg, int64_t begin, int64_t end) {
  const ln_args *s = arg;
  float *out = s->n->out.data;
  for (int64_t c = begin; c < end; c++) {
    float v = s->partial[c];
    for (int64_t k = 1; k < s->n_chunks; k++) v += s->partial[k * 2 * s->C + c];
    out[c] = v;
  }
}

/* Without memory for the partial sums: the same sums, one chunk at a time,
 * column by column (so each partial is a register, added in chunk order
 * exactly as ln_params_combine adds them). */
static void ln_params_serial(const ln_args *s) {
  const float *dy = s->n->in[0].data, *x = s->n->in[1].data;
  float *out = s->n->out.data, mean[LN_CHUNK], rstd[LN_CHUNK];
  int64_t C = s->C;
  for (int64_t k = 0; k < s->n_chunks; k++) {
    int64_t r0 = k * LN_CHUNK, nr = min64(s->N - r0, LN_CHUNK);
    for (int64_t r = 0; r < nr; r++) row_stats(x + (r0 + r) * C, C, s->eps, &mean[r], &rstd[r]);
    for (int64_t c = 0; c < C; c++) {
      float pg = 0.0f, pb = 0.0f;
      for (int64_t r = 0; r < nr; r++) {
        float d = dy[(r0 + r) * C + c];
        pg += d * ((x[(r0 + r) * C + c] - mean[r]) * rstd[r]);
        pb += d;
      }
      out[c] = k ? out[c] + pg : pg;
      out[C + c] = k ? out[C + c] + pb : pb;
    }
  }
}

static void layernorm_params(kcpu_pool *pool, ln_args *s) {
  if (s->N == 0) {
    memset(s->n->out.data, 0, (size_t)(2 * s->C) * sizeof(float));
    return;
  }
  s->n_chunks = (s->N + LN_CHUNK - 1) / LN_CHUNK;
  s->partial = kcpu_malloc((size_t)(s->n_chunks * 2 * s->C) * sizeof(float));
  if (!s->partial) {
    ln_params_serial(s);
    return;
  }
  kcpu_parallel_for(pool, s->n_chunks, 1, ln_params_chunks, s);
  kcpu_parallel_for(pool, 2 * s->C, 1024, ln_params_combine, s);
  free(s->partial);
}

/* ---- GELU ---------------------------------------------------------------- */

#define GELU_K 0.7978845608028654f     /* sqrt(2 / pi) */
#define GELU_A 0.044715f

/* One group of up to eight: form and direction are constants at each call
 * site below, so each of the four loops is straight-line code. */
TF_INLINE void gelu8(const float *x, const float *dy, float *y, int64_t m, int tanh_form,
                     int fwd) {
  kv8 v, out;
  kv8_load_n(&v, x, m);
  if (tanh_form) {
    /* As shaders/gelu.comp: with e = exp(-2|u|) and r = 1 / (1 + e),
     * 1 + tanh(u) = 2r (u >= 0) or 2er (u < 0) and 1 - tanh(u)^2 =
     * 4 e r^2, without the cancellation of 1 + t for u << 0. */
    kv8 u = GELU_K * (v + GELU_A * v * v * v);
    kv8 e = -2.0f * (kv8)((kv8i)u & 0x7fffffff);
    kv8_exp(&e);
    kv8 r = 1.0f / (1.0f + e);
    kv8 half_1pt = KV8_SELECT(u < 0.0f, e * r, r);   /* 0.5 (1 + t) */
    if (fwd) {
      out = v * half_1pt;
    } else {
      kv8 g;
      kv8_load_n(&g, dy, m);
      out = g * (half_1pt + 2.0f * v * e * r * r * GELU_K * (1.0f + 3.0f * GELU_A * v * v));
    }
    out = KV8_SELECT(v != v, v, out);
  } else {
    kv8 cdf = v;
    kv8_normal_cdf(&cdf);
    if (fwd) {
      out = v * cdf;
    } else {
      kv8 g, e = -0.5f * v * v;
      kv8_load_n(&g, dy, m);
      kv8_exp(&e);
      out = g * (cdf + v * 0.3989422804014327f * e);
    }
  }
  kv8_store_n(y, &out, m);
}

/* Whole groups two at a time (two independent chains for the core to
 * overlap), then the rest one group at a time. */
#define GELU_LOOP(TANH, FWD)                                                   \
  do {                                                                         \
    int64_t i = begin;                                                         \
    for (; i + 16 <= end; i += 16) {                                           \
      gelu8(x + i, dy + i, y + i, 8, TANH, FWD);                               \
      gelu8(x + i + 8, dy + i + 8, y + i + 8, 8, TANH, FWD);                   \
    }                                                                          \
    for (; i < end; i += 8)                                                    \
      gelu8(x + i, dy + i, y + i, min64(8, end - i), TANH, FWD);               \
  } while (0)

/* Eight elements at a time through vmath.h (glibc's erff, expf and tanhf
 * made GELU a fifth of a GPT training step); the last partial group goes
 * through the same code, so an element's value does not depend on where a
 * thread's chunk starts. The exact form's CDF comes from erfc, as in
 * shaders/gelu.comp. */
TF_INLINE void gelu_items_body(const kcpu_node *n, int64_t begin, int64_t end) {
  const float *x = n->in[n->op == KILN_OP_GELU ? 0 : 1].data, *dy = n->in[0].data;
  float *y = n->out.data;
  int tanh_form = n->ip[0] == 1, fwd = n->op == KILN_OP_GELU;
  if (tanh_form && fwd) GELU_LOOP(1, 1);
  else if (tanh_form) GELU_LOOP(1, 0);
  else if (fwd) GELU_LOOP(0, 1);
  else GELU_LOOP(0, 0);
}
#undef GELU_LOOP

TF_DISPATCH(gelu_items, (const kcpu_node *n, int64_t begin, int64_t end), (n, begin, end))

static void gelu_range(void *arg, int64_t begin, int64_t end) { gelu_items(arg, begin, end); }

/* ---- attention ----------------------------------------------------------- */

typedef struct att_args {
  int64_t B, T, C, H, D, n_qt, n_kt;
  int causal;
  float scale;
  const float *qkv, *dy, *y;
  float *out;                /* y (forward) or dqkv (backward) */
} att_args;

/* Row i of batch b, head h: q, k, v of qkv [B, T, 3C]. */
#define ATT_Q(a, b, i, h) ((a)->qkv + ((b) * (a)->T + (i)) * 3 * (a)->C + (h) * (a)->D)
#define ATT_K(a, b, i, h) (ATT_Q(a, b, i, h) + (a)->C)
#define ATT_V(a, b, i, h) (ATT_Q(a, b, i, h) + 2 * (a)->C)
/* Rows of the [B, T, C] tensors dy and y. */
#define ATT_ROW(a, p, b, i, h) ((p) + ((b) * (a)->T + (i)) * (a)->C + (h) * (a)->D)
/* The first dq column of row i, head h in dqkv [B, T, 3C]. */
#define ATT_DQ(a, b, i, h) ((a)->out + ((b) * (a)->T + (i)) * 3 * (a)->C + (h) * (a)->D)

/* x[j] = exp(mul * x[j] - sub) for j < n, eight at a time (vmath.h). */
TF_INLINE void exp_row(float *x, int64_t n, float mul, float sub) {
  for (int64_t j = 0; j < n; j += 8) {
    int64_t m = min64(8, n - j);
    kv8 v;
    kv8_load_n(&v, x + j, m);
    v = v * mul - sub;
    kv8_exp(&v);
    kv8_store_n(x + j, &v, m);
  }
}

/* Keys of tile [k0, k0 + nk) that query i sees. */
TF_INLINE int64_t visible(const att_args *a, int64_t i, int64_t k0, int64_t nk) {
  return a->causal ? min64(nk, i - k0 + 1) : nk;
}

/* Packs columns [d0, d0 + dc) of nk rows of src (leading dimension ld)
 * transposed: t[d][j] = src[j][d0 + d], zero for nk <= j < ATT_BK. */
TF_INLINE void pack_t(float *restrict t, const float *restrict src, int64_t ld, int64_t d0,
                          int64_t dc, int64_t nk) {
  for (int64_t j = 0; j < nk; j++)
    for (int64_t d = 0; d < dc; d++) t[d * ATT_BK + j] = src[j * ld + d0 + d];
  if (nk < ATT_BK)
    for (int64_t d = 0; d < dc; d++) memset(t + d * ATT_BK + nk, 0, (size_t)(ATT_BK - nk) * sizeof *t);
}

/* s[r][j] (+)= sum over d < dc of a[r][d0 + d] * t[d][j] for rows r < nr of
 * a (leading dimension lda), all ATT_BK columns: a row of s stays in eight
 * vector registers while d streams. The accumulators are named variables,
 * not an array: GCC kept an array on the stack, a load and a store around
 * every FMA. */
_Static_assert(ATT_BK == 64, "tile_dots holds a score row in eight 8-float vectors");
#define TF_LD(p) ({ tf_v8 v_; memcpy(&v_, (p), sizeof v_); v_; })
TF_INLINE void tile_dots(float (*restrict s)[ATT_BK], int64_t nr, const float *restrict a,
                         int64_t lda, int64_t d0, int64_t dc, const float *restrict t, int add) {
  for (int64_t r = 0; r < nr; r++) {
    tf_v8 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0}, c6 = {0}, c7 = {0};
    if (add) {
      c0 = TF_LD(s[r]), c1 = TF_LD(s[r] + 8), c2 = TF_LD(s[r] + 16), c3 = TF_LD(s[r] + 24);
      c4 = TF_LD(s[r] + 32), c5 = TF_LD(s[r] + 40), c6 = TF_LD(s[r] + 48), c7 = TF_LD(s[r] + 56);
    }
    const float *ar = a + r * lda + d0;
    for (int64_t d = 0; d < dc; d++) {
      float x = ar[d];
      tf_v8 bx = {x, x, x, x, x, x, x, x};
      const float *td = t + d * ATT_BK;
      c0 += bx * TF_LD(td), c1 += bx * TF_LD(td + 8), c2 += bx * TF_LD(td + 16);
      c3 += bx * TF_LD(td + 24), c4 += bx * TF_LD(td + 32), c5 += bx * TF_LD(td + 40);
      c6 += bx * TF_LD(td + 48), c7 += bx * TF_LD(td + 56);
    }
    memcpy(s[r], &c0, 32), memcpy(s[r] + 8, &c1, 32), memcpy(s[r] + 16, &c2, 32);
    memcpy(s[r] + 24, &c3, 32), memcpy(s[r] + 32, &c4, 32), memcpy(s[r] + 40, &c5, 32);
    memcpy(s[r] + 48, &c6, 32), memcpy(s[r] + 56, &c7, 32);
  }
}

/* o[d] += sum over j < n of p[j * ps] * v[j * ldv + d], d < D: blocks of
 * o stay in registers (named variables, as in tile_dots) while j streams. */
TF_INLINE void pv_accum(float *restrict o, const float *restrict p, int64_t ps,
                            const float *restrict v, int64_t ldv, int64_t n, int64_t D) {
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    tf_v8 a0 = TF_LD(o + d), a1 = TF_LD(o + d + 8), a2 = TF_LD(o + d + 16), a3 = TF_LD(o + d + 24);
    for (int64_t j = 0; j < n; j++) {
      float x = p[j * ps];
      tf_v8 bx = {x, x, x, x, x, x, x, x};
      const float *vj = v + j * ldv + d;
      a0 += bx * TF_LD(vj), a1 += bx * TF_LD(vj + 8), a2 += bx * TF_LD(vj + 16);
      a3 += bx * TF_LD(vj + 24);
    }
    memcpy(o + d, &a0, 32), memcpy(o + d + 8, &a1, 32), memcpy(o + d + 16, &a2, 32);
    memcpy(o + d + 24, &a3, 32);
  }
  for (; d + 8 <= D; d += 8) {
    tf_v8 acc;
    memcpy(&acc, o + d, sizeof acc);
    for (int64_t j = 0; j < n; j++) {
      float x = p[j * ps];
      tf_v8 bx = {x, x, x, x, x, x, x, x}, vv;
      memcpy(&vv, v + j * ldv + d, sizeof vv);
      acc += bx * vv;
    }
    memcpy(o + d, &acc, sizeof acc);
  }
  for (; d < D; d++) {
    float acc = o[d];
    for (int64_t j = 0; j < n; j++) acc += p[j * ps] * v[j * ldv + d];
    o[d] = acc;
  }
}

/* pv_accum for two outputs against the same v, over the blocks of 32 of D
 * only (d < D32, D32 = D rounded down to 32): o0 with weights p0, o1 with
 * p1 (both ps apart), n rows of v. Each output takes pv_accum's operations
 * for those blocks in the same order, so the same bits; the two share v's
 * loads, and the eight independent accumulators (four in pv_accum) keep
 * both FMA units busy past their latency. */
TF_INLINE void pv_accum2(float *restrict o0, const float *restrict p0, float *restrict o1,
                         const float *restrict p1, int64_t ps, const float *restrict v,
                         int64_t ldv, int64_t n, int64_t D) {
  for (int64_t d = 0; d + 32 <= D; d += 32) {
    tf_v8 a0 = TF_LD(o0 + d), a1 = TF_LD(o0 + d + 8), a2 = TF_LD(o0 + d + 16), a3 = TF_LD(o0 + d + 24);
    tf_v8 b0 = TF_LD(o1 + d), b1 = TF_LD(o1 + d + 8), b2 = TF_LD(o1 + d + 16), b3 = TF_LD(o1 + d + 24);
    for (int64_t j = 0; j < n; j++) {
      float x = p0[j * ps], y = p1[j * ps];
      tf_v8 bx = {x, x, x, x, x, x, x, x}, by = {y, y, y, y, y, y, y, y};
      const float *vj = v + j * ldv + d;
      tf_v8 v0 = TF_LD(vj), v1 = TF_LD(vj + 8), v2 = TF_LD(vj + 16), v3 = TF_LD(vj + 24);
      a0 += bx * v0, a1 += bx * v1, a2 += bx * v2, a3 += bx * v3;
      b0 += by * v0, b1 += by * v1, b2 += by * v2, b3 += by * v3;
    }
    memcpy(o0 + d, &a0, 32), memcpy(o0 + d + 8, &a1, 32), memcpy(o0 + d + 16, &a2, 32);
    memcpy(o0 + d + 24, &a3, 32);
    memcpy(o1 + d, &b0, 32), memcpy(o1 + d + 8, &b1, 32), memcpy(o1 + d + 16, &b2, 32);
    memcpy(o1 + d + 24, &b3, 32);
  }
}

/* Rows r < nr: o(r) += sum over j < n[r] of p[r][j] v_j (pv_accum of each
 * row, p's rows ATT_BK apart, o's ldo apart). The blocks of 32 go two rows
 * at a time over the keys both see, then the rest of the longer row (a
 * split run stores and reloads its accumulators, exactly); the rest of D
 * goes row by row through pv_accum, unsplit (its narrower loops, split
 * over j, did not give the same bits: test attention/fused_backward_*). */
TF_INLINE void pv_rows(float *o, int64_t ldo, float (*p)[ATT_BK], const int64_t *n, int64_t nr,
                       const float *v, int64_t ldv, int64_t D) {
  int64_t D32 = D / 32 * 32;
  for (int64_t r = 0; D32 > 0 && r < nr; r += 2) {
    int64_t n0 = n[r] > 0 ? n[r] : 0, n1 = r + 1 < nr && n[r + 1] > 0 ? n[r + 1] : 0;
    int64_t both = min64(n0, n1);
    float *o0 = o + r * ldo, *o1 = o0 + ldo;
    if (both > 0) pv_accum2(o0, p[r], o1, p[r + 1], 1, v, ldv, both, D32);
    if (n0 > both) pv_accum(o0, p[r] + both, 1, v + both * ldv, ldv, n0 - both, D32);
    if (n1 > both) pv_accum(o1, p[r + 1] + both, 1, v + both * ldv, ldv, n1 - both, D32);
  }
  for (int64_t r = 0; D32 < D && r < nr; r++)
    if (n[r] > 0) pv_accum(o + r * ldo + D32, p[r], 1, v + D32, ldv, n[r], D - D32);
}

/* The dv_j (or dk_j) of the nk keys of a tile: o_j += sum over r < nr of
 * p[r][j] v_r (o's rows ldo apart); the blocks of 32 two keys at a time,
 * the rest of D key by key. */
TF_INLINE void pv_cols(float *o, int64_t ldo, float (*p)[ATT_BK], int64_t nk, int64_t nr,
                       const float *v, int64_t ldv, int64_t D) {
  int64_t D32 = D / 32 * 32, j = 0;
  for (; D32 > 0 && j + 2 <= nk; j += 2)
    pv_accum2(o + j * ldo, &p[0][j], o + (j + 1) * ldo, &p[0][j + 1], ATT_BK, v, ldv, nr, D32);
  for (; D32 > 0 && j < nk; j++) pv_accum(o + j * ldo, &p[0][j], ATT_BK, v, ldv, nr, D32);
  for (j = 0; D32 < D && j < nk; j++)
    pv_accum(o + j * ldo + D32, &p[0][j], ATT_BK, v + D32, ldv, nr, D - D32);
}

/* s[r][j] = q_r . k_j (unscaled) for nr rows of a (leading dimension lda,
 * first row a) against the nk keys of kr (leading dimension 3C), and, if
 * b != NULL, dp[r][j] = b_r . v_j likewise (b's leading dimension ldb).
 * kt and vt are the packing buffers. */
TF_INLINE void scores(const att_args *a, float (*s)[ATT_BK], const float *q, int64_t ldq,
                   float (*dp)[ATT_BK], const float *g, int64_t ldg, const float *k,
                   const float *v, int64_t nr, int64_t nk, float *kt, float *vt) {
  for (int64_t d0 = 0; d0 < a->D; d0 += ATT_DC) {
    int64_t dc = min64(ATT_DC, a->D - d0);
    pack_t(kt, k, 3 * a->C, d0, dc, nk);
    tile_dots(s, nr, q, ldq, d0, dc, kt, d0 > 0);
    if (dp) {
      pack_t(vt, v, 3 * a->C, d0, dc, nk);
      tile_dots(dp, nr, g, ldg, d0, dc, vt, d0 > 0);
    }
  }
}

/* Forward, or pass A of the backward (lse != 0: each row's logsumexp is
 * parked in the first dq column of its head instead of computing y).
 * Items: (b, h, query tile). */
TF_INLINE void att_forward_items_body(const att_args *a, int64_t begin, int64_t end, int lse) {
  float s[ATT_BQ][ATT_BK], kt[ATT_DC * ATT_BK], m[ATT_BQ], l[ATT_BQ];
  int64_t nvis[ATT_BQ], D = a->D, C3 = 3 * a->C;
  for (int64_t it = begin; it < end; it++) {
    int64_t qt = it % a->n_qt, h = (it / a->n_qt) % a->H, b = it / a->n_qt / a->H;
    int64_t i0 = qt * ATT_BQ, nq = min64(ATT_BQ, a->T - i0);
    for (int64_t r = 0; r < nq; r++) {
      m[r] = -INFINITY;
      l[r] = 0.0f;
      if (!lse) memset(ATT_ROW(a, a->out, b, i0 + r, h), 0, (size_t)D * sizeof(float));
    }
    int64_t kend = a->causal ? i0 + nq : a->T;
    for (int64_t k0 = 0; k0 < kend; k0 += ATT_BK) {
      int64_t nk = min64(ATT_BK, kend - k0);
      scores(a, s, ATT_Q(a, b, i0, h), C3, NULL, NULL, 0, ATT_K(a, b, k0, h), NULL, nq, nk, kt, NULL);
      for (int64_t r = 0; r < nq; r++) {
        int64_t nv = nvis[r] = visible(a, i0 + r, k0, nk);
        if (nv <= 0) continue;
        float *row = s[r], mx = m[r], sum = 0.0f;
        for (int64_t j = 0; j < nv; j++) {
          row[j] *= a->scale;
          mx = row[j] > mx ? row[j] : mx;
        }
        float corr = expf(m[r] - mx);
        exp_row(row, nv, 1.0f, mx);
        for (int64_t j = 0; j < nv; j++) sum += row[j];
        l[r] = l[r] * corr + sum;
        m[r] = mx;
        if (lse) continue;
        float *o = ATT_ROW(a, a->out, b, i0 + r, h);
        if (corr != 1.0f)
          for (int64_t d = 0; d < D; d++) o[d] *= corr;
      }
      if (!lse) pv_rows(ATT_ROW(a, a->out, b, i0, h), a->C, s, nvis, nq, ATT_V(a, b, k0, h), C3, D);
    }
    for (int64_t r = 0; r < nq; r++) {
      if (lse) {
        *ATT_DQ(a, b, i0 + r, h) = m[r] + logf(l[r]);
        continue;
      }
      float *o = ATT_ROW(a, a->out, b, i0 + r, h), inv = 1.0f / l[r];
      for (int64_t d = 0; d < D; d++) o[d] *= inv;
    }
  }
}

TF_DISPATCH(att_forward_items, (const att_args *a, int64_t begin, int64_t end, int lse),
            (a, begin, end, lse))

static void att_forward_run(void *arg, int64_t begin, int64_t end) {
  att_forward_items(arg, begin, end, 0);
}
static void att_lse_run(void *arg, int64_t begin, int64_t end) {
  att_forward_items(arg, begin, end, 1);
}

/* Pass B: dk and dv of the keys of (b, h, key tile), over blocks of
 * ATT_BQ queries: P and dS of a block, then dv_j += P^T dy, dk_j += dS^T q. */
TF_INLINE void att_dkdv_items_body(const att_args *a, int64_t begin, int64_t end) {
  float p[ATT_BQ][ATT_BK], ds[ATT_BQ][ATT_BK], kt[ATT_DC * ATT_BK], vt[ATT_DC * ATT_BK];
  int64_t D = a->D, C3 = 3 * a->C;
  for (int64_t it = begin; it < end; it++) {
    int64_t kt_i = it % a->n_kt, h = (it / a->n_kt) % a->H, b = it / a->n_kt / a->H;
    int64_t j0 = kt_i * ATT_BK, nk = min64(ATT_BK, a->T - j0);
    float *dk0 = ATT_DQ(a, b, j0, h) + a->C, *dv0 = dk0 + a->C;   /* dk, dv row j0 */
    for (int64_t j = 0; j < nk; j++) {
      memset(dk0 + j * C3, 0, (size_t)D * sizeof(float));
      memset(dv0 + j * C3, 0, (size_t)D * sizeof(float));
    }
    for (int64_t ib = a->causal ? j0 : 0; ib < a->T; ib += ATT_BQ) {
      int64_t nr = min64(ATT_BQ, a->T - ib);
      scores(a, p, ATT_Q(a, b, ib, h), C3, ds, ATT_ROW(a, a->dy, b, ib, h), a->C, ATT_K(a, b, j0, h),
             ATT_V(a, b, j0, h), nr, nk, kt, vt);
      for (int64_t r = 0; r < nr; r++) {
        int64_t i = ib + r, nv = visible(a, i, j0, nk);
        float L = *ATT_DQ(a, b, i, h);
        float Di = dot(ATT_ROW(a, a->dy, b, i, h), ATT_ROW(a, a->y, b, i, h), D);
        exp_row(p[r], nv, a->scale, L);
        for (int64_t j = 0; j < nv; j++) ds[r][j] = a->scale * p[r][j] * (ds[r][j] - Di);
        for (int64_t j = nv > 0 ? nv : 0; j < nk; j++) p[r][j] = ds[r][j] = 0.0f;
      }
      for (int64_t j = 0; j < nk; j++) {
        pv_accum(dv0 + j * C3, &p[0][j], ATT_BK, ATT_ROW(a, a->dy, b, ib, h), a->C, nr, D);
        pv_accum(dk0 + j * C3, &ds[0][j], ATT_BK, ATT_Q(a, b, ib, h), C3, nr, D);
      }
    }
  }
}

TF_DISPATCH(att_dkdv_items, (const att_args *a, int64_t begin, int64_t end), (a, begin, end))

static void att_dkdv_run(void *arg, int64_t begin, int64_t end) { att_dkdv_items(arg, begin, end); }

/* Pass C: dq of the rows of (b, h, query tile). */
TF_INLINE void att_dq_items_body(const att_args *a, int64_t begin, int64_t end) {
  float s[ATT_BQ][ATT_BK], dp[ATT_BQ][ATT_BK], kt[ATT_DC * ATT_BK], vt[ATT_DC * ATT_BK];
  float L[ATT_BQ], Dr[ATT_BQ];
  int64_t D = a->D, C3 = 3 * a->C;
  for (int64_t it = begin; it < end; it++) {
    int64_t qt = it % a->n_qt, h = (it / a->n_qt) % a->H, b = it / a->n_qt / a->H;
    int64_t i0 = qt * ATT_BQ, nq = min64(ATT_BQ, a->T - i0);
    for (int64_t r = 0; r < nq; r++) {
      float *dq = ATT_DQ(a, b, i0 + r, h);
      L[r] = dq[0];     /* parked by pass A; read before dq is cleared */
      Dr[r] = dot(ATT_ROW(a, a->dy, b, i0 + r, h), ATT_ROW(a, a->y, b, i0 + r, h), D);
      memset(dq, 0, (size_t)D * sizeof(float));
    }
    int64_t kend = a->causal ? i0 + nq : a->T;
    for (int64_t k0 = 0; k0 < kend; k0 += ATT_BK) {
      int64_t nk = min64(ATT_BK, kend - k0);
      scores(a, s, ATT_Q(a, b, i0, h), C3, dp, ATT_ROW(a, a->dy, b, i0, h), a->C, ATT_K(a, b, k0, h),
             ATT_V(a, b, k0, h), nq, nk, kt, vt);
      for (int64_t r = 0; r < nq; r++) {
        int64_t nv = visible(a, i0 + r, k0, nk);
        exp_row(s[r], nv, a->scale, L[r]);
        for (int64_t j = 0; j < nv; j++) s[r][j] = a->scale * s[r][j] * (dp[r][j] - Dr[r]);
        if (nv > 0) pv_accum(ATT_DQ(a, b, i0 + r, h), s[r], 1, ATT_K(a, b, k0, h), C3, nv, D);
      }
    }
  }
}

TF_DISPATCH(att_dq_items, (const att_args *a, int64_t begin, int64_t end), (a, begin, end))

static void att_dq_run(void *arg, int64_t begin, int64_t end) { att_dq_items(arg, begin, end); }

/* Passes A, B and C fused, one (b, h) per item: query tile by query tile,
 * A for the tile, then the scores and dS of each key tile it sees, giving
 * dq (pass C) and dk, dv (pass B) from the same tile: six small products
 * per (query, key) tile instead of eight, and one parallel region instead
 * of three. A query tile that sees one key tile (every tile when T <= 64,
 * a small GPT's block) takes L from that tile's scores: five products. The tiles, the scores' columns (nk
 * keys as pass B), the expressions and each accumulator's order (dq_i
 * over key tiles then keys, dk_j and dv_j over query blocks then rows)
 * are those of the three passes, so the results are the same bits. */
TF_INLINE void att_fused_items_body(const att_args *a, int64_t begin, int64_t end) {
  float p[ATT_BQ][ATT_BK], ds[ATT_BQ][ATT_BK], kt[ATT_DC * ATT_BK], vt[ATT_DC * ATT_BK];
  float L[ATT_BQ], Dr[ATT_BQ], lrow[ATT_BK];
  int64_t nvis[ATT_BQ], D = a->D, C3 = 3 * a->C;
  for (int64_t it = begin; it < end; it++) {
    int64_t h = it % a->H, b = it / a->H;
    for (int64_t j = 0; j < a->T; j++) {
      float *dk = ATT_DQ(a, b, j, h) + a->C;
      memset(dk, 0, (size_t)D * sizeof(float));
      memset(dk + a->C, 0, (size_t)D * sizeof(float));
    }
    for (int64_t qt = 0; qt < a->n_qt; qt++) {
      int64_t i0 = qt * ATT_BQ, nq = min64(ATT_BQ, a->T - i0);
      int64_t kend = a->causal ? i0 + nq : a->T;
      /* One key tile: L comes from this tile's own scores below. */
      int one_tile = kend <= ATT_BK;
      if (!one_tile) att_forward_items_body(a, it * a->n_qt + qt, it * a->n_qt + qt + 1, 1);
      for (int64_t r = 0; r < nq; r++) {
        float *dq = ATT_DQ(a, b, i0 + r, h);
        if (!one_tile) L[r] = dq[0];   /* parked by pass A; read before dq is cleared */
        Dr[r] = dot(ATT_ROW(a, a->dy, b, i0 + r, h), ATT_ROW(a, a->y, b, i0 + r, h), D);
        memset(dq, 0, (size_t)D * sizeof(float));
      }
      for (int64_t k0 = 0; k0 < kend; k0 += ATT_BK) {
        int64_t nk = min64(ATT_BK, a->T - k0);
        float *dk0 = ATT_DQ(a, b, k0, h) + a->C, *dv0 = dk0 + a->C;   /* dk, dv row k0 */
        scores(a, p, ATT_Q(a, b, i0, h), C3, ds, ATT_ROW(a, a->dy, b, i0, h), a->C,
               ATT_K(a, b, k0, h), ATT_V(a, b, k0, h), nq, nk, kt, vt);
        for (int64_t r = 0; one_tile && r < nq; r++) {
          /* pass A's steps for a row that sees one tile, on a copy of its
           * scores (the same products over the same keys): the same L,
           * without computing the scores twice */
          int64_t nv = visible(a, i0 + r, k0, nk);
          float mx = -INFINITY, sum = 0.0f;
          if (nv <= 0) {
            L[r] = mx + logf(0.0f);
            continue;
          }
          for (int64_t j = 0; j < nv; j++) {
            lrow[j] = p[r][j] * a->scale;
            mx = lrow[j] > mx ? lrow[j] : mx;
          }
          float corr = expf(-INFINITY - mx);
          exp_row(lrow, nv, 1.0f, mx);
          for (int64_t j = 0; j < nv; j++) sum += lrow[j];
          L[r] = mx + logf(0.0f * corr + sum);
        }
        for (int64_t r = 0; r < nq; r++) {
          int64_t nv = visible(a, i0 + r, k0, nk);
          exp_row(p[r], nv, a->scale, L[r]);
          for (int64_t j = 0; j < nv; j++) ds[r][j] = a->scale * p[r][j] * (ds[r][j] - Dr[r]);
          for (int64_t j = nv > 0 ? nv : 0; j < nk; j++) p[r][j] = ds[r][j] = 0.0f;
          nvis[r] = nv;
        }
        pv_rows(ATT_DQ(a, b, i0, h), C3, ds, nvis, nq, ATT_K(a, b, k0, h), C3, D);
        pv_cols(dv0, C3, p, nk, nq, ATT_ROW(a, a->dy, b, i0, h), a->C, D);
        pv_cols(dk0, C3, ds, nk, nq, ATT_Q(a, b, i0, h), C3, D);
      }
    }
  }
}

TF_DISPATCH(att_fused_items, (const att_args *a, int64_t begin, int64_t end), (a, begin, end))

static void att_fused_run(void *arg, int64_t begin, int64_t end) { att_fused_items(arg, begin, end); }

static void attention(kcpu_pool *pool, const kcpu_node *n) {
  att_args a;
  memset(&a, 0, sizeof a);
  const kcpu_tensor *qkv = &n->in[n->op == KILN_OP_ATTENTION ? 0 : 1];
  a.B = qkv->shape[0];
  a.T = qkv->shape[1];
  a.C = qkv->shape[2] / 3;
  a.H = n->ip[0];
  a.D = a.C / a.H;
  a.causal = n->ip[1] == 1;
  a.scale = n->fp[0] != 0.0f ? n->fp[0] : 1.0f / sqrtf((float)a.D);
  a.n_qt = (a.T + ATT_BQ - 1) / ATT_BQ;
  a.n_kt = (a.T + ATT_BK - 1) / ATT_BK;
  a.qkv = qkv->data;
  a.out = n->out.data;
  if (n->out.numel == 0) return;
  int64_t n_q = a.B * a.H * a.n_qt, n_k = a.B * a.H * a.n_kt;
  if (n->op == KILN_OP_ATTENTION) {
    kcpu_parallel_for(pool, n_q, 1, att_forward_run, &a);
    return;
  }
  a.dy = n->in[0].data;
  a.y = n->in[2].data;
  /* Enough (b, h) pairs to keep every thread busy: the fused passes (the
   * same bits, fewer products). */
  if (a.B * a.H >= 4 * (int64_t)kcpu_pool_size(pool)) {
    kcpu_parallel_for(pool, a.B * a.H, 1, att_fused_run, &a);
    return;
  }
  kcpu_parallel_for(pool, n_q, 1, att_lse_run, &a);
  kcpu_parallel_for(pool, n_k, 1, att_dkdv_run, &a);
  kcpu_parallel_for(pool, n_q, 1, att_dq_run, &a);
}

/* ---- learning-rate schedule ---------------------------------------------- */

static float lr_schedule(const kcpu_node *n, float step) {
  double lr_max = n->fp[0], lr_min = n->fp[1], i = (double)step - 1.0;
  double W = (double)n->ip[0], S = (double)n->ip[1];
  if (i < W) return (float)(lr_max * (i + 1.0) / (W + 1.0));
  if (i > S) return (float)lr_min;
  double r = S == W ? 0.0 : (i - W) / (S - W);
  return (float)(lr_min + 0.5 * (1.0 + cos(3.14159265358979323846 * r)) * (lr_max - lr_min));
}

/* ---- dispatch ------------------------------------------------------------ */

void kcpu_tf(kcpu_pool *pool, const kcpu_node *n) {
  ln_args s;
  memset(&s, 0, sizeof s);
  s.n = n;
  s.eps = n->fp[0];
  switch (n->op) {
    case KILN_OP_LAYERNORM: case KILN_OP_LAYERNORM_BACKWARD: case KILN_OP_LAYERNORM_BACKWARD_PARAMS: {
      const kcpu_tensor *x = &n->in[n->op == KILN_OP_LAYERNORM ? 0 : 1];
      s.C = x->shape[x->ndim - 1];
      s.N = s.C ? rows_of(x) : 0;
      if (n->op == KILN_OP_LAYERNORM_BACKWARD_PARAMS) {
        layernorm_params(pool, &s);
        break;
      }
      kcpu_range_fn fn = n->op == KILN_OP_LAYERNORM ? layernorm_rows : layernorm_backward_rows;
      kcpu_parallel_for(pool, s.N, TF_GRAIN / (s.C ? s.C : 1) + 1, fn, &s);
      break;
    }
    case KILN_OP_GELU: case KILN_OP_GELU_BACKWARD:
      kcpu_parallel_for(pool, n->out.numel, TF_GRAIN / 4, gelu_range, (void *)n);
      break;
    case KILN_OP_ATTENTION: case KILN_OP_ATTENTION_BACKWARD:
      attention(pool, n);
      break;
    case KILN_OP_LR_SCHEDULE:
      *(float *)n->out.data = lr_schedule(n, *(const float *)n->in[0].data);
      break;
    default: break;
  }
}
