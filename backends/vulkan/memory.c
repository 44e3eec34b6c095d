/*
 * memory.c - buffers suballocated from a few large device-local blocks, and
 * transfers through a host-visible staging buffer.
 *
 * Every kiln buffer is a VkBuffer (storage + transfer usage) bound at an
 * offset inside a block of device memory. Blocks are KVK_BLOCK_SIZE bytes
 * (or one dedicated block for a buffer larger than half of that); each keeps
 * a sorted list of free ranges, allocation is first fit with the buffer's
 * alignment, and freeing merges neighbours. An empty block is released.
 *
 * Transfers (write, read, copy, the zero fill of a new buffer) are recorded
 * into the device's transfer command buffer, which starts with
 * kvk_cmd_barrier_all() so it is ordered after every earlier submission
 * (graph runs included), submitted with a fence and waited for. Large
 * transfers go in chunks of the staging buffer's size.
 *
 * Except small writes (<= KVK_RING_SLOT_SIZE, e.g. a training step's
 * batch): they are copied into the next of KVK_RING_SLOTS slots after the
 * synchronous staging area, and their copy is submitted with the slot's own
 * command buffer and fence without waiting. A slot is waited for only when
 * it comes round again; reads, synchronize and buffer_free wait for
 * everything anyway. So a step's upload no longer waits for the previous
 * step's graph run to finish.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vk-impl.h"

#define KVK_BLOCK_SIZE ((VkDeviceSize)64 << 20)
#define KVK_STAGING_SIZE ((VkDeviceSize)16 << 20)

typedef struct kvk_range {
  VkDeviceSize offset, size;
} kvk_range;

struct kvk_block {
  kvk_block *next;
  VkDeviceMemory mem;
  VkDeviceSize size;
  uint32_t n_free, cap_free;
  kvk_range *free;          /* sorted by offset, never adjacent */
  uint32_t n_live;          /* buffers bound to it */
};

void kvk_cmd_barrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage, VkAccessFlags src,
                     VkPipelineStageFlags dst_stage, VkAccessFlags dst) {
  VkMemoryBarrier mb = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
      .srcAccessMask = src,
      .dstAccessMask = dst,
  };
  vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

void kvk_cmd_barrier_all(VkCommandBuffer cmd) {
  kvk_cmd_barrier(cmd, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, VK_ACCESS_MEMORY_WRITE_BIT,
                  VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                  VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT);
}

static int find_type(const VkPhysicalDeviceMemoryProperties *mp, uint32_t bits,
                     VkMemoryPropertyFlags want) {
  for (uint32_t i = 0; i < mp->memoryTypeCount; i++)
    if ((bits & (1u << i)) && (mp->memoryTypes[i].propertyFlags & want) == want) return (int)i;
  return -1;
}

static VkBufferCreateInfo buffer_info(VkDeviceSize size, VkBufferUsageFlags usage) {
  VkBufferCreateInfo bi = {
      .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
      .size = size,
      .usage = usage,
      .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
  };
  return bi;
}

#define KVK_USAGE \
  (VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | \
   VK_BUFFER_USAGE_TRANSFER_DST_BIT)

static void ring_destroy(kiln_plugin_device *dev) {
  for (uint32_t i = 0; i < KVK_RING_SLOTS; i++) {
    if (dev->ring[i].fence) vkDestroyFence(dev->dev, dev->ring[i].fence, NULL);
    if (dev->ring[i].cmd) vkFreeCommandBuffers(dev->dev, dev->cmd_pool, 1, &dev->ring[i].cmd);
    dev->ring[i] = (struct kvk_ring_slot){0};
  }
}

