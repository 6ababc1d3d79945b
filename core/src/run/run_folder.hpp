#pragma once
// A run folder and its files: the folder itself, log.txt, metrics.jsonl (and its TensorBoard
// copy), results.json.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "dedpo/figures.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/runner.hpp"
#include "run/tensorboard.hpp"

namespace dedpo {

// <output>/.cache: what runs of one output folder share (prompts, annotations, [init] runs).
std::filesystem::path cache_dir(const Experiment& experiment);

// control.run_dir when given (claimed as below), else a new <output>/<name>-<n>.
std::filesystem::path make_run_dir(const Experiment& experiment, const RunControl& control);

// Makes `dir` a run folder: creates it with dedpo's marker file (kRunMarkerFile), or accepts a
// folder that already carries the marker, or an empty one (marked then). Any other folder is
// refused (Error): a run never writes into data it did not make.
void claim_run_dir(const std::filesystem::path& dir);

// The run folder's lock (flock on kRunLockFile), held while this process writes the folder. A
// folder that another process holds is refused (Error naming that process's pid); the kernel
// releases the lock when its holder dies, however it dies.
class RunFolderLock {
 public:
  explicit RunFolderLock(const std::filesystem::path& dir);
  ~RunFolderLock();
  RunFolderLock(const RunFolderLock&) = delete;
  RunFolderLock& operator=(const RunFolderLock&) = delete;

 private:
  int fd_ = -1;
};

// log.txt: time-stamped lines, appended.
class RunLog {
 public:
  RunLog() = default;
  explicit RunLog(const std::filesystem::path& file) : out_(file, std::ios::app) {}
  void line(const std::string& text);

 private:
  std::ofstream out_;
};

// metrics.jsonl, a line at a time, and with [log] tensorboard the same numbers as TensorBoard
// scalars in <run>/tensorboard. Every line is handed to the operating system as it is written, so
// a killed run loses nothing it logged.
class MetricsLog {
 public:
  // `first_step`: the first step this session logs (1, or a resumed checkpoint's step + 1).
  MetricsLog(const std::filesystem::path& run_dir, const LogSettings& settings,
             std::int64_t first_step);
  // `line` holds "step"; its other numbers and booleans (as 0 or 1) become scalars of that name.
  void write(const nlohmann::json& line);
  // With [log] tensorboard: `images` at `step` in the event file; nothing otherwise.
  void images(std::int64_t step, const std::vector<TensorBoardImage>& images);

 private:
  std::ofstream jsonl_;
  std::optional<TensorBoardWriter> tensorboard_;
};

nlohmann::json figures_json(const Figures& figures);
// Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites what follows).
void truncate_metrics(const std::filesystem::path& file, std::int64_t step);
// The result a finished run left in results.json.
RunResult read_result(const std::filesystem::path& run_dir);

}  // namespace dedpo
