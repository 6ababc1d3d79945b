// Key functions of the plugin interfaces: their type information lives in the core library.
#include "dedpo/plugin.hpp"

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/error.hpp"
#include "dedpo/image.hpp"
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

const BuildInfo& host_build_info() {
  static const BuildInfo info = DEDPO_BUILD_INFO;
  return info;
}

void Loss::load_state(const std::vector<double>& state) {
  if (!state.empty()) {
    throw Error("this loss keeps no running state, but the checkpoint holds " +
                std::to_string(state.size()) + " values");
  }
}

Figures Loss::end_step(const std::vector<double>& summed_statistics) {
  if (!summed_statistics.empty()) {
    throw Error("this loss gathers no step statistics, but was handed " +
                std::to_string(summed_statistics.size()) + " values");
  }
  return {};
}

std::int64_t Backbone::image_resolution() const { return 0; }

at::Tensor Backbone::encode_images(const at::Tensor&) {
  throw Error("this backbone does not work on images: it cannot encode image data");
}

at::Tensor Backbone::decode_samples(const at::Tensor&) const {
  throw Error("this backbone does not work on images: its samples have no image form");
}

std::string Backbone::encoder_fingerprint() const { return {}; }

void Backbone::write_samples(const at::Tensor& samples,
                             const std::vector<std::filesystem::path>& files) const {
  if (!samples.defined() || samples.dim() == 0 ||
      samples.size(0) != static_cast<std::int64_t>(files.size())) {
    throw Error("write_samples(): expected one file name per sample row; got " +
                std::to_string(files.size()) + " names for " +
                std::to_string(samples.defined() && samples.dim() > 0 ? samples.size(0) : 0) +
                " rows");
  }
  const at::Tensor images = decode_samples(samples);
  for (std::size_t i = 0; i < files.size(); ++i) {
    write_png(files[i], images[static_cast<std::int64_t>(i)]);
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
