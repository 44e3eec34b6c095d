/*
 * exec_io.c - a compiled graph's inputs and outputs (plugin ABI 1.1:
 * exec_write, exec_read, exec_history).
 *
 * A training step used to be five submits: two uploads (each its own copy
 * submit), the run, and two read-backs that each submitted a copy and
 * waited for the whole queue. Here the step's inputs and small outputs go
 * through a host-visible "io buffer" that the recorded frames copy from
 * and to (vk-impl.h: frames), so the step is one submit and one fence:
 *
 *   io buffer:  [ frame 0: inputs | outputs ][ frame 1: inputs | outputs ]
 *
 * exec_write copies the bytes into the part of the frame the next run
 * submits (waiting first only if that frame is still in flight, i.e. two
 * runs back). The frames copy in only the inputs written with exec_write
 * ("armed"; a host that writes an input with buffer_write, as ABI 1.0
 * hosts do, keeps those bytes): the copies are a small command buffer per
 * frame, submitted with the frame's own in the same vkQueueSubmit and
 * re-recorded when an input is armed (its first exec_write).
 * An input written once and then run many times stays correct:
 * each input remembers which frames hold its latest bytes ("fresh") and
 * kvk_io_refresh copies them across before a frame that does not is
 * submitted. exec_read waits for the one run it reads and copies out of
 * that run's frame; with two frames a host can submit run k+1 and then read
 * run k (back 1) while k+1 executes.
 *
 * Not staged, so they go through buffer_write / buffer_read as in ABI 1.0:
 * persistent tensors (other work may change them between runs), a tensor
 * that is both an input and an output, and anything past the size caps
 * below (a big input would double its memory per frame).
 */
#include <stdlib.h>
#include <string.h>

#include "vk-impl.h"

#define IO_ALIGN 64u
#define IN_MAX ((uint64_t)4 << 20)       /* one staged input, bytes */
#define IN_TOTAL ((uint64_t)16 << 20)    /* all staged inputs of a frame */
#define OUT_MAX ((uint64_t)1 << 20)      /* one mirrored output */
#define OUT_TOTAL ((uint64_t)4 << 20)    /* all mirrored outputs of a frame */

static uint64_t align_up(uint64_t v) { return (v + IO_ALIGN - 1) / IO_ALIGN * IO_ALIGN; }

kiln_status kvk_io_plan(kiln_plugin_device *dev, kiln_plugin_exec *exec,
                        const kiln_plugin_graph *graph) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < graph->n_tensors; i++)
    if (kiln_plugin_graph_tensor(graph, i)->flags & (KILN_PTENSOR_INPUT | KILN_PTENSOR_OUTPUT)) n++;
  exec->io = calloc(n ? n : 1, sizeof *exec->io);
  if (!exec->io) {
    kvk_host->set_error("vulkan: graph_compile: out of host memory for %u inputs and outputs", n);
    return KILN_OUT_OF_MEMORY;
  }
  uint64_t in_bytes = 0, out_bytes = 0;
  for (uint32_t i = 0; i < graph->n_tensors; i++) {
    const kiln_plugin_tensor *t = kiln_plugin_graph_tensor(graph, i);
    uint32_t io_flags = t->flags & (KILN_PTENSOR_INPUT | KILN_PTENSOR_OUTPUT);
    if (!io_flags) continue;
    kvk_io *e = &exec->io[exec->n_io++];
    e->tensor = i;
    e->flags = t->flags;
    e->buffer = t->buffer < graph->n_buffers ? graph->buffers[t->buffer] : NULL;
    e->offset = t->offset;
    e->nbytes = t->nbytes;
    if (!e->buffer || t->offset > e->buffer->size || t->nbytes > e->buffer->size - t->offset) {
      kvk_host->set_error("vulkan: graph_compile: %s tensor %u (%llu bytes at %llu of buffer %u) "
                          "is not inside its buffer",
                          io_flags & KILN_PTENSOR_INPUT ? "input" : "output", i,
                          (unsigned long long)t->nbytes, (unsigned long long)t->offset, t->buffer);
      return KILN_INVALID_ARGUMENT;
    }
    if ((t->flags & KILN_PTENSOR_PERSISTENT) || t->nbytes == 0 ||
        io_flags == (KILN_PTENSOR_INPUT | KILN_PTENSOR_OUTPUT))
      continue;
    uint64_t size = align_up(t->nbytes);
    if (io_flags == KILN_PTENSOR_INPUT && t->nbytes <= IN_MAX && in_bytes + size <= IN_TOTAL) {
      e->staged = 1;
      e->at = in_bytes;
      in_bytes += size;
    } else if (io_flags == KILN_PTENSOR_OUTPUT && t->nbytes <= OUT_MAX &&
               out_bytes + size <= OUT_TOTAL) {
      e->staged = 1;
      e->at = out_bytes;                       /* moved past the inputs below */
      out_bytes += size;
    }
  }
  for (uint32_t i = 0; i < exec->n_io; i++)
    if (exec->io[i].staged && (exec->io[i].flags & KILN_PTENSOR_OUTPUT)) exec->io[i].at += in_bytes;
  exec->frame_bytes = in_bytes + out_bytes;
  if (!exec->frame_bytes) return KILN_OK;
  void *map;
  kiln_status st = kvk_host_buffer_create(dev, exec->frame_bytes * exec->n_frames, "graph_compile",
                                          "inputs and outputs", &exec->io_buf, &exec->io_mem, &map);
  if (st != KILN_OK) return st;
  exec->io_map = map;
  memset(exec->io_map, 0, (size_t)(exec->frame_bytes * exec->n_frames));
  return KILN_OK;
}

