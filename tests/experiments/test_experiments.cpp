// The experiment files shipped in experiments/ stay valid as plugins evolve: each one, with its
// [vars] pointed at tiny generated models, data and prompt files, passes `dedpo validate` (every
// plugin constructed, every option checked), and so does each grid case's switch of plugins.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cctype>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "test_support.hpp"

namespace fs = std::filesystem;
using dedpo::test::run_dedpo;
using dedpo::test::run_shell;
using dedpo::test::TempDir;
using dedpo::test::write_file;
using testing::HasSubstr;

namespace {

const fs::path kExperiments = fs::path(DEDPO_SOURCE_DIR) / "experiments";

// Tiny stand-ins for every path paths.toml names, made once per test program.
class SdExperiments : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const TempDir& d = *dir_;
    ASSERT_EQ(run_shell(std::string("'") + DEDPO_MAKE_TINY_SD + "' '" + (d / "sd15").string() + "'").exit_code, 0);
    ASSERT_EQ(run_shell(std::string("'") + DEDPO_MAKE_TINY_SD + "' '" + (d / "sdxl").string() +
                        "' --layout sdxl").exit_code, 0);
    ASSERT_EQ(run_shell(std::string("'") + DEDPO_MAKE_TINY_CLIP + "' '" + (d / "clip").string() + "'").exit_code, 0);
    write_file(d / "pairs.jsonl", "{\"prompt\": \"a fox\", \"image_a\": \"a.png\", \"image_b\": \"b.png\"}\n");
    write_file(d / "prompts.txt", "a fox\n");
    write_file(d / "style.json", "[\"an owl\"]\n");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // --set vars.NAME=... for every variable of experiments/sd/paths.toml.
  static std::string tiny_vars() {
    const TempDir& d = *dir_;
    const std::vector<std::pair<std::string, fs::path>> vars = {
        {"sd15", d / "sd15"},          {"sdxl", d / "sdxl"},
        {"sdxl_vae", d / "sdxl" / "vae"}, {"fifa5k", d / "pairs.jsonl"},
        {"hpdv2", d / "pairs.jsonl"},  {"clip_l", d / "clip"},
        {"pickscore", d / "clip"},     {"clip_h", d / "clip"},
        {"hpsv2_weights", d / "clip" / "model.safetensors"},
        {"aesthetic_head", d / "clip" / "aesthetic_head.safetensors"},
        {"eval_prompts", d / "prompts.txt"}};
    std::string out;
    for (const auto& [name, path] : vars) out += " --set 'vars." + name + "=" + path.string() + "'";
    out += " --set 'vars.hpdv2_prompts=" + (d / "style.json").string() + ", " +
           (d / "prompts.txt").string() + "'";
    return out;
  }

  static TempDir* dir_;
};
TempDir* SdExperiments::dir_ = nullptr;

// The plugin switches the paper tables' grid cases make (see experiments/sd/*_sd15.toml).
const std::vector<std::string> kCaseSwitches = {
    "",
    " --set loss.plugin=sft",
    " --set loss.plugin=dpo --set loss.beta=5000",
    " --set loss.plugin=naive_ssl_dpo --set annotator.plugin=clip_score --set 'annotator.path=${clip_l}'",
    " --set annotator.plugin=vlm --set 'annotator.base_url=${vlm_url}' --set 'annotator.model=${vlm_model}'",
};

}  // namespace

TEST_F(SdExperiments, PaperTablesValidateWithEveryCasesPlugins) {
  for (const char* table :
       {"fifa5k_sd15", "fifa5k_sdxl", "hpdv2_sd15", "hpdv2_sdxl", "sdxl_on_cluster"}) {
    const fs::path file = kExperiments / "sd" / (std::string(table) + ".toml");
    ASSERT_TRUE(fs::exists(file)) << file;
    for (const std::string& switches : kCaseSwitches) {
      auto result = run_dedpo("validate '" + file.string() + "'" + tiny_vars() + switches);
      EXPECT_EQ(result.exit_code, 0) << table << switches << "\n" << result.output;
      EXPECT_THAT(result.output, HasSubstr(": valid"));
      EXPECT_THAT(result.output, testing::Not(HasSubstr("${")));
    }
  }
}

TEST_F(SdExperiments, UnsetPathsAreNamedWithTheOptionThatNeedsThem) {
  // The shipped paths.toml holds placeholders: validating as shipped names what to set.
  auto result = run_dedpo("validate '" + (kExperiments / "sd" / "fifa5k_sd15.toml").string() + "'");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("is not a folder"));
}

