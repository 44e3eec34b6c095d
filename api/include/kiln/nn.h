/*
 * kiln/nn.h - a small layer API on top of the graph API, so that a model
 * reads like its Keras definition:
 *
 *   kiln_model *m;
 *   kiln_model_create(dev, "mnist-cnn", 3, (int64_t[]){1, 28, 28}, &m);
 *   kiln_model_conv2d(m, "conv1", 32, 3, KILN_ACT_RELU);
 *   kiln_model_maxpool2d(m, 2);
 *   ...
 *   kiln_model_flatten(m);
 *   kiln_model_dense(m, "fc1", 64, KILN_ACT_RELU);
 *   kiln_model_dense(m, "fc2", 10, KILN_ACT_SOFTMAX);
 *   kiln_model_init(m, seed);                 // Glorot uniform, zero biases
 *
 *   kiln_trainer *t;
 *   kiln_trainer_create(m, &optim, 64, seed, &t);
 *   kiln_trainer_fit_epoch(t, &train, progress_fn, user, &stats);
 *   kiln_trainer_evaluate(t, &test, &stats);
 *
 * Parameters live on the model's device as kiln_tensors named the way
 * PyTorch names them: "conv1.weight" [O, C, KH, KW], "conv1.bias" [O],
 * "fc1.weight" [units, in] (a dense layer computes x @ W^T + b), "fc1.bias".
 *
 * Shapes given to the model are per sample (without the batch axis); the
 * graphs built from it add the batch axis N in front.
 *
 * Static graphs: a trainer compiles one training-step graph for the batch
 * size, and one more for the final partial batch of an epoch when the
 * dataset size is not a multiple of it (both share the same parameter and
 * optimizer-state tensors), so every sample is trained on each epoch.
 * Evaluation does the same with forward-only graphs.
 *
 * Every function returns a kiln_status and leaves a message naming the
 * layer, file or tensor in kiln_last_error() on failure.
 */
#ifndef KILN_NN_H
#define KILN_NN_H

#include <stddef.h>
#include <stdint.h>

#include "kiln.h"

KILN_EXTERN_C_BEGIN

typedef struct kiln_model kiln_model;
typedef struct kiln_trainer kiln_trainer;

/* Activation applied at the end of a layer. Numbers never reused. */
typedef enum kiln_activation {
  KILN_ACT_NONE = 0,
  KILN_ACT_RELU = 1,
  KILN_ACT_TANH = 2,
  KILN_ACT_SIGMOID = 3,
  /* Softmax over the last axis. Only allowed on the model's last layer; the
   * training and evaluation graphs feed the pre-softmax logits to
   * KILN_OP_CROSS_ENTROPY (which applies log-softmax itself, the numerically
   * sound form of Keras' softmax + sparse categorical cross-entropy). */
  KILN_ACT_SOFTMAX = 4,
  KILN_ACT_MAX_ = 0x7fffffff
} kiln_activation;

/* ==========================================================================
 * Models (sequential)
 */

/** Creates an empty sequential model on dev. name identifies the
 *  architecture in checkpoints ("mnist-cnn"); in_ndim/in_shape is the shape
 *  of one sample (e.g. 3, {1, 28, 28} for NCHW images). Free with
 *  kiln_model_destroy() (before closing dev). */
KILN_API kiln_status kiln_model_create(kiln_device *dev, const char *name, int in_ndim,
                                       const int64_t *in_shape, kiln_model **out);
/** Destroys the model and its parameter tensors. NULL is ignored. */
KILN_API void kiln_model_destroy(kiln_model *m);

/** Appends a 2-D convolution ("valid" padding, stride 1, as Keras' Conv2D
 *  default) of `filters` output channels with a kernel x kernel window,
 *  then act. Input [C, H, W]; output [filters, H-kernel+1, W-kernel+1].
 *  Parameters "NAME.weight" [filters, C, kernel, kernel] and "NAME.bias"
 *  [filters]. */
