// Key functions of the plugin interfaces: their type information lives in the core library.
#include "dedpo/plugin.hpp"

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/metric.hpp"

namespace dedpo {

const char* to_string(PluginKind kind) {
  switch (kind) {
    case PluginKind::backbone: return "backbone";
    case PluginKind::annotator: return "annotator";
    case PluginKind::loss: return "loss";
    case PluginKind::dataset: return "dataset";
    case PluginKind::metric: return "metric";
  }
  return "unknown";
}

Plugin::~Plugin() = default;

Error::~Error() = default;

void Loss::load_state(const std::vector<double>& state) {
  if (!state.empty()) {
    throw Error("this loss keeps no running state, but the checkpoint holds " +
                std::to_string(state.size()) + " values");
  }
}

PairDataset Dataset::pairs(DatasetContext&) {
  throw Error("this dataset provides no preference pairs; use it with [train] objective = "
              "\"denoising\", or choose a pair dataset");
}

SampleDataset Dataset::samples(DatasetContext&) {
  throw Error("this dataset provides no single samples; the denoising objective needs a sample "
              "dataset");
}

}  // namespace dedpo
