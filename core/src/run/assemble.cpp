#include "dedpo/host/assemble.hpp"

#include <algorithm>
#include <thread>

#include <ATen/Parallel.h>

#include "dedpo/host/accelerator.hpp"
#include "run/run_folder.hpp"

namespace dedpo {

namespace {

void apply_threads(const RunSettings& run) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(run.threads > 0 ? run.threads : cores);
}


template <class T>
std::shared_ptr<T> make(const PluginRegistry& registry, const std::optional<PluginSlot>& slot) {
  return slot ? registry.create<T>(slot->plugin, slot->options) : nullptr;
}

}  // namespace

std::shared_ptr<Backbone> make_backbone(const Experiment& experiment,
                                        const PluginRegistry& registry,
                                        const BackboneContext& context) {
  std::shared_ptr<Backbone> backbone = make<Backbone>(registry, experiment.backbone);
  if (!backbone) throw Error("the experiment has no [backbone] table");
  backbone->prepare(context);
  return backbone;
}

Assembly assemble(const Experiment& experiment, const PluginRegistry& registry,
                  const std::filesystem::path& initial_weights) {
  apply_threads(experiment.run);
  apply_device_numerics({.deterministic = experiment.run.deterministic, .tf32 = experiment.run.tf32});
  reset_peak_device_memory(experiment.run.device);
  Assembly parts;
  parts.backbone_context.device = experiment.run.device;
  parts.backbone_context.cache_dir = cache_dir(experiment) / "backbone";
  parts.backbone_context.initial_weights = initial_weights;
  parts.backbone_context.seed = experiment.run.seed;
  parts.backbone = make_backbone(experiment, registry, parts.backbone_context);
  parts.dataset = make<Dataset>(registry, experiment.data);
  parts.annotator = make<Annotator>(registry, experiment.annotator);
  parts.loss = make<Loss>(registry, experiment.loss);
  for (const PluginSlot& slot : experiment.metrics) {
    parts.metrics.push_back(registry.create<Metric>(slot.plugin, slot.options));
  }
  return parts;
}

}  // namespace dedpo
