// Matmuls through cuBLASLt: bf16 (or f32) operands, fp32 accumulation, bf16 or f32 output.
// Matches lt_cpu_matmul: c = alpha * op(a) @ op(b) + beta * c on row-major 2-D views.
//
// cuBLASLt is column-major, and a row-major (r, c) matrix is a column-major (c, r) one, so the
// row-major product C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: B
// goes first, and the dimensions swap (M = n, N = m). beta = 1 with an f32 C is how weight
// gradients accumulate over micro-batches in fp32 (README, "Mixed precision").
//
// Descriptors and the algorithm are kept per shape: a training step reuses a dozen. For a large
// shape the heuristic's top candidates are timed once, on the call's own operands (best of
// TUNE_REPS runs each), in the heuristic's order, and a candidate replaces the one chosen so far
// only if it is at least 3% faster (the heuristic alone once ran the q|k|v projection of the 135M
// model 10x slower than the same-sized gate|up one). The margin keeps near-ties on the earlier
// candidate, and so the bits of the result the same from run to run; one whose time lands at the
// margin itself can still go either way (a run's timings repeat within about 1%). The margin was
// 10% against the first candidate, which two shapes of the 135M model's step straddled (0.266
// against 0.295 ms, 0.134 against 0.149): runs that kept the first spent 0.7 ms more a step at
// T=16384 than runs that did not.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

enum {
  MAX_PLANS = 64,
  CANDIDATES = 8,
  TUNE_REPS = 5,
};
#define TUNE_MIN_FLOPS 1e9 // smaller products keep the heuristic's first choice untimed
// A later candidate replaces the chosen one when it takes at most this share of its time.
#define TUNE_MARGIN 0.97f

typedef struct matmul_key {
  int64_t m, n, k;
  int trans_a, trans_b, dtype_ab, dtype_c, accumulate;
  int align_a, align_b, align_c;
} matmul_key;

struct matmul_plan {
  matmul_key key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t layout_a, layout_b, layout_c; // cuBLASLt's A (our b), B (our a), C
  cublasLtMatmulAlgo_t algo;
};

static int blas_fail(cublasStatus_t s, const char *call, const matmul_key *key) {
  return lt_fail(LT_ERR_DEVICE,
                 "cuBLASLt error in %s for a matmul (%lld x %lld) = op(a) (%lld x %lld) op(b), "
                 "%s operands, %s output: %s (%s)",
                 call, (long long)key->m, (long long)key->n, (long long)key->m, (long long)key->k,
                 lt_dtype_name((lt_dtype)key->dtype_ab), lt_dtype_name((lt_dtype)key->dtype_c),
                 cublasLtGetStatusString(s), cublasLtGetStatusName(s));
}