kiln_status kvk_memory_init(kiln_plugin_device *dev) {
  const VkPhysicalDeviceMemoryProperties *mp = &dev->phys->mem;
  VkResult r;
  kiln_status st;
  /* The memory type for buffers: probe one, take a device-local type. */
  VkBufferCreateInfo bi = buffer_info(256, KVK_USAGE);
  VkBuffer probe;
  r = vkCreateBuffer(dev->dev, &bi, NULL, &probe);
  if (r != VK_SUCCESS) return kvk_vk_error("device_open", "vkCreateBuffer (probe)", r);
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(dev->dev, probe, &req);
  vkDestroyBuffer(dev->dev, probe, NULL);
  int t = find_type(mp, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  if (t < 0) t = find_type(mp, req.memoryTypeBits, 0);
  if (t < 0) {
    kvk_host->set_error("vulkan: device_open: no memory type for storage buffers");
    return KILN_PLUGIN_ERROR;
  }
  dev->mem_type = (uint32_t)t;
  dev->block_size = KVK_BLOCK_SIZE;
  VkDeviceSize heap = mp->memoryHeaps[mp->memoryTypes[t].heapIndex].size;
  if (dev->block_size > heap / 4) dev->block_size = heap / 4;

  /* The staging buffer: the synchronous area then the ring's slots. */
  dev->staging_size = KVK_STAGING_SIZE;
  st = kvk_host_buffer_create(dev, dev->staging_size + KVK_RING_SLOTS * KVK_RING_SLOT_SIZE,
                              "device_open", "staging", &dev->staging, &dev->staging_mem,
                              &dev->staging_map);
  if (st != KILN_OK) return st;
  for (uint32_t i = 0; i < KVK_RING_SLOTS; i++) {
    VkCommandBufferAllocateInfo cai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
        .commandPool = dev->cmd_pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
        .commandBufferCount = 1,
    };
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    r = vkAllocateCommandBuffers(dev->dev, &cai, &dev->ring[i].cmd);
    if (r == VK_SUCCESS) r = vkCreateFence(dev->dev, &fci, NULL, &dev->ring[i].fence);
    if (r != VK_SUCCESS) {
      st = kvk_vk_error("device_open", "creating the upload ring", r);
      goto fail_ring;
    }
  }
  return KILN_OK;

fail_ring:
  ring_destroy(dev);
  kvk_host_buffer_destroy(dev, dev->staging, dev->staging_mem);
  dev->staging = VK_NULL_HANDLE;
  dev->staging_mem = VK_NULL_HANDLE;
  return st;
}

kiln_status kvk_host_buffer_create(kiln_plugin_device *dev, VkDeviceSize size, const char *call,
                                   const char *what, VkBuffer *buf, VkDeviceMemory *mem,
                                   void **map) {
  char msg[96];
  *buf = VK_NULL_HANDLE;
  *mem = VK_NULL_HANDLE;
  *map = NULL;
  VkBufferCreateInfo bi = buffer_info(size, VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                                VK_BUFFER_USAGE_TRANSFER_DST_BIT);
  VkResult r = vkCreateBuffer(dev->dev, &bi, NULL, buf);
  if (r != VK_SUCCESS) {
    snprintf(msg, sizeof msg, "vkCreateBuffer (%s)", what);
    return kvk_vk_error(call, msg, r);
  }
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(dev->dev, *buf, &req);
  const VkPhysicalDeviceMemoryProperties *mp = &dev->phys->mem;
  const VkMemoryPropertyFlags hv =
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
  int t = find_type(mp, req.memoryTypeBits, hv | VK_MEMORY_PROPERTY_HOST_CACHED_BIT);
  if (t < 0) t = find_type(mp, req.memoryTypeBits, hv);
  if (t < 0) {
    kvk_host->set_error("vulkan: %s: no host-visible coherent memory for the %s buffer", call,
                        what);
    vkDestroyBuffer(dev->dev, *buf, NULL);
    *buf = VK_NULL_HANDLE;
    return KILN_PLUGIN_ERROR;
  }
  VkMemoryAllocateInfo ai = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
      .allocationSize = req.size,
      .memoryTypeIndex = (uint32_t)t,
  };
  r = vkAllocateMemory(dev->dev, &ai, NULL, mem);
  if (r == VK_SUCCESS) r = vkBindBufferMemory(dev->dev, *buf, *mem, 0);
  if (r == VK_SUCCESS) r = vkMapMemory(dev->dev, *mem, 0, VK_WHOLE_SIZE, 0, map);
  if (r != VK_SUCCESS) {
    snprintf(msg, sizeof msg, "allocating, binding or mapping %llu bytes of %s memory",
             (unsigned long long)req.size, what);
    kvk_host_buffer_destroy(dev, *buf, *mem);
    *buf = VK_NULL_HANDLE;
    *mem = VK_NULL_HANDLE;
    *map = NULL;
    return kvk_vk_error(call, msg, r);
  }
  return KILN_OK;
}

