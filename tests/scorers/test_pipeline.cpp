// The whole path through the program: a tiny SD1.5 run whose pairs are labelled by the clip_score
// annotator and whose samples are scored by the PickScore, HPSv2 and aesthetic metrics (tiny
// random-weight folders), then `dedpo eval` of the finished run.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <set>
#include <sstream>

#include "dedpo/image.hpp"
#include "dedpo/scorers/tiny.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using dedpo::test::read_file;
using dedpo::test::run_shell;
using dedpo::test::write_file;
using testing::HasSubstr;

// A tiny SD1.5 folder, a tiny scorer folder, 8 labelled PNG pairs (two prompts, images of two
// sizes) and two prompt files in `dir`.
void write_tiny_world(const dedpo::test::TempDir& dir) {
  const std::string root = dir.path().string();
  ASSERT_EQ(run_shell(fmt::format("'{}' '{}/sd'", DEDPO_MAKE_TINY_SD, root)).exit_code, 0);
  dedpo::scorers::write_tiny_clip_folder(dir / "clip");
  at::manual_seed(0);
  std::string manifest;
  for (int i = 0; i < 8; ++i) {
    dedpo::write_png(dir / fmt::format("a{}.png", i), at::randint(0, 256, {20, 16, 3}, at::kByte));
    dedpo::write_png(dir / fmt::format("b{}.png", i), at::randint(0, 256, {16, 16, 3}, at::kByte));
    manifest += fmt::format(R"({{"prompt": "{}", "image_a": "a{}.png", "image_b": "b{}.png", "label": {}}})",
                            i % 2 ? "the sea" : "a cat", i, i, i % 2) + "\n";
  }
  write_file(dir / "pairs.jsonl", manifest);
  write_file(dir / "photo.txt", "a cat\nthe sea\n");
  write_file(dir / "anime.json", R"(["a robot", "a girl"])");
}

// The pipeline experiment on the tiny world of `root`; `backbone_extra` and `train_extra` are
// appended to those tables.
std::string pipeline_experiment(const std::string& root, const std::string& backbone_extra = "",
                                const std::string& train_extra = "") {
  return fmt::format(R"(
[run]
name = "e2e"
output = "runs"
threads = 1
[backbone]
plugin = "sd15"
path = "{0}/sd"
resolution = 16
sample_steps = 2
guidance_scale = 1.0
{1}
[data]
plugin = "pairs_manifest"
manifest = "{0}/pairs.jsonl"
[annotator]
plugin = "clip_score"
path = "{0}/clip"
[loss]
plugin = "dedpo"
[train]
steps = 2
batch_size = 4
labelled_fraction = 0.5
{2}
[[metrics]]
plugin = "pickscore"
path = "{0}/clip"
prompts = "{0}/photo.txt"
images_per_prompt = 2
reference = true
[[metrics]]
plugin = "hpsv2"
path = "{0}/clip"
prompts = "{0}/photo.txt, {0}/anime.json"
[[metrics]]
plugin = "aesthetic"
path = "{0}/clip"
head = "{0}/clip/aesthetic_head.safetensors"
prompts = "{0}/photo.txt"
)", root, backbone_extra, train_extra);
}

