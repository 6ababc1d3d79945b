// The annotator and metric plugins end to end: loaded from their libraries, created from TOML
// options like an experiment's tables, run on a tiny random-weight scorer folder.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <functional>
#include <map>
#include <string>

#include "dedpo/annotator.hpp"
#include "dedpo/error.hpp"
#include "dedpo/image.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/scorers/clip_scorer.hpp"
#include "dedpo/scorers/tiny.hpp"
#include "no_services.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using dedpo::test::TempDir;

// An image backbone without a network: a sample is noise from the generator (backbone space =
// float pixels [N, 3, 24, 40] in [0, 1]); the reference's samples are darker.
class PixelBackbone : public dedpo::Backbone {
 public:
  void prepare(const dedpo::BackboneContext&) override {}
  torch::nn::Module& model() override { return model_; }
  at::Tensor encode_prompts(const std::vector<std::string>& prompts) override {
    ++encoded_;
    return at::zeros({static_cast<std::int64_t>(prompts.size()), 1});
  }
  dedpo::DenoisingErrors denoising_errors(const dedpo::PairBatch&, at::Generator&, bool) override {
    throw dedpo::Error("not used");
  }
  at::Tensor denoising_loss(const at::Tensor&, const at::Tensor&, at::Generator&) override {
    throw dedpo::Error("not used");
  }
  at::Tensor sample(const at::Tensor& condition, at::Generator& generator, bool from_reference) override {
    const at::Tensor x = at::rand({condition.size(0), 3, 24, 40}, generator);
    return from_reference ? x * 0.5 : x;
  }
  void save_weights(const fs::path&) const override {}
  at::Tensor decode_samples(const at::Tensor& samples) const override {
    return (samples * 255).round().to(at::kByte).permute({0, 2, 3, 1}).contiguous();
  }
  int encoded_ = 0;

 private:
  torch::nn::Module model_;
};

class ScorerPlugins : public ::testing::Test {
 protected:
  void SetUp() override {
    dedpo::scorers::write_tiny_clip_folder(dir_ / "clip", 2);
    // One library per scorer holds its annotator and its metric.
    for (const char* name : {"clip_score", "pickscore", "hpsv2", "aesthetic"}) {
      ASSERT_TRUE(registry_.load_library(fs::path(DEDPO_PLUGIN_DIR) / (std::string("dedpo_") + name + ".so")))
          << name;
    }
  }
  std::string scorer_options(bool aesthetic = false) const {
    std::string toml = "path = \"" + (dir_ / "clip").string() + "\"\n";
    if (aesthetic) toml += "head = \"" + (dir_ / "clip" / "aesthetic_head.safetensors").string() + "\"\n";
    return toml;
  }
  // Four pairs over two prompts, images written as PNG files (A and B differ).
  dedpo::PairDataset pairs_from_files() {
    dedpo::PairDataset data;
    data.prompts = {"a cat", "the sea"};
    data.prompt_index = at::tensor({0, 1, 1, 0}, at::kLong);
    data.a = at::zeros({4, 1});
    data.b = at::zeros({4, 1});
    data.human_label = at::full({4}, NAN);
    at::manual_seed(5);
    for (int i = 0; i < 4; ++i) {
      a_images_.push_back(at::randint(0, 256, {36 + 4 * i, 30, 3}, at::kByte));
      b_images_.push_back(at::randint(0, 256, {32, 32, 3}, at::kByte));
      data.a_files.push_back(dir_ / ("a" + std::to_string(i) + ".png"));
      data.b_files.push_back(dir_ / ("b" + std::to_string(i) + ".png"));
      dedpo::write_png(data.a_files.back(), a_images_.back());
      dedpo::write_png(data.b_files.back(), b_images_.back());
    }
    return data;
  }
  at::Tensor annotate(const std::string& plugin, const std::string& options, const dedpo::PairDataset& data) {
    auto annotator = registry_.create<dedpo::Annotator>(plugin, options);
    const at::Tensor labelled = at::zeros({data.size()}, at::kBool);
    dedpo::test::NoServices services;
    dedpo::AnnotatorContext context{data, labelled, backbone_, services, 0};
    return annotator->annotate(context);
  }
  std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const dedpo::Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  TempDir dir_;
  dedpo::PluginRegistry registry_;
  PixelBackbone backbone_;
  std::vector<at::Tensor> a_images_, b_images_;
};

