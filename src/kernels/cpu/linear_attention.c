// Linear attention with per-head decay, in blocks: Lightning Attention-2 (Qin et al. 2024,
// arXiv:2401.04658), Algorithm 1 (forward) and Algorithm 2 (backward), with a prefix state and
// document resets added for LASP-2 (Sun et al. 2025, arXiv:2502.07563) and packed sequences.
//
// For one head, with lambda = exp(log_decay) and a block of n tokens starting at t0 (r = i - t0):
//   intra:  o_i += sum_{t0 <= j <= i} lambda^(i-j) (q_i . k_j) v_j      (masked, decayed q k^T v)
//   inter:  o_i += lambda^(r+1) q_i S                                  (S: the state before the
//   block) update: S = lambda^n S + sum_j lambda^(t0+n-1-j) k_j^T v_j
// Every weight is a power lambda^m with 0 <= m <= n, read from a table of block + 1 powers: no
// cumulative sums of log-decays, whose differences lose precision over long sequences.
//
// Documents: the state belongs to one document (state_doc). A query reads it only in that
// document, a block's update keeps the old state only if the block ends in that document (so,
// documents being contiguous, it never left it), and adds only the tokens of the block's last
// document.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "kernels/cpu/cpu_kernels.h"

// One batch row and query head: where its tensors start and how its tokens are masked.
typedef struct head_view {
  int64_t t, block;
  int hq, hkv, d, e;
  int64_t q_stride, kv_stride;   // floats between consecutive tokens of q and of k (v: e/d)
  const float *q, *k, *v, *dout; // the head's first token (q, dout: NULL when unused)
  const int32_t *doc;            // (t) or NULL
  int32_t start_doc;             // the document of the state before token 0
  const float *prefix;           // (d, e) or NULL
  bool prefix_transposed;        // prefix is stored (e, d): the view is swapped for dq
  float log_decay;
} head_view;

static head_view view_head(const lt_cpu_linear_dims *dims, const lt_linear_attn_spec *spec,
                           const float *q, const float *k, const float *v, const float *dout,
                           const float *prefix, int64_t b, int h) {
  const int group = dims->hq / dims->hkv, kvh = h / group;
  head_view hv = {.t = dims->t,
                  .block = spec->block,
                  .hq = dims->hq,
                  .hkv = dims->hkv,
                  .d = dims->d,
                  .e = dims->e,
                  .q_stride = (int64_t)dims->hq * dims->d,
                  .kv_stride = (int64_t)dims->hkv * dims->d};
  if (q) hv.q = q + (b * dims->t * dims->hq + h) * dims->d;
  hv.k = k + (b * dims->t * dims->hkv + kvh) * dims->d;
  hv.v = v + (b * dims->t * dims->hkv + kvh) * dims->e;
  if (dout) hv.dout = dout + (b * dims->t * dims->hq + h) * dims->e;
  if (prefix) hv.prefix = prefix + (b * dims->hq + h) * (int64_t)dims->d * dims->e;
  hv.log_decay = spec->log_decay.data ? lt_f32(spec->log_decay)[h] : 0.0f;
  if (spec->doc.data) {
    hv.doc = lt_i32(spec->doc) + b * dims->t;
    hv.start_doc = spec->prefix_doc.data ? lt_i32(spec->prefix_doc)[b] : hv.doc[0];
  }
  return hv;
}

static const float *q_at(const head_view *hv, int64_t i) {
  return hv->q + i * hv->q_stride;
}
static const float *k_at(const head_view *hv, int64_t j) {
  return hv->k + j * hv->kv_stride;
}
static const float *v_at(const head_view *hv, int64_t j) {
  return hv->v + j * (int64_t)hv->hkv * hv->e;
}
static const float *dout_at(const head_view *hv, int64_t i) {
  return hv->dout + i * (int64_t)hv->hq * hv->e;
}
static bool same_doc(const head_view *hv, int64_t i, int64_t j) {
  return !hv->doc || hv->doc[i] == hv->doc[j];
}
static bool in_doc(const head_view *hv, int64_t i, int32_t doc) {
  return !hv->doc || hv->doc[i] == doc;
}

