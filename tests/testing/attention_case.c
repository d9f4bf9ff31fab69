#include "attention_case.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

void lt_test_attn_case_make(lt_test_attn_case *c, int64_t B, int64_t Tq, int64_t Tk, int hq,
                            int hkv, int d, int doc_len, bool restart, uint64_t seed) {
  *c = (lt_test_attn_case){.B = B, .Tq = Tq, .Tk = Tk, .hq = hq, .hkv = hkv, .d = d};
  c->q = malloc(sizeof(float) * B * Tq * hq * d);
  c->k = malloc(sizeof(float) * B * Tk * hkv * d);
  c->v = malloc(sizeof(float) * B * Tk * hkv * d);
  c->o = calloc(B * Tq * hq * d, sizeof(float));
  c->lse = calloc(B * hq * Tq, sizeof(float));
  lt_test_fill_normal(c->q, B * Tq * hq * d, seed, 1.0f);
  lt_test_fill_normal(c->k, B * Tk * hkv * d, seed + 1, 1.0f);
  lt_test_fill_normal(c->v, B * Tk * hkv * d, seed + 2, 1.0f);
  c->q_pos = malloc(sizeof(int32_t) * B * Tq);
  c->k_pos = malloc(sizeof(int32_t) * B * Tk);
  c->q_doc = malloc(sizeof(int32_t) * B * Tq);
  c->k_doc = malloc(sizeof(int32_t) * B * Tk);
  const int doc_tokens = doc_len ? doc_len : 19;
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = 0; j < Tk; j++) {
      int32_t doc = (int32_t)(j / doc_tokens);
      int32_t pos = restart ? (int32_t)(j % doc_tokens) : (int32_t)j;
      c->k_pos[b * Tk + j] = pos, c->k_doc[b * Tk + j] = doc;
      if (j >= Tk - Tq)
        c->q_pos[b * Tq + j - (Tk - Tq)] = pos, c->q_doc[b * Tq + j - (Tk - Tq)] = doc;
    }
  c->spec = (lt_attn_spec){.scale = 1.0f / sqrtf((float)d),
                           .causal = true,
                           .q_pos = lt_view2(c->q_pos, LT_I32, LT_CPU, B, Tq),
                           .k_pos = lt_view2(c->k_pos, LT_I32, LT_CPU, B, Tk)};
  if (doc_len) {
    c->spec.q_doc = lt_view2(c->q_doc, LT_I32, LT_CPU, B, Tq);
    c->spec.k_doc = lt_view2(c->k_doc, LT_I32, LT_CPU, B, Tk);
  }
}

void lt_test_attn_case_free(lt_test_attn_case *c) {
  free(c->q), free(c->k), free(c->v), free(c->o), free(c->lse);
  free(c->q_pos), free(c->k_pos), free(c->q_doc), free(c->k_doc);
}

void lt_test_attn_key_chunk(const lt_test_attn_case *full, lt_test_attn_case *part, int64_t start,
                            int64_t n) {
  lt_test_attn_case_make(part, full->B, full->Tq, n, full->hq, full->hkv, full->d, 0, false, 1);
  memcpy(part->q, full->q, sizeof(float) * full->B * full->Tq * full->hq * full->d);
  memcpy(part->q_pos, full->q_pos, sizeof(int32_t) * full->B * full->Tq);
  memcpy(part->q_doc, full->q_doc, sizeof(int32_t) * full->B * full->Tq);
  const int64_t row = full->hkv * full->d;
  for (int64_t b = 0; b < full->B; b++) {
    memcpy(part->k + b * n * row, full->k + (b * full->Tk + start) * row, sizeof(float) * n * row);
    memcpy(part->v + b * n * row, full->v + (b * full->Tk + start) * row, sizeof(float) * n * row);
    memcpy(part->k_pos + b * n, full->k_pos + b * full->Tk + start, sizeof(int32_t) * n);
    memcpy(part->k_doc + b * n, full->k_doc + b * full->Tk + start, sizeof(int32_t) * n);
  }
  lt_attn_spec spec = full->spec;
  spec.q_pos = lt_view2(part->q_pos, LT_I32, LT_CPU, full->B, full->Tq);
  spec.k_pos = lt_view2(part->k_pos, LT_I32, LT_CPU, full->B, n);
  if (full->spec.q_doc.data) {
    spec.q_doc = lt_view2(part->q_doc, LT_I32, LT_CPU, full->B, full->Tq);
    spec.k_doc = lt_view2(part->k_doc, LT_I32, LT_CPU, full->B, n);
  }
  part->spec = spec;
}

lt_tensor lt_test_attn_q(const lt_test_attn_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->Tq, c->hq, c->d);
}

lt_tensor lt_test_attn_kv(const lt_test_attn_case *c, float *x) {
  return lt_view4(x, LT_F32, LT_CPU, c->B, c->Tk, c->hkv, c->d);
}

lt_tensor lt_test_attn_lse(const lt_test_attn_case *c, float *x) {
  return lt_view3(x, LT_F32, LT_CPU, c->B, c->hq, c->Tq);
}
