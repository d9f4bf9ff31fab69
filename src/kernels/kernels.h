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
// Copies host memory src (lt_nbytes(dst) bytes) into dst in the order of the ctx's queued work,
// without waiting for that work on CUDA; src may be reused once it returns.
int lt_upload(lt_ctx *ctx, lt_tensor dst, const void *src);
// Under LT_CUDA_PROFILE, names the interval since the last op "what": the time the queue sat
// empty until the host came to this point (or, if work was still queued, nothing). A no-op
// otherwise, and on the CPU.
void lt_profile_mark(lt_ctx *ctx, const char *what);

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
// The sum of squares of x, and the sum of x, into *out (host), accumulated in double in an order
// fixed for each device (the same on every run).
int lt_sum_squares(lt_ctx *ctx, double *out, lt_tensor x);
int lt_sum(lt_ctx *ctx, double *out, lt_tensor x);

// --- layers' math ---

// out[n, :] = table[tokens[n], :]    tokens: (N) i32; table: (V, D); out: (N, D)
int lt_embedding_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table);
// dtable[tokens[n], :] += dout[n, :]
int lt_embedding_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens);
// The vocab-parallel lookup (Megatron-LM's VocabParallelEmbedding): `table` (V, D) holds rows
// [vocab_start, vocab_start + V) of the whole table. out[n, :] = table[tokens[n] - vocab_start, :]
// for the tokens in that range and 0 for the others, whose rows other ranks hold: the sum over
// the tensor-parallel ranks completes every row.
int lt_embedding_shard_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor tokens, lt_tensor table,
                           int64_t vocab_start);
// dtable[tokens[n] - vocab_start, :] += dout[n, :] for the tokens in the range.
int lt_embedding_shard_bwd(lt_ctx *ctx, lt_tensor dtable, lt_tensor dout, lt_tensor tokens,
                           int64_t vocab_start);

// out = x * rstd * weight, rstd = 1/sqrt(mean(x^2) + eps)    x, out: (N, C); weight: (C); rstd: (N)
// f32
int lt_rmsnorm_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor rstd, lt_tensor x, lt_tensor weight,
                   float eps);
// The residual add and the RMSNorm after it in one pass: sum = a + b (in the activations' dtype),
// then out and rstd as lt_rmsnorm_fwd(out, rstd, sum, weight, eps). sum may alias a or b.
int lt_add_rmsnorm_fwd(lt_ctx *ctx, lt_tensor sum, lt_tensor out, lt_tensor rstd, lt_tensor a,
                       lt_tensor b, lt_tensor weight, float eps);
// dx += d/dx, dweight += d/dweight, given dout and the forward's x and rstd
int lt_rmsnorm_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dweight, lt_tensor dout, lt_tensor x,
                   lt_tensor weight, lt_tensor rstd);

// Splits a fused projection into q, k, v and rotates q and k by RoPE at positions `pos`.
// qkv: (N, Hq + 2*Hkv, D) with q heads, then k heads, then v heads; q: (N, Hq, D);
// k, v: (N, Hkv, D) (or (B, T, H, D) views of N = B T tokens); pos: (N) i32. With v.data NULL,
// qkv is (N, Hq + Hkv, D), q and k alone (v made by a matmul of its own, not copied here).
// Rotation pairs (i, i + D/2) as in Hugging Face Llama, with frequency theta^(-2i/D).
int lt_rope_qkv_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qkv,
                    lt_tensor pos, float theta);
// The attention's input projection and RoPE: q = R(x w_q^T), k = R(x w_k^T), v = x w_v^T for
// x (..., D_in) of N tokens and w = [w_q; w_k; w_v] ((Hq + 2 Hkv) D, D_in). One kernel on a Hopper
// GPU (the rotation in the matmul's epilogue); elsewhere the q|k matmul into qk (N, Hq + Hkv, D,
// scratch the fused kernel leaves as it was), v's own matmul, and lt_rope_qkv_fwd without v.
int lt_qkv_rope_fwd(lt_ctx *ctx, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor qk, lt_tensor x,
                    lt_tensor w, lt_tensor pos, float theta);
