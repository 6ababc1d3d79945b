// Grid tests: child processes (the dedpo program), a failing case, skipping and resuming, and
// the report (results.csv, summary.md with paired comparisons, charts as PNG and SVG).
#include <fstream>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <gmock/gmock.h>

#include <gtest/gtest.h>

#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "chart_files.hpp"
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

// A finished run of a grid as the launcher leaves it: config.toml and results.json (a NaN
// figure is written as null, as a diverged run writes it).
void write_finished_run(const fs::path& dir, const std::string& loss, std::int64_t seed,
                        double fraction, const nlohmann::json& metrics) {
  fs::create_directories(dir);
  std::ofstream(dir / kConfigFile) << "[run]\nseed = " << seed << "\n[train]\nlabelled_fraction = "
                                   << fraction << "\n[loss]\nplugin = \"" << loss << "\"\n";
  std::ofstream(dir / kResultsFile) << nlohmann::json{{"metrics", metrics}, {"steps", 1}}.dump();
}

// grid.json as the launcher writes it: the runs' methods and lines, their order, [report].
struct IndexedRun {
  std::string folder, method, line;
};
void write_grid_index(const fs::path& grid, const std::vector<IndexedRun>& runs,
                      const nlohmann::json& report) {
  nlohmann::json index = {{"runs", nlohmann::json::object()}, {"order", nlohmann::json::array()},
                          {"report", report}};
  for (const IndexedRun& run : runs) {
    index["runs"][run.folder] = {{"method", run.method}, {"line", run.line}};
    index["order"].push_back(run.folder);
  }
  std::ofstream(grid / "grid.json") << index.dump(2);
}

// The line of `text` that starts with `start`; empty when none does.
std::string line_starting(const std::string& text, const std::string& start) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(start, 0) == 0) return line;
  }
  return {};
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
  test::expect_svg(grid / "test_error.svg");
  test::expect_png(grid / "test_error.png");
  // grid.json keeps the grid file's order (case "ok" before "broken", unlike the alphabet), and
  // the report lists the methods in it.
  const nlohmann::json index = nlohmann::json::parse(test::read_text(grid / "grid.json"));
  ASSERT_EQ(index["order"].size(), 8u);
  EXPECT_EQ(index["order"][0], "ok__run.seed=0__train.labelled_fraction=0.5");
  EXPECT_EQ(index["order"][4], "broken__run.seed=0__train.labelled_fraction=0.5");

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
  // Two fractions on the line "dpo": a sweep, drawn against the labelled fraction.
  EXPECT_NE(summary.find("against the labelled fraction"), std::string::npos) << summary;
  test::expect_svg(temp / "reward.svg");
  test::expect_png(temp / "reward.png");
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

TEST(Grid, UnknownReportBaselineIsRefusedBeforeAnyRunStarts) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  fs::path file = temp / "grid.toml";
  std::ofstream(file) << kBaseToml << kGrid << "\n[report]\nbaseline = \"dpo\"\n";
  GridControl control;
  control.program = DEDPO_EXECUTABLE;
  try {
    run_grid(file, {}, control, registry);
    FAIL() << "expected an Error";
  } catch (const Error& error) {
    EXPECT_THAT(error.what(), testing::HasSubstr(
                                  "[report] baseline = \"dpo\": no method line of the grid has "
                                  "that name (known: ok, broken)"));
  }
  EXPECT_FALSE(fs::exists(temp / "runs" / "t-grid"));
}

