#include "train/optimizer.hpp"

#include <string>

#include <torch/optim/adamw.h>

#include "dedpo/host/trainer.hpp"

namespace dedpo {
namespace {

class AdamWOptimizer final : public Optimizer {
 public:
  AdamWOptimizer(std::vector<at::Tensor> params, const TrainSettings& s)
      : optimizer_(std::move(params), torch::optim::AdamWOptions(s.lr)
                                          .betas({s.adam_beta1, s.adam_beta2})
                                          .eps(s.adam_eps)
                                          .weight_decay(s.weight_decay)) {}
  void step(double lr) override {
    for (auto& group : optimizer_.param_groups()) group.options().set_lr(lr);
    optimizer_.step();
  }
  void save(torch::serialize::OutputArchive& archive) const override { optimizer_.save(archive); }
  void load(torch::serialize::InputArchive& archive) override {
    optimizer_.load(archive);
    // The moments come back on the device they were saved from: rank 0's GPU (cuda:0) for every
    // rank of a data-parallel run, whose parameters are on cuda:LOCAL_RANK. (Adafactor copies its
    // state into tensors of its own.)
    for (const auto& group : optimizer_.param_groups()) {
      for (const at::Tensor& param : group.params()) {
        const auto found = optimizer_.state().find(param.unsafeGetTensorImpl());
        if (found == optimizer_.state().end()) continue;
        auto& moments = static_cast<torch::optim::AdamWParamState&>(*found->second);
        moments.exp_avg(moments.exp_avg().to(param.device()));
        moments.exp_avg_sq(moments.exp_avg_sq().to(param.device()));
        if (moments.max_exp_avg_sq().defined()) {
          moments.max_exp_avg_sq(moments.max_exp_avg_sq().to(param.device()));
        }
      }
    }
  }

 private:
  torch::optim::AdamW optimizer_;
};

class AdafactorOptimizer final : public Optimizer {
 public:
  AdafactorOptimizer(std::vector<at::Tensor> params, const TrainSettings& s)
      : optimizer_(std::move(params), Adafactor::Options{.weight_decay = s.weight_decay}) {}
  void step(double lr) override { optimizer_.step(lr); }
  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("steps", c10::IValue(optimizer_.steps()));
    std::vector<at::Tensor> state = optimizer_.state();
    archive.write("count", c10::IValue(static_cast<std::int64_t>(state.size())));
    for (std::size_t i = 0; i < state.size(); ++i) {
      archive.write("s" + std::to_string(i), state[i], /*is_buffer=*/true);
    }
  }
  void load(torch::serialize::InputArchive& archive) override {
    c10::IValue value;
    archive.read("steps", value);
    std::int64_t steps = value.toInt();
    archive.read("count", value);
    std::vector<at::Tensor> state(static_cast<std::size_t>(value.toInt()));
    for (std::size_t i = 0; i < state.size(); ++i) {
      archive.read("s" + std::to_string(i), state[i], /*is_buffer=*/true);
    }
    optimizer_.set_state(steps, state);
  }

 private:
  Adafactor optimizer_;
};

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(std::vector<at::Tensor> params,
                                          const TrainSettings& settings) {
  switch (settings.optimizer) {
    case OptimizerKind::adafactor:
      return std::make_unique<AdafactorOptimizer>(std::move(params), settings);
    case OptimizerKind::adamw:
      break;
  }
  return std::make_unique<AdamWOptimizer>(std::move(params), settings);
}

}  // namespace dedpo
