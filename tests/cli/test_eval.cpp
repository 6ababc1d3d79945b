// `dedpo eval RUN_DIR`: a finished run's trained weights evaluated again, end to end on the toy world.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_support.hpp"

namespace fs = std::filesystem;
using dedpo::test::read_file;
using dedpo::test::run_dedpo;
using dedpo::test::TempDir;
using dedpo::test::write_file;
using testing::HasSubstr;

namespace {

const char* kEvalRun = R"(
[run]
name = "evaluated"
output = "runs"
threads = 1
[backbone]
plugin = "toy"
[data]
plugin = "toy_pairs"
n_pairs = 64
[loss]
plugin = "dpo"
[train]
steps = 4
batch_size = 16
[[metrics]]
plugin = "toy_reward"
)";

nlohmann::json metrics_of(const fs::path& run) {
  return nlohmann::json::parse(read_file(run / "results.json"))["metrics"];
}

}  // namespace

TEST(CliEval, ReproducesTheRunsFiguresAndTakesOverrides) {
  TempDir dir;
  write_file(dir / "exp.toml", kEvalRun);
  auto result = run_dedpo("run " + (dir / "exp.toml").string() + " --no-progress --run-dir " + (dir / "run").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const nlohmann::json trained = metrics_of(dir / "run");

  // Same seed: the same trained model and reference, so the same figures.
  result = run_dedpo("eval " + (dir / "run").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("reward:"));
  const nlohmann::json again = metrics_of(dir / "run");
  for (const char* name : {"reward", "reward_ref", "win_rate", "spurious"}) {
    EXPECT_NEAR(again[name].get<double>(), trained[name].get<double>(), 1e-9) << name;
  }
  EXPECT_NE(trained["reward"].get<double>(), trained["reward_ref"].get<double>());

  // Another evaluation seed draws other samples; the figures replace the old ones.
  result = run_dedpo("eval " + (dir / "run").string() + " --set eval.seed=99");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(metrics_of(dir / "run")["reward"].get<double>(), trained["reward"].get<double>());
  EXPECT_THAT(read_file(dir / "run" / "log.txt"), HasSubstr("eval: finished"));
}

TEST(CliEval, UnfinishedOrMissingRunsAreNamed) {
  TempDir dir;
  auto result = run_dedpo("eval " + (dir / "nowhere").string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("not a run folder"));
  write_file(dir / "run" / "config.toml", kEvalRun);
  result = run_dedpo("eval " + (dir / "run").string());
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("has not finished"));
  result = run_dedpo("eval");
  EXPECT_EQ(result.exit_code, 2);
}

TEST(CliEval, RewritesTheReportOfTheGridTheRunBelongsTo) {
  TempDir dir;
  write_file(dir / "grid.toml", std::string(kEvalRun) + R"(
[grid]
"run.seed" = [0]
[[grid.cases]]
name = "dpo"
)");
  auto result = run_dedpo("grid " + (dir / "grid.toml").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const fs::path grid = dir / "runs" / "evaluated-grid";
  ASSERT_TRUE(fs::exists(grid / "results.csv")) << result.output;
  fs::path run;
  for (const auto& entry : fs::directory_iterator(grid)) {
    if (entry.is_directory()) run = entry.path();
  }
  ASSERT_FALSE(run.empty());
  const std::string before = read_file(grid / "results.csv");
  result = run_dedpo("eval " + run.string() + " --set eval.seed=99");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(read_file(grid / "results.csv"), before);
  EXPECT_NE(read_file(grid / "summary.md").find(run.filename().string().substr(0, 3)), std::string::npos);
}
