// wg_reduce.glsl - sum and max of one value per invocation over the
// workgroup, for the reduction shaders. Every invocation of the workgroup
// must call them in uniform control flow; every one gets the result.
// The includer defines the specialization constant WG (the workgroup size,
// a power of two) and, for the subgroup variant, KVK_SUBGROUP.
//
//   KVK_SUBGROUP: subgroupAdd/subgroupMax within each subgroup, one partial
//     per subgroup in shared memory, then every invocation adds the
//     gl_NumSubgroups partials in order: two barriers. No subgroup size is
//     assumed (gl_SubgroupID, gl_NumSubgroups; 1 to WG subgroups).
//   otherwise: a shared-memory tree, log2(WG) + 1 barriers.
#ifdef KVK_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

shared float wg_red[WG];

#ifdef KVK_SUBGROUP
float wg_sum(float v) {
  v = subgroupAdd(v);
  if (subgroupElect()) wg_red[gl_SubgroupID] = v;
  barrier();
  float s = wg_red[0];
  for (uint i = 1; i < gl_NumSubgroups; i++) s += wg_red[i];
  barrier();
  return s;
}

float wg_max(float v) {
  v = subgroupMax(v);
  if (subgroupElect()) wg_red[gl_SubgroupID] = v;
  barrier();
  float m = wg_red[0];
  for (uint i = 1; i < gl_NumSubgroups; i++) m = max(m, wg_red[i]);
  barrier();
  return m;
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
