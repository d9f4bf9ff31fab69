#include "layers/linear.h"

#include "core/error.h"

lt_tensor lt_rows_of(lt_tensor t, int64_t features) {
  return lt_reshape(t, 2, LT_SHAPE(lt_numel(t) / features, features));
}

int lt_linear_forward(lt_ctx *ctx, lt_tensor y, lt_tensor x, lt_tensor w) {
  const int64_t out = w.shape[0], in = w.shape[1];
  return lt_matmul(ctx, lt_rows_of(y, out), lt_rows_of(x, in), false, w, true, 1.0f, 0.0f);
}

int lt_linear_backward_input(lt_ctx *ctx, lt_tensor dx, lt_tensor dy, lt_tensor w) {
  const int64_t out = w.shape[0], in = w.shape[1];
  return lt_matmul(ctx, lt_rows_of(dx, in), lt_rows_of(dy, out), false, w, false, 1.0f, 0.0f);
}

int lt_linear_backward_weight(lt_ctx *ctx, lt_tensor dw, lt_tensor dy, lt_tensor x) {
  const int64_t out = dw.shape[0], in = dw.shape[1];
  return lt_matmul(ctx, dw, lt_rows_of(dy, out), true, lt_rows_of(x, in), false, 1.0f, 1.0f);
}

int lt_linear_backward(lt_ctx *ctx, lt_tensor dx, lt_tensor dw, lt_tensor dy, lt_tensor x,
                       lt_tensor w) {
  if (dx.data) LT_TRY(lt_linear_backward_input(ctx, dx, dy, w));
  return lt_linear_backward_weight(ctx, dw, dy, x);
}

int lt_fused_view(lt_tensor *out, const lt_param *parts, int n_parts, lt_param_part which) {
  lt_tensor first = which == LT_PARAM_VALUE ? parts[0].value : parts[0].grad;
  int64_t rows = 0, cols = first.shape[1];
  char *expected = first.data;
  for (int i = 0; i < n_parts; i++) {
    lt_tensor t = which == LT_PARAM_VALUE ? parts[i].value : parts[i].grad;
    // Registration with fused_with_prev guarantees this; a failure is a bug in a layer.
    LT_ASSERT(t.ndim == 2 && t.shape[1] == cols && (char *)t.data == expected);
    expected += lt_nbytes(t);
    rows += t.shape[0];
  }
  *out = lt_view2(first.data, first.dtype, first.device, rows, cols);
  return LT_OK;
}
