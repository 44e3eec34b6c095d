/*
 * fuzz_idx.c - kiln_idx_read on arbitrary bytes (plain or gzip'd IDX).
 * A valid file must come back whole and self-consistent; anything else must
 * be refused with a status and a message naming the file.
 */
#include "fuzz_common.h"
#include "kiln/data.h"
#include "kiln/kiln.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fz_memfile(data, size);
  kiln_idx idx;
  memset(&idx, 0xA5, sizeof idx);
  kiln_status st = kiln_idx_read(path, &idx);
  if (st == KILN_OK) {
    FZ_CHECK(idx.ndim >= 1 && idx.ndim <= KILN_MAX_DIMS);
    int64_t count = 1;
    for (int i = 0; i < idx.ndim; i++) {
      FZ_CHECK(idx.dims[i] >= 0);
      count *= idx.dims[i];
    }
    FZ_CHECK(count == idx.count);
    /* touch every byte: ASan checks the buffer is as long as it claims */
    unsigned sum = 0;
    for (int64_t i = 0; i < idx.count; i++) sum += idx.data[i];
    (void)sum;
    kiln_idx_free(&idx);
  } else {
    FZ_CHECK(kiln_last_error()[0] != '\0');
    FZ_CHECK(strstr(kiln_last_error(), path) != NULL);
  }
  return 0;
}
