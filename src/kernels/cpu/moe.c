// Mixture-of-experts kernels on the CPU: the router's softmax and top-k, the dispatch plan, the
// gather into expert order and the weighted combine back, and the per-expert GEMMs. Every loop
// that sums across tokens runs serially, so results do not depend on the thread count.
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

static bool already_chosen(const int32_t *chosen, int count, int expert) {
  for (int s = 0; s < count; s++)
    if (chosen[s] == expert) return true;
  return false;
}

// logits, probs: (n, e); gate, expert: (n, k); lse: (n); prob_sum: (e)
void lt_cpu_moe_route(float *gate, int32_t *expert, float *probs, float *lse, float *prob_sum,
                      const float *logits, int64_t n, int e, int k, bool renormalize) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *l = logits + t * e;
    float *p = probs + t * e, *g = gate + t * k;
    int32_t *chosen = expert + t * k;
    float max = -INFINITY;
    for (int j = 0; j < e; j++) max = fmaxf(max, l[j]);
    double sum = 0.0;
    for (int j = 0; j < e; j++) sum += (p[j] = expf(l[j] - max));
    for (int j = 0; j < e; j++) p[j] = (float)(p[j] / sum);
    lse[t] = max + (float)log(sum);
    // Top-k by repeated selection: k is small, and a strict > keeps ties at the lower index.
    double kept = 0.0;
    for (int s = 0; s < k; s++) {
      int best = -1;
      for (int j = 0; j < e; j++)
        if (!already_chosen(chosen, s, j) && (best < 0 || p[j] > p[best])) best = j;
      chosen[s] = best;
      g[s] = p[best];
      kept += p[best];
    }
    if (renormalize)
      for (int s = 0; s < k; s++) g[s] = (float)(g[s] / kept);
  }
  for (int j = 0; j < e; j++) {
    double sum = 0.0;
    for (int64_t t = 0; t < n; t++) sum += probs[t * e + j];
    prob_sum[j] = (float)sum;
  }
}

// Per token, with p = probs[t] and the chosen set S:
//   renormalized gates g_s = p_s / sum_S p:  dlogit_s = g_s (dgate_s - sum_S g dgate), s in S;
//   plain gates g_s = p_s:                   dlogit_j = p_j (dp_j - sum_S p dgate), dp = dgate on
//   S; load balance, linear in p:               dlogit_j += p_j (balance_j - sum_i p_i balance_i);
//   z-loss on lse:                           dlogit_j += z_scale lse p_j.
void lt_cpu_moe_route_bwd(float *dlogits, const float *dgate, const float *gate,
                          const int32_t *expert, const float *probs, const float *lse,
                          const float *balance, float z_scale, int64_t n, int e, int k,
                          bool renormalize) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *p = probs + t * e, *g = gate + t * k, *dg = dgate + t * k;
    const int32_t *chosen = expert + t * k;
    float *dl = dlogits + t * e;
    double gate_dot = 0.0, balance_dot = 0.0;
    for (int s = 0; s < k; s++) gate_dot += (double)g[s] * dg[s];
    for (int j = 0; j < e; j++) balance_dot += (double)p[j] * balance[j];
    const double shift = renormalize ? 0.0 : gate_dot;
    for (int j = 0; j < e; j++)
      dl[j] = (float)(p[j] * (balance[j] - balance_dot + z_scale * lse[t] - shift));
    for (int s = 0; s < k; s++) {
      const double routed = renormalize ? g[s] * (dg[s] - gate_dot) : (double)p[chosen[s]] * dg[s];
      dl[chosen[s]] += (float)routed;
    }
  }
}