// Whether it runs as one kernel on ctx for heads of head_dim and rows of d_in (bf16 tensors).
bool lt_qkv_rope_fused(lt_ctx *ctx, int64_t head_dim, int64_t d_in);
// The transpose: dqkv = [R^T dq, R^T dk, dv].
int lt_rope_qkv_bwd(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                    lt_tensor pos, float theta);

// h = silu(gate) * up    gate_up: (N, 2F) = [gate | up]; h: (N, F)
int lt_swiglu_fwd(lt_ctx *ctx, lt_tensor h, lt_tensor gate_up);
// dgate_up from dh; when h.data is set, h = silu(gate) * up as well, from the same read of gate_up:
// a backward that did not keep h gets it (for its weight gradient) without a pass of its own.
int lt_swiglu_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh, lt_tensor gate_up);

// The SwiGLU feed-forward's matmuls with the SwiGLU beside them (fused into one kernel each on a
// Hopper GPU; lt_matmul and lt_swiglu_* elsewhere). Rows as 2-D views: x, dy: (N, D).
// Forward: gate_up = x w^T with w = [w_gate; w_up] (2F, D), and h = silu(gate) * up.
int lt_swiglu_linear_fwd(lt_ctx *ctx, lt_tensor gate_up, lt_tensor h, lt_tensor x, lt_tensor w);
// Backward: dh = dy w_down (w_down: (D, F)), then dgate_up and (where h.data is set) h as
// lt_swiglu_bwd gives them. dh (N, F) is scratch: the fused kernel never writes it.
int lt_swiglu_linear_bwd(lt_ctx *ctx, lt_tensor dgate_up, lt_tensor h, lt_tensor dh, lt_tensor dy,
                         lt_tensor w_down, lt_tensor gate_up);
// Whether the two run fused on ctx for F hidden units and D-wide rows (bf16 tensors).
bool lt_swiglu_linear_fused(lt_ctx *ctx, int64_t f, int64_t d);

// Per-row cross-entropy of logits against targets: losses[n] = lse(logits[n]) - logits[n, t_n],
// 0 where targets[n] == ignore_index. When dlogits.data is set it receives the gradient
// grad_scale * (softmax(logits[n]) - onehot(t_n)) (zero rows where ignored); dlogits may be logits
// itself (in place) or, where activations are bf16, a bf16 tensor of the same shape.
// logits: (N, V) f32; dlogits: (N, V); targets: (N) i32; losses: (N) f32
int lt_cross_entropy(lt_ctx *ctx, lt_tensor losses, lt_tensor dlogits, lt_tensor logits,
                     lt_tensor targets, int ignore_index, float grad_scale);

// Vocab-parallel cross-entropy (Megatron-LM, Shoeybi et al. 2019, section 3): a rank holds the
// logits of the vocab columns [vocab_start, vocab_start + V) only, and never the whole row. A
// row's loss lse - logit[t] is assembled from per-rank statistics, completed over the ranks
// between these calls (stats: (3, N) f32 = [row max | sum of exps | target logit]):
//   lt_cross_entropy_shard_max      stats[0] = max of this rank's logits; stats[2] = the target's
//                                   logit where this rank holds the target, else 0
//   (all-reduce max of stats[0] over the ranks)
//   lt_cross_entropy_shard_sum_exp  stats[1] = sum_j exp(logits[n, j] - stats[0][n])
//   (all-reduce sum of stats[1] and stats[2])
//   lt_cross_entropy_shard_finish   losses = stats[0] + log(stats[1]) - stats[2], 0 where
//                                   ignored; with want_grad, logits <- grad_scale * (softmax -
//                                   onehot) on this rank's columns, as lt_cross_entropy
// With one rank holding every column this is lt_cross_entropy, in three passes.
// logits: (N, V) f32; targets: (N) i32; losses: (N) f32
int lt_cross_entropy_shard_max(lt_ctx *ctx, lt_tensor stats, lt_tensor logits, lt_tensor targets,
                               int64_t vocab_start);
