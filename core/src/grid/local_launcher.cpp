// The local launcher: each run a child process of the dedpo program, a few at a time.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>

#include <fmt/format.h>

#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"
#include "grid/launchers.hpp"
#include "run/child_process.hpp"
#include "run/run_folder.hpp"

namespace dedpo {
namespace fs = std::filesystem;

std::string last_lines(const fs::path& file, std::size_t count) {
  std::error_code error;
  if (!fs::exists(file, error)) return {};
  std::ifstream in(file);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > count) lines.pop_front();
  }
  std::string out;
  for (const auto& l : lines) out += "    " + l + "\n";
  return out;
}

namespace {

volatile std::sig_atomic_t stop_signal = 0;

extern "C" void note_stop_signal(int signal) { stop_signal = signal; }

// SIGINT and SIGTERM handlers for as long as the grid runs its jobs: a signal stops the launch
// of further runs and is forwarded to the running ones, which the grid then waits for.
class StopSignals {
 public:
  StopSignals() {
    stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = note_stop_signal;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, &previous_int_);
    ::sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &previous_int_, nullptr);
    ::sigaction(SIGTERM, &previous_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

class LocalLauncher final : public GridLauncher {
 public:
  explicit LocalLauncher(int jobs) : jobs_(std::max(1, jobs)) {}
  std::string describe() const override { return fmt::format("{} at once", jobs_); }
  LaunchOutcome launch(std::deque<GridJob> queue) override;

 private:
  int jobs_;
};

LaunchOutcome LocalLauncher::launch(std::deque<GridJob> queue) {
  const StopSignals signals;
  std::map<pid_t, std::pair<GridJob, std::chrono::steady_clock::time_point>> running;
  LaunchOutcome outcome;
  std::size_t done = 0, total = queue.size();
  while (!queue.empty() || !running.empty()) {
    if (stop_signal != 0 && outcome.stopped_by == 0) {
      outcome.stopped_by = stop_signal;
      outcome.not_started = queue.size();
      queue.clear();
      std::cerr << fmt::format("grid: signal {} ({}): stopping {} running runs\n",
                               static_cast<int>(outcome.stopped_by),
                               strsignal(outcome.stopped_by), running.size());
      for (const auto& entry : running) ::kill(entry.first, outcome.stopped_by);
    }
    while (!queue.empty() && static_cast<int>(running.size()) < jobs_) {
      GridJob job = std::move(queue.front());
      queue.pop_front();
      try {
        claim_run_dir(job.dir);
        pid_t pid = spawn(job.args, job.dir / "stdout.txt");
        running.emplace(pid, std::make_pair(std::move(job), std::chrono::steady_clock::now()));
      } catch (const Error& error) {
        ++outcome.failures;
        ++done;
        std::cerr << fmt::format("[{}/{}] FAILED {}: {}\n", done, total, job.name, error.what());
      }
    }
    if (running.empty()) continue;
    int status = 0;
    // Polled, so that a signal arriving at any moment is forwarded within a tenth of a second.
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid == 0 || (pid < 0 && errno == EINTR)) {
      const timespec pause{0, 100'000'000};
      ::nanosleep(&pause, nullptr);
      continue;
    }
    if (pid < 0) throw Error(std::string("waitpid: ") + std::strerror(errno));
    auto it = running.find(pid);
    if (it == running.end()) continue;
    auto [job, started] = std::move(it->second);
    running.erase(it);
    ++done;
    int code = WIFEXITED(status) ? WEXITSTATUS(status)
                                 : (WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::error_code error;
    if (code == 0 && fs::exists(job.dir / kResultsFile, error)) {
      std::cerr << fmt::format("[{}/{}] done {} ({:.1f} s)\n", done, total, job.name, seconds);
    } else if (outcome.stopped_by != 0) {
      ++outcome.failures;
      std::cerr << fmt::format("[{}/{}] stopped {} (exit code {})\n", done, total, job.name, code);
    } else {
      ++outcome.failures;
      std::cerr << fmt::format("[{}/{}] FAILED {} (exit code {}); last lines of {}:\n{}", done,
                               total, job.name, code, (job.dir / "stdout.txt").string(),
                               last_lines(job.dir / "stdout.txt", 10));
    }
  }
  return outcome;
}


}  // namespace

std::unique_ptr<GridLauncher> make_local_launcher(const GridControl& control) {
  return std::make_unique<LocalLauncher>(control.jobs);
}

}  // namespace dedpo
