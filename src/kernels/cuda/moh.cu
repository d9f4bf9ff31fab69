// Mixture-of-head routing (Jin et al. 2024, MoH, eqs. 4-6) and the per-head gating of attention
// outputs on the GPU. A token's router works on a few dozen heads at most, so one thread owns a
// token: its softmaxes, top-K and weights are the short loops of the CPU reference
// (kernels/cpu/moh.c), whose formulas and layouts (kernels.h) these kernels match. The loads f_i
// and P_i are sums over all tokens, one block per routed head. The gating is elementwise (forward)
// and one warp per (token, head) row (backward, for the dot product of its gate's gradient).
// The attention kernels skip a gated-off (query, head) themselves (spec->head_gates), and their
// epilogue writes the weighted heads (spec->gated_out); the gating kernels here weight outputs that
// come from elsewhere (ring attention's merged result; the backward's recompute for Wo's gradient).
// The gating's backward is fused into attention's delta (attention_aux.cu).
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_moh.h"

enum { THREADS = 128, WARPS = THREADS / 32 };

// Where each part of a token's router logits lies: [shared | routed | mix].
typedef struct route_layout {
  int n_shared, n_routed, top_k;
  int shared_logits, mix_logits, n_logits; // Ls, Lm, Ls + R + Lm
} route_layout;

static route_layout layout_of(int n_shared, int n_routed, int top_k) {
  route_layout l = {n_shared, n_routed, top_k, n_shared >= 2 ? n_shared : 0, n_shared >= 1 ? 2 : 0,
                    0};
  l.n_logits = l.shared_logits + n_routed + l.mix_logits;
  return l;
}

// p = softmax(z) over n entries.
template <typename T> __device__ void softmax_into(float *p, const T *z, int n) {
  float mx = -INFINITY, sum = 0.0f;
  for (int i = 0; i < n; i++) mx = fmaxf(mx, to_float(z[i]));
  for (int i = 0; i < n; i++) sum += p[i] = expf(to_float(z[i]) - mx);
  for (int i = 0; i < n; i++) p[i] /= sum;
}

// Whether routed head (p_i, i) comes at or before (last_p, last_i) in the top-K order: larger
// probability first, the lower head first among equals.
__device__ __forceinline__ bool ranks_before(float p_i, int i, float last_p, int last_i) {
  return p_i > last_p || (p_i == last_p && i <= last_i);
}

// The weights of one token's heads (kernels.h). Matches lt_cpu_moh_route_fwd.
// logits, probs: (N, L); gates: (N, S + R) f32; topk: (N, K) i32
template <typename T>
__global__ void moh_route_fwd_kernel(float *gates, float *probs, int32_t *topk, const T *logits,
                                     int64_t n, route_layout l) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const T *z = logits + t * l.n_logits;
  float *pt = probs + t * l.n_logits, *p = pt + l.shared_logits, *mix = p + l.n_routed;
  float *g = gates + t * (l.n_shared + l.n_routed);
  int32_t *chosen = topk + t * l.top_k;
  if (l.shared_logits) softmax_into(pt, z, l.shared_logits);
  softmax_into(p, z + l.shared_logits, l.n_routed);
  if (l.mix_logits) softmax_into(mix, z + l.shared_logits + l.n_routed, 2);
  // Top-K by repeated selection, as the CPU: each pick is the best head ranked after the last.
  float last_p = INFINITY, chosen_mass = 0.0f;
  int last_i = -1;
  for (int k = 0; k < l.top_k; k++) {
    int best = -1;
    for (int i = 0; i < l.n_routed; i++)
      if (!ranks_before(p[i], i, last_p, last_i) && (best < 0 || p[i] > p[best])) best = i;
    chosen[k] = best;
    chosen_mass += p[best];
    last_p = p[best], last_i = best;
  }
  const float a_shared = l.mix_logits ? 2.0f * mix[0] : 0.0f;
  const float a_routed = l.mix_logits ? 2.0f * mix[1] : 1.0f;
  for (int i = 0; i < l.n_shared; i++)
    g[i] = a_shared * (l.shared_logits ? (float)l.n_shared * pt[i] : 1.0f);
  for (int i = 0; i < l.n_routed; i++)
    g[l.n_shared + i] = ranks_before(p[i], i, last_p, last_i)
                            ? a_routed * (float)l.top_k * p[i] / chosen_mass
                            : 0.0f;
}

