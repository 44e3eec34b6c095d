/*
 * nn.c - kiln/nn.h's sequential models: layers, their parameters on the
 * device, Keras-style initialisation, and the forward graph. Training lives
 * in nn_trainer.c, checkpoints in nn_checkpoint.c.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn-impl.h"

static const char *act_name(kiln_activation a) {
  switch (a) {
    case KILN_ACT_NONE: return "none";
    case KILN_ACT_RELU: return "relu";
    case KILN_ACT_TANH: return "tanh";
    case KILN_ACT_SIGMOID: return "sigmoid";
    case KILN_ACT_SOFTMAX: return "softmax";
    default: return NULL;
  }
}

/* Appends formatted text to m->arch. */
static kiln_status arch_append(kiln_model *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static kiln_status arch_append(kiln_model *m, const char *fmt, ...) {
  char piece[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(piece, sizeof piece, fmt, ap);
  va_end(ap);
  size_t old = m->arch ? strlen(m->arch) : 0;
  char *s = kiln__realloc(m->arch, old + strlen(piece) + 2);
  if (!s) return KILN_OUT_OF_MEMORY;
  if (old) s[old++] = ' ';
  strcpy(s + old, piece);
  m->arch = s;
  return KILN_OK;
}

kiln_status kiln_model_create(kiln_device *dev, const char *name, int in_ndim,
                              const int64_t *in_shape, kiln_model **out) {
  char buf[128];
  if (!out) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_create: out is NULL");
  *out = NULL;
  if (!dev || !name || !*name)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_create: device and a name are required");
  if (in_ndim < 1 || in_ndim >= KILN_MAX_DIMS || !in_shape)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "kiln_model_create(%s): the sample shape needs 1 to %d dims, got %d", name,
                       KILN_MAX_DIMS - 1, in_ndim);
  for (int i = 0; i < in_ndim; i++)
    if (in_shape[i] < 1)
      return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_create(%s): sample shape %s has a dim < 1",
                         name, kiln__shape_str(buf, sizeof buf, in_ndim, in_shape));
  kiln_model *m = kiln__calloc(1, sizeof *m);
  if (!m) return KILN_OUT_OF_MEMORY;
  m->dev = dev;
  m->name = kiln__strdup(name);
  if (!m->name) goto fail;
  m->in_ndim = m->out_ndim = in_ndim;
  memcpy(m->in_shape, in_shape, (size_t)in_ndim * sizeof *in_shape);
  memcpy(m->out_shape, in_shape, (size_t)in_ndim * sizeof *in_shape);
  char shape[128] = "input[";
  for (int i = 0; i < in_ndim; i++)
    snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", i ? "," : "",
             (long long)in_shape[i]);
  strcat(shape, "]");
  if (arch_append(m, "%s", shape) != KILN_OK) goto fail;
  *out = m;
  return KILN_OK;
fail:
  kiln_model_destroy(m);
  return KILN_OUT_OF_MEMORY;
}

void kiln_model_destroy(kiln_model *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_params; i++) {
    kiln_tensor_destroy(m->params[i].t);
    free(m->params[i].name);
  }
  free(m->params);
  free(m->layers);
  free(m->arch);
  free(m->name);
  free(m);
}

/* Checks that a layer may be appended now. */
static kiln_status check_open(const kiln_model *m, const char *what) {
  if (!m) return kiln__error(KILN_INVALID_ARGUMENT, "%s: model is NULL", what);
  if (m->n_trainers > 0)
    return kiln__error(KILN_INVALID_STATE,
                       "%s: model '%s' already has a trainer; add every layer before creating it",
                       what, m->name);
  if (m->n_layers > 0 && m->layers[m->n_layers - 1].act == KILN_ACT_SOFTMAX)
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "%s: model '%s' already ends with a softmax, which must be the last layer",
                       what, m->name);
  return KILN_OK;
}

