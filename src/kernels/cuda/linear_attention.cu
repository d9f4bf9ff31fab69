// Linear attention's four ops (kernels.h) as scans (linear_scan.cuh): the forward and the LASP-2
// state are scans of (q, k, v); the backward is Lightning Attention-2's Algorithm 2 read as three
// more scans, dq forwards and dk, dv in reverse, with d/dP the reverse scan's final state. The
// forward and backward go to the chunk-parallel kernels instead where those take the call
// (linear_chunk.cuh: widths 64 and 128, unless LT_LINEAR_KERNELS=scan).
// Match lt_cpu_linear_attn_fwd, _bwd, _state and _state_bwd. The CPU's `block` is the split of
// the same sum into blocks; the GPU uses its own chunk of 64 tokens, which changes only rounding.
#include "kernels/cuda/linear_scan.cuh" // first: it includes the C headers as C
#include "kernels/cuda/cuda_linear.h"
#include "kernels/cuda/linear_chunk.cuh"

enum { THREADS = 256 };

// The sizes and masks every pass of one op shares. k: (B, T, Hkv, D).
static scan_pass base_pass(lt_tensor k, int hq, const lt_linear_attn_spec *spec) {
  scan_pass p = {};
  p.b = k.shape[0], p.t = k.shape[1], p.hq = hq, p.hkv = (int)k.shape[2];
  p.log_decay = spec->log_decay.data ? (const float *)spec->log_decay.data : nullptr;
  p.doc = spec->doc.data ? (const int32_t *)spec->doc.data : nullptr;
  p.offset = 1;
  return p;
}

static scan_operand by_query_head(lt_tensor t) {
  return scan_operand{(const bf16 *)t.data, false};
}
static scan_operand by_kv_head(lt_tensor t) {
  return scan_operand{(const bf16 *)t.data, true};
}

// The forward's S0 belongs to prefix_doc where documents are given (kernels.h).
static const int32_t *prefix_document(const lt_linear_attn_spec *spec) {
  return spec->doc.data && spec->prefix_doc.data ? (const int32_t *)spec->prefix_doc.data : nullptr;
}

// The scans read bf16 activations; what they write may be bf16 or f32.
static bool scan_dtypes(lt_tensor a, lt_tensor b, lt_tensor c, lt_tensor d) {
  const lt_tensor in[4] = {a, b, c, d};
  for (int i = 0; i < 4; i++)
    if (in[i].data && in[i].dtype != LT_BF16) return false;
  return true;
}
static bool float_dtype(lt_tensor t) {
  return !t.data || t.dtype == LT_BF16 || t.dtype == LT_F32;
}

int lt_cuda_linear_attn_fwd(lt_ctx *ctx, lt_tensor o, lt_tensor q, lt_tensor k, lt_tensor v,
                            lt_tensor prefix, const lt_linear_attn_spec *spec) {
  if (!scan_dtypes(q, k, v, o))
    return lt_cuda_unsupported("linear_attn_fwd", "q, k, v and o must be bf16", q, o);
  bool done; // the chunk-parallel kernels where they apply (linear_chunk.cuh), else the scan
  LT_TRY(lt_cuda_linear_chunk_fwd(cuda_state(ctx), o, q, k, v, prefix, spec, &done));
  if (done) return LT_OK;
  const int d = (int)q.shape[3], e = (int)v.shape[3];
  scan_pass p = base_pass(k, (int)q.shape[2], spec);
  p.q = by_query_head(q), p.k = by_kv_head(k), p.v = by_kv_head(v);
  p.out = o.data, p.out_dtype = o.dtype;
  p.wq = d, p.wv = e;
  p.start_doc = prefix_document(spec);
  if (prefix.data)
    p.prefix = (const float *)prefix.data, p.prefix_head = (int64_t)d * e, p.prefix_row = e,
    p.prefix_col = 1;
  return lt_cuda_linear_scan(cuda_state(ctx), &p, "linear_attn_fwd", q, o);
}

// dprefix = lambda_h times the dv scan's final state (which holds the first document's tokens at
// weights lambda^i), where that document is the prefix's: d/dP of lambda^(i+1) q_i P.
// dprefix: (B, H, D, E) f32; doc: (B, T) or NULL; start_doc: (B) or NULL (then doc[b, 0])
__global__ void prefix_grad_kernel(float *dprefix, const float *log_decay, const int32_t *doc,
                                   const int32_t *start_doc, int64_t t, int64_t per_head) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= per_head) return;
  const int h = blockIdx.y, hq = gridDim.y;
  const int64_t b = blockIdx.z;
  const bool in_doc = !doc || !start_doc || doc[b * t] == start_doc[b];
  const float w = in_doc ? (log_decay ? expf(log_decay[h]) : 1.0f) : 0.0f;
  dprefix[(b * hq + h) * per_head + i] *= w;
}

