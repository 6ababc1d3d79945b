#pragma once
// Shared helpers of the trainer tests: the fixture experiment, weight comparison, JSON lines.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"

namespace dedpo::test {
inline std::string read_text(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
}  // namespace dedpo::test

namespace dedpo::trainer_test {
namespace fs = std::filesystem;

// The fixture world: 40 pairs of 4-vectors, every 5th unlabelled; 12 steps; checkpoint every 4.
inline constexpr const char* kBaseToml = R"(
[run]
name = "t"
seed = 3
output = "runs"
threads = 1

[train]
steps = 12
batch_size = 8
lr = 0.01
checkpoint_every = 4
log_every = 2

[backbone]
plugin = "test_linear"

[data]
plugin = "test_pairs"
n = 40
unlabelled_every = 5

[loss]
plugin = "test_dpo"

[[metrics]]
plugin = "test_metric"
)";

// A reference-model experiment (denoising objective) for [init] tests.
inline constexpr const char* kReferenceToml = R"(
[run]
name = "reference"
seed = 11
threads = 1

[train]
objective = "denoising"
steps = 6
batch_size = 8
lr = 0.02

[backbone]
plugin = "test_linear"

[data]
plugin = "test_pairs"
n = 40
)";

// The real plugins plus the test-only ones; `dedpo` processes started by a test find the latter
// through DEDPO_PLUGIN_PATH.
inline PluginRegistry fixture_registry() {
  setenv("DEDPO_PLUGIN_PATH", DEDPO_TEST_PLUGIN_DIR, 1);
  PluginRegistry registry;
  registry.load_default_locations();
  return registry;
}

inline Experiment experiment(PluginRegistry& registry, const fs::path& dir,
                             std::vector<Override> overrides = {},
                             const char* toml = kBaseToml) {
  return load_experiment_text(toml, "test.toml", dir, overrides, registry);
}

inline RunControl quiet(const fs::path& dir) {
  RunControl control;
  control.run_dir = dir;
  control.progress_bar = false;
  return control;
}

inline std::vector<at::Tensor> weights(const fs::path& run_dir) {
  std::vector<at::Tensor> tensors;
  torch::load(tensors, (run_dir / kWeightsFile).string());
  return tensors;
}

inline bool same_weights(const fs::path& a, const fs::path& b) {
  auto wa = weights(a), wb = weights(b);
  if (wa.size() != wb.size()) return false;
  for (std::size_t i = 0; i < wa.size(); ++i) {
    if (!at::equal(wa[i], wb[i])) return false;  // bit-exact
  }
  return true;
}

inline void expect_same_weights(const fs::path& a, const fs::path& b) {
  EXPECT_TRUE(same_weights(a, b)) << a << " and " << b << " differ";
}

inline std::vector<nlohmann::json> jsonl(const fs::path& file) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

}  // namespace dedpo::trainer_test
