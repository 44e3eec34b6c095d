/*
 * test_tensor.c - tensors on the CPU device: create (zero-filled), upload,
 * download, copy, shape queries, and the status and message of each misuse.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "kiln/kiln.h"
#include "testutil.h"

#define HAS(s) cr_assert(strstr(kiln_last_error(), (s)), "'%s' lacks '%s'", kiln_last_error(), (s))

static kiln_context *ctx;
static kiln_device *dev;

static void setup(void) { tu_open_cpu(&ctx, &dev); }
static void teardown(void) {
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
}

TestSuite(tensor, .init = setup, .fini = teardown);

Test(tensor, create_is_zero_filled_with_its_shape) {
  const int64_t shape[3] = {2, 3, 4};
  kiln_tensor *t = NULL;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 3, shape, &t), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_tensor_dtype(t), KILN_F32);
  cr_assert_eq(kiln_tensor_ndim(t), 3);
  cr_assert_eq(kiln_tensor_numel(t), 24);
  cr_assert_eq(kiln_tensor_nbytes(t), 96);
  cr_assert_eq(kiln_tensor_dim(t, 0), 2);
  cr_assert_eq(kiln_tensor_dim(t, -1), 4);
  cr_assert_eq(kiln_tensor_dim(t, 3), 0);
  cr_assert_eq(kiln_tensor_dim(t, -4), 0);
  cr_assert_eq(kiln_tensor_device(t), dev);
  int64_t got[KILN_MAX_DIMS];
  cr_assert_eq(kiln_tensor_shape(t, got), 3);
  cr_assert_arr_eq(got, shape, sizeof shape);
  float x[24];
  memset(x, 0xff, sizeof x);
  cr_assert_eq(kiln_tensor_download(t, x, sizeof x), KILN_OK, "%s", kiln_last_error());
  for (int i = 0; i < 24; i++) cr_assert_eq(x[i], 0.0f, "element %d is %g", i, x[i]);
  kiln_tensor_destroy(t);
}

Test(tensor, scalar) {
  kiln_tensor *t = NULL;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 0, NULL, &t), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_tensor_ndim(t), 0);
  cr_assert_eq(kiln_tensor_numel(t), 1);
  float v = 3.5f, back = 0;
  cr_assert_eq(kiln_tensor_upload(t, &v, sizeof v), KILN_OK);
  cr_assert_eq(kiln_tensor_download(t, &back, sizeof back), KILN_OK);
  cr_assert_eq(back, 3.5f);
  kiln_tensor_destroy(t);
}

Test(tensor, upload_download_copy_round_trip) {
  const int64_t shape[2] = {5, 7};
  float a[35], b[35];
  tu_fill_uniform(a, 35, 42, -1.0f, 1.0f);
  kiln_tensor *src = NULL, *dst = NULL;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 2, shape, &src), KILN_OK);
  cr_assert_eq(kiln_tensor_upload(src, a, sizeof a), KILN_OK, "%s", kiln_last_error());
  cr_assert_eq(kiln_tensor_download(src, b, sizeof b), KILN_OK, "%s", kiln_last_error());
  cr_assert_arr_eq(a, b, sizeof a, "upload then download changed the data");

  /* Copy needs only the same element count: [35] <- [5, 7]. */
  const int64_t flat[1] = {35};
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 1, flat, &dst), KILN_OK);
  cr_assert_eq(kiln_tensor_copy(dst, src), KILN_OK, "%s", kiln_last_error());
  memset(b, 0, sizeof b);
  cr_assert_eq(kiln_tensor_download(dst, b, sizeof b), KILN_OK);
  cr_assert_arr_eq(a, b, sizeof a, "copy changed the data");

  /* The copy is independent of its source. */
  float z[35] = {0};
  cr_assert_eq(kiln_tensor_upload(src, z, sizeof z), KILN_OK);
  cr_assert_eq(kiln_tensor_download(dst, b, sizeof b), KILN_OK);
  cr_assert_arr_eq(a, b, sizeof a);
  cr_assert_eq(kiln_device_synchronize(dev), KILN_OK);
  kiln_tensor_destroy(dst);
  kiln_tensor_destroy(src);
}

Test(tensor, i32_and_u8) {
  const int64_t shape[1] = {4};
  kiln_tensor *t = NULL, *u = NULL;
  cr_assert_eq(kiln_tensor_create(dev, KILN_I32, 1, shape, &t), KILN_OK);
  cr_assert_eq(kiln_tensor_nbytes(t), 16);
  int32_t v[4] = {1, -2, 3, 2147483647}, w[4];
  cr_assert_eq(kiln_tensor_upload(t, v, sizeof v), KILN_OK);
  cr_assert_eq(kiln_tensor_download(t, w, sizeof w), KILN_OK);
  cr_assert_arr_eq(v, w, sizeof v);
  cr_assert_eq(kiln_tensor_create(dev, KILN_U8, 1, shape, &u), KILN_OK);
  cr_assert_eq(kiln_tensor_nbytes(u), 4);
  kiln_tensor_destroy(u);
  kiln_tensor_destroy(t);
}

