#pragma once
// One assembly for every entry point (run, resume, eval, sample): the plugins an experiment
// names, built fresh, and its backbone prepared.
#include <filesystem>
#include <memory>
#include <vector>

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/metric.hpp"

namespace dedpo {

struct Assembly {
  BackboneContext backbone_context;  // how the backbone was prepared (for fresh copies)
  std::shared_ptr<Backbone> backbone;  // prepared
  std::shared_ptr<Dataset> dataset;
  std::shared_ptr<Annotator> annotator;  // null without [annotator]
  std::shared_ptr<Loss> loss;            // null without [loss]
  std::vector<std::shared_ptr<Metric>> metrics;
};

// Sets LibTorch's intra-op threads from [run] threads, builds every plugin and prepares the
// backbone from `initial_weights` (empty: the backbone's own).
Assembly assemble(const Experiment& experiment, const PluginRegistry& registry,
                  const std::filesystem::path& initial_weights);

// A new backbone from the experiment's [backbone], prepared with `context`.
std::shared_ptr<Backbone> make_backbone(const Experiment& experiment,
                                        const PluginRegistry& registry,
                                        const BackboneContext& context);

}  // namespace dedpo
