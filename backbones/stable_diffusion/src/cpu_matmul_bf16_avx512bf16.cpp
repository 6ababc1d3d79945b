// Compiled with -mavx512f -mavx512bw -mavx512bf16 on x86-64 (CMakeLists.txt); see
// cpu_matmul_bf16_kernels.hpp for why nothing here may include ATen or instantiate a
// standard-library template.
#include "cpu_matmul_bf16_kernels.hpp"

#if defined(DEDPO_AVX512_BF16_KERNELS)

#include <immintrin.h>

namespace dedpo::sd::avx512 {

namespace {

constexpr int kLanes = 16;
constexpr int kVectors = 4;  // 64 columns
constexpr int kTileRows = 6;

inline __mmask16 lanes_left(int64_t left) {
  return left >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// 16 float32 -> 16 bf16 in the low halves of 32-bit lanes (round to nearest even).
inline __m512i to_bf16_words(__m512 x) {
  return _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
}

// The `m` lanes of 16 elements of a float32 or bf16 row as bf16 in the low halves of 32-bit lanes.
inline __m512i bf16_words(const float* row, __mmask16 m) { return to_bf16_words(_mm512_maskz_loadu_ps(m, row)); }
inline __m512i bf16_words(const uint16_t* row, __mmask16 m) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, row));
}

template <typename T>
void across_rows(const T* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t first_pair, int64_t end_pair,
                 uint32_t* dst, int64_t dst_stride) {
  for (int64_t p = first_pair; p < end_pair; ++p) {
    const T* first = src + 2 * p * src_stride;
    const T* second = 2 * p + 1 < rows ? first + src_stride : nullptr;
    uint32_t* d = dst + p * dst_stride;
    for (int64_t j = 0; j < cols; j += kLanes) {
      const __mmask16 m = lanes_left(cols - j);
      const __m512i low = bf16_words(first + j, m);
      const __m512i high = second ? bf16_words(second + j, m) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(d + j, m, _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
    }
  }
}

// One R × 64 tile into float32 C, or, with c_bf16 given (and no accumulation), rounded to bf16
// into it instead.
template <int R>
void tile(const uint32_t* a, int64_t a_row_stride, int64_t a_pair_stride, int64_t pairs, const uint32_t* b,
          int64_t b_stride, const float* bias, bool accumulate, float* c, uint16_t* c_bf16, int64_t c_stride) {
  __m512 acc[R][kVectors];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kVectors; ++v) {
      acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * c_stride + v * kLanes)
                  : bias     ? _mm512_loadu_ps(bias + v * kLanes)
                             : _mm512_setzero_ps();
    }
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const uint32_t* row = b + p * b_stride;
    __m512bh bv[kVectors];
    for (int v = 0; v < kVectors; ++v) bv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(row + v * kLanes));
    const uint32_t* column = a + p * a_pair_stride;
    for (int r = 0; r < R; ++r) {
      const __m512bh x = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(column[r * a_row_stride])));
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, bv[v]);
    }
  }
  if (c_bf16 != nullptr) {
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < kVectors; ++v) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c_bf16 + r * c_stride + v * kLanes),
                            reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(acc[r][v])));
      }
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kVectors; ++v) _mm512_storeu_ps(c + r * c_stride + v * kLanes, acc[r][v]);
  }
}

}  // namespace

void pack_pairs_along_rows(const float* src, int64_t src_stride, int64_t rows, int64_t cols, uint32_t* dst,
                           int64_t dst_stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * src_stride;
    uint32_t* d = dst + r * dst_stride;
    for (int64_t j = 0; j < cols; j += 2 * kLanes) {
      const __m512 lo = _mm512_maskz_loadu_ps(lanes_left(cols - j), s + j);
      const __m512 hi = cols - j > kLanes ? _mm512_maskz_loadu_ps(lanes_left(cols - j - kLanes), s + j + kLanes)
                                          : _mm512_setzero_ps();
      // Elements j .. j + 31 in order: as 32-bit words, the pairs (j, j + 1), (j + 2, j + 3), ...
      const __m512i words = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
      _mm512_mask_storeu_epi32(d + j / 2, lanes_left((cols - j + 1) / 2), words);
    }
  }
}

