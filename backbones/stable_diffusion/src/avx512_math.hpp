#pragma once
// Vector math shared by the AVX-512 translation units (small_head_attention_avx512.cpp,
// geglu_avx512.cpp). Include it only from files compiled with -mavx512f: the functions have
// internal linkage, so each of those files keeps its own copy and none reaches other callers.
#include <immintrin.h>

namespace dedpo::sd::avx512 {
namespace {

// exp(x) for x <= 0 (attention's scores minus their maximum or their log-sum-exp, GEGLU's
// -g²/2): x = n·ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (relative error
// below 2e-7, float's own rounding), 2^n applied exactly by scalef. Below e^-87.3 (float's normal
// range) the result is 0 where expf would give a subnormal, a difference below 1.2e-38; a NaN
// stays NaN, so that a NaN score poisons its row as it does in ATen's kernels (and the trainer's
// non-finite check sees it).
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lowest = _mm512_set1_ps(-87.33654f);
  const __mmask16 in_range = _mm512_cmp_ps_mask(x, lowest, _CMP_GE_OQ);
  const __mmask16 not_a_number = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512 nan_lanes = x;
  x = _mm512_max_ps(x, lowest);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 split in two for exactness
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(in_range, _mm512_scalef_ps(p, n)), not_a_number, nan_lanes);
}

}  // namespace
}  // namespace dedpo::sd::avx512
