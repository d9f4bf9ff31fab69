// Rotary position embedding (Su et al. 2021, RoFormer eq. 34) in the "split halves" layout of
// Hugging Face Llama: dimension i rotates with dimension i + D/2 by angle pos * theta^(-2i/D).
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

// Angles are computed in fp32 the way Hugging Face does (inv_freq in fp32, then pos * inv_freq in
// fp32), so imported models see the same rotations.
static void rotate(float *out, const float *in, int32_t pos, int d, float theta, float sign) {
  int half = d / 2;
  for (int i = 0; i < half; i++) {
    float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)d);
    float angle = (float)pos * inv_freq;
    float c = cosf(angle), s = sign * sinf(angle);
    float x0 = in[i], x1 = in[i + half];
    out[i] = x0 * c - x1 * s;
    out[i + half] = x1 * c + x0 * s;
  }
}

void lt_cpu_rope_qkv_fwd(float *q, float *k, float *v, const float *qkv, const int32_t *pos,
                         int64_t n, int hq, int hkv, int d, float theta) {
  int64_t width = (int64_t)(hq + (v ? 2 : 1) * hkv) * d;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    const float *row = qkv + t * width;
    for (int h = 0; h < hq; h++) rotate(q + (t * hq + h) * d, row + h * d, pos[t], d, theta, 1.0f);
    for (int h = 0; h < hkv; h++)
      rotate(k + (t * hkv + h) * d, row + (int64_t)(hq + h) * d, pos[t], d, theta, 1.0f);
    if (v) memcpy(v + t * hkv * d, row + (int64_t)(hq + hkv) * d, (size_t)hkv * d * 4);
  }
}

// The rotation is orthogonal, so its transpose is the rotation by the negative angle.
void lt_cpu_rope_qkv_bwd(float *dqkv, const float *dq, const float *dk, const float *dv,
                         const int32_t *pos, int64_t n, int hq, int hkv, int d, float theta) {
  int64_t width = (int64_t)(hq + 2 * hkv) * d;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; t++) {
    float *row = dqkv + t * width;
    for (int h = 0; h < hq; h++)
      rotate(row + h * d, dq + (t * hq + h) * d, pos[t], d, theta, -1.0f);
    for (int h = 0; h < hkv; h++)
      rotate(row + (int64_t)(hq + h) * d, dk + (t * hkv + h) * d, pos[t], d, theta, -1.0f);
    memcpy(row + (int64_t)(hq + hkv) * d, dv + t * hkv * d, (size_t)hkv * d * 4);
  }
}
