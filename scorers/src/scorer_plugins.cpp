#include "dedpo/scorers/scorer_plugins.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <filesystem>

#include "dedpo/error.hpp"
#include "dedpo/image.hpp"
#include "dedpo/scorers/clip_scorer.hpp"
#include "dedpo/scorers/prompts.hpp"

namespace dedpo::scorers {

namespace fs = std::filesystem;

namespace {

class ImageTextScorer : public ImageScorer {
 public:
  ImageTextScorer(const Options& options, ScoreKind kind)
      : clip_(options.string("path"), options.string("weights")),
        // PickScore multiplies by the model's learnt scale; CLIP score and HPSv2 report 100 · cos.
        scale_(kind == ScoreKind::pickscore ? clip_.logit_scale() : 100.0) {}
  at::Tensor score(const std::vector<at::Tensor>& images, const std::vector<std::string>& prompts) override {
    return clip_.cosine(images, prompts) * scale_;
  }
  void to(c10::Device device) override { clip_.to(device); }

 private:
  ClipScorer clip_;
  double scale_;
};

class AestheticImageScorer : public ImageScorer {
 public:
  explicit AestheticImageScorer(const Options& options)
      : aesthetic_(options.string("path"), options.string("head"), options.string("weights")) {}
  at::Tensor score(const std::vector<at::Tensor>& images, const std::vector<std::string>&) override {
    return aesthetic_.score(images);
  }
  void to(c10::Device device) override { aesthetic_.to(device); }

