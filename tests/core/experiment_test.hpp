#pragma once
// The fixture of the experiment tests: a minimal experiment on the fixture plugins and a loader
// that returns the error text.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "dedpo/host/experiment.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using dedpo::test::TempDir;
using dedpo::test::write_file;
using testing::HasSubstr;

namespace {

const char* kMinimal = R"(
[run]
name = "fixture"
[backbone]
plugin = "fixture_backbone"
[data]
plugin = "fixture_data"
[loss]
plugin = "fixture_loss"
scale = 5.0
)";

class ExperimentTest : public testing::Test {
 protected:
  void SetUp() override { registry.load_directory(DEDPO_FIXTURE_GOOD_DIR); }

  dedpo::Experiment load(const std::string& name, std::vector<dedpo::Override> overrides = {}) {
    return dedpo::load_experiment(dir / name, overrides, registry);
  }
  std::string error_of(const std::string& name, std::vector<dedpo::Override> overrides = {}) {
    try {
      load(name, overrides);
    } catch (const dedpo::Error& error) {
      return error.what();
    }
    return "(no error)";
  }
  std::string path(const std::string& name) { return fs::weakly_canonical(dir / name).string(); }

  dedpo::PluginRegistry registry;
  TempDir dir;
};

}  // namespace
