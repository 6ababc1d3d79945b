#pragma once
// The toy world's synthetic annotator, toy_biased.
#include <ATen/ATen.h>

#include "dedpo/annotator.hpp"
#include "toy_backbone.hpp"

namespace dedpo::toy {

// toy_biased: a synthetic annotator that sees the true reward through a spurious feature and
// noise, like CLIP / PickScore / aesthetic scorers see human preference.

inline constexpr OptionSpec kBiasedOptions[] = {
    {"bias_weight", OptionType::real, "1.0",
     "Weight of the spurious feature s(x) in the annotator's score (0 = unbiased)."},
    {"noise", OptionType::real, "0.4",
     "Std of the annotator's per-image score noise (its idiosyncratic errors)."},
    {"temperature", OptionType::real, "0.2",
     "ĝ = sigmoid(score gap / temperature): smaller = more confident. The defaults give ~67% "
     "agreement with human labels at ~90% mean confidence: over-confident, like real scorers."},
};

class ToyBiasedAnnotator : public Annotator {
 public:
  explicit ToyBiasedAnnotator(const Options& options) : options_(options) {
    if (!(options.real("noise") >= 0)) options.fail("noise", "must be non-negative");
    if (!(options.real("temperature") > 0)) options.fail("temperature", "must be positive");
  }

  at::Tensor annotate(AnnotatorContext& context) override {
    const World& world = toy_backbone(context.backbone, "toy_biased").world();
    const PairDataset& data = context.data;
    const std::int64_t n = data.size();
    at::Tensor a = data.a.reshape({n, world.dim()}).to(at::kCPU, at::kFloat);
    at::Tensor b = data.b.reshape({n, world.dim()}).to(at::kCPU, at::kFloat);
    at::Tensor prompt = data.prompt_index.to(at::kCPU);
    at::Generator gen = make_generator(mix_seed(context.seed, 303));
    // Drawn for the whole data set, so that a rank's shard gets its pairs' own noise.
    const std::int64_t total = context.total_pairs > 0 ? context.total_pairs : n;
    at::Tensor noise =
        at::randn({2, total}, gen).narrow(1, context.first_pair, n) * options_.real("noise");
    const double w = options_.real("bias_weight");
    at::Tensor score_a = world.reward(a, prompt) + w * world.spurious(a) + noise[0];
    at::Tensor score_b = world.reward(b, prompt) + w * world.spurious(b) + noise[1];
    return at::sigmoid((score_a - score_b) / options_.real("temperature"));
  }

 private:
  Options options_;
};

}  // namespace dedpo::toy
