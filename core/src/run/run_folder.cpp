#include "run/run_folder.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
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

namespace {

void write_marker(const fs::path& dir) {
  write_file_atomic(dir / kRunMarkerFile, "a run folder made by dedpo\n");
}

}  // namespace

void claim_run_dir(const fs::path& dir) {
  std::error_code error;
  if (fs::exists(dir / kRunMarkerFile, error)) return;
  if (fs::exists(dir, error) || fs::is_symlink(dir, error)) {
    if (!fs::is_directory(dir, error)) {
      throw Error(dir.string() + ": exists and is not a folder; refusing to use it as a run folder");
    }
    if (!fs::is_empty(dir, error)) {
      throw Error(dir.string() + ": this folder holds files that no dedpo run made (it has no " +
                  kRunMarkerFile + " marker); refusing to write into it. Give a new or empty "
                  "folder (or, for a run folder made by a dedpo before markers, create an empty " +
                  kRunMarkerFile + " file in it)");
    }
  }
  fs::create_directories(dir, error);
  if (error) throw Error(dir.string() + ": cannot create run folder: " + error.message());
  write_marker(dir);
}

fs::path make_run_dir(const Experiment& experiment, const RunControl& control) {
  if (!control.run_dir.empty()) {
    claim_run_dir(control.run_dir);
    return fs::absolute(control.run_dir);
  }
  const fs::path& output = experiment.run.output;
  fs::create_directories(output);
  for (int n = 1;; ++n) {
    fs::path candidate = output / fmt::format("{}-{}", experiment.run.name, n);
    std::error_code error;
    if (fs::create_directory(candidate, error)) {
      write_marker(candidate);
      return fs::absolute(candidate);
    }
    if (error) throw Error(candidate.string() + ": cannot create run folder: " + error.message());
  }
}

RunFolderLock::RunFolderLock(const fs::path& dir) {
  const fs::path file = dir / kRunLockFile;
  fd_ = ::open(file.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(file.string() + ": cannot open lock file: " + std::strerror(errno));
  int status = 0;
  while ((status = ::flock(fd_, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
  }
  if (status != 0) {
    const int problem = errno;
    char text[32] = {};
    const ssize_t n = ::pread(fd_, text, sizeof text - 1, 0);
    ::close(fd_);
    if (problem != EWOULDBLOCK) {
      throw Error(file.string() + ": cannot lock: " + std::strerror(problem));
    }
    const std::string holder = n > 0 ? std::string(text, static_cast<std::size_t>(n)) : "unknown";
    throw Error(dir.string() + ": process " + holder.substr(0, holder.find('\n')) +
                " is writing this run folder; refusing a second writer (wait for it, or stop it)");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    ::close(fd_);
    throw Error(file.string() + ": cannot write the lock holder's pid");
  }
}

RunFolderLock::~RunFolderLock() { ::close(fd_); }  // closing releases the flock

MetricsLog::MetricsLog(const fs::path& run_dir, const LogSettings& settings,
                       std::int64_t first_step)
    : jsonl_(run_dir / kMetricsFile, std::ios::app) {
  if (settings.tensorboard) tensorboard_.emplace(run_dir / kTensorBoardDir, first_step);
}

void MetricsLog::write(const json& line) {
  jsonl_ << line.dump() << "\n";
  jsonl_.flush();
  if (!tensorboard_) return;
  Figures scalars;
  for (const auto& [name, value] : line.items()) {
    if (name == "step") continue;
    if (value.is_number()) scalars.emplace_back(name, value.get<double>());
    if (value.is_boolean()) scalars.emplace_back(name, value.get<bool>() ? 1.0 : 0.0);
  }
  tensorboard_->scalars(line.at("step").get<std::int64_t>(), scalars);
}

void MetricsLog::images(std::int64_t step, const std::vector<TensorBoardImage>& images) {
  if (tensorboard_ && !images.empty()) tensorboard_->images(step, images);
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