static float dot(const float *a, const float *b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

// s (d x e) += w a^T b: a state's term.
static void add_outer(float *s, float w, const float *a, const float *b, int d, int e) {
  for (int y = 0; y < d; y++) {
    const float wa = w * a[y];
    float *row = s + (int64_t)y * e;
#pragma omp simd
    for (int x = 0; x < e; x++) row[x] += wa * b[x];
  }
}

// The gradients of a term w k^T v given the state's gradient g: dk += w g v, dv += w k^T g.
static void add_outer_grads(float *dk, float *dv, float w, const float *k, const float *v,
                            const float *g, int d, int e) {
  for (int y = 0; y < d; y++) {
    const float *row = g + (int64_t)y * e;
    dk[y] += w * dot(row, v, e);
    const float wk = w * k[y];
#pragma omp simd
    for (int x = 0; x < e; x++) dv[x] += wk * row[x];
  }
}

// pw[m] = lambda^m for 0 <= m <= block.
static void decay_powers(float *pw, const head_view *hv) {
  for (int64_t m = 0; m <= hv->block; m++) pw[m] = expf(hv->log_decay * (float)m);
}

static void load_state(float *s, const head_view *hv) {
  const int d = hv->d, e = hv->e;
  if (!hv->prefix)
    memset(s, 0, sizeof(float) * (size_t)d * (size_t)e);
  else if (!hv->prefix_transposed)
    memcpy(s, hv->prefix, sizeof(float) * (size_t)d * (size_t)e);
  else
    for (int y = 0; y < d; y++)
      for (int x = 0; x < e; x++) s[(int64_t)y * e + x] = hv->prefix[(int64_t)x * d + y];
}

// Tokens in the block starting at t0.
static int64_t block_len(const head_view *hv, int64_t t0) {
  return hv->t - t0 < hv->block ? hv->t - t0 : hv->block;
}

// S = (keep ? lambda^n S : 0) + sum_{j in block, j in the block's last document} lambda^(last-j)
// k_j^T v_j, where keep says the block never left the state's document. Returns the new state's
// document.
static int32_t update_state(float *s, const head_view *hv, const float *pw, int64_t t0, int64_t n,
                            int32_t state_doc) {
  const int64_t last = t0 + n - 1;
  const int d = hv->d, e = hv->e;
  const float carry = in_doc(hv, last, state_doc) ? pw[n] : 0.0f;
  for (int64_t x = 0; x < (int64_t)d * e; x++) s[x] *= carry;
  for (int64_t j = t0; j <= last; j++) {
    if (same_doc(hv, j, last)) add_outer(s, pw[last - j], k_at(hv, j), v_at(hv, j), d, e);
  }
  return hv->doc ? hv->doc[last] : state_doc;
}

// out_i (+)= sum_{t0 <= j <= i} lambda^(i-j) (q_i . k_j) v_j + lambda^(r+1) q_i S, block by block,
// starting from S = the prefix (or 0): Algorithm 1. The forward writes o; with the roles swapped
// (swap_for_dq) the same pass accumulates dq.
static void blocked_pass(float *out, const head_view *hv, float *s, const float *pw,
                         bool accumulate) {
  const int d = hv->d, e = hv->e;
  load_state(s, hv);
  int32_t state_doc = hv->start_doc;
  for (int64_t t0 = 0; t0 < hv->t; t0 += hv->block) {
    const int64_t n = block_len(hv, t0);
    for (int64_t r = 0; r < n; r++) {
      const int64_t i = t0 + r;
      const float *qi = q_at(hv, i);
      float *oi = out + i * (int64_t)hv->hq * e;
      if (!accumulate) memset(oi, 0, sizeof(float) * (size_t)e);
      if (in_doc(hv, i, state_doc)) { // inter: lambda^(r+1) q_i S
        for (int y = 0; y < d; y++) {
          const float wq = pw[r + 1] * qi[y], *row = s + (int64_t)y * e;
#pragma omp simd
          for (int x = 0; x < e; x++) oi[x] += wq * row[x];
        }
      }
      for (int64_t j = t0; j <= i; j++) { // intra: the masked, decayed q k^T v
        if (!same_doc(hv, i, j)) continue;
        const float a = pw[i - j] * dot(qi, k_at(hv, j), d), *vj = v_at(hv, j);
#pragma omp simd
        for (int x = 0; x < e; x++) oi[x] += a * vj[x];
      }
    }
    state_doc = update_state(s, hv, pw, t0, n, state_doc);
  }
}

// Per-thread workspace: floats for `states` (d x e) states and the power table.
static float *workspace(const lt_cpu_linear_dims *dims, int64_t block, int states,
                        size_t *per_thread) {
  *per_thread = (size_t)states * (size_t)dims->d * (size_t)dims->e + (size_t)block + 1;
  return malloc(*per_thread * sizeof(float) * (size_t)omp_get_max_threads());
}

int lt_cpu_linear_attn_fwd(float *o, const float *q, const float *k, const float *v,
                           const float *prefix, const lt_cpu_linear_dims *dims,
                           const lt_linear_attn_spec *spec) {
  size_t per;
  float *work = workspace(dims, spec->block, 1, &per);
  LT_CHECK(work, LT_ERR_MEMORY, "out of host memory for linear attention's workspace");
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int64_t b = 0; b < dims->b; b++)
    for (int h = 0; h < dims->hq; h++) {
      float *s = work + per * (size_t)omp_get_thread_num(), *pw = s + (size_t)dims->d * dims->e;
      head_view hv = view_head(dims, spec, q, k, v, NULL, prefix, b, h);
      decay_powers(pw, &hv);
      blocked_pass(o + (b * dims->t * dims->hq + h) * dims->e, &hv, s, pw, false);
    }
  free(work);
  return LT_OK;
}