int lt_cross_entropy_shard_sum_exp(lt_ctx *ctx, lt_tensor stats, lt_tensor logits);
int lt_cross_entropy_shard_finish(lt_ctx *ctx, lt_tensor losses, lt_tensor logits,
                                  lt_tensor targets, lt_tensor stats, int64_t vocab_start,
                                  int ignore_index, bool want_grad, float grad_scale);

// --- attention (softmax), shaped for ring attention ---

#define LT_MAX_HEAD_DIM 256

// Sparse attention patterns, on absolute positions (d = q_pos - k_pos, and block numbers
// qb = q_pos / block_size, kb = k_pos / block_size). Each field at 0 is off; the keys a pattern
// lets a query see are the union of those its parts allow:
//   window         |d| < window                    sliding window (Beltagy et al. 2020, Mistral)
//   sinks          k_pos < sinks                   attention sinks (Xiao et al. 2023, StreamingLLM)
//   local_blocks   |qb - kb| < local_blocks        block-local (BigBird's sliding blocks)
//   stride         (qb - kb) % stride == 0         strided (Child et al. 2019), in blocks
//   global_blocks  kb < global_blocks              global blocks (BigBird, Longformer), as keys
// With every field 0 the pattern allows every pair. Causality and documents apply on top.
// Where the data pipeline restarts positions at each document, all of it counts from the
// document's start.
typedef struct lt_attn_sparsity {
  int window, sinks;
  int block_size; // > 0 when local_blocks, stride or global_blocks are set
  int local_blocks, stride, global_blocks;
} lt_attn_sparsity;

// Which (query, key) pairs may attend. Positions are absolute token positions (>= 0), so a
// chunk of a longer sequence (context parallel) masks correctly: key j is visible to query i when
//   k_pos[j] <= q_pos[i]                       (causal)
//   and q_doc[i] == k_doc[j]                   (when document ids are given)
//   and the sparse pattern allows (i, j)
typedef struct lt_attn_spec {
  float scale; // softmax scale, usually 1/sqrt(D)
  bool causal;
  lt_tensor q_pos; // (B, Tq) i32
  lt_tensor k_pos; // (B, Tk) i32
  lt_tensor q_doc; // (B, Tq) i32, or data == NULL for no document mask
  lt_tensor k_doc; // (B, Tk) i32
  lt_attn_sparsity sparse;
  // (B, Tq, Hq) f32, or data == NULL: a (query, head) whose weight is 0 there (MoH's unchosen
  // heads) gets o = 0, lse = -inf, as a query that sees no key, and no gradient. The CPU kernels
  // skip its row; the CUDA kernels skip a tile of queries only when all of its rows are off.
  lt_tensor head_gates;
  // (B, Tq, Hq, D) of o's dtype, or data == NULL: with head_gates, lt_attn_fwd also writes
  // head_gates * o here (MoH's weighted heads, which the output projection reads), from the same
  // epilogue as o: 0 where o is. Forward only; a partial over some keys (ring attention) must not
  // ask for it, as the weighting applies to the merged result.
  lt_tensor gated_out;
  // When not NULL, the kernels add the number of (batch row, query head, query tile, key tile)
  // tiles they computed: the work, which sparse patterns make grow with the visible blocks. Tiles
  // are the device's own (CPU 32 x 32; the CUDA kernels' are larger, and their count waits for
  // the kernel).
  int64_t *tiles_visited;
} lt_attn_spec;

// The partial attention of queries q over keys/values k, v, with grouped-query heads (query head
// h reads key/value head h / (Hq / Hkv)):
//   o = softmax(scale * q k^T + mask) v,   lse = log sum exp(scale * q k^T + mask) per query.
// q, o: (B, Tq, Hq, D); k, v: (B, Tk, Hkv, D); lse: (B, Hq, Tq) f32. A query that sees no key
// gets o = 0 and lse = -inf, which lt_attn_merge treats as empty. With spec->gated_out, also
// gated_out[b, i, h, :] = head_gates[b, i, h] * o[b, i, h, :].
int lt_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor q, lt_tensor k, lt_tensor v,
                const lt_attn_spec *spec);
