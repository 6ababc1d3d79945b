// Compiled with -mavx512f on x86-64 (CMakeLists.txt); see geglu_kernels.hpp for why nothing here
// may include ATen or instantiate a standard-library template.
#include "geglu_kernels.hpp"

#if defined(DEDPO_AVX512_KERNELS)

#include <immintrin.h>

#include "avx512_math.hpp"

namespace dedpo::sd::avx512 {

namespace {

constexpr int64_t kLanes = 16;

// Φ(g), the standard normal CDF, as 0.5·(1 + erf(g/√2)) with erf from Abramowitz and Stegun
// 7.1.26 (absolute error below 1.5e-7, the formula ATen's vectorised erf uses), and
// φ(g)·√(2π) = exp(-g²/2), which that formula computes anyway and the backward pass needs.
struct NormalCdf {
  __m512 cdf;
  __m512 exp_half_square;  // exp(-g²/2)
};

inline NormalCdf normal_cdf(__m512 g) {
  const __m512 abs_x = _mm512_mul_ps(_mm512_abs_ps(g), _mm512_set1_ps(0.70710678118654752f));  // |g|/√2
  const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(abs_x, _mm512_set1_ps(0.3275911f),
                                                                       _mm512_set1_ps(1.0f)));
  __m512 poly = _mm512_set1_ps(1.061405429f);
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = exp_nonpositive(_mm512_mul_ps(_mm512_mul_ps(g, g), _mm512_set1_ps(-0.5f)));
  const __m512 erf_abs = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.0f));  // erf(|g|/√2)
  // erf is odd: 0.5·(1 ± erf(|g|/√2)) by the sign of g (a NaN g gives NaN through e).
  const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 signed_erf = _mm512_mask_sub_ps(erf_abs, negative, _mm512_setzero_ps(), erf_abs);
  return {_mm512_fmadd_ps(signed_erf, _mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f)), e};
}

inline __mmask16 lanes_left(int64_t j, int64_t n) {
  const int64_t left = n - j;
  return left >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

}  // namespace

void geglu_forward(const float* x, int64_t rows, int64_t n, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* value = x + r * 2 * n;
    const float* gate = value + n;
    float* y = out + r * n;
    for (int64_t j = 0; j < n; j += kLanes) {
      const __mmask16 m = lanes_left(j, n);
      const __m512 g = _mm512_maskz_loadu_ps(m, gate + j);
      const __m512 gelu = _mm512_mul_ps(g, normal_cdf(g).cdf);
      _mm512_mask_storeu_ps(y + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, value + j), gelu));
    }
  }
}

void geglu_backward(const float* x, const float* dout, int64_t rows, int64_t n, float* dx) {
  const __m512 inv_sqrt_2pi = _mm512_set1_ps(0.39894228040143268f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* value = x + r * 2 * n;
    const float* gate = value + n;
    const float* dy = dout + r * n;
    float* dvalue = dx + r * 2 * n;
    float* dgate = dvalue + n;
    for (int64_t j = 0; j < n; j += kLanes) {
      const __mmask16 m = lanes_left(j, n);
      const __m512 g = _mm512_maskz_loadu_ps(m, gate + j);
      const __m512 d = _mm512_maskz_loadu_ps(m, dy + j);
      const NormalCdf phi = normal_cdf(g);
      _mm512_mask_storeu_ps(dvalue + j, m, _mm512_mul_ps(d, _mm512_mul_ps(g, phi.cdf)));
      const __m512 slope = _mm512_fmadd_ps(_mm512_mul_ps(g, inv_sqrt_2pi), phi.exp_half_square, phi.cdf);
      _mm512_mask_storeu_ps(dgate + j, m, _mm512_mul_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, value + j)), slope));
    }
  }
}

}  // namespace dedpo::sd::avx512

#else  // no AVX-512 kernels in this build: GEGLU keeps ATen's gelu and product

namespace dedpo::sd::avx512 {
void geglu_forward(const float*, int64_t, int64_t, float*) {}
void geglu_backward(const float*, const float*, int64_t, int64_t, float*) {}
}  // namespace dedpo::sd::avx512

#endif
