#include "grid/grid_index.hpp"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "dedpo/files.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string file_name_safe(std::string_view text) {
  std::string out;
  for (char c : text) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
              c == '+';
    out += ok ? c : '_';
  }
  return out.empty() ? "_" : out;
}

std::vector<std::string> method_lines(const GridIndex& index) {
  std::vector<std::string> lines;
  auto add = [&](const GridRunLabels& labels) {
    if (std::find(lines.begin(), lines.end(), labels.line) == lines.end()) lines.push_back(labels.line);
  };
  for (const std::string& folder : index.order) {
    if (const auto run = index.runs.find(folder); run != index.runs.end()) add(run->second);
  }
  for (const auto& [folder, labels] : index.runs) add(labels);  // runs the order does not list
  return lines;
}

void check_report_baseline(const GridIndex& index, const std::string& where) {
  const std::string& baseline = index.report.baseline;
  const std::vector<std::string> lines = method_lines(index);
  if (baseline.empty() || std::find(lines.begin(), lines.end(), baseline) != lines.end()) return;
  throw Error(fmt::format("{}: [report] baseline = \"{}\": no method line of the grid has that "
                          "name (known: {})",
                          where, baseline, fmt::join(lines, ", ")));
}

void write_grid_index(const fs::path& grid_dir, const GridIndex& index) {
  json runs = json::object();
  for (const auto& [folder, labels] : index.runs) {
    runs[folder] = {{"method", labels.method}, {"line", labels.line}, {"inputs", labels.inputs}};
  }
  const json report = {{"baseline", index.report.baseline}, {"primary", index.report.primary}};
  write_file_atomic(grid_dir / kGridIndexFile,
                    json{{"runs", runs}, {"order", index.order}, {"report", report}}.dump(2) + "\n");
}

GridIndex read_grid_index(const fs::path& grid_dir) {
  GridIndex index;
  std::error_code error;
  if (!fs::exists(grid_dir / kGridIndexFile, error)) return index;
  const fs::path file = grid_dir / kGridIndexFile;
  try {
    const json grid = json::parse(read_file(file));
    for (const auto& [folder, labels] : grid.at("runs").items()) {
      index.runs[folder] = {labels.at("method").get<std::string>(),
                            labels.at("line").get<std::string>(),
                            labels.value("inputs", std::string())};
    }
    index.order = grid.value("order", std::vector<std::string>());
    const json report = grid.value("report", json::object());
    index.report = {report.value("baseline", std::string()), report.value("primary", std::string())};
  } catch (const json::exception& problem) {
    throw Error(file.string() + ": malformed grid index: " + problem.what());
  }
  return index;
}

}  // namespace dedpo
