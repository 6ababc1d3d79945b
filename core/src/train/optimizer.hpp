#pragma once
// The optimisers of [train] optimizer behind one interface, so the step loop and checkpoints do
// not care which one runs.
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

#include "dedpo/host/settings.hpp"

namespace dedpo {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual void step(double lr) = 0;
  virtual void save(torch::serialize::OutputArchive& archive) const = 0;
  virtual void load(torch::serialize::InputArchive& archive) = 0;
};

std::unique_ptr<Optimizer> make_optimizer(std::vector<at::Tensor> params,
                                          const TrainSettings& settings);

}  // namespace dedpo
