#include "core/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

#ifdef LT_WITH_CUDA
#include "kernels/cuda/cuda_runtime_glue.h"
#endif

const char *lt_format_bytes(double bytes, char *buf, size_t len) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) bytes /= 1024.0, u++;
  snprintf(buf, len, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

#ifndef LT_WITH_CUDA
static int no_cuda(void) {
  return lt_fail(LT_ERR_USAGE, "this longtrain was built without CUDA: rebuild with -DLT_CUDA=ON "
                               "or run with device: cpu");
}
#endif

int lt_device_alloc(lt_device device, size_t bytes, const char *what, void **out) {
  *out = NULL;
  if (bytes == 0) return LT_OK;
  char size[32];
  if (device == LT_CPU) {
    // 256-byte alignment keeps every arena view aligned for AVX-512 and for cudaMemcpy.
    size_t rounded = (bytes + 255) & ~(size_t)255;
    *out = aligned_alloc(256, rounded);
    LT_CHECK(*out, LT_ERR_MEMORY,
             "out of host memory allocating %s for %s: lower train.micro_batch "
             "or train.seq_len, or enable train.recompute",
             lt_format_bytes((double)bytes, size, 32), what);
    return LT_OK;
  }
#ifdef LT_WITH_CUDA
  return lt_cuda_alloc(bytes, what, out);
#else
  (void)what;
  return no_cuda();
#endif
}

void lt_device_free(lt_device device, void *ptr) {
  if (!ptr) return;
  if (device == LT_CPU) {
    free(ptr);
    return;
  }
#ifdef LT_WITH_CUDA
  lt_cuda_free(ptr);
#endif
}

int lt_device_memset0(lt_device device, void *ptr, size_t bytes) {
  if (bytes == 0) return LT_OK;
  if (device == LT_CPU) {
    memset(ptr, 0, bytes);
    return LT_OK;
  }
#ifdef LT_WITH_CUDA
  return lt_cuda_memset0(ptr, bytes);
#else
  return no_cuda();
#endif
}

int lt_device_copy(void *dst, lt_device dst_device, const void *src, lt_device src_device,
                   size_t bytes) {
  if (bytes == 0) return LT_OK;
  if (dst_device == LT_CPU && src_device == LT_CPU) {
    memmove(dst, src, bytes);
    return LT_OK;
  }
#ifdef LT_WITH_CUDA
  return lt_cuda_memcpy(dst, dst_device == LT_CUDA, src, src_device == LT_CUDA, bytes);
#else
  return no_cuda();
#endif
}

int lt_tensor_to_host(void *dst, lt_tensor src) {
  return lt_device_copy(dst, LT_CPU, src.data, src.device, lt_nbytes(src));
}

int lt_tensor_from_host(lt_tensor dst, const void *src) {
  return lt_device_copy(dst.data, dst.device, src, LT_CPU, lt_nbytes(dst));
}
