/*
 * cpu-impl.h - the CPU plugin's private interface between its files.
 *
 *   plugin.c     entry point, device, buffers, graph compile/run, validation
 *   threads.c    the persistent thread pool (KILN_NUM_THREADS)
 *   isa.c        which instruction set the kernels use (KILN_CPU_ISA)
 *   gemm.c       blocked single-precision GEMM used by matmul and conv
 *   elementwise.c, reduce.c, softmax.c, layout.c, matmul.c, optim.c   op families
 *   conv.c       conv2d forward and both backward passes (im2col + GEMM)
 *   pool2d.c     max and average pooling, forward and backward
 *   seq.c        embedding, slice, dropout, clip_coef, assign
 *   transformer.c  layer norm, GELU, fused flash-style attention, lr schedule
 *
 * Names are kcpu_*. Kernels receive resolved tensors (data pointers) and
 * assume the node was validated at compile time: plugin.c checks the op,
 * input count, dtypes and byte ranges, then calls the family's validator
 * (kcpu_*_validate below). Kernels return nothing and must not fail.
 */
#ifndef KCPU_IMPL_H
#define KCPU_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "kiln/plugin.h"

/* The host table given to init(); used for set_error/log. */
extern const kiln_host_api *kcpu_host;

/* Appended to a SIMD variant's target attribute: GCC fuses a * b + c into
 * an FMA only when told (-std=c11 turns contraction off); clang contracts
 * with -ffp-contract=on by default. Scalar variants never fuse. */
#if defined(__clang__)
#define KCPU_FP_CONTRACT
#else
#define KCPU_FP_CONTRACT , optimize("fp-contract=fast")
#endif

/* KCPU_RANGE_VARIANTS(name): the kcpu_range_fn `name`, compiled from the
 * always-inline body name##_body twice on x86-64: for AVX2 (chosen when
 * kcpu_isa_x86_simd(), see isa.c) and for the baseline ISA. For the plain
 * loops of elementwise ops, reductions, pooling and optimizers: GCC
 * vectorizes each variant for its ISA, and without -ffast-math or FMA
 * contraction it neither reorders nor fuses, so both variants give the same
 * bits. Helpers the body calls should be always-inline too. */
#define KCPU_BODY static inline __attribute__((always_inline))
#if defined(__x86_64__)
#define KCPU_RANGE_VARIANTS(name)                                                      \
  __attribute__((target("avx2"))) static void name##_avx2(void *a, int64_t b, int64_t e) { \
    name##_body(a, b, e);                                                              \
  }                                                                                    \
  static void name##_base(void *a, int64_t b, int64_t e) { name##_body(a, b, e); }     \
  static void name(void *a, int64_t b, int64_t e) {                                    \
    if (kcpu_isa_x86_simd()) name##_avx2(a, b, e);                                     \
    else name##_base(a, b, e);                                                         \
  }
