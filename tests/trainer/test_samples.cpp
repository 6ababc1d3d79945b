// The images evaluations keep (run/samples.hpp): one file per distinct image with every metric's
// score, folders that appear whole, and what a killed session left removed on resume.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <sstream>

#include "dedpo/image.hpp"
#include "run/samples.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using dedpo::EvaluationSamples;
using dedpo::ScoredSample;

ScoredSample sample_of(std::int64_t prompt_index, std::int64_t image_index, bool reference, int fill) {
  return {"photo", "a cat", prompt_index, image_index, reference, at::full({4, 6, 3}, fill, at::kByte)};
}

std::vector<std::string> names_in(const fs::path& folder) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<nlohmann::json> index_of(const fs::path& folder) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(dedpo::test::read_file(folder / "samples.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST(EvaluationSamples, OneFilePerImageWithEveryMetricsScore) {
  EvaluationSamples samples;
  samples.add(sample_of(0, 0, false, 10), "pickscore", 21.5);
  samples.add(sample_of(0, 0, true, 20), "pickscore", 20.0);
  samples.add(sample_of(0, 0, false, 10), "aesthetic", 5.25);  // the same image: one more score
  samples.add(sample_of(0, 0, false, 30), "hpsv2", 27.0);      // other noise: a second draw
  dedpo::test::TempDir run;
  samples.write(run.path(), "final", 2, 7);

  const fs::path folder = run / "samples" / "final";
  const auto lines = index_of(folder);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["file"], "photo/model/p000-i0.png");
  EXPECT_EQ(lines[0]["scores"], (nlohmann::json{{"pickscore", 21.5}, {"aesthetic", 5.25}}));
  EXPECT_EQ(lines[0]["step"], 2);
  EXPECT_EQ(lines[0]["seed"], 7);
  EXPECT_EQ(lines[1]["file"], "photo/reference/p000-i0.png");
  EXPECT_EQ(lines[1]["model"], "reference");
  EXPECT_EQ(lines[2]["file"], "photo/model/p000-i0-d1.png");
  EXPECT_EQ(lines[2]["draw"], 1);
  EXPECT_TRUE(at::equal(dedpo::read_image(folder / "photo/model/p000-i0-d1.png"), at::full({4, 6, 3}, 30, at::kByte)));
  EXPECT_EQ(names_in(run / "samples"), std::vector<std::string>{"final"});
}

TEST(EvaluationSamples, AFolderIsReplacedWholeAndNothingIsWrittenWithoutImages) {
  dedpo::test::TempDir run;
  EvaluationSamples first, second;
  first.add(sample_of(0, 0, false, 1), "pickscore", 1);
  first.add(sample_of(1, 0, false, 2), "pickscore", 2);
  second.add(sample_of(0, 0, false, 3), "pickscore", 3);
  first.write(run.path(), "final", 2, 0);
  second.write(run.path(), "final", 2, 0);
  // Only the second write's image: nothing of the first is mixed in.
  EXPECT_EQ(index_of(run / "samples" / "final").size(), 1u);
  EXPECT_FALSE(fs::exists(run / "samples" / "final" / "photo" / "model" / "p001-i0.png"));
  EXPECT_EQ(names_in(run / "samples"), std::vector<std::string>{"final"});

  EvaluationSamples none;
  none.write(run.path(), "step-000001", 1, 0);
  EXPECT_FALSE(fs::exists(run / "samples" / "step-000001"));
}

TEST(EvaluationSamples, ResumingRemovesHalfWrittenFoldersAndLaterEvaluations) {
  dedpo::test::TempDir run;
  for (const char* name : {"step-000010", "step-000020", "step-000030", "final", ".final.partial.123"}) {
    fs::create_directories(run / "samples" / name);
  }
  std::vector<std::string> removed = dedpo::remove_samples_after(run.path(), 20);
  std::sort(removed.begin(), removed.end());
  EXPECT_EQ(removed, (std::vector<std::string>{".final.partial.123", "final", "step-000030"}));
  EXPECT_EQ(names_in(run / "samples"), (std::vector<std::string>{"step-000010", "step-000020"}));
  EXPECT_EQ(dedpo::evaluation_name(20), "step-000020");
}

}  // namespace
