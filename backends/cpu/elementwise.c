/*
 * elementwise.c - binary ops with NumPy broadcasting, unary ops, the
 * backward helpers of unary ops, SCALE, FILL, COPY and CAST.
 *
 *   binary   a [..], b [..] broadcast to y [..]:  y = a (+ - * /) b
 *   unary    x [..] -> y [..] with x's shape
 *   helpers  dy [..], x or y [..] (same shape) -> dx [..]
 *
 * Broadcasting: both inputs get per-dimension strides against the output
 * shape (0 where an input has size 1 or lacks the dimension), adjacent
 * dimensions that are contiguous in all three tensors are merged, and the
 * output is walked as rows of its innermost merged dimension. Inside a row
 * each input has stride 1 or 0, so the common cases (same shape, a scalar,
 * a bias row) become one vectorisable loop. Every element is computed
 * independently, so results never depend on the threads.
 */
#include <math.h>
#include <string.h>

#include "cpu-impl.h"
#include "vmath.h"

/* Elements per parallel chunk for cheap ops. */
#define EW_GRAIN 16384

/* ---- validation ---------------------------------------------------------- */

kiln_status kcpu_elementwise_validate(int index, const kcpu_node *n) {
  char sa[KCPU_SHAPE_STR], sb[KCPU_SHAPE_STR], sy[KCPU_SHAPE_STR], sw[KCPU_SHAPE_STR];
  switch (n->op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV: {
      int nd;
      int64_t shape[KILN_MAX_DIMS];
      const kcpu_tensor *a = &n->in[0], *b = &n->in[1];
      if (kcpu_broadcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape) != 0)
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "a %s and b %s do not broadcast (each pair of right-aligned "
                               "dimensions must be equal or 1)",
                               KCPU_SHAPE(sa, a), KCPU_SHAPE(sb, b));
      kcpu_tensor want = {.ndim = nd};
      memcpy(want.shape, shape, sizeof(int64_t) * (size_t)nd);
      if (!kcpu_same_shape(&want, &n->out))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "a %s and b %s broadcast to %s, but the output is %s",
                               KCPU_SHAPE(sa, a), KCPU_SHAPE(sb, b), KCPU_SHAPE(sw, &want),
                               KCPU_SHAPE(sy, &n->out));
      return KILN_OK;
    }
    case KILN_OP_RELU_BACKWARD: case KILN_OP_TANH_BACKWARD: case KILN_OP_SIGMOID_BACKWARD:
      if (!kcpu_same_shape(&n->in[0], &n->in[1]) || !kcpu_same_shape(&n->in[0], &n->out))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "dy %s, %s %s and output %s must have the same shape",
                               KCPU_SHAPE(sa, &n->in[0]),
                               n->op == KILN_OP_RELU_BACKWARD ? "x" : "y",
                               KCPU_SHAPE(sb, &n->in[1]), KCPU_SHAPE(sy, &n->out));
      return KILN_OK;
    case KILN_OP_FILL:
      return KILN_OK;
    default:   /* unary ops and COPY */
      if (!kcpu_same_shape(&n->in[0], &n->out))
        return kcpu_node_error(index, n, KILN_SHAPE_MISMATCH,
                               "output %s must have the input's shape %s",
                               KCPU_SHAPE(sy, &n->out), KCPU_SHAPE(sa, &n->in[0]));
      if ((n->op == KILN_OP_SCALE || n->op == KILN_OP_CAST) &&
          (!isfinite(n->fp[0]) || !isfinite(n->fp[1])))
        return kcpu_node_error(index, n, KILN_INVALID_ARGUMENT,
                               "fp[0] (scale %g) and fp[1] (shift %g) must be finite",
                               (double)n->fp[0], (double)n->fp[1]);
      return KILN_OK;
  }
}

/* ---- binary ops ---------------------------------------------------------- */

typedef struct bin_plan {
  uint32_t op;
  int nd;                         /* merged rank, >= 1 */
  int64_t shape[KILN_MAX_DIMS];   /* merged output shape */
  int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS];   /* element strides */
  const float *a, *b;
  float *y;
  int64_t nseg, seg;              /* segments per row and their length */
} bin_plan;

