// The elementwise ends of linear attention: the feature map phi on the way in (with the ones
// column that turns the attention into its own normaliser), and on the way out the
// normalisation and the output gate.
#include <math.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/linear_maps.h"

void lt_cpu_linear_qkv_fwd(float *q, float *k, float *v, const float *qkv, int64_t n, int hq,
                           int hkv, int d, int e, lt_feature_map map) {
  const int64_t row = (int64_t)(hq + 2 * hkv) * d;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *src = qkv + t * row;
    for (int64_t x = 0; x < (int64_t)hq * d; x++) q[t * hq * d + x] = lt_feature(map, src[x]);
    src += (int64_t)hq * d;
    for (int64_t x = 0; x < (int64_t)hkv * d; x++) k[t * hkv * d + x] = lt_feature(map, src[x]);
    src += (int64_t)hkv * d;
    for (int h = 0; h < hkv; h++) {
      float *vh = v + (t * hkv + h) * e;
      for (int x = 0; x < d; x++) vh[x] = src[h * d + x];
      if (e > d) vh[d] = 1.0f;
    }
  }
}

void lt_cpu_linear_qkv_bwd(float *dqkv, const float *dq, const float *dk, const float *dv,
                           const float *qkv, int64_t n, int hq, int hkv, int d, int e,
                           lt_feature_map map) {
  const int64_t row = (int64_t)(hq + 2 * hkv) * d;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *src = qkv + t * row;
    float *dst = dqkv + t * row;
    for (int64_t x = 0; x < (int64_t)hq * d; x++)
      dst[x] = dq[t * hq * d + x] * lt_feature_grad(map, src[x]);
    src += (int64_t)hq * d, dst += (int64_t)hq * d;
    for (int64_t x = 0; x < (int64_t)hkv * d; x++)
      dst[x] = dk[t * hkv * d + x] * lt_feature_grad(map, src[x]);
    dst += (int64_t)hkv * d;
    for (int h = 0; h < hkv; h++)
      for (int x = 0; x < d; x++) dst[h * d + x] = dv[(t * hkv + h) * e + x];
  }
}

// The normalised output of token t, head h, column x (x < d), from o and the statistics.
static float normalised(const float *ot, int64_t h, int x, int d, int e, lt_linear_norm norm,
                        float rstd, float eps) {
  const float *oh = ot + h * e;
  switch (norm) {
  case LT_LINEAR_NORM_DENOMINATOR:
    return oh[x] / (oh[d] + eps);
  case LT_LINEAR_NORM_RMS:
    return oh[x] * rstd;
  case LT_LINEAR_NORM_NONE:
    break;
  }
  return oh[x];
}

// The sum of squares of one token's row of o (RMS normalisation: e == d, so the row is flat).
static double row_sum_squares(const float *ot, int64_t width) {
  double ss = 0.0;
  for (int64_t x = 0; x < width; x++) ss += (double)ot[x] * ot[x];
  return ss;
}

void lt_cpu_linear_out_fwd(float *y, float *rstd, const float *o, const float *u, int64_t n, int h,
                           int d, int e, lt_linear_norm norm, lt_gate gate, float eps,
                           const float *row_stat) {
  const int64_t width = (int64_t)h * d;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *ot = o + t * h * e;
    float r = 0.0f;
    if (norm == LT_LINEAR_NORM_RMS) { // simple RMSNorm: no gain (TransNormerLLM's SRMSNorm)
      const float mean_square =
          row_stat ? row_stat[t] : (float)(row_sum_squares(ot, width) / (double)width);
      r = rstd[t] = 1.0f / sqrtf(mean_square + eps);
    }
    for (int64_t hh = 0; hh < h; hh++)
      for (int x = 0; x < d; x++) {
        const int64_t at = t * width + hh * d + x;
        const float g = gate == LT_GATE_NONE ? 1.0f : lt_gate_value(gate, u[at]);
        y[at] = normalised(ot, hh, x, d, e, norm, r, eps) * g;
      }
  }
}

void lt_cpu_linear_out_rms_stat(float *row_stat, const float *o, int64_t n, int64_t width,
                                int64_t row_width) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++)
    row_stat[t] = (float)(row_sum_squares(o + t * width, width) / (double)row_width);
}

// With a = norm(o) and y = a g(u): da = dy g(u), du = dy a g'(u); then through the norm:
//   denominator a_x = o_x / (o_d + eps): do_x = da_x / (o_d + eps), do_d = -sum_x da_x a_x / (o_d +
//   eps) rms a = o r: do = r (da - a mean(da a))
void lt_cpu_linear_out_bwd(float *d_o, float *du, const float *dy, const float *o, const float *u,
                           const float *rstd, int64_t n, int h, int d, int e, lt_linear_norm norm,
                           lt_gate gate, float eps, const float *row_stat) {
  const int64_t width = (int64_t)h * d;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *ot = o + t * h * e;
    float *grad = d_o + t * h * e;
    const float r = norm == LT_LINEAR_NORM_RMS ? rstd[t] : 0.0f;
    double mean = 0.0;
    for (int64_t hh = 0; hh < h; hh++) {
      double den_grad = 0.0;
      for (int x = 0; x < d; x++) {
        const int64_t at = t * width + hh * d + x;
        const float a = normalised(ot, hh, x, d, e, norm, r, eps);
        float da = dy[at];
        if (gate != LT_GATE_NONE) {
          du[at] = dy[at] * a * lt_gate_grad(gate, u[at]);
          da *= lt_gate_value(gate, u[at]);
        }
        grad[hh * e + x] = da; // d/da for now; the norm's chain rule follows
        den_grad += (double)da * a;
      }
      if (norm == LT_LINEAR_NORM_DENOMINATOR) {
        const float inv = 1.0f / (ot[hh * e + d] + eps);
        for (int x = 0; x < d; x++) grad[hh * e + x] *= inv;
        grad[hh * e + d] = (float)(-den_grad * inv);
      }
      mean += den_grad;
    }
    if (norm == LT_LINEAR_NORM_RMS) {
      const float m = row_stat ? row_stat[t] : (float)(mean / (double)width);
      for (int64_t x = 0; x < width; x++) grad[x] = r * (grad[x] - ot[x] * r * m);
    }
  }
}

void lt_cpu_linear_out_rms_grad_stat(float *row_stat, const float *dy, const float *o,
                                     const float *u, const float *rstd, int64_t n, int64_t width,
                                     int64_t row_width, lt_gate gate) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    double dot = 0.0; // sum of da * a over this rank's columns, a = o r, da = dy g(u)
    for (int64_t x = 0; x < width; x++) {
      const int64_t at = t * width + x;
      const float g = gate == LT_GATE_NONE ? 1.0f : lt_gate_value(gate, u[at]);
      dot += (double)(dy[at] * g) * (o[at] * rstd[t]);
    }
    row_stat[t] = (float)(dot / (double)row_width);
  }
}
