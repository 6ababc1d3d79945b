#pragma once
// grid.json in a grid folder: for each run folder, the method it belongs to (the run without its
// seed), its line in the plots (also without its labelled fraction) and the staleness key it
// should have; the run folders in the grid file's order; and the experiment's [report]. The
// launcher names them from the grid's cases and axes, so the report never parses folder names.
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dedpo/host/settings.hpp"

namespace dedpo {

inline constexpr const char* kGridIndexFile = "grid.json";

struct GridRunLabels {
  std::string method;  // summary.md rows: runs that differ only in their seed
  std::string line;    // plot lines: runs that differ only in seed and labelled fraction
  std::string inputs;  // the run's staleness key when the grid last started (run/inputs.hpp)
};

struct GridIndex {
  std::map<std::string, GridRunLabels> runs;  // by run folder name
  // The run folders in the grid file's order (its cases as listed, then the axes' values):
  // reports list methods in it. Empty for a grid.json written before it was kept.
  std::vector<std::string> order;
  ReportSettings report;
};

// Text fit for a file name: letters, digits and . - _ + kept, anything else '_'.
std::string file_name_safe(std::string_view text);

// The method lines (GridRunLabels::line) in the grid's order.
std::vector<std::string> method_lines(const GridIndex& index);
// Error naming `where`, the key and the known lines when [report] baseline names none of them.
void check_report_baseline(const GridIndex& index, const std::string& where);

void write_grid_index(const std::filesystem::path& grid_dir, const GridIndex& index);
// Empty when the folder has no grid.json (runs gathered by hand).
GridIndex read_grid_index(const std::filesystem::path& grid_dir);

}  // namespace dedpo
