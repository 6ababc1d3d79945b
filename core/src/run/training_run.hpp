#pragma once
// One training run in its folder, fresh or resumed: assemble, load the data, train with
// periodic logs, evaluations and checkpoints, then save, evaluate and write results.json.
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/host/runner.hpp"

namespace dedpo {

enum class RunStart { fresh, resume };

RunResult execute_run(const Experiment& experiment, PluginRegistry& registry,
                      const RunControl& control, RunStart start);

// Every metric's figures on the backbone as it is, in the order of [[metrics]]; the images they
// score go to `samples` (when not null).
Figures evaluate_metrics(std::vector<std::shared_ptr<Metric>>& metrics, Backbone& backbone,
                         const PairDataset* pairs, std::uint64_t seed, c10::Device device,
                         SampleSink* samples);

// results.json "titles": the summary column titles the metrics declare for their figures, where
// they differ from the figures' names.
nlohmann::json figure_titles(const std::vector<std::shared_ptr<Metric>>& metrics,
                             const Figures& figures);

}  // namespace dedpo
