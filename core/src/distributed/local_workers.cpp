// `dedpo run --nproc N`: the workers of a data-parallel run on this host, as torchrun would start
// them (the same variables), watched until all have ended.
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <map>

#include <fmt/format.h>

#include "dedpo/error.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "run/child_process.hpp"
#include "run/run_folder.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

// How a worker ended, as a shell would say it.
std::string ending(int status) {
  if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("status {}", status);
}

// Runs the workers, each as `program run ARGUMENTS --no-progress`, until all have ended.
void run_workers(const fs::path& run_dir, const LocalWorkers& workers,
                 const std::vector<std::string>& arguments) {
  if (workers.processes < 1) {
    throw Error(fmt::format("--nproc {}: expected at least 1 process", workers.processes));
  }
  const int port = free_local_port();
  std::map<pid_t, int> running;  // pid -> rank
  for (int rank = 0; rank < workers.processes; ++rank) {
    std::vector<std::string> args{workers.program.string(), "run"};
    args.insert(args.end(), arguments.begin(), arguments.end());
    args.push_back("--no-progress");
    const std::vector<std::string> environment{
        "RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(workers.processes),
        "LOCAL_RANK=" + std::to_string(rank), "MASTER_ADDR=127.0.0.1",
        "MASTER_PORT=" + std::to_string(port)};
    const fs::path output = rank == 0 ? fs::path() : run_dir / fmt::format("log-rank{}.txt", rank);
    running.emplace(spawn(args, output, environment), rank);
  }
  std::string failure;
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) throw Error(std::string("waitpid: ") + std::strerror(errno));
    const auto it = running.find(pid);
    if (it == running.end()) continue;
    const int rank = it->second;
    running.erase(it);
    if (failure.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      // The others would wait for it until the collective timeout: stopped now instead.
      failure = fmt::format("rank {} of {} failed ({}); stopped the other ranks. Its log: {}",
                            rank, workers.processes, ending(status),
                            (run_dir / (rank == 0 ? std::string(kLogFile)
                                                  : fmt::format("log-rank{}.txt", rank))).string());
      for (const auto& [other, other_rank] : running) ::kill(other, SIGTERM);
    }
  }
  if (!failure.empty()) {
    throw Error(failure + "; `dedpo run --nproc " + std::to_string(workers.processes) +
                " --resume " + run_dir.string() + "` continues from the last checkpoint");
  }
}

}  // namespace

RunResult run_on_local_workers(const Experiment& experiment, const RunControl& control,
                               const LocalWorkers& workers) {
  const fs::path run_dir = make_run_dir(experiment, control);
  std::vector<std::string> arguments = workers.arguments;
  arguments.insert(arguments.end(), {"--run-dir", run_dir.string()});
  run_workers(run_dir, workers, arguments);
  return read_result(run_dir);
}

RunResult resume_on_local_workers(const fs::path& run_dir, const LocalWorkers& workers) {
  const fs::path dir = fs::absolute(run_dir);
  std::vector<std::string> arguments{"--resume", dir.string()};
  arguments.insert(arguments.end(), workers.arguments.begin(), workers.arguments.end());
  run_workers(dir, workers, arguments);
  return read_result(dir);
}

}  // namespace dedpo
