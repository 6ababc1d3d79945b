#pragma once
// The toy world's data sets: toy_samples (the base distribution) and toy_pairs (preference pairs).
#include <sstream>

#include <ATen/ATen.h>

#include "dedpo/dataset.hpp"
#include "dedpo/digest.hpp"
#include "toy_backbone.hpp"

namespace dedpo::toy {

// `key=value;` per option: identifies a dataset's options in its fingerprint.
inline std::string options_text(const Options& options) {
  std::string text;
  for (const auto& [key, value] : options.values()) text += key + "=" + to_string(value) + ";";
  return text;
}

// toy_samples: the base distribution (trains the reference with objective = "denoising").

inline constexpr OptionSpec kSamplesOptions[] = {
    {"n_per_prompt", OptionType::integer, "2000", "Samples drawn from each prompt's base distribution."},
};

class ToySamples : public Dataset {
 public:
  explicit ToySamples(const Options& options) : options_(options) {
    if (options.integer("n_per_prompt") < 1) options.fail("n_per_prompt", "must be at least 1");
  }

  SampleDataset samples(DatasetContext& context) override {
    const World& world = toy_backbone(context.backbone, "toy_samples").world();
    const std::int64_t n = options_.integer("n_per_prompt");
    at::Generator gen = make_generator(mix_seed(context.seed, 101));
    SampleDataset data;
    data.prompts = world.prompts();
    data.prompt_index = at::arange(world.n_prompts(), at::kLong).repeat_interleave(n);
    data.samples = world.sample(data.prompt_index, gen);
    return data;
  }

 private:
  Options options_;
};

// toy_pairs: candidates from the reference model, labels from a noisy Bradley-Terry oracle.

inline constexpr OptionSpec kPairsOptions[] = {
    {"n_pairs", OptionType::integer, "2000", "Preference pairs (prompt drawn uniformly per pair)."},
    {"human_temperature", OptionType::real, "0.1",
     "tau_h of the human Bradley-Terry oracle P(A>B) = sigmoid((r(A)-r(B))/tau_h); larger = "
     "noisier humans. 0.1 makes two independent labellers agree on about 73% of reference pairs "
     "(see docs/toy_world.md)."},
    {"tie_rate", OptionType::real, "0.0", "Fraction of pairs labelled a tie (z = 0.5), at random."},
    {"candidates", OptionType::string, "\"reference\"",
     "\"reference\": both candidates sampled from the reference backbone; \"base\": drawn from "
     "the world's base distribution (an ideal reference)."},
};

class ToyPairs : public Dataset {
 public:
  explicit ToyPairs(const Options& options) : options_(options) {
    if (options.integer("n_pairs") < 1) options.fail("n_pairs", "must be at least 1");
    if (!(options.real("human_temperature") > 0)) {
      options.fail("human_temperature", "must be positive");
    }
    double tie = options.real("tie_rate");
    if (!(tie >= 0 && tie <= 1)) options.fail("tie_rate", "must be in [0, 1]");
    const std::string& candidates = options.string("candidates");
    if (candidates != "reference" && candidates != "base") {
      options.fail("candidates", "must be \"reference\" or \"base\", got \"" + candidates + "\"");
    }
  }

  PairDataset pairs(DatasetContext& context) override {
    ToyBackbone& toy = toy_backbone(context.backbone, "toy_pairs");
    const World& world = toy.world();
    const std::int64_t n = options_.integer("n_pairs");
    const bool from_reference = options_.string("candidates") == "reference";
    at::Generator gen = make_generator(mix_seed(context.seed, 202));

    PairDataset data;
    data.prompts = world.prompts();
    data.prompt_index = at::randint(world.n_prompts(), {n}, gen, at::kLong);
    at::Tensor both_prompts = at::cat({data.prompt_index, data.prompt_index});
    at::Tensor both = from_reference ? toy.sample(both_prompts, gen, /*from_reference=*/true)
                                           .to(at::kCPU)
                                     : world.sample(both_prompts, gen);
    data.a = both.slice(0, 0, n).contiguous();
    data.b = both.slice(0, n).contiguous();

    at::Tensor p = world.oracle_probability(data.a, data.b, data.prompt_index,
                                            options_.real("human_temperature"));
    at::Tensor z = (at::rand({n}, gen) < p).to(at::kFloat);
    at::Tensor tie = at::rand({n}, gen) < options_.real("tie_rate");
    data.human_label = at::where(tie, at::full({n}, 0.5f), z);

    std::ostringstream key;
    key << "toy_pairs|" << options_text(options_) << "|seed=" << context.seed << "|"
        << (from_reference ? toy.reference_identity() : "base") << "|"
        << options_text(toy.options());
    data.fingerprint = "toy_pairs-" + digest(key.str());
    return data;
  }

 private:
  Options options_;
};

}  // namespace dedpo::toy
