#pragma once
// A matrix's transpose as a new contiguous tensor. ATen copies a transposed 2-D float tensor on one
// thread, element by element within blocks, at about a tenth of a plain copy's speed (a 2048 × 256
// matrix: 213 µs against 22, 2 threads); the linear layers' weight gradient needs one per layer
// and step (onednn_linear.hpp). On CPUs with AVX-512 this transposes 16 × 16 tiles in registers
// and splits the columns over every thread; elsewhere it is ATen's copy.
#include <ATen/core/Tensor.h>

namespace dedpo::sd {

// m: [rows, cols] -> mᵀ as a contiguous [cols, rows] tensor of m's dtype and device, equal to
// m.t().contiguous().
at::Tensor transposed_contiguous(const at::Tensor& m);

}  // namespace dedpo::sd
