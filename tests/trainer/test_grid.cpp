// Grid tests: child processes (the dedpo program), a failing case, skipping and resuming, and
// the report (results.csv, summary.md, SVG plots).
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "test_support.hpp"
#include "trainer_test_util.hpp"

namespace fs = std::filesystem;
using namespace dedpo;
using namespace dedpo::trainer_test;

namespace {

constexpr const char* kGrid = R"(
[grid]
"run.seed" = [0, 1]
"train.labelled_fraction" = [0.5, 1.0]

[[grid.cases]]
name = "ok"

[[grid.cases]]
name = "broken"
"data.fail" = true
)";

std::vector<std::string> csv_lines(const fs::path& file) {
  std::vector<std::string> lines;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

}  // namespace

TEST(Grid, FailingCaseDoesNotStopTheOthersAndRerunSkipsFinishedRuns) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  fs::path file = temp / "grid.toml";
  {
    std::ofstream out(file);
    out << kBaseToml << kGrid;
  }
  GridControl control;
  control.jobs = 2;
  control.program = DEDPO_EXECUTABLE;
  testing::internal::CaptureStderr();
  int failures = run_grid(file, {}, control, registry);
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(failures, 4) << log;
  EXPECT_NE(log.find("FAILED broken__run.seed=0__train.labelled_fraction=0.5 (exit code"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("deliberate failure"), std::string::npos) << log;  // its last lines

  fs::path grid = temp / "runs" / "t-grid";
  fs::path ok = grid / "ok__run.seed=0__train.labelled_fraction=0.5";
  ASSERT_TRUE(fs::exists(ok / kResultsFile)) << log;
  EXPECT_TRUE(fs::exists(ok / "stdout.txt"));
  EXPECT_FALSE(fs::exists(grid / "broken__run.seed=0__train.labelled_fraction=0.5" / kResultsFile));

  auto lines = csv_lines(grid / "results.csv");
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0], "run,loss,annotator,labelled_fraction,seed,test_error,test_on_run_device,test_weight_norm");
  EXPECT_EQ(lines[1].rfind("ok__run.seed=0__train.labelled_fraction=0.5,test_dpo,,0.5,0,", 0), 0u)
      << lines[1];
  std::string summary = test::read_text(grid / "summary.md");
  EXPECT_NE(summary.find("ok__train.labelled_fraction=0.5"), std::string::npos) << summary;
  EXPECT_TRUE(fs::exists(grid / "test_error.svg"));
  EXPECT_NE(test::read_text(grid / "test_error.svg").find("<polyline"), std::string::npos);

  // Rerun: finished runs are skipped; a run that lost its results (killed at the end) resumes.
  auto finished_at = fs::last_write_time(grid / "ok__run.seed=1__train.labelled_fraction=1" / kResultsFile);
  fs::remove(ok / kResultsFile);
  testing::internal::CaptureStderr();
  failures = run_grid(file, {}, control, registry);
  log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(failures, 4);
  EXPECT_NE(log.find("3 already finished"), std::string::npos) << log;
  EXPECT_EQ(fs::last_write_time(grid / "ok__run.seed=1__train.labelled_fraction=1" / kResultsFile),
            finished_at);
  EXPECT_TRUE(fs::exists(ok / kResultsFile)) << test::read_text(ok / "stdout.txt");
  EXPECT_NE(test::read_text(ok / kLogFile).find("resuming"), std::string::npos);

  // Edited experiment: the existing runs no longer match it and are reported, not reused.
  {
    std::ofstream out(file, std::ios::app);
    out << "\n[eval]\nseed = 99\n";
  }
  testing::internal::CaptureStderr();
  failures = run_grid(file, {}, control, registry);
  log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(failures, 8) << log;
  EXPECT_NE(log.find("stale run " + ok.string() + ": its config.toml differs"), std::string::npos)
      << log;
  EXPECT_NE(log.find("0 already finished, 0 to run"), std::string::npos) << log;
}