static kiln_status add_param(kiln_model *m, const char *layer, const char *suffix, int ndim,
                             const int64_t *shape, int64_t fan_in, int64_t fan_out, int *index) {
  char name[128];
  snprintf(name, sizeof name, "%s.%s", layer, suffix);
  for (size_t i = 0; i < m->n_params; i++)
    if (!strcmp(m->params[i].name, name))
      return kiln__error(KILN_INVALID_ARGUMENT, "model '%s': a parameter named '%s' exists already",
                         m->name, name);
  if (m->n_params == m->cap_params) {
    size_t cap = m->cap_params ? 2 * m->cap_params : 8;
    nn_param *p = kiln__realloc(m->params, cap * sizeof *p);
    if (!p) return KILN_OUT_OF_MEMORY;
    m->params = p;
    m->cap_params = cap;
  }
  nn_param *p = &m->params[m->n_params];
  memset(p, 0, sizeof *p);
  p->name = kiln__strdup(name);
  if (!p->name) return KILN_OUT_OF_MEMORY;
  kiln_status st = kiln_tensor_create(m->dev, KILN_F32, ndim, shape, &p->t);
  if (st != KILN_OK) {
    free(p->name);
    return st;
  }
  p->fan_in = fan_in;
  p->fan_out = fan_out;
  *index = (int)m->n_params++;
  return KILN_OK;
}

static kiln_status push_layer(kiln_model *m, const nn_layer *l) {
  if (m->n_layers == m->cap_layers) {
    size_t cap = m->cap_layers ? 2 * m->cap_layers : 8;
    nn_layer *p = kiln__realloc(m->layers, cap * sizeof *p);
    if (!p) return KILN_OUT_OF_MEMORY;
    m->layers = p;
    m->cap_layers = cap;
  }
  m->layers[m->n_layers++] = *l;
  return KILN_OK;
}

static kiln_status check_name(const kiln_model *m, const char *what, const char *name) {
  if (!name || !*name || strlen(name) >= sizeof(((nn_layer *)0)->name) || strchr(name, ' ') ||
      strchr(name, '"'))
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "%s: model '%s': a layer name needs 1 to 63 characters, no spaces or quotes",
                       what, m->name);
  return KILN_OK;
}

kiln_status kiln_model_conv2d(kiln_model *m, const char *name, int filters, int kernel,
                              kiln_activation act) {
  char buf[128];
  kiln_status st = check_open(m, "kiln_model_conv2d");
  if (st == KILN_OK) st = check_name(m, "kiln_model_conv2d", name);
  if (st != KILN_OK) return st;
  if (filters < 1 || kernel < 1 || !act_name(act))
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "conv2d '%s': filters %d and kernel %d must be >= 1, activation %d known",
                       name, filters, kernel, (int)act);
  if (m->out_ndim != 3 || m->out_shape[1] < kernel || m->out_shape[2] < kernel)
    return kiln__error(KILN_SHAPE_MISMATCH,
                       "conv2d '%s': input %s must be [C, H, W] with H, W >= kernel %d", name,
                       kiln__shape_str(buf, sizeof buf, m->out_ndim, m->out_shape), kernel);
  int64_t C = m->out_shape[0];
  nn_layer l = {NN_CONV2D, "", filters, kernel, act, -1, -1};
  snprintf(l.name, sizeof l.name, "%s", name);
  int64_t wshape[4] = {filters, C, kernel, kernel}, bshape[1] = {filters};
  int64_t k2 = (int64_t)kernel * kernel;
  st = add_param(m, name, "weight", 4, wshape, C * k2, filters * k2, &l.weight);
  if (st == KILN_OK) st = add_param(m, name, "bias", 1, bshape, 0, 0, &l.bias);
  if (st == KILN_OK) st = push_layer(m, &l);
  if (st != KILN_OK) return st;
  m->out_shape[0] = filters;
  m->out_shape[1] -= kernel - 1;
  m->out_shape[2] -= kernel - 1;
  return arch_append(m, "conv2d(%s,%d,%d,%s)", name, filters, kernel, act_name(act));
}

kiln_status kiln_model_maxpool2d(kiln_model *m, int size) {
  char buf[128];
  kiln_status st = check_open(m, "kiln_model_maxpool2d");
  if (st != KILN_OK) return st;
  if (size < 1)
    return kiln__error(KILN_INVALID_ARGUMENT, "maxpool2d: size %d must be >= 1", size);
  if (m->out_ndim != 3 || m->out_shape[1] < size || m->out_shape[2] < size)
    return kiln__error(KILN_SHAPE_MISMATCH,
                       "maxpool2d(%d): input %s must be [C, H, W] with H, W >= %d", size,
                       kiln__shape_str(buf, sizeof buf, m->out_ndim, m->out_shape), size);
  nn_layer l = {NN_MAXPOOL2D, "", 0, size, KILN_ACT_NONE, -1, -1};
  st = push_layer(m, &l);
  if (st != KILN_OK) return st;
  m->out_shape[1] /= size;
  m->out_shape[2] /= size;
  return arch_append(m, "maxpool2d(%d)", size);
}

