// Softmax attention as tiled online softmax (Milakov & Gimelshein 2018; Dao 2023,
// FlashAttention-2, Algorithms 1 and 2): queries in tiles of TILE_Q rows stream over key tiles of
// TILE_K, keeping a running max and sum, so memory stays O(T) and a partial result (o, lse) over
// one key range can be merged with another's. Tiles with no visible pair are skipped, so the
// work of a sparse pattern (kernels/cpu/attention_mask.h) grows with its visible tiles.
#include <math.h>
#include <string.h>

#include "kernels/cpu/attention_mask.h"
#include "kernels/cpu/cpu_kernels.h"

enum { TILE_Q = LT_CPU_ATTN_TILE, TILE_K = LT_CPU_ATTN_TILE };

static float dot(const float *a, const float *b, int d) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; i++) s += a[i] * b[i];
  return s;
}

void lt_cpu_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v,
                     const lt_cpu_attn_dims *dims, const lt_attn_spec *spec) {
  const int64_t tq = dims->tq, tk = dims->tk;
  const int hq = dims->hq, hkv = dims->hkv, d = dims->d, group = hq / hkv;
  const int64_t n_qtiles = (tq + TILE_Q - 1) / TILE_Q;
  const float *gates = spec->head_gates.data ? lt_f32(spec->head_gates) : NULL;
  float *gated = spec->gated_out.data ? lt_f32(spec->gated_out) : NULL; // with gates (dispatch)
#pragma omp parallel for schedule(dynamic) collapse(3)
  for (int64_t b = 0; b < dims->b; b++)
    for (int h = 0; h < hq; h++)
      for (int64_t qt = 0; qt < n_qtiles; qt++) {
        const lt_cpu_attn_mask mask = lt_cpu_attn_row_mask(spec, b, tq, tk);
        const int64_t i0 = qt * TILE_Q, ni = tq - i0 < TILE_Q ? tq - i0 : TILE_Q;
        const lt_cpu_tile_range q_range = lt_cpu_tile_range_of(mask.q_pos, mask.q_doc, i0, ni);
        const int kvh = h / group;
        int64_t visited = 0;
        // Head widths are at most LT_MAX_HEAD_DIM (checked in dispatch), so a tile's output
        // accumulator fits on the stack.
        float row_max[TILE_Q], row_sum[TILE_Q], scores[TILE_K], accp[TILE_Q * LT_MAX_HEAD_DIM];
        for (int64_t r = 0; r < ni; r++) row_max[r] = -INFINITY, row_sum[r] = 0.0f;
        memset(accp, 0, sizeof(float) * (size_t)(ni * d));
        for (int64_t j0 = 0; j0 < tk; j0 += TILE_K) {
          const int64_t nj = tk - j0 < TILE_K ? tk - j0 : TILE_K;
          if (!lt_cpu_tile_may_be_visible(&mask, q_range,
                                          lt_cpu_tile_range_of(mask.k_pos, mask.k_doc, j0, nj)))
            continue;
          visited++;
          for (int64_t r = 0; r < ni; r++) {
            const int64_t i = i0 + r;
            if (gates && gates[(b * tq + i) * hq + h] == 0.0f) continue;
            const float *qi = q + ((b * tq + i) * hq + h) * d;
            float tile_max = -INFINITY;
            for (int64_t c = 0; c < nj; c++) {
              const int64_t j = j0 + c;
              scores[c] = lt_cpu_attn_visible(&mask, i, j)
                              ? spec->scale * dot(qi, k + ((b * tk + j) * hkv + kvh) * d, d)
                              : -INFINITY;
              if (scores[c] > tile_max) tile_max = scores[c];
            }
            if (tile_max == -INFINITY) continue;
            float new_max = row_max[r] > tile_max ? row_max[r] : tile_max;
            float rescale = expf(row_max[r] - new_max); // 0 on the first visible tile
            float *ar = accp + r * d;
            row_sum[r] *= rescale;
            for (int x = 0; x < d; x++) ar[x] *= rescale;
            for (int64_t c = 0; c < nj; c++) {
              if (scores[c] == -INFINITY) continue;
              float p = expf(scores[c] - new_max);
              row_sum[r] += p;
              const float *vj = v + ((b * tk + j0 + c) * hkv + kvh) * d;
              for (int x = 0; x < d; x++) ar[x] += p * vj[x];
            }
            row_max[r] = new_max;
          }
        }
        if (spec->tiles_visited) {
#pragma omp atomic
          *spec->tiles_visited += visited;
        }
        for (int64_t r = 0; r < ni; r++) {
          const int64_t i = i0 + r;
          const int64_t row = (b * tq + i) * hq + h;
          float *oi = o + row * d, *gi = gated ? gated + row * d : NULL;
          float *li = lse + (b * hq + h) * tq + i;
          if (row_sum[r] == 0.0f) {
            memset(oi, 0, sizeof(float) * (size_t)d);
            if (gi) memset(gi, 0, sizeof(float) * (size_t)d);
            *li = -INFINITY;
            continue;
          }
          float inv = 1.0f / row_sum[r];
          for (int x = 0; x < d; x++) oi[x] = accp[r * d + x] * inv;
          if (gi)
            for (int x = 0; x < d; x++) gi[x] = gates[row] * oi[x];
          *li = row_max[r] + logf(row_sum[r]);
        }
      }
}

