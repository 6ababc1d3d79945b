#pragma once
// A per-pixel linear map (a 1×1 convolution, or a linear layer over tokens) that reads and writes
// either layout of an image's activations, channels first [B, C, HW] (the convolutions') or tokens
// [B, HW, C] (the transformer blocks'), as one cpu_matmul per sample with the transposed side read
// in place. A Transformer2DModel's proj_in and proj_out thereby take the place of a 1×1
// convolution (or linear layer) and a permuted copy each, and a ResnetBlock2D's 1×1 shortcut that
// of MKL's batched matmul, at about twice its rate on AMD CPUs (docs/performance.md).
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

enum class PixelLayout {
  channels_first,  // [B, C, HW]
  tokens,          // [B, HW, C]
};

// Whether pixel_linear runs here for x (laid out as `from`), a 2-D weight and a bias (or none):
// where cpu_linear would for a sample's pixels × channels (AMD CPUs, float32, no autocast), the
// bias float32 on the CPU too, and cpu_matmul's kernel runs.
bool pixel_linear_applies(const at::Tensor& x, PixelLayout from, const at::Tensor& weight, const at::Tensor& bias);

// x: [B, C, HW] or [B, HW, C] as `from` says; weight: [O, C] (a 1×1 convolution's [O, C, 1, 1]
// reshaped); bias: [O] or undefined -> the map y = W·x + bias at every pixel, [B, O, HW] or
// [B, HW, O] as `to` says, contiguous. Differentiable with respect to all three. Only where
// pixel_linear_applies (else an error).
at::Tensor pixel_linear(const at::Tensor& x, PixelLayout from, const at::Tensor& weight, const at::Tensor& bias,
                        PixelLayout to);

}  // namespace dedpo::sd