// Folds a partial result into a running one (the online-softmax merge):
//   lse' = log(exp(lse) + exp(lse_part)),  o' = o exp(lse - lse') + o_part exp(lse_part - lse')
int lt_attn_merge(lt_ctx *ctx, lt_tensor o, lt_tensor lse, lt_tensor o_part, lt_tensor lse_part);
// delta = rowsum(dout * o) per query and head, (B, Hq, Tq) f32: the backward's softmax term,
// computed once from the final output however many partials made it.
int lt_attn_bwd_delta(lt_ctx *ctx, lt_tensor delta, lt_tensor dout, lt_tensor o);
// Gradients of one partial, given the final lse and delta: dq += its share; dk, dv = this
// partial's keys' gradients (overwritten: no zeroing needed, and keys no query sees get zeros).
// dq may be f32 where the activations are bf16 (on CUDA it must be: key blocks add into it
// concurrently); dk and dv have the activations' dtype or f32.
int lt_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv, lt_tensor dout, lt_tensor q,
                lt_tensor k, lt_tensor v, lt_tensor lse, lt_tensor delta, const lt_attn_spec *spec);
// lt_attn_bwd, then lt_rope_qkv_bwd's join: dqkv = [R^T dq, R^T dk, dv] (B T, Hq + 2 Hkv, D), for
// queries and keys that are the same tokens at positions pos (B T). dq (f32, zeroed by the
// caller) is added into as by lt_attn_bwd; dk and dv are scratch, which on CUDA the backward never
// writes: it stores dK, rotated, and dV straight into dqkv, and one pass joins dq.
int lt_attn_bwd_rope(lt_ctx *ctx, lt_tensor dqkv, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                     lt_tensor dout, lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor lse,
                     lt_tensor delta, const lt_attn_spec *spec, lt_tensor pos, float theta);

// --- mixture of experts: routing, token dispatch, per-expert GEMMs, combine ---
// A layer routes N tokens to E experts, k choices each (a "choice" is one (token, rank) pair).
// The kept choices are laid out as R rows grouped by expert, so each expert's tokens are one
// contiguous block that one GEMM (or one group of a grouped GEMM) processes.

// The router (Shazeer et al. 2017, Switch Transformer, ST-MoE): probs = softmax(logits) per token;
// expert[n, :] = the k experts of largest probability, best first (ties to the lower index);
// gate[n, s] = probs[n, expert[n, s]], or with renormalize those divided by their sum over the k
// choices (= softmax over the chosen logits, as Mixtral). lse[n] = logsumexp(logits[n]) for the
// router z-loss; prob_sum[e] = sum over tokens of probs[:, e] for the load-balance loss.
// logits, probs: (N, E) f32; gate: (N, k) f32; expert: (N, k) i32; lse: (N) f32; prob_sum: (E) f32
int lt_moe_route(lt_ctx *ctx, lt_tensor gate, lt_tensor expert, lt_tensor probs, lt_tensor lse,
                 lt_tensor prob_sum, lt_tensor logits, bool renormalize);
// dlogits (overwritten) from the gate gradient dgate and the auxiliary losses. The choice of
// experts is piecewise constant in the logits, so only the chosen gates carry the loss's gradient
// (the straight-through reading of top-k). balance[e] = d(aux)/d(probs[n, e]), the same for every
// token (the load-balance loss is linear in the probabilities); the z-loss adds
// z_scale * lse[n] * probs[n, :] (d(lse^2)/d(logits) = 2 lse probs; z_scale carries the 2).
// dgate, gate: (N, k) f32; expert: (N, k) i32; probs: (N, E) f32; lse: (N); balance: (E);
// dlogits: (N, E) f32, or where activations are bf16 a bf16 tensor (the router's matmuls read it)
int lt_moe_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgate, lt_tensor gate,
                     lt_tensor expert, lt_tensor probs, lt_tensor lse, lt_tensor balance,
                     float z_scale, bool renormalize);
