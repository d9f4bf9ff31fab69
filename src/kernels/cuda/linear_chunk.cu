// Linear attention with a decay per head in the chunk form of Lightning Attention-2 (Qin et al.
// 2024, arXiv:2401.04658, Algorithms 1 and 2), parallel over chunks: the only sequential work is
// the recurrence of the D x E states between chunks, one small matmul per chunk. Matches
// lt_cpu_linear_attn_fwd and _bwd (kernels/cpu/linear_attention.c); the CPU's `block` only splits
// the same sums, the GPU's chunk is its own 64 tokens.
//
// For one (batch row, query head), lambda = exp(log_decay[h]), chunk c = tokens [cC, cC + n_c),
// local index i' = i - cC, and the documents rules of the CPU (kernels.h, "Documents"):
//   H_c   the state before chunk c; H_0 = the prefix P (or 0), H_{c+1} = a_c H_c + U_c with
//         U_c = sum_{j in the chunk's last document} lambda^(n_c - 1 - j') k_j^T v_j and
//         a_c = lambda^(n_c) if the chunk's last token is in H_c's document, else 0. H_c belongs
//         to the document of token cC - 1 (c > 0) or to the prefix's (c = 0).
//   o_i = [(Q K^T) . M] V + [doc_i = doc(H_c)] lambda^(i'+1) q_i H_c,
//         M_ij = lambda^(i'-j') for j <= i in one document, else 0.           (Algorithm 1)
//   G_c   the gradient of the loss by H_{c+1}, from the chunks after c: G_last = 0,
//         G_{c-1} = a_c G_c + W_c, W_c = sum_{i: doc_i = doc(H_c)} lambda^(i'+1) q_i^T dO_i;
//         d/dP = G_{-1}.
//   with A = (Q K^T) . M, dA = (dO V^T) . M:                                   (Algorithm 2)
//   dq = dA K + [doc_i = doc(H_c)] lambda^(i'+1) dO_i H_c^T,
//   dk = dA^T Q + [doc_j = the last token's] lambda^(n_c-1-j') v_j G_c^T,
//   dv = A^T dO + [same] lambda^(n_c-1-j') k_j G_c.
//
// Kernels: the sequential pass (linear_chunk_state.cu) writes each H_c (and, reversed, each G_c)
// as bf16 into the workspace (B, Hq, chunks, D, D), in segments where the heads are too few to
// fill the GPU; the backward runs the H and G walks in one launch. The products run on mma.sync in
// linear_chunk_mma.cu: o and dq one block per chunk and query head, dk and dv one per chunk and
// key/value head (summed over the group's query heads on chip, without atomics), bf16 tensor
// cores with f32 accumulation. Powers lambda^m, 0 <= m <= 64, come from a table: no cumulative
// sums of log-decays. This file is the host side: which calls the kernels take, the workspace,
// the launches in order.
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "core/log.h"
}
#include "kernels/cuda/linear_chunk.cuh"
#include "kernels/cuda/linear_chunk_common.cuh"

// LT_LINEAR_KERNELS=scan keeps every call on the scan (linear_scan.cu), to compare the two;
// =chunks makes a call the chunk kernels do not take an error instead (the tests' way to know
// which kernels they check); unset or anything else: the chunk kernels where they apply.
typedef enum chunk_choice { CHUNKS_WHERE_THEY_APPLY, CHUNKS_NEVER, CHUNKS_ALWAYS } chunk_choice;

static int chunk_kernels_choice(chunk_choice *out) {
  const char *choice = getenv("LT_LINEAR_KERNELS");
  *out = CHUNKS_WHERE_THEY_APPLY;
  if (!choice || !*choice) return LT_OK;
  if (strcmp(choice, "scan") == 0)
    *out = CHUNKS_NEVER;
  else if (strcmp(choice, "chunks") == 0)
    *out = CHUNKS_ALWAYS;
  else
    return lt_fail(LT_ERR_CONFIG,
                   "environment: LT_LINEAR_KERNELS=%s names no linear attention kernels; use scan "
                   "or chunks, or unset it",
                   choice);
  return LT_OK;
}

