/*
 * device.c - volk, the Vulkan instance, physical devices and logical devices.
 *
 * kvk_instance_init() loads the Vulkan loader with volk (no link-time
 * dependency on libvulkan), creates one instance (Vulkan 1.2 when the loader
 * has it; with $KILN_VK_VALIDATION=1 the Khronos validation layer with
 * synchronization validation and a debug-utils messenger), and lists every
 * physical device that has a compute queue and Vulkan >= 1.1, ordered
 * discrete > integrated > virtual > CPU > other (stable within a kind).
 * Device indices are positions in that list.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk-impl.h"

static VkInstance kvk_instance;
static VkDebugUtilsMessengerEXT kvk_messenger;
static uint32_t kvk_n_phys;
static kvk_physical *kvk_phys;

/* ---- results and messages ------------------------------------------------- */

const char *kvk_result_name(VkResult r) {
  switch (r) {
#define R_(x) case x: return #x;
    R_(VK_SUCCESS) R_(VK_NOT_READY) R_(VK_TIMEOUT) R_(VK_INCOMPLETE)
    R_(VK_ERROR_OUT_OF_HOST_MEMORY) R_(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    R_(VK_ERROR_INITIALIZATION_FAILED) R_(VK_ERROR_DEVICE_LOST) R_(VK_ERROR_MEMORY_MAP_FAILED)
    R_(VK_ERROR_LAYER_NOT_PRESENT) R_(VK_ERROR_EXTENSION_NOT_PRESENT)
    R_(VK_ERROR_FEATURE_NOT_PRESENT) R_(VK_ERROR_INCOMPATIBLE_DRIVER)
    R_(VK_ERROR_TOO_MANY_OBJECTS) R_(VK_ERROR_FORMAT_NOT_SUPPORTED)
    R_(VK_ERROR_FRAGMENTED_POOL) R_(VK_ERROR_OUT_OF_POOL_MEMORY)
    R_(VK_ERROR_INVALID_SHADER_NV) R_(VK_ERROR_FRAGMENTATION) R_(VK_ERROR_UNKNOWN)
#undef R_
    default: return "VkResult (unknown)";
  }
}

kiln_status kvk_vk_error(const char *call, const char *what, VkResult r) {
  kvk_host->set_error("vulkan: %s: %s failed: %s (%d)", call, what, kvk_result_name(r), (int)r);
  switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY: case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    case VK_ERROR_OUT_OF_POOL_MEMORY: case VK_ERROR_FRAGMENTED_POOL:
      return KILN_OUT_OF_MEMORY;
    case VK_ERROR_DEVICE_LOST: return KILN_DEVICE_LOST;
    default: return KILN_PLUGIN_ERROR;
  }
}

static VKAPI_ATTR VkBool32 VKAPI_CALL debug_cb(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                               VkDebugUtilsMessageTypeFlagsEXT types,
                                               const VkDebugUtilsMessengerCallbackDataEXT *data,
                                               void *user) {
  (void)types;
  (void)user;
  int is_error = (severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) != 0;
  kvk_validation_record(is_error, data && data->pMessage ? data->pMessage : "(no message)");
  return VK_FALSE;
}

/* ---- instance ------------------------------------------------------------- */

static int env_flag(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

static int has_layer(const char *name) {
  uint32_t n = 0;
  if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0) return 0;
  VkLayerProperties *l = calloc(n, sizeof *l);
  int found = 0;
  if (l && vkEnumerateInstanceLayerProperties(&n, l) == VK_SUCCESS)
    for (uint32_t i = 0; i < n && !found; i++) found = strcmp(l[i].layerName, name) == 0;
  free(l);
  return found;
}

static uint32_t kind_of(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return KILN_DEVICE_DISCRETE_GPU;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return KILN_DEVICE_INTEGRATED_GPU;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return KILN_DEVICE_VIRTUAL_GPU;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return KILN_DEVICE_CPU;
    default: return KILN_DEVICE_OTHER;
  }
}

/* Preference rank: discrete 0, integrated 1, virtual 2, CPU 3, other 4. */
static int rank_of(uint32_t kind) {
  switch (kind) {
    case KILN_DEVICE_DISCRETE_GPU: return 0;
    case KILN_DEVICE_INTEGRATED_GPU: return 1;
    case KILN_DEVICE_VIRTUAL_GPU: return 2;
    case KILN_DEVICE_CPU: return 3;
    default: return 4;
  }
}

