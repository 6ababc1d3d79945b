#pragma once
// A run folder and its files: the folder itself, log.txt, metrics.jsonl, results.json.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "dedpo/figures.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/runner.hpp"

namespace dedpo {

// <output>/.cache: what runs of one output folder share (prompts, annotations, [init] runs).
std::filesystem::path cache_dir(const Experiment& experiment);

// control.run_dir when given, else a new <output>/<name>-<n>.
std::filesystem::path make_run_dir(const Experiment& experiment, const RunControl& control);

// log.txt: time-stamped lines, appended.
class RunLog {
 public:
  RunLog() = default;
  explicit RunLog(const std::filesystem::path& file) : out_(file, std::ios::app) {}
  void line(const std::string& text);

 private:
  std::ofstream out_;
};

nlohmann::json figures_json(const Figures& figures);
// Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites what follows).
void truncate_metrics(const std::filesystem::path& file, std::int64_t step);
// The result a finished run left in results.json.
RunResult read_result(const std::filesystem::path& run_dir);

}  // namespace dedpo