// Whether the kernels take tensors of these shapes: one width D = E of 64 or 128, 16-byte
// aligned data, grids within CUDA's limits (the backward's state pass has 2 B blocks in z).
static bool chunk_shapes(lt_tensor q, lt_tensor k, lt_tensor v, const lt_tensor *others, int n) {
  const int64_t d = q.shape[3];
  if ((d != 64 && d != 128) || k.shape[3] != d || v.shape[3] != d) return false;
  if (q.shape[0] > 32767 || q.shape[2] > 65535 || q.shape[1] > (int64_t)CHUNK * 0x7fffffff)
    return false;
  if (!aligned16(q.data) || !aligned16(k.data) || !aligned16(v.data)) return false;
  for (int i = 0; i < n; i++)
    if (!others[i].data || !aligned16(others[i].data)) return false;
  return true;
}

// Where the chunk kernels do not take a call: LT_OK to leave it to the scan, or with
// LT_LINEAR_KERNELS=chunks an error that says why.
static int not_taken(chunk_choice choice, const char *op, const char *why, lt_tensor a,
                     lt_tensor b) {
  if (choice != CHUNKS_ALWAYS) return LT_OK;
  return lt_cuda_unsupported(op, why, a, b);
}

static chunk_args args_of(lt_tensor q, lt_tensor k, lt_tensor v, lt_tensor prefix,
                          const lt_linear_attn_spec *spec) {
  chunk_args a = {};
  a.q = (const bf16 *)q.data, a.k = (const bf16 *)k.data, a.v = (const bf16 *)v.data;
  a.log_decay = spec->log_decay.data ? (const float *)spec->log_decay.data : nullptr;
  a.doc = spec->doc.data ? (const int32_t *)spec->doc.data : nullptr;
  a.prefix_doc = a.doc && spec->prefix_doc.data ? (const int32_t *)spec->prefix_doc.data : nullptr;
  a.prefix = prefix.data ? (const float *)prefix.data : nullptr;
  a.b = q.shape[0], a.t = q.shape[1], a.hq = (int)q.shape[2], a.hkv = (int)k.shape[2];
  a.chunks = (a.t + CHUNK - 1) / CHUNK;
  return a;
}

// The workspace for `sets` state sets (H; H and G) of (B, Hq, chunks, D, D) bf16 and, after
// them, the segments' states, grown to fit; without room for the segments' states, one walk;
// false where the GPU has no room for the state sets.
static bool reserve_states(lt_cuda_state *st, chunk_args *a, int d, int sets, chunk_segments *sg) {
  const size_t per_set = (size_t)(a->b * a->hq * a->chunks) * (size_t)d * d * sizeof(bf16);
  const size_t sets_bytes = per_set * sets;
  if (sg->segs > 1 &&
      !lt_cuda_scratch_reserve(st, sets_bytes + lt_cuda_chunk_segment_bytes(*a, d, sets, *sg)))
    sg->segs = 1, sg->seg_chunks = a->chunks;
  if (!lt_cuda_scratch_reserve(st, sets_bytes)) return false;
  a->h_states = (bf16 *)st->scratch;
  a->g_states = sets > 1 ? (bf16 *)((char *)st->scratch + per_set) : nullptr;
  sg->workspace = sg->segs > 1 ? (float *)((char *)st->scratch + sets_bytes) : nullptr;
  return true;
}

static const char *const SHAPES =
    "LT_LINEAR_KERNELS=chunks, but the chunk kernels take D = E of 64 or 128, 16-byte aligned";
static const char *const NO_ROOM =
    "LT_LINEAR_KERNELS=chunks, but the GPU has no room for the chunks' states";

// No room for the states: the scan takes the call (some 5x slower), said once per process.
static int no_room(chunk_choice choice, const char *op, const chunk_args &a, int d, int sets,
                   lt_tensor x, lt_tensor y) {
  static bool said = false;
  if (choice != CHUNKS_ALWAYS && !said) {
    said = true;
    lt_warn("%s: no GPU memory for the chunk kernels' states (%.2f GiB at T=%lld); linear "
            "attention falls back to its slower scan",
            op, (double)(a.b * a.hq * a.chunks) * d * d * sizeof(bf16) * sets / 1073741824.0,
            (long long)a.t);
  }
  return not_taken(choice, op, NO_ROOM, x, y);
}

