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

struct MetricContext {
  Backbone& backbone;        // trained model plus its frozen reference
  const PairDataset* data;   // the training pairs, when the run had any
  std::uint64_t seed = 0;    // evaluation seed: the same for every run of a grid
  c10::Device device = c10::kCPU;  // the run's device: where a scorer of the metric's own computes
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
