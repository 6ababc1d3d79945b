// The toy world's data sets, synthetic annotator and metric, and the library's plugin table.
#include <cmath>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/annotator.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/digest.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/plugin.hpp"
#include "toy_backbone.hpp"

namespace dedpo::toy {
namespace {

using T = OptionType;

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t salt) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (salt + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string options_text(const Options& options) {
  std::string text;
  for (const auto& [key, value] : options.values()) text += key + "=" + to_string(value) + ";";
  return text;
}

// ---------------------------------------------------------------------------------------------
// toy_samples: the base distribution (trains the reference with objective = "denoising").

const OptionSpec kSamplesOptions[] = {
    {"n_per_prompt", T::integer, "2000", "Samples drawn from each prompt's base distribution."},
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

// ---------------------------------------------------------------------------------------------
// toy_pairs: candidates from the reference model, labels from a noisy Bradley-Terry oracle.

const OptionSpec kPairsOptions[] = {
    {"n_pairs", T::integer, "2000", "Preference pairs (prompt drawn uniformly per pair)."},
    {"human_temperature", T::real, "0.1",
     "tau_h of the human Bradley-Terry oracle P(A>B) = sigmoid((r(A)-r(B))/tau_h); larger = "
     "noisier humans. 0.1 makes two independent labellers agree on about 73% of reference pairs "
     "(see docs/toy_world.md)."},
    {"tie_rate", T::real, "0.0", "Fraction of pairs labelled a tie (z = 0.5), at random."},
    {"candidates", T::string, "\"reference\"",
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

// ---------------------------------------------------------------------------------------------
// toy_biased: a synthetic annotator that sees the true reward through a spurious feature and
// noise, like CLIP / PickScore / aesthetic scorers see human preference.

const OptionSpec kBiasedOptions[] = {
    {"bias_weight", T::real, "1.0",
     "Weight of the spurious feature s(x) in the annotator's score (0 = unbiased)."},
    {"noise", T::real, "0.4",
     "Std of the annotator's per-image score noise (its idiosyncratic errors)."},
    {"temperature", T::real, "0.2",
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
    at::Tensor noise = at::randn({2, n}, gen) * options_.real("noise");
    const double w = options_.real("bias_weight");
    at::Tensor score_a = world.reward(a, prompt) + w * world.spurious(a) + noise[0];
    at::Tensor score_b = world.reward(b, prompt) + w * world.spurious(b) + noise[1];
    return at::sigmoid((score_a - score_b) / options_.real("temperature"));
  }

 private:
  Options options_;
};

// ---------------------------------------------------------------------------------------------
// toy_reward: true reward of the trained model's samples against its reference's.

const OptionSpec kRewardOptions[] = {
    {"n_samples", T::integer, "512", "Samples per prompt, from model and reference alike."},
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

}  // namespace
}  // namespace dedpo::toy

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<dedpo::toy::ToyBackbone>(
        "toy", "1.0.0",
        "Prompt-conditioned MLP diffusion model over a low-dimensional world with a known true "
        "reward (docs/toy_world.md).",
        dedpo::toy::kToyBackboneOptions),
    dedpo::describe<dedpo::toy::ToySamples>(
        "toy_samples", "1.0.0",
        "Samples of the toy world's base distribution (denoising objective: the reference).",
        dedpo::toy::kSamplesOptions),
    dedpo::describe<dedpo::toy::ToyPairs>(
        "toy_pairs", "1.0.0",
        "Toy preference pairs from the reference model, labelled by a noisy Bradley-Terry oracle "
        "on the true reward.",
        dedpo::toy::kPairsOptions),
    dedpo::describe<dedpo::toy::ToyBiasedAnnotator>(
        "toy_biased", "1.0.0",
        "Synthetic annotator: true reward plus a spurious feature plus noise (CLIP / PickScore "
        "analogue).",
        dedpo::toy::kBiasedOptions),
    dedpo::describe<dedpo::toy::ToyRewardMetric>(
        "toy_reward", "1.0.0",
        "True reward, win rate and distance of the model's samples against its reference's.",
        dedpo::toy::kRewardOptions))