void pack_pairs_along_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint32_t* dst,
                           int64_t dst_stride) {
  // Two consecutive bf16 already are a pair (the first in the low half, little-endian): a copy,
  // 32 elements at a time, with a zero after an odd tail.
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* s = src + r * src_stride;
    auto* d = reinterpret_cast<uint16_t*>(dst + r * dst_stride);
    for (int64_t j = 0; j < cols; j += 2 * kLanes) {
      const int64_t left = cols - j;
      const auto m = left >= 2 * kLanes ? static_cast<__mmask32>(0xFFFFFFFFu) : static_cast<__mmask32>((1u << left) - 1u);
      _mm512_mask_storeu_epi16(d + j, m, _mm512_maskz_loadu_epi16(m, s + j));
    }
    if (cols % 2 == 1) d[cols] = 0;
  }
}

void pack_pairs_across_rows(const float* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t first_pair,
                            int64_t end_pair, uint32_t* dst, int64_t dst_stride) {
  across_rows(src, src_stride, rows, cols, first_pair, end_pair, dst, dst_stride);
}

void pack_pairs_across_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t first_pair,
                            int64_t end_pair, uint32_t* dst, int64_t dst_stride) {
  across_rows(src, src_stride, rows, cols, first_pair, end_pair, dst, dst_stride);
}

void matmul_bf16_panel(const uint32_t* a, int64_t a_row_stride, int64_t a_pair_stride, int64_t rows, int64_t pairs,
                       const uint32_t* b, int64_t b_stride, const float* bias, bool accumulate, float* c,
                       uint16_t* c_bf16, int64_t c_stride) {
  int64_t i = 0;
  for (; i + kTileRows <= rows; i += kTileRows) {
    tile<kTileRows>(a + i * a_row_stride, a_row_stride, a_pair_stride, pairs, b, b_stride, bias, accumulate,
                    c ? c + i * c_stride : nullptr, c_bf16 ? c_bf16 + i * c_stride : nullptr, c_stride);
  }
  a += i * a_row_stride;
  if (c) c += i * c_stride;
  if (c_bf16) c_bf16 += i * c_stride;
  switch (rows - i) {
    case 5: return tile<5>(a, a_row_stride, a_pair_stride, pairs, b, b_stride, bias, accumulate, c, c_bf16, c_stride);
    case 4: return tile<4>(a, a_row_stride, a_pair_stride, pairs, b, b_stride, bias, accumulate, c, c_bf16, c_stride);
    case 3: return tile<3>(a, a_row_stride, a_pair_stride, pairs, b, b_stride, bias, accumulate, c, c_bf16, c_stride);
    case 2: return tile<2>(a, a_row_stride, a_pair_stride, pairs, b, b_stride, bias, accumulate, c, c_bf16, c_stride);
    case 1: return tile<1>(a, a_row_stride, a_pair_stride, pairs, b, b_stride, bias, accumulate, c, c_bf16, c_stride);
    default: return;
  }
}

}  // namespace dedpo::sd::avx512

#else  // no AVX512-BF16 kernels in this build: cpu_linear.cpp never calls these

namespace dedpo::sd::avx512 {
void pack_pairs_along_rows(const float*, int64_t, int64_t, int64_t, uint32_t*, int64_t) {}
void pack_pairs_along_rows(const uint16_t*, int64_t, int64_t, int64_t, uint32_t*, int64_t) {}
void pack_pairs_across_rows(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t*, int64_t) {}
void pack_pairs_across_rows(const uint16_t*, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t*, int64_t) {}
void matmul_bf16_panel(const uint32_t*, int64_t, int64_t, int64_t, int64_t, const uint32_t*, int64_t, const float*,
                       bool, float*, uint16_t*, int64_t) {}
}  // namespace dedpo::sd::avx512

#endif
