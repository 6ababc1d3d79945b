// The Slurm launcher: a grid's runs as one job array (sbatch --array), one task per run. The
// batch script picks its task's `dedpo run` command line by $SLURM_ARRAY_TASK_ID; each submission
// is recorded in <grid>/slurm/jobs.jsonl (job id, run per task) so that --status and a later
// submission can tell which runs Slurm still queues (squeue) or how they ended (sacct).
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"
#include "grid/launchers.hpp"
#include "run/run_folder.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

constexpr const char* kSlurmDir = "slurm";
constexpr const char* kJobsFile = "jobs.jsonl";
// How often --wait asks squeue whether the array's tasks have ended.
constexpr auto kWaitPoll = std::chrono::seconds(2);

std::string shell_quoted(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

struct CommandResult {
  int status = 0;      // exit status; -1 when it did not exit normally
  std::string output;  // stdout and stderr
};

// Runs a Slurm client command (its arguments quoted for the shell) and collects its output.
CommandResult run_command(const std::vector<std::string>& args) {
  std::string line;
  for (const std::string& arg : args) line += (line.empty() ? "" : " ") + shell_quoted(arg);
  line += " 2>&1";
  FILE* pipe = ::popen(line.c_str(), "r");
  if (pipe == nullptr) throw Error("cannot run " + args[0] + ": " + std::strerror(errno));
  CommandResult result;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream folders(path != nullptr ? path : "");
  std::string folder;
  while (std::getline(folders, folder, ':')) {
    if (!folder.empty() && ::access((fs::path(folder) / program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// One submission as jobs.jsonl records it.
struct Submission {
  std::string job_id;
  std::vector<std::string> runs;  // by array task index
};

std::vector<Submission> read_submissions(const fs::path& grid_dir) {
  const fs::path file = grid_dir / kSlurmDir / kJobsFile;
  std::vector<Submission> submissions;
  std::ifstream in(file);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    try {
      const nlohmann::json entry = nlohmann::json::parse(line);
      submissions.push_back({entry.at("job").get<std::string>(),
                             entry.at("runs").get<std::vector<std::string>>()});
    } catch (const nlohmann::json::exception& error) {
      throw Error(fmt::format("{}:{}: not a submission record ({})", file.string(), number,
                              error.what()));
    }
  }
  return submissions;
}

// The run of `job_id`'s array task `task`, when one of the submissions made it.
const std::string* run_of_task(const std::vector<Submission>& submissions,
                               const std::string& job_id, const std::string& task) {
  for (const Submission& submission : submissions) {
    if (submission.job_id != job_id) continue;
    std::size_t index = 0;
    const auto [end, error] = std::from_chars(task.data(), task.data() + task.size(), index);
    if (error != std::errc() || end != task.data() + task.size() || index >= submission.runs.size()) {
      return nullptr;
    }
    return &submission.runs[index];
  }
  return nullptr;
}

// The array tasks Slurm still queues (pending, running, completing...), each "job|task|state".
// All jobs are listed and filtered here: squeue refuses a --jobs list once one of them is gone.
std::vector<std::array<std::string, 3>> queued_tasks() {
  const CommandResult result = run_command({"squeue", "--noheader", "--array", "--format=%F|%K|%T"});
  if (result.status != 0) throw Error("squeue failed: " + result.output);
  std::vector<std::array<std::string, 3>> tasks;
  std::istringstream lines(result.output);
  std::string line;
  while (std::getline(lines, line)) {
    std::array<std::string, 3> fields;
    std::istringstream parts(line);
    for (std::string& field : fields) std::getline(parts, field, '|');
    if (!fields[2].empty()) tasks.push_back(std::move(fields));
  }
  return tasks;
}

// How the submitted tasks ended, from Slurm's accounting (sacct) where the cluster keeps one;
// empty where it does not.
std::map<std::string, std::string> accounted_states(const std::vector<Submission>& submissions) {
  std::string ids;
  for (const Submission& submission : submissions) ids += (ids.empty() ? "" : ",") + submission.job_id;
  const CommandResult result = run_command(
      {"sacct", "--noheader", "--parsable2", "--jobs=" + ids, "--format=JobID,State"});
  std::map<std::string, std::string> states;
  if (result.status != 0) return states;
  std::istringstream lines(result.output);
  std::string line;
  while (std::getline(lines, line)) {
    const auto bar = line.find('|'), underscore = line.find('_');
    // Array tasks only ("12_3"), not their steps ("12_3.batch").
    if (bar == std::string::npos || underscore == std::string::npos || line.find('.') < bar) continue;
    const std::string job = line.substr(0, underscore);
    const std::string task = line.substr(underscore + 1, bar - underscore - 1);
    if (const std::string* run = run_of_task(submissions, job, task)) {
      states[*run] = line.substr(bar + 1);  // later submissions come later and win
    }
  }
  return states;
}

std::map<std::string, std::string> queued_runs(const std::vector<Submission>& submissions) {
  std::map<std::string, std::string> states;
  if (submissions.empty()) return states;
  for (const auto& [job, task, state] : queued_tasks()) {
    if (const std::string* run = run_of_task(submissions, job, task)) states[*run] = state;
  }
  return states;
}

class SlurmLauncher final : public GridLauncher {
 public:
  SlurmLauncher(fs::path grid_dir, LauncherSettings settings, const GridControl& control)
      : grid_dir_(std::move(grid_dir)), settings_(std::move(settings)), jobs_(control.jobs),
        wait_(control.wait) {}

  std::string describe() const override {
    return jobs_ > 0 ? fmt::format("one Slurm job array, {} tasks at once", jobs_)
                     : "one Slurm job array";
  }

  LaunchOutcome launch(std::deque<GridJob> jobs) override {
    const fs::path slurm_dir = grid_dir_ / kSlurmDir;
    fs::create_directories(slurm_dir);
    std::vector<Submission> submissions = read_submissions(grid_dir_);
    // A run an earlier array still queues is left to it: a second task would find its folder
    // locked (RunFolderLock) and fail.
    const std::map<std::string, std::string> queued = queued_runs(submissions);
    LaunchOutcome outcome;
    std::vector<GridJob> tasks;
    for (GridJob& job : jobs) {
      if (const auto it = queued.find(job.name); it != queued.end()) {
        std::cerr << fmt::format("{}: already {} in Slurm, not submitted again\n", job.name,
                                 it->second);
        continue;
      }
      try {
        claim_run_dir(job.dir);  // as the local launcher does: the folder is dedpo's from now on
        tasks.push_back(std::move(job));
      } catch (const Error& error) {
        ++outcome.failures;
        std::cerr << fmt::format("FAILED {}: {}\n", job.name, error.what());
      }
    }
    outcome.ended = queued.empty();
    if (tasks.empty()) return outcome;

    const fs::path script = slurm_dir / fmt::format("array-{}.sh", submissions.size() + 1);
    write_file_atomic(script, slurm_batch_script(grid_dir_, settings_, tasks));
    std::string array = fmt::format("--array=0-{}", tasks.size() - 1);
    if (jobs_ > 0) array += fmt::format("%{}", jobs_);
    const CommandResult submitted = run_command({"sbatch", "--parsable", array, script.string()});
    if (submitted.status != 0) {
      throw Error(fmt::format("sbatch {} failed (exit status {}): {}", script.string(),
                              submitted.status, submitted.output));
    }
    // --parsable prints "<job id>" or "<job id>;<cluster>".
    Submission submission{submitted.output.substr(0, submitted.output.find_first_of(";\n")), {}};
    for (const GridJob& task : tasks) submission.runs.push_back(task.name);
    std::ofstream(slurm_dir / kJobsFile, std::ios::app)
        << nlohmann::json{{"job", submission.job_id}, {"runs", submission.runs}}.dump() << "\n";
    std::cerr << fmt::format("submitted {} runs as Slurm job array {} ({})\n", tasks.size(),
                             submission.job_id, script.string());
    if (!wait_) {
      outcome.ended = false;
      return outcome;
    }
    submissions.push_back(submission);
    while (true) {
      bool running = false;
      for (const auto& [job, task, state] : queued_tasks()) running = running || job == submission.job_id;
      if (!running) break;
      std::this_thread::sleep_for(kWaitPoll);
    }
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      std::error_code error;
      if (fs::exists(tasks[i].dir / kResultsFile, error)) {
        std::cerr << fmt::format("[{}/{}] done {}\n", i + 1, tasks.size(), tasks[i].name);
        continue;
      }
      ++outcome.failures;
      std::cerr << fmt::format(
          "[{}/{}] FAILED {}; last lines of {}:\n{}(the task's own output: {})\n", i + 1,
          tasks.size(), tasks[i].name, (tasks[i].dir / "stdout.txt").string(),
          last_lines(tasks[i].dir / "stdout.txt", 10),
          (slurm_dir / fmt::format("{}_{}.out", submission.job_id, i)).string());
    }
    return outcome;
  }

 private:
  fs::path grid_dir_;
  LauncherSettings settings_;
  int jobs_;
  bool wait_;
};

}  // namespace

std::string slurm_batch_script(const fs::path& grid_dir, const LauncherSettings& settings,
                               const std::vector<GridJob>& tasks) {
  std::string text = fmt::format(
      "#!/bin/bash\n"
      "# The runs of grid {}, one per array task (written by `dedpo grid --launcher slurm`).\n",
      grid_dir.string());
  auto sbatch = [&](const std::string& option) { text += "#SBATCH " + option + "\n"; };
  sbatch("--job-name=" + shell_quoted("dedpo-" + grid_dir.filename().string()));
  sbatch("--output=" + shell_quoted((grid_dir / kSlurmDir / "%A_%a.out").string()));
  // One Slurm task per rank of the run; the per-task resources below are each rank's.
  sbatch(fmt::format("--nodes={}", settings.nodes));
  sbatch(fmt::format("--ntasks={}", settings.processes));
  sbatch(fmt::format("--ntasks-per-node={}", settings.processes / settings.nodes));
  if (!settings.partition.empty()) sbatch("--partition=" + settings.partition);
  if (!settings.time.empty()) sbatch("--time=" + settings.time);
  if (settings.gpus_per_task > 0) sbatch(fmt::format("--gpus-per-task={}", settings.gpus_per_task));
  if (settings.cpus_per_task > 0) sbatch(fmt::format("--cpus-per-task={}", settings.cpus_per_task));
  if (!settings.memory.empty()) sbatch("--mem=" + settings.memory);
  for (const std::string& option : settings.sbatch_options) sbatch(option);
  text += "set -e\n";
  if (!settings.setup.empty()) text += "# [launcher] setup\n" + settings.setup + "\n";
  text += "case \"$SLURM_ARRAY_TASK_ID\" in\n";
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    std::string command;
    for (const std::string& arg : tasks[i].args) command += " " + shell_quoted(arg);
    text += fmt::format("  {}) run_dir={}; set --{} ;;\n", i, shell_quoted(tasks[i].dir.string()),
                        command);
  }
  text += "  *) echo \"no run for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 2 ;;\nesac\n";
  text += "exec >>\"$run_dir/stdout.txt\" 2>&1\n";
  if (settings.processes == 1) return text + "exec \"$@\"\n";
  // Array tasks may share a node, so each run's rendezvous gets its own port, from its job id
  // (unique per array task), below Linux's ephemeral ports (32768-60999) that outgoing
  // connections take; dedpo's default, 29500, would be taken by the first. MASTER_ADDR is left
  // to dedpo: the first host of SLURM_JOB_NODELIST, where rank 0 runs.
  text += "export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 10000))}\n";
  // The ranks are the tasks of one job step, which sets SLURM_PROCID, SLURM_NTASKS and
  // SLURM_LOCALID for each and forwards every rank's output, labelled with its rank, to
  // stdout.txt. It is given the per-rank resources again: since Slurm 22.05 srun does not inherit
  // --cpus-per-task, and its --gpus-per-task binds each rank to a GPU of its own (as cuda:0).
  text += "exec srun --label";
  if (settings.gpus_per_task > 0) text += fmt::format(" --gpus-per-task={}", settings.gpus_per_task);
  if (settings.cpus_per_task > 0) text += fmt::format(" --cpus-per-task={}", settings.cpus_per_task);
  return text + " \"$@\"\n";
}

std::unique_ptr<GridLauncher> make_slurm_launcher(const fs::path& grid_dir,
                                                  const LauncherSettings& settings,
                                                  const GridControl& control) {
  for (const char* program : {"sbatch", "squeue"}) {
    if (!on_path(program)) {
      throw Error(fmt::format(
          "--launcher slurm: {} is not on the PATH; run the grid where Slurm's commands are "
          "(a login node), or install them (Debian: slurm-client)",
          program));
    }
  }
  return std::make_unique<SlurmLauncher>(grid_dir, settings, control);
}

std::map<std::string, SlurmRunState> slurm_run_states(const fs::path& grid_dir) {
  const std::vector<Submission> submissions = read_submissions(grid_dir);
  std::map<std::string, SlurmRunState> states;
  if (submissions.empty()) return states;
  for (const auto& [run, state] : accounted_states(submissions)) states[run] = {state, false};
  for (const auto& [run, state] : queued_runs(submissions)) states[run] = {state, true};
  return states;
}

}  // namespace dedpo
