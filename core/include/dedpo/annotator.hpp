#pragma once
#include <cstdint>
#include <filesystem>

#include <ATen/core/Tensor.h>

#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/services.hpp"

namespace dedpo {

struct AnnotatorContext {
  const PairDataset& data;
  const at::Tensor& is_labelled;  // [N] bool: pairs whose human label training may use
  Backbone& backbone;             // prepared; its weights are the reference
  ExperimentServices& services;
  std::uint64_t seed = 0;
  // A folder the annotator may keep files in across runs of the experiment's output folder
  // (journals of answers, downloads); shared by every annotator and run there, so file names
  // must say whose they are. The trainer creates it.
  std::filesystem::path cache_dir;
  c10::Device device = c10::kCPU;  // the run's device: where a model of the annotator's own computes
  // A rank's shard of a data-parallel run (Annotator::shardable): `data` holds the pairs
  // [first_pair, first_pair + data.size()) of a data set of total_pairs. An annotator that draws
  // randomness per pair draws it for all total_pairs and takes the shard's part, so its
  // probabilities do not depend on the sharding. total_pairs = 0: `data` is the whole data set.
  std::int64_t first_pair = 0;
  std::int64_t total_pairs = 0;
};

// A synthetic annotator: ĝ(y) = its probability that A is preferred, for every pair.
// The core caches the result per (annotator and options, data, backbone, seed, and where
// uses_labels() the labelled set and the [train] settings its trainings use).
class Annotator : public Plugin {
 public:
  static constexpr PluginKind kind = PluginKind::annotator;

  virtual at::Tensor annotate(AnnotatorContext& context) = 0;  // [N] float in [0, 1]
  // True when the result depends on which pairs are labelled, and on the [train] settings it
  // trains with through services.train (self-training does).
  virtual bool uses_labels() const { return false; }
  // False when annotating is as cheap as reading a cache (labels read from a file): the result
  // is then never cached, so edits to the annotator's inputs always take effect.
  virtual bool cacheable() const { return true; }
  // True when each pair's probability depends on that pair alone, so a data-parallel run may
  // annotate disjoint shards of the pairs on its ranks: annotate() then sees a PairDataset of its
  // shard (its own fingerprint), the shard's is_labelled, and where the shard lies
  // (AnnotatorContext::first_pair, total_pairs). An annotator that learns from the
  // labels never is; one whose cost is not the rank's compute (a remote judge) need not be.
  virtual bool shardable() const { return !uses_labels(); }
};

}  // namespace dedpo
