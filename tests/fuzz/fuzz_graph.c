/*
 * fuzz_graph.c - random graph builder calls with random shapes and
 * parameters, then backward, compile and run on the CPU device.
 *
 * The input is a program: each step picks a builder (every public builder,
 * plus kiln_node_create with any op number and parameters) and its operands
 * among the nodes made so far. Builders must refuse bad shapes with NULL and
 * a sticky graph error, never crash; a graph that builds must compile or be
 * refused with a status, and one that compiles must run (inputs zero) and
 * hand back its outputs. Shapes stay small (dims 0..6) so runs are quick.
 */
#include "fuzz_common.h"
#include "kiln/kiln.h"
#include "kiln/ops.h"

#define MAX_NODES 48
#define MAX_STEPS 40

static kiln_context *ctx;
static kiln_device *dev;

static int rank_shape(fz_reader *r, int64_t *shape, int max_rank) {
  int nd = (int)fz_pick(r, (unsigned)max_rank + 1);
  for (int i = 0; i < nd; i++) {
    uint8_t b = fz_u8(r);
    shape[i] = b == 255 ? -1 : (b == 254 ? (int64_t)1 << 40 : b % 7);
  }
  return nd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) {
    /* one thread: no worker threads for LeakSanitizer to stop at exit, and
     * runs that depend only on the input */
    setenv("KILN_NUM_THREADS", "1", 1);
    if (kiln_context_create(NULL, &ctx) != KILN_OK || kiln_device_open(ctx, "cpu", 0, &dev) != KILN_OK) {
      fprintf(stderr, "fuzz_graph: no CPU device: %s\n", kiln_last_error());
      exit(1);
    }
  }
  fz_reader r = {data, size};
  kiln_graph *g = NULL;
  FZ_CHECK(kiln_graph_create(&g) == KILN_OK);
  kiln_node *nodes[MAX_NODES];
  kiln_tensor *tensors[MAX_NODES];
  int n = 0, nt = 0, n_inputs = 0;
  kiln_node *inputs[MAX_NODES];
  int backward_done = 0;

