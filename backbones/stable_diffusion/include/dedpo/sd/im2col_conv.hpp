#pragma once
// A square k×k convolution as one matrix product with the unfolded input (im2col), on cpu_matmul.
// oneDNN, ATen's convolution on the CPU, reorders the float32 weight into its blocked layout at
// every call it makes (the forward, and the backward's data and weight gradients each reorder once
// more), and on the deep, small levels of a UNet (256 channels at 8×8 and 4×4 latent pixels) that
// reorder costs about as much as the arithmetic: the weight is 2 to 8 times the size of the
// batch's input unfolded into windows there. The unfolded input is the copy made instead, and the
// weight is read in place (docs/performance.md, "Convolutions at the deep levels").
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

// Whether im2col_conv2d serves this convolution here and is the faster choice: where cpu_linear
// and cpu_matmul's kernel run (AMD CPUs with AVX-512F, float32, no autocast), x a contiguous
// [B, C, H, W] CPU tensor, a square [O, C, k, k] weight, and the layer deep and small enough that
// the unfolded input is no larger than the weight oneDNN would reorder: the batch's output pixels
// B·OH·OW no more than the output channels O.
bool im2col_conv_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t stride,
                         int64_t padding);

// x [B, C, H, W], weight [O, C, k, k], bias [O] or undefined -> [B, O, OH, OW], at::conv2d's result
// with this stride and zero padding on both axes (dilation 1, one group) up to float rounding;
// differentiable with respect to all three. With U the batch's unfolded input, [C·k·k, B·OH·OW]
// (the samples side by side): Y = W·U (+ bias per row), dUᵀ = dYᵀ·W folded back into dx, dW = dY·Uᵀ,
// each one product over the whole batch. Runs wherever cpu_matmul's kernel runs (an error
// elsewhere); im2col_conv_applies says where it beats ATen's convolution.
at::Tensor im2col_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t stride,
                         int64_t padding);

}  // namespace dedpo::sd
