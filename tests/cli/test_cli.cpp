// The command-line program, end to end on the toy world.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chart_files.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using dedpo::test::run_dedpo;
using dedpo::test::TempDir;
using dedpo::test::write_file;
using testing::HasSubstr;

namespace {

// A run of a few steps on the toy world, from random weights: seconds.
const char* kTinyRun = R"(
[run]
name = "tiny"
output = "runs"
threads = 1
[backbone]
plugin = "toy"
[data]
plugin = "toy_pairs"
n_pairs = 64
[annotator]
plugin = "toy_biased"
[loss]
plugin = "dedpo"
[train]
steps = 6
batch_size = 16
labelled_fraction = 0.25
checkpoint_every = 3
[[metrics]]
plugin = "toy_reward"
)";

}  // namespace

TEST(Cli, UsageAndUnknownCommand) {
  auto result = run_dedpo("");
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, HasSubstr("usage: dedpo <command>"));
  result = run_dedpo("frobnicate");
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, HasSubstr("unknown command 'frobnicate'"));
  result = run_dedpo("run --resume");
  EXPECT_EQ(result.exit_code, 2);
}

TEST(Cli, PluginsAreListedByKindAndShownWithTheirOptions) {
  auto result = run_dedpo("plugins");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const char* expected : {"backbone:", "annotator:", "loss:", "dataset:", "metric:", "  dpo ",
                               "  dedpo ", "  sft ", "  naive_ssl_dpo ", "  toy ", "  toy_biased ",
                               "  self_train ", "  toy_pairs ", "  toy_reward "}) {
    EXPECT_THAT(result.output, HasSubstr(expected));
  }
  EXPECT_THAT(result.output, testing::Not(HasSubstr("warning:")));
  EXPECT_THAT(result.output, testing::Not(HasSubstr("fixture")));  // test fixtures stay apart

  result = run_dedpo("plugins show dedpo");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("loss 'dedpo'"));
  EXPECT_THAT(result.output, HasSubstr("lambda"));
  EXPECT_THAT(result.output, HasSubstr("beta"));

  result = run_dedpo("plugins show train");
  EXPECT_THAT(result.output, HasSubstr("[train] (core table)"));
  EXPECT_THAT(result.output, HasSubstr("labelled_fraction"));

  result = run_dedpo("plugins show dedp");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("error: no plugin named 'dedp'; did you mean 'dedpo'?"));
}

TEST(Cli, ValidateChecksEverythingAndRunsNothing) {
  TempDir dir;
  write_file(dir / "exp.toml", kTinyRun);
  auto result = run_dedpo("validate " + (dir / "exp.toml").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr(": valid"));
  EXPECT_THAT(result.output, HasSubstr("plugin = 'dedpo'"));
  EXPECT_FALSE(fs::exists(dir / "runs"));

  result = run_dedpo("validate " + (dir / "exp.toml").string() + " --set loss.lambda=1.5");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("[loss] (loss 'dedpo') (--set loss.lambda=1.5): option 'lambda'"));

  result = run_dedpo("validate " + (dir / "exp.toml").string() + " --set train.stepz=3");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("[train]: unknown option 'stepz'; did you mean 'steps'?"));

  result = run_dedpo("validate " + (dir / "exp.toml").string() + " --set train.steps");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("--set expects KEY=VALUE"));
}

TEST(Cli, RunRefusesABadPluginOptionBeforePreparingAnything) {
  TempDir dir;
  write_file(dir / "exp.toml", kTinyRun);
  auto result = run_dedpo("run " + (dir / "exp.toml").string() + " --set loss.beta=-1.0");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("[loss] (loss 'dedpo') (--set loss.beta=-1.0): option 'beta'"));
  EXPECT_FALSE(fs::exists(dir / "runs"));  // no run folder, so no backbone was prepared
}

