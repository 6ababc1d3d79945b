// Data-parallel runs end to end: `dedpo run --nproc 2` against one process accumulating the same
// micro-batches, on the toy world with DeDPO and an annotator; a killed worker, and resuming with
// the same and with another number of processes.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "dedpo/host/trainer.hpp"
#include "test_support.hpp"

namespace {
namespace fs = std::filesystem;
using dedpo::test::run_dedpo;

// 8 steps of DeDPO (fixed lambda: λ = auto's running moments are still per rank) on 240 toy
// pairs, a quarter labelled, the rest annotated; a checkpoint every 4 steps.
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
lambda = 0.5

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
  const auto one = run_dedpo("run " + experiment() + " --set train.grad_accum=2 --run-dir '" +
                             run("one").string() + "' --no-progress");
  ASSERT_EQ(one.exit_code, 0) << one.output;

  const double difference = weights_difference(run("one"), run("two"));
  EXPECT_EQ(difference, 0.0);
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
// process is refused, --resume on two completes the run from the last checkpoint.
TEST_F(DataParallel, AKilledWorkerEndsTheRunWithItsNameAndResumeOnAsManyCompletesIt) {
  const fs::path dir = run("killed");
  // 100 steps (about 40 a second here): the kill, once step 8 is logged, comes long before the end.
  const std::string script =
      "'" + std::string(DEDPO_EXECUTABLE) + "' run --nproc 2 " + experiment() +
      " --set train.steps=100 --run-dir '" + dir.string() + "' & launcher=$!\n"
      "until grep -Eq '\"step\":8[,}]' '" + (dir / "metrics.jsonl").string() + "' 2>/dev/null || ! kill -0 $launcher; do\n"
      "  sleep 0.05\n"
      "done\n"
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
  const auto resumed = run_dedpo("run --nproc 2 --resume '" + dir.string() + "'");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(results(dir)["steps"], 100);
}

}  // namespace
