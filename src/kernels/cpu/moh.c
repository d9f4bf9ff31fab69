// Mixture-of-head routing (Jin et al. 2024, MoH, eqs. 4-6) and the per-head gating of attention
// outputs: the CPU reference. Layouts and formulas are those of kernels.h.
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

// Where each part of a token's router logits lies: [shared | routed | mix].
typedef struct route_layout {
  int n_shared, n_routed, top_k;
  int shared_logits, mix_logits, n_logits; // Ls, Lm, Ls + R + Lm
} route_layout;

static route_layout layout_of(int n_shared, int n_routed, int top_k) {
  route_layout l = {.n_shared = n_shared, .n_routed = n_routed, .top_k = top_k};
  l.shared_logits = n_shared >= 2 ? n_shared : 0;
  l.mix_logits = n_shared >= 1 ? 2 : 0;
  l.n_logits = l.shared_logits + n_routed + l.mix_logits;
  return l;
}

static void softmax(float *p, const float *z, int n) {
  float mx = -INFINITY, sum = 0.0f;
  for (int i = 0; i < n; i++) mx = z[i] > mx ? z[i] : mx;
  for (int i = 0; i < n; i++) sum += p[i] = expf(z[i] - mx);
  for (int i = 0; i < n; i++) p[i] /= sum;
}

// dz = p * (dp - <p, dp>): the softmax's Jacobian (symmetric) applied to dp.
static void softmax_bwd(float *dz, const float *p, const float *dp, int n) {
  float dot = 0.0f;
  for (int i = 0; i < n; i++) dot += p[i] * dp[i];
  for (int i = 0; i < n; i++) dz[i] = p[i] * (dp[i] - dot);
}

// The weights of one token's shared and routed heads, from its saved softmaxes and choice.
typedef struct token_weights {
  float a_shared, a_routed; // 2 a_1 and 2 a_2 of eq. 5 (0 and 1 without shared heads)
  float chosen_mass;        // sum of p over the chosen routed heads
} token_weights;

static token_weights weights_of(const route_layout *l, const float *probs, const int32_t *topk) {
  token_weights w = {.a_shared = 0.0f, .a_routed = 1.0f, .chosen_mass = 0.0f};
  if (l->mix_logits) {
    const float *m = probs + l->shared_logits + l->n_routed;
    w.a_shared = 2.0f * m[0], w.a_routed = 2.0f * m[1];
  }
  for (int k = 0; k < l->top_k; k++) w.chosen_mass += probs[l->shared_logits + topk[k]];
  return w;
}

static float shared_weight(const route_layout *l, const float *probs, int i) {
  return l->shared_logits ? (float)l->n_shared * probs[i] : 1.0f;
}

void lt_cpu_moh_route_fwd(float *gates, float *probs, int32_t *topk, float *load,
                          const float *logits, int64_t n, int n_shared, int n_routed, int top_k) {
  const route_layout l = layout_of(n_shared, n_routed, top_k);
  const int n_heads = n_shared + n_routed;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *z = logits + t * l.n_logits;
    float *pt = probs + t * l.n_logits, *g = gates + t * n_heads;
    int32_t *chosen = topk + t * top_k;
    if (l.shared_logits) softmax(pt, z, l.shared_logits);
    float *p = pt + l.shared_logits;
    softmax(p, z + l.shared_logits, n_routed);
    if (l.mix_logits) softmax(p + n_routed, z + l.shared_logits + n_routed, 2);
    // Top-K by repeated selection: K and R are small (heads), and the order is deterministic.
    bool taken[LT_MOH_MAX_HEADS] = {false};
    for (int k = 0; k < top_k; k++) {
      int best = -1;
      for (int i = 0; i < n_routed; i++)
        if (!taken[i] && (best < 0 || p[i] > p[best])) best = i;
      taken[best] = true;
      chosen[k] = best;
    }
    const token_weights w = weights_of(&l, pt, chosen);
    for (int i = 0; i < n_shared; i++) g[i] = w.a_shared * shared_weight(&l, pt, i);
    for (int i = 0; i < n_routed; i++)
      g[n_shared + i] = taken[i] ? w.a_routed * (float)top_k * p[i] / w.chosen_mass : 0.0f;
  }
  // f_i and P_i, summed over tokens in a fixed order.
  for (int i = 0; i < n_routed; i++) load[i] = load[n_routed + i] = 0.0f;
  for (int64_t t = 0; t < n; t++) {
    for (int k = 0; k < top_k; k++) load[topk[t * top_k + k]] += 1.0f;
    for (int i = 0; i < n_routed; i++)
      load[n_routed + i] += probs[t * l.n_logits + l.shared_logits + i];
  }
  for (int i = 0; i < 2 * n_routed; i++) load[i] /= (float)n;
}

