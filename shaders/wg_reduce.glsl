// wg_reduce.glsl - sum and max of one value per invocation over the
// workgroup, for the reduction shaders. Every invocation of the workgroup
// must call them in uniform control flow; every one gets the result.
// The includer defines the specialization constant WG (the workgroup size,
// a power of two) and, for the subgroup variant, KVK_SUBGROUP.
//
//   KVK_SUBGROUP: subgroupAdd/subgroupMax within each subgroup, one partial
//     per subgroup in shared memory, reduced again by subgroups until one is
//     left, then shared with the workgroup: 2 barriers per level plus 2. No
//     subgroup size is assumed (gl_SubgroupSize, gl_SubgroupID,
//     gl_NumSubgroups; 1 to WG subgroups).
//   otherwise: a shared-memory tree, log2(WG) + 1 barriers.
#ifdef KVK_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

shared float wg_red[WG];

#ifdef KVK_SUBGROUP
// Level by level: each subgroup reduces gl_SubgroupSize values to one
// partial in wg_red[subgroup], until one value is left; ceil(log_S(WG))
// levels for subgroups of S (3 for 256 lanes of 8, 2 for 32).
float wg_sum(float v) {
  const uint lid = gl_LocalInvocationIndex;
  v = subgroupAdd(v);
  for (uint n = gl_NumSubgroups; n > 1; n = (n + gl_SubgroupSize - 1) / gl_SubgroupSize) {
    if (subgroupElect()) wg_red[gl_SubgroupID] = v;
    barrier();
    v = subgroupAdd(lid < n ? wg_red[lid] : 0.0);
    barrier();
  }
  if (lid == 0) wg_red[0] = v;
  barrier();
  v = wg_red[0];
  barrier();
  return v;
}

float wg_max(float v) {
  const uint lid = gl_LocalInvocationIndex;
  v = subgroupMax(v);
  for (uint n = gl_NumSubgroups; n > 1; n = (n + gl_SubgroupSize - 1) / gl_SubgroupSize) {
    if (subgroupElect()) wg_red[gl_SubgroupID] = v;
    barrier();
    v = subgroupMax(lid < n ? wg_red[lid] : uintBitsToFloat(0xff800000u));
    barrier();
  }
  if (lid == 0) wg_red[0] = v;
  barrier();
  v = wg_red[0];
  barrier();
  return v;
}
#else
float wg_sum(float v) {
  const uint lid = gl_LocalInvocationIndex;
  wg_red[lid] = v;
  barrier();
  for (uint h = WG / 2; h > 0; h >>= 1) {
    if (lid < h) wg_red[lid] += wg_red[lid + h];
    barrier();
  }
  float s = wg_red[0];
  barrier();
  return s;
}

float wg_max(float v) {
  const uint lid = gl_LocalInvocationIndex;
  wg_red[lid] = v;
  barrier();
  for (uint h = WG / 2; h > 0; h >>= 1) {
    if (lid < h) wg_red[lid] = max(wg_red[lid], wg_red[lid + h]);
    barrier();
  }
  float m = wg_red[0];
  barrier();
  return m;
}
#endif
