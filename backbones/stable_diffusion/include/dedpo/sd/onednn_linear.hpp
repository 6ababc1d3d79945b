#pragma once
// Float32 linear layers through oneDNN's matmul on AMD CPUs. ATen runs its float32 matmuls with
// MKL, which on AMD CPUs takes its Zen code path at about half of oneDNN's AVX-512 rate (an AMD
// EPYC Zen 5, 2 threads: 203–231 against 314–490 GFLOP/s on the UNets' linear shapes,
// docs/performance.md); on Intel CPUs MKL is ATen's fast path and stays. bfloat16 linears go
// through oneDNN in ATen already.
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

// Whether onednn_linear serves x·Wᵀ here: an AMD CPU, LibTorch built with oneDNN, float32 CPU
// tensors, a 2-D weight, no empty operand, no CPU autocast.
bool onednn_linear_applies(const at::Tensor& x, const at::Tensor& weight);

// x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out], as at::linear, and
// differentiable with respect to all three: the backward pass's two products go through oneDNN too.
// Runs on any x86 CPU with oneDNN (the tests check it everywhere); onednn_linear_applies says
// where it is the faster choice.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace dedpo::sd
