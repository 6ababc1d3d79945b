// Run-folder integrity, end to end on the toy world: grid folder names never collide, a run writes
// only into folders dedpo made, one writer per folder, grids that can be stopped or killed, and
// reports that never mix in stale runs.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_support.hpp"

extern char** environ;

namespace fs = std::filesystem;
using dedpo::test::read_file;
using dedpo::test::run_dedpo;
using dedpo::test::TempDir;
using dedpo::test::write_file;
using testing::HasSubstr;
using testing::Not;

namespace {

// Toy training: milliseconds per step.
std::string experiment(const std::string& name, int steps, int checkpoint_every = 2) {
  return R"(
[run]
name = ")" + name + R"("
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
batch_size = 16
log_every = 1
checkpoint_every = )" + std::to_string(checkpoint_every) + R"(
steps = )" + std::to_string(steps) + R"(
[[metrics]]
plugin = "toy_reward"
)";
}

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

// True when a process holds the run folder's lock (a writer is at work in it).
bool is_locked(const fs::path& run_dir) {
  const int fd = ::open((run_dir / ".dedpo-lock").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  const bool locked = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
  ::close(fd);
  return locked;
}

std::vector<fs::path> run_folders(const fs::path& grid) {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(grid)) {
    if (entry.is_directory()) dirs.push_back(entry.path());
  }
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

// The `step` of each line of a metrics.jsonl, in order.
std::vector<std::int64_t> steps_of(const fs::path& metrics) {
  std::vector<std::int64_t> steps;
  std::istringstream lines(read_file(metrics));
  std::string line;
  while (std::getline(lines, line)) steps.push_back(nlohmann::json::parse(line).at("step"));
  return steps;
}

// `dedpo grid FILE --jobs 2` as a child of this test, its output in `log`.
pid_t start_grid(const fs::path& file, const fs::path& log) {
  std::vector<std::string> args = {DEDPO_EXECUTABLE, "grid", file.string(), "--jobs", "2"};
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  const int status = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return status == 0 ? pid : -1;
}

// Waits until `condition` holds, up to `seconds`; returns whether it did.
template <typename Condition>
bool wait_for(Condition condition, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

// A grid of two long runs, started and then hit by `signal` once both are training.
struct InterruptedGrid {
  TempDir dir;
  fs::path grid;
  std::string log;
  int grid_status = 0;

  explicit InterruptedGrid(int signal) {
    write_file(dir / "exp.toml", experiment("long", 800, 20) + "[grid]\n\"run.seed\" = [0, 1]\n");
    grid = dir / "runs" / "long-grid";
    const pid_t pid = start_grid(dir / "exp.toml", dir / "grid.log");
    EXPECT_GT(pid, 0);
    const fs::path a = grid / "run.seed=0", b = grid / "run.seed=1";
    const bool training = wait_for(
        [&] {
          return fs::exists(a / "checkpoint" / "latest") && fs::exists(b / "checkpoint" / "latest");
        },
        120);
    EXPECT_TRUE(training) << read_file(dir / "grid.log");
    ::kill(pid, signal);
    ::waitpid(pid, &grid_status, 0);
    log = read_file(dir / "grid.log");
  }
};

}  // namespace

// init.weights = ["/d/w/a.pt", "/d/w_a.pt"] read the same once '/' became '_': one folder for two
// runs. Each now gets a folder, a summary row and a config of its own.
TEST(Integrity, GridValuesThatReadTheSameGetFoldersOfTheirOwn) {
  TempDir dir;
  write_file(dir / "base.toml", experiment("base", 2));
  auto result = run_dedpo("run " + quoted(dir / "base.toml") + " --no-progress --run-dir " + quoted(dir / "base"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const fs::path slash = dir / "d" / "w" / "a.pt", underscore = dir / "d" / "w_a.pt";
  fs::create_directories(slash.parent_path());
  fs::copy_file(dir / "base" / "weights.pt", slash);
  fs::copy_file(dir / "base" / "weights.pt", underscore);
  write_file(dir / "exp.toml", experiment("paths", 2) + "[grid]\n\"init.weights\" = ['" + slash.string() +
                                   "', '" + underscore.string() + "']\n");
  result = run_dedpo("grid " + quoted(dir / "exp.toml") + " --jobs 2");
  ASSERT_EQ(result.exit_code, 0) << result.output;

  const auto folders = run_folders(dir / "runs" / "paths-grid");
  ASSERT_EQ(folders.size(), 2u) << result.output;
  std::vector<std::string> weights;
  for (const fs::path& folder : folders) {
    EXPECT_TRUE(fs::exists(folder / "results.json")) << folder;
    const std::string config = read_file(folder / "config.toml");
    weights.push_back(config.find("w_a.pt") != std::string::npos ? "underscore" : "slash");
  }
  EXPECT_NE(weights[0], weights[1]);
  const std::string summary = read_file(dir / "runs" / "paths-grid" / "summary.md");
  EXPECT_THAT(summary, HasSubstr("2 finished runs"));
  EXPECT_THAT(summary, Not(HasSubstr("| 2 ")));  // no row averages the two runs
}

TEST(Integrity, GridRefusesTwoRunsWithTheSameSettings) {
  TempDir dir;
  write_file(dir / "exp.toml", experiment("twice", 2) + "[grid]\n\"run.seed\" = [3, 3]\n");
  auto result = run_dedpo("grid " + quoted(dir / "exp.toml"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("two runs have the same settings (run.seed=3"));
  EXPECT_FALSE(fs::exists(dir / "runs" / "twice-grid"));
}

// `--run-dir x` on a folder of someone else's files: refused, nothing touched.
TEST(Integrity, RunDirRefusesAFolderThatDedpoDidNotMake) {
  TempDir dir;
  write_file(dir / "exp.toml", experiment("foreign", 2));
  write_file(dir / "x" / "checkpoint" / "model_v3.bin", "weeks of training");
  write_file(dir / "x" / "results.json", "{\"accuracy\": 0.93}");
  auto result = run_dedpo("run " + quoted(dir / "exp.toml") + " --no-progress --run-dir " + quoted(dir / "x"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("holds files that no dedpo run made"));
  EXPECT_EQ(read_file(dir / "x" / "checkpoint" / "model_v3.bin"), "weeks of training");
  EXPECT_EQ(read_file(dir / "x" / "results.json"), "{\"accuracy\": 0.93}");

  // dedpo's own folder: a new or empty one is used; a finished run is never overwritten.
  fs::create_directories(dir / "empty");
  result = run_dedpo("run " + quoted(dir / "exp.toml") + " --no-progress --run-dir " + quoted(dir / "empty"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const std::string finished = read_file(dir / "empty" / "results.json");
  result = run_dedpo("run " + quoted(dir / "exp.toml") + " --no-progress --run-dir " + quoted(dir / "empty"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("holds a finished run; refusing to overwrite it"));
  EXPECT_EQ(read_file(dir / "empty" / "results.json"), finished);
}

// A folder whose lock another process holds is refused, naming that process.
TEST(Integrity, SecondWriterOfARunFolderIsRefusedWithTheHoldersPid) {
  TempDir dir;
  write_file(dir / "exp.toml", experiment("locked", 2));
  write_file(dir / "run" / ".dedpo-run", "");
  const int fd = ::open((dir / "run" / ".dedpo-lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const std::string pid = std::to_string(::getpid()) + "\n";
  ASSERT_EQ(::write(fd, pid.data(), pid.size()), static_cast<ssize_t>(pid.size()));
  auto result = run_dedpo("run " + quoted(dir / "exp.toml") + " --no-progress --run-dir " + quoted(dir / "run"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("process " + std::to_string(::getpid()) + " is writing this run folder"));
  EXPECT_FALSE(fs::exists(dir / "run" / "config.toml"));
  ::close(fd);
  result = run_dedpo("run " + quoted(dir / "exp.toml") + " --no-progress --run-dir " + quoted(dir / "run"));
  EXPECT_EQ(result.exit_code, 0) << result.output;
}

// SIGTERM to a grid: its runs are stopped and waited for (no writer left), the grid exits non-zero,
// and a second grid resumes them to the end with one unbroken series of steps each.
TEST(Integrity, TerminatedGridStopsItsRunsAndARerunCompletesThem) {
  InterruptedGrid stopped(SIGTERM);
  EXPECT_TRUE(WIFEXITED(stopped.grid_status) && WEXITSTATUS(stopped.grid_status) != 0) << stopped.log;
  EXPECT_THAT(stopped.log, HasSubstr("stopping 2 running runs"));
  const auto folders = run_folders(stopped.grid);
  ASSERT_EQ(folders.size(), 2u);
  for (const fs::path& folder : folders) {
    EXPECT_FALSE(is_locked(folder)) << folder << ": a run outlived its grid";
    EXPECT_FALSE(fs::exists(folder / "results.json"));
  }

  auto result = run_dedpo("grid " + quoted(stopped.dir / "exp.toml") + " --jobs 2");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const fs::path& folder : folders) {
    EXPECT_TRUE(fs::exists(folder / "results.json")) << folder;
    const auto steps = steps_of(folder / "metrics.jsonl");
    ASSERT_FALSE(steps.empty());
    for (std::size_t i = 1; i + 1 < steps.size(); ++i) EXPECT_EQ(steps[i], steps[i - 1] + 1) << folder;
  }
}

// SIGKILL cannot be forwarded: the runs die with their grid (PR_SET_PDEATHSIG).
TEST(Integrity, KilledGridTakesItsRunsWithIt) {
  InterruptedGrid killed(SIGKILL);
  EXPECT_TRUE(WIFSIGNALED(killed.grid_status));
  for (const fs::path& folder : run_folders(killed.grid)) {
    EXPECT_TRUE(wait_for([&] { return !is_locked(folder); }, 10)) << folder << ": a run outlived its grid";
  }
}

TEST(Integrity, GridWithAFailedRunExitsNonZero) {
  TempDir dir;
  write_file(dir / "junk.pt", "not weights");
  write_file(dir / "exp.toml", experiment("failing", 2) + "[[grid.cases]]\nname = \"ok\"\n"
                               "[[grid.cases]]\nname = \"broken\"\n\"init.weights\" = '" +
                               (dir / "junk.pt").string() + "'\n");
  auto result = run_dedpo("grid " + quoted(dir / "exp.toml"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_THAT(result.output, HasSubstr("FAILED broken"));
  EXPECT_TRUE(fs::exists(dir / "runs" / "failing-grid" / "ok" / "results.json")) << result.output;
}

// Editing the [init] experiment that the runs start from makes them stale: the grid says so and
// the report leaves them out instead of averaging runs of two reference models.
TEST(Integrity, EditedInitExperimentMakesRunsStaleAndTheReportLeavesThemOut) {
  TempDir dir;
  write_file(dir / "reference.toml", experiment("reference", 2));
  const std::string grid = experiment("tuned", 2) + "[init]\nexperiment = \"reference.toml\"\n" +
                           "[grid]\n\"run.seed\" = [0, 1]\n";
  write_file(dir / "exp.toml", grid);
  auto result = run_dedpo("grid " + quoted(dir / "exp.toml"));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(read_file(dir / "runs" / "tuned-grid" / "summary.md"), HasSubstr("2 finished runs"));

  write_file(dir / "reference.toml", experiment("reference", 3));
  result = run_dedpo("grid " + quoted(dir / "exp.toml"));
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("stale run"));
  EXPECT_THAT(result.output, HasSubstr("the [init] experiment"));
  const std::string summary = read_file(dir / "runs" / "tuned-grid" / "summary.md");
  EXPECT_THAT(summary, HasSubstr("0 finished runs"));
  EXPECT_THAT(summary, HasSubstr("Left out, stale"));
  EXPECT_THAT(summary, HasSubstr("run.seed=0, run.seed=1"));
  EXPECT_EQ(read_file(dir / "runs" / "tuned-grid" / "results.csv"), "run,loss,annotator,labelled_fraction,seed\n");
}
