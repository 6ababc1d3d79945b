// `dedpo grid --launcher slurm` against the one-node cluster the ctest fixture runs
// (slurm_cluster.sh): the grid as a job array reports what the local launcher reports, a task
// cancelled mid-run is resumed by the next submission, and a run of two processes (one job step
// of two Slurm tasks) trains as one process accumulating their micro-batches.
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "grid/launchers.hpp"
#include "test_support.hpp"
#include "trainer_test_util.hpp"

namespace fs = std::filesystem;
using namespace dedpo;

namespace {

// The fixture world (12 steps a run), `seeds` the grid's one axis.
fs::path write_grid(const fs::path& dir, const std::string& seeds, const std::string& more = "") {
  const fs::path file = dir / "grid.toml";
  test::write_file(file, std::string(trainer_test::kBaseToml) + more + "\n[grid]\n\"run.seed\" = " +
                             seeds + "\n");
  return file;
}

// Resources for each task that this one-node cluster can give.
constexpr const char* kLauncherTable = R"(
[launcher]
time = "00:05:00"
cpus_per_task = 1
memory = "500M"
sbatch = "--comment=dedpo-test"
setup = "echo setup ran"
)";

class SlurmGrid : public testing::Test {
 protected:
  void SetUp() override {
    setenv("SLURM_CONF", DEDPO_SLURM_CONF, 1);  // the tasks inherit it, and the plugin path
    setenv("DEDPO_PLUGIN_PATH", DEDPO_TEST_PLUGIN_DIR, 1);
  }
  test::TempDir temp;
};

// The array job that the grid's n-th submission made (jobs.jsonl).
std::string submitted_job(const fs::path& grid, std::size_t n) {
  std::istringstream lines(test::read_file(grid / "slurm" / "jobs.jsonl"));
  std::string line;
  for (std::size_t i = 0; i <= n; ++i) std::getline(lines, line);
  return nlohmann::json::parse(line).at("job").get<std::string>();
}

// Polls until `done` holds; false after `limit`.
template <typename Condition>
bool eventually(Condition done, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

}  // namespace

TEST_F(SlurmGrid, JobArrayReportsWhatTheLocalLauncherReports) {
  const fs::path local = write_grid(temp / "local", "[0, 1]");
  const fs::path slurm = write_grid(temp / "slurm", "[0, 1]", kLauncherTable);
  const auto local_run = test::run_dedpo("grid '" + local.string() + "' --jobs 2");
  ASSERT_EQ(local_run.exit_code, 0) << local_run.output;
  const auto slurm_run =
      test::run_dedpo("grid '" + slurm.string() + "' --launcher slurm --jobs 2 --wait");
  ASSERT_EQ(slurm_run.exit_code, 0) << slurm_run.output;
  EXPECT_NE(slurm_run.output.find("submitted 2 runs as Slurm job array"), std::string::npos)
      << slurm_run.output;

  const fs::path local_grid = temp / "local" / "runs" / "t-grid";
  const fs::path slurm_grid = temp / "slurm" / "runs" / "t-grid";
  const std::string results = test::read_file(slurm_grid / "results.csv");
  EXPECT_EQ(std::count(results.begin(), results.end(), '\n'), 3) << results;
  EXPECT_EQ(results, test::read_file(local_grid / "results.csv"));
  // The array's script holds the resources; sbatch took them, and each task ran the setup.
  const std::string script = test::read_file(slurm_grid / "slurm" / "array-1.sh");
  for (const char* line : {"#SBATCH --time=00:05:00\n", "#SBATCH --cpus-per-task=1\n",
                           "#SBATCH --mem=500M\n", "#SBATCH --comment=dedpo-test\n",
                           "echo setup ran\n"}) {
    EXPECT_NE(script.find(line), std::string::npos) << line << " not in\n" << script;
  }
  const std::string job = submitted_job(slurm_grid, 0);
  for (const char* task : {"_0.out", "_1.out"}) {
    EXPECT_EQ(test::read_file(slurm_grid / "slurm" / (job + task)), "setup ran\n");
  }

  const auto status = test::run_dedpo("grid --status '" + slurm_grid.string() + "'");
  EXPECT_EQ(status.exit_code, 0) << status.output;
  EXPECT_NE(status.output.find("2 runs: 2 finished"), std::string::npos) << status.output;

  // Submitted again: nothing left to do, so no second array.
  const auto again = test::run_dedpo("grid '" + slurm.string() + "' --launcher slurm --wait");
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("2 already finished, 0 to run"), std::string::npos) << again.output;
  EXPECT_FALSE(fs::exists(slurm_grid / "slurm" / "array-2.sh"));
}

