#pragma once
// The annotator and metric classes behind the plugin folders scorers/{clip_score,pickscore,hpsv2,
// aesthetic}, one library per scorer registering both. They differ
// only in the score (ScoreKind) and their option defaults.
//
// Scores s(image, prompt):
//   clip_score  100 · cos(image, prompt)              (torchmetrics' CLIPScore scale, not clamped)
//   pickscore   exp(logit_scale) · cos                (PickScore's definition)
//   hpsv2       100 · cos                             (the HPSv2 benchmark's scale)
//   aesthetic   LAION aesthetic head on the L2-normalised CLIP image embedding (prompt unused)
// Annotators: ĝ = σ((s_A − s_B) / τ); with τ = 1, pickscore's ĝ is PickScore's own preference
// probability (a softmax over the two images).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dedpo/annotator.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/options.hpp"

namespace dedpo::scorers {

enum class ScoreKind { clip_score, pickscore, hpsv2, aesthetic };

// One score per (image, prompt) row, loaded from a plugin's options (path, weights, head).
class ImageScorer {
 public:
  virtual ~ImageScorer() = default;
  // uint8 [H, W, 3] images and their prompts -> [N] float.
  virtual at::Tensor score(const std::vector<at::Tensor>& images, const std::vector<std::string>& prompts) = 0;
  virtual void to(c10::Device device) = 0;  // where the scorer's models run
};

// The scorer of `kind` with its model on `device` (scores come back on the host).
std::unique_ptr<ImageScorer> make_image_scorer(ScoreKind kind, const Options& options, c10::Device device);

// Options every scorer plugin has; the aesthetic ones add "head".
#define DEDPO_SCORER_OPTIONS                                                                           \
  {"path", OptionType::string, nullptr,                                                                \
   "Scorer folder: config.json (transformers CLIPConfig), vocab.json, merges.txt, optional "           \
   "preprocessor_config.json, model.safetensors."},                                                     \
      {"weights", OptionType::string, "\"\"",                                                          \
       "Weights file (transformers or OpenCLIP names, safetensors); \"\" = <path>/model.safetensors."}
#define DEDPO_AESTHETIC_HEAD_OPTION                                                                    \
  {"head", OptionType::string, nullptr,                                                                \
   "LAION aesthetic head (safetensors; layers.0/2/4/6/7 Linear weights and biases)."}

inline constexpr OptionSpec kImageTextAnnotatorOptions[] = {
    DEDPO_SCORER_OPTIONS,
    {"tau", OptionType::real, "1.0", "Temperature τ of ĝ = σ((s_A − s_B) / τ)."},
    {"batch_size", OptionType::integer, "16", "Pairs scored at once."},
};
inline constexpr OptionSpec kAestheticAnnotatorOptions[] = {
    DEDPO_SCORER_OPTIONS,
    DEDPO_AESTHETIC_HEAD_OPTION,
    {"tau", OptionType::real, "1.0", "Temperature τ of ĝ = σ((s_A − s_B) / τ); scores span about 1–10."},
    {"batch_size", OptionType::integer, "16", "Pairs scored at once."},
};

#define DEDPO_SCORER_METRIC_OPTIONS                                                                    \
  {"prompts", OptionType::string, nullptr,                                                             \
   "Prompt files, comma-separated: one prompt per line, or a JSON list (.json). Several files "        \
   "(the HPDv2 benchmark's four styles) are reported each and averaged."},                              \
      {"images_per_prompt", OptionType::integer, "1", "Images sampled per prompt."},                   \
      {"max_prompts", OptionType::integer, "0", "Use the first N prompts of each file; 0 = all."},     \
      {"batch_size", OptionType::integer, "8", "Images sampled and scored at once."},                  \
      {"reference", OptionType::boolean, "false",                                                      \
       "Also score the reference model's samples (same seeds): figures <name>_ref."}

inline constexpr OptionSpec kImageTextMetricOptions[] = {DEDPO_SCORER_OPTIONS, DEDPO_SCORER_METRIC_OPTIONS};
inline constexpr OptionSpec kAestheticMetricOptions[] = {DEDPO_SCORER_OPTIONS, DEDPO_AESTHETIC_HEAD_OPTION,
                                                         DEDPO_SCORER_METRIC_OPTIONS};

class ScorerAnnotator : public Annotator {
 public:
  ScorerAnnotator(const Options& options, ScoreKind kind);
  at::Tensor annotate(AnnotatorContext& context) override;

 private:
  Options options_;
  ScoreKind kind_;
  double tau_;
  std::int64_t batch_size_;
};

// Samples images_per_prompt images per prompt from the trained model (and the reference), scores
// them and reports the mean per prompt file and over files (files weigh equally).
//   figures: <main> (mean over files), <prefix>_<file stem> per file when there are several, and
//   the same with "_ref" when reference = true. <main> is "hpsv2_avg" for HPSv2 (the paper's HPSv2
//   Avg), else the prefix: "clip_score", "pickscore", "aesthetic".
class ScorerMetric : public Metric {
 public:
  ScorerMetric(const Options& options, ScoreKind kind);
  Figures evaluate(MetricContext& context) override;
  // The paper's column names: "PS", "HPSv2 Avg", "AS", "CLIP"; "_ref" figures add " (ref)".
  std::string title(const std::string& figure) const override;

 private:
  Options options_;
  ScoreKind kind_;
};

template <ScoreKind K>
class ScorerAnnotatorOf : public ScorerAnnotator {
 public:
  explicit ScorerAnnotatorOf(const Options& options) : ScorerAnnotator(options, K) {}
};
template <ScoreKind K>
class ScorerMetricOf : public ScorerMetric {
 public:
  explicit ScorerMetricOf(const Options& options) : ScorerMetric(options, K) {}
};

// Where pixels come from for a pair dataset: its source files, else backbone.decode_samples.
std::vector<at::Tensor> pair_images(const PairDataset& data, Backbone& backbone, bool side_a, std::int64_t begin,
                                    std::int64_t end);

}  // namespace dedpo::scorers
