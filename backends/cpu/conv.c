/*
 * conv.c - conv2d forward and both backward passes (im2col + GEMM).
 * Work in progress: definitions exist so the plugin links.
 */
#include "cpu-impl.h"

kiln_status kcpu_conv2d_validate(const kcpu_node *n) {
  (void)n;
  kcpu_host->set_error("cpu: conv2d: not yet available in this build");
  return KILN_UNSUPPORTED;
}

void kcpu_conv2d(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
void kcpu_conv2d_backward_input(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
void kcpu_conv2d_backward_weight(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
