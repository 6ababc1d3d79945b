#include "run/run_folder.hpp"

#include <cmath>
#include <ctime>

#include <fmt/format.h>

#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string now_text() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M:%S", &tm);
  return buffer;
}

}  // namespace

fs::path cache_dir(const Experiment& experiment) { return experiment.run.output / ".cache"; }

fs::path make_run_dir(const Experiment& experiment, const RunControl& control) {
  if (!control.run_dir.empty()) {
    fs::create_directories(control.run_dir);
    return fs::absolute(control.run_dir);
  }
  const fs::path& output = experiment.run.output;
  fs::create_directories(output);
  for (int n = 1;; ++n) {
    fs::path candidate = output / fmt::format("{}-{}", experiment.run.name, n);
    std::error_code error;
    if (fs::create_directory(candidate, error)) return fs::absolute(candidate);
    if (error) throw Error(candidate.string() + ": cannot create run folder: " + error.message());
  }
}

void RunLog::line(const std::string& text) {
  if (out_.is_open()) {
    out_ << "[" << now_text() << "] " << text << "\n";
    out_.flush();
  }
}

json figures_json(const Figures& figures) {
  json object = json::object();
  for (const auto& [name, value] : figures) object[name] = value;
  return object;
}

void truncate_metrics(const fs::path& file, std::int64_t step) {
  std::error_code error;
  if (!fs::exists(file, error)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      json object = json::parse(line);
      if (object.value("step", std::int64_t{0}) > step) continue;
    } catch (const std::exception&) {
      continue;  // a partial line from a killed run
    }
    kept += line + "\n";
  }
  write_file_atomic(file, kept);
}

RunResult read_result(const fs::path& run_dir) {
  json results = json::parse(read_file(run_dir / kResultsFile));
  RunResult result;
  result.run_dir = run_dir;
  for (auto& [name, value] : results.at("metrics").items()) {
    result.metrics.emplace_back(name, value.is_number() ? value.get<double>() : NAN);
  }
  result.steps_done = results.value("steps", std::int64_t{0});
  result.skipped_steps = results.value("skipped_steps", std::int64_t{0});
  result.finished = true;
  return result;
}

Experiment load_run_experiment(const fs::path& run_dir, std::span<const Override> overrides,
                               PluginRegistry& registry) {
  const fs::path config = run_dir / kConfigFile;
  std::error_code error;
  if (!fs::exists(config, error)) {
    throw Error(run_dir.string() + ": not a run folder (no " + kConfigFile + ")");
  }
  return load_experiment_text(read_file(config), config.string(), run_dir, overrides, registry);
}

}  // namespace dedpo