/* y[i] = a[i*sa] op b[i*sb] for i < len, sa and sb in {0, 1}. */
KCPU_BODY void bin_row(uint32_t op, int64_t len, const float *restrict a, int64_t sa,
                    const float *restrict b, int64_t sb, float *restrict y) {
#define BIN_LOOPS(EXPR)                                                   \
  if (sa && sb) {                                                         \
    for (int64_t i = 0; i < len; i++) { float x = a[i], z = b[i]; y[i] = EXPR; } \
  } else if (sa) {                                                        \
    const float z = b[0];                                                 \
    for (int64_t i = 0; i < len; i++) { float x = a[i]; y[i] = EXPR; }    \
  } else if (sb) {                                                        \
    const float x = a[0];                                                 \
    for (int64_t i = 0; i < len; i++) { float z = b[i]; y[i] = EXPR; }    \
  } else {                                                                \
    const float x = a[0], z = b[0];                                       \
    for (int64_t i = 0; i < len; i++) y[i] = EXPR;                        \
  }
  switch (op) {
    case KILN_OP_ADD: BIN_LOOPS(x + z) break;
    case KILN_OP_SUB: BIN_LOOPS(x - z) break;
    case KILN_OP_MUL: BIN_LOOPS(x * z) break;
    case KILN_OP_DIV: BIN_LOOPS(x / z) break;
  }
#undef BIN_LOOPS
}

/* Offsets of a and b at the start of output row `row`. */
KCPU_BODY void row_offsets(const bin_plan *p, int64_t row, int64_t *idx, int64_t *oa, int64_t *ob) {
  *oa = *ob = 0;
  for (int d = p->nd - 2; d >= 0; d--) {
    idx[d] = row % p->shape[d];
    row /= p->shape[d];
    *oa += idx[d] * p->sa[d];
    *ob += idx[d] * p->sb[d];
  }
}

/* Work items [t0, t1). With nseg == 1 an item is a row of the merged output
 * (length shape[nd-1]); otherwise long rows are cut into nseg segments of
 * `seg` elements and item t is segment t % nseg of row t / nseg. */
KCPU_BODY void bin_items_body(void *arg, int64_t t0, int64_t t1) {
  const bin_plan *p = arg;
  int nd = p->nd;
  int64_t len = p->shape[nd - 1], la = p->sa[nd - 1], lb = p->sb[nd - 1];
  int64_t idx[KILN_MAX_DIMS] = {0}, oa, ob;
  if (p->nseg > 1) {
    for (int64_t t = t0; t < t1; t++) {
      int64_t row = t / p->nseg, start = (t % p->nseg) * p->seg;
      int64_t l = len - start < p->seg ? len - start : p->seg;
      row_offsets(p, row, idx, &oa, &ob);
      bin_row(p->op, l, p->a + oa + start * la, la, p->b + ob + start * lb, lb,
              p->y + row * len + start);
    }
    return;
  }
  row_offsets(p, t0, idx, &oa, &ob);
  for (int64_t row = t0; row < t1; row++) {
    bin_row(p->op, len, p->a + oa, la, p->b + ob, lb, p->y + row * len);
    for (int d = nd - 2; d >= 0; d--) {   /* odometer */
      idx[d]++;
      oa += p->sa[d];
      ob += p->sb[d];
      if (idx[d] < p->shape[d]) break;
      oa -= idx[d] * p->sa[d];
      ob -= idx[d] * p->sb[d];
      idx[d] = 0;
    }
  }
}
KCPU_RANGE_VARIANTS(bin_items)

/* Strides of input t (right-aligned) against an output of rank nd and
 * shape `shape`; 0 where t broadcasts. */
static void bcast_strides(const kcpu_tensor *t, int nd, const int64_t *shape, int64_t *st) {
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; d--) {
    int td = t->ndim - nd + d;
    int64_t dim = td >= 0 ? t->shape[td] : 1;
    st[d] = (dim == 1 && shape[d] != 1) ? 0 : s;
    if (td >= 0) s *= dim;
  }
}

