#pragma once
// LoRA adapters applied beside the frozen weight, never merged into it:
//   y = x·W0ᵀ + b + s·(x·Aᵀ)·Bᵀ,  A = lora_A [r, in], B = lora_B [out, r].
// The base weights stay as stored (a bfloat16 base stays bfloat16) and no W0 + s·B·A is ever
// materialised: the adapters add r·(in + out) values per layer and one rank-r activation.
#include <torch/nn/modules/linear.h>

#include <unordered_map>
#include <vector>

namespace dedpo::sd {

struct LoraAdapter {
  at::Tensor down;  // lora_A.weight [r, in], float32 (trainable)
  at::Tensor up;    // lora_B.weight [out, r], float32 (trainable)
  double scale;     // alpha / r
};

// The adapters of one model, by the Linear layer they adapt.
class LoraAdapters {
 public:
  void add(const torch::nn::LinearImpl& layer, LoraAdapter adapter);
  const LoraAdapter* find(const torch::nn::LinearImpl& layer) const;
  // Every adapter tensor: what a checkpointed block must name as inputs of its replay.
  const std::vector<at::Tensor>& parameters() const { return parameters_; }
  bool empty() const { return by_layer_.empty(); }

 private:
  std::unordered_map<const torch::nn::LinearImpl*, LoraAdapter> by_layer_;
  std::vector<at::Tensor> parameters_;
};

// Makes `adapters` the ones linear() applies on this thread for its lifetime (nullptr: none, the
// base model), then restores the previous ones. Thread-local, so that a checkpointed block
// replayed on the autograd engine's thread re-activates what its forward saw.
class ActiveAdapters {
 public:
  explicit ActiveAdapters(const LoraAdapters* adapters);
  ~ActiveAdapters();
  ActiveAdapters(const ActiveAdapters&) = delete;
  ActiveAdapters& operator=(const ActiveAdapters&) = delete;

  static const LoraAdapters* current();

 private:
  const LoraAdapters* previous_;
};

// layer(x), plus the layer's active adapter if any. Weights stored in another float dtype than x
// (a bfloat16 base under float32 compute) are cast for this call only; the adapters are cast to
// x's dtype differentiably, so their float32 values are the master copies the optimiser updates.
at::Tensor linear(const torch::nn::Linear& layer, const at::Tensor& x);

}  // namespace dedpo::sd