// The state sets' workspace and the segments of the sequential pass for `sets` sets (1: H, the
// forward; 2: H and G, the backward). *taken false: the call is the scan's (or, with
// LT_LINEAR_KERNELS=chunks, the returned error says why).
static int plan_states(lt_cuda_state *st, chunk_choice choice, const char *op, chunk_args *a, int d,
                       int sets, chunk_segments *sg, lt_tensor x, lt_tensor y, bool *taken) {
  *taken = false;
  LT_TRY(lt_cuda_chunk_segments(st, *a, d, sets, sg));
  if (!reserve_states(st, a, d, sets, sg)) return no_room(choice, op, *a, d, sets, x, y);
  *taken = true;
  return LT_OK;
}

int lt_cuda_linear_chunk_fwd(lt_cuda_state *st, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                             lt_tensor prefix, const lt_linear_attn_spec *spec, bool *done) {
  *done = false;
  const char *op = "linear_attn_fwd (chunks)";
  chunk_choice choice;
  LT_TRY(chunk_kernels_choice(&choice));
  if (choice == CHUNKS_NEVER) return LT_OK;
  if (!chunk_shapes(q, k, v, &o, 1)) return not_taken(choice, op, SHAPES, q, v);
  chunk_args a = args_of(q, k, v, prefix, spec);
  const int d = (int)q.shape[3];
  if (a.b * a.t == 0) return LT_OK; // nothing to run: the scan's early return says what holds
  chunk_segments sg;
  LT_TRY(plan_states(st, choice, op, &a, d, 1, &sg, q, o, done));
  if (!*done) return LT_OK;
  LT_TRY(lt_cuda_chunk_states(st, a, d, 1, sg));
  LT_TRY(lt_cuda_chunk_output(st, a, d, (bf16 *)o.data));
  return lt_cuda_launched(st, op, q, o);
}

int lt_cuda_linear_chunk_bwd(lt_cuda_state *st, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                             lt_tensor dprefix, lt_tensor dout, lt_tensor q, lt_tensor k,
                             lt_tensor v, lt_tensor prefix, const lt_linear_attn_spec *spec,
                             bool *done) {
  *done = false;
  const char *op = "linear_attn_bwd (chunks)";
  chunk_choice choice;
  LT_TRY(chunk_kernels_choice(&choice));
  if (choice == CHUNKS_NEVER) return LT_OK;
  const lt_tensor others[4] = {dq, dk, dv, dout};
  if (!chunk_shapes(q, k, v, others, 4)) return not_taken(choice, op, SHAPES, q, dq);
  if (dk.dtype != dq.dtype || dv.dtype != dq.dtype)
    return not_taken(choice, op, "LT_LINEAR_KERNELS=chunks, but dq, dk, dv differ in dtype", dq,
                     dk);
  chunk_args a = args_of(q, k, v, prefix, spec);
  a.dout = (const bf16 *)dout.data;
  a.dprefix = dprefix.data ? (float *)dprefix.data : nullptr;
  const int d = (int)q.shape[3];
  if (a.b * a.t == 0) return LT_OK; // nothing to run: the scan's early return says what holds
  chunk_segments sg;
  LT_TRY(plan_states(st, choice, op, &a, d, 2, &sg, q, dq, done));
  if (!*done) return LT_OK;
  LT_TRY(lt_cuda_chunk_states(st, a, d, 2, sg));
  const int rc = dispatch_float(dq.dtype, [&](auto *tag) {
    using TG = TYPE_OF(tag);
    return lt_cuda_chunk_grads(st, a, d, (TG *)dq.data, (TG *)dk.data, (TG *)dv.data);
  });
  LT_TRY(rc);
  return lt_cuda_launched(st, op, dout, dq);
}