KILN_API kiln_status kiln_model_conv2d(kiln_model *m, const char *name, int filters, int kernel,
                                       kiln_activation act);
/** Appends max pooling with a size x size window and stride size (Keras'
 *  MaxPooling2D(size)). Input [C, H, W]; output [C, H/size, W/size]
 *  (rounded down). */
KILN_API kiln_status kiln_model_maxpool2d(kiln_model *m, int size);
/** Appends a flatten: [d0, d1, ...] -> [d0 * d1 * ...]. */
KILN_API kiln_status kiln_model_flatten(kiln_model *m);
/** Appends a dense layer x @ W^T + b, then act. Input [in] (flatten
 *  first); output [units]. Parameters "NAME.weight" [units, in] and
 *  "NAME.bias" [units]. */
KILN_API kiln_status kiln_model_dense(kiln_model *m, const char *name, int units,
                                      kiln_activation act);
/** Appends a stand-alone activation layer (no parameters). */
KILN_API kiln_status kiln_model_activation(kiln_model *m, kiln_activation act);

/** Initialises every parameter as Keras does by default: weights Glorot
 *  uniform, U(-l, l) with l = sqrt(6 / (fan_in + fan_out)) (for a
 *  convolution fan_in = C*K*K and fan_out = O*K*K), biases zero. Values
 *  come from a counter-based PRNG (splitmix64) of (seed, parameter index,
 *  element index), so they depend on nothing else. */
KILN_API kiln_status kiln_model_init(kiln_model *m, uint64_t seed);

/** The model's name (owned by m). */
KILN_API const char *kiln_model_name(const kiln_model *m);
/** A one-line description of the architecture, e.g.
 *  "input[1,28,28] conv2d(conv1,32,3,relu) maxpool2d(2) ..." (owned by m).
 *  Stored in checkpoints and compared on load. */
KILN_API const char *kiln_model_architecture(const kiln_model *m);
/** The device the parameters live on. */
KILN_API kiln_device *kiln_model_device(const kiln_model *m);
/** Number of parameter tensors, and the i-th one's name and tensor (both
 *  owned by m), in layer order: weight then bias per layer. */
KILN_API size_t kiln_model_param_count(const kiln_model *m);
KILN_API kiln_status kiln_model_param(const kiln_model *m, size_t i, const char **name,
                                      kiln_tensor **tensor);
/** Total number of trainable scalars. */
KILN_API int64_t kiln_model_numel(const kiln_model *m);
/** Shape of one output sample ([classes] for a classifier); returns ndim. */
KILN_API int kiln_model_output_shape(const kiln_model *m, int64_t *shape);

/** Builds the forward pass into g for input x [N, in_shape...]: creates one
 *  kiln_param node per parameter (call at most once per graph) and returns
 *  the output node [N, out_shape...]. With with_softmax = 0 a final
 *  KILN_ACT_SOFTMAX is left out, so the node holds the logits. Returns NULL
 *  on error (the graph records it, see kiln_graph_status()). If params is
 *  not NULL it receives the kiln_param nodes (kiln_model_param_count()
 *  entries), e.g. to ask kiln_grad() for their gradients. */
KILN_API kiln_node *kiln_model_forward(kiln_model *m, kiln_graph *g, kiln_node *x,
                                       int with_softmax, kiln_node **params);

/** Saves the parameters alone (no optimizer state) to a safetensors file,
 *  atomically, with metadata "kiln.model" and "kiln.architecture". */
KILN_API kiln_status kiln_model_save(const kiln_model *m, const char *path);
/** Loads parameters from a checkpoint written by kiln_model_save() or
 *  kiln_trainer_save() (its optimizer entries are ignored). Refuses a file
 *  of another model, and checks every parameter's presence, dtype and
 *  shape before changing anything; the message names the file and tensor. */
KILN_API kiln_status kiln_model_load(kiln_model *m, const char *path);

/* ==========================================================================
 * Optimizers
 */