void kvk_io_free(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  kvk_host_buffer_destroy(dev, exec->io_buf, exec->io_mem);
  exec->io_buf = VK_NULL_HANDLE;
  exec->io_mem = VK_NULL_HANDLE;
  exec->io_map = NULL;
  free(exec->io);
  exec->io = NULL;
  exec->n_io = 0;
}

kiln_status kvk_io_record_in(kiln_plugin_device *dev, kiln_plugin_exec *exec) {
  for (uint32_t f = 0; f < exec->n_frames; f++) {
    kiln_status st = kvk_frame_wait(dev, exec, f, "graph_run");
    if (st != KILN_OK) return st;
  }
  for (uint32_t f = 0; f < exec->n_frames; f++) {
    kvk_frame *fr = &exec->frame[f];
    VkCommandBuffer *in = &fr->cmd[0];
    VkResult r;
    if (!*in) {
      VkCommandBufferAllocateInfo cai = {
          .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
          .commandPool = dev->cmd_pool,
          .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
          .commandBufferCount = 1,
      };
      r = vkAllocateCommandBuffers(dev->dev, &cai, in);
    } else {
      r = vkResetCommandBuffer(*in, 0);
    }
    if (r != VK_SUCCESS) return kvk_vk_error("graph_run", "recording the input copies", r);
    VkCommandBufferBeginInfo cbi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    r = vkBeginCommandBuffer(*in, &cbi);
    if (r != VK_SUCCESS) return kvk_vk_error("graph_run", "vkBeginCommandBuffer (inputs)", r);
    kvk_cmd_barrier_all(*in);                 /* the last run may still read the inputs */
    for (uint32_t i = 0; i < exec->n_io; i++) {
      const kvk_io *e = &exec->io[i];
      if (!e->armed) continue;
      VkBufferCopy c = {
          .srcOffset = f * exec->frame_bytes + e->at, .dstOffset = e->offset, .size = e->nbytes};
      vkCmdCopyBuffer(*in, exec->io_buf, e->buffer->buf, 1, &c);
    }
    /* the frame's own command buffer starts with a full barrier: the
     * dispatches see these copies */
    r = vkEndCommandBuffer(*in);
    if (r != VK_SUCCESS) return kvk_vk_error("graph_run", "vkEndCommandBuffer (inputs)", r);
  }
  exec->in_dirty = 0;
  return KILN_OK;
}

void kvk_io_record_out(const kiln_plugin_exec *exec, VkCommandBuffer cmd, uint32_t f) {
  int any = 0;
  for (uint32_t i = 0; i < exec->n_io && !any; i++)
    any = exec->io[i].staged && (exec->io[i].flags & KILN_PTENSOR_OUTPUT);
  if (!any) return;
  kvk_cmd_barrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                  VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                  VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_READ_BIT);
  for (uint32_t i = 0; i < exec->n_io; i++) {
    const kvk_io *e = &exec->io[i];
    if (!e->staged || !(e->flags & KILN_PTENSOR_OUTPUT)) continue;
    VkBufferCopy c = {
        .srcOffset = e->offset, .dstOffset = f * exec->frame_bytes + e->at, .size = e->nbytes};
    vkCmdCopyBuffer(cmd, e->buffer->buf, exec->io_buf, 1, &c);
  }
  kvk_cmd_barrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                  VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
}

