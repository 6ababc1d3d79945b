#pragma once
// GEGLU's gate, value · gelu(gate), as one pass on CPUs with AVX-512 (the UNets' feed-forward
// layers, diffusers' GEGLU with the exact gelu). ATen runs it as a chunk, a gelu and a product,
// and its backward as two products, a gelu backward and a concatenation: five passes over the
// activations, each on one thread where a tensor has at most 32,768 elements (ATen's grain size:
// sdxl_small's 8×8 level at one pair). This kernel reads the projection's output once forward and
// once backward, keeps only it for the backward, and splits its rows over every thread.
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

// Whether geglu serves x: a float32 CPU tensor with an even last dimension and at least one
// element, on a CPU and build with AVX-512F.
bool geglu_applies(const at::Tensor& x);

// x: [..., 2·n], value then gate (the projection's output) -> [..., n], value · gelu(gate), as
// diffusers' GEGLU computes it; differentiable with respect to x. Requires geglu_applies.
at::Tensor geglu(const at::Tensor& x);

}  // namespace dedpo::sd
