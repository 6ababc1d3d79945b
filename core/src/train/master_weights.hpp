#pragma once
// Low-precision trainable weights with float32 master copies (mixed-precision training as in
// Micikevicius et al., 2018): the model computes with its bfloat16 weights and their bfloat16
// gradients, the optimiser updates float32 masters, and each step the weights become the masters'
// rounding. Small updates accumulate in the masters instead of vanishing below bfloat16's 8 bits.
#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

#include <vector>

namespace dedpo {

class MasterWeights {
 public:
  // `weights`: the model's trainable parameters. A float32 weight is its own master; any other
  // float dtype gets a float32 copy.
  explicit MasterWeights(std::vector<at::Tensor> weights);

  // What the optimiser, clipping, the NaN guard and the EMA work on.
  const std::vector<at::Tensor>& masters() const { return masters_; }
  bool has_copies() const { return copies_ > 0; }

  // masters[i].grad = weights[i].grad in float32 (undefined stays undefined); the weights' own
  // gradients are released.
  void gradients_to_masters();
  // weights[i] = masters[i], rounded to the weight's dtype.
  void masters_to_weights();
  // The end of training: the weights become their float32 masters (saved and evaluated as such).
  void weights_become_masters();

  // The float32 copies in a checkpoint (the weights alone would lose their low bits on resume).
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);
  // For evaluating a finished run from its checkpoint: the low-precision weights among `weights`
  // (in order) take their saved float32 masters' values and dtype; none saved, nothing changes.
  static void restore_masters(torch::serialize::InputArchive& archive, const std::vector<at::Tensor>& weights);
  // Whether a checkpoint holds float32 masters, i.e. its trainable weights were stored in bfloat16.
  static bool saved_in(torch::serialize::InputArchive& archive);

 private:
  std::vector<at::Tensor> weights_;
  std::vector<at::Tensor> masters_;
  std::size_t copies_ = 0;
};

}  // namespace dedpo