TEST(Report, MeanAndConfidenceIntervalOverSeeds) {
  test::TempDir temp;
  auto make_run = [&](const std::string& name, int seed, double fraction, double value) {
    fs::path dir = temp / name;
    fs::create_directories(dir);
    std::ofstream(dir / kConfigFile) << "[run]\nseed = " << seed << "\n[train]\nlabelled_fraction = "
                                     << fraction << "\n[loss]\nplugin = \"dpo\"\n[annotator]\n"
                                     << "plugin = \"oracle\"\n";
    std::ofstream(dir / kResultsFile) << "{\"metrics\": {\"reward\": " << value << "}, \"steps\": 1}";
  };
  make_run("dpo__run.seed=0__train.labelled_fraction=0.5", 0, 0.5, 1.0);
  make_run("dpo__run.seed=1__train.labelled_fraction=0.5", 1, 0.5, 2.0);
  make_run("dpo__run.seed=2__train.labelled_fraction=0.5", 2, 0.5, 3.0);
  make_run("dpo__run.seed=0__train.labelled_fraction=1.0", 0, 1.0, 5.0);
  fs::create_directories(temp / "dpo__run.seed=1__train.labelled_fraction=1.0");  // unfinished
  std::ofstream(temp / "dpo__run.seed=1__train.labelled_fraction=1.0" / kConfigFile) << "";
  // The launcher's index of the runs: which method and plot line each belongs to.
  std::ofstream(temp / "grid.json") << R"({"runs": {
      "dpo__run.seed=0__train.labelled_fraction=0.5": {"method": "dpo__train.labelled_fraction=0.5", "line": "dpo"},
      "dpo__run.seed=1__train.labelled_fraction=0.5": {"method": "dpo__train.labelled_fraction=0.5", "line": "dpo"},
      "dpo__run.seed=2__train.labelled_fraction=0.5": {"method": "dpo__train.labelled_fraction=0.5", "line": "dpo"},
      "dpo__run.seed=0__train.labelled_fraction=1.0": {"method": "dpo__train.labelled_fraction=1.0", "line": "dpo"}}})";
  std::string summary = write_report(temp.path());
  // mean 2, sd 1, t(0.975, 2) = 4.303: 2 ± 2.5
  EXPECT_NE(summary.find("2 ± 2.5"), std::string::npos) << summary;
  EXPECT_NE(summary.find("1 unfinished"), std::string::npos) << summary;
  EXPECT_NE(summary.find("| dpo__train.labelled_fraction=1.0 | dpo  | oracle    | 1        | 1 | 5"),
            std::string::npos)
      << summary;
  auto lines = csv_lines(temp / "results.csv");
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0], "run,loss,annotator,labelled_fraction,seed,reward");
  EXPECT_EQ(lines[1], "dpo__run.seed=0__train.labelled_fraction=0.5,dpo,oracle,0.5,0,1");
  std::string svg = test::read_text(temp / "reward.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find(">dpo<"), std::string::npos) << svg;  // legend: one line per method
}

TEST(Report, DivergedSeedsAreCountedNotAveragedAway) {
  test::TempDir temp;
  // Seed 1 diverged: its results.json holds null (how JSON writes NaN) for the reward.
  const char* rewards[] = {"1.0", "null", "3.0"};
  std::string index = R"({"runs": {)";
  for (int seed = 0; seed < 3; ++seed) {
    const std::string name = "dedpo__run.seed=" + std::to_string(seed);
    fs::create_directories(temp / name);
    std::ofstream(temp / name / kConfigFile)
        << "[run]\nseed = " << seed << "\n[train]\nlabelled_fraction = 0.05\n[loss]\nplugin = "
        << "\"dedpo\"\n";
    std::ofstream(temp / name / kResultsFile)
        << "{\"metrics\": {\"reward\": " << rewards[seed] << ", \"steps_done\": 10}}";
    index += (seed ? ",\n" : "") + ("\"" + name + "\": {\"method\": \"dedpo\", \"line\": \"dedpo\"}");
  }
  std::ofstream(temp / "grid.json") << index << "}}";
  std::string summary = write_report(temp.path());
  // Mean of the two finite seeds (2), the cell naming the diverged one; other columns unchanged.
  EXPECT_NE(summary.find("2 ± 13 (n = 2 of 3, 1 diverged)"), std::string::npos) << summary;
  EXPECT_NE(summary.find("10 ± 0"), std::string::npos) << summary;
  EXPECT_EQ(summary.find("10 ± 0 (n ="), std::string::npos) << summary;
}
