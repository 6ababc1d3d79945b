#include "grid/grid_index.hpp"

#include <cctype>

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

void write_grid_index(const fs::path& grid_dir, const GridIndex& index) {
  json runs = json::object();
  for (const auto& [folder, labels] : index) {
    runs[folder] = {{"method", labels.method}, {"line", labels.line}, {"inputs", labels.inputs}};
  }
  write_file_atomic(grid_dir / kGridIndexFile, json{{"runs", runs}}.dump(2) + "\n");
}

GridIndex read_grid_index(const fs::path& grid_dir) {
  GridIndex index;
  std::error_code error;
  if (!fs::exists(grid_dir / kGridIndexFile, error)) return index;
  const fs::path file = grid_dir / kGridIndexFile;
  try {
    const json runs = json::parse(read_file(file)).at("runs");
    for (const auto& [folder, labels] : runs.items()) {
      index[folder] = {labels.at("method").get<std::string>(), labels.at("line").get<std::string>(),
                       labels.value("inputs", std::string())};
    }
  } catch (const json::exception& problem) {
    throw Error(file.string() + ": malformed grid index: " + problem.what());
  }
  return index;
}

}  // namespace dedpo
