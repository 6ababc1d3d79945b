#pragma once
#include <cstdint>
#include <filesystem>

#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/plugin.hpp"

namespace dedpo {

struct DatasetContext {
  Backbone& backbone;  // prepared; its weights are the reference
  std::filesystem::path cache_dir;
  std::uint64_t seed = 0;
};

// A dataset provides preference pairs (preference objectives) and/or single samples (the
// denoising objective). Human labels are part of the data; which of them the trainer may use is
// decided by [train] labelled_fraction.
class Dataset : public Plugin {
 public:
  static constexpr PluginKind kind = PluginKind::dataset;

  virtual PairDataset pairs(DatasetContext& context);      // default: Error "has no pairs"
  virtual SampleDataset samples(DatasetContext& context);  // default: Error "has no samples"
};

}  // namespace dedpo
