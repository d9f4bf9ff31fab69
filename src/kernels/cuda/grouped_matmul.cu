// The experts' GEMMs on the GPU: one cuBLAS GEMM per non-empty group, on the group's rows.
// Matches lt_cpu_grouped_matmul and lt_cpu_grouped_matmul_wgrad.
//
// Why cuBLAS (cublasGemmEx) rather than matmul.cu's cuBLASLt plans: an expert's row count changes
// with the routing at every step, and matmul.cu keeps a plan per exact shape, timing candidates
// for each new large one, which per expert per step would cost more than the GEMMs. cuBLAS picks
// its kernel per call from its own heuristic cache, with no timing; the group sizes come from the
// host (`rows`), as the layer reads the dispatch plan's offsets back once per pass.
//
// Row-major to cuBLAS's column-major, as in matmul.cu: a row-major (r, c) matrix is a
// column-major (c, r) one, so C = A op(B) is computed as C^T = op(B)^T A^T.
#include <cublas_v2.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_moe.h"

static int gemm_fail(cublasStatus_t s, const char *op, int64_t group, int64_t m, int64_t n,
                     int64_t k) {
  return lt_fail(LT_ERR_DEVICE, "cuBLAS error in %s, group %lld (%lld x %lld x %lld): %s (%s)", op,
                 (long long)group, (long long)m, (long long)n, (long long)k,
                 cublasGetStatusString(s), cublasGetStatusName(s));
}

// The context's cuBLAS handle, made on first use, on its stream and cuBLASLt's workspace (the
// stream runs one op at a time, so the two libraries never use the workspace at once).
static int gemm_handle(lt_cuda_state *st, cublasHandle_t *out) {
  if (!st->gemm_blas) {
    cublasHandle_t h;
    cublasStatus_t s = cublasCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) return gemm_fail(s, "cublasCreate", 0, 0, 0, 0);
    // cublasSetStream resets the workspace to cuBLAS's own pool: set the stream first. The handle
    // is kept only once both hold, so a half-set-up one never runs off the context's stream.
    s = cublasSetStream(h, st->stream);
    if (s == CUBLAS_STATUS_SUCCESS)
      s = cublasSetWorkspace(h, st->blas_workspace, st->blas_workspace_bytes);
    if (s != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(h);
      return gemm_fail(s, "cublasSetWorkspace", 0, 0, 0, 0);
    }
    st->gemm_blas = h;
  }
  *out = st->gemm_blas;
  return LT_OK;
}

void lt_cuda_gemm_blas_free(lt_cuda_state *st) {
  if (st->gemm_blas) cublasDestroy(st->gemm_blas);
  st->gemm_blas = NULL;
}

static cudaDataType_t blas_type(lt_dtype dtype) {
  return dtype == LT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

// bf16 operands give a bf16 or f32 product; f32 operands an f32 one (cublasGemmEx's pairs).
static bool types_ok(lt_tensor c, lt_tensor a, lt_tensor b) {
  if (a.dtype != b.dtype) return false;
  if (a.dtype == LT_BF16) return c.dtype == LT_BF16 || c.dtype == LT_F32;
  return a.dtype == LT_F32 && c.dtype == LT_F32;
}

// c[rows_g] = a[rows_g] op(b[g]).  a: (R, K); b: (G, N, K) with trans_b, else (G, K, N); c: (R, N)
// cuBLAS sees C^T (N x m) = op(b[g])^T (N x K) . a_g^T (K x m).
int lt_cuda_grouped_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b, bool trans_b,
                           const int64_t *rows) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!types_ok(c, a, b))
    return lt_cuda_unsupported("grouped_matmul", "a, b both bf16 (c bf16 or f32) or all f32", a, b);
  cublasHandle_t h;
  LT_TRY(gemm_handle(st, &h));
  const int64_t groups = b.shape[0], k = a.shape[1], n = c.shape[1];
  const size_t ab = lt_dtype_size(a.dtype), cb = lt_dtype_size(c.dtype);
  const float one = 1.0f, zero = 0.0f;
  for (int64_t g = 0; g < groups; g++) {
    const int64_t m = rows[g + 1] - rows[g];
    if (m == 0) continue;
    const char *bg = (const char *)b.data + (size_t)(g * n * k) * ab;
    const char *ag = (const char *)a.data + (size_t)(rows[g] * k) * ab;
    char *cg = (char *)c.data + (size_t)(rows[g] * n) * cb;
    cublasStatus_t s = cublasGemmEx(
        h, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, (int)n, (int)m, (int)k, &one, bg,
        blas_type(b.dtype), (int)(trans_b ? k : n), ag, blas_type(a.dtype), (int)k, &zero, cg,
        blas_type(c.dtype), (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return gemm_fail(s, "grouped_matmul", g, m, n, k);
  }
  return lt_cuda_launched(st, "grouped_matmul", a, b);
}

// c[g] += a[rows_g]^T b[rows_g].  a: (R, M); b: (R, N); c: (G, M, N) f32
// cuBLAS sees C^T (N x M) += b_g^T (N x m) . a_g (m x M), a_g read transposed.
int lt_cuda_grouped_matmul_wgrad(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b,
                                 const int64_t *rows) {
  lt_cuda_state *st = cuda_state(ctx);
  if (!types_ok(c, a, b) || c.dtype != LT_F32)
    return lt_cuda_unsupported("grouped_matmul_wgrad", "a, b both bf16 or both f32; c f32", a, b);
  cublasHandle_t h;
  LT_TRY(gemm_handle(st, &h));
  const int64_t groups = c.shape[0], mw = a.shape[1], n = b.shape[1];
  const size_t ab = lt_dtype_size(a.dtype);
  const float one = 1.0f;
  for (int64_t g = 0; g < groups; g++) {
    const int64_t count = rows[g + 1] - rows[g];
    if (count == 0) continue;
    const char *ag = (const char *)a.data + (size_t)(rows[g] * mw) * ab;
    const char *bg = (const char *)b.data + (size_t)(rows[g] * n) * ab;
    float *cg = (float *)c.data + g * mw * n;
    cublasStatus_t s =
        cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)n, (int)mw, (int)count, &one, bg,
                     blas_type(b.dtype), (int)n, ag, blas_type(a.dtype), (int)mw, &one, cg,
                     CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return gemm_fail(s, "grouped_matmul_wgrad", g, mw, n, count);
  }
  return lt_cuda_launched(st, "grouped_matmul_wgrad", a, b);
}