// Where each choice goes. Choices enter their expert in priority order, every token's first
// choice before any second choice and, within a rank, in token order (GShard, Switch), until the
// expert holds `capacity` rows; the rest are dropped (capacity <= 0: none are, "dropless").
// Expert e's rows are [offsets[e], offsets[e+1]), in token order.
// expert, slot_row: (N, k) i32, slot_row[n, s] = the row of that choice, or -1 if dropped;
// row_token: (N*k) i32, the token of each row, -1 past offsets[E]; offsets: (E+1) i32;
// counts: (E) i32, the choices routed to each expert before dropping.
int lt_moe_dispatch_plan(lt_ctx *ctx, lt_tensor slot_row, lt_tensor row_token, lt_tensor offsets,
                         lt_tensor counts, lt_tensor expert, int64_t capacity);
// Token dispatch, a gather into expert order: xe[r] = x[row_token[r]] for the R rows of xe.
// x: (N, D); xe: (R, D), R <= the length of row_token
int lt_moe_dispatch(lt_ctx *ctx, lt_tensor xe, lt_tensor x, lt_tensor row_token);
// Its transpose: dx[n] = sum of dxe[slot_row[n, s]] over n's kept choices (overwrites dx).
int lt_moe_dispatch_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dxe, lt_tensor slot_row);
// Combine, a weighted scatter-add back to token order: out[n] = sum_s gate[n, s] ye[slot_row[n, s]]
// over the kept choices; a dropped choice adds nothing (the residual carries the token).
// ye: (R, D); out: (N, D); gate: (N, k) f32; slot_row: (N, k) i32
int lt_moe_combine(lt_ctx *ctx, lt_tensor out, lt_tensor ye, lt_tensor gate, lt_tensor slot_row);
// dye[slot_row[n, s]] = gate[n, s] dout[n] (each row belongs to one choice, so no sums), and
// dgate[n, s] = dout[n] . ye[slot_row[n, s]], 0 for dropped choices.
int lt_moe_combine_bwd(lt_ctx *ctx, lt_tensor dye, lt_tensor dgate, lt_tensor dout, lt_tensor ye,
                       lt_tensor gate, lt_tensor slot_row);
// Per-group products: one sgemm per group on the CPU, shaped for one grouped GEMM on the GPU.
// Group g owns rows [rows[g], rows[g+1]) of a and c. `rows` is a host array of G+1 non-decreasing
// offsets (it sizes the launches, as cuBLAS's grouped GEMM takes its sizes from the host).
// c[rows_g] = a[rows_g] op(b[g])    a: (R, K); b: (G, N, K) with trans_b, else (G, K, N); c: (R, N)
int lt_grouped_matmul(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b, bool trans_b,
                      const int64_t *rows);
// The weight gradient: c[g] += a[rows_g]^T b[rows_g]    a: (R, M); b: (R, N); c: (G, M, N) f32
int lt_grouped_matmul_wgrad(lt_ctx *ctx, lt_tensor c, lt_tensor a, lt_tensor b,
                            const int64_t *rows);

// --- mixture-of-head attention (MoH: Jin et al. 2024, arXiv 2410.11842) ---

#define LT_MOH_MAX_HEADS 256

// Per-token head weights from router logits, as MoH eqs. 4-5 with the official code's
// normalisation (so that uniform router outputs weight every head 1, as multi-head attention):
//   shared head i:  g = 2 a_1 * S * softmax(z_shared)_i          (S = n_shared; 1 when S == 1)
//   routed head i:  g = 2 a_2 * K * p_i / sum_{j in top-K} p_j    if i is among the token's top K
//                   p = softmax(z_routed), ties broken towards the lower head
//   [a_1, a_2] = softmax(z_mix); with no shared heads the routed weights stand alone (2 a_2 -> 1).
// logits: (N, Ls + R + Lm) = [z_shared | z_routed | z_mix], Ls = S if S >= 2 else 0, Lm = 2 if
// S >= 1 else 0; gates: (N, S + R) f32, shared heads first; probs: (N, Ls + R + Lm) f32, the
// three softmaxes, saved for the backward; topk: (N, K) i32, the chosen routed heads (0..R-1);
// load: (2, R) f32, row 0 f_i = the fraction of tokens that chose routed head i, row 1 P_i = the
// mean of p_i: the load-balance loss (eq. 6, scaled as the official code) is R * sum_i f_i P_i.
int lt_moh_route_fwd(lt_ctx *ctx, lt_tensor gates, lt_tensor probs, lt_tensor topk, lt_tensor load,
                     lt_tensor logits, int n_shared);
