/*
 * ckpt_io.h - reading checkpoints of the CLI's character models
 * (char_model.c, gpt_model.c): one tensor checked against the model's
 * shape, and integer metadata in a range.
 */
#ifndef KILN_CLI_CKPT_IO_H
#define KILN_CLI_CKPT_IO_H

#include <stddef.h>

#include "kiln/data.h"
#include "kiln/kiln.h"

/* Uploads entry `name` of f (the checkpoint at path) into t after checking
 * that it is f32 of t's shape. On failure writes the message, naming the
 * file, the tensor and both shapes, into err[errsz]. */
kiln_status ckpt_take(const kiln_safetensors *f, const char *path, const char *name, kiln_tensor *t,
                      char *err, size_t errsz);

/* 1 and *v if metadata `key` is a whole decimal number in [lo, hi], else 0. */
int ckpt_meta_int(const kiln_safetensors *f, const char *key, long lo, long hi, long *v);

#endif
