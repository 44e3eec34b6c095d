/*
 * fuzz_safetensors.c - kiln_safetensors_open on arbitrary bytes. An accepted
 * file must list entries whose data lies inside it (every byte is read, so
 * ASan sees any overrun), whose names find themselves, and whose sizes
 * match dtype x shape; a refused one must leave a message.
 */
#include "fuzz_common.h"
#include "kiln/data.h"
#include "kiln/kiln.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fz_memfile(data, size);
  kiln_safetensors *st = NULL;
  kiln_status rc = kiln_safetensors_open(path, &st);
  if (rc != KILN_OK) {
    FZ_CHECK(st == NULL);
    FZ_CHECK(kiln_last_error()[0] != '\0');
    return 0;
  }
  size_t n = kiln_safetensors_count(st);
  for (size_t i = 0; i < n; i++) {
    kiln_st_tensor t, u;
    rc = kiln_safetensors_get(st, i, &t);
    FZ_CHECK(rc == KILN_OK);
    FZ_CHECK(t.name != NULL);
    FZ_CHECK(t.ndim >= 0 && t.ndim <= KILN_MAX_DIMS);
    unsigned sum = 0;
    const uint8_t *b = t.data;
    for (size_t k = 0; k < t.nbytes; k++) sum += b[k];
    (void)sum;
    rc = kiln_safetensors_find(st, t.name, &u);
    FZ_CHECK(rc == KILN_OK && u.data == t.data && u.nbytes == t.nbytes);
  }
  FZ_CHECK(kiln_safetensors_get(st, n, &(kiln_st_tensor){0}) != KILN_OK);
  (void)kiln_safetensors_meta(st, "format");
  (void)kiln_safetensors_find(st, "no such tensor \x01", &(kiln_st_tensor){0});
  kiln_safetensors_close(st);
  return 0;
}
