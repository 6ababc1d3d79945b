#pragma once
// How a grid's runs get run. The grid (grid/launcher.cpp) owns the rules: which runs are finished
// (skipped), interrupted (resumed), stale (reported) or new, each then a `dedpo run` command line.
// A launcher only runs those command lines: as child processes here (local_launcher.cpp) or as
// the tasks of one Slurm job array (slurm_launcher.cpp).
#include <cstddef>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dedpo/host/runner.hpp"
#include "dedpo/host/settings.hpp"

namespace dedpo {

// One run to start: its folder and the dedpo program's command line (args[0] the program).
struct GridJob {
  std::string name;  // the run folder's name in the grid
  std::filesystem::path dir;
  std::vector<std::string> args;
};

struct LaunchOutcome {
  // The jobs have ended (each left results.json or failed), so the report can be written; false
  // when they were handed to a scheduler that runs them later.
  bool ended = true;
  int failures = 0;
  int stopped_by = 0;  // the signal that stopped the grid; 0 when none did
  std::size_t not_started = 0;
};

class GridLauncher {
 public:
  virtual ~GridLauncher() = default;
  // How the jobs run, for the grid's first line ("2 at once").
  virtual std::string describe() const = 0;
  virtual LaunchOutcome launch(std::deque<GridJob> jobs) = 0;
};

// control.jobs child processes at a time (1 when 0); SIGINT and SIGTERM are forwarded to them.
std::unique_ptr<GridLauncher> make_local_launcher(const GridControl& control);
// One Slurm job array, control.jobs tasks at a time (no limit when 0), with `settings`' resources;
// its batch script and the record of the submission go into <grid_dir>/slurm/. With control.wait
// the launch returns when the array's tasks have ended.
std::unique_ptr<GridLauncher> make_slurm_launcher(const std::filesystem::path& grid_dir,
                                                  const LauncherSettings& settings,
                                                  const GridControl& control);

// The batch script of one job array whose task i runs tasks[i]: the #SBATCH lines of `settings`
// (settings.processes Slurm tasks per array task), then the run's command line, started as a job
// step (srun) when it has several processes.
std::string slurm_batch_script(const std::filesystem::path& grid_dir,
                               const LauncherSettings& settings, const std::vector<GridJob>& tasks);

// What Slurm says of a run of the grid that an array submitted from this grid folder: squeue's
// state (PENDING, RUNNING, ...) while it is queued, else sacct's (COMPLETED, CANCELLED, ...) where
// the cluster keeps accounting. By run folder name; runs Slurm says nothing of are missing.
struct SlurmRunState {
  std::string state;
  bool queued = false;
};
std::map<std::string, SlurmRunState> slurm_run_states(const std::filesystem::path& grid_dir);

// A run folder's state, from its files and the inputs key its run has now (grid.json).
enum class RunState { not_started, started, interrupted, finished, stale };
RunState run_state(const std::filesystem::path& dir, const std::string& inputs_key);
const char* to_string(RunState state);

// The last `count` lines of a run's stdout.txt, indented, for a failed run's message.
std::string last_lines(const std::filesystem::path& file, std::size_t count);

}  // namespace dedpo
