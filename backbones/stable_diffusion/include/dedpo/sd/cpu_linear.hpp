#pragma once
// Float32 linear layers on AMD CPUs, where neither library LibTorch carries runs them well: ATen's
// MKL takes its Zen code path at about half of the machine's rate, and oneDNN picks its generic jit
// gemm for many of a UNet's shapes. With AVX-512 the forward and both backward products run on
// dedpo_sd's cpu_matmul (cpu_matmul.hpp), which reads the transposed weight and gradient in place;
// without it, on oneDNN. On Intel CPUs MKL is ATen's fast path and stays. bfloat16 linears go
// through oneDNN in ATen already.
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

// Whether cpu_linear serves x·Wᵀ here: an AMD CPU with AVX-512 or a LibTorch built with oneDNN,
// float32 CPU tensors, a 2-D weight, no empty operand, no CPU autocast.
bool cpu_linear_applies(const at::Tensor& x, const at::Tensor& weight);

// x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out], as at::linear, and
// differentiable with respect to all three; the backward pass's two products take the forward's
// path. Runs on any x86 CPU with AVX-512 or a LibTorch with oneDNN (the tests check it on every
// such CPU); cpu_linear_applies says where it is the faster choice.
at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Under CPU bfloat16 autocast, where ATen would run oneDNN's bf16 matmul: whether
// cpu_linear_bf16 serves x with a weight and bias (each float32 or bfloat16: a trained layer's
// float32 master weights, or a frozen reference stored in bfloat16) here, on AMD CPUs with
// AVX512-BF16.
bool cpu_linear_bf16_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// autocast's linear on VDPBF16PS: x and the weight rounded to bfloat16 (packed straight from a
// float32 weight, no cast of it kept), products summed in float32 with the bias, the output
// rounded once to bfloat16 [..., out]; differentiable: dx, dW and dbias in the dtypes of x, the
// weight and the bias (the backward's products in bf16 pairs as well, summed in float32).
at::Tensor cpu_linear_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace dedpo::sd