#else
#define KCPU_RANGE_VARIANTS(name) \
  static void name(void *a, int64_t b, int64_t e) { name##_body(a, b, e); }
#endif

/* ---- thread pool (threads.c) --------------------------------------------- */

typedef struct kcpu_pool kcpu_pool;
/* Creates a pool with n_threads workers in total (the caller counts as one). */
kcpu_pool *kcpu_pool_create(int n_threads);
void kcpu_pool_destroy(kcpu_pool *pool);
int kcpu_pool_size(const kcpu_pool *pool);
/* Splits [0, n) into contiguous chunks of at least `grain` items and runs
 * fn(arg, begin, end) on them across the pool; returns when all are done.
 * Runs inline when n is small or the pool has one thread. */
typedef void (*kcpu_range_fn)(void *arg, int64_t begin, int64_t end);
void kcpu_parallel_for(kcpu_pool *pool, int64_t n, int64_t grain, kcpu_range_fn fn, void *arg);

/* ---- resolved nodes ------------------------------------------------------ */

typedef struct kcpu_tensor {
  void *data;
  uint32_t dtype;                /* kiln_dtype */
  int ndim;
  int64_t shape[KILN_MAX_DIMS];
  int64_t numel;
} kcpu_tensor;

typedef struct kcpu_node {
  uint32_t op;
  int n_inputs;
  kcpu_tensor in[KILN_OP_MAX_INPUTS];
  kcpu_tensor out;
  int64_t ip[KILN_OP_MAX_IPARAMS];
  float fp[KILN_OP_MAX_FPARAMS];
  /* MATMUL whose B other matmuls of the graph share (plugin.c): B packed
   * once per run into packed_b by the first of them (pack_b = 1), read by
   * the rest. NULL: the matmul packs B itself. */
  float *packed_b;
  int pack_b;
  /* An elementwise node fused into this one (plugin.c, fuse_epilogues;
   * NULL: none): this node's kernel runs it over each range of its output
   * as soon as that range holds its final values, while they are still in
   * cache (kcpu_node_done), and the fused node's own step does nothing. */
  const struct kcpu_node *epi;
  /* MATMUL or SLICE_BACKWARD fused with the ADD after it (plugin.c,
   * fuse_accumulate; NULL: none): the node writes acc_out = its result +
   * acc_in (the GEMM with beta = 1, after copying acc_in there unless they
   * are the same bytes), and its own output is not written. */
  const kcpu_tensor *acc_in, *acc_out;
} kcpu_node;

/* ---- instruction sets (isa.c) --------------------------------------------
 * The kernels with per-ISA variants (the GEMM micro-kernel, tanh/sigmoid,
 * attention) dispatch on kcpu_isa_active, which device_open sets from
 * KILN_CPU_ISA once per device; it never changes while a device is open. */
typedef enum kcpu_isa {
  KCPU_ISA_SCALAR,            /* the reference: baseline ISA, plain loops in GEMM */
  KCPU_ISA_AVX2,              /* x86-64 AVX2 + FMA */
  KCPU_ISA_AVX512,            /* x86-64 AVX-512F (GEMM); AVX2 + FMA elsewhere */
  KCPU_ISA_NEON,              /* aarch64 */
  KCPU_ISA_COUNT_
} kcpu_isa;

extern kcpu_isa kcpu_isa_active;
/* "scalar", "avx2", "avx512", "neon". */
const char *kcpu_isa_name(kcpu_isa isa);
/* 1 if this build, CPU (cpuid) and OS (XCR0) can run isa; else 0 with what
 * is missing in why[size]. */
int kcpu_isa_usable(kcpu_isa isa, char *why, size_t size);
/* Resolves a KILN_CPU_ISA value (NULL, "" or "auto": the best usable) into
 * *out and a note for `kiln info` ("avx2 (auto; avx512f not present)") in
 * msg; an unknown or unusable value returns an error status with the
 * message (naming the variable, value, what is missing, the choices) in msg. */
kiln_status kcpu_isa_choose(const char *env, kcpu_isa *out, char *note, size_t size);
/* device_open / device_close: choose from $KILN_CPU_ISA and hold it (an
 * error if a device already open holds another). */
kiln_status kcpu_isa_acquire(void);
void kcpu_isa_release(void);
/* The x86 kernels outside GEMM have an AVX2 + FMA variant, used by avx2 and
 * avx512. */
static inline int kcpu_isa_x86_simd(void) {
  return kcpu_isa_active == KCPU_ISA_AVX2 || kcpu_isa_active == KCPU_ISA_AVX512;
}

/* ---- GEMM (gemm.c) --------------------------------------------------------
 * C[M, N] = alpha * op(A) @ op(B) + beta * C, row-major, op(X) = X or X^T.
 * A is [M, K] (lda >= K) or, transposed, [K, M] (lda >= M); B likewise.
 * pool == NULL runs single-threaded in the calling thread (for callers that
 * already parallelise, e.g. over a batch, from inside kcpu_parallel_for).
 * With beta == 0, C is not read (NaNs in it do not propagate). Each element
 * of C is computed in a fixed order that depends only on K, so the result
 * does not depend on the pool or its size. */
void kcpu_sgemm(kcpu_pool *pool, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc);
/* The most K that kcpu_sgemm sums in one pass: up to it, C = P + beta * C
 * with the whole product P rounded once, so beta = 1 gives the bits of a
 * GEMM into a fresh C followed by C + acc. */
int64_t kcpu_sgemm_kc(void);

/* B packed whole, for kcpu_sgemm_packed: kcpu_sgemm_packed_b_floats(N, K)
 * floats, filled by kcpu_sgemm_pack_b from op(B) [K, N] (B as for
 * kcpu_sgemm). kcpu_sgemm_packed then computes what kcpu_sgemm would, bit
 * for bit, without packing B again. */
int64_t kcpu_sgemm_packed_b_floats(int64_t N, int64_t K);
void kcpu_sgemm_pack_b(kcpu_pool *pool, int trans_b, int64_t N, int64_t K, const float *B,
                       int64_t ldb, float *Bp);
void kcpu_sgemm_packed(kcpu_pool *pool, int trans_a, int64_t M, int64_t N, int64_t K, float alpha,
                       const float *A, int64_t lda, const float *Bp, float beta, float *C,
                       int64_t ldc);

/* The micro-kernels: P[mr][nr] = Ap [kc, mr] x Bp [kc, nr] (packed slivers,
 * Bp and acc aligned to 64 bytes), then store 0: acc = P (row stride nr);
 * 1: C = P; 2: C += P (C's leading dimension ldc). kcpu_sgemm and the
 * packed-B entry points use the one of kcpu_isa_active. */
typedef void (*kcpu_micro_fn)(int64_t kc, const float *restrict Ap, const float *restrict Bp,
                              float *restrict acc, int store, float *restrict C, int64_t ldc);
typedef struct kcpu_gemm_kernel {
  const char *name;           /* "avx2 6x16" */
  kcpu_isa isa;               /* what the CPU must run (kcpu_isa_usable) */
  int mr, nr;                 /* register tile */
  kcpu_micro_fn micro;
} kcpu_gemm_kernel;
#define KCPU_MR_MAX 12
#define KCPU_NR_MAX 32
/* The kernel of isa in this build (scalar where isa has none). */
const kcpu_gemm_kernel *kcpu_gemm_kernel_of(kcpu_isa isa);
/* The kernel of isa for M rows: its own or another of the same NR that
 * pads M less (avx512 8x32 for M = 32 or 64). The kcpu_sgemm entry points
 * without _with use it, packed A included (same M, same kernel). */
const kcpu_gemm_kernel *kcpu_gemm_kernel_for(kcpu_isa isa, int64_t M);
/* Every kernel of this build, for tests: the four ISAs' and "avx512 tile
 * on avx2" (the AVX-512 tile and code, compiled for AVX2, so machines
 * without AVX-512 test its logic). */
const kcpu_gemm_kernel *kcpu_gemm_kernels(int *count);
/* kcpu_sgemm and the packed-B functions with an explicit kernel; a B
 * packed for one kernel must be used with the same one. */
void kcpu_sgemm_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_a, int trans_b,
                     int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                     const float *B, int64_t ldb, const float *Bpre, float beta, float *C,
                     int64_t ldc);
