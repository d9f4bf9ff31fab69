// AdamW over the whole flat parameter buffer in one launch (a multi-tensor apply): the runs of
// equal weight decay travel in the kernel's parameters and each block finds its run, so a step is
// one pass over params, gradients and moments, writing the bf16 compute copy on the way.
#include <math.h>

#include "kernels/cuda/cuda_common.cuh"

enum { THREADS = 256, PER_THREAD = 8, CHUNK = THREADS * PER_THREAD, MAX_RUNS = 48 };

typedef struct adamw_runs {
  int64_t start[MAX_RUNS], end[MAX_RUNS];
  float decay[MAX_RUNS];         // 1 - lr * weight_decay
  int first_block[MAX_RUNS + 1]; // block b works on the run r with first_block[r] <= b
  int count;
} adamw_runs;

typedef struct adamw_scalars {
  float beta1, beta2, eps, grad_scale, step_size, bias2_sqrt;
} adamw_scalars;

__device__ __forceinline__ void adamw_element(float *p, float *m, float *v, float g, float decay,
                                              const adamw_scalars &a) {
  g *= a.grad_scale;
  const float decayed = *p * decay;
  *m += (1.0f - a.beta1) * (g - *m);
  *v = a.beta2 * *v + (1.0f - a.beta2) * g * g;
  *p = decayed - a.step_size * *m / (sqrtf(*v) / a.bias2_sqrt + a.eps);
}

// One AdamW step on [start, end) of each run. Matches lt_cpu_adamw (PyTorch's formula).
// param, grad, m, v: (numel) f32; compute: (numel) bf16 or NULL
__global__ void __launch_bounds__(THREADS)
    adamw_kernel(float *param, const float *grad, float *m, float *v, bf16 *compute,
                 const __grid_constant__ adamw_runs runs, const adamw_scalars a) {
  int r = 0;
  while (r + 1 < runs.count && runs.first_block[r + 1] <= (int)blockIdx.x) r++;
  // Chunks are aligned to 8 elements globally, so whole vectors are 32-byte aligned.
  const int64_t base = (runs.start[r] & ~(int64_t)7) +
                       (int64_t)(blockIdx.x - runs.first_block[r]) * CHUNK +
                       (int64_t)threadIdx.x * PER_THREAD;
  const int64_t lo = runs.start[r], hi = runs.end[r];
  const float decay = runs.decay[r];
  if (base >= lo && base + PER_THREAD <= hi) {
    float pv[8], gv[8], mv[8], vv[8];
    load8(param + base, pv);
    load8(grad + base, gv);
    load8(m + base, mv);
    load8(v + base, vv);
#pragma unroll
    for (int e = 0; e < 8; e++) adamw_element(&pv[e], &mv[e], &vv[e], gv[e], decay, a);
    store8(param + base, pv);
    store8(m + base, mv);
    store8(v + base, vv);
    if (compute) store8(compute + base, pv);
    return;
  }
  for (int64_t i = base > lo ? base : lo; i < base + PER_THREAD && i < hi; i++) {
    adamw_element(&param[i], &m[i], &v[i], grad[i], decay, a);
    if (compute) compute[i] = __float2bfloat16_rn(param[i]);
  }
}

int lt_cuda_adamw(lt_ctx *ctx, lt_tensor param, lt_tensor grad, lt_tensor m, lt_tensor v,
                  lt_tensor compute, const lt_adamw_args *args) {
  lt_cuda_state *st = cuda_state(ctx);
  if (compute.data && compute.dtype != LT_BF16)
    return lt_cuda_unsupported("adamw", "the compute copy must be bf16", compute, param);
  if (!aligned16(param.data) || !aligned16(grad.data) || !aligned16(m.data) || !aligned16(v.data) ||
      (compute.data && !aligned16(compute.data)))
    return lt_cuda_unsupported("adamw", "buffers must be 16-byte aligned", param, grad);
  // Bias corrections in double on the host, as lt_cpu_adamw (and PyTorch) compute them.
  const double bias1 = 1.0 - pow(args->beta1, (double)args->step);
  const adamw_scalars a = {.beta1 = args->beta1,
                           .beta2 = args->beta2,
                           .eps = args->eps,
                           .grad_scale = args->grad_scale,
                           .step_size = (float)(args->lr / bias1),
                           .bias2_sqrt = (float)sqrt(1.0 - pow(args->beta2, (double)args->step))};
  for (int i = 0; i < args->n_runs;) {
    adamw_runs runs = {};
    int blocks = 0;
    for (; i < args->n_runs && runs.count < MAX_RUNS; i++) {
      const lt_adamw_run *run = &args->runs[i];
      if (run->numel == 0) continue;
      const int64_t aligned_start = run->start & ~(int64_t)7;
      runs.start[runs.count] = run->start;
      runs.end[runs.count] = run->start + run->numel;
      runs.decay[runs.count] = 1.0f - args->lr * run->weight_decay;
      runs.first_block[runs.count] = blocks;
      blocks += (int)blocks_for(run->start + run->numel - aligned_start, CHUNK);
      runs.count++;
    }
    runs.first_block[runs.count] = blocks;
    if (blocks == 0) continue;
    adamw_kernel<<<blocks, THREADS, 0, st->stream>>>((float *)param.data, (const float *)grad.data,
                                                     (float *)m.data, (float *)v.data,
                                                     (bf16 *)compute.data, runs, a);
    LT_TRY(lt_cuda_launched(st, "adamw", param, grad));
  }
  return LT_OK;
}
