// The labelled split on the fixture plugins: split.csv in every run folder, the random and the
// stratified-by-prompt draw, ties dropped among the labelled pairs only, and the [train] options'
// checks. (Ties and the dataset's counts are also exercised end to end in tests/pairs_manifest.)
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "test_support.hpp"
#include "trainer_test_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace dedpo;
using namespace dedpo::trainer_test;

struct SplitRow {
  int pair;
  std::string id;
  std::string prompt;
  bool labelled;
  std::string label;
};

std::vector<SplitRow> read_split(const fs::path& run_dir) {
  std::istringstream in(test::read_text(run_dir / kSplitFile));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "pair,id,prompt,labelled,label");
  std::vector<SplitRow> rows;
  while (std::getline(in, line)) {
    std::vector<std::string> cells(1);
    for (char c : line) {
      if (c == ',') {
        cells.emplace_back();
      } else {
        cells.back() += c;
      }
    }
    EXPECT_EQ(cells.size(), 5u) << line;
    rows.push_back({std::stoi(cells[0]), cells[1], cells[2], cells[3] == "1", cells[4]});
  }
  return rows;
}

RunResult run(PluginRegistry& registry, const fs::path& dir, std::vector<Override> overrides) {
  overrides.push_back({"train.steps", "2"});
  overrides.push_back({"train.labelled_fraction", "0.5"});
  Experiment e = experiment(registry, dir, overrides);
  RunControl control;
  control.progress_bar = false;
  return run_experiment(e, registry, control);
}

// The fixture has 40 pairs; every 5th (0, 5, ...) has no human label, so 32 can be labelled.
TEST(Split, EveryRunWritesWhichPairsAreLabelledAndOnlyTheirLabels) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  RunResult result = run(registry, temp.path(), {});
  std::vector<SplitRow> rows = read_split(result.run_dir);
  ASSERT_EQ(rows.size(), 40u);
  int labelled = 0;
  for (const SplitRow& row : rows) {
    EXPECT_EQ(row.pair, &row - rows.data());
    if (row.labelled) {
      ++labelled;
      EXPECT_NE(row.pair % 5, 0) << "pair " << row.pair << " has no human label";
      EXPECT_TRUE(row.label == "0" || row.label == "1") << row.label;
    } else {
      EXPECT_EQ(row.label, "");
    }
  }
  EXPECT_EQ(labelled, 16);
  nlohmann::json data =
      nlohmann::json::parse(test::read_text(result.run_dir / kResultsFile)).at("data");
  EXPECT_EQ(data.at("pairs"), 40);
  EXPECT_EQ(data.at("labelled"), 16);
  EXPECT_EQ(data.at("labelled_ties_kept"), 0);
  EXPECT_THAT(test::read_text(result.run_dir / kLogFile),
              ::testing::HasSubstr("data: 40 pairs, 16 labelled (random split), 0 labelled ties kept"));
}

TEST(Split, ByPromptGivesEachPromptItsShareOfLabels) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  for (const char* seed : {"1", "2", "3"}) {
    RunResult result = run(registry, temp.path(), {{"train.split", "by_prompt"}, {"run.seed", seed}});
    std::map<std::string, int> candidates, labelled;
    for (const SplitRow& row : read_split(result.run_dir)) {
      if (row.pair % 5 != 0) ++candidates[row.prompt];
      if (row.labelled) ++labelled[row.prompt];
    }
    int total = 0;
    for (const auto& [prompt, n] : candidates) {
      EXPECT_GE(labelled[prompt], n / 2) << prompt << ", seed " << seed;
      EXPECT_LE(labelled[prompt], (n + 1) / 2) << prompt << ", seed " << seed;
      total += labelled[prompt];
    }
    EXPECT_EQ(total, 16) << "seed " << seed;
  }
}

TEST(Split, SameSeedSameSplitAndAnotherSeedAnother) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  RunResult a = run(registry, temp.path(), {});
  RunResult b = run(registry, temp.path(), {});
  RunResult c = run(registry, temp.path(), {{"run.seed", "4"}});
  EXPECT_EQ(test::read_text(a.run_dir / kSplitFile), test::read_text(b.run_dir / kSplitFile));
  EXPECT_NE(test::read_text(a.run_dir / kSplitFile), test::read_text(c.run_dir / kSplitFile));
}

// ties = "drop" reads only the labels training may see: the hidden label of an unlabelled pair,
// tie or not, never decides whether it stays in the unlabelled pool.
TEST(Split, DroppedTiesAreLabelledOnesAndHiddenLabelsLeaveTheUnlabelledPoolAlone) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  // Original pair numbers of the unlabelled and the labelled pairs (split.csv names the original
  // position in its id column once pairs were dropped).
  auto pools = [](const std::vector<SplitRow>& rows) {
    std::pair<std::set<std::string>, std::set<std::string>> out;
    for (const SplitRow& row : rows) {
      const std::string pair = row.id.empty() ? std::to_string(row.pair) : row.id;
      (row.labelled ? out.second : out.first).insert(pair);
    }
    return out;
  };
  RunResult without_ties = run(registry, temp.path(), {{"train.ties", "drop"}});
  RunResult with_ties =
      run(registry, temp.path(), {{"train.ties", "drop"}, {"data.tie_every", "3"}});
  const auto [unlabelled, labelled] = pools(read_split(without_ties.run_dir));
  const auto [unlabelled_tied, labelled_tied] = pools(read_split(with_ties.run_dir));
  EXPECT_EQ(unlabelled_tied, unlabelled) << "hidden ties changed the unlabelled pool";
  // The labelled ties (pairs 1, 4, 7, ... with a label) are gone, the other labelled pairs stay.
  std::set<std::string> expected_labelled;
  std::int64_t labelled_ties = 0;
  for (const std::string& pair : labelled) {
    const int index = std::stoi(pair);
    if (index % 3 == 1) {
      ++labelled_ties;
    } else {
      expected_labelled.insert(pair);
    }
  }
  EXPECT_GT(labelled_ties, 0);
  EXPECT_EQ(labelled_tied, expected_labelled);
  nlohmann::json data =
      nlohmann::json::parse(test::read_text(with_ties.run_dir / kResultsFile)).at("data");
  EXPECT_EQ(data.at("labelled_ties_dropped"), labelled_ties);
  EXPECT_EQ(data.at("pairs"), 40 - labelled_ties);
}

TEST(Split, BadOptionsAreNamed) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  EXPECT_THAT([&] { run(registry, temp.path(), {{"train.split", "sideways"}}); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr(
                  "option 'split': expected one of \"random\", \"by_prompt\", got \"sideways\"")));
  EXPECT_THAT([&] { run(registry, temp.path(), {{"train.ties", "half"}}); },
              ::testing::ThrowsMessage<Error>(::testing::HasSubstr(
                  "option 'ties': expected one of \"keep\", \"drop\", got \"half\"")));
}

}  // namespace
