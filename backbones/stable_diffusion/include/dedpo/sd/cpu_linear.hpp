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

}  // namespace dedpo::sd