TEST_F(ScorerPlugins, ClipScoreAnnotatorIsTheSigmoidOfTheScoreDifference) {
  const dedpo::PairDataset data = pairs_from_files();
  const at::Tensor g = annotate("clip_score", scorer_options() + "tau = 2.0\nbatch_size = 3\n", data);
  ASSERT_EQ(g.sizes(), (at::IntArrayRef{4}));
  dedpo::scorers::ClipScorer clip(dir_ / "clip");
  const std::vector<std::string> prompts = {"a cat", "the sea", "the sea", "a cat"};
  const at::Tensor expected = at::sigmoid((clip.cosine(a_images_, prompts) - clip.cosine(b_images_, prompts)) * 100 / 2);
  EXPECT_TRUE(at::allclose(g, expected, 1e-5, 1e-6)) << g << expected;
  // Swapping A and B mirrors the probabilities.
  dedpo::PairDataset swapped = data;
  std::swap(swapped.a_files, swapped.b_files);
  EXPECT_TRUE(at::allclose(annotate("clip_score", scorer_options() + "tau = 2.0\n", swapped), 1 - g, 1e-5, 1e-6));
}

TEST_F(ScorerPlugins, PickScoreUsesTheLogitScaleAndHpsv2TheSameTowers) {
  const dedpo::PairDataset data = pairs_from_files();
  dedpo::scorers::ClipScorer clip(dir_ / "clip");
  const std::vector<std::string> prompts = {"a cat", "the sea", "the sea", "a cat"};
  const at::Tensor difference = clip.cosine(a_images_, prompts) - clip.cosine(b_images_, prompts);
  EXPECT_TRUE(at::allclose(annotate("pickscore", scorer_options(), data), at::sigmoid(difference * clip.logit_scale()),
                           1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(annotate("hpsv2", scorer_options(), data), at::sigmoid(difference * 100), 1e-5, 1e-6));
}

TEST_F(ScorerPlugins, AestheticAnnotatorDecodesBackboneSamplesWhenThereAreNoFiles) {
  dedpo::PairDataset data;
  data.prompts = {"anything"};
  data.prompt_index = at::zeros({3}, at::kLong);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(9);
  data.a = backbone_.sample(at::zeros({3, 1}), generator, false);
  data.b = backbone_.sample(at::zeros({3, 1}), generator, false);
  const at::Tensor g = annotate("aesthetic", scorer_options(true) + "tau = 0.5\n", data);
  dedpo::scorers::AestheticScorer aesthetic(dir_ / "clip", dir_ / "clip" / "aesthetic_head.safetensors");
  auto rows = [&](const at::Tensor& samples) {
    const at::Tensor images = backbone_.decode_samples(samples);
    return std::vector<at::Tensor>{images[0], images[1], images[2]};
  };
  const at::Tensor expected = at::sigmoid((aesthetic.score(rows(data.a)) - aesthetic.score(rows(data.b))) / 0.5);
  EXPECT_TRUE(at::allclose(g, expected, 1e-5, 1e-6)) << g << expected;
}

TEST_F(ScorerPlugins, BadOptionsFailWhenThePluginIsCreated) {
  EXPECT_NE(error_of([&] { registry_.create<dedpo::Annotator>("clip_score", "path = \"/no/such/folder\"\n"); })
                .find("is not a folder"),
            std::string::npos);
  EXPECT_NE(error_of([&] { registry_.create<dedpo::Annotator>("clip_score", scorer_options() + "tau = 0.0\n"); })
                .find("tau"),
            std::string::npos);
  EXPECT_NE(error_of([&] { registry_.create<dedpo::Annotator>("aesthetic", scorer_options() + "head = \"x.safetensors\"\n"); })
                .find("'x.safetensors' does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              registry_.create<dedpo::Metric>("pickscore", scorer_options() + "prompts = \"" + (dir_ / "none.txt").string() + "\"\n");
            }).find("none.txt' does not exist"),
            std::string::npos);
}

