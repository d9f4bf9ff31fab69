// Device memory for core/device.c: CUDA allocations, fills and copies outside any kernel context
// (parameters, arenas, batches). Each call is checked; an allocation that fails says how much was
// asked, how much the GPU has free, and which config keys lower it.
#ifndef LT_CUDA_RUNTIME_GLUE_H
#define LT_CUDA_RUNTIME_GLUE_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// `what` names the buffer in the message ("activations", "AdamW first moments").
int lt_cuda_alloc(size_t bytes, const char *what, void **out);
void lt_cuda_free(void *ptr);
int lt_cuda_memset0(void *ptr, size_t bytes);
// Blocks until the copy is done and every kernel queued before it has finished.
int lt_cuda_memcpy(void *dst, bool dst_on_device, const void *src, bool src_on_device,
                   size_t bytes);
// GPUs this process can use; 0 without a driver or device (tests skip then).
int lt_cuda_device_count(void);
// The current GPU's compute capability, major version (9: a Hopper); 0 without one.
int lt_cuda_compute_major(void);

#ifdef __cplusplus
}
#endif

#endif
