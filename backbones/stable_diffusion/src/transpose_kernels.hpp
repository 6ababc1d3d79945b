#pragma once
// A float transpose in 16 × 16 tiles: the attention kernels pack keys and values with it,
// cpu_matmul packs transposed weights. Like the other AVX-512 kernels it lives in a translation
// unit of its own compiled with -mavx512f and free of ATen and of the standard library's inline
// templates; its callers call it only after checking the CPU.
#include <cstdint>

namespace dedpo::sd::avx512 {

// dst[c][r] = src[r][c] for every row r < rows and the columns [first_col, end_col): src rows are
// `src_stride` floats apart, dst rows `dst_stride`.
void transpose(const float* src, int64_t src_stride, int64_t rows, int64_t first_col, int64_t end_col, float* dst,
               int64_t dst_stride);

}  // namespace dedpo::sd::avx512