void kvk_io_refresh(kiln_plugin_exec *exec, uint32_t f) {
  for (uint32_t i = 0; i < exec->n_io; i++) {
    kvk_io *e = &exec->io[i];
    if (!e->armed || (e->fresh >> f & 1)) continue;
    uint32_t g = 0;
    while (!(e->fresh >> g & 1)) g++;          /* fresh is never 0 */
    /* frame g may be in flight: its copy only reads these bytes, as we do */
    memcpy(exec->io_map + f * exec->frame_bytes + e->at, exec->io_map + g * exec->frame_bytes + e->at,
           (size_t)e->nbytes);
    e->fresh |= 1u << f;
  }
}

kiln_status kvk_frame_wait(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t f,
                           const char *call) {
  kvk_frame *fr = &exec->frame[f];
  if (!fr->pending) return KILN_OK;
  VkResult r = vkWaitForFences(dev->dev, 1, &fr->fence, VK_TRUE, UINT64_MAX);
  if (r != VK_SUCCESS) return kvk_vk_error(call, "vkWaitForFences (graph run)", r);
  fr->pending = 0;
  return kvk_profile_collect(dev, exec->prof);
}

static kvk_io *find_io(kiln_plugin_exec *exec, uint32_t tensor) {
  for (uint32_t i = 0; i < exec->n_io; i++)
    if (exec->io[i].tensor == tensor) return &exec->io[i];
  return NULL;
}

/* The io entry of `tensor` flagged `flag` of the right size, or NULL after
 * setting the error. */
static kvk_io *checked_io(kiln_plugin_exec *exec, uint32_t tensor, uint32_t flag, uint64_t size,
                          const void *host, const char *call) {
  const char *what = flag == KILN_PTENSOR_INPUT ? "an input" : "an output";
  kvk_io *e = find_io(exec, tensor);
  if (!e || !(e->flags & flag)) {
    kvk_host->set_error("vulkan: %s: tensor %u is not %s of this executable", call, tensor, what);
    return NULL;
  }
  if (!host || size != e->nbytes) {
    kvk_host->set_error("vulkan: %s: tensor %u has %llu bytes; got %llu%s", call, tensor,
                        (unsigned long long)e->nbytes, (unsigned long long)size,
                        host ? "" : " and a NULL host pointer");
    return NULL;
  }
  return e;
}

kiln_status kvk_exec_write(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                           const void *src, uint64_t size) {
  kvk_io *e = checked_io(exec, tensor, KILN_PTENSOR_INPUT, size, src, "exec_write");
  if (!e) return KILN_INVALID_ARGUMENT;
  if (!e->staged) return kvk_buffer_write(dev, e->buffer, e->offset, src, size);
  if (!e->armed) {
    /* from now on the frames copy this input in; graph_run re-records
     * their input copies first */
    e->armed = 1;
    exec->in_dirty = 1;
  }
  uint32_t f = (uint32_t)(exec->runs % exec->n_frames);   /* the next run's frame */
  kiln_status st = kvk_frame_wait(dev, exec, f, "exec_write");
  if (st != KILN_OK) return st;
  memcpy(exec->io_map + f * exec->frame_bytes + e->at, src, (size_t)size);
  e->fresh = 1u << f;
  return KILN_OK;
}

kiln_status kvk_exec_read(kiln_plugin_device *dev, kiln_plugin_exec *exec, uint32_t tensor,
                          uint32_t back, void *dst, uint64_t size) {
  kvk_io *e = checked_io(exec, tensor, KILN_PTENSOR_OUTPUT, size, dst, "exec_read");
  if (!e) return KILN_INVALID_ARGUMENT;
  uint32_t depth = kvk_exec_history(exec, tensor);
  if (back >= depth || (back > 0 && exec->runs <= back)) {
    kvk_host->set_error("vulkan: exec_read: tensor %u: run %u back is out of reach (%llu runs so "
                        "far; this output keeps the last %u)",
                        tensor, back, (unsigned long long)exec->runs, depth);
    return KILN_INVALID_ARGUMENT;
  }
  if (!e->staged || exec->runs == 0) return kvk_buffer_read(dev, e->buffer, e->offset, dst, size);
  uint32_t f = (uint32_t)((exec->runs - 1 - back) % exec->n_frames);
  kiln_status st = kvk_frame_wait(dev, exec, f, "exec_read");
  if (st != KILN_OK) return st;
  memcpy(dst, exec->io_map + f * exec->frame_bytes + e->at, (size_t)size);
  return KILN_OK;
}

uint32_t kvk_exec_history(const kiln_plugin_exec *exec, uint32_t tensor) {
  for (uint32_t i = 0; i < exec->n_io; i++)
    if (exec->io[i].tensor == tensor)
      return exec->io[i].staged && (exec->io[i].flags & KILN_PTENSOR_OUTPUT) ? exec->n_frames : 1;
  return 1;
}
