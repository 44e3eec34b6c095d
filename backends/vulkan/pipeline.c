/*
 * pipeline.c - shader modules, layouts and the pipeline cache.
 *
 * Every shader is embedded as SPIR-V by the build (kvk_spirv_NAME[] in the
 * generated kvk-spirv.c). A shader's descriptor set 0 holds n storage
 * buffers at bindings 0..n-1; all shaders share one 128-byte push-constant
 * range. Layouts are made per binding count at device open; shader modules
 * too. Pipelines are created on first use for a (shader, specialization
 * constants) pair and kept for the device's lifetime, so graphs compiled
 * again (a new batch size, a new model) reuse them; a VkPipelineCache
 * backs the driver's own compilation.
 *
 * The reduction shaders are also built as NAME_subgroup (subgroup
 * arithmetic, `// kvk-variant:` in the shader); a device that has it
 * (kvk_use_subgroups) gets that module under the same kvk_shader, so the
 * op files plan the same dispatches either way.
 */
#include <stdlib.h>
#include <string.h>

#include "vk-impl.h"

#define SHADER_(name)                  \
  extern const uint32_t kvk_spirv_##name[]; \
  extern const size_t kvk_spirv_##name##_size;
SHADER_(fill)
SHADER_(unary)
SHADER_(binary)
SHADER_(gather)
SHADER_(matmul)
SHADER_(reduce)
SHADER_(softmax)
SHADER_(softmax_backward)
SHADER_(cross_entropy)
SHADER_(cross_entropy_backward)
SHADER_(sgd)
SHADER_(adam)
SHADER_(conv2d)
SHADER_(pool2d)
SHADER_(seq)
SHADER_(layernorm)
SHADER_(layernorm_params)
SHADER_(gelu)
SHADER_(attention)
SHADER_(attention_backward)
SHADER_(lr_schedule)
SHADER_(cast)
SHADER_(reduce_subgroup)
SHADER_(softmax_subgroup)
SHADER_(softmax_backward_subgroup)
SHADER_(cross_entropy_subgroup)
SHADER_(cross_entropy_backward_subgroup)
#undef SHADER_

typedef struct shader_desc {
  const char *name;
  const uint32_t *code;
  const size_t *size;
  uint32_t bindings;
  const uint32_t *sg_code;     /* the subgroup variant, or NULL */
  const size_t *sg_size;
} shader_desc;

#define S_(e, name, nb) [e] = {#name, kvk_spirv_##name, &kvk_spirv_##name##_size, nb, NULL, NULL}
#define SG_(e, name, nb)                                                          \
  [e] = {#name, kvk_spirv_##name, &kvk_spirv_##name##_size, nb,                  \
         kvk_spirv_##name##_subgroup, &kvk_spirv_##name##_subgroup_size}
static const shader_desc shaders[KVK_SHADER_COUNT] = {
    S_(KVK_SHADER_FILL, fill, 1),
    S_(KVK_SHADER_UNARY, unary, 2),
    S_(KVK_SHADER_BINARY, binary, 3),
    S_(KVK_SHADER_GATHER, gather, 2),
    S_(KVK_SHADER_MATMUL, matmul, 3),
    SG_(KVK_SHADER_REDUCE, reduce, 2),
    SG_(KVK_SHADER_SOFTMAX, softmax, 2),
    SG_(KVK_SHADER_SOFTMAX_BACKWARD, softmax_backward, 3),
    SG_(KVK_SHADER_CROSS_ENTROPY, cross_entropy, 3),
    SG_(KVK_SHADER_CROSS_ENTROPY_BACKWARD, cross_entropy_backward, 4),
    S_(KVK_SHADER_SGD, sgd, 3),
    S_(KVK_SHADER_ADAM, adam, 6),
    S_(KVK_SHADER_CONV2D, conv2d, 4),
    S_(KVK_SHADER_POOL2D, pool2d, 3),
    S_(KVK_SHADER_SEQ, seq, 3),
    S_(KVK_SHADER_LAYERNORM, layernorm, 4),
    S_(KVK_SHADER_LAYERNORM_PARAMS, layernorm_params, 3),
    S_(KVK_SHADER_GELU, gelu, 3),
    S_(KVK_SHADER_ATTENTION, attention, 2),
    S_(KVK_SHADER_ATTENTION_BACKWARD, attention_backward, 5),
    S_(KVK_SHADER_LR_SCHEDULE, lr_schedule, 2),
    S_(KVK_SHADER_CAST, cast, 2),
};
#undef S_
#undef SG_

uint32_t kvk_shader_bindings(kvk_shader s) { return shaders[s].bindings; }
const char *kvk_shader_name(kvk_shader s) { return shaders[s].name; }

kiln_status kvk_pipelines_init(kiln_plugin_device *dev) {
  kvk_pipelines *p = &dev->pipes;
  VkResult r;
  memset(p, 0, sizeof *p);
  VkDescriptorSetLayoutBinding b[KVK_MAX_BINDINGS];
  for (uint32_t i = 0; i < KVK_MAX_BINDINGS; i++)
    b[i] = (VkDescriptorSetLayoutBinding){
        .binding = i,
        .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
        .descriptorCount = 1,
        .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
    };
  VkPushConstantRange pcr = {
      .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT,
      .offset = 0,
      .size = KVK_PUSH_WORDS * 4,
  };
  for (uint32_t n = 1; n <= KVK_MAX_BINDINGS; n++) {
    VkDescriptorSetLayoutCreateInfo dl = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
        .bindingCount = n,
        .pBindings = b,
    };
    r = vkCreateDescriptorSetLayout(dev->dev, &dl, NULL, &p->set_layouts[n]);
    if (r != VK_SUCCESS) goto fail_vk;
    VkPipelineLayoutCreateInfo pl = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
        .setLayoutCount = 1,
        .pSetLayouts = &p->set_layouts[n],
        .pushConstantRangeCount = 1,
        .pPushConstantRanges = &pcr,
    };
    r = vkCreatePipelineLayout(dev->dev, &pl, NULL, &p->layouts[n]);
    if (r != VK_SUCCESS) goto fail_vk;
  }
  int sg = kvk_use_subgroups(dev->phys);
  for (int s = 0; s < KVK_SHADER_COUNT; s++) {
    int v = sg && shaders[s].sg_code;
    VkShaderModuleCreateInfo mi = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
        .codeSize = v ? *shaders[s].sg_size : *shaders[s].size,
        .pCode = v ? shaders[s].sg_code : shaders[s].code,
    };
    r = vkCreateShaderModule(dev->dev, &mi, NULL, &p->modules[s]);
    if (r != VK_SUCCESS) goto fail_vk;
  }
  kvk_host->log(3, "vulkan: device %u: reductions use %s", dev->index,
                sg ? "subgroup operations" : "shared-memory trees");
  VkPipelineCacheCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO};
  r = vkCreatePipelineCache(dev->dev, &ci, NULL, &p->cache);
  if (r != VK_SUCCESS) goto fail_vk;
  return KILN_OK;

