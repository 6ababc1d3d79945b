// Data-parallel runs end to end: `dedpo run --nproc 2` against one process accumulating the same
// micro-batches, on the toy world with DeDPO and an annotator; a killed worker (under --nproc and
// under an external launcher), and resuming with the same and with another number of processes.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "dedpo/host/distributed.hpp"
#include "dedpo/host/trainer.hpp"
#include "test_support.hpp"

namespace {
namespace fs = std::filesystem;
using dedpo::test::run_dedpo;

// 8 steps of DeDPO with lambda = "auto" (its moments summed over the ranks each step, warm after
// 12 labelled pairs) on 240 toy pairs, a quarter labelled, the rest annotated by shards; a
// checkpoint every 4 steps.
constexpr const char* kToyToml = R"(
[run]
name = "dp"
seed = 7
output = "runs"
threads = 1
device = "cpu"

[backbone]
plugin = "toy"

[data]
plugin = "toy_pairs"
n_pairs = 240

[annotator]
plugin = "toy_biased"

[loss]
plugin = "dedpo"
beta = 50.0
lambda = "auto"
lambda_warmup = 12

[train]
objective = "preference"
steps = 8
batch_size = 12
labelled_fraction = 0.25
lr = 1e-2
checkpoint_every = 4
log_every = 1
)";

std::vector<at::Tensor> weights(const fs::path& run_dir) {
  std::vector<at::Tensor> tensors;
  torch::load(tensors, (run_dir / dedpo::kWeightsFile).string());
  return tensors;
}

// Each logged step's figure `name`, in step order.
std::vector<double> logged(const fs::path& run_dir, const std::string& name) {
  std::vector<double> values;
  std::ifstream in(run_dir / dedpo::kMetricsFile);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json record = nlohmann::json::parse(line);
    if (record.contains(name)) values.push_back(record.at(name).get<double>());
  }
  return values;
}

nlohmann::json results(const fs::path& run_dir) {
  std::ifstream in(run_dir / dedpo::kResultsFile);
  return nlohmann::json::parse(in);
}

// The largest absolute difference between two runs' final weights.
double weights_difference(const fs::path& a, const fs::path& b) {
  const std::vector<at::Tensor> wa = weights(a), wb = weights(b);
  EXPECT_EQ(wa.size(), wb.size());
  double largest = 0.0;
  for (std::size_t k = 0; k < std::min(wa.size(), wb.size()); ++k) {
    largest = std::max(largest, (wa[k] - wb[k]).abs().max().item<double>());
  }
  return largest;
}

// Shell lines that wait until the run in `run_dir` has logged `step`, or the process whose pid is
// in $`process` has ended.
std::string wait_for_step(const fs::path& run_dir, int step, const std::string& process) {
  return "until grep -Eq '\"step\":" + std::to_string(step) + "[,}]' '" +
         (run_dir / dedpo::kMetricsFile).string() + "' 2>/dev/null || ! kill -0 $" + process +
         "; do\n  sleep 0.05\ndone\n";
}

class DataParallel : public testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(dir_.path() / "dp.toml") << kToyToml;
  }
  std::string experiment() const { return "'" + (dir_.path() / "dp.toml").string() + "'"; }
  fs::path run(const std::string& name) const { return dir_.path() / name; }

  dedpo::test::TempDir dir_;
};

