// Tensors: a typed, shaped view of memory that something else owns (an arena, the parameter
// buffer, a dataset reader). Always contiguous and row-major; a view never frees.
#ifndef LT_TENSOR_H
#define LT_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum lt_dtype { LT_F32, LT_BF16, LT_I32, LT_U32, LT_U16, LT_U8, LT_I64, LT_U64 } lt_dtype;
typedef enum lt_device { LT_CPU, LT_CUDA } lt_device;

#define LT_MAX_DIMS 4

typedef struct lt_tensor {
  void *data;
  lt_dtype dtype;
  lt_device device;
  int ndim;
  int64_t shape[LT_MAX_DIMS];
} lt_tensor;

size_t lt_dtype_size(lt_dtype dtype);
const char *lt_dtype_name(lt_dtype dtype);
const char *lt_device_name(lt_device device);

// A view of `data` with the given shape; ndim in 1..LT_MAX_DIMS.
lt_tensor lt_view(void *data, lt_dtype dtype, lt_device device, int ndim, const int64_t *shape);
#define LT_SHAPE(...)                       ((const int64_t[]){__VA_ARGS__})
#define lt_view1(data, dt, dev, a)          lt_view((data), (dt), (dev), 1, LT_SHAPE(a))
#define lt_view2(data, dt, dev, a, b)       lt_view((data), (dt), (dev), 2, LT_SHAPE(a, b))
#define lt_view3(data, dt, dev, a, b, c)    lt_view((data), (dt), (dev), 3, LT_SHAPE(a, b, c))
#define lt_view4(data, dt, dev, a, b, c, d) lt_view((data), (dt), (dev), 4, LT_SHAPE(a, b, c, d))

int64_t lt_numel(lt_tensor t);
size_t lt_nbytes(lt_tensor t);
bool lt_same_shape(lt_tensor a, lt_tensor b);
// The same memory seen with another shape of the same element count.
lt_tensor lt_reshape(lt_tensor t, int ndim, const int64_t *shape);
// Rows [start, start + count) of dim 0: contiguous, so still a plain view.
lt_tensor lt_rows(lt_tensor t, int64_t start, int64_t count);
// Collapses all leading dims: (a, b, ..., z) -> (a*b*..., z).
lt_tensor lt_flatten2(lt_tensor t);
// "f32 (2, 32, 64) cpu" for error messages.
const char *lt_tensor_desc(lt_tensor t, char *buf, size_t len);

static inline float *lt_f32(lt_tensor t) {
  return (float *)t.data;
}
static inline int32_t *lt_i32(lt_tensor t) {
  return (int32_t *)t.data;
}

// bf16 as stored bits; round-to-nearest-even from fp32, NaN kept quiet.
typedef uint16_t lt_bf16;
lt_bf16 lt_f32_to_bf16(float x);
float lt_bf16_to_f32(lt_bf16 x);

#endif
