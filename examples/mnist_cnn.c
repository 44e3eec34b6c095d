/*
 * mnist_cnn.c - the reference MNIST CNN, trained through kiln's layer API.
 *
 * The same network as the Keras tutorial:
 *
 *   model = keras.Sequential([
 *       layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
 *       layers.MaxPooling2D((2, 2)),
 *       layers.Conv2D(64, (3, 3), activation="relu"),
 *       layers.MaxPooling2D((2, 2)),
 *       layers.Conv2D(64, (3, 3), activation="relu"),
 *       layers.Flatten(),
 *       layers.Dense(64, activation="relu"),
 *       layers.Dense(10, activation="softmax")])
 *   model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
 *   model.fit(x_train, y_train, batch_size=64, epochs=10)
 *   model.evaluate(x_test, y_test)
 *
 * usage: example-mnist_cnn [--data DIR] [--epochs N] [--backend NAME]
 * DIR holds the four MNIST IDX files (or a mnist/ directory with them);
 * default $KILN_DATA, else the cache filled by `kiln fetch mnist`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kiln/data.h"
#include "kiln/kiln.h"
#include "kiln/nn.h"

#define CHECK(call)                                                            \
  do {                                                                         \
    if ((call) != KILN_OK) {                                                   \
      fprintf(stderr, "example-mnist_cnn: %s\n", kiln_last_error());           \
      goto done;                                                               \
    }                                                                          \
  } while (0)

static void print_progress(const kiln_progress *p, void *user) {
  (void)user;
  if (p->batch % 100 == 0 || p->batch == p->n_batches)
    printf("  epoch %lld batch %lld/%lld: loss %.4f, accuracy %.4f\n", (long long)p->epoch + 1,
           (long long)p->batch, (long long)p->n_batches, p->loss, p->accuracy);
}

int main(int argc, char **argv) {
  const char *data = NULL, *backend = "auto";
  int epochs = 10;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--data") && i + 1 < argc) {
      data = argv[++i];
    } else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) {
      epochs = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
      backend = argv[++i];
    } else {
      fprintf(stderr, "usage: %s [--data DIR] [--epochs N] [--backend NAME]\n", argv[0]);
      return 2;
    }
  }
  if (epochs < 1) {
    fprintf(stderr, "example-mnist_cnn: --epochs must be >= 1\n");
    return 2;
  }

  int rc = 1;
  kiln_context *ctx = NULL;
  kiln_device *dev = NULL;
  kiln_model *model = NULL;
  kiln_trainer *trainer = NULL;
  kiln_mnist train = {0}, test = {0};

  /* Data: MNIST's 60,000 training and 10,000 test images. */
  char base[4096], dir[4200];
  struct stat sb;
  CHECK(kiln_data_dir(data, base, sizeof base));
  snprintf(dir, sizeof dir, "%s/mnist", base);
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) snprintf(dir, sizeof dir, "%s", base);
  CHECK(kiln_mnist_load(dir, 1, 0, &train));
  CHECK(kiln_mnist_load(dir, 0, 0, &test));

  /* A device: the best one found, unless --backend names a plugin. */
  CHECK(kiln_context_create(NULL, &ctx));
  CHECK(kiln_device_open(ctx, backend, -1, &dev));
  kiln_device_info info = {.struct_size = sizeof info};
  CHECK(kiln_device_get_info(dev, &info));
  printf("device: %s (%s)\n", info.name, kiln_plugin_name(kiln_device_plugin(dev)));

  /* The model, layer by layer, as in Keras. */
  const int64_t input[3] = {1, 28, 28}; /* channels, height, width */
  CHECK(kiln_model_create(dev, "mnist-cnn", 3, input, &model));
  CHECK(kiln_model_conv2d(model, "conv1", 32, 3, KILN_ACT_RELU));
  CHECK(kiln_model_maxpool2d(model, 2));
  CHECK(kiln_model_conv2d(model, "conv2", 64, 3, KILN_ACT_RELU));
  CHECK(kiln_model_maxpool2d(model, 2));
  CHECK(kiln_model_conv2d(model, "conv3", 64, 3, KILN_ACT_RELU));
  CHECK(kiln_model_flatten(model));
  CHECK(kiln_model_dense(model, "fc1", 64, KILN_ACT_RELU));
  CHECK(kiln_model_dense(model, "fc2", 10, KILN_ACT_SOFTMAX));
  CHECK(kiln_model_init(model, 1)); /* Glorot uniform weights, zero biases */
  printf("model: %s, %lld parameters\n", kiln_model_architecture(model),
         (long long)kiln_model_numel(model));

  /* Adam(1e-3) on sparse categorical cross-entropy, batch 64. */
  kiln_optimizer_config adam;
  CHECK(kiln_optimizer_defaults(KILN_OPTIM_ADAM, &adam));
  adam.lr = 1e-3f;
  CHECK(kiln_trainer_create(model, &adam, 64, 1, &trainer));

  /* Pixels 0..255 become 0..1 as they are batched. */
  kiln_dataset train_set = {.n = train.n, .x_u8 = train.images, .x_scale = 1.0f / 255,
                            .y_u8 = train.labels};
  kiln_dataset test_set = {.n = test.n, .x_u8 = test.images, .x_scale = 1.0f / 255,
                           .y_u8 = test.labels};

  for (int e = 0; e < epochs; e++) {
    kiln_epoch_stats tr, te;
    CHECK(kiln_trainer_fit_epoch(trainer, &train_set, print_progress, NULL, &tr));
    CHECK(kiln_trainer_evaluate(trainer, &test_set, &te));
    printf("epoch %d: train loss %.4f acc %.4f, test loss %.4f acc %.4f (%.0f images/s)\n",
           e + 1, tr.loss, tr.accuracy, te.loss, te.accuracy, (double)tr.samples / tr.seconds);
  }
  rc = 0;

done:
  kiln_trainer_destroy(trainer);
  kiln_model_destroy(model);
  kiln_device_close(dev);
  kiln_context_destroy(ctx);
  kiln_mnist_free(&train);
  kiln_mnist_free(&test);
  return rc;
}