// The paper table's shape: every method at one labelled fraction (25%, DPO-100% at 1).
TEST(Report, PairedComparisonsWithTheBaselineInTheGridsOrder) {
  test::TempDir temp;
  // win_rate: the baseline and a method whose paired t-test is known (mpmath: mean difference
  // 0.03875, 95% interval [0.011775, 0.065725], p = 0.011492 on 7 df).
  const double baseline[] = {0.25, 0.40, 0.30, 0.33, 0.29, 0.27, 0.36, 0.35};
  const double dedpo[] = {0.31, 0.42, 0.28, 0.39, 0.35, 0.30, 0.44, 0.37};
  std::vector<IndexedRun> index;
  auto add = [&](const std::string& method, const std::string& loss, int seed, double fraction,
                 double win_rate) {
    const std::string folder = method + "__run.seed=" + std::to_string(seed);
    const nlohmann::json metrics = {{"reward", 0.3 + 0.01 * seed + 0.1 * win_rate},
                                    {"reward_ref", 0.205},
                                    {"win_rate", win_rate}};
    write_finished_run(temp / folder, loss, seed, fraction, metrics);
    index.push_back({folder, method, method});
  };
  for (int seed = 1; seed <= 8; ++seed) {
    // sft: seed 3 diverged, seed 8 never finished.
    if (seed != 8) add("sft-25h", "sft", seed, 0.25, seed == 3 ? NAN : 0.2 + 0.01 * seed);
  }
  for (int seed = 1; seed <= 8; ++seed) add("dpo-25h", "dpo", seed, 0.25, baseline[seed - 1]);
  for (int seed = 1; seed <= 8; ++seed) add("dpo-100h", "dpo", seed, 1.0, baseline[seed - 1] + 0.1);
  for (int seed = 1; seed <= 8; ++seed) add("dedpo", "dedpo", seed, 0.25, dedpo[seed - 1]);
  write_grid_index(temp.path(), index, {{"baseline", "dpo-25h"}, {"primary", "win_rate"}});

  const std::string summary = write_report(temp.path());
  // The grid's order, not the alphabet's (folders sort dedpo, dpo-100h, dpo-25h, sft-25h).
  const std::size_t sft = summary.find("| sft-25h "), dpo = summary.find("| dpo-25h "),
                    full = summary.find("| dpo-100h "), de = summary.find("| dedpo ");
  ASSERT_NE(de, std::string::npos) << summary;
  EXPECT_LT(sft, dpo);
  EXPECT_LT(dpo, full);
  EXPECT_LT(full, de);
  // The primary metric first; the reference's constant figure once, below the table.
  const std::string header = line_starting(summary, "| method ");
  EXPECT_THAT(header, testing::MatchesRegex(R"(\| method .*\| n +\| win_rate +\| reward +\|)")) << header;
  EXPECT_THAT(summary, testing::HasSubstr("so not in the table: reward_ref = 0.205."));
  EXPECT_THAT(line_starting(summary, "| sft-25h "), testing::HasSubstr("(n = 6 of 7, 1 diverged)"));

  EXPECT_THAT(summary, testing::HasSubstr("## Paired comparison with dpo-25h (win_rate)"));
  const std::string paired = summary.substr(summary.find("## Paired comparison"));
  const std::string dedpo_row = line_starting(paired, "| dedpo ");
  EXPECT_THAT(dedpo_row, testing::MatchesRegex(
                             R"(.*\| \[\+0\.0118, \+0\.0657\] +\| 0\.011 +\| \* +\| 8 of 8 +\|)"));
  EXPECT_THAT(line_starting(paired, "| dpo-25h "), testing::HasSubstr("(baseline)"));
  // DPO-100% is 0.1 above on every seed: certain, whatever its other fraction.
  EXPECT_THAT(line_starting(paired, "| dpo-100h "), testing::HasSubstr("| +0.1 "));
  EXPECT_THAT(line_starting(paired, "| dpo-100h "), testing::MatchesRegex(R"(.*\| < 0\.001 +\| \*\*\* +\|.*)"));
  // sft: seed 3 diverged and seed 8 is missing; 6 pairs of the 8 seeds.
  EXPECT_THAT(line_starting(paired, "| sft-25h "), testing::HasSubstr("| 6 of 8 (2 diverged or missing) |"));
  EXPECT_THAT(paired, testing::HasSubstr("two-sided paired t-test"));
  EXPECT_THAT(paired, testing::HasSubstr("* p < 0.05, ** p < 0.01, *** p < 0.001"));

  // One fraction per method line: a dot-and-interval chart per table metric, none for reward_ref.
  EXPECT_THAT(summary, testing::HasSubstr("as a dot-and-interval chart, one row per method"));
  EXPECT_THAT(summary, testing::HasSubstr(": win_rate.png, reward.png"));
  for (const char* metric : {"win_rate", "reward"}) {
    test::expect_svg(temp / (std::string(metric) + ".svg"));
    test::expect_png(temp / (std::string(metric) + ".png"));
  }
  EXPECT_FALSE(fs::exists(temp / "reward_ref.png"));
}

