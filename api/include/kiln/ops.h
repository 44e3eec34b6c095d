/*
 * kiln/ops.h - the op set. Numbers are explicit and never reused; a plugin
 * that sees a number it does not know reports it unsupported.
 *
 * Conventions for every op:
 *  - Tensors are dense, row-major (the last axis varies fastest).
 *  - "Broadcast" means NumPy rules: shapes are right-aligned, and each pair
 *    of dimensions must be equal or one of them 1.
 *  - Each node has integer parameters ip[0..7] and float parameters
 *    fp[0..7]; the meaning of each is listed beside the op. Unlisted
 *    parameters are zero.
 *  - The shape of a node's output is given to the plugin in the tensor
 *    descriptor; the plugin never infers it.
 *  - Ops marked IN-PLACE write their inputs as stated, and their output
 *    descriptor refers to the same tensor as inputs[0].
 */
#ifndef KILN_OPS_H
#define KILN_OPS_H

typedef enum kiln_op {
  KILN_OP_NONE = 0,

  /* Binary elementwise with broadcasting. inputs (a, b), same dtype. */
  KILN_OP_ADD = 1,              /* a + b */
  KILN_OP_SUB = 2,              /* a - b */
  KILN_OP_MUL = 3,              /* a * b */
  KILN_OP_DIV = 4,              /* a / b */

  /* Unary elementwise. input (x); output has x's shape. */
  KILN_OP_NEG = 10,             /* -x */
  KILN_OP_RELU = 11,            /* max(x, 0) */
  KILN_OP_TANH = 12,            /* tanh(x) */
  KILN_OP_SIGMOID = 13,         /* 1 / (1 + exp(-x)) */
  KILN_OP_EXP = 14,             /* exp(x) */
  KILN_OP_LOG = 15,             /* log(x) */
  KILN_OP_SCALE = 16,           /* fp[0] * x + fp[1] */

  /* Backward helpers of unary ops. */
  KILN_OP_RELU_BACKWARD = 20,   /* inputs (dy, x): dy * (x > 0); x may be relu(x) */
  KILN_OP_TANH_BACKWARD = 21,   /* inputs (dy, y): dy * (1 - y*y), y = tanh(x) */
  KILN_OP_SIGMOID_BACKWARD = 22,/* inputs (dy, y): dy * y * (1 - y), y = sigmoid(x) */

  /* Matrix product. inputs (a, b).
   * ip[0] = transpose a, ip[1] = transpose b (0 or 1).
   * a: [..., M, K] ([..., K, M] if transposed), b: [..., K, N] ([..., N, K]
   * if transposed), output [..., M, N]. Both have rank >= 2; the leading
   * (batch) dimensions broadcast. */
  KILN_OP_MATMUL = 30,

  /* Reductions. input (x). ip[0] = bitmask of reduced axes (bit i = axis i),
   * ip[1] = keepdim (1: reduced axes stay with size 1; 0: they are removed). */
  KILN_OP_SUM = 40,
  KILN_OP_MEAN = 41,
  /* Broadcast x to the output shape (NumPy rules). input (x). */
  KILN_OP_EXPAND = 42,

  /* Softmax family over the last axis. */
  KILN_OP_SOFTMAX = 50,               /* input (x) */
  KILN_OP_LOG_SOFTMAX = 51,           /* input (x) */
  KILN_OP_SOFTMAX_BACKWARD = 52,      /* inputs (dy, y): y * (dy - sum(dy * y)) */
  KILN_OP_LOG_SOFTMAX_BACKWARD = 53,  /* inputs (dy, y): dy - exp(y) * sum(dy) */
  /* Mean cross-entropy of log_softmax(logits) against integer labels.
   * inputs (logits [N, C] f32, labels [N] i32); output a scalar (rank 0).
   * A label outside [0, C) contributes zero loss and zero gradient but
   * still counts in N. */
  KILN_OP_CROSS_ENTROPY = 54,
  /* inputs (dloss [] f32, logits [N, C], labels [N] i32); output [N, C]:
   * dloss * (softmax(logits) - onehot(labels)) / N. */
  KILN_OP_CROSS_ENTROPY_BACKWARD = 55,

  /* Layout. */
  KILN_OP_RESHAPE = 60,         /* input (x); same element count, new shape */
  KILN_OP_TRANSPOSE = 61,       /* input (x); output axis i = input axis ip[i] */
  KILN_OP_COPY = 62,            /* input (x); a copy */
  KILN_OP_FILL = 63,            /* no inputs; every element = fp[0] */
  /* input (x) u8, i32 or f32; output f32 of x's shape: fp[0] * (float)x +
   * fp[1] (ABI 1.2). Lets a host upload bytes (pixels) and scale them on the
   * device: a quarter of the upload of f32. op_support is asked about f32
   * (the output), and a plugin that claims it takes all three input dtypes.
   * The gradient reaches an f32 x only. */
  KILN_OP_CAST = 64,

  /* 2-D convolution, NCHW. inputs (x [N, C, H, W], w [O, C/groups, KH, KW],
   * optional bias [O]); output [N, O, OH, OW] with
   * OH = (H + 2*pad_h - dil_h*(KH-1) - 1) / stride_h + 1 (OW likewise).
   * ip[0] stride_h, ip[1] stride_w, ip[2] pad_h, ip[3] pad_w,
   * ip[4] dil_h, ip[5] dil_w, ip[6] groups. Padding reads zeros. */
  KILN_OP_CONV2D = 70,
  /* inputs (dy [N, O, OH, OW], w); output dx with x's shape. Params as CONV2D. */
  KILN_OP_CONV2D_BACKWARD_INPUT = 71,
  /* inputs (dy [N, O, OH, OW], x); output dw with w's shape. Params as CONV2D. */
  KILN_OP_CONV2D_BACKWARD_WEIGHT = 72,

  /* 2-D pooling, NCHW. input (x [N, C, H, W]); output [N, C, OH, OW] with
   * OH = (H + 2*pad_h - KH) / stride_h + 1 (OW likewise).
   * ip[0] KH, ip[1] KW, ip[2] stride_h, ip[3] stride_w, ip[4] pad_h, ip[5] pad_w.
   * Max pooling ignores padding; the gradient goes to the first maximum of a
   * window in row-major order. Average pooling: ip[6] = count_include_pad
   * (1: divide by KH*KW, as PyTorch's default; 0: by the in-bounds count). */
  KILN_OP_MAXPOOL2D = 73,
  KILN_OP_MAXPOOL2D_BACKWARD = 74,    /* inputs (dy, x); output dx with x's shape */
  KILN_OP_AVGPOOL2D = 75,
  KILN_OP_AVGPOOL2D_BACKWARD = 76,    /* inputs (dy); output dx, shape given */

  /* Optimizer updates. IN-PLACE on persistent tensors.
   * SGD: inputs (param, grad[, velocity]). fp[0] lr, fp[1] momentum,
   * fp[2] weight_decay, fp[3] dampening; ip[0] nesterov.
   * g = grad + wd*p; if momentum != 0: v = momentum*v + (1-dampening)*g and
   * g = nesterov ? g + momentum*v : v; then p -= lr*g. Writes param and
   * velocity. With v starting at zero and dampening 0 this is exactly
   * torch.optim.SGD. */
  KILN_OP_SGD = 80,
  /* ADAM: inputs (param, grad, m, v, step[, lr]). step: f32 scalar holding the
   * 1-based step number t (already incremented for this step). lr: optional
   * f32 scalar that overrides fp[0] (for schedules).
   * fp[0] lr, fp[1] beta1, fp[2] beta2, fp[3] eps, fp[4] weight_decay;
   * ip[0] decoupled (1: AdamW, p -= lr*wd*p; 0: Adam, g += wd*p).
   * m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
   * p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
   * Writes param, m, v. */
  KILN_OP_ADAM = 81,
  /* INCREMENT: input (x); x += fp[0]. IN-PLACE. */
  KILN_OP_INCREMENT = 82,

  /* ---- sequence models (numbers 90..) ---- */
  /* Embedding lookup (a gather of rows). inputs (weight [V, C] f32,
   * indices [...] i32); output [..., C]: out[i, :] = weight[indices[i], :].
   * An index outside [0, V) gives a row of zeros (and no gradient). */
  KILN_OP_EMBEDDING = 90,
  /* inputs (dy [..., C] f32, indices [...] i32); output dweight [V, C]
   * (shape given): the scatter-add of the rows of dy into the rows their
   * indices name, summed in index order (deterministic). */
  KILN_OP_EMBEDDING_BACKWARD = 91,
  /* Slice along one axis. input (x). ip[0] axis (0 <= axis < rank),
   * ip[1] start, ip[2] length (>= 1, start + length <= x's dim).
   * Output: x's shape with that axis set to length. */
  KILN_OP_SLICE = 92,
  /* input (dy); output dx (shape given, x's shape): zeros, with dy written
   * at [start, start + length) along the axis. Params as SLICE. */
  KILN_OP_SLICE_BACKWARD = 93,
  /* Inverted dropout with a counter-based generator. inputs (x, counter []
   * f32, a kiln_state that the graph increments each step). fp[0] p in
   * [0, 1); ip[0] seed low 32 bits, ip[1] seed high 32 bits, ip[2] stream
   * (distinguishes dropout sites of one graph).
   * Element i is kept iff u >= p, where u = (r >> 8) * 2^-24 and r is word 0
   * of Philox4x32-10 with key (seed lo, seed hi) and counter
   * (i lo 32, i hi 32, stream, (uint32)counter). y = kept ? x / (1 - p) : 0.
   * The mask depends only on (seed, stream, counter, i), so the backward
   * pass is this same op applied to dy with the same inputs. */
  KILN_OP_DROPOUT = 94,
  /* Gradient clipping coefficient. input (sumsq [] f32: the sum of squares
   * of all gradients); output [] f32: min(1, fp[0] / (sqrt(sumsq) + fp[1])),
   * fp[0] the maximum norm (> 0), fp[1] eps (PyTorch uses 1e-6). */
  KILN_OP_CLIP_COEF = 95,
  /* ASSIGN: inputs (dst, src); dst = src. IN-PLACE on dst, a persistent
   * tensor of src's shape and dtype (e.g. an RNN's carried hidden state). */
  KILN_OP_ASSIGN = 96,

  /* ---- transformers (numbers 100..) ---- */
  /* Layer normalisation over the last axis (torch.nn.LayerNorm).
   * inputs (x [..., C], gamma [C], beta [C]); fp[0] eps (> 0).
   * y = (x - mean) / sqrt(var + eps) * gamma + beta, var the biased
   * variance of each row. */
  KILN_OP_LAYERNORM = 100,
  /* inputs (dy [..., C], x, gamma); output dx (x's shape). fp[0] eps. The
   * row statistics are recomputed from x. */
  KILN_OP_LAYERNORM_BACKWARD = 101,
  /* inputs (dy [..., C], x); output [2, C]: row 0 dgamma = the sum over
   * rows of dy * xhat, row 1 dbeta = the sum over rows of dy, with
   * xhat = (x - mean) / sqrt(var + eps). fp[0] eps. */
  KILN_OP_LAYERNORM_BACKWARD_PARAMS = 102,
  /* GELU. input (x). ip[0] 0: exact, 0.5 x (1 + erf(x / sqrt(2)))
   * (torch.nn.GELU()); 1: the tanh approximation
   * 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). */
  KILN_OP_GELU = 103,
  KILN_OP_GELU_BACKWARD = 104,        /* inputs (dy, x); dy * gelu'(x); params as GELU */
  /* Fused multi-head self-attention. input (qkv [B, T, 3C] f32): q, k and v
   * are its columns [0, C), [C, 2C) and [2C, 3C); head h of each is that
   * part's columns [h D, (h + 1) D), D = C / H.
   * ip[0] H (>= 1, divides C); ip[1] causal (1: position t attends only to
   * positions <= t; 0: to all T). fp[0] scale (0 means 1 / sqrt(D)).
   * Output y [B, T, C]: head h's columns [h D, (h + 1) D) hold
   * softmax(scale q_h k_h^T + mask) v_h. Implementations must not
   * materialise a [T, T] matrix per head (use an online softmax over key
   * tiles): the memory it needs is linear in T. */
  KILN_OP_ATTENTION = 105,
  /* inputs (dy [B, T, C], qkv, y: the forward output); output dqkv
   * [B, T, 3C]. Params as ATTENTION. The softmax statistics are recomputed
   * from qkv; memory stays linear in T. */
  KILN_OP_ATTENTION_BACKWARD = 106,
  /* Learning-rate schedule: linear warmup, then cosine decay (nanoGPT's
   * get_lr). input (step [] f32: the 1-based step t, as ADAM's); output []
   * f32. fp[0] max lr, fp[1] min lr; ip[0] warmup steps W >= 0, ip[1] decay
   * steps S >= W. With i = t - 1: i < W: max (i + 1) / (W + 1); i > S: min;
   * else min + 0.5 (1 + cos(pi r)) (max - min), r = (i - W) / (S - W)
   * (r = 0 when S == W). */
  KILN_OP_LR_SCHEDULE = 107,

  KILN_OP_COUNT_ /* one past the largest number in use; not an op */
} kiln_op;

/* Integer and float parameter slots per node. */
#define KILN_OP_MAX_IPARAMS 8
#define KILN_OP_MAX_FPARAMS 8
/* Maximum inputs of one node. */
#define KILN_OP_MAX_INPUTS 8

#endif /* KILN_OPS_H */