#define BLAS_TRY(call, key)                                                                        \
  do {                                                                                             \
    cublasStatus_t blas_try_s_ = (call);                                                           \
    if (blas_try_s_ != CUBLAS_STATUS_SUCCESS) return blas_fail(blas_try_s_, #call, key);           \
  } while (0)

static cudaDataType_t cuda_type(int dtype) {
  return dtype == LT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

static int alignment(const void *p) {
  uintptr_t a = (uintptr_t)p;
  return (a & 15u) == 0 ? 16 : (a & 7u) == 0 ? 8 : (a & 3u) == 0 ? 4 : 2;
}

static void destroy_plan(struct matmul_plan *p) {
  if (p->desc) cublasLtMatmulDescDestroy(p->desc);
  if (p->layout_a) cublasLtMatrixLayoutDestroy(p->layout_a);
  if (p->layout_b) cublasLtMatrixLayoutDestroy(p->layout_b);
  if (p->layout_c) cublasLtMatrixLayoutDestroy(p->layout_c);
  memset(p, 0, sizeof *p);
}

void lt_cuda_matmul_plans_free(lt_cuda_state *st) {
  for (int i = 0; i < st->n_plans; i++) destroy_plan(&st->plans[i]);
  free(st->plans);
  st->plans = NULL;
  st->n_plans = 0;
}

// The operands of the call a plan is built for, to time candidates on.
typedef struct matmul_call {
  const void *a, *b;
  void *c;
  float alpha, beta;
  size_t c_bytes;
} matmul_call;

static int run(lt_cuda_state *st, const struct matmul_plan *p, const cublasLtMatmulAlgo_t *algo,
               const matmul_call *call, void *c, float beta) {
  cublasStatus_t s = cublasLtMatmul(st->blas, p->desc, &call->alpha, call->b, p->layout_a, call->a,
                                    p->layout_b, &beta, c, p->layout_c, c, p->layout_c, algo,
                                    st->blas_workspace, st->blas_workspace_bytes, st->stream);
  return s == CUBLAS_STATUS_SUCCESS ? LT_OK : blas_fail(s, "cublasLtMatmul", &p->key);
}

// Milliseconds of the best of TUNE_REPS runs of one candidate. With beta != 0 the runs write into
// the kernels' workspace instead, so the call's accumulator is left alone.
static int time_candidate(lt_cuda_state *st, const struct matmul_plan *p,
                          const cublasLtMatmulAlgo_t *algo, const matmul_call *call, float *ms) {
  void *c = call->beta == 0.0f ? call->c : st->scratch;
  cudaEvent_t start, stop;
  CUDA_TRY(cudaEventCreate(&start), "creating timing events");
  CUDA_TRY(cudaEventCreate(&stop), "creating timing events");
  int rc = run(st, p, algo, call, c, 0.0f); // warm-up
  *ms = INFINITY;
  for (int r = 0; r < TUNE_REPS && rc == LT_OK; r++) {
    float t = 0.0f;
    cudaEventRecord(start, st->stream);
    rc = run(st, p, algo, call, c, 0.0f);
    cudaEventRecord(stop, st->stream);
    if (cudaEventSynchronize(stop) == cudaSuccess &&
        cudaEventElapsedTime(&t, start, stop) == cudaSuccess && t < *ms)
      *ms = t;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return rc;
}

static int build_plan(lt_cuda_state *st, struct matmul_plan *p, const matmul_key *key,
                      const matmul_call *call) {
  memset(p, 0, sizeof *p);
  p->key = *key;
  const int64_t m = key->m, n = key->n, k = key->k;
  const cudaDataType_t ab = cuda_type(key->dtype_ab), c = cuda_type(key->dtype_c);
  BLAS_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), key);
  cublasOperation_t op_a = key->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N; // cuBLASLt's A is our b
  cublasOperation_t op_b = key->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  BLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a),
           key);
  BLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b),
           key);
  // Column-major shapes as stored: our b is (k, n) row-major = (n, k) column-major, or its
  // transpose; likewise a; C^T is (n, m) column-major.
  BLAS_TRY(key->trans_b ? cublasLtMatrixLayoutCreate(&p->layout_a, ab, k, n, k)
                        : cublasLtMatrixLayoutCreate(&p->layout_a, ab, n, k, n),
           key);
  BLAS_TRY(key->trans_a ? cublasLtMatrixLayoutCreate(&p->layout_b, ab, m, k, m)
                        : cublasLtMatrixLayoutCreate(&p->layout_b, ab, k, m, k),
           key);
  BLAS_TRY(cublasLtMatrixLayoutCreate(&p->layout_c, c, n, m, n), key);
  cublasLtMatmulPreference_t pref;
  BLAS_TRY(cublasLtMatmulPreferenceCreate(&pref), key);
  uint64_t ws = st->blas_workspace_bytes;
  uint32_t al_a = (uint32_t)key->align_b, al_b = (uint32_t)key->align_a,
           al_c = (uint32_t)key->align_c;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof ws);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                       sizeof al_a);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                       sizeof al_b);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                       sizeof al_c);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c,
                                       sizeof al_c);
  cublasLtMatmulHeuristicResult_t results[CANDIDATES];
  int found = 0;
  cublasStatus_t s =
      cublasLtMatmulAlgoGetHeuristic(st->blas, p->desc, p->layout_a, p->layout_b, p->layout_c,
                                     p->layout_c, pref, CANDIDATES, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  BLAS_TRY(s, key);
  if (found == 0)
    return blas_fail(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmulAlgoGetHeuristic", key);
  p->algo = results[0].algo;
  const double flops = 2.0 * (double)key->m * (double)key->n * (double)key->k;
  const bool scratch_fits = call->beta == 0.0f || call->c_bytes <= st->scratch_bytes;
  if (found == 1 || flops < TUNE_MIN_FLOPS || !scratch_fits) return LT_OK;
  float first_ms, best_ms;
  LT_TRY(time_candidate(st, p, &results[0].algo, call, &first_ms));
  best_ms = first_ms;
  int chosen = 0;
  char times[256];
  int len = snprintf(times, sizeof times, "%.3f", first_ms);
  for (int i = 1; i < found; i++) {
    float ms;
    if (time_candidate(st, p, &results[i].algo, call, &ms) != LT_OK) {
      lt_error_clear(); // a candidate that fails to run is simply not chosen
      continue;
    }
    if (len < (int)sizeof times)
      len += snprintf(times + len, sizeof times - (size_t)len, " %.3f", ms);
    if (ms < TUNE_MARGIN * best_ms) best_ms = ms, p->algo = results[i].algo, chosen = i;
  }
  if (st->profile)
    fprintf(stderr, "matmul (%lld x %lld x %lld%s%s, %s out): candidates %s ms; chose #%d\n",
            (long long)key->m, (long long)key->n, (long long)key->k, key->trans_a ? ", a^T" : "",
            key->trans_b ? ", b^T" : "", lt_dtype_name((lt_dtype)key->dtype_c), times, chosen);
  return LT_OK;
}

static int find_plan(lt_cuda_state *st, const matmul_key *key, const matmul_call *call,
                     struct matmul_plan **out) {
  for (int i = 0; i < st->n_plans; i++)
    if (memcmp(&st->plans[i].key, key, sizeof *key) == 0) {
      *out = &st->plans[i];
      return LT_OK;
    }
  // A full cache starts over: shapes beyond MAX_PLANS only cost a heuristic call each.
  if (st->n_plans == MAX_PLANS) lt_cuda_matmul_plans_free(st);
  if (!st->plans) {
    st->plans = (struct matmul_plan *)calloc(MAX_PLANS, sizeof *st->plans);
    LT_CHECK(st->plans, LT_ERR_MEMORY, "out of host memory for matmul plans");
  }
  struct matmul_plan *p = &st->plans[st->n_plans];
  int rc = build_plan(st, p, key, call);
  if (rc != LT_OK) {
    destroy_plan(p);
    return rc;
  }
  st->n_plans++;
  *out = p;
  return LT_OK;
}

int lt_cuda_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, bool trans_a, lt_tensor b, bool trans_b,
                   float alpha, float beta) {
  lt_cuda_state *st = cuda_state(ctx);
  if (a.dtype != b.dtype || (a.dtype != LT_BF16 && a.dtype != LT_F32))
    return lt_cuda_unsupported("matmul", "operands must both be bf16 or both f32", a, b);
  if (c.dtype != LT_BF16 && c.dtype != LT_F32)
    return lt_cuda_unsupported("matmul", "output must be bf16 or f32", c, a);
  matmul_key key;
  memset(&key, 0, sizeof key); // compared with memcmp: padding included
  key.m = trans_a ? a.shape[1] : a.shape[0];
  key.n = trans_b ? b.shape[0] : b.shape[1];
  key.k = trans_a ? a.shape[0] : a.shape[1];
  key.trans_a = trans_a, key.trans_b = trans_b;
  key.dtype_ab = a.dtype, key.dtype_c = c.dtype;
  key.accumulate = beta != 0.0f;
  key.align_a = alignment(a.data), key.align_b = alignment(b.data);
  key.align_c = alignment(c.data);
  if (key.m == 0 || key.n == 0) return LT_OK;
  if (key.k == 0) return beta == 1.0f ? LT_OK : lt_cuda_scale(ctx, c, beta);
  struct matmul_plan *p = NULL;
  const matmul_call call = {a.data, b.data, c.data, alpha, beta, lt_nbytes(c)};
  LT_TRY(find_plan(st, &key, &call, &p));
  LT_TRY(run(st, p, &p->algo, &call, c.data, beta));
  return lt_cuda_launched(st, "matmul", a, b);
}