// load[i] = f_i, the fraction of tokens that chose routed head i; load[R + i] = P_i, the mean of
// p_i. One block per head. probs: (N, L); topk: (N, K); load: (2, R) f32
__global__ void moh_load_kernel(float *load, const float *probs, const int32_t *topk, int64_t n,
                                route_layout l) {
  __shared__ float partial[32];
  __shared__ unsigned long long chose;
  const int i = blockIdx.x;
  if (threadIdx.x == 0) chose = 0;
  __syncthreads();
  unsigned long long count = 0;
  float sum = 0.0f;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    for (int k = 0; k < l.top_k; k++) count += topk[t * l.top_k + k] == i;
    sum += probs[t * l.n_logits + l.shared_logits + i];
  }
  atomicAdd(&chose, count); // integers: the same total in any order
  sum = block_sum(sum, partial);
  if (threadIdx.x == 0) {
    load[i] = (float)chose / (float)n;
    load[l.n_routed + i] = sum / (float)n;
  }
}

// dlogits of the weights and the balance loss (kernels.h; the derivation beside
// lt_cpu_moh_route_bwd, which this matches): every softmax's Jacobian p * (dp - <p, dp>) applied
// in closed form, so no per-token arrays. dlogits, probs: (N, L); dgates: (N, S + R) f32
template <typename T>
__global__ void moh_route_bwd_kernel(T *dlogits, const float *dgates, const float *probs,
                                     const int32_t *topk, const float *load, int64_t n,
                                     route_layout l, float balance_grad) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const float *pt = probs + t * l.n_logits, *p = pt + l.shared_logits, *mix = p + l.n_routed;
  const float *dg = dgates + t * (l.n_shared + l.n_routed);
  const int32_t *chosen = topk + t * l.top_k;
  T *dz = dlogits + t * l.n_logits;
  const float a_shared = l.mix_logits ? 2.0f * mix[0] : 0.0f;
  const float a_routed = l.mix_logits ? 2.0f * mix[1] : 1.0f;
  const float k_f = (float)l.top_k, s_f = (float)l.n_shared;
  float chosen_mass = 0.0f;
  for (int k = 0; k < l.top_k; k++) chosen_mass += p[chosen[k]];
  // Shared heads: g_i = a_shared S ps_i (or a_shared alone for one shared head).
  float d_a_shared = 0.0f, dot_shared = 0.0f;
  for (int i = 0; i < l.n_shared; i++) {
    d_a_shared += dg[i] * (l.shared_logits ? s_f * pt[i] : 1.0f);
    if (l.shared_logits) dot_shared += pt[i] * a_shared * s_f * dg[i];
  }
  for (int i = 0; i < l.shared_logits; i++)
    dz[i] = from_float<T>(pt[i] * (a_shared * s_f * dg[i] - dot_shared));
  // Routed heads: the chosen weights are K q_k with q = p / chosen mass (a softmax over the
  // chosen logits); the balance loss adds bpt f_i to every p_i.
  float d_a_routed = 0.0f, dot_chosen = 0.0f;
  for (int k = 0; k < l.top_k; k++) {
    const float q = p[chosen[k]] / chosen_mass, dgk = dg[l.n_shared + chosen[k]];
    d_a_routed += dgk * k_f * q;
    dot_chosen += q * a_routed * k_f * dgk;
  }
  const float bpt = balance_grad * (float)l.n_routed / (float)n;
  float dot_balance = 0.0f;
  for (int i = 0; i < l.n_routed; i++) dot_balance += p[i] * bpt * load[i];
  for (int i = 0; i < l.n_routed; i++) {
    float v = p[i] * (bpt * load[i] - dot_balance);
    for (int k = 0; k < l.top_k; k++)
      if (chosen[k] == i) {
        const float q = p[i] / chosen_mass;
        v += q * (a_routed * k_f * dg[l.n_shared + i] - dot_chosen);
      }
    dz[l.shared_logits + i] = from_float<T>(v);
  }
  if (l.mix_logits) {
    const float da[2] = {2.0f * d_a_shared, 2.0f * d_a_routed};
    const float dot_mix = mix[0] * da[0] + mix[1] * da[1];
    for (int j = 0; j < 2; j++)
      dz[l.shared_logits + l.n_routed + j] = from_float<T>(mix[j] * (da[j] - dot_mix));
  }
}

// out = gates * x per (token, head) row. Matches lt_cpu_head_gate_fwd.
// x, out: (N, H, D); gates: (N, H) f32
template <typename T>
__global__ void head_gate_fwd_kernel(T *out, const T *x, const float *gates, int64_t numel, int d) {
  const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (e < numel) out[e] = from_float<T>(gates[e / d] * to_float(x[e]));
}

// dx = gates * dout; dgates = <dout, x> per row, one warp per row. Matches lt_cpu_head_gate_bwd.
// dx, dout, x: (N, H, D); dgates, gates: (N, H) f32
template <typename T>
__global__ void head_gate_bwd_kernel(T *dx, float *dgates, const T *dout, const T *x,
                                     const float *gates, int64_t rows, int d) {
  const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float g = gates[r];
  float dot = 0.0f;
  for (int i = lane; i < d; i += 32) {
    const float dy = to_float(dout[r * d + i]);
    dot += dy * to_float(x[r * d + i]);
    dx[r * d + i] = from_float<T>(g * dy);
  }
  dot = warp_sum(dot);
  if (lane == 0) dgates[r] = dot;
}

