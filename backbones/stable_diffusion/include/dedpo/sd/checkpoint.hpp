#pragma once
// Activation checkpointing (torch.utils.checkpoint, reentrant form) for LibTorch C++, which has none.
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace dedpo::sd {

using CheckpointedFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& inputs)>;

// Runs fn(inputs) keeping only `inputs` for backward (not its activations); backward re-runs fn with
// grad enabled and back-propagates through it. `parameters` are the tensors fn reads besides its
// inputs (its module's parameters): they become inputs of the autograd node so that they receive
// their gradients through the ordinary graph. fn must be deterministic (re-running it must give the
// same outputs: no dropout) and its outputs must be distinct tensors that are not views of inputs.
// CPU autocast is replayed as it was at forward. Without grad mode, or when nothing requires grad,
// this is just fn(inputs).
std::vector<at::Tensor> checkpoint(const CheckpointedFn& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& parameters);

}  // namespace dedpo::sd