TEST(Cli, Bfloat16WeightsWithFloat32MastersLowerTheToyLoss) {
  TempDir dir;
  write_file(dir / "exp.toml", kTinyRun);
  // beta = 50 as in the toy experiments: with DPO's default 5000 (Stable Diffusion's scale) the
  // toy loss is heavy-tailed (steps of 1e4 beside steps of 1e-20), and a sum of 10 steps says
  // more about the noise drawn than about training.
  auto result = run_dedpo("run " + (dir / "exp.toml").string() +
                          " --no-progress --set train.precision='\"bf16\"' --set train.weights_dtype='\"bfloat16\"'"
                          " --set loss.plugin='\"dpo\"' --set loss.beta=50.0 --set train.labelled_fraction=1.0"
                          " --set train.steps=40 --set train.log_every=1"
                          " --set train.lr=1e-3");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::vector<double> losses;
  std::istringstream lines(dedpo::test::read_file(dir / "runs" / "tiny-1" / "metrics.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const auto entry = nlohmann::json::parse(line);
    if (entry.contains("loss")) losses.push_back(entry["loss"].get<double>());
  }
  ASSERT_EQ(losses.size(), 40u);
  EXPECT_NEAR(losses.front(), std::log(2.0), 1e-2);  // the model starts as its reference
  double first = 0, last = 0;
  for (int i = 0; i < 10; ++i) {
    first += losses[static_cast<std::size_t>(i)];
    last += losses[losses.size() - 1 - static_cast<std::size_t>(i)];
  }
  EXPECT_LT(last, first);
}

TEST(Cli, EveryRunGetsItsOwnFolder) {
  TempDir dir;
  write_file(dir / "exp.toml", kTinyRun);
  for (int i = 0; i < 2; ++i) {
    auto result = run_dedpo("run " + (dir / "exp.toml").string() + " --no-progress");
    ASSERT_EQ(result.exit_code, 0) << result.output;
    EXPECT_THAT(result.output, HasSubstr("steps: 6"));
    EXPECT_THAT(result.output, HasSubstr("reward:"));
  }
  std::vector<fs::path> runs;
  for (const auto& entry : fs::directory_iterator(dir / "runs")) {
    if (entry.path().filename().string().starts_with("tiny-")) runs.push_back(entry.path());
  }
  ASSERT_EQ(runs.size(), 2u);
  for (const fs::path& run : runs) {
    for (const char* file : {"config.toml", "metrics.jsonl", "results.json", "log.txt"}) {
      EXPECT_TRUE(fs::exists(run / file)) << run / file;
    }
  }
  auto result = run_dedpo("run --resume " + (dir / "nowhere").string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("nowhere"));
}

TEST(Cli, SampleNeedsABackboneThatWritesFiles) {
  TempDir dir;
  write_file(dir / "exp.toml", kTinyRun);
  const std::string out = " --out " + (dir / "samples").string();
  auto result = run_dedpo("sample " + (dir / "exp.toml").string() + " --prompt 'prompt 0'" + out);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("this backbone does not work on images: its samples have no image form"));
  EXPECT_FALSE(fs::exists(dir / "samples" / "0-0.png"));

  result = run_dedpo("sample " + (dir / "exp.toml").string() + out);
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, HasSubstr("no prompt"));
  EXPECT_THAT(result.output, HasSubstr("usage: dedpo"));
}

TEST(Cli, PlotDrawsTheRunsCurvesAndNamesAMalformedLine) {
  TempDir dir;
  write_file(dir / "exp.toml", kTinyRun);
  const fs::path run = dir / "run";
  // A line per step: six points on every curve.
  auto result = run_dedpo("run " + (dir / "exp.toml").string() +
                          " --no-progress --set train.log_every=1 --run-dir " + run.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  result = run_dedpo("plot " + run.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  // DeDPO logs λ and, with labelled pairs in its batches, the implicit accuracy.
  for (const char* curve : {"loss", "implicit_accuracy", "lambda", "grad_norm", "lr"}) {
    const fs::path png = run / "plots" / (std::string(curve) + ".png");
    EXPECT_THAT(result.output, HasSubstr(png.string()));
    dedpo::test::expect_png(png);
    dedpo::test::expect_svg(run / "plots" / (std::string(curve) + ".svg"));
  }

  const std::string metrics = dedpo::test::read_file(run / "metrics.jsonl");
  const auto lines = std::count(metrics.begin(), metrics.end(), '\n');
  write_file(run / "metrics.jsonl", metrics + "{\"step\": 7, \"loss\": \"high\"}\n");
  result = run_dedpo("plot " + run.string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr((run / "metrics.jsonl").string() + ":" +
                                       std::to_string(lines + 1) +
                                       ": 'loss' is \"high\", expected a number"));
  write_file(run / "metrics.jsonl", metrics + "{\"step\": 7, \"loss\": 0.5\n");
  result = run_dedpo("plot " + run.string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr((run / "metrics.jsonl").string() + ":" +
                                       std::to_string(lines + 1) + ": malformed JSON"));

  result = run_dedpo("plot " + (dir / "nowhere").string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("no metrics.jsonl"));
  result = run_dedpo("plot");
  EXPECT_EQ(result.exit_code, 2);
}