// The lines of a run's samples/final/samples.jsonl.
std::vector<nlohmann::json> final_samples(const fs::path& run_dir) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_file(run_dir / "samples" / "final" / "samples.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// The mean of the per-image scores `score` that the saved images of `set` (trained model or
// reference) carry.
double mean_saved_score(const std::vector<nlohmann::json>& samples, const std::string& set,
                        const std::string& score, bool reference) {
  double sum = 0;
  int n = 0;
  for (const auto& sample : samples) {
    if (sample["set"] != set || (sample["model"] == "reference") != reference ||
        !sample["scores"].contains(score)) {
      continue;
    }
    sum += sample["scores"][score].get<double>();
    ++n;
  }
  return n > 0 ? sum / n : NAN;
}

// `dedpo eval` of the finished run in `dir`/run gives back the figures the run wrote.
void expect_eval_reproduces(const dedpo::test::TempDir& dir, const nlohmann::json& trained) {
  auto result = run_shell(std::string("'") + DEDPO_EXECUTABLE + "' eval '" + (dir / "run").string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto again = nlohmann::json::parse(read_file(dir / "run" / "results.json"))["metrics"];
  for (const auto& [name, value] : trained.items()) {
    EXPECT_NEAR(again[name].get<double>(), value.get<double>(), 1e-6) << name;
  }
}

TEST(ScorerPipeline, SdRunIsAnnotatedAndEvaluatedWithTinyScorers) {
  dedpo::test::TempDir dir;
  const std::string root = dir.path().string();
  write_tiny_world(dir);
  write_file(dir / "exp.toml", pipeline_experiment(root));
  const std::string dedpo = std::string("'") + DEDPO_EXECUTABLE + "' ";
  auto result = run_shell(dedpo + "run '" + root + "/exp.toml' --no-progress --run-dir '" + root + "/run'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(read_file(dir / "run" / "log.txt"), HasSubstr("running annotator 'clip_score'"));
  const auto trained = nlohmann::json::parse(read_file(dir / "run" / "results.json"))["metrics"];
  for (const char* name : {"pickscore", "pickscore_ref", "hpsv2_avg", "hpsv2_photo", "hpsv2_anime", "aesthetic"}) {
    ASSERT_TRUE(trained.contains(name)) << name << "\n" << result.output;
  }

  // The final evaluation's images are saved with the scores the figures average: each figure is
  // the mean of its saved images' scores.
  const std::vector<nlohmann::json> samples = final_samples(dir / "run");
  EXPECT_NEAR(mean_saved_score(samples, "photo", "pickscore", false), trained["pickscore"].get<double>(), 1e-4);
  EXPECT_NEAR(mean_saved_score(samples, "photo", "pickscore", true), trained["pickscore_ref"].get<double>(), 1e-4);
  EXPECT_NEAR(mean_saved_score(samples, "photo", "hpsv2", false), trained["hpsv2_photo"].get<double>(), 1e-4);
  EXPECT_NEAR(mean_saved_score(samples, "anime", "hpsv2", false), trained["hpsv2_anime"].get<double>(), 1e-4);
  EXPECT_NEAR(mean_saved_score(samples, "photo", "aesthetic", false), trained["aesthetic"].get<double>(), 1e-4);
  // pickscore: 2 prompts x 2 images per prompt, from the model and from the reference.
  int pickscore_images = 0;
  for (const auto& sample : samples) {
    const fs::path file = dir / "run" / "samples" / "final" / sample["file"].get<std::string>();
    EXPECT_EQ(dedpo::read_image(file).sizes(), (std::vector<std::int64_t>{16, 16, 3})) << file;
    pickscore_images += sample["scores"].contains("pickscore");
  }
  EXPECT_EQ(pickscore_images, 8);

  expect_eval_reproduces(dir, trained);
  // `dedpo eval` replaced the final evaluation's folder whole, leaving nothing beside it.
  std::vector<std::string> entries;
  for (const auto& entry : fs::directory_iterator(dir / "run" / "samples")) entries.push_back(entry.path().filename());
  EXPECT_EQ(entries, std::vector<std::string>{"final"});
  EXPECT_EQ(final_samples(dir / "run").size(), samples.size());
}

// `dedpo eval` restores what the run trained, also when that is LoRA adapters averaged by EMA:
// the figures of the run come back exactly.
TEST(ScorerPipeline, EvalOfALoraRunWithEmaReproducesItsFigures) {
  dedpo::test::TempDir dir;
  const std::string root = dir.path().string();
  write_tiny_world(dir);
  write_file(dir / "exp.toml", pipeline_experiment(root, "lora_rank = 4", "ema_decay = 0.5\nlr = 0.01"));
  const std::string dedpo = std::string("'") + DEDPO_EXECUTABLE + "' ";
  auto result = run_shell(dedpo + "run '" + root + "/exp.toml' --no-progress --run-dir '" + root + "/run'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const auto trained = nlohmann::json::parse(read_file(dir / "run" / "results.json"))["metrics"];
  // Training moved the model: its PickScore differs from the reference's on the same seeds.
  ASSERT_TRUE(trained.contains("pickscore") && trained.contains("pickscore_ref"));
  EXPECT_NE(trained["pickscore"].get<double>(), trained["pickscore_ref"].get<double>());
  expect_eval_reproduces(dir, trained);
}

// The sample sheet of the prompt set "photo" in `grid`: the reference row, then one row per method
// in the grid's order, `columns` images each; every cell's pixels are the saved image's, enlarged
// by the sheet's whole factor.
void expect_sample_sheet(const fs::path& grid, const std::vector<std::string>& methods, std::int64_t columns) {
  const auto layout = nlohmann::json::parse(read_file(grid / "samples_photo.json"));
  ASSERT_EQ(layout["rows"].size(), methods.size() + 1) << layout.dump(2);
  EXPECT_EQ(layout["rows"][0], "reference");
  for (std::size_t m = 0; m < methods.size(); ++m) {
    EXPECT_THAT(layout["rows"][m + 1].get<std::string>(), testing::StartsWith(methods[m] + " ("));
  }
  ASSERT_EQ(static_cast<std::int64_t>(layout["columns"].size()), columns);
  const at::Tensor sheet = dedpo::read_image(grid / "samples_photo.png");
  std::set<int> xs, ys;
  for (std::size_t r = 0; r < layout["cells"].size(); ++r) {
    const auto& row = layout["cells"][r];
    ASSERT_EQ(static_cast<std::int64_t>(row.size()), columns);
    for (std::size_t c = 0; c < row.size(); ++c) {
      const auto& cell = row[c];
      const int x = cell["x"], y = cell["y"], width = cell["width"], height = cell["height"],
                scale = cell["scale"];
      xs.insert(x);
      ys.insert(y);
      ASSERT_LE(x + width, sheet.size(1));
      ASSERT_LE(y + height, sheet.size(0));
      const at::Tensor saved = dedpo::read_image(grid / cell["file"].get<std::string>());
      ASSERT_EQ(saved.size(1) * scale, width);
      const at::Tensor drawn = sheet.slice(0, y, y + height).slice(1, x, x + width);
      const at::Tensor enlarged = saved.repeat_interleave(scale, 0).repeat_interleave(scale, 1);
      EXPECT_TRUE(at::equal(drawn, enlarged)) << "row " << r << ", column " << c << ": " << cell.dump();
    }
  }
  // A grid: one x per column, one y per row.
  EXPECT_EQ(static_cast<std::int64_t>(xs.size()), columns);
  EXPECT_EQ(ys.size(), methods.size() + 1);
  // Columns line up: every run's reference images are the first row's (same model, same noise).
  for (const auto& entry : fs::directory_iterator(grid)) {
    const fs::path reference = entry.path() / "samples" / "final" / "photo" / "reference" / "p000-i0.png";
    if (!fs::exists(reference)) continue;
    EXPECT_TRUE(at::equal(dedpo::read_image(reference),
                          dedpo::read_image(grid / layout["cells"][0][0]["file"].get<std::string>())))
        << reference;
  }
}

// The paper-table shape in small: a grid of methods and annotators (human labels only, the
// clip_score annotator, self-training on the SD backbone) lands in results.csv and summary.md
// with the paper's column names.
TEST(ScorerPipeline, SdGridOfMethodsAndAnnotatorsReportsThePapersColumns) {
  dedpo::test::TempDir dir;
  const std::string root = dir.path().string();
  write_tiny_world(dir);
  write_file(dir / "grid.toml", fmt::format(R"(
[vars]
world = "{0}"
[run]
name = "table"
output = "runs"
threads = 1
[backbone]
plugin = "sd15"
path = "${{world}}/sd"
resolution = 16
sample_steps = 2
guidance_scale = 1.0
[data]
plugin = "pairs_manifest"
manifest = "${{world}}/pairs.jsonl"
[annotator]
plugin = "clip_score"
path = "${{world}}/clip"
[loss]
plugin = "dedpo"
[train]
steps = 2
batch_size = 4
labelled_fraction = 0.5
[[metrics]]
plugin = "pickscore"
path = "${{world}}/clip"
prompts = "${{world}}/photo.txt"
reference = true
[[metrics]]
plugin = "aesthetic"
path = "${{world}}/clip"
head = "${{world}}/clip/aesthetic_head.safetensors"
prompts = "${{world}}/photo.txt"
[grid]
"run.seed" = [1, 2]
[[grid.cases]]
name = "dpo-50h"
loss = {{ plugin = "dpo" }}
[[grid.cases]]
name = "dedpo-clip"
[[grid.cases]]
name = "dedpo-self_train"
annotator = {{ plugin = "self_train", steps = 2, n_draws = 2, folds = 2 }}
)", root));
  auto result = run_shell(std::string("'") + DEDPO_EXECUTABLE + "' grid '" + root + "/grid.toml' --jobs 2");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const fs::path grid = dir / "runs" / "table-grid";
  const std::string csv = read_file(grid / "results.csv");
  for (const char* column : {"pickscore", "pickscore_ref", "aesthetic"}) {
    EXPECT_THAT(csv, HasSubstr(column));
  }
  // One row per run: 3 methods x 2 seeds, each with its figures.
  std::size_t rows = 0;
  for (char c : csv) rows += c == '\n';
  EXPECT_EQ(rows, 1u + 6u) << csv;
  const std::string summary = read_file(grid / "summary.md");
  for (const char* text : {"PS", "PS (ref)", "AS", "dpo-50h", "dedpo-clip", "dedpo-self_train", "clip_score",
                           "self_train", "samples_photo.png", "Run curves"}) {
    EXPECT_THAT(summary, HasSubstr(text)) << summary;
  }
  expect_sample_sheet(grid, {"dpo-50h", "dedpo-clip", "dedpo-self_train"}, 2);
  // Each run's curves, drawn by the report.
  for (const auto& entry : fs::directory_iterator(grid)) {
    if (fs::exists(entry.path() / "results.json")) EXPECT_TRUE(fs::exists(entry.path() / "plots" / "loss.png")) << entry.path();
  }
}

}  // namespace