// Two ranks of 12 pairs each against one process accumulating two micro-batches of 12: the same
// pairs and noise per micro-batch (docs/distributed.md). The gradients differ only in where the
// halving happens: (g0 + g1) / 2 after the all-reduce against g0 / 2 + g1 / 2 accumulated. Halving
// is exact in floating point and a sum of two terms does not depend on their order, so with 2
// ranks the weights are bit-identical: the tolerance is 0. (With 3 ranks, dividing by 3 rounds,
// and the runs would agree only to float32 rounding.)
TEST_F(DataParallel, TwoRanksReachTheWeightsOfOneProcessAccumulatingTheirMicroBatches) {
  const auto two = run_dedpo("run --nproc 2 " + experiment() + " --run-dir '" + run("two").string() + "'");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  // Its own output folder, hence its own caches: it annotates every pair itself.
  const auto one = run_dedpo("run " + experiment() + " --set train.grad_accum=2 --set "
                             "run.output='\"one-process\"' --run-dir '" + run("one").string() +
                             "' --no-progress");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  // The two ranks annotated a half each (the weights below could not agree otherwise).
  using testing::HasSubstr;
  EXPECT_THAT(dedpo::test::read_file(run("two") / dedpo::kLogFile),
              HasSubstr("annotator 'toy_biased' on pairs [0, 120) of 240 (rank 0 of 2"));
  EXPECT_THAT(dedpo::test::read_file(run("two") / "log-rank1.txt"),
              HasSubstr("annotator 'toy_biased' on pairs [120, 240) of 240 (rank 1 of 2"));
  EXPECT_THAT(dedpo::test::read_file(run("one") / dedpo::kLogFile),
              HasSubstr("annotations: running annotator 'toy_biased'\n"));
  // The gradient all-reduce overlapped the backward pass (the reducer, float32 weights).
  EXPECT_THAT(dedpo::test::read_file(run("two") / dedpo::kLogFile),
              testing::ContainsRegex("in the first step [1-9][0-9]* started during the backward pass"));

  const double difference = weights_difference(run("one"), run("two"));
  EXPECT_EQ(difference, 0.0);
  // lambda = auto took the same values. (In this untrained toy world the annotator agrees with
  // every human label, so lambda* >= 1 is clipped to 1; the tiny SD test in
  // tests/pairs_manifest has an annotator that disagrees, and a lambda that moves.)
  const std::vector<double> lambdas = logged(run("two"), "lambda");
  ASSERT_EQ(lambdas.size(), 8u);
  EXPECT_EQ(logged(run("one"), "lambda"), lambdas);
  EXPECT_EQ(logged(run("one"), "lambda_estimate"), logged(run("two"), "lambda_estimate"));
  EXPECT_EQ(results(run("two"))["world_size"], 2);
  EXPECT_EQ(results(run("two"))["global_batch_size"], 24);
  EXPECT_EQ(results(run("one"))["global_batch_size"], 24);
  std::ifstream rank1_log(run("two") / "log-rank1.txt");
  const std::string rank1((std::istreambuf_iterator<char>(rank1_log)), std::istreambuf_iterator<char>());
  EXPECT_THAT(rank1, testing::HasSubstr("data parallel: rank 1 of 2 (torchrun launch) on cpu (LOCAL_RANK 1, Gloo); "
                                        "global batch 24 = 2 ranks x batch_size 12 x grad_accum 1"));
}

TEST_F(DataParallel, LauncherOptionsAreChecked) {
  const auto short_timeout = run_dedpo("run --nproc 2 --collective-timeout 0.5 " + experiment());
  EXPECT_NE(short_timeout.exit_code, 0);
  EXPECT_THAT(short_timeout.output, testing::HasSubstr("--collective-timeout 0.5: expected at least 1 second"));
  const auto no_process = run_dedpo("run --nproc 0 " + experiment());
  EXPECT_NE(no_process.exit_code, 0);
  EXPECT_THAT(no_process.output, testing::HasSubstr("--nproc 0: expected at least 1"));
  const auto nested = dedpo::test::run_shell(
      "RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=x MASTER_PORT=1 '" +
      std::string(DEDPO_EXECUTABLE) + "' run --nproc 2 " + experiment());
  EXPECT_NE(nested.exit_code, 0);
  EXPECT_THAT(nested.output, testing::HasSubstr("give no --nproc under torchrun or srun"));
}

