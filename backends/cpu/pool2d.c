/*
 * pool2d.c - max and average pooling, forward and backward.
 * Work in progress: definitions exist so the plugin links.
 */
#include "cpu-impl.h"

kiln_status kcpu_pool2d_validate(const kcpu_node *n) {
  (void)n;
  kcpu_host->set_error("cpu: pool2d: not yet available in this build");
  return KILN_UNSUPPORTED;
}

void kcpu_maxpool2d(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
void kcpu_maxpool2d_backward(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
void kcpu_avgpool2d(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
void kcpu_avgpool2d_backward(kcpu_pool *pool, const kcpu_node *n) { (void)pool; (void)n; }