int lt_cuda_linear_attn_bwd(lt_ctx *ctx, lt_tensor dq, lt_tensor dk, lt_tensor dv,
                            lt_tensor dprefix, lt_tensor dout, lt_tensor q, lt_tensor k,
                            lt_tensor v, lt_tensor prefix, const lt_linear_attn_spec *spec) {
  if (!scan_dtypes(q, k, v, dout) || !float_dtype(dq) || !float_dtype(dk) || !float_dtype(dv))
    return lt_cuda_unsupported("linear_attn_bwd", "q, k, v, dout bf16; dq, dk, dv bf16 or f32", q,
                               dq);
  lt_cuda_state *st = cuda_state(ctx);
  bool done;
  LT_TRY(lt_cuda_linear_chunk_bwd(st, dq, dk, dv, dprefix, dout, q, k, v, prefix, spec, &done));
  if (done) return LT_OK;
  const int d = (int)q.shape[3], e = (int)v.shape[3], hq = (int)q.shape[2];
  const scan_pass base = base_pass(k, hq, spec);
  // dq_i = sum_{j <= i} lambda^(i-j) (dO_i . v_j) k_j + lambda^(i+1) dO_i P^T
  scan_pass p = base;
  p.q = by_query_head(dout), p.k = by_kv_head(v), p.v = by_kv_head(k);
  p.out = dq.data, p.out_dtype = dq.dtype, p.accumulate = true;
  p.wq = e, p.wv = d;
  p.start_doc = prefix_document(spec);
  if (prefix.data)
    p.prefix = (const float *)prefix.data, p.prefix_head = (int64_t)d * e, p.prefix_row = 1,
    p.prefix_col = e;
  LT_TRY(lt_cuda_linear_scan(st, &p, "linear_attn_bwd (dq)", dout, dq));
  // dk_j = sum_{i >= j} lambda^(i-j) (dO_i . v_j) q_i
  p = base;
  p.q = by_kv_head(v), p.k = by_query_head(dout), p.v = by_query_head(q);
  p.out = dk.data, p.out_dtype = dk.dtype, p.out_by_kv_head = true, p.accumulate = true;
  p.wq = e, p.wv = d, p.reverse = true, p.serial_groups = true;
  LT_TRY(lt_cuda_linear_scan(st, &p, "linear_attn_bwd (dk)", dout, dk));
  // dv_j = sum_{i >= j} lambda^(i-j) (q_i . k_j) dO_i; its final state is sum lambda^i q_i^T dO_i
  p = base;
  p.q = by_kv_head(k), p.k = by_query_head(q), p.v = by_query_head(dout);
  p.out = dv.data, p.out_dtype = dv.dtype, p.out_by_kv_head = true, p.accumulate = true;
  p.wq = d, p.wv = e, p.reverse = true, p.serial_groups = true;
  p.final_state = (float *)dprefix.data;
  LT_TRY(lt_cuda_linear_scan(st, &p, "linear_attn_bwd (dv)", dout, dv));
  if (!dprefix.data) return LT_OK;
  const int64_t per_head = (int64_t)d * e;
  const int32_t *start_doc =
      spec->prefix_doc.data ? (const int32_t *)spec->prefix_doc.data : nullptr;
  prefix_grad_kernel<<<dim3(blocks_for(per_head, THREADS), hq, (unsigned)base.b), THREADS, 0,
                       st->stream>>>((float *)dprefix.data, base.log_decay, base.doc, start_doc,
                                     base.t, per_head);
  return lt_cuda_launched(st, "linear_attn_bwd (dprefix)", dprefix, dout);
}

int lt_cuda_linear_attn_state(lt_ctx *ctx, lt_tensor state, lt_tensor k, lt_tensor v,
                              const lt_linear_attn_spec *spec) {
  if (!scan_dtypes(k, v, k, v))
    return lt_cuda_unsupported("linear_attn_state", "k and v must be bf16", k, v);
  scan_pass p = base_pass(k, (int)state.shape[1], spec);
  p.k = by_kv_head(k), p.v = by_kv_head(v);
  p.wq = (int)k.shape[3], p.wv = (int)v.shape[3];
  p.final_state = (float *)state.data;
  return lt_cuda_linear_scan(cuda_state(ctx), &p, "linear_attn_state", k, state);
}

// The state's terms lambda^(T-1-j) k_j^T v_j as reverse scans without keys, from S0 = dM (or its
// transpose) at the last token: dk_j += lambda^(T-1-j) v_j dM^T, dv_j += lambda^(T-1-j) k_j dM.
int lt_cuda_linear_attn_state_bwd(lt_ctx *ctx, lt_tensor dk, lt_tensor dv, lt_tensor dstate,
                                  lt_tensor k, lt_tensor v, const lt_linear_attn_spec *spec) {
  if (!scan_dtypes(k, v, k, v) || !float_dtype(dk) || !float_dtype(dv))
    return lt_cuda_unsupported("linear_attn_state_bwd", "k, v bf16; dk, dv bf16 or f32", k, dk);
  lt_cuda_state *st = cuda_state(ctx);
  const int d = (int)k.shape[3], e = (int)v.shape[3];
  const scan_pass base = base_pass(k, (int)dstate.shape[1], spec);
  scan_pass p = base;
  p.q = by_kv_head(v), p.out = dk.data, p.out_dtype = dk.dtype;
  p.wq = e, p.wv = d;
  p.prefix = (const float *)dstate.data, p.prefix_head = (int64_t)d * e, p.prefix_row = 1,
  p.prefix_col = e;
  p.out_by_kv_head = p.accumulate = p.reverse = p.serial_groups = true, p.offset = 0;
  LT_TRY(lt_cuda_linear_scan(st, &p, "linear_attn_state_bwd (dk)", dstate, dk));
  p.q = by_kv_head(k), p.out = dv.data, p.out_dtype = dv.dtype;
  p.wq = d, p.wv = e;
  p.prefix_row = e, p.prefix_col = 1;
  return lt_cuda_linear_scan(st, &p, "linear_attn_state_bwd (dv)", dstate, dv);
}