static void describe(VkPhysicalDevice pd, kvk_physical *p) {
  memset(p, 0, sizeof *p);
  p->pd = pd;
  p->driver.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES;
  p->subgroup.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES;
  vkGetPhysicalDeviceProperties(pd, &p->props);
  VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
  p2.pNext = &p->subgroup;
  if (p->props.apiVersion >= VK_API_VERSION_1_2) p->subgroup.pNext = &p->driver;
  vkGetPhysicalDeviceProperties2(pd, &p2);
  p->subgroup.pNext = NULL;
  p->driver.pNext = NULL;
  vkGetPhysicalDeviceMemoryProperties(pd, &p->mem);
  for (uint32_t h = 0; h < p->mem.memoryHeapCount; h++)
    if ((p->mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
        p->mem.memoryHeaps[h].size > p->device_local_bytes)
      p->device_local_bytes = p->mem.memoryHeaps[h].size;
  p->kind = kind_of(p->props.deviceType);
  p->queue_family = UINT32_MAX;
  uint32_t nq = 0;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
  VkQueueFamilyProperties *q = calloc(nq ? nq : 1, sizeof *q);
  if (!q) return;
  vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, q);
  /* Prefer a compute family without graphics (a dedicated compute queue). */
  for (uint32_t i = 0; i < nq; i++)
    if ((q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && !(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) {
      p->queue_family = i;
      break;
    }
  for (uint32_t i = 0; i < nq && p->queue_family == UINT32_MAX; i++)
    if (q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) p->queue_family = i;
  if (p->queue_family != UINT32_MAX) p->timestamp_bits = q[p->queue_family].timestampValidBits;
  free(q);
}

kiln_status kvk_instance_init(void) {
  VkResult r = volkInitialize();
  if (r != VK_SUCCESS) {
    kvk_host->set_error("no Vulkan driver found: the Vulkan loader (libvulkan.so.1) could not be "
                        "loaded (%s); install a Vulkan driver, e.g. mesa-vulkan-drivers",
                        kvk_result_name(r));
    return KILN_NO_DEVICE;
  }
  uint32_t api = volkGetInstanceVersion();
  if (api < VK_API_VERSION_1_1) {
    kvk_host->set_error("no Vulkan driver found: the Vulkan loader supports only %u.%u; kiln "
                        "needs Vulkan 1.1",
                        VK_API_VERSION_MAJOR(api), VK_API_VERSION_MINOR(api));
    return KILN_NO_DEVICE;
  }
  int validation = env_flag("KILN_VK_VALIDATION");
  const char *layers[1] = {"VK_LAYER_KHRONOS_validation"};
  const char *exts[1] = {VK_EXT_DEBUG_UTILS_EXTENSION_NAME};
  if (validation && !has_layer(layers[0])) {
    kvk_host->set_error("vulkan: KILN_VK_VALIDATION=1 but the layer %s is not installed "
                        "(Debian: vulkan-validationlayers)",
                        layers[0]);
    return KILN_NOT_FOUND;
  }
  VkValidationFeatureEnableEXT enables[1] = {
      VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
  VkValidationFeaturesEXT features = {
      .sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
      .enabledValidationFeatureCount = 1,
      .pEnabledValidationFeatures = enables,
  };
  VkDebugUtilsMessengerCreateInfoEXT mci = {
      .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
      .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                         VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
      .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                     VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
      .pfnUserCallback = debug_cb,
  };
  /* The messenger in pNext also reports instance creation and destruction. */
  features.pNext = &mci;
  VkApplicationInfo app = {
      .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
      .pApplicationName = "kiln",
      .pEngineName = "kiln",
      .engineVersion = VK_MAKE_API_VERSION(0, KILN_VERSION_MAJOR, KILN_VERSION_MINOR,
                                           KILN_VERSION_PATCH),
      .apiVersion = api >= VK_API_VERSION_1_2 ? VK_API_VERSION_1_2 : VK_API_VERSION_1_1,
  };
  VkInstanceCreateInfo ci = {
      .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
      .pNext = validation ? &features : NULL,
      .pApplicationInfo = &app,
      .enabledLayerCount = validation ? 1 : 0,
      .ppEnabledLayerNames = layers,
      .enabledExtensionCount = validation ? 1 : 0,
      .ppEnabledExtensionNames = exts,
  };
  r = vkCreateInstance(&ci, NULL, &kvk_instance);
  if (r != VK_SUCCESS) {
    kvk_host->set_error("no Vulkan driver found: vkCreateInstance failed: %s (no usable driver "
                        "(ICD) for the loader; check VK_ICD_FILENAMES / VK_DRIVER_FILES)",
                        kvk_result_name(r));
    kvk_instance = VK_NULL_HANDLE;
    return r == VK_ERROR_OUT_OF_HOST_MEMORY ? KILN_OUT_OF_MEMORY : KILN_NO_DEVICE;
  }
  volkLoadInstance(kvk_instance);
  if (validation) {
    r = vkCreateDebugUtilsMessengerEXT(kvk_instance, &mci, NULL, &kvk_messenger);
    if (r != VK_SUCCESS) {
      kvk_vk_error("init", "vkCreateDebugUtilsMessengerEXT", r);
      goto fail_instance;
    }
    kvk_host->log(2, "vulkan: validation enabled (VK_LAYER_KHRONOS_validation, synchronization)");
  }

  uint32_t n = 0;
  r = vkEnumeratePhysicalDevices(kvk_instance, &n, NULL);
  if (r != VK_SUCCESS || n == 0) {
    kvk_host->set_error("no Vulkan driver found: the loader lists no physical device (%s); check "
                        "the driver installation and VK_ICD_FILENAMES / VK_DRIVER_FILES",
                        r == VK_SUCCESS ? "0 devices" : kvk_result_name(r));
    goto fail_messenger;
  }
  VkPhysicalDevice *pds = calloc(n, sizeof *pds);
  kvk_phys = calloc(n, sizeof *kvk_phys);
  if (!pds || !kvk_phys) {
    free(pds);
    kvk_host->set_error("vulkan: init: out of memory listing %u devices", n);
    goto fail_messenger;
  }
  r = vkEnumeratePhysicalDevices(kvk_instance, &n, pds);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
    free(pds);
    kvk_vk_error("init", "vkEnumeratePhysicalDevices", r);
    goto fail_messenger;
  }
  kvk_n_phys = 0;
  for (uint32_t i = 0; i < n; i++) {
    kvk_physical p;
    describe(pds[i], &p);
    if (p.queue_family == UINT32_MAX || p.props.apiVersion < VK_API_VERSION_1_1) {
      kvk_host->log(1, "vulkan: skipping %s: %s", p.props.deviceName,
                    p.queue_family == UINT32_MAX ? "no compute queue" : "Vulkan < 1.1");
      continue;
    }
    /* insertion by preference rank, stable within a rank */
    uint32_t j = kvk_n_phys;
    while (j > 0 && rank_of(kvk_phys[j - 1].kind) > rank_of(p.kind)) {
      kvk_phys[j] = kvk_phys[j - 1];
      j--;
    }
    kvk_phys[j] = p;
    kvk_n_phys++;
  }
  free(pds);
  if (kvk_n_phys == 0) {
    kvk_host->set_error("no Vulkan driver found: %u device(s), none with a compute queue and "
                        "Vulkan 1.1", n);
    goto fail_messenger;
  }
  return KILN_OK;

fail_messenger:
  free(kvk_phys);
  kvk_phys = NULL;
  kvk_n_phys = 0;
  if (kvk_messenger) vkDestroyDebugUtilsMessengerEXT(kvk_instance, kvk_messenger, NULL);
  kvk_messenger = VK_NULL_HANDLE;
fail_instance:
  vkDestroyInstance(kvk_instance, NULL);
  kvk_instance = VK_NULL_HANDLE;
  return KILN_NO_DEVICE;
}

void kvk_instance_shutdown(void) {
  free(kvk_phys);
  kvk_phys = NULL;
  kvk_n_phys = 0;
  if (kvk_messenger) vkDestroyDebugUtilsMessengerEXT(kvk_instance, kvk_messenger, NULL);
  kvk_messenger = VK_NULL_HANDLE;
  if (kvk_instance) vkDestroyInstance(kvk_instance, NULL);
  kvk_instance = VK_NULL_HANDLE;
}

uint32_t kvk_physical_count(void) { return kvk_n_phys; }

const kvk_physical *kvk_physical_get(uint32_t index) {
  return index < kvk_n_phys ? &kvk_phys[index] : NULL;
}

/* ---- device info ---------------------------------------------------------- */

static const char *vendor_name(uint32_t id) {
  switch (id) {
    case 0x1002: return "AMD";
    case 0x10DE: return "NVIDIA";
    case 0x8086: return "Intel";
    case 0x13B5: return "ARM";
    case 0x5143: return "Qualcomm";
    case 0x1010: return "ImgTec";
    case 0x106B: return "Apple";
    case 0x10005: return "Mesa";
    default: return NULL;
  }
}

int kvk_use_subgroups(const kvk_physical *p) {
  const VkSubgroupFeatureFlags arith =
      VK_SUBGROUP_FEATURE_BASIC_BIT | VK_SUBGROUP_FEATURE_ARITHMETIC_BIT;
  const char *off = getenv("KILN_VK_NO_SUBGROUPS");
  if (off && *off && strcmp(off, "0") != 0) return 0;
  return (p->subgroup.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
         (p->subgroup.supportedOperations & arith) == arith;
}

kiln_status kvk_device_info(uint32_t index, kiln_device_info *info) {
  const kvk_physical *p = kvk_physical_get(index);
  if (!p) {
    kvk_host->set_error("vulkan: device_info: no device %u (this plugin has %u)", index,
                        kvk_n_phys);
    return KILN_NOT_FOUND;
  }
  if (!info || info->struct_size < sizeof(uint32_t)) {
    kvk_host->set_error("vulkan: device_info: info is NULL or its struct_size is too small");
    return KILN_INVALID_ARGUMENT;
  }
  kiln_device_info d;
  memset(&d, 0, sizeof d);
  d.struct_size = info->struct_size;
  d.kind = p->kind;
  snprintf(d.name, sizeof d.name, "%s", p->props.deviceName);
  const char *v = vendor_name(p->props.vendorID);
  if (v)
    snprintf(d.vendor, sizeof d.vendor, "%s", v);
  else
    snprintf(d.vendor, sizeof d.vendor, "0x%04x", p->props.vendorID);
  if (p->driver.driverName[0])
    snprintf(d.driver, sizeof d.driver, "%.60s %.60s", p->driver.driverName,
             p->driver.driverInfo);
  else
    snprintf(d.driver, sizeof d.driver, "driver version 0x%x", p->props.driverVersion);
  d.memory_bytes = p->device_local_bytes;
  if (kvk_use_subgroups(p)) d.features |= KILN_FEATURE_SUBGROUPS;
  if (p->kind == KILN_DEVICE_CPU || p->kind == KILN_DEVICE_INTEGRATED_GPU)
    d.features |= KILN_FEATURE_UNIFIED;
  d.compute_units = 0;   /* Vulkan does not report it */
  d.subgroup_size = p->subgroup.subgroupSize;

  const VkPhysicalDeviceLimits *l = &p->props.limits;
  size_t len = 0;
#define ADD_(...)                                                                    \
  do {                                                                              \
    if (len < sizeof d.details)                                                     \
      len += (size_t)snprintf(d.details + len, sizeof d.details - len, __VA_ARGS__); \
  } while (0)
  ADD_("vulkan api: %u.%u.%u\n", VK_API_VERSION_MAJOR(p->props.apiVersion),
       VK_API_VERSION_MINOR(p->props.apiVersion), VK_API_VERSION_PATCH(p->props.apiVersion));
  ADD_("device id: 0x%04x:0x%04x\n", p->props.vendorID, p->props.deviceID);
  ADD_("max workgroup size: %u x %u x %u, %u invocations\n", l->maxComputeWorkGroupSize[0],
       l->maxComputeWorkGroupSize[1], l->maxComputeWorkGroupSize[2],
       l->maxComputeWorkGroupInvocations);
  ADD_("shared memory: %u bytes\n", l->maxComputeSharedMemorySize);
  ADD_("max storage buffer range: %u bytes\n", l->maxStorageBufferRange);
  ADD_("storage buffer offset alignment: %llu\n",
       (unsigned long long)l->minStorageBufferOffsetAlignment);
  ADD_("subgroup size: %u%s\n", p->subgroup.subgroupSize,
       d.features & KILN_FEATURE_SUBGROUPS ? " (arithmetic in compute)" : "");
  for (uint32_t h = 0; h < p->mem.memoryHeapCount; h++)
    ADD_("memory heap %u: %llu MiB%s\n", h,
         (unsigned long long)(p->mem.memoryHeaps[h].size >> 20),
         p->mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT ? " device-local" : "");
#undef ADD_
  size_t n = info->struct_size < sizeof d ? info->struct_size : sizeof d;
  memcpy(info, &d, n);
  return KILN_OK;
}

/* ---- logical devices ------------------------------------------------------ */

kiln_status kvk_device_open(uint32_t index, kiln_plugin_device **out) {
  const kvk_physical *p = kvk_physical_get(index);
  if (!p) {
    kvk_host->set_error("vulkan: device_open: no device %u (this plugin has %u)", index,
                        kvk_n_phys);
    return KILN_NOT_FOUND;
  }
  kiln_status st;
  VkResult r;
  kiln_plugin_device *dev = calloc(1, sizeof *dev);
  if (!dev) {
    kvk_host->set_error("vulkan: device_open: out of memory");
    return KILN_OUT_OF_MEMORY;
  }
  dev->phys = p;
  dev->index = index;
  float prio = 1.0f;
  VkDeviceQueueCreateInfo qci = {
      .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
      .queueFamilyIndex = p->queue_family,
      .queueCount = 1,
      .pQueuePriorities = &prio,
  };
  VkDeviceCreateInfo dci = {
      .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
      .queueCreateInfoCount = 1,
      .pQueueCreateInfos = &qci,
  };
  r = vkCreateDevice(p->pd, &dci, NULL, &dev->dev);
  if (r != VK_SUCCESS) {
    st = kvk_vk_error("device_open", "vkCreateDevice", r);
    goto fail;
  }
  vkGetDeviceQueue(dev->dev, p->queue_family, 0, &dev->queue);
  VkCommandPoolCreateInfo pci = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
      .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
      .queueFamilyIndex = p->queue_family,
  };
  r = vkCreateCommandPool(dev->dev, &pci, NULL, &dev->cmd_pool);
  if (r != VK_SUCCESS) {
    st = kvk_vk_error("device_open", "vkCreateCommandPool", r);
    goto fail_device;
  }
  VkCommandBufferAllocateInfo cai = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
      .commandPool = dev->cmd_pool,
      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
      .commandBufferCount = 1,
  };
  r = vkAllocateCommandBuffers(dev->dev, &cai, &dev->xfer_cmd);
  if (r != VK_SUCCESS) {
    st = kvk_vk_error("device_open", "vkAllocateCommandBuffers", r);
    goto fail_pool;
  }
  VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
  r = vkCreateFence(dev->dev, &fci, NULL, &dev->xfer_fence);
  if (r != VK_SUCCESS) {
    st = kvk_vk_error("device_open", "vkCreateFence", r);
    goto fail_pool;
  }
  st = kvk_memory_init(dev);
  if (st != KILN_OK) goto fail_fence;
  st = kvk_pipelines_init(dev);
  if (st != KILN_OK) goto fail_memory;
  *out = dev;
  return KILN_OK;

fail_memory:
  kvk_memory_shutdown(dev);
fail_fence:
  vkDestroyFence(dev->dev, dev->xfer_fence, NULL);
fail_pool:
  vkDestroyCommandPool(dev->dev, dev->cmd_pool, NULL);
fail_device:
  vkDestroyDevice(dev->dev, NULL);
fail:
  free(dev);
  return st;
}

void kvk_device_close(kiln_plugin_device *dev) {
  if (!dev) return;
  vkDeviceWaitIdle(dev->dev);
  kvk_pipelines_shutdown(dev);
  kvk_memory_shutdown(dev);
  vkDestroyFence(dev->dev, dev->xfer_fence, NULL);
  vkDestroyCommandPool(dev->dev, dev->cmd_pool, NULL);
  vkDestroyDevice(dev->dev, NULL);
  free(dev);
}