fail_vk:;
  kiln_status st = kvk_vk_error("device_open", "creating layouts and shader modules", r);
  kvk_pipelines_shutdown(dev);
  return st;
}

void kvk_pipelines_shutdown(kiln_plugin_device *dev) {
  kvk_pipelines *p = &dev->pipes;
  for (uint32_t i = 0; i < p->n_entries; i++)
    vkDestroyPipeline(dev->dev, p->entries[i].pipeline, NULL);
  free(p->entries);
  if (p->cache) vkDestroyPipelineCache(dev->dev, p->cache, NULL);
  for (int s = 0; s < KVK_SHADER_COUNT; s++)
    if (p->modules[s]) vkDestroyShaderModule(dev->dev, p->modules[s], NULL);
  for (uint32_t n = 1; n <= KVK_MAX_BINDINGS; n++) {
    if (p->layouts[n]) vkDestroyPipelineLayout(dev->dev, p->layouts[n], NULL);
    if (p->set_layouts[n]) vkDestroyDescriptorSetLayout(dev->dev, p->set_layouts[n], NULL);
  }
  memset(p, 0, sizeof *p);
}

kiln_status kvk_pipeline_get(kiln_plugin_device *dev, kvk_shader shader, const uint32_t *spec,
                             uint32_t n_spec, VkPipeline *out) {
  kvk_pipelines *p = &dev->pipes;
  for (uint32_t i = 0; i < p->n_entries; i++) {
    const kvk_pipeline_entry *e = &p->entries[i];
    if (e->shader == shader && e->n_spec == n_spec &&
        memcmp(e->spec, spec, n_spec * sizeof *spec) == 0) {
      *out = e->pipeline;
      return KILN_OK;
    }
  }
  if (p->n_entries == p->cap_entries) {
    uint32_t cap = p->cap_entries ? p->cap_entries * 2 : 32;
    kvk_pipeline_entry *ne = realloc(p->entries, cap * sizeof *ne);
    if (!ne) {
      kvk_host->set_error("vulkan: out of host memory for the pipeline cache");
      return KILN_OUT_OF_MEMORY;
    }
    p->entries = ne;
    p->cap_entries = cap;
  }
  VkSpecializationMapEntry map[KVK_MAX_SPEC];
  for (uint32_t i = 0; i < n_spec; i++)
    map[i] = (VkSpecializationMapEntry){.constantID = i, .offset = i * 4, .size = 4};
  VkSpecializationInfo si = {
      .mapEntryCount = n_spec,
      .pMapEntries = map,
      .dataSize = n_spec * 4,
      .pData = spec,
  };
  VkComputePipelineCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = {
          .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
          .stage = VK_SHADER_STAGE_COMPUTE_BIT,
          .module = p->modules[shader],
          .pName = "main",
          .pSpecializationInfo = n_spec ? &si : NULL,
      },
      .layout = p->layouts[shaders[shader].bindings],
  };
  VkPipeline pipe;
  VkResult r = vkCreateComputePipelines(dev->dev, p->cache, 1, &ci, NULL, &pipe);
  if (r != VK_SUCCESS) {
    kvk_host->set_error("vulkan: creating the pipeline of shader %s failed: %s",
                        shaders[shader].name, kvk_result_name(r));
    return r == VK_ERROR_OUT_OF_HOST_MEMORY || r == VK_ERROR_OUT_OF_DEVICE_MEMORY
               ? KILN_OUT_OF_MEMORY
               : KILN_PLUGIN_ERROR;
  }
  kvk_pipeline_entry *e = &p->entries[p->n_entries++];
  e->shader = shader;
  e->n_spec = n_spec;
  memset(e->spec, 0, sizeof e->spec);
  memcpy(e->spec, spec, n_spec * sizeof *spec);
  e->pipeline = pipe;
  *out = pipe;
  return KILN_OK;
}
