// The golden harness itself: a parity test pointed at a folder without its case fails, naming it.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>

#include "golden.hpp"
#include "test_support.hpp"

namespace {

// Sets an environment variable for its lifetime, then restores what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) previous_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (previous_) setenv(name_, previous_->c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> previous_;
};

bool g_ran_past_missing_case = false;

void parity_test_of_unet_sd15() {
  DEDPO_GOLDEN_CASE(dir, "unet_sd15");
  g_ran_past_missing_case = true;
}

TEST(GoldenHarness, CaseMissingFromTheGivenFolderFailsNamingIt) {
  g_ran_past_missing_case = false;
  const dedpo::test::TempDir empty;
  const ScopedEnv golden("DEDPO_GOLDEN_DIR", empty.path().string());
  EXPECT_FATAL_FAILURE(parity_test_of_unet_sd15(), "golden case 'unet_sd15' missing");
  EXPECT_FALSE(g_ran_past_missing_case);
}

TEST(GoldenHarness, PresentCaseIsFound) {
  g_ran_past_missing_case = false;
  const dedpo::test::TempDir folder;
  dedpo::test::write_file(folder / "unet_sd15" / "outputs.safetensors", "");
  const ScopedEnv golden("DEDPO_GOLDEN_DIR", folder.path().string());
  parity_test_of_unet_sd15();
  EXPECT_TRUE(g_ran_past_missing_case);
}

}  // namespace
