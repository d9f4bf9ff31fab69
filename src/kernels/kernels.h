// The kernel API: every op declared once, on tensors. Each dispatches on the tensors' device to
// the CPU reference (kernels/cpu/, fp32, OpenBLAS) or the CUDA version (kernels/cuda/, bf16
// storage with fp32 accumulation). Layers call only these, so they never know the device.
//
// Conventions:
// - Activations are (N, C) rows with N = B*T tokens, or (B, T, H, D) for attention.
// - Outputs overwrite, except where marked "+=": parameter gradients always accumulate (they
//   sum over micro-batches), and so does dx of RMSNorm (it adds into the residual gradient).
// - Shapes are checked; a mismatch is an internal error naming the op and both shapes.
#ifndef LT_KERNELS_H
#define LT_KERNELS_H

#include <stdbool.h>

#include "core/arena.h"
#include "core/tensor.h"

typedef struct lt_ctx {
  lt_device device;
  int n_threads;
  void *cuda; // the CUDA stream, cuBLASLt handle and workspace when device == LT_CUDA
} lt_ctx;

int lt_ctx_init(lt_ctx *ctx, lt_device device, int n_threads);
void lt_ctx_destroy(lt_ctx *ctx);
// Waits for queued device work; a no-op on the CPU.
int lt_ctx_sync(lt_ctx *ctx);

// --- dense algebra ---

// c = alpha * op(a) @ op(b) + beta * c, on 2-D views. op(x) is x or x^T.
int lt_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, bool trans_a, lt_tensor b, bool trans_b,
              float alpha, float beta);
// out = a + b; out may alias a or b.
int lt_add(lt_ctx *ctx, lt_tensor out, lt_tensor a, lt_tensor b);
// x *= s
int lt_scale(lt_ctx *ctx, lt_tensor x, float s);
int lt_zero(lt_ctx *ctx, lt_tensor x);
// dst = src, converting f32 <-> bf16 where the dtypes differ; same device.
int lt_copy(lt_ctx *ctx, lt_tensor dst, lt_tensor src);
// sum of squares of x into *out (host), accumulated in double on the CPU.
int lt_sum_squares(lt_ctx *ctx, double *out, lt_tensor x);

// --- layers' math ---

// out[n, :] = table[tokens[n], :]    tokens: (N) i32; table: (V, D); out: (N, D)
int lt_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table);
// dtable[tokens[n], :] += dout[n, :]
int lt_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens);

// out = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps)    x, out: (N, C); weight: (C); rstd: (N)
// f32
int lt_rmsnorm_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor rstd, lt_tensor x, lt_tensor weight,
                   float eps);
// dx += d/dx, dweight += d/dweight, given dout and the forward's x and rstd
int lt_rmsnorm_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dweight, lt_tensor dout, lt_tensor x,
                   lt_tensor weight, lt_tensor rstd);

// Splits a fused projection into q, k, v and rotates q and k by RoPE at positions `pos`.
// qkv: (N, Hq + 2*Hkv, D) with q heads, then k heads, then v heads; q: (N, Hq, D);
// k, v: (N, Hkv, D); pos: (N) i32. Rotation pairs (i, i + D/2) as in Hugging Face Llama, with
// frequency theta^(-2i/D).
int lt_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                    lt_tensor pos, float theta);
// The transpose: dqkv = [R^T dq, R^T dk, dv].
int lt_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                    lt_tensor pos, float theta);

// h = silu(gate) * up    gate_up: (N, 2F) = [gate | up]; h: (N, F)
int lt_swiglu_fwd(lt_ctx *ctx, lt_tensor h, lt_tensor gate_up);
int lt_swiglu_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor dh, lt_tensor gate_up);

// Per-row cross-entropy of logits against targets: losses[n] = lse(logits[n]) - logits[n, t_n],
// 0 where targets[n] == ignore_index. When dlogits.data is set it receives the gradient
// grad_scale * (softmax(logits[n]) - onehot(t_n)) (zero rows where ignored); dlogits may be logits
// itself (in place) or, where activations are bf16, a bf16 tensor of the same shape.
// logits: (N, V) f32; dlogits: (N, V); targets: (N) i32; losses: (N) f32
int lt_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                     lt_tensor targets, int ignore_index, float grad_scale);

// --- attention (softmax), shaped for ring attention ---

#define LT_MAX_HEAD_DIM 256

// Which (query, key) pairs may attend. Positions are absolute token positions, so a chunk of a
// longer sequence (context parallel) masks correctly: key j is visible to query i when
//   k_pos[j] <= q_pos[i]                       (causal)
//   and q_doc[i] == k_doc[j]                   (when document ids are given)
typedef struct lt_attn_spec {
  float scale; // softmax scale, usually 1/sqrt(D)
  bool causal;
  lt_tensor q_pos; // (B, Tq) i32
  lt_tensor k_pos; // (B, Tk) i32
  lt_tensor q_doc; // (B, Tq) i32, or data == NULL for no document mask
  lt_tensor k_doc; // (B, Tk) i32
} lt_attn_spec;

// The partial attention of queries q over keys/values k, v, with grouped-query heads (query head
// h reads key/value head h / (Hq / Hkv)):
//   o = softmax(scale * q k^T + mask) v,   lse = log sum exp(scale * q k^T + mask) per query.
// q, o: (B, Tq, Hq, D); k, v: (B, Tk, Hkv, D); lse: (B, Hq, Tq) f32. A query that sees no key
// gets o = 0 and lse = -inf, which lt_attn_merge treats as empty.
int lt_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                const lt_attn_spec *spec);
// Folds a partial result into a running one (the online-softmax merge):
//   lse' = log(exp(lse) + exp(lse_part)),  o' = o exp(lse - lse') + o_part exp(lse_part - lse')
int lt_attn_merge(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor o_part, lt_tensor lse_part);
// delta = rowsum(dout * o) per query and head, (B, Hq, Tq) f32: the backward's softmax term,
// computed once from the final output however many partials made it.
int lt_attn_bwd_delta(lt_ctx *ctx, lt_tensor delta, lt_tensor dout, lt_tensor o);
// Gradients of one partial, given the final lse and delta: dq, dk, dv += ... dq may be f32 where
// the activations are bf16 (on CUDA it must be: key blocks add into it concurrently); dk and dv
// have the activations' dtype or f32.
int lt_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout, lt_tensor q,
                lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta, const lt_attn_spec *spec);

// --- optimizer ---

// A stretch [start, start + numel) of the flat parameter buffers that shares one weight decay.
typedef struct lt_adamw_run {
  int64_t start, numel;
  float weight_decay;
} lt_adamw_run;

typedef struct lt_adamw_args {
  float lr, beta1, beta2, eps;
  float grad_scale;         // multiplies the gradient first (global-norm clipping)
  long step;                // 1-based, for bias correction
  const lt_adamw_run *runs; // in order; elements outside every run are left alone
  int n_runs;
} lt_adamw_args;

// One AdamW update (Loshchilov & Hutter, decoupled decay) of param from grad, moments m and v,
// all f32 and the same shape, over every run of args->runs: one pass over the whole flat buffer.
// When compute.data is set, the updated values are also written there (the bf16 compute copy).
int lt_adamw(lt_ctx *ctx, lt_tensor param, lt_tensor grad, lt_tensor m, lt_tensor v,
             lt_tensor compute, const lt_adamw_args *args);

#endif
