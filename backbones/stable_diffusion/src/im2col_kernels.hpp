#pragma once
// The unfolding (im2col) of im2col_conv2d's deep, small images, where a loop per image row costs
// more than the copy: one masked load and store per row. Like the other AVX-512 kernels it lives in
// a translation unit of its own compiled with -mavx512f and free of ATen and of the standard
// library's inline templates; its callers call it only after checking the CPU.
#include <cstdint>

namespace dedpo::sd::avx512 {

// The widest image row unfold_plane takes: one vector of floats.
constexpr int64_t kUnfoldMaxWidth = 16;

// One channel's [height, width] plane (width ≤ kUnfoldMaxWidth), unfolded for a stride-1 k×k
// window that keeps the image's size (padding (k − 1) / 2): row i·k + j of `out` (rows `row_stride`
// floats apart) gets the height·width values the window's offset (i, j) reads, 0 on the padding.
// `scratch` holds (height + k − 1)·(width + k − 1) floats (the zero-padded plane).
void unfold_plane(const float* plane, int64_t height, int64_t width, int64_t kernel, float* out, int64_t row_stride,
                  float* scratch);

}  // namespace dedpo::sd::avx512