#define PICK() (n ? nodes[fz_pick(&r, (unsigned)n)] : NULL)
  for (int step = 0; step < MAX_STEPS && r.n > 0; step++) {
    int64_t shape[KILN_MAX_DIMS];
    kiln_node *out = NULL;
    unsigned what = fz_pick(&r, 24);
    switch (what) {
      case 0: {
        char name[16];
        snprintf(name, sizeof name, "in%d", n_inputs);
        int nd = rank_shape(&r, shape, 4);
        out = kiln_input(g, name, fz_u8(&r) < 200 ? KILN_F32 : KILN_I32, nd, shape);
        if (out) inputs[n_inputs++] = out;
        break;
      }
      case 1: {
        int nd = rank_shape(&r, shape, 4);
        kiln_tensor *t = NULL;
        if (nt < MAX_NODES && kiln_tensor_create(dev, KILN_F32, nd, shape, &t) == KILN_OK) {
          tensors[nt++] = t;
          char name[16];
          snprintf(name, sizeof name, "p%d", nt);
          out = fz_u8(&r) & 1 ? kiln_param(g, name, t) : kiln_state(g, name, t);
        }
        break;
      }
      case 2: {
        int nd = rank_shape(&r, shape, 3);
        out = kiln_fill(g, KILN_F32, nd, shape, (float)fz_u8(&r) / 16.0f);
        break;
      }
      case 3: out = kiln_add(g, PICK(), PICK()); break;
      case 4: out = kiln_sub(g, PICK(), PICK()); break;
      case 5: out = kiln_mul(g, PICK(), PICK()); break;
      case 6: out = kiln_div(g, PICK(), PICK()); break;
      case 7: {
        kiln_node *x = PICK();
        switch (fz_pick(&r, 6)) {
          case 0: out = kiln_neg(g, x); break;
          case 1: out = kiln_relu(g, x); break;
          case 2: out = kiln_tanh(g, x); break;
          case 3: out = kiln_sigmoid(g, x); break;
          case 4: out = kiln_exp(g, x); break;
          default: out = kiln_log(g, x); break;
        }
        break;
      }
      case 8: out = kiln_scale(g, PICK(), (float)fz_u8(&r) / 32.0f, -1.0f); break;
      case 9: {
        uint8_t f = fz_u8(&r);
        out = kiln_matmul(g, PICK(), PICK(), f & 1, (f >> 1) & 1);
        break;
      }
      case 10: {
        uint8_t m = fz_u8(&r);
        out = fz_u8(&r) & 1 ? kiln_sum(g, PICK(), m, m >> 7) : kiln_mean(g, PICK(), m, m >> 7);
        break;
      }
      case 11: {
        int nd = rank_shape(&r, shape, 4);
        out = kiln_expand(g, PICK(), nd, shape);
        break;
      }
      case 12: out = fz_u8(&r) & 1 ? kiln_softmax(g, PICK()) : kiln_log_softmax(g, PICK()); break;
      case 13: out = kiln_cross_entropy(g, PICK(), PICK()); break;
      case 14: {
        int nd = rank_shape(&r, shape, 4);
        out = kiln_reshape(g, PICK(), nd, shape);
        break;
      }
      case 15: {
        int perm[KILN_MAX_DIMS];
        for (int i = 0; i < KILN_MAX_DIMS; i++) perm[i] = fz_pick(&r, 5);
        out = kiln_transpose(g, PICK(), perm);
        break;
      }
      case 16: out = kiln_flatten(g, PICK()); break;
      case 17: {
        kiln_conv2d_params p = {fz_pick(&r, 4), fz_pick(&r, 4), fz_pick(&r, 3), fz_pick(&r, 3),
                                fz_pick(&r, 3), fz_pick(&r, 3), fz_pick(&r, 4)};
        kiln_node *x = PICK(), *w = PICK(), *b = fz_u8(&r) & 1 ? PICK() : NULL;
        out = kiln_conv2d(g, x, w, b, fz_u8(&r) & 1 ? &p : NULL);
        break;
      }
      case 18: {
        kiln_pool2d_params p = {fz_pick(&r, 4), fz_pick(&r, 4), fz_pick(&r, 4), fz_pick(&r, 4),
                                fz_pick(&r, 3), fz_pick(&r, 3), fz_u8(&r) & 1};
        out = fz_u8(&r) & 1 ? kiln_maxpool2d(g, PICK(), &p) : kiln_avgpool2d(g, PICK(), &p);
        break;
      }
      case 19: {
        kiln_node *in[KILN_OP_MAX_INPUTS];
        int ni = (int)fz_pick(&r, 4);
        for (int i = 0; i < ni; i++) in[i] = PICK();
        int64_t ip[KILN_OP_MAX_IPARAMS];
        float fp[KILN_OP_MAX_FPARAMS];
        for (int i = 0; i < KILN_OP_MAX_IPARAMS; i++) ip[i] = (int8_t)fz_u8(&r);
        for (int i = 0; i < KILN_OP_MAX_FPARAMS; i++) fp[i] = (float)(int8_t)fz_u8(&r) / 8.0f;
        int nd = rank_shape(&r, shape, 4);
        out = kiln_node_create(g, (kiln_op)fz_u8(&r), ni, in, ip, fp, KILN_F32, nd, shape);
        break;
      }
      case 20:
        if (!backward_done && n) {
          backward_done = 1;
          (void)kiln_graph_backward(g, PICK());
        }
        break;
      case 21: if (n) (void)kiln_graph_output(g, PICK()); break;
      case 22: if (n) (void)kiln_grad(g, PICK()); break;
      default: {
        kiln_node *s = PICK();
        if (s) out = kiln_increment(g, s, 1.0f);
        break;
      }
    }
    if (out) {
      FZ_CHECK(kiln_graph_status(g) == KILN_OK || 1);
      if (n < MAX_NODES) nodes[n++] = out;
    } else if (kiln_graph_status(g) != KILN_OK) {
      FZ_CHECK(kiln_graph_error(g)[0] != '\0');
    }
  }
#undef PICK
  if (kiln_graph_status(g) == KILN_OK && n) {
    (void)kiln_graph_output(g, nodes[n - 1]);
    kiln_compiled *c = NULL;
    kiln_status st = kiln_graph_compile(g, dev, &c);
    if (st == KILN_OK) {
      for (int i = 0; i < n_inputs; i++) {
        int64_t bytes = kiln_node_numel(inputs[i]) * 4;
        /* an input the output does not need is pruned, and may be huge */
        void *z = calloc(1, (size_t)bytes + 1);
        if (!z) continue;
        (void)kiln_compiled_set_input(c, inputs[i], z, (size_t)bytes);
        free(z);
      }
      FZ_CHECK(kiln_compiled_run(c) == KILN_OK);
      int64_t bytes = kiln_node_numel(nodes[n - 1]) * 4;
      void *o = malloc((size_t)bytes + 1);
      FZ_CHECK(o != NULL);
      FZ_CHECK(kiln_compiled_get_output(c, nodes[n - 1], o, (size_t)bytes) == KILN_OK);
      free(o);
      kiln_compiled_destroy(c);
    } else {
      FZ_CHECK(kiln_last_error()[0] != '\0');
    }
  }
  kiln_graph_destroy(g);
  for (int i = 0; i < nt; i++) kiln_tensor_destroy(tensors[i]);
  return 0;
}