void kvk_host_buffer_destroy(kiln_plugin_device *dev, VkBuffer buf, VkDeviceMemory mem) {
  if (buf) vkDestroyBuffer(dev->dev, buf, NULL);
  if (mem) vkFreeMemory(dev->dev, mem, NULL);   /* frees the mapping too */
}

static void block_destroy(kiln_plugin_device *dev, kvk_block *b) {
  vkFreeMemory(dev->dev, b->mem, NULL);
  free(b->free);
  free(b);
}

void kvk_memory_shutdown(kiln_plugin_device *dev) {
  kvk_block *b = dev->blocks;
  while (b) {
    kvk_block *next = b->next;
    block_destroy(dev, b);
    b = next;
  }
  dev->blocks = NULL;
  ring_destroy(dev);   /* the device is idle: kvk_device_close waited */
  kvk_host_buffer_destroy(dev, dev->staging, dev->staging_mem);
  dev->staging = VK_NULL_HANDLE;
  dev->staging_mem = VK_NULL_HANDLE;
}

/* ---- suballocation -------------------------------------------------------- */

static VkDeviceSize align_up(VkDeviceSize v, VkDeviceSize a) { return (v + a - 1) / a * a; }

/* First fit of size bytes aligned to align in b; returns 1 and *offset. */
static int block_take(kvk_block *b, VkDeviceSize size, VkDeviceSize align, VkDeviceSize *offset) {
  for (uint32_t i = 0; i < b->n_free; i++) {
    kvk_range *f = &b->free[i];
    VkDeviceSize at = align_up(f->offset, align);
    if (at + size > f->offset + f->size) continue;
    VkDeviceSize head = at - f->offset, tail = f->offset + f->size - (at + size);
    if (head && tail) {
      if (b->n_free == b->cap_free) {
        uint32_t cap = b->cap_free ? b->cap_free * 2 : 8;
        kvk_range *nf = realloc(b->free, cap * sizeof *nf);
        if (!nf) return 0;
        b->free = nf;
        b->cap_free = cap;
        f = &b->free[i];
      }
      memmove(&b->free[i + 2], &b->free[i + 1], (b->n_free - i - 1) * sizeof *f);
      b->free[i + 1] = (kvk_range){at + size, tail};
      f->size = head;
      b->n_free++;
    } else if (head) {
      f->size = head;
    } else if (tail) {
      f->offset = at + size;
      f->size = tail;
    } else {
      memmove(&b->free[i], &b->free[i + 1], (b->n_free - i - 1) * sizeof *f);
      b->n_free--;
    }
    *offset = at;
    return 1;
  }
  return 0;
}

