#pragma once
// The optimisers of [train] optimizer behind one interface, so the step loop, checkpoints and the
// DPO-step benchmark run the same update, and the gradient norm the trainer clips and logs.
#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

#include "dedpo/host/settings.hpp"

namespace dedpo {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update at learning rate `lr` of the parameters that have a gradient, with every gradient
  // divided by `gradient_divisor` first (gradient-norm clipping; 1 = as they are). The divided
  // gradients are left in place of the old ones.
  virtual void step(double lr, double gradient_divisor = 1.0) = 0;
  virtual void save(torch::serialize::OutputArchive& archive) const = 0;
  virtual void load(torch::serialize::InputArchive& archive) = 0;
};

// AdamW runs ATen's fused kernel (`_fused_adamw_`: one pass over parameter, gradient and moments,
// on the CPU and on CUDA) on the state and checkpoint format of torch::optim::AdamW.
std::unique_ptr<Optimizer> make_optimizer(std::vector<at::Tensor> params,
                                          const TrainSettings& settings);

// The 2-norm of the gradients of `params` taken together (parameters without a gradient count as
// zero): float32 gradients on the CPU in one parallel pass over all of them, squares summed in
// double (the same result on any number of threads); others each in its own dtype on its device,
// the squares summed in double, one read-back per device. A float overflow there (a finite
// gradient whose squares exceed float's range) is recomputed in double, so inf or NaN means a
// gradient holds one.
double gradient_norm(const std::vector<at::Tensor>& params);

// Gradient-norm clipping to `max_grad_norm` (0 = none) as the divisor Optimizer::step takes: 1
// when the norm is within it, else (grad_norm + 1e-6) / max_grad_norm.
double clipping_divisor(double grad_norm, double max_grad_norm);

// Adafactor (Shazeer & Stern 2018) without relative step sizes and without parameter scaling:
// the given lr is the step size. Second moments are factored over the last two dimensions of
// parameters with ≥ 2 dimensions (row and column means), kept whole for the others; decay
// β̂₂ₜ = 1 − t^decay_rate; updates are clipped to RMS ≤ clip_threshold; decoupled weight decay.
class Adafactor {
 public:
  struct Options {
    double eps1 = 1e-30;          // added to the squared gradient
    double clip_threshold = 1.0;  // update RMS clip
    double decay_rate = -0.8;
    double weight_decay = 0.0;
  };
  Adafactor(std::vector<at::Tensor> params, Options options);

  // Parameters with an undefined grad are left alone; each gradient is divided by
  // `gradient_divisor` in place first (clipping, as Optimizer::step).
  void step(double lr, double gradient_divisor = 1.0);
  std::int64_t steps() const { return step_; }

  // Every state tensor in a fixed order (row, col or full second moment per parameter), for
  // checkpoints; set_state takes the same list back.
  std::vector<at::Tensor> state() const;
  void set_state(std::int64_t steps, const std::vector<at::Tensor>& state);

 private:
  std::vector<at::Tensor> params_;
  Options options_;
  std::vector<at::Tensor> row_, col_, full_;
  std::int64_t step_ = 0;
};

}  // namespace dedpo
