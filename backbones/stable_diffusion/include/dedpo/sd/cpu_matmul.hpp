#pragma once
// Float32 matrix products on CPUs with AVX-512, for the shapes of a UNet's linear layers (a few
// hundred rows, 64 to 2,048 columns and depths). The libraries LibTorch carries fall short there on
// AMD CPUs: MKL takes its Zen path at about half of the machine's rate, and oneDNN picks its generic
// jit gemm for these shapes, 150–300 GFLOP/s inside a training step where a plain 6 × 64 register
// tile over unpacked rows reaches 400–500 (an EPYC Zen 5, 2 threads; docs/performance.md).
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

// Whether cpu_matmul runs dedpo_sd's kernel for these operands: a CPU with AVX-512F (and a build that
// holds the kernel), float32 CPU matrices.
bool cpu_matmul_kernel_applies(const at::Tensor& a, const at::Tensor& b);

// a [M, K] · b [K, N] (+ bias [N]) as a new contiguous [M, N] tensor, equal to at::addmm(bias, a, b)
// up to float rounding (the sum over K runs in order, one multiply-add at a time). Both operands
// are read in place at any strides: a transposed view costs nothing on either side, except that b
// must have rows or columns of unit stride (else it is copied). Where cpu_matmul_kernel_applies is
// false this is at::mm or at::addmm. Not differentiable (the linear layers' autograd function
// calls it for all three of their products).
at::Tensor cpu_matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {});

// The same product into `out`, a float32 [M, N] matrix with unit column stride and any row stride
// (a slice of a batch, or of a wider matrix) that overlaps neither operand: out = a·b plus either
// bias, column_bias [N] added to every row, row_bias [M] to every column; or out += a·b when
// `accumulate` (no bias then: passing one is an error, as is an output that overlaps itself or an
// operand). Requires cpu_matmul_kernel_applies(a, b).
void cpu_matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& column_bias,
                    const at::Tensor& row_bias, bool accumulate);

}  // namespace dedpo::sd