/* Returns [offset, offset + size) to b's free list, merging neighbours. */
static int block_give(kvk_block *b, VkDeviceSize offset, VkDeviceSize size) {
  uint32_t i = 0;
  while (i < b->n_free && b->free[i].offset < offset) i++;
  int merge_prev = i > 0 && b->free[i - 1].offset + b->free[i - 1].size == offset;
  int merge_next = i < b->n_free && offset + size == b->free[i].offset;
  if (merge_prev && merge_next) {
    b->free[i - 1].size += size + b->free[i].size;
    memmove(&b->free[i], &b->free[i + 1], (b->n_free - i - 1) * sizeof *b->free);
    b->n_free--;
  } else if (merge_prev) {
    b->free[i - 1].size += size;
  } else if (merge_next) {
    b->free[i].offset = offset;
    b->free[i].size += size;
  } else {
    if (b->n_free == b->cap_free) {
      uint32_t cap = b->cap_free ? b->cap_free * 2 : 8;
      kvk_range *nf = realloc(b->free, cap * sizeof *nf);
      if (!nf) return 0;
      b->free = nf;
      b->cap_free = cap;
    }
    memmove(&b->free[i + 1], &b->free[i], (b->n_free - i) * sizeof *b->free);
    b->free[i] = (kvk_range){offset, size};
    b->n_free++;
  }
  return 1;
}

static kiln_status block_new(kiln_plugin_device *dev, VkDeviceSize size, kvk_block **out) {
  kvk_block *b = calloc(1, sizeof *b);
  if (!b) {
    kvk_host->set_error("vulkan: buffer_alloc: out of host memory");
    return KILN_OUT_OF_MEMORY;
  }
  b->size = size;
  b->free = malloc(8 * sizeof *b->free);
  if (!b->free) {
    free(b);
    kvk_host->set_error("vulkan: buffer_alloc: out of host memory");
    return KILN_OUT_OF_MEMORY;
  }
  b->cap_free = 8;
  b->free[0] = (kvk_range){0, size};
  b->n_free = 1;
  VkMemoryAllocateInfo ai = {
      .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
      .allocationSize = size,
      .memoryTypeIndex = dev->mem_type,
  };
  VkResult r = vkAllocateMemory(dev->dev, &ai, NULL, &b->mem);
  if (r != VK_SUCCESS) {
    free(b->free);
    free(b);
    kvk_host->set_error("vulkan: buffer_alloc: allocating a %llu-byte block of device memory "
                        "failed: %s",
                        (unsigned long long)size, kvk_result_name(r));
    return r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY
               ? KILN_OUT_OF_MEMORY
               : KILN_PLUGIN_ERROR;
  }
  b->next = dev->blocks;
  dev->blocks = b;
  *out = b;
  return KILN_OK;
}

static void block_unlink(kiln_plugin_device *dev, kvk_block *b) {
  for (kvk_block **pp = &dev->blocks; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      return;
    }
}

/* ---- one-shot transfers --------------------------------------------------- */

static kiln_status xfer_begin(kiln_plugin_device *dev, const char *call) {
  VkResult r = vkResetCommandBuffer(dev->xfer_cmd, 0);
  if (r != VK_SUCCESS) return kvk_vk_error(call, "vkResetCommandBuffer", r);
  VkCommandBufferBeginInfo bi = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
      .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
  };
  r = vkBeginCommandBuffer(dev->xfer_cmd, &bi);
  if (r != VK_SUCCESS) return kvk_vk_error(call, "vkBeginCommandBuffer", r);
  kvk_cmd_barrier_all(dev->xfer_cmd);
  return KILN_OK;
}

/* Ends, submits and waits for the transfer command buffer. host_read: the
 * transfer wrote the staging buffer, which the host reads next. */
