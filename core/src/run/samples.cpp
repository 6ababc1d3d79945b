#include "run/samples.hpp"

#include <unistd.h>

#include <algorithm>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"
#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"
#include "dedpo/image.hpp"
#include "grid/grid_index.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool same_place(const ScoredSample& a, const ScoredSample& b) {
  return a.set == b.set && a.prompt_index == b.prompt_index && a.image_index == b.image_index &&
         a.reference == b.reference;
}

// A set's folder name; a leading dot would hide it (or climb out, "..").
std::string set_folder(const std::string& set) {
  const std::string safe = file_name_safe(set);
  return safe.front() == '.' ? "_" + safe : safe;
}

// Names in samples/ that are an evaluation being written (or replaced) by process `pid`.
std::string partial_name(const std::string& evaluation, const char* what) {
  return fmt::format(".{}.{}.{}", evaluation, what, ::getpid());
}

}  // namespace

void EvaluationSamples::add(const ScoredSample& sample, const std::string& figure, double score) {
  int draws = 0;
  for (Entry& entry : entries_) {
    if (!same_place(entry.sample, sample)) continue;
    if (at::equal(entry.sample.image, sample.image)) {
      entry.scores.emplace_back(figure, score);
      return;
    }
    ++draws;
  }
  Entry entry{sample, draws, {{figure, score}}, {}, encode_png(sample.image)};
  entry.file = fmt::format("{}/{}/p{:03}-i{}{}.png", set_folder(sample.set),
                           sample.reference ? "reference" : "model", sample.prompt_index,
                           sample.image_index, draws > 0 ? fmt::format("-d{}", draws) : "");
  entries_.push_back(std::move(entry));
}

std::vector<TensorBoardImage> EvaluationSamples::tensorboard_images() const {
  std::vector<TensorBoardImage> images;
  for (const Entry& entry : entries_) {
    const std::string tag = std::string(kSamplesDir) + "/" + entry.file.substr(0, entry.file.size() - 4);
    images.push_back({tag, entry.png, entry.sample.image.size(0), entry.sample.image.size(1)});
  }
  return images;
}

void EvaluationSamples::write(const fs::path& run_dir, const std::string& evaluation,
                              std::int64_t step, std::uint64_t seed) const {
  if (entries_.empty()) return;
  const fs::path samples_dir = run_dir / kSamplesDir;
  const fs::path partial = samples_dir / partial_name(evaluation, "partial");
  std::error_code error;
  fs::remove_all(partial, error);
  std::string index;
  for (const Entry& entry : entries_) {
    const fs::path file = partial / entry.file;
    fs::create_directories(file.parent_path());
    write_file_atomic(file, entry.png);
    json scores = json::object();
    for (const auto& [figure, score] : entry.scores) scores[figure] = score;
    index += json{{"file", entry.file},
                  {"set", entry.sample.set},
                  {"prompt", entry.sample.prompt},
                  {"prompt_index", entry.sample.prompt_index},
                  {"image_index", entry.sample.image_index},
                  {"draw", entry.draw},
                  {"model", entry.sample.reference ? "reference" : "trained"},
                  {"step", step},
                  {"seed", seed},
                  {"scores", scores}}
                 .dump() +
             "\n";
  }
  write_file_atomic(partial / kSamplesIndexFile, index);
  // Directory renames are atomic; an earlier folder of this name is moved aside first, since a
  // rename does not replace a folder that has files.
  const fs::path final_dir = samples_dir / evaluation;
  const fs::path replaced = samples_dir / partial_name(evaluation, "replaced");
  if (fs::exists(final_dir, error)) fs::rename(final_dir, replaced);
  fs::rename(partial, final_dir);
  fs::remove_all(replaced, error);
}

std::string evaluation_name(std::int64_t step) { return fmt::format("step-{:06}", step); }

std::vector<std::string> remove_samples_after(const fs::path& run_dir, std::int64_t step) {
  std::vector<std::string> removed;
  std::error_code error;
  std::vector<fs::path> entries;  // listed first: removing while iterating is unspecified
  for (const auto& entry : fs::directory_iterator(run_dir / kSamplesDir, error)) entries.push_back(entry.path());
  for (const fs::path& path : entries) {
    const std::string name = path.filename().string();
    bool stale = name.starts_with(".") || name == kFinalSamples;
    if (name.starts_with("step-")) {
      try {
        stale = std::stoll(name.substr(5)) > step;
      } catch (const std::exception&) {  // not a name of ours: left alone
      }
    }
    if (!stale) continue;
    fs::remove_all(path, error);
    removed.push_back(name);
  }
  return removed;
}

}  // namespace dedpo
