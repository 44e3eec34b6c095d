/*
 * nn-impl.h - private definitions of kiln/nn.h's model and trainer, shared by
 * nn.c (layers, initialisation, forward graph), nn_trainer.c (training and
 * evaluation loops) and nn_checkpoint.c (safetensors checkpoints).
 */
#ifndef KILN_NN_IMPL_H
#define KILN_NN_IMPL_H

#include <stdint.h>

#include "kiln-impl.h"
#include "kiln/nn.h"

typedef enum nn_layer_kind {
  NN_CONV2D = 1,
  NN_MAXPOOL2D = 2,
  NN_FLATTEN = 3,
  NN_DENSE = 4,
  NN_ACTIVATION = 5
} nn_layer_kind;

typedef struct nn_layer {
  nn_layer_kind kind;
  char name[64];              /* conv2d, dense: the parameter prefix */
  int units;                  /* conv2d: filters; dense: units */
  int kernel;                 /* conv2d: kernel size; maxpool2d: window and stride */
  kiln_activation act;
  int weight, bias;           /* parameter indices, -1 if none */
} nn_layer;

typedef struct nn_param {
  char *name;                 /* "conv1.weight" */
  kiln_tensor *t;
  int64_t fan_in, fan_out;    /* Glorot; both 0 for biases */
} nn_param;

struct kiln_model {
  kiln_device *dev;
  char *name;
  int in_ndim;
  int64_t in_shape[KILN_MAX_DIMS];
  int out_ndim;               /* shape of one sample after the last layer */
  int64_t out_shape[KILN_MAX_DIMS];
  nn_layer *layers;
  size_t n_layers, cap_layers;
  nn_param *params;
  size_t n_params, cap_params;
  char *arch;                 /* kiln_model_architecture() */
  int n_trainers;             /* layers may not be added while > 0 */
};

/* One compiled graph for one batch size. */
typedef struct nn_graph {
  int batch;                  /* 0: not built */
  kiln_graph *g;
  kiln_compiled *c;
  kiln_node *x, *y;           /* inputs [batch, in...] f32 or u8, [batch] i32 */
  int u8;                     /* x is u8, cast to f32 as x * xscale on the device */
  float xscale;
  kiln_node *logits;          /* [batch, classes] */
  kiln_node *loss;            /* scalar */
  int64_t runs;               /* runs submitted (the trainer's count, for reading back) */
  int depth;                  /* runs it keeps in flight (nn_trainer.c: fly_depth) */
} nn_graph;

/* The most batches a trainer keeps in flight (nn_trainer.c: pending). */
#define NN_FLY 4

struct kiln_trainer {
  kiln_model *m;
  int has_optim;
  kiln_optimizer_config opt;
  int batch;
  uint64_t seed;
  int64_t epoch, step;
  kiln_tensor **state1;       /* per param: exp_avg, or momentum_buffer (SGD, may be NULL) */
  kiln_tensor **state2;       /* per param: exp_avg_sq (Adam), else NULL */
  kiln_tensor *step_t;        /* scalar f32: the Adam step counter */
  nn_graph train_full, train_tail, eval_full, eval_tail;
  int64_t in_numel, classes;
  int cast_ok;                /* the device runs KILN_OP_CAST: u8 datasets go up as bytes */
  float *xbuf;                /* [batch, in...] f32, or bytes for a u8 graph */
  int32_t *ybuf;              /* [batch] */
  int32_t *yfly[NN_FLY];      /* [batch] each: the labels of the batches in flight */
  float *lbuf;                /* [batch, classes] */
};

/* Names of the optimizer state of param p: "optimizer.NAME.exp_avg" etc.
 * Returns NULL if the optimizer has no such state. */
const char *kiln__nn_state1_suffix(const kiln_trainer *t);
const char *kiln__nn_state2_suffix(const kiln_trainer *t);

#endif /* KILN_NN_IMPL_H */