typedef enum kiln_optimizer_kind {
  KILN_OPTIM_ADAM = 1,    /* state: exp_avg, exp_avg_sq per parameter, step */
  KILN_OPTIM_ADAMW = 2,   /* the same, decoupled weight decay */
  KILN_OPTIM_SGD = 3,     /* state: momentum_buffer per parameter if momentum != 0 */
  KILN_OPTIM_MAX_ = 0x7fffffff
} kiln_optimizer_kind;

typedef struct kiln_optimizer_config {
  uint32_t struct_size;       /* sizeof(kiln_optimizer_config) */
  kiln_optimizer_kind kind;
  float lr;                   /* Adam 1e-3, SGD 1e-2 */
  float beta1, beta2, eps;    /* Adam: 0.9, 0.999, 1e-7 (Keras' epsilon) */
  float weight_decay;         /* 0 (AdamW: 1e-2) */
  float momentum;             /* SGD: 0 */
  int nesterov;               /* SGD: 0 */
} kiln_optimizer_config;

/** Fills *cfg with the defaults of `kind` listed above (Keras' defaults for
 *  Adam, PyTorch's for AdamW's weight decay). */
KILN_API kiln_status kiln_optimizer_defaults(kiln_optimizer_kind kind, kiln_optimizer_config *cfg);
/** "adam", "adamw", "sgd", or "unknown". */
KILN_API const char *kiln_optimizer_name(kiln_optimizer_kind kind);

/* ==========================================================================
 * Datasets: host memory, borrowed for the duration of each call.
 */

typedef struct kiln_dataset {
  int64_t n;                  /* samples */
  /* Inputs, n * (model input numel) values, exactly one of: */
  const float *x_f32;         /* as is */
  const uint8_t *x_u8;        /* converted as x_u8 * x_scale (e.g. 1/255): on the device
                               * where it runs KILN_OP_CAST (the bytes are uploaded as
                               * they are, a quarter of f32's upload), else on the host;
                               * the same bits either way for x_scale > 0 */
  float x_scale;
  /* Class labels, n values in [0, classes), one of (neither: only for
   * kiln_trainer_predict): */
  const int32_t *y_i32;
  const uint8_t *y_u8;
} kiln_dataset;

/* ==========================================================================
 * Training
 */

/** Progress of an epoch, handed to a kiln_progress_fn after each batch. */
typedef struct kiln_progress {
  int64_t epoch;              /* 0-based epoch being trained */
  int64_t batch, n_batches;   /* batches done in this epoch, of n_batches */
  int64_t samples, n_samples; /* samples done in this epoch, of n_samples */
  int64_t step;               /* optimizer steps taken since the start */
  double loss;                /* mean training loss over this epoch so far */
  double accuracy;            /* training accuracy over this epoch so far */
  double seconds;             /* since the epoch started */
} kiln_progress;
typedef void (*kiln_progress_fn)(const kiln_progress *p, void *user);

/* Outcome of an epoch or an evaluation. */
typedef struct kiln_epoch_stats {
  double loss;                /* mean loss per sample */
  double accuracy;            /* fraction of argmax == label */
  int64_t samples;
  double seconds;             /* wall-clock time of the call */
} kiln_epoch_stats;

/** Creates a trainer for m: allocates the optimizer state on m's device
 *  (zeros, step 0), and compiles the training-step graph for `batch`
 *  (forward -> cross-entropy -> backward -> optimizer updates, the step
 *  counter kiln_increment'ed in the graph). seed drives the shuffling:
 *  the order of epoch e depends only on (seed, e), which makes resuming
 *  from a checkpoint exact. The graphs take f32 inputs; the first u8
 *  dataset (or a new x_scale) rebuilds them once to take bytes (see
 *  kiln_dataset; KILN_U8_UPLOAD=0 turns that off). optim NULL makes an
 *  evaluation-only trainer (no optimizer state, no training graph; kiln_trainer_fit_epoch() then
 *  returns KILN_INVALID_STATE). m must outlive the trainer. */