void lt_cpu_attn_merge(float *o, float *lse, const float *o_part, const float *lse_part, int64_t b,
                       int64_t t, int h, int d) {
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t bi = 0; bi < b; bi++)
    for (int64_t i = 0; i < t; i++)
      for (int hi = 0; hi < h; hi++) {
        float *l = lse + (bi * h + hi) * t + i;
        float lp = lse_part[(bi * h + hi) * t + i];
        if (lp == -INFINITY) continue;
        float *oi = o + ((bi * t + i) * h + hi) * d;
        const float *pi = o_part + ((bi * t + i) * h + hi) * d;
        float mx = *l > lp ? *l : lp;
        float w_old = expf(*l - mx), w_new = expf(lp - mx), total = w_old + w_new;
        for (int x = 0; x < d; x++) oi[x] = (oi[x] * w_old + pi[x] * w_new) / total;
        *l = mx + logf(total);
      }
}

void lt_cpu_attn_bwd_delta(float *delta, const float *dout, const float *o, int64_t b, int64_t t,
                           int h, int d) {
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t bi = 0; bi < b; bi++)
    for (int64_t i = 0; i < t; i++)
      for (int hi = 0; hi < h; hi++) {
        const int64_t off = ((bi * t + i) * h + hi) * d;
        delta[(bi * h + hi) * t + i] = dot(dout + off, o + off, d);
      }
}

// FlashAttention-2's backward (Algorithm 2) with P recomputed from lse:
//   P = exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P (dP - delta), dQ += scale dS K,
//   dK = scale dS^T Q.
// Work is split by (batch, key/value head), so each thread owns the dK, dV rows it writes (zeroed
// first) and the dQ rows of that head group: no atomics, and a fixed summation order.
void lt_cpu_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
                     const float *k, const float *v, const float *lse, const float *delta,
                     const lt_cpu_attn_dims *dims, const lt_attn_spec *spec) {
  const int64_t tq = dims->tq, tk = dims->tk;
  const int hq = dims->hq, hkv = dims->hkv, d = dims->d, group = hq / hkv;
#pragma omp parallel for schedule(dynamic) collapse(2)
  for (int64_t b = 0; b < dims->b; b++)
    for (int kvh = 0; kvh < hkv; kvh++) {
      const lt_cpu_attn_mask mask = lt_cpu_attn_row_mask(spec, b, tq, tk);
      for (int64_t j = 0; j < tk; j++) {
        const int64_t koff = ((b * tk + j) * hkv + kvh) * d;
        memset(dk + koff, 0, sizeof(float) * d), memset(dv + koff, 0, sizeof(float) * d);
      }
      int64_t visited = 0;
      for (int h = kvh * group; h < (kvh + 1) * group; h++)
        for (int64_t i0 = 0; i0 < tq; i0 += TILE_Q) {
          const int64_t ni = tq - i0 < TILE_Q ? tq - i0 : TILE_Q;
          const lt_cpu_tile_range q_range = lt_cpu_tile_range_of(mask.q_pos, mask.q_doc, i0, ni);
          for (int64_t j0 = 0; j0 < tk; j0 += TILE_K) {
            const int64_t nj = tk - j0 < TILE_K ? tk - j0 : TILE_K;
            if (!lt_cpu_tile_may_be_visible(&mask, q_range,
                                            lt_cpu_tile_range_of(mask.k_pos, mask.k_doc, j0, nj)))
              continue;
            visited++;
            for (int64_t r = 0; r < ni; r++) {
              const int64_t i = i0 + r;
              const float l = lse[(b * hq + h) * tq + i];
              if (l == -INFINITY) continue; // sees no key, or a head gated off (head_gates)
              const float dl = delta[(b * hq + h) * tq + i];
              const int64_t qoff = ((b * tq + i) * hq + h) * d;
              for (int64_t c = 0; c < nj; c++) {
                const int64_t j = j0 + c;
                if (!lt_cpu_attn_visible(&mask, i, j)) continue;
                const int64_t koff = ((b * tk + j) * hkv + kvh) * d;
                float p = expf(spec->scale * dot(q + qoff, k + koff, d) - l);
                float dp = dot(dout + qoff, v + koff, d);
                float ds = p * (dp - dl) * spec->scale;
                for (int x = 0; x < d; x++) {
                  dv[koff + x] += p * dout[qoff + x];
                  dq[qoff + x] += ds * k[koff + x];
                  dk[koff + x] += ds * q[qoff + x];
                }
              }
            }
          }
        }
      if (spec->tiles_visited) {
#pragma omp atomic
        *spec->tiles_visited += visited;
      }
    }
}
