#pragma once
// The images of one evaluation, kept in the run folder: samples/<evaluation>/ holds a PNG per image
// and samples.jsonl, one line per image with its scores (docs/training.md, "Samples"). An
// evaluation's folder appears whole or not at all: it is written under a temporary name and renamed.
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "dedpo/metric.hpp"
#include "run/tensorboard.hpp"

namespace dedpo {

class EvaluationSamples : public SampleSink {
 public:
  struct Entry {
    ScoredSample sample;
    // 0 for the first image of its set, prompt and index; metrics that draw another image for
    // them (other images_per_prompt or batch size: other noise) add 1, 2, ...
    int draw = 0;
    std::vector<std::pair<std::string, double>> scores;  // figure -> score (samples.jsonl: by name)
    std::string file;  // relative to the evaluation's folder: <set>/<model|reference>/p<prompt>-i<image>.png
    std::string png;   // the encoded image
  };

  void add(const ScoredSample& sample, const std::string& figure, double score) override;
  const std::vector<Entry>& entries() const { return entries_; }
  // Each image tagged samples/<its file without .png>, for TensorBoard's image dashboard.
  std::vector<TensorBoardImage> tensorboard_images() const;

  // Writes run_dir/samples/<evaluation>/, replacing an earlier folder of that name; nothing when
  // no metric handed over images. `step` and `seed` go into each samples.jsonl line.
  void write(const std::filesystem::path& run_dir, const std::string& evaluation, std::int64_t step,
             std::uint64_t seed) const;

 private:
  std::vector<Entry> entries_;
};

// The folder name of the evaluation at `step` during training: step-000040.
std::string evaluation_name(std::int64_t step);

// Removes what a killed session left in run_dir/samples: half-written folders, and evaluations of
// steps after `step` (a resumed run evaluates them again). Returns the names removed.
std::vector<std::string> remove_samples_after(const std::filesystem::path& run_dir, std::int64_t step);

}  // namespace dedpo