static void binary(kcpu_pool *pool, const kcpu_node *n) {
  const kcpu_tensor *A = &n->in[0], *B = &n->in[1], *Y = &n->out;
  if (Y->numel == 0) return;
  bin_plan p = {.op = n->op, .a = A->data, .b = B->data, .y = Y->data};
  int64_t sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS];
  bcast_strides(A, Y->ndim, Y->shape, sa);
  bcast_strides(B, Y->ndim, Y->shape, sb);
  /* Merge dimensions, dropping size-1 ones; a dimension joins the previous
   * one when both inputs are contiguous across the seam. */
  p.nd = 0;
  for (int d = 0; d < Y->ndim; d++) {
    if (Y->shape[d] == 1) continue;
    if (p.nd > 0) {
      int k = p.nd - 1;
      if (p.sa[k] == sa[d] * Y->shape[d] && p.sb[k] == sb[d] * Y->shape[d]) {
        p.shape[k] *= Y->shape[d];
        p.sa[k] = sa[d];
        p.sb[k] = sb[d];
        continue;
      }
    }
    p.shape[p.nd] = Y->shape[d];
    p.sa[p.nd] = sa[d];
    p.sb[p.nd] = sb[d];
    p.nd++;
  }
  if (p.nd == 0) {   /* every dimension 1: one element */
    p.nd = 1;
    p.shape[0] = 1;
    p.sa[0] = p.sb[0] = 1;
  }
  int64_t len = p.shape[p.nd - 1];
  int64_t rows = Y->numel / len;
  p.seg = EW_GRAIN;
  p.nseg = len > 2 * EW_GRAIN ? (len + EW_GRAIN - 1) / EW_GRAIN : 1;
  if (p.nseg > 1)
    kcpu_parallel_for(pool, rows * p.nseg, 1, bin_items, &p);
  else
    kcpu_parallel_for(pool, rows, len >= EW_GRAIN ? 1 : EW_GRAIN / len, bin_items, &p);
}

/* ---- tanh and sigmoid, eight at a time ------------------------------------
 * glibc's scalar tanhf (through expm1f) took a quarter of an LSTM training
 * step. These are Cephes' single-precision tanhf and expf (Moshier), in GCC
 * vector extensions so they run as AVX2 (or two SSE) instructions; both are
 * within a few ulp of the exact values over the whole range (checked against
 * double precision by test_cpu_ops). Every element, the last partial group
 * included, goes through the same vector code, so a result does not depend
 * on where a thread's chunk starts. NaN in gives NaN out. */

/* The vector code is in vmath.h, shared with the transformer ops. */
#define EW_INLINE static inline __attribute__((always_inline))
typedef kv8 ew_v8;
#define v8_tanh kv8_tanh
#define v8_sigmoid kv8_sigmoid

/* y[i] = tanh(x[i]) (op TANH) or sigmoid(x[i]) (SIGMOID) for i < n. */
EW_INLINE void tanh_sigmoid_body(uint32_t op, const float *x, float *y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {   /* fixed-size copies: registers, no calls */
    ew_v8 v;
    memcpy(&v, x + i, sizeof v);
    if (op == KILN_OP_TANH) v8_tanh(&v);
    else v8_sigmoid(&v);
    memcpy(y + i, &v, sizeof v);
  }
  if (i < n) {
    ew_v8 v = {0};
    memcpy(&v, x + i, (size_t)(n - i) * sizeof *x);
    if (op == KILN_OP_TANH) v8_tanh(&v);
    else v8_sigmoid(&v);
    memcpy(y + i, &v, (size_t)(n - i) * sizeof *y);
  }
}

/* The body per ISA (kcpu_isa_active): AVX2 + FMA for avx2 and avx512, the
 * baseline (SSE2 on x86-64, NEON on aarch64) otherwise. */
#if defined(__x86_64__)
__attribute__((target("avx2,fma") KCPU_FP_CONTRACT)) static void tanh_sigmoid_avx2(uint32_t op, const float *x,
                                                                  float *y, int64_t n) {
  tanh_sigmoid_body(op, x, y, n);
}
#endif
static void tanh_sigmoid_base(uint32_t op, const float *x, float *y, int64_t n) {
  tanh_sigmoid_body(op, x, y, n);
}

static void tanh_sigmoid(uint32_t op, const float *x, float *y, int64_t n) {
#if defined(__x86_64__)
  if (kcpu_isa_x86_simd()) {
    tanh_sigmoid_avx2(op, x, y, n);
    return;
  }
#endif
  tanh_sigmoid_base(op, x, y, n);
}

/* ---- unary ops ----------------------------------------------------------- */

typedef struct un_plan {
  const kcpu_node *n;
} un_plan;