kiln_status kiln_model_flatten(kiln_model *m) {
  kiln_status st = check_open(m, "kiln_model_flatten");
  if (st != KILN_OK) return st;
  nn_layer l = {NN_FLATTEN, "", 0, 0, KILN_ACT_NONE, -1, -1};
  st = push_layer(m, &l);
  if (st != KILN_OK) return st;
  int64_t n = kiln__numel(m->out_ndim, m->out_shape);
  m->out_ndim = 1;
  m->out_shape[0] = n;
  return arch_append(m, "flatten");
}

kiln_status kiln_model_dense(kiln_model *m, const char *name, int units, kiln_activation act) {
  char buf[128];
  kiln_status st = check_open(m, "kiln_model_dense");
  if (st == KILN_OK) st = check_name(m, "kiln_model_dense", name);
  if (st != KILN_OK) return st;
  if (units < 1 || !act_name(act))
    return kiln__error(KILN_INVALID_ARGUMENT,
                       "dense '%s': units %d must be >= 1 and activation %d known", name, units,
                       (int)act);
  if (m->out_ndim != 1)
    return kiln__error(KILN_SHAPE_MISMATCH,
                       "dense '%s': input %s must be a vector per sample; add a flatten first",
                       name, kiln__shape_str(buf, sizeof buf, m->out_ndim, m->out_shape));
  int64_t in = m->out_shape[0];
  nn_layer l = {NN_DENSE, "", units, 0, act, -1, -1};
  snprintf(l.name, sizeof l.name, "%s", name);
  int64_t wshape[2] = {units, in}, bshape[1] = {units};
  st = add_param(m, name, "weight", 2, wshape, in, units, &l.weight);
  if (st == KILN_OK) st = add_param(m, name, "bias", 1, bshape, 0, 0, &l.bias);
  if (st == KILN_OK) st = push_layer(m, &l);
  if (st != KILN_OK) return st;
  m->out_shape[0] = units;
  return arch_append(m, "dense(%s,%d,%s)", name, units, act_name(act));
}

kiln_status kiln_model_activation(kiln_model *m, kiln_activation act) {
  kiln_status st = check_open(m, "kiln_model_activation");
  if (st != KILN_OK) return st;
  if (!act_name(act) || act == KILN_ACT_NONE)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_activation: unknown activation %d",
                       (int)act);
  nn_layer l = {NN_ACTIVATION, "", 0, 0, act, -1, -1};
  st = push_layer(m, &l);
  if (st != KILN_OK) return st;
  return arch_append(m, "%s", act_name(act));
}

/* splitmix64's finaliser: a bijective 64-bit mix. */
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

