#include "run/init.hpp"

#include "dedpo/files.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "run/checkpoint.hpp"
#include "run/inputs.hpp"

namespace dedpo {
namespace fs = std::filesystem;

InitialWeights resolve_init(const Experiment& experiment, PluginRegistry& registry, RunLog& log) {
  InitialWeights info;
  const InitSettings& init = experiment.init;
  if (!init.weights.empty()) {  // the experiment's loading checked that it exists
    info.file = init.weights;
    info.key = "weights:" + init.weights.string();
    return info;
  }
  if (init.experiment.empty()) return info;
  const std::string init_experiment = init.experiment.string();
  Experiment sub = load_experiment(init_experiment, {}, registry);
  // Everything the [init] run's weights depend on, so an edited [init] chain trains anew.
  std::string key = run_inputs_key(sub, registry);
  fs::path root = cache_dir(experiment) / "init";
  fs::create_directories(root);
  fs::path dir = root / key;
  info.file = dir / kWeightsFile;
  info.key = "experiment:" + key;
  FileLock lock(root / (key + ".lock"));
  if (!fs::exists(dir / kResultsFile)) {
    log.line("training the [init] experiment " + init_experiment + " into " + dir.string());
    RunControl control;
    control.run_dir = dir;
    control.progress_bar = false;
    std::error_code error;
    if (fs::exists(dir / kConfigFile, error) && !latest_checkpoint(dir).empty()) {
      resume_run(dir, registry, control);
    } else {
      run_experiment(sub, registry, control);
    }
  } else {
    log.line("[init] experiment " + init_experiment + ": cached in " + dir.string());
  }
  if (!fs::exists(info.file)) {
    throw Error("[init] experiment " + init_experiment + " left no weights file " +
                info.file.string());
  }
  return info;
}

}  // namespace dedpo
