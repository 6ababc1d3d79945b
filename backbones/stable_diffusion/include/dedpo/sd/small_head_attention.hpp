#pragma once
// Multi-head attention for heads of 8 to 64 channels on CPUs with AVX-512 (every attention layer of
// unet_sd15_small and unet_sdxl_small, and of the tiny test UNets). ATen's CPU flash kernel computes
// the scores with matrix products whose inner dimension is the head dimension; at 8 those run at
// 30–50 GFLOP/s here, and at 64 its float32 products go to MKL, which takes its slower code path on
// AMD CPUs. These kernels vectorise over the keys instead, 16 per instruction, with the exponential
// inline, and never materialise the scores either: at 8 and 16 channels each query keeps its
// accumulators in registers; at 32 and 64, tiles of 12 or 6 queries run as small matrix products.
// Forward + backward 5× faster than ATen's on unet_sd15_small's self-attention at D = 8, 1.7–2.2×
// at 16 to 64 (bench/bench_kernels.cpp, docs/performance.md). softmax(q·kᵀ/√D)·v, no mask.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dedpo::sd {

// Whether small_head_attention serves these inputs: float32 or bfloat16 CPU tensors (all three of
// one dtype) of one batch size and channel count, at least one key, a head dimension C / heads of
// 8, 16, 32 or 64, and a CPU and build with AVX-512F.
bool small_head_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads);

// q: [B, Sq, C], k / v: [B, Sk, C], `heads` heads of D = C / heads -> [B, Sq, C] in q's dtype;
// differentiable with respect to q, k and v. bfloat16 inputs (bf16 autocast) are computed in
// float32. Requires small_head_attention_applies.
at::Tensor small_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads);

}  // namespace dedpo::sd
