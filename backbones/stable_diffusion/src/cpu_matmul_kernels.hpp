#pragma once
// The AVX-512 kernel behind cpu_matmul.hpp. Like the attention, GEGLU and transpose kernels it lives in
// a translation unit of its own compiled with -mavx512f and free of ATen and of the standard
// library's inline templates; cpu_matmul.cpp calls it only after checking the CPU.
#include <cstdint>

namespace dedpo::sd::avx512 {

// A call computes a panel of 64 columns of C, in tiles of 6 rows: 24 accumulators; per k four
// loads of B, six broadcasts of A, 24 multiply-adds.
constexpr int64_t kMatmulPanelColumns = 64;
constexpr int kMatmulTileRows = 6;

// What C starts from before A·B is added (each null: none): a value per column (64 floats) and a
// value per row (`rows` floats).
struct MatmulBias {
  const float* per_column = nullptr;
  const float* per_row = nullptr;
};

// For the `rows` × 64 block of C at `c` (rows `c_stride` apart): C = bias + A·B, or C += A·B when
// `accumulate` (then bias is unused). A is `rows` × `depth`, element (i, k) at
// a[i·a_row_stride + k·a_col_stride], any layout; B is `depth` × 64, row-major with rows `b_stride`
// floats apart. All 64 columns are read and written: the caller gives a panel narrower than that a
// padded B, bias and C of its own.
void matmul_panel(const float* a, int64_t a_row_stride, int64_t a_col_stride, int64_t rows, int64_t depth,
                  const float* b, int64_t b_stride, MatmulBias bias, bool accumulate, float* c, int64_t c_stride);

}  // namespace dedpo::sd::avx512
