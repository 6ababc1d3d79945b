#include "run/inputs.hpp"

#include <nlohmann/json.hpp>

#include "dedpo/digest.hpp"
#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string init_identity(const InitSettings& init, PluginRegistry& registry) {
  if (!init.weights.empty()) return "weights " + file_digest(init.weights);
  if (!init.experiment.empty()) {
    return "experiment " + run_inputs_key(load_experiment(init.experiment, {}, registry), registry);
  }
  return "backbone's own";
}

std::string plugin_versions(const Experiment& experiment, const PluginRegistry& registry) {
  std::string text;
  auto add = [&](const std::optional<PluginSlot>& slot) {
    if (!slot) return;
    const PluginEntry& entry = registry.find(slot->kind, slot->plugin);
    text += slot->plugin + " " + entry.descriptor->version + "\n";
  };
  add(experiment.backbone);
  add(experiment.data);
  add(experiment.annotator);
  add(experiment.loss);
  for (const PluginSlot& metric : experiment.metrics) add(metric);
  return text;
}

json read_inputs(const fs::path& file) {
  try {
    return json::parse(read_file(file));
  } catch (const json::exception& problem) {
    throw Error(file.string() + ": malformed: " + problem.what());
  }
}

}  // namespace

std::string run_inputs_key(const Experiment& experiment, PluginRegistry& registry) {
  Digest key;
  key.add("config\n" + experiment.resolved_toml);
  key.add("\ninit\n" + init_identity(experiment.init, registry));
  key.add("\nplugins\n" + plugin_versions(experiment, registry));
  return key.hex();
}

void write_run_inputs(const fs::path& run_dir, const std::string& key) {
  write_file_atomic(run_dir / kInputsFile, json{{"key", key}}.dump(2) + "\n");
}

std::string read_run_inputs_key(const fs::path& run_dir) {
  const fs::path file = run_dir / kInputsFile;
  std::error_code error;
  if (!fs::exists(file, error)) return {};
  return read_inputs(file).value("key", std::string());
}

void record_data_fingerprint(const fs::path& run_dir, const std::string& fingerprint) {
  const fs::path file = run_dir / kInputsFile;
  std::error_code error;
  json inputs = fs::exists(file, error) ? read_inputs(file) : json::object();
  if (inputs.contains("data") && inputs["data"] != fingerprint) {
    throw Error(run_dir.string() + ": the data now differs from the data this run started on (" +
                "fingerprint " + inputs["data"].get<std::string>() + ", now " + fingerprint +
                "); start a new run instead of resuming this one");
  }
  inputs["data"] = fingerprint;
  write_file_atomic(file, inputs.dump(2) + "\n");
}

}  // namespace dedpo
