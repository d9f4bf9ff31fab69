// The one primitive behind every linear attention op on the GPU: a decayed, causal (or, reversed,
// anti-causal) linear attention scan over the tokens of each (batch row, head),
//   out_p (+)= sum_{p' <= p, same document} lambda^(p - p') (q_p . k_p') v_p'
//              + lambda^(p + offset) q_p S0            (p in the document of S0)
// in logical positions p (p = t, or p = T - 1 - t when reversed), with its final state
//   S = lambda^T S0 + sum_{p in the last document} lambda^(T-1-p) k_p^T v_p  (S0 kept only in it).
// The forward is the scan of (q, k, v) with the prefix as S0; by the symmetry of
// o = (mask . q k^T) v the gradients are scans too (Lightning Attention-2, Algorithm 2):
//   dq = scan(dO, v, k; S0 = P^T),  dk = reversed scan(v, dO, q),  dv = reversed scan(k, q, dO),
// and d/dP is lambda times the final state of the dv scan. Without k the scan only decays S0
// (the LASP-2 state's backward). See linear_scan.cu for the kernel.
#ifndef LT_LINEAR_SCAN_CUH
#define LT_LINEAR_SCAN_CUH

#include "kernels/cuda/cuda_common.cuh"

// A (B, T, heads, width) bf16 tensor that a scan reads, indexed by the query head h or by its
// key/value head h / group.
typedef struct scan_operand {
  const bf16 *data;
  bool by_kv_head;
} scan_operand;

typedef struct scan_pass {
  scan_operand q, k, v; // q', k': width wq (k.data NULL: no k' and no v'); v': width wv
  void *out;            // (B, T, heads, wv) of out_dtype, or NULL: only the final state
  lt_dtype out_dtype;
  bool out_by_kv_head, accumulate;
  int64_t b, t;
  int hq, hkv, wq, wv;
  const float *log_decay;   // (hq) or NULL: lambda = 1
  const int32_t *doc;       // (B, T) or NULL
  const int32_t *start_doc; // (B): the document of S0, or NULL: that of logical position 0
  bool reverse;
  int offset; // 1: S0 sits just before position 0; 0: at position 0
  // S0 of (b, h): prefix[(b hq + h) * prefix_head + r * prefix_row + c * prefix_col] for
  // r < wq, c < wv; NULL: zero
  const float *prefix;
  int64_t prefix_head, prefix_row, prefix_col;
  float *final_state; // (B, hq, wq, wv), or NULL
  // The out tensor (or any) is written by several query heads of a group: run the group's heads
  // one launch at a time so that their += never race.
  bool serial_groups;
} scan_pass;

// The widest q' and k' rows the scan takes (head width + the denominator's column, padded).
#define LT_LINEAR_SCAN_MAX_WIDTH 144

int lt_cuda_linear_scan(lt_cuda_state *st, const scan_pass *pass, const char *op, lt_tensor a,
                        lt_tensor b);

#endif
