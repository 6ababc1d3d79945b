// The entry points of dedpo/host/runner.hpp for single runs: run, resume, eval.
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dedpo/files.hpp"
#include "dedpo/host/assemble.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "run/checkpoint.hpp"
#include "run/init.hpp"
#include "run/labelled_split.hpp"
#include "run/run_folder.hpp"
#include "run/samples.hpp"
#include "run/training_run.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

RunResult run_experiment(const Experiment& experiment, PluginRegistry& registry,
                         const RunControl& control) {
  return execute_run(experiment, registry, control, RunStart::fresh);
}

RunResult resume_run(const fs::path& run_dir, PluginRegistry& registry, const RunControl& control) {
  fs::path dir = fs::absolute(run_dir);
  std::error_code error;
  if (fs::exists(dir / kResultsFile, error)) return read_result(dir);
  Experiment experiment = load_run_experiment(dir, {}, registry);
  RunControl resumed = control;
  resumed.run_dir = dir;
  return execute_run(experiment, registry, resumed, RunStart::resume);
}

Figures evaluate_run(const fs::path& run_dir, std::span<const Override> overrides,
                     PluginRegistry& registry) {
  const fs::path dir = fs::absolute(run_dir);
  Experiment experiment = load_run_experiment(dir, overrides, registry);
  const RunFolderLock lock(dir);  // results.json is rewritten below
  std::error_code error;
  if (!fs::exists(dir / kWeightsFile, error) || !fs::exists(dir / kResultsFile, error)) {
    throw Error(dir.string() + ": the run has not finished (no " + kWeightsFile + " / " +
                kResultsFile + "); `dedpo run --resume " + dir.string() + "` completes it");
  }
  if (experiment.metrics.empty()) throw Error(dir.string() + ": the experiment has no [[metrics]]");
  RunLog log(dir / kLogFile);
  log.line("eval: evaluating the trained model of the final checkpoint");

  // The backbone as the run had it (reference = the run's initial weights), its model restored
  // from the final checkpoint.
  Assembly parts = assemble(experiment, registry, resolve_init(experiment, registry, log).file);
  load_trained_model(dir, *parts.backbone);
  std::optional<PairDataset> pairs;
  if (experiment.train.objective == Objective::preference) {
    DatasetContext data_context{*parts.backbone, cache_dir(experiment) / "data",
                                experiment.run.seed};
    pairs = parts.dataset->pairs(data_context);
    split_for_training(*pairs, experiment.train, experiment.run.seed);  // the run's pairs
  }
  EvaluationSamples samples;
  const Figures figures = evaluate_metrics(parts.metrics, *parts.backbone,
                                           pairs ? &*pairs : nullptr, experiment.eval.seed,
                                           experiment.run.device, &samples);

  // New figures join (or replace) the run's results, so reports show them beside the others; the
  // images replace the final evaluation's, which the figures replace too.
  json results = json::parse(read_file(dir / kResultsFile));
  samples.write(dir, kFinalSamples, results.value("steps", std::int64_t{0}), experiment.eval.seed);
  for (const auto& [name, value] : figures) results["metrics"][name] = value;
  const json titles = figure_titles(parts.metrics, figures);
  for (const auto& [name, title] : titles.items()) results["titles"][name] = title;
  write_file_atomic(dir / kResultsFile, results.dump(2) + "\n");
  std::string summary = "eval: finished";
  for (const auto& [name, value] : figures) summary += fmt::format(", {} = {:.6g}", name, value);
  log.line(summary);
  // A run of a grid: its report (results.csv beside the runs) is rewritten.
  if (fs::exists(dir.parent_path() / "results.csv", error)) write_report(dir.parent_path());
  return figures;
}

}  // namespace dedpo