// dlogits = d/dlogits of (sum(dgates * gates) + balance_grad * R * sum_i f_i P_i), with the
// routing (topk, f) held constant: it is piecewise constant. Overwrites dlogits.
int lt_moh_route_bwd(lt_ctx *ctx, lt_tensor dlogits, lt_tensor dgates, lt_tensor probs,
                     lt_tensor topk, lt_tensor load, int n_shared, float balance_grad);

// out[n, h, :] = gates[n, h] * x[n, h, :]    x, out: (N, H, D); gates: (N, H) f32
int lt_head_gate_fwd(lt_ctx *ctx, lt_tensor out, lt_tensor x, lt_tensor gates);
// dx = gates * dout (overwritten); dgates[n, h] = <dout[n, h, :], x[n, h, :]> (overwritten)
int lt_head_gate_bwd(lt_ctx *ctx, lt_tensor dx, lt_tensor dgates, lt_tensor dout, lt_tensor x,
                     lt_tensor gates);
// The backward of MoH's weighting fused with attention's delta, from one read of d_gated and o:
// per token n = (b, t) and head h, with s = <d_gated[n, h, :], o[n, h, :]>,
//   dgates[n, h] = s,  d_o[n, h, :] = gates[n, h] * d_gated[n, h, :],
//   delta[b, h, t] = gates[n, h] * s  (= rowsum(d_o * o), as lt_attn_bwd_delta of d_o).
// d_o, d_gated, o: (B, T, H, D); dgates, gates: (B*T, H) f32; delta: (B, H, T) f32
int lt_head_gate_bwd_delta(lt_ctx *ctx, lt_tensor d_o, lt_tensor dgates, lt_tensor delta,
                           lt_tensor d_gated, lt_tensor o, lt_tensor gates);

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
// row_stat: data NULL, or for LT_LINEAR_NORM_RMS over a row split between ranks, the row's mean
// square over all of them (below).
int lt_linear_out_fwd(lt_ctx *ctx, lt_tensor y, lt_tensor rstd, lt_tensor o, lt_tensor u,
                      lt_linear_norm norm, lt_gate gate, float eps, lt_tensor row_stat);
// d_o, du = gradients (overwritten) given dy and the forward's o, u and rstd. row_stat: data NULL,
// or for a split row the mean of da * a over all of it (below; a = the normalised o, da = dy g(u)).
int lt_linear_out_bwd(lt_ctx *ctx, lt_tensor d_o, lt_tensor du, lt_tensor dy, lt_tensor o,
                      lt_tensor u, lt_tensor rstd, lt_linear_norm norm, lt_gate gate, float eps,
                      lt_tensor row_stat);
// Tensor parallelism splits the heads, and with them the row that LT_LINEAR_NORM_RMS normalises
// (every head of a token). Its two statistics are then sums over the ranks, each taken between
// two calls; row_width is the whole row's H*D over all ranks:
//   forward   lt_linear_out_rms_stat: row_stat[t] = (sum of o[t]^2 over this rank's heads) /
//             row_width; all-reduce row_stat; lt_linear_out_fwd with it
//   backward  lt_linear_out_rms_grad_stat: row_stat[t] = (sum of da * a over this rank's columns)
//             / row_width, from dy, o, u and the forward's rstd; all-reduce; lt_linear_out_bwd
// o: (N, H, D); dy, u: (N, H*D); rstd, row_stat: (N) f32
int lt_linear_out_rms_stat(lt_ctx *ctx, lt_tensor row_stat, lt_tensor o, int64_t row_width);
int lt_linear_out_rms_grad_stat(lt_ctx *ctx, lt_tensor row_stat, lt_tensor dy, lt_tensor o,
                                lt_tensor u, lt_tensor rstd, lt_gate gate, int64_t row_width);

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