// Backward of the per-token weights (see kernels.h) plus the balance loss's term:
//   mix:     da_j = sum of dg * (weight / a_j) over the heads a_j scales, through softmax(z_mix)
//   shared:  through S * softmax(z_shared)
//   routed:  the chosen weights are K * softmax over the chosen logits (p_i / chosen mass), so
//            dz_i = q_i (K dg'_i - sum_j q_j K dg'_j) over the chosen, q = p / chosen mass
//   balance: d(R sum f_i P_i)/dp_ti = R f_i / N, through softmax(z_routed)
void lt_cpu_moh_route_bwd(float *dlogits, const float *dgates, const float *probs,
                          const int32_t *topk, const float *load, int64_t n, int n_shared,
                          int n_routed, int top_k, float balance_grad) {
  const route_layout l = layout_of(n_shared, n_routed, top_k);
  const int n_heads = n_shared + n_routed;
  const float balance_per_token = balance_grad * (float)n_routed / (float)n;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *pt = probs + t * l.n_logits, *dg = dgates + t * n_heads;
    const float *p = pt + l.shared_logits;
    const int32_t *chosen = topk + t * top_k;
    float *dz = dlogits + t * l.n_logits;
    const token_weights w = weights_of(&l, pt, chosen);
    float d_a_shared = 0.0f, d_a_routed = 0.0f, d_shared[LT_MOH_MAX_HEADS], dq[LT_MOH_MAX_HEADS];
    float q[LT_MOH_MAX_HEADS], dz_chosen[LT_MOH_MAX_HEADS], dp[LT_MOH_MAX_HEADS];
    for (int i = 0; i < n_shared; i++) {
      d_a_shared += dg[i] * shared_weight(&l, pt, i);
      d_shared[i] = w.a_shared * (float)n_shared * dg[i];
    }
    for (int k = 0; k < top_k; k++) {
      const int i = chosen[k];
      q[k] = p[i] / w.chosen_mass;
      d_a_routed += dg[n_shared + i] * (float)top_k * q[k];
      dq[k] = w.a_routed * (float)top_k * dg[n_shared + i];
    }
    memset(dz, 0, sizeof(float) * (size_t)l.n_logits);
    if (l.shared_logits) softmax_bwd(dz, pt, d_shared, l.shared_logits);
    softmax_bwd(dz_chosen, q, dq, top_k);
    for (int i = 0; i < n_routed; i++) dp[i] = balance_per_token * load[i];
    softmax_bwd(dz + l.shared_logits, p, dp, n_routed);
    for (int k = 0; k < top_k; k++) dz[l.shared_logits + chosen[k]] += dz_chosen[k];
    if (l.mix_logits) {
      const float da[2] = {2.0f * d_a_shared, 2.0f * d_a_routed};
      softmax_bwd(dz + l.shared_logits + n_routed, p + n_routed, da, 2);
    }
  }
}

void lt_cpu_head_gate_fwd(float *out, const float *x, const float *gates, int64_t n, int h, int d) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * h; r++)
    for (int i = 0; i < d; i++) out[r * d + i] = gates[r] * x[r * d + i];
}

void lt_cpu_head_gate_bwd(float *dx, float *dgates, const float *dout, const float *x,
                          const float *gates, int64_t n, int h, int d) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n * h; r++) {
    float dot = 0.0f;
    for (int i = 0; i < d; i++) {
      dx[r * d + i] = gates[r] * dout[r * d + i];
      dot += dout[r * d + i] * x[r * d + i];
    }
    dgates[r] = dot;
  }
}

void lt_cpu_head_gate_bwd_delta(float *d_o, float *dgates, float *delta, const float *d_gated,
                                const float *o, const float *gates, int64_t b, int64_t t, int h,
                                int d) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < b * t * h; r++) {
    float s = 0.0f;
    for (int i = 0; i < d; i++) {
      d_o[r * d + i] = gates[r] * d_gated[r * d + i];
      s += d_gated[r * d + i] * o[r * d + i];
    }
    dgates[r] = s;
    // Row r is token n = r / h of batch row n / t, head r % h; delta is (B, H, T).
    const int64_t n = r / h, bi = n / t, ti = n % t;
    delta[(bi * h + r % h) * t + ti] = gates[r] * s;
  }
}