kiln_status kiln_model_init(kiln_model *m, uint64_t seed) {
  if (!m) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_init: model is NULL");
  float *buf = NULL;
  size_t cap = 0;
  kiln_status st = KILN_OK;
  for (size_t i = 0; i < m->n_params; i++) {
    nn_param *p = &m->params[i];
    int64_t n = kiln_tensor_numel(p->t);
    if ((size_t)n > cap) {
      float *nb = kiln__realloc(buf, (size_t)n * sizeof *buf);
      if (!nb) {
        st = KILN_OUT_OF_MEMORY;
        goto fail;
      }
      buf = nb;
      cap = (size_t)n;
    }
    if (p->fan_in + p->fan_out == 0) {
      memset(buf, 0, (size_t)n * sizeof *buf);
    } else {
      /* Glorot uniform: U(-limit, limit). Element j of parameter i is a pure
       * function of (seed, i, j). */
      double limit = sqrt(6.0 / (double)(p->fan_in + p->fan_out));
      uint64_t key = mix64(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) ^
                     mix64((uint64_t)i + 0xD1B54A32D192ED03ull);
      for (int64_t j = 0; j < n; j++) {
        uint64_t r = mix64(key + (uint64_t)j * 0x9E3779B97F4A7C15ull);
        double u = (double)(r >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
        buf[j] = (float)((2.0 * u - 1.0) * limit);
      }
    }
    st = kiln_tensor_upload(p->t, buf, (size_t)n * sizeof *buf);
    if (st != KILN_OK) goto fail;
  }
fail:
  free(buf);
  return st;
}

const char *kiln_model_name(const kiln_model *m) { return m ? m->name : NULL; }
const char *kiln_model_architecture(const kiln_model *m) { return m ? m->arch : NULL; }
kiln_device *kiln_model_device(const kiln_model *m) { return m ? m->dev : NULL; }
size_t kiln_model_param_count(const kiln_model *m) { return m ? m->n_params : 0; }

kiln_status kiln_model_param(const kiln_model *m, size_t i, const char **name,
                             kiln_tensor **tensor) {
  if (!m || i >= m->n_params)
    return kiln__error(KILN_INVALID_ARGUMENT, "kiln_model_param: index %zu out of range (%zu params)",
                       i, m ? m->n_params : 0);
  if (name) *name = m->params[i].name;
  if (tensor) *tensor = m->params[i].t;
  return KILN_OK;
}

int64_t kiln_model_numel(const kiln_model *m) {
  int64_t n = 0;
  for (size_t i = 0; m && i < m->n_params; i++) n += kiln_tensor_numel(m->params[i].t);
  return n;
}

int kiln_model_output_shape(const kiln_model *m, int64_t *shape) {
  if (!m) return -1;
  if (shape) memcpy(shape, m->out_shape, (size_t)m->out_ndim * sizeof *shape);
  return m->out_ndim;
}

/* Records a build error in g (if it has none yet) and in the thread's
 * last error, as the graph-building functions do. */
static kiln_node *graph_fail(kiln_graph *g, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static kiln_node *graph_fail(kiln_graph *g, kiln_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  kiln__verror(st, fmt, ap);
  va_end(ap);
  if (g && g->status == KILN_OK) {
    g->status = st;
    snprintf(g->error, sizeof g->error, "%s", kiln_last_error());
  }
  return NULL;
}

static kiln_node *apply_act(kiln_graph *g, kiln_node *h, kiln_activation act) {
  switch (act) {
    case KILN_ACT_RELU: return kiln_relu(g, h);
    case KILN_ACT_TANH: return kiln_tanh(g, h);
    case KILN_ACT_SIGMOID: return kiln_sigmoid(g, h);
    case KILN_ACT_SOFTMAX: return kiln_softmax(g, h);
    default: return h;
  }
}

kiln_node *kiln_model_forward(kiln_model *m, kiln_graph *g, kiln_node *x, int with_softmax,
                              kiln_node **params) {
  char b1[128], b2[128];
  if (!m || !g) return graph_fail(g, KILN_INVALID_ARGUMENT, "kiln_model_forward: model or graph is NULL");
  if (!x) return NULL; /* the error that made x NULL is already recorded */
  int64_t xs[KILN_MAX_DIMS], want[KILN_MAX_DIMS];
  int xn = kiln_node_shape(x, xs);
  want[0] = xn > 0 ? xs[0] : 1;
  memcpy(want + 1, m->in_shape, (size_t)m->in_ndim * sizeof *want);
  if (xn != m->in_ndim + 1 || memcmp(xs + 1, m->in_shape, (size_t)m->in_ndim * sizeof *xs) != 0)
    return graph_fail(g, KILN_SHAPE_MISMATCH,
                      "model '%s': input %s does not match the model's [N, ...] input %s", m->name,
                      kiln__shape_str(b1, sizeof b1, xn, xs),
                      kiln__shape_str(b2, sizeof b2, m->in_ndim + 1, want));
  if (kiln_node_dtype(x) != KILN_F32)
    return graph_fail(g, KILN_DTYPE_MISMATCH, "model '%s': input dtype %s, expected f32", m->name,
                      kiln_dtype_name(kiln_node_dtype(x)));
  kiln_node **p = kiln__calloc(m->n_params ? m->n_params : 1, sizeof *p);
  if (!p) return graph_fail(g, KILN_OUT_OF_MEMORY, "model '%s': out of memory", m->name);
  for (size_t i = 0; i < m->n_params; i++) {
    p[i] = kiln_param(g, m->params[i].name, m->params[i].t);
    if (params) params[i] = p[i];
  }
  kiln_node *h = x;
  kiln_pool2d_params pool;
  for (size_t i = 0; i < m->n_layers; i++) {
    const nn_layer *l = &m->layers[i];
    switch (l->kind) {
      case NN_CONV2D: h = kiln_conv2d(g, h, p[l->weight], p[l->bias], NULL); break;
      case NN_MAXPOOL2D:
        memset(&pool, 0, sizeof pool);
        pool.kernel_h = pool.kernel_w = pool.stride_h = pool.stride_w = l->kernel;
        h = kiln_maxpool2d(g, h, &pool);
        break;
      case NN_FLATTEN: h = kiln_flatten(g, h); break;
      case NN_DENSE:
        /* [N, in] @ [units, in]^T + [units] */
        h = kiln_add(g, kiln_matmul(g, h, p[l->weight], 0, 1), p[l->bias]);
        break;
      case NN_ACTIVATION: break;
    }
    int last = i + 1 == m->n_layers;
    if (!(l->act == KILN_ACT_SOFTMAX && last && !with_softmax)) h = apply_act(g, h, l->act);
  }
  free(p);
  return h;
}

kiln_status kiln_optimizer_defaults(kiln_optimizer_kind kind, kiln_optimizer_config *cfg) {
  if (!cfg) return kiln__error(KILN_INVALID_ARGUMENT, "kiln_optimizer_defaults: cfg is NULL");
  memset(cfg, 0, sizeof *cfg);
  cfg->struct_size = sizeof *cfg;
  cfg->kind = kind;
  switch (kind) {
    case KILN_OPTIM_ADAM:
    case KILN_OPTIM_ADAMW:
      cfg->lr = 1e-3f;
      cfg->beta1 = 0.9f;
      cfg->beta2 = 0.999f;
      cfg->eps = 1e-7f;
      cfg->weight_decay = kind == KILN_OPTIM_ADAMW ? 1e-2f : 0.0f;
      return KILN_OK;
    case KILN_OPTIM_SGD:
      cfg->lr = 1e-2f;
      return KILN_OK;
    default:
      return kiln__error(KILN_INVALID_ARGUMENT, "kiln_optimizer_defaults: unknown optimizer %d",
                         (int)kind);
  }
}

const char *kiln_optimizer_name(kiln_optimizer_kind kind) {
  switch (kind) {
    case KILN_OPTIM_ADAM: return "adam";
    case KILN_OPTIM_ADAMW: return "adamw";
    case KILN_OPTIM_SGD: return "sgd";
    default: return "unknown";
  }
}

kiln_status kiln_model_mnist_cnn(kiln_device *dev, uint64_t seed, kiln_model **out) {
  static const int64_t in[3] = {1, 28, 28};
  kiln_model *m = NULL;
  kiln_status st = kiln_model_create(dev, "mnist-cnn", 3, in, &m);
  if (st == KILN_OK) st = kiln_model_conv2d(m, "conv1", 32, 3, KILN_ACT_RELU);
  if (st == KILN_OK) st = kiln_model_maxpool2d(m, 2);
  if (st == KILN_OK) st = kiln_model_conv2d(m, "conv2", 64, 3, KILN_ACT_RELU);
  if (st == KILN_OK) st = kiln_model_maxpool2d(m, 2);
  if (st == KILN_OK) st = kiln_model_conv2d(m, "conv3", 64, 3, KILN_ACT_RELU);
  if (st == KILN_OK) st = kiln_model_flatten(m);
  if (st == KILN_OK) st = kiln_model_dense(m, "fc1", 64, KILN_ACT_RELU);
  if (st == KILN_OK) st = kiln_model_dense(m, "fc2", 10, KILN_ACT_SOFTMAX);
  if (st == KILN_OK) st = kiln_model_init(m, seed);
  if (st != KILN_OK) {
    kiln_model_destroy(m);
    return st;
  }
  *out = m;
  return KILN_OK;
}