 private:
  AestheticScorer aesthetic_;
};

// Cheap checks for the constructors (dedpo validate): the files exist.
void check_scorer_files(const Options& options, ScoreKind kind) {
  const fs::path folder = options.string("path");
  if (!fs::is_directory(folder)) options.fail("path", "'" + folder.string() + "' is not a folder");
  if (!fs::exists(folder / "config.json")) options.fail("path", "'" + folder.string() + "' has no config.json");
  const std::string& weights = options.string("weights");
  if (!weights.empty() && !fs::exists(weights)) options.fail("weights", "'" + weights + "' does not exist");
  if (weights.empty() && !fs::exists(folder / "model.safetensors")) {
    options.fail("path", "'" + folder.string() + "' has no model.safetensors (or give weights)");
  }
  if (kind == ScoreKind::aesthetic && !fs::exists(options.string("head"))) {
    options.fail("head", "'" + options.string("head") + "' does not exist");
  }
}

std::int64_t positive(const Options& options, const char* name) {
  const std::int64_t value = options.integer(name);
  if (value < 1) options.fail(name, "must be at least 1");
  return value;
}

const char* prefix_of(ScoreKind kind) {
  switch (kind) {
    case ScoreKind::clip_score: return "clip_score";
    case ScoreKind::pickscore: return "pickscore";
    case ScoreKind::hpsv2: return "hpsv2";
    case ScoreKind::aesthetic: return "aesthetic";
  }
  return "";
}

std::vector<at::Tensor> rows_of(const at::Tensor& images) {
  const at::Tensor cpu = images.to(at::kCPU);
  std::vector<at::Tensor> rows;
  for (std::int64_t i = 0; i < cpu.size(0); ++i) rows.push_back(cpu[i]);
  return rows;
}

}  // namespace

std::unique_ptr<ImageScorer> make_image_scorer(ScoreKind kind, const Options& options, c10::Device device) {
  std::unique_ptr<ImageScorer> scorer;
  if (kind == ScoreKind::aesthetic) {
    scorer = std::make_unique<AestheticImageScorer>(options);
  } else {
    scorer = std::make_unique<ImageTextScorer>(options, kind);
  }
  scorer->to(device);
  return scorer;
}

std::vector<at::Tensor> pair_images(const PairDataset& data, Backbone& backbone, bool side_a, std::int64_t begin,
                                    std::int64_t end) {
  const std::vector<fs::path>& files = side_a ? data.a_files : data.b_files;
  if (!files.empty()) {
    std::vector<at::Tensor> images;
    for (std::int64_t i = begin; i < end; ++i) images.push_back(read_image(files.at(static_cast<std::size_t>(i))));
    return images;
  }
  const at::Tensor& samples = side_a ? data.a : data.b;
  return rows_of(backbone.decode_samples(samples.slice(0, begin, end)));
}

ScorerAnnotator::ScorerAnnotator(const Options& options, ScoreKind kind)
    : options_(options), kind_(kind), tau_(options.real("tau")), batch_size_(positive(options, "batch_size")) {
  if (!(tau_ > 0)) options.fail("tau", "must be > 0");
  check_scorer_files(options, kind);
}

at::Tensor ScorerAnnotator::annotate(AnnotatorContext& context) {
  const PairDataset& data = context.data;
  std::unique_ptr<ImageScorer> scorer = make_image_scorer(kind_, options_, context.device);
  const std::int64_t n = data.size();
  const at::Tensor prompt_index = data.prompt_index.to(at::kCPU).to(at::kLong);
  std::vector<at::Tensor> chunks;
  for (std::int64_t begin = 0; begin < n; begin += batch_size_) {
    const std::int64_t end = std::min(n, begin + batch_size_);
    std::vector<std::string> prompts;
    for (std::int64_t i = begin; i < end; ++i) {
      prompts.push_back(data.prompts.at(static_cast<std::size_t>(prompt_index[i].item<std::int64_t>())));
    }
    const at::Tensor score_a = scorer->score(pair_images(data, context.backbone, true, begin, end), prompts);
    const at::Tensor score_b = scorer->score(pair_images(data, context.backbone, false, begin, end), prompts);
    chunks.push_back(at::sigmoid((score_a - score_b) / tau_));
  }
  return chunks.empty() ? at::zeros({0}) : at::cat(chunks).to(at::kFloat);
}

ScorerMetric::ScorerMetric(const Options& options, ScoreKind kind) : options_(options), kind_(kind) {
  positive(options, "images_per_prompt");
  positive(options, "batch_size");
  if (options.integer("max_prompts") < 0) options.fail("max_prompts", "must be ≥ 0 (0 = all)");
  check_scorer_files(options, kind);
  const std::vector<fs::path> files = split_path_list(options.string("prompts"));
  if (files.empty()) options.fail("prompts", "no prompt file given");
  for (const fs::path& file : files) {
    if (!fs::exists(file)) options.fail("prompts", "'" + file.string() + "' does not exist");
  }
}

Figures ScorerMetric::evaluate(MetricContext& context) {
  std::vector<PromptSet> sets;
  for (const fs::path& file : split_path_list(options_.string("prompts"))) {
    sets.push_back(read_prompt_set(file, options_.integer("max_prompts")));
  }
  std::unique_ptr<ImageScorer> scorer = make_image_scorer(kind_, options_, context.device);
  const std::int64_t per_prompt = options_.integer("images_per_prompt");
  const auto batch = static_cast<std::size_t>(options_.integer("batch_size"));
  const bool with_reference = options_.boolean("reference");
  Backbone& backbone = context.backbone;

  const std::string prefix = prefix_of(kind_);
  // Mean score of one prompt set's samples; the same seed for model and reference, so their
  // samples start from the same noise. Each image and its score go to context.samples.
  auto mean_score = [&](const PromptSet& set, std::uint64_t seed, bool from_reference) {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    std::vector<std::string> rows;
    for (const std::string& prompt : set.prompts) rows.insert(rows.end(), static_cast<std::size_t>(per_prompt), prompt);
    double total = 0;
    for (std::size_t begin = 0; begin < rows.size(); begin += batch) {
      const std::vector<std::string> prompts(rows.begin() + static_cast<std::ptrdiff_t>(begin),
                                             rows.begin() + static_cast<std::ptrdiff_t>(std::min(rows.size(), begin + batch)));
      const at::Tensor samples = backbone.sample(backbone.encode_prompts(prompts), generator, from_reference);
      const std::vector<at::Tensor> images = rows_of(backbone.decode_samples(samples));
      const at::Tensor scores = scorer->score(images, prompts).to(at::kCPU);
      total += scores.sum().item<double>();
      if (context.samples == nullptr) continue;
      for (std::size_t i = 0; i < images.size(); ++i) {
        const auto row = static_cast<std::int64_t>(begin + i);
        const ScoredSample sample{set.name, prompts[i], row / per_prompt, row % per_prompt, from_reference, images[i]};
        context.samples->add(sample, prefix, scores[static_cast<std::int64_t>(i)].item<double>());
      }
    }
    return total / static_cast<double>(rows.size());
  };

  const std::string main = kind_ == ScoreKind::hpsv2 ? "hpsv2_avg" : prefix;
  Figures figures;
  for (bool from_reference : {false, true}) {
    if (from_reference && !with_reference) break;
    const std::string suffix = from_reference ? "_ref" : "";
    Figures per_set;
    double sum = 0;
    for (std::size_t s = 0; s < sets.size(); ++s) {
      // Each file its own seed: its images do not depend on the other files' lengths.
      const double value = mean_score(sets[s], context.seed + 7919 * s, from_reference);
      sum += value;
      per_set.emplace_back(prefix + "_" + sets[s].name + suffix, value);
    }
    figures.emplace_back(main + suffix, sum / static_cast<double>(sets.size()));
    if (sets.size() > 1) figures.insert(figures.end(), per_set.begin(), per_set.end());
  }
  return figures;
}

std::string ScorerMetric::title(const std::string& figure) const {
  const bool reference = figure.ends_with("_ref");
  const std::string own = reference ? figure.substr(0, figure.size() - 4) : figure;
  const char* paper = nullptr;
  switch (kind_) {
    case ScoreKind::pickscore: paper = own == "pickscore" ? "PS" : nullptr; break;
    case ScoreKind::hpsv2: paper = own == "hpsv2_avg" ? "HPSv2 Avg" : nullptr; break;
    case ScoreKind::aesthetic: paper = own == "aesthetic" ? "AS" : nullptr; break;
    case ScoreKind::clip_score: paper = own == "clip_score" ? "CLIP" : nullptr; break;
  }
  if (paper == nullptr) return figure;
  return reference ? std::string(paper) + " (ref)" : std::string(paper);
}

}  // namespace dedpo::scorers