int64_t kcpu_sgemm_packed_b_floats_with(const kcpu_gemm_kernel *gk, int64_t N, int64_t K);
int64_t kcpu_sgemm_packed_a_floats_with(const kcpu_gemm_kernel *gk, int64_t M, int64_t K);
void kcpu_sgemm_pack_a_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_a, int64_t M,
                            int64_t K, const float *A, int64_t lda, float *Ap);
void kcpu_sgemm_apacked_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int64_t M, int64_t N,
                             int64_t K, float alpha, const float *Ap, int trans_b, const float *B,
                             int64_t ldb, float beta, float *C, int64_t ldc);
void kcpu_sgemm_pack_b_with(const kcpu_gemm_kernel *gk, kcpu_pool *pool, int trans_b, int64_t N,
                            int64_t K, const float *B, int64_t ldb, float *Bp);

/* A packed whole, the mirror of the packed B: kcpu_sgemm_packed_a_floats(M,
 * K) floats, filled by kcpu_sgemm_pack_a from op(A) [M, K] (A as for
 * kcpu_sgemm); kcpu_sgemm_apacked then computes what kcpu_sgemm would, bit
 * for bit, without packing A again (a convolution's weights, once per call
 * instead of once per image). */
int64_t kcpu_sgemm_packed_a_floats(int64_t M, int64_t K);
void kcpu_sgemm_pack_a(kcpu_pool *pool, int trans_a, int64_t M, int64_t K, const float *A,
                       int64_t lda, float *Ap);
