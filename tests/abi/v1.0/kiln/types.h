/*
 * kiln/types.h - plain data types shared by the public API and the plugin ABI.
 */
#ifndef KILN_TYPES_H
#define KILN_TYPES_H

#include <stdint.h>

/* Device kinds, in the default preference order reversed (higher is preferred
 * by "auto", except OTHER). Numbers never reused. */
typedef enum kiln_device_kind {
  KILN_DEVICE_OTHER = 0,
  KILN_DEVICE_CPU = 1,
  KILN_DEVICE_VIRTUAL_GPU = 2,
  KILN_DEVICE_INTEGRATED_GPU = 3,
  KILN_DEVICE_DISCRETE_GPU = 4,
  KILN_DEVICE_KIND_MAX_ = 0x7fffffff
} kiln_device_kind;

/* Feature bits in kiln_device_info.features. */
#define KILN_FEATURE_F16        (1ull << 0)  /* computes in f16 */
#define KILN_FEATURE_BF16       (1ull << 1)
#define KILN_FEATURE_SUBGROUPS  (1ull << 2)  /* subgroup arithmetic */
#define KILN_FEATURE_UNIFIED    (1ull << 3)  /* memory shared with the host */

/* A device as a plugin reports it. The caller sets struct_size before the
 * call; a plugin fills only the fields that fit in struct_size, so either
 * side may be older. Strings are NUL-terminated and may be truncated. */
typedef struct kiln_device_info {
  uint32_t struct_size;
  uint32_t kind;            /* kiln_device_kind */
  char name[256];           /* "AMD Radeon RX 7900 XTX", "Intel Xeon ..." */
  char vendor[64];          /* "AMD", "NVIDIA", "Mesa", "GenuineIntel" */
  char driver[128];         /* driver name and version, "" if none */
  uint64_t memory_bytes;    /* device-local memory, or host RAM for CPU */
  uint64_t features;        /* KILN_FEATURE_* */
  uint32_t compute_units;   /* cores / CUs / SMs; 0 if unknown */
  uint32_t subgroup_size;   /* 0 if not applicable */
  char details[1024];       /* free-form extra lines for `kiln info` */
} kiln_device_info;

#endif /* KILN_TYPES_H */