KCPU_BODY void unary_range_body(void *arg, int64_t i0, int64_t i1) {
  const kcpu_node *n = ((const un_plan *)arg)->n;
  const float *restrict x = n->n_inputs > 0 ? n->in[0].data : NULL;
  const float *restrict x2 = n->n_inputs > 1 ? n->in[1].data : NULL;
  float *restrict y = n->out.data;
  switch (n->op) {
    case KILN_OP_NEG:
      for (int64_t i = i0; i < i1; i++) y[i] = -x[i];
      break;
    case KILN_OP_RELU:
      for (int64_t i = i0; i < i1; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      break;
    case KILN_OP_TANH: case KILN_OP_SIGMOID:
      tanh_sigmoid(n->op, x + i0, y + i0, i1 - i0);
      break;
    case KILN_OP_EXP:
      for (int64_t i = i0; i < i1; i++) y[i] = expf(x[i]);
      break;
    case KILN_OP_LOG:
      for (int64_t i = i0; i < i1; i++) y[i] = logf(x[i]);
      break;
    case KILN_OP_SCALE: {
      const float s = n->fp[0], t = n->fp[1];
      for (int64_t i = i0; i < i1; i++) y[i] = s * x[i] + t;
      break;
    }
    case KILN_OP_RELU_BACKWARD:   /* x = dy, x2 = x */
      for (int64_t i = i0; i < i1; i++) y[i] = x2[i] > 0.0f ? x[i] : 0.0f;
      break;
    case KILN_OP_TANH_BACKWARD:   /* x2 = y */
      for (int64_t i = i0; i < i1; i++) y[i] = x[i] * (1.0f - x2[i] * x2[i]);
      break;
    case KILN_OP_SIGMOID_BACKWARD:
      for (int64_t i = i0; i < i1; i++) y[i] = x[i] * x2[i] * (1.0f - x2[i]);
      break;
    case KILN_OP_COPY:
      if (y != x) memcpy(y + i0, x + i0, (size_t)(i1 - i0) * sizeof *y);
      break;
    case KILN_OP_FILL: {
      const float v = n->fp[0];
      for (int64_t i = i0; i < i1; i++) y[i] = v;
      break;
    }
  }
}
KCPU_RANGE_VARIANTS(unary_range)

int kcpu_elementwise_fusible(uint32_t op) {
  switch (op) {
    case KILN_OP_NEG: case KILN_OP_RELU: case KILN_OP_TANH: case KILN_OP_SIGMOID:
    case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SCALE: case KILN_OP_RELU_BACKWARD:
    case KILN_OP_TANH_BACKWARD: case KILN_OP_SIGMOID_BACKWARD: case KILN_OP_COPY:
      return 1;
    default:
      return 0;
  }
}

void kcpu_elementwise_range(const kcpu_node *e, int64_t i0, int64_t i1) {
  un_plan p = {e};
  unary_range(&p, i0, i1);
}

/* CAST: y = s * (float)x + t, x u8, i32 or f32. */
static inline void cast_range_body(void *arg, int64_t i0, int64_t i1) {
  const kcpu_node *n = arg;
  float *restrict y = n->out.data;
  const float s = n->fp[0], t = n->fp[1];
  switch (n->in[0].dtype) {
    case KILN_U8: {
      const uint8_t *restrict x = n->in[0].data;
      for (int64_t i = i0; i < i1; i++) y[i] = s * (float)x[i] + t;
      break;
    }
    case KILN_I32: {
      const int32_t *restrict x = n->in[0].data;
      for (int64_t i = i0; i < i1; i++) y[i] = s * (float)x[i] + t;
      break;
    }
    default: {
      const float *restrict x = n->in[0].data;
      for (int64_t i = i0; i < i1; i++) y[i] = s * x[i] + t;
      break;
    }
  }
}
KCPU_RANGE_VARIANTS(cast_range)

void kcpu_elementwise(kcpu_pool *pool, const kcpu_node *n) {
  switch (n->op) {
    case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV:
      binary(pool, n);
      return;
    case KILN_OP_CAST:
      kcpu_parallel_for(pool, n->out.numel, EW_GRAIN, cast_range, (void *)n);
      return;
    default: {
      un_plan p = {n};
      int cheap = n->op != KILN_OP_TANH && n->op != KILN_OP_SIGMOID && n->op != KILN_OP_EXP &&
                  n->op != KILN_OP_LOG;
      kcpu_parallel_for(pool, n->out.numel, cheap ? EW_GRAIN : EW_GRAIN / 8, unary_range, &p);
      return;
    }
  }
}
