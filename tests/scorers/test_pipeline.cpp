// The whole path through the program: a tiny SD1.5 run whose pairs are labelled by the clip_score
// annotator and whose samples are scored by the PickScore, HPSv2 and aesthetic metrics (tiny
// random-weight folders), then `dedpo eval` of the finished run.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

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

  expect_eval_reproduces(dir, trained);
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
                           "self_train"}) {
    EXPECT_THAT(summary, HasSubstr(text)) << summary;
  }
}

}  // namespace
