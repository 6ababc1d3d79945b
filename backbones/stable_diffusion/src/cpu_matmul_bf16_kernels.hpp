#pragma once
// The AVX512-BF16 kernels behind cpu_linear's bfloat16 path: packing float32 or bfloat16 matrices
// into bf16 pairs, and a 6 × 64 register tile of VDPBF16PS (two products per float32 lane). Like
// the other AVX-512 kernels they live in a translation unit of their own, compiled with
// -mavx512f -mavx512bw -mavx512bf16 and free of ATen and of the standard library's inline
// templates; cpu_linear.cpp calls them only after checking the CPU (cpu_features().avx512_bf16).
#include <cstdint>

namespace dedpo::sd::avx512 {

// A bf16 pair in 32 bits: the first element in the low half, as VDPBF16PS reads it. Conversions
// from float32 round to nearest even, as ATen's.

// dst[r][p] = (src[r][2p], src[r][2p + 1]) for p < ceil(cols / 2), the missing element of an odd
// tail 0: pairs along a row. src rows `src_stride` elements apart, dst rows `dst_stride` words.
void pack_pairs_along_rows(const float* src, int64_t src_stride, int64_t rows, int64_t cols, uint32_t* dst,
                           int64_t dst_stride);
void pack_pairs_along_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, uint32_t* dst,
                           int64_t dst_stride);

// dst[p][j] = (src[2p][j], src[2p + 1][j]) for the pairs [first_pair, end_pair) of rows, the missing
// row of an odd count 0: pairs across two rows. j < cols.
void pack_pairs_across_rows(const float* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t first_pair,
                            int64_t end_pair, uint32_t* dst, int64_t dst_stride);
void pack_pairs_across_rows(const uint16_t* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t first_pair,
                            int64_t end_pair, uint32_t* dst, int64_t dst_stride);

// For the `rows` × 64 block of float32 C at `c` (rows `c_stride` apart): C = bias + A·B, or
// C += A·B when `accumulate`; or, with `c` null, bias + A·B rounded to bf16 into `c_bf16` (rows
// `c_stride` elements apart; not with `accumulate`). A's pair (i, p) at
// a[i·a_row_stride + p·a_pair_stride]; B's pair (p, j) at b[p·b_stride + j], all 64 columns
// present; bias: 64 floats or null.
void matmul_bf16_panel(const uint32_t* a, int64_t a_row_stride, int64_t a_pair_stride, int64_t rows, int64_t pairs,
                       const uint32_t* b, int64_t b_stride, const float* bias, bool accumulate, float* c,
                       uint16_t* c_bf16, int64_t c_stride);

}  // namespace dedpo::sd::avx512
