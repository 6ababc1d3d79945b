#pragma once
// Multi-head attention for heads of 8 or 16 channels on CPUs with AVX-512 (unet_sd15_small's at
// 32×32 and 16×16, and the tiny test UNets'): ATen's CPU flash kernel computes the scores with
// matrix products whose inner dimension is the head dimension, and at 8 those run at 30–50
// GFLOP/s here. These kernels vectorise over the keys instead, 16 per instruction, with the
// exponential inline, and never materialise the scores either: forward 4×, forward + backward 5×
// faster than ATen's on unet_sd15_small's self-attention at D = 8, 1.6× at D = 16
// (bench/bench_kernels.cpp, docs/performance.md). At 32 channels ATen's kernel is as fast and
// keeps them. softmax(q·kᵀ/√D)·v, no mask.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dedpo::sd {

// Whether small_head_attention serves these inputs: float32 or bfloat16 CPU tensors (all three of
// one dtype) of one batch size and channel count, at least one key, a head dimension C / heads of
// 8 or 16, and a CPU and build with AVX-512F.
bool small_head_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads);

// q: [B, Sq, C], k / v: [B, Sk, C], `heads` heads of D = C / heads -> [B, Sq, C] in q's dtype;
// differentiable with respect to q, k and v. bfloat16 inputs (bf16 autocast) are computed in
// float32. Requires small_head_attention_applies.
at::Tensor small_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads);

}  // namespace dedpo::sd
