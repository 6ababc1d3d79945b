// Compiled with -mavx512f on x86-64 (CMakeLists.txt); see cpu_matmul_kernels.hpp for why nothing here
// may include ATen or instantiate a standard-library template.
#include "cpu_matmul_kernels.hpp"

#if defined(DEDPO_AVX512_KERNELS)

#include <immintrin.h>

namespace dedpo::sd::avx512 {

namespace {

constexpr int kLanes = 16;
constexpr int kVectors = kMatmulPanelColumns / kLanes;

// One R × 64 tile: C = A·B (+ the biases), or C += A·B. The loop over k holds only loads,
// broadcasts and multiply-adds: with a masked load in it GCC kept every accumulator on the stack
// as well.
template <int R>
void tile(const float* a, int64_t a_row_stride, int64_t a_col_stride, int64_t depth, const float* b, int64_t b_stride,
          const MatmulBias& bias, bool accumulate, float* c, int64_t c_stride) {
  __m512 acc[R][kVectors];
  for (int r = 0; r < R; ++r) {
    const __m512 row = bias.per_row ? _mm512_set1_ps(bias.per_row[r]) : _mm512_setzero_ps();
    for (int v = 0; v < kVectors; ++v) {
      const __m512 column = bias.per_column ? _mm512_loadu_ps(bias.per_column + v * kLanes) : _mm512_setzero_ps();
      acc[r][v] = accumulate ? _mm512_loadu_ps(c + r * c_stride + v * kLanes) : _mm512_add_ps(row, column);
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    const float* row = b + k * b_stride;
    __m512 bv[kVectors];
    for (int v = 0; v < kVectors; ++v) bv[v] = _mm512_loadu_ps(row + v * kLanes);
    const float* column = a + k * a_col_stride;
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(column[r * a_row_stride]);
      for (int v = 0; v < kVectors; ++v) acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kVectors; ++v) _mm512_storeu_ps(c + r * c_stride + v * kLanes, acc[r][v]);
  }
}

}  // namespace

void matmul_panel(const float* a, int64_t a_row_stride, int64_t a_col_stride, int64_t rows, int64_t depth,
                  const float* b, int64_t b_stride, MatmulBias bias, bool accumulate, float* c, int64_t c_stride) {
  int64_t i = 0;
  for (; i + kMatmulTileRows <= rows; i += kMatmulTileRows) {
    const MatmulBias tile_bias{bias.per_column, bias.per_row ? bias.per_row + i : nullptr};
    tile<kMatmulTileRows>(a + i * a_row_stride, a_row_stride, a_col_stride, depth, b, b_stride, tile_bias, accumulate,
                          c + i * c_stride, c_stride);
  }
  a += i * a_row_stride;
  c += i * c_stride;
  if (bias.per_row) bias.per_row += i;
  switch (rows - i) {
    case 5: return tile<5>(a, a_row_stride, a_col_stride, depth, b, b_stride, bias, accumulate, c, c_stride);
    case 4: return tile<4>(a, a_row_stride, a_col_stride, depth, b, b_stride, bias, accumulate, c, c_stride);
    case 3: return tile<3>(a, a_row_stride, a_col_stride, depth, b, b_stride, bias, accumulate, c, c_stride);
    case 2: return tile<2>(a, a_row_stride, a_col_stride, depth, b, b_stride, bias, accumulate, c, c_stride);
    case 1: return tile<1>(a, a_row_stride, a_col_stride, depth, b, b_stride, bias, accumulate, c, c_stride);
    default: return;
  }
}

}  // namespace dedpo::sd::avx512

#else  // no AVX-512 kernels in this build: cpu_matmul.cpp never calls this

namespace dedpo::sd::avx512 {
void matmul_panel(const float*, int64_t, int64_t, int64_t, int64_t, const float*, int64_t, MatmulBias, bool, float*,
                  int64_t) {}
}  // namespace dedpo::sd::avx512

#endif
