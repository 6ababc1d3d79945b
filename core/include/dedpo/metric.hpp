#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dedpo/figures.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/plugin.hpp"

namespace dedpo {

// One image a metric sampled and scored, handed to the run, which saves it for sample sheets and
// TensorBoard (docs/training.md, "Samples").
struct ScoredSample {
  std::string set;                 // the prompt set's name (its file's stem)
  std::string prompt;
  std::int64_t prompt_index = 0;   // the prompt's position in its set
  std::int64_t image_index = 0;    // among the images of that prompt
  bool reference = false;          // drawn by the frozen reference model
  at::Tensor image;                // uint8 [H, W, 3] on the CPU
};

class SampleSink {
 public:
  virtual ~SampleSink() = default;
  // `score`: the image's score under `figure`, the metric's name for one image's score
  // ("pickscore"). Metrics that draw the same image (same set, prompt, index and noise) add their
  // scores to one saved image.
  virtual void add(const ScoredSample& sample, const std::string& figure, double score) = 0;
};

struct MetricContext {
  Backbone& backbone;        // trained model plus its frozen reference
  const PairDataset* data;   // the training pairs, when the run had any
  std::uint64_t seed = 0;    // evaluation seed: the same for every run of a grid
  c10::Device device = c10::kCPU;  // the run's device: where a scorer of the metric's own computes
  SampleSink* samples = nullptr;   // where to hand the images it scores; null: nobody keeps them
};

class Metric : public Plugin {
 public:
  static constexpr PluginKind kind = PluginKind::metric;

  // Named figures, written to the run's results and the grid's results.csv.
  virtual Figures evaluate(MetricContext& context) = 0;

  // The column title of one of its figures in grid summaries (the paper's "PS" for
  // "pickscore"); the figure's own name by default. Runs record the titles in results.json.
  virtual std::string title(const std::string& figure) const { return figure; }
};

}  // namespace dedpo