TEST_F(ScorerPlugins, MetricsScoreSamplesPerPromptFileAndTheReference) {
  dedpo::test::write_file(dir_ / "prompts" / "anime.txt", "a girl\na robot\n");
  dedpo::test::write_file(dir_ / "prompts" / "photo.json", R"(["a cat", "the sea", "a dog"])");
  const std::string prompts =
      "prompts = \"" + (dir_ / "prompts" / "anime.txt").string() + "," + (dir_ / "prompts" / "photo.json").string() + "\"\n";
  auto metric = registry_.create<dedpo::Metric>(
      "hpsv2", scorer_options() + prompts + "images_per_prompt = 2\nbatch_size = 3\nreference = true\n");
  dedpo::MetricContext context{backbone_, nullptr, 11};
  const auto figures = metric->evaluate(context);
  std::map<std::string, double> values(figures.begin(), figures.end());
  ASSERT_EQ(values.size(), 6u);
  for (const char* name : {"hpsv2_avg", "hpsv2_anime", "hpsv2_photo", "hpsv2_avg_ref", "hpsv2_anime_ref", "hpsv2_photo_ref"}) {
    ASSERT_TRUE(values.count(name)) << name;
    EXPECT_TRUE(std::isfinite(values[name])) << name;
    EXPECT_LE(std::abs(values[name]), 100.0) << name;
  }
  EXPECT_NEAR(values["hpsv2_avg"], (values["hpsv2_anime"] + values["hpsv2_photo"]) / 2, 1e-9);
  EXPECT_NE(values["hpsv2_avg"], values["hpsv2_avg_ref"]);

  // The figure by hand for the first file: the same generator draws, batches of 3 rows.
  dedpo::scorers::ClipScorer clip(dir_ / "clip");
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(11);
  const std::vector<std::string> rows = {"a girl", "a girl", "a robot", "a robot"};
  double total = 0;
  for (std::size_t begin = 0; begin < rows.size(); begin += 3) {
    const std::vector<std::string> prompts_batch(rows.begin() + begin, rows.begin() + std::min<std::size_t>(rows.size(), begin + 3));
    const at::Tensor images = backbone_.decode_samples(
        backbone_.sample(at::zeros({static_cast<std::int64_t>(prompts_batch.size()), 1}), generator, false));
    std::vector<at::Tensor> list;
    for (std::int64_t i = 0; i < images.size(0); ++i) list.push_back(images[i]);
    total += (clip.cosine(list, prompts_batch) * 100).sum().item<double>();
  }
  EXPECT_NEAR(values["hpsv2_anime"], total / 4, 1e-4);

  // The same seed gives the same figures; one file gives the main figure only.
  EXPECT_EQ(metric->evaluate(context), figures);
  auto single = registry_.create<dedpo::Metric>(
      "aesthetic", scorer_options(true) + "prompts = \"" + (dir_ / "prompts" / "anime.txt").string() + "\"\nmax_prompts = 1\n");
  const auto aesthetic = single->evaluate(context);
  ASSERT_EQ(aesthetic.size(), 1u);
  EXPECT_EQ(aesthetic[0].first, "aesthetic");
}

TEST_F(ScorerPlugins, UnreadablePromptsAtEvaluationNameTheFileAndLine) {
  dedpo::test::write_file(dir_ / "p.txt", "ok\n\xff\xfe\n");
  auto metric = registry_.create<dedpo::Metric>("clip_score", scorer_options() + "prompts = \"" + (dir_ / "p.txt").string() + "\"\n");
  dedpo::MetricContext context{backbone_, nullptr, 0};
  EXPECT_NE(error_of([&] { metric->evaluate(context); }).find("p.txt' line 2: not valid UTF-8"), std::string::npos);
}

}  // namespace