static bool route_operands_ok(lt_tensor gates, lt_tensor probs, lt_tensor topk, lt_tensor load) {
  return gates.device == LT_CUDA && probs.device == LT_CUDA && topk.device == LT_CUDA &&
         load.device == LT_CUDA;
}

int lt_cuda_moh_route_fwd(lt_ctx *ctx, lt_tensor gates, lt_tensor probs, lt_tensor topk,
                          lt_tensor load, lt_tensor logits, int n_shared) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = gates.shape[0];
  const route_layout l = layout_of(n_shared, (int)gates.shape[1] - n_shared, (int)topk.shape[1]);
  if (!route_operands_ok(gates, probs, topk, load) || logits.device != LT_CUDA)
    return lt_cuda_unsupported("moh_route_fwd", "every operand on the GPU", gates, logits);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(logits.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    moh_route_fwd_kernel<T><<<blocks_for(n, THREADS), THREADS, 0, st->stream>>>(
        (float *)gates.data, (float *)probs.data, (int32_t *)topk.data, (const T *)logits.data, n,
        l);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("moh_route_fwd", "logits must be f32 or bf16", logits, probs);
  LT_TRY(lt_cuda_launched(st, "moh_route_fwd", logits, gates));
  moh_load_kernel<<<(unsigned)l.n_routed, 256, 0, st->stream>>>(
      (float *)load.data, (const float *)probs.data, (const int32_t *)topk.data, n, l);
  return lt_cuda_launched(st, "moh_route_fwd (loads)", topk, load);
}

int lt_cuda_moh_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgates, lt_tensor probs,
                          lt_tensor topk, lt_tensor load, int n_shared, float balance_grad) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t n = dgates.shape[0];
  const route_layout l = layout_of(n_shared, (int)dgates.shape[1] - n_shared, (int)topk.shape[1]);
  if (!route_operands_ok(dgates, probs, topk, load) || dlogits.device != LT_CUDA)
    return lt_cuda_unsupported("moh_route_bwd", "every operand on the GPU", dlogits, dgates);
  if (n == 0) return LT_OK;
  int rc = dispatch_float(dlogits.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    moh_route_bwd_kernel<T><<<blocks_for(n, THREADS), THREADS, 0, st->stream>>>(
        (T *)dlogits.data, (const float *)dgates.data, (const float *)probs.data,
        (const int32_t *)topk.data, (const float *)load.data, n, l, balance_grad);
    return LT_OK;
  });
  if (rc)
    return lt_cuda_unsupported("moh_route_bwd", "dlogits must be f32 or bf16", dlogits, probs);
  return lt_cuda_launched(st, "moh_route_bwd", dgates, dlogits);
}

int lt_cuda_head_gate_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor x, lt_tensor gates) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t numel = lt_numel(x);
  const int d = (int)x.shape[x.ndim - 1];
  if (out.dtype != x.dtype || gates.device != LT_CUDA)
    return lt_cuda_unsupported("head_gate_fwd", "out and x of one dtype, gates on the GPU", out, x);
  if (numel == 0) return LT_OK;
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    head_gate_fwd_kernel<T><<<blocks_for(numel, THREADS), THREADS, 0, st->stream>>>(
        (T *)out.data, (const T *)x.data, (const float *)gates.data, numel, d);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("head_gate_fwd", "x must be f32 or bf16", x, gates);
  return lt_cuda_launched(st, "head_gate_fwd", x, gates);
}

int lt_cuda_head_gate_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dgates, lt_tensor dout, lt_tensor x,
                          lt_tensor gates) {
  lt_cuda_state *st = cuda_state(ctx);
  const int64_t rows = lt_numel(gates);
  const int d = (int)x.shape[x.ndim - 1];
  if (dx.dtype != x.dtype || dout.dtype != x.dtype || gates.device != LT_CUDA ||
      dgates.device != LT_CUDA)
    return lt_cuda_unsupported("head_gate_bwd", "dx, dout and x of one dtype, gates on the GPU", dx,
                               x);
  if (rows == 0) return LT_OK;
  int rc = dispatch_float(x.dtype, [&](auto *tag) {
    using T = TYPE_OF(tag);
    head_gate_bwd_kernel<T><<<blocks_for(rows, WARPS), THREADS, 0, st->stream>>>(
        (T *)dx.data, (float *)dgates.data, (const T *)dout.data, (const T *)x.data,
        (const float *)gates.data, rows, d);
    return LT_OK;
  });
  if (rc) return lt_cuda_unsupported("head_gate_bwd", "x must be f32 or bf16", x, gates);
  return lt_cuda_launched(st, "head_gate_bwd", dout, dgates);
}
