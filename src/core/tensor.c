#include "core/tensor.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

size_t lt_dtype_size(lt_dtype dtype) {
  switch (dtype) {
  case LT_F32:
  case LT_I32:
  case LT_U32:
    return 4;
  case LT_BF16:
  case LT_U16:
    return 2;
  case LT_U8:
    return 1;
  case LT_I64:
  case LT_U64:
    return 8;
  }
  return 0;
}

const char *lt_dtype_name(lt_dtype dtype) {
  static const char *names[] = {"f32", "bf16", "i32", "u32", "u16", "u8", "i64", "u64"};
  return names[dtype];
}

const char *lt_device_name(lt_device device) {
  return device == LT_CUDA ? "cuda" : "cpu";
}

lt_tensor lt_view(void *data, lt_dtype dtype, lt_device device, int ndim, const int64_t *shape) {
  assert(ndim >= 1 && ndim <= LT_MAX_DIMS);
  lt_tensor t = {.data = data, .dtype = dtype, .device = device, .ndim = ndim};
  for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
  return t;
}

int64_t lt_numel(lt_tensor t) {
  int64_t n = 1;
  for (int i = 0; i < t.ndim; i++) n *= t.shape[i];
  return n;
}

size_t lt_nbytes(lt_tensor t) {
  return (size_t)lt_numel(t) * lt_dtype_size(t.dtype);
}

bool lt_same_shape(lt_tensor a, lt_tensor b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; i++)
    if (a.shape[i] != b.shape[i]) return false;
  return true;
}

lt_tensor lt_reshape(lt_tensor t, int ndim, const int64_t *shape) {
  lt_tensor r = lt_view(t.data, t.dtype, t.device, ndim, shape);
  assert(lt_numel(r) == lt_numel(t));
  return r;
}

lt_tensor lt_rows(lt_tensor t, int64_t start, int64_t count) {
  assert(start >= 0 && count >= 0 && start + count <= t.shape[0]);
  size_t row_bytes = lt_nbytes(t) / (size_t)(t.shape[0] ? t.shape[0] : 1);
  lt_tensor r = t;
  r.data = (char *)t.data + (size_t)start * row_bytes;
  r.shape[0] = count;
  return r;
}

lt_tensor lt_flatten2(lt_tensor t) {
  int64_t last = t.shape[t.ndim - 1];
  return lt_view2(t.data, t.dtype, t.device, lt_numel(t) / (last ? last : 1), last);
}

const char *lt_tensor_desc(lt_tensor t, char *buf, size_t len) {
  int n = snprintf(buf, len, "%s (", lt_dtype_name(t.dtype));
  for (int i = 0; i < t.ndim && n > 0 && (size_t)n < len; i++)
    n += snprintf(buf + n, len - (size_t)n, i ? ", %lld" : "%lld", (long long)t.shape[i]);
  if (n > 0 && (size_t)n < len)
    snprintf(buf + n, len - (size_t)n, ") %s", lt_device_name(t.device));
  return buf;
}

lt_bf16 lt_f32_to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (lt_bf16)((u >> 16) | 0x40); // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (lt_bf16)(u >> 16);
}

float lt_bf16_to_f32(lt_bf16 x) {
  uint32_t u = (uint32_t)x << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
