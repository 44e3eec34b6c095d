/*
 * names.c - versions and the printable names of dtypes, ops and device kinds.
 */
#include "kiln-impl.h"

unsigned kiln_version(void) { return KILN_VERSION_HEX; }

const char *kiln_version_string(void) { return KILN_VERSION_STRING; }

size_t kiln_dtype_size(kiln_dtype dt) {
  switch (dt) {
    case KILN_F32: return 4;
    case KILN_F16: return 2;
    case KILN_BF16: return 2;
    case KILN_I32: return 4;
    case KILN_U8: return 1;
    default: return 0;
  }
}

const char *kiln_dtype_name(kiln_dtype dt) {
  switch (dt) {
    case KILN_F32: return "f32";
    case KILN_F16: return "f16";
    case KILN_BF16: return "bf16";
    case KILN_I32: return "i32";
    case KILN_U8: return "u8";
    default: return "unknown";
  }
}

const char *kiln_op_name(kiln_op op) {
  switch (op) {
    case KILN_OP_NONE: return "none";
    case KILN_OP_ADD: return "add";
    case KILN_OP_SUB: return "sub";
    case KILN_OP_MUL: return "mul";
    case KILN_OP_DIV: return "div";
    case KILN_OP_NEG: return "neg";
    case KILN_OP_RELU: return "relu";
    case KILN_OP_TANH: return "tanh";
    case KILN_OP_SIGMOID: return "sigmoid";
    case KILN_OP_EXP: return "exp";
    case KILN_OP_LOG: return "log";
    case KILN_OP_SCALE: return "scale";
    case KILN_OP_RELU_BACKWARD: return "relu_backward";
    case KILN_OP_TANH_BACKWARD: return "tanh_backward";
    case KILN_OP_SIGMOID_BACKWARD: return "sigmoid_backward";
    case KILN_OP_MATMUL: return "matmul";
    case KILN_OP_SUM: return "sum";
    case KILN_OP_MEAN: return "mean";
    case KILN_OP_EXPAND: return "expand";
    case KILN_OP_SOFTMAX: return "softmax";
    case KILN_OP_LOG_SOFTMAX: return "log_softmax";
    case KILN_OP_SOFTMAX_BACKWARD: return "softmax_backward";
    case KILN_OP_LOG_SOFTMAX_BACKWARD: return "log_softmax_backward";
    case KILN_OP_CROSS_ENTROPY: return "cross_entropy";
    case KILN_OP_CROSS_ENTROPY_BACKWARD: return "cross_entropy_backward";
    case KILN_OP_RESHAPE: return "reshape";
    case KILN_OP_TRANSPOSE: return "transpose";
    case KILN_OP_COPY: return "copy";
    case KILN_OP_CAST: return "cast";
    case KILN_OP_FILL: return "fill";
    case KILN_OP_CONV2D: return "conv2d";
    case KILN_OP_CONV2D_BACKWARD_INPUT: return "conv2d_backward_input";
    case KILN_OP_CONV2D_BACKWARD_WEIGHT: return "conv2d_backward_weight";
    case KILN_OP_MAXPOOL2D: return "maxpool2d";
    case KILN_OP_MAXPOOL2D_BACKWARD: return "maxpool2d_backward";
    case KILN_OP_AVGPOOL2D: return "avgpool2d";
    case KILN_OP_AVGPOOL2D_BACKWARD: return "avgpool2d_backward";
    case KILN_OP_SGD: return "sgd";
    case KILN_OP_ADAM: return "adam";
    case KILN_OP_INCREMENT: return "increment";
    case KILN_OP_EMBEDDING: return "embedding";
    case KILN_OP_EMBEDDING_BACKWARD: return "embedding_backward";
    case KILN_OP_SLICE: return "slice";
    case KILN_OP_SLICE_BACKWARD: return "slice_backward";
    case KILN_OP_DROPOUT: return "dropout";
    case KILN_OP_CLIP_COEF: return "clip_coef";
    case KILN_OP_ASSIGN: return "assign";
    case KILN_OP_LAYERNORM: return "layernorm";
    case KILN_OP_LAYERNORM_BACKWARD: return "layernorm_backward";
    case KILN_OP_LAYERNORM_BACKWARD_PARAMS: return "layernorm_backward_params";
    case KILN_OP_GELU: return "gelu";
    case KILN_OP_GELU_BACKWARD: return "gelu_backward";
    case KILN_OP_ATTENTION: return "attention";
    case KILN_OP_ATTENTION_BACKWARD: return "attention_backward";
    case KILN_OP_LR_SCHEDULE: return "lr_schedule";
    default: return "unknown";
  }
}

const char *kiln_device_kind_name(kiln_device_kind kind) {
  switch (kind) {
    case KILN_DEVICE_CPU: return "CPU";
    case KILN_DEVICE_VIRTUAL_GPU: return "virtual GPU";
    case KILN_DEVICE_INTEGRATED_GPU: return "integrated GPU";
    case KILN_DEVICE_DISCRETE_GPU: return "discrete GPU";
    case KILN_DEVICE_OTHER: return "other";
    default: return "unknown";
  }
}
