// Compiled with -mavx512f on x86-64 (CMakeLists.txt); see transpose_kernels.hpp for why nothing
// here may include ATen or instantiate a standard-library template.
#include "transpose_kernels.hpp"

#if defined(DEDPO_AVX512_KERNELS)

#include <immintrin.h>

namespace dedpo::sd::avx512 {

namespace {

constexpr int64_t kTile = 16;

// One 16×16 tile in registers: 32-bit, then 64-bit interleaves within 128-bit lanes, then two
// rounds of 128-bit lane shuffles.
inline void transpose_tile(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 r[kTile], t[kTile];
  for (int i = 0; i < kTile; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
  for (int i = 0; i < kTile; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4j + k]: in each 128-bit lane L, column 4L + k of rows 4j..4j+3.
  for (int j = 0; j < kTile; j += 4) {
    const __m512d a = _mm512_castps_pd(t[j]), b = _mm512_castps_pd(t[j + 1]);
    const __m512d c = _mm512_castps_pd(t[j + 2]), d = _mm512_castps_pd(t[j + 3]);
    r[j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int k = 0; k < 4; ++k) {
    const __m512 s0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44), s1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xEE);
    const __m512 s2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44), s3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xEE);
    _mm512_storeu_ps(dst + (0 + k) * dst_stride, _mm512_shuffle_f32x4(s0, s2, 0x88));
    _mm512_storeu_ps(dst + (4 + k) * dst_stride, _mm512_shuffle_f32x4(s0, s2, 0xDD));
    _mm512_storeu_ps(dst + (8 + k) * dst_stride, _mm512_shuffle_f32x4(s1, s3, 0x88));
    _mm512_storeu_ps(dst + (12 + k) * dst_stride, _mm512_shuffle_f32x4(s1, s3, 0xDD));
  }
}

}  // namespace

void transpose(const float* src, int64_t src_stride, int64_t rows, int64_t first_col, int64_t end_col, float* dst,
               int64_t dst_stride) {
  const int64_t full_rows = rows - rows % kTile;
  int64_t c = first_col;
  for (; c + kTile <= end_col; c += kTile) {
    for (int64_t r = 0; r < full_rows; r += kTile) transpose_tile(src + r * src_stride + c, src_stride, dst + c * dst_stride + r, dst_stride);
    for (int64_t r = full_rows; r < rows; ++r) {
      for (int64_t k = c; k < c + kTile; ++k) dst[k * dst_stride + r] = src[r * src_stride + k];
    }
  }
  for (; c < end_col; ++c) {  // the last columns, fewer than a tile
    for (int64_t r = 0; r < rows; ++r) dst[c * dst_stride + r] = src[r * src_stride + c];
  }
}

}  // namespace dedpo::sd::avx512

#else  // no AVX-512 kernel in this build: its callers never call it

namespace dedpo::sd::avx512 {
void transpose(const float*, int64_t, int64_t, int64_t, int64_t, float*, int64_t) {}
}  // namespace dedpo::sd::avx512

#endif
