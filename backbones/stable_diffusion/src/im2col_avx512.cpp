// Compiled with -mavx512f on x86-64 (CMakeLists.txt); see im2col_kernels.hpp for why nothing here
// may include ATen or instantiate a standard-library template.
#include "im2col_kernels.hpp"

#if defined(DEDPO_AVX512_KERNELS)

#include <immintrin.h>

namespace dedpo::sd::avx512 {

void unfold_plane(const float* plane, int64_t height, int64_t width, int64_t kernel, float* out, int64_t row_stride,
                  float* scratch) {
  const int64_t padding = (kernel - 1) / 2, padded_width = width + 2 * padding;
  const int64_t padded_size = (height + 2 * padding) * padded_width;
  const __mmask16 row_mask = static_cast<__mmask16>((1u << width) - 1u);
  const __m512 zero = _mm512_setzero_ps();
  int64_t n = 0;
  for (; n + 16 <= padded_size; n += 16) _mm512_storeu_ps(scratch + n, zero);
  _mm512_mask_storeu_ps(scratch + n, static_cast<__mmask16>((1u << (padded_size - n)) - 1u), zero);
  for (int64_t r = 0; r < height; ++r) {
    _mm512_mask_storeu_ps(scratch + (r + padding) * padded_width + padding, row_mask,
                          _mm512_maskz_loadu_ps(row_mask, plane + r * width));
  }
  for (int64_t i = 0; i < kernel; ++i) {
    for (int64_t j = 0; j < kernel; ++j) {
      float* row = out + (i * kernel + j) * row_stride;
      const float* source = scratch + i * padded_width + j;
      for (int64_t oh = 0; oh < height; ++oh) {
        _mm512_mask_storeu_ps(row + oh * width, row_mask, _mm512_maskz_loadu_ps(row_mask, source + oh * padded_width));
      }
    }
  }
}

}  // namespace dedpo::sd::avx512

#endif
