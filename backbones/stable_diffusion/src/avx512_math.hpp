#pragma once
// Vector math shared by the AVX-512 translation units (small_head_attention_avx512.cpp,
// geglu_avx512.cpp). Include it only from files compiled with -mavx512f: the functions have
// internal linkage, so each of those files keeps its own copy and none reaches other callers.
#include <immintrin.h>

namespace dedpo::sd::avx512 {
namespace {

// exp(x) for x <= 0 (attention's scores minus their maximum or their log-sum-exp, GEGLU's
// -g²/2): x = n·ln2 + r with |r| <= ln2/2, e^r by a polynomial (relative error below 2e-7, float's
// own rounding), 2^n applied exactly by scalef. Below e^-87.3 (float's normal
// range) the result is 0 where expf would give a subnormal, a difference below 1.2e-38; -inf gives
// 0. A NaN stays NaN, so that a NaN score poisons its row as it does in ATen's kernels (and the
// trainer's non-finite check sees it). The range is one compare that lets a NaN through and a
// zero-masked scalef: this runs once per attention score, next to as few as 16 multiply-adds.
inline __m512 exp_nonpositive(__m512 x) {
  const __mmask16 in_range_or_nan = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 split in two for exactness
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  // e^r ≈ 1 + r·q(r), q of degree 4 fitted for the least largest relative error on [-ln2/2, ln2/2]
  // (Lawson's iteration in double, coefficients rounded to float): 9.1e-8 in exact arithmetic,
  // 1.61e-7 over all of x's range in float, e^0 exactly 1; the degree-6 Taylor polynomial needed
  // one multiply-add more for 2.1e-7.
  __m512 p = _mm512_set1_ps(8.290315978e-3f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.189793393e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666763574e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.999915063e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.999997020e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  // Out of range (-inf included, where r is NaN): 0; a NaN x made n, r and p NaN, and stays.
  return _mm512_maskz_scalef_ps(in_range_or_nan, p, n);
}

}  // namespace
}  // namespace dedpo::sd::avx512