TEST_F(SlurmGrid, CancelledTaskIsResumedByTheNextSubmission) {
  // 20 steps of 150 ms, checkpoints every 4: the task is cancelled after its first checkpoint,
  // with about 2.4 s of training left (room for scancel on a busy machine).
  const fs::path file = write_grid(temp.path(), "[0]");
  const fs::path grid = temp / "runs" / "t-grid";
  const fs::path run = grid / "run.seed=0";
  const std::string submit =
      "grid '" + file.string() + "' --set loss.sleep_ms=150 --set train.steps=20 --launcher slurm";
  const auto submitted = test::run_dedpo(submit);
  ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
  const std::string job = submitted_job(grid, 0);
  auto queued = [&] { return slurm_run_states(grid).contains("run.seed=0"); };

  ASSERT_TRUE(eventually([&] { return fs::exists(run / kCheckpointDir / "latest"); },
                         std::chrono::seconds(60)))
      << test::read_file(run / "stdout.txt");
  const auto cancelled = test::run_shell("scancel " + job + "_0");
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.output;
  ASSERT_TRUE(eventually([&] { return !queued(); }, std::chrono::seconds(60)));
  ASSERT_FALSE(fs::exists(run / kResultsFile)) << "the run ended before it was cancelled";
  const auto status = test::run_dedpo("grid --status '" + grid.string() + "'");
  EXPECT_NE(status.output.find("1 runs: 1 interrupted"), std::string::npos) << status.output;

  const auto resubmitted = test::run_dedpo(submit + " --wait");
  ASSERT_EQ(resubmitted.exit_code, 0) << resubmitted.output;
  EXPECT_NE(resubmitted.output.find("0 already finished, 1 to run"), std::string::npos)
      << resubmitted.output;
  EXPECT_NE(test::read_file(run / kLogFile).find("resuming"), std::string::npos);
  const nlohmann::json result = nlohmann::json::parse(test::read_file(run / kResultsFile));
  EXPECT_EQ(result.at("steps"), 20);
  const std::string results = test::read_file(grid / "results.csv");
  EXPECT_EQ(std::count(results.begin(), results.end(), '\n'), 2) << results;
}

// Two ranks of batch_size 8 against one process with grad_accum 2 (docs/distributed.md, "The
// equivalence guarantee"): bit-identical weights, hence the same results.csv.
TEST_F(SlurmGrid, RunOfTwoProcessesTrainsAsOneProcessAccumulatingTheirMicroBatches) {
  const fs::path local = write_grid(temp / "local", "[0]");
  const fs::path slurm = write_grid(temp / "slurm", "[0]", R"(
[launcher]
time = "00:05:00"
processes = 2
cpus_per_task = 1
memory = "1G"
)");
  const auto local_run = test::run_dedpo("grid '" + local.string() + "' --set train.grad_accum=2");
  ASSERT_EQ(local_run.exit_code, 0) << local_run.output;
  const auto slurm_run = test::run_dedpo("grid '" + slurm.string() + "' --launcher slurm --wait");
  const fs::path slurm_grid = temp / "slurm" / "runs" / "t-grid";
  const fs::path run = slurm_grid / "run.seed=0";
  ASSERT_EQ(slurm_run.exit_code, 0) << slurm_run.output << test::read_file(run / "stdout.txt");

  const std::string script = test::read_file(slurm_grid / "slurm" / "array-1.sh");
  EXPECT_NE(script.find("#SBATCH --ntasks=2\n"), std::string::npos) << script;
  EXPECT_NE(script.find("exec srun --label --cpus-per-task=1 \"$@\"\n"), std::string::npos) << script;
  EXPECT_NE(test::read_file(run / kLogFile).find("data parallel: rank 0 of 2 (slurm launch)"),
            std::string::npos);
  EXPECT_NE(test::read_file(run / "log-rank1.txt").find("data parallel: rank 1 of 2 (slurm launch)"),
            std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(test::read_file(run / kResultsFile)).at("world_size"), 2);
  const fs::path local_grid = temp / "local" / "runs" / "t-grid";
  trainer_test::expect_same_weights(local_grid / "run.seed=0", run);
  EXPECT_EQ(test::read_file(slurm_grid / "results.csv"), test::read_file(local_grid / "results.csv"));
}
