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
// 0 where targets[n] == ignore_index. With want_grad, logits is overwritten in place by
// grad_scale * (softmax(logits[n]) - onehot(t_n)) (zero rows where ignored).
// logits: (N, V); targets: (N) i32; losses: (N) f32
int lt_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor logits, lt_tensor targets,
                     int ignore_index, bool want_grad, float grad_scale);

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
// Gradients of one partial, given the final lse and delta: dq, dk, dv += ...
int lt_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout, lt_tensor q,
                lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta, const lt_attn_spec *spec);

// --- linear attention (linear, lightning), shaped for LASP-2 ---
//
// Linear attention with an optional per-head decay lambda_h (Katharopoulos et al. 2020; RetNet;
// TransNormerLLM) as the recurrence over the tokens of one document,
//   S_t = lambda S_{t-1} + k_t^T v_t,    o_t = q_t S_t,
// i.e. o_i = sum_{j <= i, same document} lambda^(i - j) (q_i . k_j) v_j. The kernels compute it in
// blocks of `block` tokens as Lightning Attention-2 does (Qin et al. 2024, Algorithms 1 and 2): a
// masked, decayed q k^T v inside each block and the decayed state carried between blocks, with
// powers of lambda (no cumulative sums of log-decays).
//
// A chunk of a longer sequence (context parallel, LASP-2, Sun et al. 2025) is summarised by its
// state M = sum_j lambda^(T-1-j) k_j^T v_j (D x E per head, whatever its length). Each chunk's
// output needs only the prefix state of the chunks before it, combined as
//   P_c = sum_{c' < c} lambda^(start_c - end_c') M_c'
// (end exclusive), so the whole sequence is one all-gather of states; in the backward, the
// prefix gradients dP_c are all-gathered and summed the other way (suffix sums) into each
// chunk's dM. A single device is the one-chunk case with no prefix.
//
// Documents (lt_batch.doc) are contiguous runs of one id: the state resets where the id changes,
// so no information crosses documents. A state belongs to the document of its last token; a
// chunk's state keeps only that document's tokens, and a prefix state is read only by the
// queries of its document (prefix_doc).

// The map phi applied to q and k (Katharopoulos et al. 2020: elu + 1 keeps the
// attention weights positive; TransNormerLLM uses silu).
typedef enum lt_feature_map {
  LT_FEATURE_ELU1,     // 1 + elu(x)
  LT_FEATURE_RELU,     // max(x, 0)
  LT_FEATURE_SILU,     // x sigmoid(x)
  LT_FEATURE_IDENTITY, // x
} lt_feature_map;

// How the attention output is normalised before the gate and the output projection.
typedef enum lt_linear_norm {
  LT_LINEAR_NORM_DENOMINATOR, // o / (phi(q) . sum lambda^(i-j) phi(k_j) + eps): Katharopoulos
  LT_LINEAR_NORM_RMS, // simple RMSNorm (no gain) over all heads: TransNormer's NormAttention
  LT_LINEAR_NORM_NONE,
} lt_linear_norm;

// The output gate y = norm(o) * g(u), u = x Wu^T (TransNormerLLM: g is the identity).
typedef enum lt_gate { LT_GATE_NONE, LT_GATE_LINEAR, LT_GATE_SIGMOID, LT_GATE_SILU } lt_gate;

typedef struct lt_linear_attn_spec {
  lt_tensor log_decay;  // (Hq) f32, log lambda_h <= 0 per query head; data == NULL: no decay
  int64_t block;        // tokens per block of the intra/inter split (Lightning's B), >= 1
  lt_tensor doc;        // (B, T) i32 document id of each token of the chunk, or data == NULL
  lt_tensor prefix_doc; // (B) i32 document of the prefix state (only with doc and a prefix)
} lt_linear_attn_spec;

// o_i = q_i (lambda^(i+1) P + sum_{j <= i} lambda^(i-j) k_j^T v_j), P the prefix state (its
// term only where doc_i == prefix_doc), within documents. Query head h reads key/value head
// h / (Hq / Hkv). q: (B, T, Hq, D); k: (B, T, Hkv, D); v: (B, T, Hkv, E); o: (B, T, Hq, E);
// prefix: (B, Hq, D, E) f32, or data == NULL for none (the start of a sequence).
int lt_linear_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                       lt_tensor prefix, const lt_linear_attn_spec *spec);
// dq, dk, dv += the gradients of the forward's o, given dout; dprefix = d/dP (overwritten; skipped
// when its data is NULL).
int lt_linear_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dprefix,
                       lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor prefix,
                       const lt_linear_attn_spec *spec);
// The chunk's state M = sum_j lambda^(T-1-j) k_j^T v_j over the tokens of its last document.
// state: (B, Hq, D, E) f32, overwritten.
int lt_linear_attn_state(lt_ctx *ctx, lt_tensor state, lt_tensor k, lt_tensor v,
                         const lt_linear_attn_spec *spec);
// dk, dv += the state's gradients, given dstate (B, Hq, D, E).
int lt_linear_attn_state_bwd(lt_ctx *ctx, lt_tensor dk, lt_tensor dv, lt_tensor dstate, lt_tensor k,
                             lt_tensor v, const lt_linear_attn_spec *spec);

// Splits a fused projection into q = phi(.), k = phi(.) and v, with a column of ones appended to
// v when E = D + 1 (its attention output is then the normaliser phi(q) . sum phi(k)).
// qkv: (N, Hq + 2*Hkv, D); q: (N, Hq, D); k: (N, Hkv, D); v: (N, Hkv, E), E = D or D + 1.
int lt_linear_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                      lt_feature_map map);
// dqkv = d/dqkv (overwritten) from dq, dk, dv; the ones column's gradient is dropped.
int lt_linear_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                      lt_tensor qkv, lt_feature_map map);

// The output stage: y = norm(o) * g(u). o: (N, H, E) with E = D + 1 for the denominator (its last
// column) and E = D otherwise; u, y: (N, H*D); u unused (data NULL allowed) without a gate;
// rstd: (N) f32, written for LT_LINEAR_NORM_RMS. eps: the denominator's or the RMSNorm's.
int lt_linear_out_fwd(lt_ctx *ctx, lt_tensor y, lt_tensor rstd, lt_tensor o, lt_tensor u,
                      lt_linear_norm norm, lt_gate gate, float eps);
// d_o, du = gradients (overwritten) given dy and the forward's o, u and rstd.
int lt_linear_out_bwd(lt_ctx *ctx, lt_tensor d_o, lt_tensor du, lt_tensor dy, lt_tensor o,
                      lt_tensor u, lt_tensor rstd, lt_linear_norm norm, lt_gate gate, float eps);

// --- optimizer ---

typedef struct lt_adamw_args {
  float lr, beta1, beta2, eps, weight_decay;
  float grad_scale; // multiplies the gradient first (global-norm clipping)
  long step;        // 1-based, for bias correction
} lt_adamw_args;

// One AdamW update (Loshchilov & Hutter, decoupled decay) of param from grad, moments m and v.
// All f32 and the same shape.
int lt_adamw(lt_ctx *ctx, lt_tensor param, lt_tensor grad, lt_tensor m, lt_tensor v,
             const lt_adamw_args *args);

#endif