static kiln_status xfer_submit(kiln_plugin_device *dev, const char *call, int host_read) {
  if (host_read)
    kvk_cmd_barrier(dev->xfer_cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                    VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
  VkResult r = vkEndCommandBuffer(dev->xfer_cmd);
  if (r != VK_SUCCESS) return kvk_vk_error(call, "vkEndCommandBuffer", r);
  VkSubmitInfo si = {
      .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
      .commandBufferCount = 1,
      .pCommandBuffers = &dev->xfer_cmd,
  };
  r = vkQueueSubmit(dev->queue, 1, &si, dev->xfer_fence);
  if (r != VK_SUCCESS) return kvk_vk_error(call, "vkQueueSubmit", r);
  r = vkWaitForFences(dev->dev, 1, &dev->xfer_fence, VK_TRUE, UINT64_MAX);
  VkResult r2 = vkResetFences(dev->dev, 1, &dev->xfer_fence);
  if (r != VK_SUCCESS) return kvk_vk_error(call, "vkWaitForFences", r);
  if (r2 != VK_SUCCESS) return kvk_vk_error(call, "vkResetFences", r2);
  return KILN_OK;
}

/* ---- buffers -------------------------------------------------------------- */

kiln_status kvk_buffer_alloc(kiln_plugin_device *dev, uint64_t size, kiln_plugin_buffer **out) {
  if (!dev || !out) {
    kvk_host->set_error("vulkan: buffer_alloc: NULL device or out");
    return KILN_INVALID_ARGUMENT;
  }
  if (size == 0) {
    kvk_host->set_error("vulkan: buffer_alloc: size is 0; buffers must have at least one byte");
    return KILN_INVALID_ARGUMENT;
  }
  kiln_status st;
  VkResult r;
  kiln_plugin_buffer *b = calloc(1, sizeof *b);
  if (!b) {
    kvk_host->set_error("vulkan: buffer_alloc: out of host memory");
    return KILN_OUT_OF_MEMORY;
  }
  b->size = size;
  /* Whole 4-byte words, so fills and f32 bindings never straddle the end. */
  VkBufferCreateInfo bi = buffer_info(align_up(size, 64), KVK_USAGE);
  r = vkCreateBuffer(dev->dev, &bi, NULL, &b->buf);
  if (r != VK_SUCCESS) {
    st = kvk_vk_error("buffer_alloc", "vkCreateBuffer", r);
    goto fail;
  }
  VkMemoryRequirements req;
  vkGetBufferMemoryRequirements(dev->dev, b->buf, &req);
  if (!(req.memoryTypeBits & (1u << dev->mem_type))) {
    kvk_host->set_error("vulkan: buffer_alloc: the buffer cannot live in memory type %u",
                        dev->mem_type);
    st = KILN_PLUGIN_ERROR;
    goto fail_buffer;
  }
  kvk_block *blk = NULL;
  VkDeviceSize at = 0;
  if (req.size <= dev->block_size / 2) {
    for (kvk_block *k = dev->blocks; k && !blk; k = k->next)
      if (block_take(k, req.size, req.alignment, &at)) blk = k;
    if (!blk) {
      st = block_new(dev, dev->block_size, &blk);
      if (st != KILN_OK) goto fail_buffer;
      block_take(blk, req.size, req.alignment, &at);
    }
  } else {
    st = block_new(dev, req.size, &blk);   /* dedicated */
    if (st != KILN_OK) goto fail_buffer;
    block_take(blk, req.size, req.alignment, &at);
  }
  blk->n_live++;
  b->block = blk;
  b->mem_offset = at;
  b->mem_size = req.size;
  r = vkBindBufferMemory(dev->dev, b->buf, blk->mem, at);
  if (r != VK_SUCCESS) {
    st = kvk_vk_error("buffer_alloc", "vkBindBufferMemory", r);
    goto fail_bound;
  }
  /* Zero fill (the ABI promises zeroed buffers). */
  st = xfer_begin(dev, "buffer_alloc");
  if (st != KILN_OK) goto fail_bound;
  vkCmdFillBuffer(dev->xfer_cmd, b->buf, 0, VK_WHOLE_SIZE, 0);
  st = xfer_submit(dev, "buffer_alloc", 0);
  if (st != KILN_OK) goto fail_bound;
  *out = b;
  return KILN_OK;

fail_bound:
  vkDestroyBuffer(dev->dev, b->buf, NULL);
  b->buf = VK_NULL_HANDLE;
  kvk_buffer_free(dev, b);
  return st;
fail_buffer:
  vkDestroyBuffer(dev->dev, b->buf, NULL);
fail:
  free(b);
  return st;
}

void kvk_buffer_free(kiln_plugin_device *dev, kiln_plugin_buffer *buf) {
  if (!dev || !buf) return;
  /* The buffer may be in use by submitted work. */
  vkQueueWaitIdle(dev->queue);
  if (buf->buf) vkDestroyBuffer(dev->dev, buf->buf, NULL);
  kvk_block *blk = buf->block;
  if (blk) {
    block_give(blk, buf->mem_offset, buf->mem_size);
    if (--blk->n_live == 0) {
      block_unlink(dev, blk);
      block_destroy(dev, blk);
    }
  }
  free(buf);
}

static kiln_status check_range(const char *what, const kiln_plugin_buffer *buf, uint64_t offset,
                               uint64_t size, const void *host) {
  if (!buf || (!host && size)) {
    kvk_host->set_error("vulkan: %s: NULL %s", what, buf ? "host pointer" : "buffer");
    return KILN_INVALID_ARGUMENT;
  }
  if (offset > buf->size || size > buf->size - offset) {
    kvk_host->set_error("vulkan: %s: range [%llu, %llu + %llu) is outside the buffer of %llu "
                        "bytes",
                        what, (unsigned long long)offset, (unsigned long long)offset,
                        (unsigned long long)size, (unsigned long long)buf->size);
    return KILN_INVALID_ARGUMENT;
  }
  return KILN_OK;
}

/* A small write through the next ring slot, not waited for. */
static kiln_status write_async(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t offset,
                               const void *src, uint64_t size) {
  uint32_t i = dev->ring_next;
  struct kvk_ring_slot *s = &dev->ring[i];
  VkResult r;
  if (s->pending) {
    r = vkWaitForFences(dev->dev, 1, &s->fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS) return kvk_vk_error("buffer_write", "vkWaitForFences (upload ring)", r);
    r = vkResetFences(dev->dev, 1, &s->fence);
    if (r != VK_SUCCESS) return kvk_vk_error("buffer_write", "vkResetFences (upload ring)", r);
    s->pending = 0;
  }
  VkDeviceSize at = dev->staging_size + i * KVK_RING_SLOT_SIZE;
  memcpy((char *)dev->staging_map + at, src, (size_t)size);
  r = vkResetCommandBuffer(s->cmd, 0);
  if (r != VK_SUCCESS) return kvk_vk_error("buffer_write", "vkResetCommandBuffer", r);
  VkCommandBufferBeginInfo bi = {
      .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
      .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT,
  };
  r = vkBeginCommandBuffer(s->cmd, &bi);
  if (r != VK_SUCCESS) return kvk_vk_error("buffer_write", "vkBeginCommandBuffer", r);
  kvk_cmd_barrier_all(s->cmd);
  VkBufferCopy c = {.srcOffset = at, .dstOffset = offset, .size = size};
  vkCmdCopyBuffer(s->cmd, dev->staging, dst->buf, 1, &c);
  r = vkEndCommandBuffer(s->cmd);
  if (r != VK_SUCCESS) return kvk_vk_error("buffer_write", "vkEndCommandBuffer", r);
  VkSubmitInfo si = {
      .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
      .commandBufferCount = 1,
      .pCommandBuffers = &s->cmd,
  };
  r = vkQueueSubmit(dev->queue, 1, &si, s->fence);
  if (r != VK_SUCCESS) return kvk_vk_error("buffer_write", "vkQueueSubmit", r);
  s->pending = 1;
  dev->ring_next = (i + 1) % KVK_RING_SLOTS;
  return KILN_OK;
}

kiln_status kvk_buffer_write(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t offset,
                             const void *src, uint64_t size) {
  kiln_status st = check_range("buffer_write", dst, offset, size, src);
  if (st != KILN_OK) return st;
  if (size == 0) return KILN_OK;
  const char *sync = getenv("KILN_VK_SYNC_UPLOADS");
  if (size <= KVK_RING_SLOT_SIZE && (!sync || !*sync || strcmp(sync, "0") == 0))
    return write_async(dev, dst, offset, src, size);
  for (uint64_t done = 0; done < size;) {
    uint64_t n = size - done < dev->staging_size ? size - done : dev->staging_size;
    memcpy(dev->staging_map, (const char *)src + done, (size_t)n);
    st = xfer_begin(dev, "buffer_write");
    if (st != KILN_OK) return st;
    VkBufferCopy c = {.srcOffset = 0, .dstOffset = offset + done, .size = n};
    vkCmdCopyBuffer(dev->xfer_cmd, dev->staging, dst->buf, 1, &c);
    st = xfer_submit(dev, "buffer_write", 0);
    if (st != KILN_OK) return st;
    done += n;
  }
  return KILN_OK;
}

kiln_status kvk_buffer_read(kiln_plugin_device *dev, kiln_plugin_buffer *src, uint64_t offset,
                            void *dst, uint64_t size) {
  kiln_status st = check_range("buffer_read", src, offset, size, dst);
  if (st != KILN_OK) return st;
  for (uint64_t done = 0; done < size;) {
    uint64_t n = size - done < dev->staging_size ? size - done : dev->staging_size;
    st = xfer_begin(dev, "buffer_read");
    if (st != KILN_OK) return st;
    VkBufferCopy c = {.srcOffset = offset + done, .dstOffset = 0, .size = n};
    vkCmdCopyBuffer(dev->xfer_cmd, src->buf, dev->staging, 1, &c);
    st = xfer_submit(dev, "buffer_read", 1);
    if (st != KILN_OK) return st;
    memcpy((char *)dst + done, dev->staging_map, (size_t)n);
    done += n;
  }
  return KILN_OK;
}

kiln_status kvk_buffer_copy(kiln_plugin_device *dev, kiln_plugin_buffer *dst, uint64_t dst_offset,
                            kiln_plugin_buffer *src, uint64_t src_offset, uint64_t size) {
  kiln_status st = check_range("buffer_copy (source)", src, src_offset, size, src);
  if (st == KILN_OK) st = check_range("buffer_copy (destination)", dst, dst_offset, size, dst);
  if (st != KILN_OK) return st;
  if (size == 0) return KILN_OK;
  if (src == dst && src_offset < dst_offset + size && dst_offset < src_offset + size) {
    /* vkCmdCopyBuffer forbids overlapping regions: go through staging. */
    for (uint64_t done = 0; done < size;) {
      uint64_t n = size - done < dev->staging_size ? size - done : dev->staging_size;
      /* copy from the end when moving up, so no source byte is clobbered early */
      uint64_t at = dst_offset > src_offset ? size - done - n : done;
      st = xfer_begin(dev, "buffer_copy");
      if (st != KILN_OK) return st;
      VkBufferCopy c1 = {.srcOffset = src_offset + at, .dstOffset = 0, .size = n};
      vkCmdCopyBuffer(dev->xfer_cmd, src->buf, dev->staging, 1, &c1);
      kvk_cmd_barrier_all(dev->xfer_cmd);
      VkBufferCopy c2 = {.srcOffset = 0, .dstOffset = dst_offset + at, .size = n};
      vkCmdCopyBuffer(dev->xfer_cmd, dev->staging, dst->buf, 1, &c2);
      st = xfer_submit(dev, "buffer_copy", 0);
      if (st != KILN_OK) return st;
      done += n;
    }
    return KILN_OK;
  }
  st = xfer_begin(dev, "buffer_copy");
  if (st != KILN_OK) return st;
  VkBufferCopy c = {.srcOffset = src_offset, .dstOffset = dst_offset, .size = size};
  vkCmdCopyBuffer(dev->xfer_cmd, src->buf, dst->buf, 1, &c);
  return xfer_submit(dev, "buffer_copy", 0);
}