// dq_i = sum_{j <= i} lambda^(i-j) (dO_i . v_j) k_j + lambda^(r+1) dO_i S^T (Algorithm 2's first
// loop) is the forward's pass with dO, v, k in the roles of q, k, v, whose state is S^T.
static head_view swap_for_dq(const head_view *hv) {
  head_view sw = *hv;
  sw.d = hv->e, sw.e = hv->d;
  sw.q = hv->dout, sw.k = hv->v, sw.v = hv->k;
  sw.q_stride = (int64_t)hv->hq * hv->e, sw.kv_stride = (int64_t)hv->hkv * hv->e;
  sw.prefix_transposed = true;
  return sw;
}

// dk, dv from the blocks in reverse (Algorithm 2's second loop). ds is the gradient of the state
// at the end of the current block, coming from later blocks; before moving to the previous block
// it becomes the gradient of the state before this one:
//   dS_prev = (keep ? lambda^n dS : 0) + sum_{i in the state's document} lambda^(r+1) q_i^T dO_i.
// What remains at the start is d/d(prefix), written to dprefix when it is not NULL.
static void backward_dkv(float *dk, float *dv, float *dprefix, const head_view *hv, float *ds,
                         const float *pw) {
  const int d = hv->d, e = hv->e;
  memset(ds, 0, sizeof(float) * (size_t)d * (size_t)e);
  const int64_t n_blocks = (hv->t + hv->block - 1) / hv->block;
  for (int64_t blk = n_blocks - 1; blk >= 0; blk--) {
    const int64_t t0 = blk * hv->block, n = block_len(hv, t0);
    const int64_t last = t0 + n - 1;
    const int32_t prev_doc = t0 > 0 && hv->doc ? hv->doc[t0 - 1] : hv->start_doc;
    for (int64_t j = t0; j <= last; j++) {
      const float *kj = k_at(hv, j), *vj = v_at(hv, j);
      float *dkj = dk + j * hv->kv_stride, *dvj = dv + j * (int64_t)hv->hkv * e;
      for (int64_t i = j; i <= last; i++) { // intra
        if (!same_doc(hv, i, j)) continue;
        const float *qi = q_at(hv, i), *gi = dout_at(hv, i);
        const float a = pw[i - j] * dot(gi, vj, e), p = pw[i - j] * dot(qi, kj, d);
#pragma omp simd
        for (int y = 0; y < d; y++) dkj[y] += a * qi[y];
#pragma omp simd
        for (int x = 0; x < e; x++) dvj[x] += p * gi[x];
      }
      if (same_doc(hv, j, last)) // else j never reaches the end-of-block state
        add_outer_grads(dkj, dvj, pw[last - j], kj, vj, ds, d, e);
    }
    const float carry = in_doc(hv, last, prev_doc) ? pw[n] : 0.0f;
    for (int64_t x = 0; x < (int64_t)d * e; x++) ds[x] *= carry;
    for (int64_t i = t0; i <= last; i++)
      if (in_doc(hv, i, prev_doc)) add_outer(ds, pw[i - t0 + 1], q_at(hv, i), dout_at(hv, i), d, e);
  }
  if (dprefix) memcpy(dprefix, ds, sizeof(float) * (size_t)d * (size_t)e);
}