void kcpu_sgemm_apacked(kcpu_pool *pool, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *Ap, int trans_b, const float *B, int64_t ldb, float beta,
                        float *C, int64_t ldc);
/* Packing op(B) [K, N] in place of kcpu_sgemm_pack_b (conv.c writes its
 * im2col columns there directly). kcpu_sgemm_nr is the sliver width of the
 * active kernel. Element (k, j) of op(B), j a multiple of nr, lies at Bp +
 * kcpu_sgemm_packed_b_sliver(N, K, k, j, &k_end); elements (k, j + i) for
 * i < nr follow it, and rows k + 1 .. k_end - 1 of the same sliver follow
 * at nr floats apart. Pad columns j >= N of the last sliver must be zero.
 * Bp must be 64-byte aligned, kcpu_sgemm_packed_b_floats(N, K) floats.
 * kcpu_sgemm_abpacked takes both operands packed (A by kcpu_sgemm_pack_a). */
int kcpu_sgemm_nr(void);
/* The depth of the GEMM's K blocks for depth K (K itself when K is one). */
int64_t kcpu_sgemm_k_block(int64_t K);
int64_t kcpu_sgemm_packed_b_sliver(int64_t N, int64_t K, int64_t k, int64_t j, int64_t *k_end);
void kcpu_sgemm_abpacked(kcpu_pool *pool, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *Ap, const float *Bp, float beta, float *C, int64_t ldc);

/* ---- convolution and pooling (conv.c, pool2d.c) --------------------------
 * Shapes and parameters as documented in kiln/ops.h. Validation functions
 * return KILN_OK or set the host error (naming op, shapes, what is wrong)
 * and return a status. */
kiln_status kcpu_conv2d_validate(const kcpu_node *n);
void kcpu_conv2d(kcpu_pool *pool, const kcpu_node *n);
void kcpu_conv2d_backward_input(kcpu_pool *pool, const kcpu_node *n);
void kcpu_conv2d_backward_weight(kcpu_pool *pool, const kcpu_node *n);

kiln_status kcpu_pool2d_validate(const kcpu_node *n);
void kcpu_maxpool2d(kcpu_pool *pool, const kcpu_node *n);
void kcpu_maxpool2d_backward(kcpu_pool *pool, const kcpu_node *n);
void kcpu_avgpool2d(kcpu_pool *pool, const kcpu_node *n);
void kcpu_avgpool2d_backward(kcpu_pool *pool, const kcpu_node *n);

/* ---- additions for the op families (plugin.c and the op files) ----------
 * Every op family validates its own nodes at compile time and runs them.
 * Validators get the node index for messages and return KILN_OK, or set
 * the host error with kcpu_node_error() and return its status. Kernels
 * (kcpu_op_run) assume a validated node. */

/* Sets the host error to "cpu: node <index> (<op name>): <message>" and
 * returns st. */
kiln_status kcpu_node_error(int index, const kcpu_node *n, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Lower-case op name ("matmul"), or "unknown" for a number outside ops.h. */
const char *kcpu_op_name(uint32_t op);
/* Formats shape[ndim] as "[2, 3]" ("[]" for rank 0) into buf; returns buf. */
char *kcpu_shape_str(char *buf, size_t size, int ndim, const int64_t *shape);
/* Shape string of a resolved tensor into buf (sized KCPU_SHAPE_STR). */
#define KCPU_SHAPE_STR 128
#define KCPU_SHAPE(buf, t) kcpu_shape_str((buf), sizeof(buf), (t)->ndim, (t)->shape)

/* Computes the NumPy broadcast of shapes a and b into out (rank max of the
 * two); returns 0, or -1 if some pair of dimensions is incompatible. */
int kcpu_broadcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout,
                         int64_t *out);
/* 1 if tensors have equal rank and dimensions. */
int kcpu_same_shape(const kcpu_tensor *a, const kcpu_tensor *b);

