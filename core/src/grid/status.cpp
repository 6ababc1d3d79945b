// `dedpo grid --status`: each run of a grid folder, its state from its folder and from Slurm.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "dedpo/host/runner.hpp"
#include "grid/grid_index.hpp"
#include "grid/launchers.hpp"

namespace dedpo {
namespace fs = std::filesystem;

std::string grid_status(const fs::path& grid_dir) {
  std::error_code error;
  if (!fs::exists(grid_dir / kGridIndexFile, error)) {
    throw Error(grid_dir.string() + ": no " + kGridIndexFile + " (not a grid folder `dedpo grid` made)");
  }
  const GridIndex index = read_grid_index(grid_dir);
  const std::map<std::string, SlurmRunState> slurm = slurm_run_states(grid_dir);
  std::vector<std::string> runs = index.order;  // empty in a grid.json from before it was kept
  if (runs.empty()) {
    for (const auto& entry : index.runs) runs.push_back(entry.first);
  }
  std::size_t width = 3;
  for (const std::string& run : runs) width = std::max(width, run.size());
  std::map<RunState, int> counts;
  std::string table = fmt::format("{:<{}}  {:<11}  {}\n", "run", width, "folder", "slurm");
  for (const std::string& run : runs) {
    const RunState state = run_state(grid_dir / run, index.runs.at(run).inputs);
    ++counts[state];
    const auto it = slurm.find(run);
    table += fmt::format("{:<{}}  {:<11}  {}\n", run, width, to_string(state),
                         it == slurm.end() ? "-" : it->second.state);
  }
  std::string totals;
  for (const auto& [state, count] : counts) {
    totals += fmt::format("{}{} {}", totals.empty() ? "" : ", ", count, to_string(state));
  }
  return fmt::format("grid {}: {} runs: {}\n", grid_dir.string(), runs.size(), totals) + table;
}

}  // namespace dedpo
