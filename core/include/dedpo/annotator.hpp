#pragma once
#include <cstdint>

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
};

// A synthetic annotator: ĝ(y) = its probability that A is preferred, for every pair.
// The core caches the result per (annotator and options, data, backbone, seed, and the labelled
// set where uses_labels()).
class Annotator : public Plugin {
 public:
  static constexpr PluginKind kind = PluginKind::annotator;

  virtual at::Tensor annotate(AnnotatorContext& context) = 0;  // [N] float in [0, 1]
  // True when the result depends on which pairs are labelled (self-training does).
  virtual bool uses_labels() const { return false; }
};

}  // namespace dedpo
