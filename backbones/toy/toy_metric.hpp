#pragma once
// The toy world's metric, toy_reward.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/metric.hpp"
#include "toy_backbone.hpp"

namespace dedpo::toy {

// toy_reward: true reward of the trained model's samples against its reference's.

inline constexpr OptionSpec kRewardOptions[] = {
    {"n_samples", OptionType::integer, "512", "Samples per prompt, from model and reference alike."},
};

class ToyRewardMetric : public Metric {
 public:
  explicit ToyRewardMetric(const Options& options) : options_(options) {
    if (options.integer("n_samples") < 1) options.fail("n_samples", "must be at least 1");
  }

  Figures evaluate(MetricContext& context) override {
    ToyBackbone& toy = toy_backbone(context.backbone, "toy_reward");
    const World& world = toy.world();
    const std::int64_t n = options_.integer("n_samples");
    at::Tensor prompt = at::arange(world.n_prompts(), at::kLong).repeat_interleave(n);
    // The same generator seed for model and reference: paired samples from the same noise.
    at::Generator gen_model = make_generator(mix_seed(context.seed, 404));
    at::Generator gen_ref = make_generator(mix_seed(context.seed, 404));
    at::Tensor x_model = toy.sample(prompt, gen_model, false).to(at::kCPU);
    at::Tensor x_ref = toy.sample(prompt, gen_ref, true).to(at::kCPU);

    at::Tensor r_model = world.reward(x_model, prompt);
    at::Tensor r_ref = world.reward(x_ref, prompt);
    at::Tensor wins = (r_model > r_ref).to(at::kDouble) + 0.5 * (r_model == r_ref).to(at::kDouble);
    // Fraction of samples whose nearest mode is the prompt's preferred one.
    auto preferred = [&](const at::Tensor& x) {
      at::Tensor mu = world.means().index_select(0, prompt);
      at::Tensor nearest = (x.unsqueeze(1) - mu).pow(2).sum(-1).argmin(1);
      return (nearest == world.preferred_mode().index_select(0, prompt))
          .to(at::kDouble).mean().item<double>();
    };
    return {
        {"reward", r_model.mean().item<double>()},
        {"reward_ref", r_ref.mean().item<double>()},
        {"win_rate", wins.mean().item<double>()},
        {"distance", (x_model - x_ref).norm(2, {1}).mean().item<double>()},
        {"preferred", preferred(x_model)},
        {"preferred_ref", preferred(x_ref)},
        {"spurious", world.spurious(x_model).mean().item<double>()},
        {"spurious_ref", world.spurious(x_ref).mean().item<double>()},
    };
  }

 private:
  Options options_;
};

}  // namespace dedpo::toy