TEST(ToyExperiments, EveryFileValidates) {
  for (const auto& entry : fs::directory_iterator(kExperiments / "toy")) {
    // common.toml and *_common.toml (scarce_common.toml) are fragments for the others' `base`,
    // not experiments of their own.
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".toml" || name == "common.toml" || name.ends_with("_common.toml")) {
      continue;
    }
    auto result = run_dedpo("validate '" + entry.path().string() + "'");
    EXPECT_EQ(result.exit_code, 0) << entry.path() << "\n" << result.output;
  }
}

// The toy grids vary only the seed and the labelled fraction, so their method lines are their
// case names: [report] baseline names one (`dedpo grid` refuses it otherwise, before any run).
TEST(ToyExperiments, ReportBaselineNamesAGridCase) {
  std::size_t reported = 0;
  for (const auto& entry : fs::directory_iterator(kExperiments / "toy")) {
    if (entry.path().extension() != ".toml") continue;
    const toml::table table = toml::parse_file(entry.path().string());
    const std::optional<std::string> baseline = table["report"]["baseline"].value<std::string>();
    if (!baseline) continue;
    ++reported;
    std::set<std::string> cases;
    if (const toml::array* array = table["grid"]["cases"].as_array()) {
      for (const toml::node& item : *array) cases.insert((*item.as_table())["name"].value_or(std::string()));
    }
    EXPECT_TRUE(cases.contains(*baseline)) << entry.path() << ": baseline " << *baseline;
    EXPECT_EQ(table["report"]["primary"].value_or(std::string()), "reward") << entry.path();
  }
  EXPECT_EQ(reported, 4u);  // paper_table, label_budget, scarce_table, scarce_budget
}

namespace {

// Every seed a toy experiment file runs: its grid's run.seed values, else its [run] seed (the
// base file's when it sets none).
std::set<std::int64_t> toy_seeds(const fs::path& file) {
  toml::table table = toml::parse_file(file.string());
  std::set<std::int64_t> seeds;
  if (const toml::array* grid = table["grid"]["run.seed"].as_array()) {
    for (const toml::node& seed : *grid) seeds.insert(seed.value_or<std::int64_t>(-1));
    return seeds;
  }
  std::optional<std::int64_t> seed = table["run"]["seed"].value<std::int64_t>();
  if (!seed) seed = toml::parse_file((kExperiments / "toy" / "common.toml").string())["run"]["seed"].value<std::int64_t>();
  seeds.insert(seed.value_or(-1));
  return seeds;
}

// Every value of a key named "beta" anywhere in the file.
void collect_betas(const toml::node& node, std::set<double>& betas) {
  if (const toml::table* table = node.as_table()) {
    for (const auto& [key, value] : *table) {
      if (key.str() == "beta" && value.is_number()) betas.insert(value.value_or(0.0));
      collect_betas(value, betas);
    }
  } else if (const toml::array* array = node.as_array()) {
    for (const toml::node& item : *array) collect_betas(item, betas);
  }
}

}  // namespace

// Hyper-parameters are chosen on validation seeds that no reported toy experiment uses, and
// docs/toy_world.md names those seeds and the beta the experiment files use.
TEST(ToyExperiments, BetaComesFromValidationSeedsNeverReportedAndTheDocsAgree) {
  const fs::path toy = kExperiments / "toy";
  const std::set<std::int64_t> validation = toy_seeds(toy / "beta_validation.toml");
  ASSERT_FALSE(validation.empty());
  std::set<double> betas;
  for (const char* reported : {"paper_table.toml", "label_budget.toml", "default.toml"}) {
    for (std::int64_t seed : toy_seeds(toy / reported)) {
      EXPECT_EQ(validation.count(seed), 0u) << reported << " reports validation seed " << seed;
    }
    collect_betas(toml::parse_file((toy / reported).string()), betas);
  }
  ASSERT_EQ(betas.size(), 1u) << "the reported toy experiments disagree on beta";
  const double beta = *betas.begin();
  const std::string doc = dedpo::test::read_file(fs::path(DEDPO_SOURCE_DIR) / "docs" / "toy_world.md");
  const std::string named = "β = " + std::to_string(static_cast<long long>(beta));
  const std::size_t at = doc.find(named);
  ASSERT_NE(at, std::string::npos) << "docs/toy_world.md does not say " << named;
  EXPECT_FALSE(std::isdigit(static_cast<unsigned char>(doc[at + named.size()])))
      << "docs/toy_world.md names another beta: " << doc.substr(at, named.size() + 3);
  for (std::int64_t seed : validation) {
    EXPECT_NE(doc.find(std::to_string(seed)), std::string::npos)
        << "docs/toy_world.md does not name validation seed " << seed;
  }
}
