// Grid reports title the image metrics with the column titles their runs recorded (the paper's
// columns, declared by the scorer metrics).
#include <gtest/gtest.h>

#include "dedpo/host/runner.hpp"
#include "test_support.hpp"

namespace {

TEST(GridReport, ImageMetricsGetThePapersColumnNames) {
  dedpo::test::TempDir grid;
  for (int seed : {1, 2}) {
    const auto run = grid / ("dpo_run.seed=" + std::to_string(seed));
    dedpo::test::write_file(run / "config.toml", "[run]\nseed = " + std::to_string(seed) +
                                                     "\n[loss]\nplugin = \"dpo\"\n[train]\nlabelled_fraction = 1.0\n");
    dedpo::test::write_file(run / "results.json",
                            R"json({"metrics": {"pickscore": 21.5, "pickscore_ref": 21.0, "hpsv2_avg": 27.25,
                                            "hpsv2_anime": 27.5, "aesthetic": 5.5, "clip_score": 31.0},
                                "titles": {"pickscore": "PS", "pickscore_ref": "PS (ref)", "hpsv2_avg": "HPSv2 Avg",
                                           "aesthetic": "AS", "clip_score": "CLIP"}})json");
  }
  const std::string summary = dedpo::write_report(grid.path());
  for (const char* title : {" PS ", " PS (ref) ", " HPSv2 Avg ", " hpsv2_anime ", " AS ", " CLIP "}) {
    EXPECT_NE(summary.find(title), std::string::npos) << title << "\n" << summary;
  }
  const std::string csv = dedpo::test::read_file(grid / "results.csv");
  const std::string header = csv.substr(0, csv.find('\n'));
  EXPECT_EQ(header, "run,loss,annotator,labelled_fraction,seed,aesthetic,clip_score,hpsv2_anime,hpsv2_avg,pickscore,pickscore_ref");
}

}  // namespace
