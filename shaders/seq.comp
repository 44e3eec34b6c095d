#version 450
// Sequence-model gathers, one thread per output element (grid-stride):
//   MODE 0 embedding:          y [N..., C] = w[idx[r], :] (zeros for idx outside [0, V))
//                              a = w [V, C], b = idx [N] (i32)
//   MODE 1 embedding_backward: dw [V, C] = sum over r in index order with idx[r] = v
//                              of dy[r, :] (deterministic; no atomics)
//                              a = dy [N, C], b = idx [N] (i32)
//   MODE 2 dropout:            y = u >= p ? x * keep_scale : 0, u from word 0 of
//                              Philox4x32-10 with key (k0, k1) and counter
//                              (i, 0, stream, counter); a = x, b = counter [] (f32)
// Bindings: 0 a, 1 b (32-bit words), 2 y (written). Spec: 0 workgroup size, 1 MODE.
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint MODE = 0;
layout(set = 0, binding = 0) readonly buffer A { float a[]; };
layout(set = 0, binding = 1) readonly buffer B { uint b[]; };
layout(set = 0, binding = 2) writeonly buffer Y { float y[]; };
layout(push_constant, std430) uniform PC {
  uint a_off, b_off, y_off;
  uint n;              // output elements
  uint V, C, N;        // table rows, row length, lookups
  float p, keep_scale; // dropout
  uint k0, k1, stream;
} pc;

uint philox_word0(uint i, uint counter) {
  uvec4 c = uvec4(i, 0u, pc.stream, counter);
  uint k0 = pc.k0, k1 = pc.k1;
  for (int r = 0; r < 10; r++) {
    uint hi0, lo0, hi1, lo1;
    umulExtended(0xD2511F53u, c.x, hi0, lo0);
    umulExtended(0xCD9E8D57u, c.z, hi1, lo1);
    c = uvec4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c.x;
}

void main() {
  uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
  for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
    float r = 0.0;
    if (MODE == 0) {
      int v = int(b[pc.b_off + i / pc.C]);
      if (v >= 0 && uint(v) < pc.V) r = a[pc.a_off + uint(v) * pc.C + i % pc.C];
    } else if (MODE == 1) {
      uint v = i / pc.C, c = i % pc.C;
      for (uint row = 0; row < pc.N; row++)
        if (int(b[pc.b_off + row]) == int(v)) r += a[pc.a_off + row * pc.C + c];
    } else {
      float cf = uintBitsToFloat(b[pc.b_off]);
      uint counter = cf >= 0.0 ? uint(cf) : uint(int(cf));
      float u = float(philox_word0(i, counter) >> 8) * (1.0 / 16777216.0);
      r = u >= pc.p ? a[pc.a_off + i] * pc.keep_scale : 0.0;
    }
    y[pc.y_off + i] = r;
  }
}
