// The toy world plugins (library dedpo_toy) and the self_train annotator, loaded through the
// real plugin loader. The world header is compiled in here too, to check the plugins against it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <span>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adamw.h>

#include "../../backbones/toy/toy_world.hpp"
#include "dedpo/annotator.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "dedpo/services.hpp"
#include "no_services.hpp"
#include "test_support.hpp"

namespace {

using dedpo::toy::World;
using dedpo::toy::WorldConfig;

dedpo::PluginRegistry& registry() {
  static dedpo::PluginRegistry* instance = [] {
    auto* r = new dedpo::PluginRegistry;
    r->load_default_locations();
    return r;
  }();
  return *instance;
}

std::shared_ptr<dedpo::Backbone> prepared_toy(const std::string& options = "",
                                              std::uint64_t seed = 7,
                                              const std::filesystem::path& weights = {}) {
  auto backbone = registry().create<dedpo::Backbone>("toy", options);
  dedpo::BackboneContext context;
  context.seed = seed;
  context.initial_weights = weights;
  backbone->prepare(context);
  return backbone;
}

at::Generator generator(std::uint64_t seed) { return at::detail::createCPUGenerator(seed); }

double agreement(const at::Tensor& prob, const at::Tensor& label) {
  // Hard agreement of a probability with a label; ties (label 0.5 or prob 0.5) count half.
  at::Tensor p = (prob > 0.5).to(at::kDouble) + 0.5 * (prob == 0.5).to(at::kDouble);
  at::Tensor z = label.to(at::kDouble);
  return (p * z + (1 - p) * (1 - z)).mean().item<double>();
}

// Base-distribution pairs with human labels: the world an ideal reference would sample.
dedpo::PairDataset base_pairs(dedpo::Backbone& backbone, std::int64_t n, std::uint64_t seed) {
  auto data = registry().create<dedpo::Dataset>(
      "toy_pairs", "n_pairs = " + std::to_string(n) + "\ncandidates = \"base\"");
  dedpo::DatasetContext context{backbone, {}, seed};
  return data->pairs(context);
}

using dedpo::test::NoServices;

TEST(ToyWorld, LoadsAllPluginsOfTheLibrary) {
  auto& r = registry();
  EXPECT_NE(r.try_find(dedpo::PluginKind::backbone, "toy"), nullptr);
  EXPECT_NE(r.try_find(dedpo::PluginKind::dataset, "toy_pairs"), nullptr);
  EXPECT_NE(r.try_find(dedpo::PluginKind::dataset, "toy_samples"), nullptr);
  EXPECT_NE(r.try_find(dedpo::PluginKind::annotator, "toy_biased"), nullptr);
  EXPECT_NE(r.try_find(dedpo::PluginKind::annotator, "self_train"), nullptr);
  EXPECT_NE(r.try_find(dedpo::PluginKind::metric, "toy_reward"), nullptr);
}

TEST(ToyWorld, IsDeterministicFromItsSeed) {
  WorldConfig config;
  World a(config), b(config);
  EXPECT_TRUE(at::equal(a.means(), b.means()));
  EXPECT_TRUE(at::equal(a.preferred_mode(), b.preferred_mode()));
  EXPECT_TRUE(at::equal(a.spurious_direction(), b.spurious_direction()));
  config.world_seed = 1;
  World c(config);
  EXPECT_FALSE(at::equal(a.means(), c.means()));
  EXPECT_EQ(a.prompts().size(), 4u);
  EXPECT_EQ(a.prompts()[0], "prompt 0");

  // The plugins' data come from that world, deterministically per seed.
  auto backbone = prepared_toy();
  auto samples = registry().create<dedpo::Dataset>("toy_samples", "n_per_prompt = 3000");
  dedpo::DatasetContext context{*backbone, {}, 3};
  dedpo::SampleDataset s1 = samples->samples(context), s2 = samples->samples(context);
  ASSERT_EQ(s1.size(), 4 * 3000);
  EXPECT_TRUE(at::equal(s1.samples, s2.samples));
  for (std::int64_t p = 0; p < 4; ++p) {
    at::Tensor mine = s1.samples.index({s1.prompt_index == p});
    at::Tensor expected = a.means()[p].mean(0);  // equal mode weights
    EXPECT_LT((mine.mean(0) - expected).abs().max().item<double>(), 0.05) << "prompt " << p;
  }
  // The true reward peaks at the preferred mode and falls off the data manifold.
  at::Tensor prompt = at::arange(4, at::kLong);
  at::Tensor at_goal = a.reward(a.goal(), prompt);
  at::Tensor far = a.reward(a.goal() + 3.0, prompt);
  EXPECT_TRUE((at_goal > 0.9).all().item<bool>());
  EXPECT_TRUE((far < at_goal - 1).all().item<bool>());
}

TEST(ToyWorld, BradleyTerryOracleMatchesItsFormula) {
  auto backbone = prepared_toy();
  World world{WorldConfig{}};
  const std::int64_t n = 20000;
  dedpo::PairDataset data = base_pairs(*backbone, n, 11);
  ASSERT_EQ(data.size(), n);
  EXPECT_EQ(data.prompts, world.prompts());
  EXPECT_FALSE(data.fingerprint.empty());
  at::Tensor gap = world.reward(data.a, data.prompt_index) - world.reward(data.b, data.prompt_index);
  at::Tensor truth = (gap > 0).to(at::kFloat);
  double observed = agreement(truth, data.human_label);
  double expected = at::sigmoid(gap.abs() / 0.1).mean().item<double>();
  double se = std::sqrt(expected * (1 - expected) / n);
  EXPECT_NEAR(observed, expected, 4 * se);
  // Documented human noise level: humans agree with the true ordering on ~83-86% of pairs.
  EXPECT_GT(observed, 0.80);
  EXPECT_LT(observed, 0.89);
  // Same seed, same data; another seed, other data.
  EXPECT_TRUE(at::equal(base_pairs(*backbone, n, 11).human_label, data.human_label));
  EXPECT_FALSE(at::equal(base_pairs(*backbone, n, 12).a, data.a));
}

// The pairs the annotator labels in training: both candidates sampled from the toy reference
// model (experiments/toy/reference.toml, trained here into `folder`), labels from the oracle.
dedpo::PairDataset training_pairs(const std::filesystem::path& folder, std::int64_t n,
                                  std::uint64_t seed) {
  const dedpo::Override output{"run.output", "\"" + folder.string() + "\""};
  dedpo::Experiment reference = dedpo::load_experiment(
      std::filesystem::path(DEDPO_SOURCE_DIR) / "experiments" / "toy" / "reference.toml",
      std::span<const dedpo::Override>(&output, 1), registry());
  dedpo::RunControl control;
  control.run_dir = folder / "reference";
  control.progress_bar = false;
  dedpo::run_experiment(reference, registry(), control);
  static std::shared_ptr<dedpo::Backbone> backbone;  // the pairs' reference must outlive them
  backbone = prepared_toy("", 7, folder / "reference" / dedpo::kWeightsFile);
  auto data = registry().create<dedpo::Dataset>("toy_pairs", "n_pairs = " + std::to_string(n));
  dedpo::DatasetContext context{*backbone, {}, seed};
  return data->pairs(context);
}

// Realism is measured where the annotator works: on training pairs (candidates from the
// reference model), not on base-distribution pairs, whose candidates are farther apart.
TEST(ToyWorld, BiasedAnnotatorAgreesWithHumansLikeRealScorersOnTheTrainingPairs) {
  dedpo::test::TempDir temp;
  dedpo::PairDataset data = training_pairs(temp.path(), 20000, 5);
  auto backbone = prepared_toy();
  auto annotator = registry().create<dedpo::Annotator>("toy_biased");
  EXPECT_FALSE(annotator->uses_labels());
  at::Tensor labelled = at::ones({data.size()}, at::kBool);
  NoServices services;
  dedpo::AnnotatorContext context{data, labelled, *backbone, services, 1};
  at::Tensor g = annotator->annotate(context);
  ASSERT_EQ(g.size(0), data.size());
  EXPECT_TRUE(((g >= 0) & (g <= 1)).all().item<bool>());
  EXPECT_TRUE(at::equal(g, annotator->annotate(context)));
  const double with_humans = agreement(g, data.human_label);
  auto oracle = registry().create<dedpo::Annotator>("toy_biased", "bias_weight = 0.0\nnoise = 0.0");
  const double oracle_agreement = agreement(oracle->annotate(context), data.human_label);
  const double confidence = at::maximum(g, 1 - g).mean().item<double>();
  std::printf("[realism] training pairs: toy_biased vs humans %.3f, noiseless unbiased vs humans "
              "%.3f, mean confidence %.3f\n", with_humans, oracle_agreement, confidence);
  // Real synthetic annotators agree with Pick-a-Pic humans 57-70% (docs/toy_world.md).
  EXPECT_GT(with_humans, 0.60);
  EXPECT_LT(with_humans, 0.72);
  // An unbiased, noiseless annotator does better: the ceiling the humans' own noise sets.
  EXPECT_GT(oracle_agreement, with_humans + 0.1);
}

TEST(ToyBackbone, DenoisingLossDecreasesWithTraining) {
  auto backbone = prepared_toy("", 3);
  auto samples = registry().create<dedpo::Dataset>("toy_samples", "n_per_prompt = 1000");
  dedpo::DatasetContext context{*backbone, {}, 1};
  dedpo::SampleDataset data = samples->samples(context);
  at::Tensor condition =
      backbone->encode_prompts(data.prompts).index_select(0, data.prompt_index);
  auto evaluate = [&] {
    at::NoGradGuard no_grad;
    at::Generator gen = generator(99);
    double total = 0;
    for (int i = 0; i < 8; ++i) {
      total += backbone->denoising_loss(data.samples, condition, gen).mean().item<double>();
    }
    return total / 8;
  };
  double before = evaluate();
  torch::optim::AdamW optimizer(backbone->model().parameters(),
                                torch::optim::AdamWOptions(3e-3).weight_decay(0.0));
  at::Generator gen = generator(1);
  for (int step = 0; step < 300; ++step) {
    at::Tensor index = at::randint(data.size(), {256}, gen, at::kLong);
    at::Tensor loss = backbone->denoising_loss(data.samples.index_select(0, index),
                                               condition.index_select(0, index), gen)
                          .mean();
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  double after = evaluate();
  EXPECT_LT(after, 0.7 * before) << "before " << before << ", after " << after;

  // The reference stayed frozen, so the trained model's samples now differ from it, and the
  // metric sees that.
  auto metric = registry().create<dedpo::Metric>("toy_reward", "n_samples = 256");
  dedpo::MetricContext metric_context{*backbone, nullptr, 1234};
  auto figures = metric->evaluate(metric_context);
  std::map<std::string, double> m(figures.begin(), figures.end());
  EXPECT_GT(m.at("distance"), 0.1);
  // Trained on the base distribution for a few seconds: most samples land in some mode, the
  // preferred one about a third of the time.
  EXPECT_GT(m.at("preferred"), 0.15);
  EXPECT_LT(m.at("preferred"), 0.55);
}

TEST(ToyBackbone, SamplesAreDeterministicAndModelEqualsReferenceAtStart) {
  auto backbone = prepared_toy("sampler = \"ddim\"\nsample_steps = 10");
  at::Tensor condition = backbone->encode_prompts({"prompt 1", "prompt 3", "prompt 1"});
  EXPECT_TRUE(at::equal(condition, at::tensor({1, 3, 1}, at::kLong)));
  at::Tensor rows = condition.repeat({50});
  at::Generator g1 = generator(5), g2 = generator(5), g3 = generator(5), g4 = generator(6);
  at::Tensor x1 = backbone->sample(rows, g1, false);
  ASSERT_EQ(x1.sizes(), (std::vector<std::int64_t>{150, 2}));
  EXPECT_TRUE(at::equal(x1, backbone->sample(rows, g2, false)));
  EXPECT_TRUE(at::equal(x1, backbone->sample(rows, g3, true)));
  EXPECT_FALSE(at::equal(x1, backbone->sample(rows, g4, false)));

  auto ddpm = prepared_toy("schedule = \"linear\"\ntimesteps = 50");
  at::Generator g5 = generator(5), g6 = generator(5);
  at::Tensor y = ddpm->sample(rows, g5, false);
  EXPECT_TRUE(at::equal(y, ddpm->sample(rows, g6, true)));
  EXPECT_TRUE(at::isfinite(y).all().item<bool>());

  // Pair errors: one t and noise per pair, reference errors without gradient.
  dedpo::PairBatch batch{x1, x1.flip(0), rows};
  at::Generator g7 = generator(8);
  dedpo::DenoisingErrors e = backbone->denoising_errors(batch, g7, true);
  ASSERT_EQ(e.model_a.sizes(), (std::vector<std::int64_t>{150}));
  EXPECT_TRUE(e.model_a.requires_grad());
  EXPECT_FALSE(e.ref_a.requires_grad());
  EXPECT_TRUE(at::allclose(e.model_a, e.ref_a));
  EXPECT_TRUE(at::allclose(e.model_b, e.ref_b));
}

TEST(ToyBackbone, WeightsRoundTripAndMismatchesAreNamed) {
  dedpo::test::TempDir dir;
  auto backbone = prepared_toy("", 21);
  backbone->save_weights(dir / "toy.pt");
  auto loaded = prepared_toy("", 99, dir / "toy.pt");
  auto original = backbone->model().named_parameters();
  auto copy = loaded->model().named_parameters();
  ASSERT_EQ(original.size(), copy.size());
  for (const auto& item : original) {
    EXPECT_TRUE(at::equal(item.value(), copy[item.key()])) << item.key();
  }
  EXPECT_TRUE(original.contains("prompt_embedding.weight"));
  EXPECT_TRUE(original.contains("hidden_0.weight"));
  // Seeded init differs by seed; the loaded one also initialises the reference.
  EXPECT_FALSE(at::equal(prepared_toy("", 22)->model().parameters()[1], original[original.keys()[1]]));
  at::Tensor rows = at::arange(4, at::kLong);
  at::Generator g1 = generator(1), g2 = generator(1);
  EXPECT_TRUE(at::equal(backbone->sample(rows, g1, false), loaded->sample(rows, g2, true)));

  try {
    prepared_toy("width = 64", 1, dir / "toy.pt");
    FAIL() << "loading mismatched weights should fail";
  } catch (const dedpo::Error& error) {
    EXPECT_NE(std::string(error.what()).find("input.weight"), std::string::npos) << error.what();
  }
  try {
    prepared_toy("depth = 2", 1, dir / "toy.pt");
    FAIL() << "loading weights with extra layers should fail";
  } catch (const dedpo::Error& error) {
    EXPECT_NE(std::string(error.what()).find("unexpected 'hidden_1.weight'"), std::string::npos)
        << error.what();
  }
  dedpo::test::write_file(dir / "junk.pt", "not a torch archive");
  EXPECT_THROW(prepared_toy("", 1, dir / "junk.pt"), dedpo::Error);
}

TEST(ToyBackbone, UnknownPromptIsNamed) {
  auto backbone = registry().create<dedpo::Backbone>("toy", "dim = 2");
  try {
    backbone->encode_prompts({"prompt 0", "a cat"});
    FAIL() << "unknown prompt accepted";
  } catch (const dedpo::Error& error) {
    std::string message = error.what();
    EXPECT_NE(message.find("\"a cat\""), std::string::npos) << message;
    EXPECT_NE(message.find("\"prompt 3\""), std::string::npos) << message;
  }
  EXPECT_THROW(registry().create<dedpo::Backbone>("toy", "sampler = \"euler\""), dedpo::Error);
}

TEST(ToyReward, ModelEqualToReferenceWinsHalfAtDistanceZero) {
  auto backbone = prepared_toy("timesteps = 20\nsample_steps = 10");
  auto metric = registry().create<dedpo::Metric>("toy_reward", "n_samples = 64");
  dedpo::MetricContext context{*backbone, nullptr, 1234};
  auto figures = metric->evaluate(context);
  std::map<std::string, double> m(figures.begin(), figures.end());
  EXPECT_DOUBLE_EQ(m.at("win_rate"), 0.5);
  EXPECT_DOUBLE_EQ(m.at("distance"), 0.0);
  EXPECT_DOUBLE_EQ(m.at("reward"), m.at("reward_ref"));
  EXPECT_EQ(figures, metric->evaluate(context));
}

// Services that give the annotator a fresh toy backbone and "train" it by a fixed nudge.
class NudgeServices : public NoServices {
 public:
  std::shared_ptr<dedpo::Backbone> fresh_backbone() override { return prepared_toy("", 7); }
  std::shared_ptr<dedpo::Loss> make_loss(const std::string& name,
                                         const dedpo::Options& options) override {
    loss_name = name;
    loss_options = options;
    return nullptr;
  }
  const dedpo::Options& experiment_loss_options() const override { return experiment_loss; }
  void train(dedpo::Backbone& backbone, dedpo::Loss&, const dedpo::PairDataset&,
             const at::Tensor& is_labelled, const at::Tensor&, std::int64_t steps,
             std::uint64_t) override {
    trained_on = is_labelled.sum().item<std::int64_t>();
    trained_sets.push_back(is_labelled.clone());
    trained_steps = steps;
    if (steps == 0) return;
    at::NoGradGuard no_grad;
    for (auto& p : backbone.model().parameters()) p.add_(0.01);
  }
  std::string loss_name;
  dedpo::Options loss_options, experiment_loss;
  std::int64_t trained_on = -1, trained_steps = -1;
  std::vector<at::Tensor> trained_sets;  // the pairs each training may learn from
};

TEST(SelfTrain, ScoresEveryPairWithTheTrainedModelsImplicitPreference) {
  auto backbone = prepared_toy("", 7);
  dedpo::PairDataset data = base_pairs(*backbone, 500, 2);
  at::Tensor labelled = at::arange(500) < 100;
  NudgeServices services;
  auto untrained = registry().create<dedpo::Annotator>("self_train", "steps = 0\nbeta = 50.0");
  EXPECT_TRUE(untrained->uses_labels());
  dedpo::AnnotatorContext context{data, labelled, *backbone, services, 4};
  at::Tensor g0 = untrained->annotate(context);
  EXPECT_EQ(services.loss_name, "dpo");
  EXPECT_DOUBLE_EQ(services.loss_options.real("beta"), 50.0);
  // Cross-fitted (5 folds by default): five models, each trained without one fifth of the
  // labelled pairs, and every labelled pair left out of exactly one.
  ASSERT_EQ(services.trained_sets.size(), 5u);
  at::Tensor left_out = at::zeros({500}, at::kLong);
  for (const at::Tensor& trained : services.trained_sets) {
    EXPECT_EQ(trained.sum().item<std::int64_t>(), 80);
    EXPECT_FALSE(trained.logical_and(labelled.logical_not()).any().item<bool>());
    left_out += labelled.logical_and(trained.logical_not()).to(at::kLong);
  }
  EXPECT_TRUE(at::equal(left_out, labelled.to(at::kLong)));
  EXPECT_TRUE(at::allclose(g0, at::full({500}, 0.5f)));  // model == reference: no preference

  auto annotator = registry().create<dedpo::Annotator>(
      "self_train", "steps = 10\nbeta = 50.0\nn_draws = 4\nbatch_size = 128");
  at::Tensor g = annotator->annotate(context);
  ASSERT_EQ(g.sizes(), (std::vector<std::int64_t>{500}));
  EXPECT_FALSE(at::allclose(g, at::full({500}, 0.5f)));
  EXPECT_TRUE(at::equal(g, annotator->annotate(context)));

  at::Tensor none = at::zeros({500}, at::kBool);
  dedpo::AnnotatorContext unlabelled{data, none, *backbone, services, 4};
  EXPECT_THROW(annotator->annotate(unlabelled), dedpo::Error);

  // One model on every labelled pair when asked for (folds = 1: no cross-fitting).
  services.trained_sets.clear();
  registry().create<dedpo::Annotator>("self_train", "steps = 0\nbeta = 50.0\nfolds = 1")
      ->annotate(context);
  ASSERT_EQ(services.trained_sets.size(), 1u);
  EXPECT_TRUE(at::equal(services.trained_sets[0], labelled));
  // More folds than labelled pairs is an error naming the option.
  at::Tensor three = at::arange(500) < 3;
  dedpo::AnnotatorContext few{data, three, *backbone, services, 4};
  EXPECT_THAT([&] { untrained->annotate(few); },
              ::testing::ThrowsMessage<dedpo::Error>(::testing::HasSubstr("folds")));
}

}  // namespace