// A worker killed mid-run: the launcher stops the other and names the dead one; --resume on one
// process is refused, --resume on two completes the run, from the checkpoint before the newest
// when the newest is corrupt: rank 0 chooses it, rank 1 loads that one and tries no other.
TEST_F(DataParallel, AKilledWorkerEndsTheRunWithItsNameAndResumeOnAsManyCompletesIt) {
  const fs::path dir = run("killed");
  // 100 steps (about 40 a second here): the kill, once step 12 is logged (so that the checkpoint
  // of step 8 is complete: one to fall back to), comes long before the end.
  const std::string script =
      "'" + std::string(DEDPO_EXECUTABLE) + "' run --nproc 2 " + experiment() +
      " --set train.steps=100 --run-dir '" + dir.string() + "' & launcher=$!\n" +
      wait_for_step(dir, 12, "launcher") +
      "for pid in $(pgrep -f -- '--run-dir " + dir.string() + " --no-progress'); do\n"
      "  tr '\\0' '\\n' < /proc/$pid/environ | grep -qx RANK=1 && kill -9 $pid\n"
      "done\n"
      "wait $launcher; echo \"launcher exit code $?\"\n";
  std::ofstream(dir_.path() / "kill.sh") << script;
  const auto killed = dedpo::test::run_shell("bash '" + (dir_.path() / "kill.sh").string() + "'");
  EXPECT_THAT(killed.output, testing::HasSubstr("launcher exit code 1"));
  EXPECT_THAT(killed.output, testing::HasSubstr("rank 1 of 2 failed (killed by signal 9"));
  EXPECT_THAT(killed.output, testing::HasSubstr("--resume " + dir.string()));
  EXPECT_FALSE(fs::exists(dir / dedpo::kResultsFile));

  const auto alone = run_dedpo("run --resume '" + dir.string() + "' --no-progress");
  EXPECT_NE(alone.exit_code, 0);
  EXPECT_THAT(alone.output, testing::HasSubstr("written by a run on 2 process(es); resume it on 2"));

  std::string newest = dedpo::test::read_file(dir / dedpo::kCheckpointDir / "latest");
  newest.erase(newest.find_last_not_of('\n') + 1);
  std::ofstream(dir / dedpo::kCheckpointDir / newest) << "not a checkpoint";
  const auto resumed = run_dedpo("run --nproc 2 --resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(results(dir)["steps"], 100);
  const std::string first_log = dedpo::test::read_file(dir / dedpo::kLogFile);
  const std::string second_log = dedpo::test::read_file(dir / "log-rank1.txt");
  EXPECT_THAT(first_log, testing::HasSubstr("skipped checkpoint " + newest + ": "));
  std::smatch loaded;
  ASSERT_TRUE(std::regex_search(first_log, loaded, std::regex("loaded (step-[0-9]+\\.pt)")));
  EXPECT_NE(loaded[1].str(), newest);
  EXPECT_THAT(second_log, testing::HasSubstr("loaded " + loaded[1].str() + " (step "));
  EXPECT_THAT(second_log, testing::Not(testing::HasSubstr("skipped checkpoint")));
}

// Under an external launcher (torchrun's variables, no --nproc) no launcher of dedpo's watches the
// ranks: when rank 1 is killed, rank 0 itself names it, within the short wait for the answers of
// the others (the collective timeout, 3 s here) after its collective fails.
TEST_F(DataParallel, UnderAnExternalLauncherTheSurvivingRankNamesAKilledOne) {
  const fs::path dir = run("external");
  const std::string rank_command =
      "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(dedpo::free_local_port()) +
      " '" + std::string(DEDPO_EXECUTABLE) + "' run " + experiment() +
      " --set train.steps=100 --run-dir '" + dir.string() + "' --no-progress --collective-timeout 3";
  const fs::path first_output = dir_.path() / "rank0.txt";
  const std::string script =
      "RANK=0 LOCAL_RANK=0 " + rank_command + " > '" + first_output.string() + "' 2>&1 & first=$!\n"
      "RANK=1 LOCAL_RANK=1 " + rank_command + " > /dev/null 2>&1 & second=$!\n" +
      wait_for_step(dir, 8, "first") +
      "kill -9 $second\n"
      "wait $first; echo \"rank 0 exit code $?\"\n";
  std::ofstream(dir_.path() / "external.sh") << script;
  const auto killed = dedpo::test::run_shell("bash '" + (dir_.path() / "external.sh").string() + "'");
  EXPECT_THAT(killed.output, testing::HasSubstr("rank 0 exit code 1"));
  EXPECT_THAT(dedpo::test::read_file(first_output),
              testing::HasSubstr("failed on rank 0 of 2: rank 1 of 2 did not answer within 3 s (it "
                                 "died or hangs; it last began step "));
}

}  // namespace