KILN_API kiln_status kiln_trainer_create(kiln_model *m, const kiln_optimizer_config *optim,
                                         int batch, uint64_t seed, kiln_trainer **out);
KILN_API void kiln_trainer_destroy(kiln_trainer *t);

/** Trains one epoch (number kiln_trainer_epoch(t)) over ds in its shuffled
 *  order, calling progress (may be NULL) after each batch, then advances
 *  the epoch counter. stats may be NULL. On a device that keeps two runs of
 *  a graph's outputs (Vulkan: kiln_compiled_output_depth), batch b+1 is
 *  submitted before batch b's loss is read, so the device never waits for
 *  the host; progress for batch b then comes after step b+1 was started,
 *  and the parameters read inside the callback may already include it.
 *  When the call returns, every step has finished and been counted. */
KILN_API kiln_status kiln_trainer_fit_epoch(kiln_trainer *t, const kiln_dataset *ds,
                                            kiln_progress_fn progress, void *user,
                                            kiln_epoch_stats *stats);
/** Evaluates the model on every sample of ds, in order: mean cross-entropy
 *  and accuracy. Parameters are not changed. */
KILN_API kiln_status kiln_trainer_evaluate(kiln_trainer *t, const kiln_dataset *ds,
                                           kiln_epoch_stats *stats);
/** Runs the forward pass over the n samples of ds and writes the logits
 *  (n * classes floats, pre-softmax) to out. */
KILN_API kiln_status kiln_trainer_predict(kiln_trainer *t, const kiln_dataset *ds, float *out,
                                          size_t out_count);

/** Epochs completed (the next epoch to train) and optimizer steps taken. */
KILN_API int64_t kiln_trainer_epoch(const kiln_trainer *t);
KILN_API int64_t kiln_trainer_step(const kiln_trainer *t);
KILN_API int kiln_trainer_batch(const kiln_trainer *t);
KILN_API uint64_t kiln_trainer_seed(const kiln_trainer *t);

/** Saves a full checkpoint atomically: every parameter by name, the
 *  optimizer state ("optimizer.NAME.exp_avg", "optimizer.NAME.exp_avg_sq"
 *  or "optimizer.NAME.momentum_buffer", and "optimizer.step"), and metadata:
 *  kiln.model, kiln.architecture, kiln.version, epoch, step, seed, batch,
 *  optimizer, lr, beta1, beta2, eps, weight_decay, momentum, nesterov. */
KILN_API kiln_status kiln_trainer_save(const kiln_trainer *t, const char *path);
/** Loads a checkpoint written by kiln_trainer_save(): parameters, optimizer
 *  state, epoch and step, so training continues exactly where it stopped.
 *  Refuses (changing nothing) a file of another model or optimizer, or with
 *  a missing tensor or one of the wrong dtype or shape, naming the file and
 *  the tensor. The trainer's own batch, seed and hyperparameters are kept;
 *  read the file's with kiln_checkpoint_meta() to reuse them. */
KILN_API kiln_status kiln_trainer_load(kiln_trainer *t, const char *path);

/** Reads metadata value `key` of a checkpoint into buf (size bytes).
 *  KILN_NOT_FOUND if the file has no such key. */
KILN_API kiln_status kiln_checkpoint_meta(const char *path, const char *key, char *buf,
                                          size_t size);

/* ==========================================================================
 * Reference models
 */

/** Builds the reference MNIST CNN (the Keras tutorial's) as "mnist-cnn",
 *  input [1, 28, 28]: conv1 32x3x3 relu, maxpool 2, conv2 64x3x3 relu,
 *  maxpool 2, conv3 64x3x3 relu, flatten, fc1 64 relu, fc2 10 softmax;
 *  93,322 parameters, initialised with kiln_model_init(seed). */
KILN_API kiln_status kiln_model_mnist_cnn(kiln_device *dev, uint64_t seed, kiln_model **out);

KILN_EXTERN_C_END

#endif /* KILN_NN_H */