// expert, slot_row: (n, k); row_token: (n*k); offsets: (e+1); counts: (e)
void lt_cpu_moe_dispatch_plan(int32_t *slot_row, int32_t *row_token, int32_t *offsets,
                              int32_t *counts, const int32_t *expert, int64_t n, int e, int k,
                              int64_t capacity) {
  memset(counts, 0, (size_t)e * sizeof *counts);
  // Admission in priority order (rank, then token); slot_row holds 0 (kept) or -1 for now.
  for (int s = 0; s < k; s++)
    for (int64_t t = 0; t < n; t++) {
      const int32_t x = expert[t * k + s];
      counts[x]++;
      slot_row[t * k + s] = capacity <= 0 || counts[x] <= capacity ? 0 : -1;
    }
  // A counting sort: offsets[x + 1] first serves as expert x's cursor, starting at its first
  // row, and ends at its last row + 1, which is where it belongs.
  offsets[0] = 0;
  int32_t start = 0;
  for (int x = 0; x < e; x++) {
    offsets[x + 1] = start;
    start += capacity <= 0 || counts[x] < capacity ? counts[x] : (int32_t)capacity;
  }
  // Rows in token order within each expert (an expert appears once per token).
  for (int64_t t = 0; t < n; t++)
    for (int s = 0; s < k; s++) {
      if (slot_row[t * k + s] < 0) continue;
      const int32_t row = offsets[expert[t * k + s] + 1]++;
      slot_row[t * k + s] = row;
      row_token[row] = (int32_t)t;
    }
  for (int64_t r = offsets[e]; r < n * k; r++) row_token[r] = -1;
}

// x: (n, d) read at row_token; xe: (rows, d)
void lt_cpu_moe_dispatch(float *xe, const float *x, const int32_t *row_token, int64_t rows,
                         int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++)
    memcpy(xe + r * d, x + (int64_t)row_token[r] * d, (size_t)d * sizeof *xe);
}

// dx: (n, d); dxe: rows named by slot_row (n, k)
void lt_cpu_moe_dispatch_bwd(float *dx, const float *dxe, const int32_t *slot_row, int64_t n, int k,
                             int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    float *out = dx + t * d;
    memset(out, 0, (size_t)d * sizeof *out);
    for (int s = 0; s < k; s++) {
      const int32_t row = slot_row[t * k + s];
      if (row < 0) continue;
      for (int64_t i = 0; i < d; i++) out[i] += dxe[(int64_t)row * d + i];
    }
  }
}

// out: (n, d); ye: rows named by slot_row (n, k); gate: (n, k)
void lt_cpu_moe_combine(float *out, const float *ye, const float *gate, const int32_t *slot_row,
                        int64_t n, int k, int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    float *o = out + t * d;
    memset(o, 0, (size_t)d * sizeof *o);
    for (int s = 0; s < k; s++) {
      const int32_t row = slot_row[t * k + s];
      if (row < 0) continue;
      const float w = gate[t * k + s];
      for (int64_t i = 0; i < d; i++) o[i] += w * ye[(int64_t)row * d + i];
    }
  }
}

// dye: rows named by slot_row (rows of dropped choices do not exist); dgate: (n, k)
void lt_cpu_moe_combine_bwd(float *dye, float *dgate, const float *dout, const float *ye,
                            const float *gate, const int32_t *slot_row, int64_t n, int k,
                            int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *g = dout + t * d;
    for (int s = 0; s < k; s++) {
      const int32_t row = slot_row[t * k + s];
      if (row < 0) {
        dgate[t * k + s] = 0.0f;
        continue;
      }
      const float w = gate[t * k + s];
      float *dy = dye + (int64_t)row * d;
      const float *y = ye + (int64_t)row * d;
      double dot = 0.0;
      for (int64_t i = 0; i < d; i++) {
        dy[i] = w * g[i];
        dot += (double)g[i] * y[i];
      }
      dgate[t * k + s] = (float)dot;
    }
  }
}

// a: (R, k); b: (groups, n, k) or (groups, k, n); c: (R, n)
void lt_cpu_grouped_matmul(float *c, const float *a, const float *b, bool trans_b,
                           const int64_t *rows, int groups, int64_t n, int64_t k) {
  for (int g = 0; g < groups; g++) {
    const int64_t m = rows[g + 1] - rows[g];
    if (m == 0) continue;
    lt_cpu_matmul(c + rows[g] * n, a + rows[g] * k, false, b + g * n * k, trans_b, m, n, k, 1.0f,
                  0.0f);
  }
}

// a: (R, m); b: (R, n); c: (groups, m, n) +=
void lt_cpu_grouped_matmul_wgrad(float *c, const float *a, const float *b, const int64_t *rows,
                                 int groups, int64_t m, int64_t n) {
  for (int g = 0; g < groups; g++) {
    const int64_t count = rows[g + 1] - rows[g];
    if (count == 0) continue;
    lt_cpu_matmul(c + g * m * n, a + rows[g] * m, true, b + rows[g] * n, false, m, n, count, 1.0f,
                  1.0f);
  }
}