typedef kiln_status (*kcpu_validate_fn)(int index, const kcpu_node *n);
typedef void (*kcpu_run_fn)(kcpu_pool *pool, const kcpu_node *n);

/* elementwise.c: ADD..DIV, NEG..SCALE, *_BACKWARD unary helpers, FILL, COPY, CAST. */
kiln_status kcpu_elementwise_validate(int index, const kcpu_node *n);
void kcpu_elementwise(kcpu_pool *pool, const kcpu_node *n);
/* 1 if op can be fused as an epilogue (kcpu_node.epi): a unary op whose
 * element i reads element i of each input and nothing else. */
int kcpu_elementwise_fusible(uint32_t op);
/* Runs the fusible node e over elements [i0, i1) on the calling thread. */
void kcpu_elementwise_range(const kcpu_node *e, int64_t i0, int64_t i1);

/* Called by kernels that take an epilogue when elements [i0, i1) of n's
 * output are final. */
static inline void kcpu_node_done(const kcpu_node *n, int64_t i0, int64_t i1) {
  if (n->epi) kcpu_elementwise_range(n->epi, i0, i1);
}
/* reduce.c: SUM, MEAN, EXPAND. */
kiln_status kcpu_reduce_validate(int index, const kcpu_node *n);
void kcpu_reduce(kcpu_pool *pool, const kcpu_node *n);
/* softmax.c: SOFTMAX, LOG_SOFTMAX, their backward, CROSS_ENTROPY(_BACKWARD). */
kiln_status kcpu_softmax_validate(int index, const kcpu_node *n);
void kcpu_softmax(kcpu_pool *pool, const kcpu_node *n);
/* layout.c: RESHAPE, TRANSPOSE. */
kiln_status kcpu_layout_validate(int index, const kcpu_node *n);
void kcpu_layout(kcpu_pool *pool, const kcpu_node *n);
/* matmul.c: MATMUL. kcpu_matmul_shares_b: 1 if the node is one GEMM of
 * its whole 2-D B, so that a packed B may be shared with other nodes. */
kiln_status kcpu_matmul_validate(int index, const kcpu_node *n);
void kcpu_matmul(kcpu_pool *pool, const kcpu_node *n);
int kcpu_matmul_shares_b(const kcpu_node *n);
/* optim.c: SGD, ADAM, INCREMENT. */
kiln_status kcpu_optim_validate(int index, const kcpu_node *n);
void kcpu_optim(kcpu_pool *pool, const kcpu_node *n);

/* alloc.c: the plugin's allocations (free with free()). The N-th after init
 * fails once when $KILN_FAULT_ALLOC_CPU=N (tests of out-of-memory paths);
 * kcpu_fault_init() reads it and is called by init(). */
void kcpu_fault_init(void);
void *kcpu_malloc(size_t size);
void *kcpu_calloc(size_t n, size_t size);
/* size is rounded up to a multiple of align (C11's aligned_alloc rule). */
void *kcpu_aligned_alloc(size_t align, size_t size);

/* seq.c: EMBEDDING(_BACKWARD), SLICE(_BACKWARD), DROPOUT, CLIP_COEF, ASSIGN. */
kiln_status kcpu_seq_validate(int index, const kcpu_node *n);
void kcpu_seq(kcpu_pool *pool, const kcpu_node *n);

/* transformer.c: LAYERNORM(_BACKWARD, _BACKWARD_PARAMS), GELU(_BACKWARD),
 * ATTENTION(_BACKWARD), LR_SCHEDULE. */
kiln_status kcpu_tf_validate(int index, const kcpu_node *n);
void kcpu_tf(kcpu_pool *pool, const kcpu_node *n);

/* profile.c: $KILN_PROFILE per-node timing. kcpu_profile_enabled reads the
 * variable (at graph compile); kcpu_profile_report prints per-op and
 * slowest-node tables for ns[i] summed over `runs` runs of nodes[i]. */
int kcpu_profile_enabled(void);
uint64_t kcpu_now_ns(void);
void kcpu_profile_report(const kcpu_node *const *nodes, const uint64_t *ns, uint32_t n_nodes,
                         uint64_t runs);

#endif /* KCPU_IMPL_H */
