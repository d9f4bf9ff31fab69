// Memory on a device: host memory for LT_CPU, CUDA device memory for LT_CUDA. Without a CUDA
// build, asking for LT_CUDA is an error that says so.
#ifndef LT_DEVICE_H
#define LT_DEVICE_H

#include "core/tensor.h"

// `what` names the buffer in the out-of-memory message ("activations", "parameters", ...).
int lt_device_alloc(lt_device device, size_t bytes, const char *what, void **out);
void lt_device_free(lt_device device, void *ptr);
int lt_device_memset0(lt_device device, void *ptr, size_t bytes);
// Copies between any two devices; blocks until the copy is done.
int lt_device_copy(void *dst, lt_device dst_device, const void *src, lt_device src_device,
                   size_t bytes);
// Copies a tensor's bytes into host memory `dst` (lt_nbytes(t) bytes), and back.
int lt_tensor_to_host(void *dst, lt_tensor src);
int lt_tensor_from_host(lt_tensor dst, const void *src);
// Human-readable size: "1.50 GiB".
const char *lt_format_bytes(double bytes, char *buf, size_t len);

#endif
