/*
 * cpu-impl.h - the CPU plugin's private interface between its files.
 *
 *   plugin.c     entry point, device, buffers, graph compile/run, validation
 *   threads.c    the persistent thread pool (KILN_NUM_THREADS)
 *   gemm.c       blocked single-precision GEMM used by matmul and conv
 *   elementwise.c, reduce.c, softmax.c, layout.c, optim.c   op families
 *   conv.c       conv2d forward and both backward passes (im2col + GEMM)
 *   pool2d.c     max and average pooling, forward and backward
 *
 * Names are kcpu_*. Kernels receive resolved tensors (data pointers) and
 * assume the node was validated by kcpu_validate_node() at compile time.
 */
#ifndef KCPU_IMPL_H
#define KCPU_IMPL_H

#include <stdint.h>

#include "kiln/plugin.h"

/* The host table given to init(); used for set_error/log. */
extern const kiln_host_api *kcpu_host;

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
} kcpu_node;

/* ---- GEMM (gemm.c) --------------------------------------------------------
 * C[M, N] = alpha * op(A) @ op(B) + beta * C, row-major, op(X) = X or X^T.
 * A is [M, K] (lda >= K) or, transposed, [K, M] (lda >= M); B likewise. */
void kcpu_sgemm(kcpu_pool *pool, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                float beta, float *C, int64_t ldc);

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

#endif /* KCPU_IMPL_H */