TEST(Report, LabelBudgetSweepComparesAtTheSameFractionAndDrawsBands) {
  test::TempDir temp;
  std::vector<IndexedRun> index;
  for (const std::string line : {"dpo", "dedpo"}) {
    for (const double fraction : {0.1, 0.5, 1.0}) {
      const std::string method = fmt::format("{}__train.labelled_fraction={}", line, fraction);
      for (int seed = 0; seed < 3; ++seed) {
        const std::string folder = fmt::format("{}__run.seed={}__train.labelled_fraction={}", line, seed, fraction);
        // dedpo is above dpo by 0.01, 0.02, 0.03 on seeds 0, 1, 2: t = 3.46 on 2 df, p = 0.074.
        const double reward = fraction + 0.001 * seed + (line == "dedpo" ? 0.01 * (seed + 1) : 0.0);
        write_finished_run(temp / folder, line, seed, fraction, {{"reward", reward}});
        index.push_back({folder, method, line});
      }
    }
  }
  write_grid_index(temp.path(), index, {{"baseline", "dpo"}, {"primary", "reward"}});
  const std::string summary = write_report(temp.path());
  const std::string paired = summary.substr(summary.find("## Paired comparison with dpo (reward)"));
  EXPECT_THAT(line_starting(paired, "| dpo__train.labelled_fraction=0.5 "), testing::HasSubstr("(baseline)"));
  const std::string row = line_starting(paired, "| dedpo__train.labelled_fraction=0.5 ");
  EXPECT_THAT(row, testing::HasSubstr("| +0.02 "));
  EXPECT_THAT(row, testing::MatchesRegex(R"(.*\| 0\.074 +\| n\.s\. +\| 3 of 3 +\|)"));
  EXPECT_THAT(paired, testing::HasSubstr("on the same seed and labelled fraction"));
  EXPECT_THAT(summary, testing::HasSubstr("each metric against the labelled fraction, one line with its "
                                          "interval band per method"));
  test::expect_svg(temp / "reward.svg");
  test::expect_png(temp / "reward.png");
}

TEST(Report, UnknownPrimaryOrBaselineIsRefusedNamingTheKnownOnes) {
  test::TempDir temp;
  std::vector<IndexedRun> index;
  for (const std::string method : {"sft-25h", "dpo-25h"}) {
    const std::string folder = method + "__run.seed=1";
    write_finished_run(temp / folder, "dpo", 1, 0.25, {{"reward", 0.3}, {"reward_ref", 0.2}});
    index.push_back({folder, method, method});
  }
  auto error_of = [&](const nlohmann::json& report) {
    write_grid_index(temp.path(), index, report);
    try {
      write_report(temp.path());
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("(no error)");
  };
  EXPECT_THAT(error_of({{"primary", "rewrd"}}),
              testing::HasSubstr("grid.json: [report] primary = \"rewrd\": no figure of the grid's "
                                 "runs has that name (known: reward, reward_ref)"));
  EXPECT_THAT(error_of({{"baseline", "dpo-50h"}}),
              testing::HasSubstr("grid.json: [report] baseline = \"dpo-50h\": no method line of the "
                                 "grid has that name (known: sft-25h, dpo-25h)"));
  EXPECT_EQ(error_of({{"baseline", "dpo-25h"}, {"primary", "reward"}}), "(no error)");
}