Test(tensor, bad_shapes) {
  kiln_tensor *t = (kiln_tensor *)1;
  const int64_t zero[3] = {2, 0, 3};
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 3, zero, &t), KILN_INVALID_ARGUMENT);
  cr_assert_null(t, "*out must be NULL after a failure");
  HAS("shape [2, 0, 3]: dim 1 is 0, every dim must be >= 1");

  const int64_t neg[2] = {-1, 4};
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 2, neg, &t), KILN_INVALID_ARGUMENT);
  HAS("dim 0 is -1");

  const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 9, nine, &t), KILN_INVALID_ARGUMENT);
  HAS("ndim 9 is out of range 0..8");
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, -1, nine, &t), KILN_INVALID_ARGUMENT);
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 2, NULL, &t), KILN_INVALID_ARGUMENT);
  HAS("ndim 2 but shape is NULL");

  const int64_t huge[3] = {1ll << 30, 1ll << 30, 1ll << 30};
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 3, huge, &t), KILN_INVALID_ARGUMENT);
  HAS("too large");
}

Test(tensor, bad_dtype) {
  const int64_t shape[1] = {4};
  kiln_tensor *t = NULL;
  cr_assert_eq(kiln_tensor_create(dev, (kiln_dtype)99, 1, shape, &t), KILN_INVALID_ARGUMENT);
  HAS("unknown dtype 99");
  cr_assert_eq(kiln_tensor_create(dev, KILN_DTYPE_INVALID, 1, shape, &t), KILN_INVALID_ARGUMENT);
  cr_assert_eq(kiln_tensor_create(NULL, KILN_F32, 1, shape, &t), KILN_INVALID_ARGUMENT);
  HAS("dev is NULL");
}

Test(tensor, size_mismatches) {
  const int64_t shape[2] = {2, 3};
  kiln_tensor *t = NULL;
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 2, shape, &t), KILN_OK);
  float buf[8] = {0};
  cr_assert_eq(kiln_tensor_upload(t, buf, 20), KILN_INVALID_ARGUMENT);
  HAS("kiln_tensor_upload: tensor f32 [2, 3] holds 24 bytes, but 20 bytes were given");
  cr_assert_eq(kiln_tensor_download(t, buf, 32), KILN_INVALID_ARGUMENT);
  HAS("kiln_tensor_download: tensor f32 [2, 3] holds 24 bytes, but 32 bytes were given");
  cr_assert_eq(kiln_tensor_upload(t, NULL, 24), KILN_INVALID_ARGUMENT);
  HAS("src is NULL");
  cr_assert_eq(kiln_tensor_download(NULL, buf, 24), KILN_INVALID_ARGUMENT);

  kiln_tensor *other = NULL, *ints = NULL;
  const int64_t four[1] = {4}, six[1] = {6};
  cr_assert_eq(kiln_tensor_create(dev, KILN_F32, 1, four, &other), KILN_OK);
  cr_assert_eq(kiln_tensor_copy(other, t), KILN_SHAPE_MISMATCH);
  HAS("dst f32 [4] has 4 elements, src f32 [2, 3] has 6");
  cr_assert_eq(kiln_tensor_create(dev, KILN_I32, 1, six, &ints), KILN_OK);
  cr_assert_eq(kiln_tensor_copy(ints, t), KILN_DTYPE_MISMATCH);
  HAS("dst i32 [6] and src f32 [2, 3] differ in dtype");
  kiln_tensor_destroy(ints);
  kiln_tensor_destroy(other);
  kiln_tensor_destroy(t);
}

Test(tensor, device_info_and_errors) {
  kiln_device_info info = {.struct_size = sizeof info};
  cr_assert_eq(kiln_device_get_info(dev, &info), KILN_OK);
  cr_assert_eq(info.kind, KILN_DEVICE_CPU);
  cr_assert(info.name[0] != '\0');
  /* An older caller's smaller struct gets only what fits. */
  kiln_device_info small;
  memset(&small, 0x5a, sizeof small);
  small.struct_size = offsetof(kiln_device_info, name) + 8;
  cr_assert_eq(kiln_device_get_info(dev, &small), KILN_OK);
  cr_assert_eq(small.kind, KILN_DEVICE_CPU);
  cr_assert_eq((unsigned char)small.name[8], 0x5a, "wrote past the caller's struct_size");
  kiln_device_info none = {.struct_size = 0};
  cr_assert_eq(kiln_device_get_info(dev, &none), KILN_INVALID_ARGUMENT);
  HAS("struct_size");
}