// Work is split by (batch row, key/value head): each item owns its dk, dv rows and the dq rows of
// its query heads, so there are no atomics and the summation order is fixed.
int lt_cpu_linear_attn_bwd(float *dq, float *dk, float *dv, float *dprefix, const float *dout,
                           const float *q, const float *k, const float *v, const float *prefix,
                           const lt_cpu_linear_dims *dims, const lt_linear_attn_spec *spec) {
  size_t per;
  float *work = workspace(dims, spec->block, 1, &per);
  LT_CHECK(work, LT_ERR_MEMORY, "out of host memory for linear attention's workspace");
  const int group = dims->hq / dims->hkv;
  const int64_t de = (int64_t)dims->d * dims->e;
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int64_t b = 0; b < dims->b; b++)
    for (int kvh = 0; kvh < dims->hkv; kvh++) {
      float *s = work + per * (size_t)omp_get_thread_num(), *pw = s + de;
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        head_view hv = view_head(dims, spec, q, k, v, dout, prefix, b, h);
        decay_powers(pw, &hv);
        const head_view swapped = swap_for_dq(&hv);
        blocked_pass(dq + (b * dims->t * dims->hq + h) * dims->d, &swapped, s, pw, true);
        backward_dkv(dk + (b * dims->t * dims->hkv + kvh) * dims->d,
                     dv + (b * dims->t * dims->hkv + kvh) * dims->e,
                     dprefix ? dprefix + (b * dims->hq + h) * de : NULL, &hv, s, pw);
      }
    }
  free(work);
  return LT_OK;
}

// lambda^(t-1-j) for the state kernels: the exponent spans the whole chunk, so it is computed per
// token rather than read from a block's table.
static float weight_to_end(const head_view *hv, int64_t j) {
  return expf(hv->log_decay * (float)(hv->t - 1 - j));
}

void lt_cpu_linear_attn_state(float *state, const float *k, const float *v,
                              const lt_cpu_linear_dims *dims, const lt_linear_attn_spec *spec) {
  const int d = dims->d, e = dims->e;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t b = 0; b < dims->b; b++)
    for (int h = 0; h < dims->hq; h++) {
      head_view hv = view_head(dims, spec, NULL, k, v, NULL, NULL, b, h);
      float *s = state + (b * dims->hq + h) * (int64_t)d * e;
      memset(s, 0, sizeof(float) * (size_t)d * (size_t)e);
      for (int64_t j = 0; j < hv.t; j++) {
        if (same_doc(&hv, j, hv.t - 1))
          add_outer(s, weight_to_end(&hv, j), k_at(&hv, j), v_at(&hv, j), d, e);
      }
    }
}

void lt_cpu_linear_attn_state_bwd(float *dk, float *dv, const float *dstate, const float *k,
                                  const float *v, const lt_cpu_linear_dims *dims,
                                  const lt_linear_attn_spec *spec) {
  const int d = dims->d, e = dims->e, group = dims->hq / dims->hkv;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t b = 0; b < dims->b; b++)
    for (int kvh = 0; kvh < dims->hkv; kvh++)
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        head_view hv = view_head(dims, spec, NULL, k, v, NULL, NULL, b, h);
        const float *g = dstate + (b * dims->hq + h) * (int64_t)d * e;
        for (int64_t j = 0; j < hv.t; j++) {
          if (!same_doc(&hv, j, hv.t - 1)) continue;
          add_outer_grads(dk + ((b * dims->t + j) * dims->hkv + kvh) * d,
                          dv + ((b * dims->t + j) * dims->hkv + kvh) * e, weight_to_end(&hv, j),
                          k_at(&hv, j), v_at(&hv, j), g, d, e);
        }
      }
}
