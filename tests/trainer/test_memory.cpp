// Memory over a long run: with dedpo's allocator policy (keep freed buffers for reuse) the
// resident set of a toy training levels off after its first steps instead of growing with them,
// and the same check catches a tensor leaked per step.
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dedpo/host/accelerator.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/runner.hpp"
#include "test_support.hpp"
#include "trainer_test_util.hpp"

using namespace dedpo;
using namespace dedpo::trainer_test;

namespace {

// A toy preference run from random weights (no [init]): 400 steps of 128 pairs, evaluated at the end only.
constexpr const char* kToyToml = R"(
[run]
name = "memory"
seed = 1
threads = 1

[backbone]
plugin = "toy"

[data]
plugin = "toy_pairs"
n_pairs = 512

[train]
objective = "preference"
steps = 400
batch_size = 128
lr = 1e-3
log_every = 100
checkpoint_every = 100

[loss]
plugin = "dpo"

[[metrics]]
plugin = "toy_reward"
n_samples = 64
)";

constexpr std::int64_t kSteps = 400;
// Largest growth of the resident set allowed between steps 50-100 and steps 300-400: a few pages
// of allocator bookkeeping, far below a leak of one 64 KiB tensor per step (> 12 MiB here).
constexpr double kGrowthBoundMib = 3.0;

double resident_mib() { return static_cast<double>(resident_bytes()) / (1024.0 * 1024.0); }

// The resident set after each step of the toy run; `also_each_step` runs after the step first.
std::vector<double> resident_per_step(const std::function<void()>& also_each_step) {
  unsetenv("DEDPO_ALLOCATOR");
  EXPECT_EQ(apply_allocator_policy(), AllocatorPolicy::keep_buffers);
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  const Experiment e = experiment(registry, temp.path(), {}, kToyToml);
  std::vector<double> mib;
  RunControl control = quiet(temp / "run");
  control.after_step = [&](std::int64_t) {
    also_each_step();
    mib.push_back(resident_mib());
  };
  EXPECT_TRUE(run_experiment(e, registry, control).finished);
  return mib;
}

double growth_mib(const std::vector<double>& mib) {
  EXPECT_EQ(static_cast<std::int64_t>(mib.size()), kSteps);
  if (mib.size() < static_cast<std::size_t>(kSteps)) return 0.0;
  const double early = *std::max_element(mib.begin() + 50, mib.begin() + 100);
  const double late = *std::max_element(mib.begin() + 300, mib.end());
  return late - early;
}

}  // namespace

TEST(Memory, ResidentSetLevelsOffOverAToyRun) {
  const std::vector<double> mib = resident_per_step([] {});
  EXPECT_LT(growth_mib(mib), kGrowthBoundMib) << "resident MiB at steps 50, 100, 300, 400: " << mib[49] << ", "
                                              << mib[99] << ", " << mib[299] << ", " << mib[399];
}

// The check above is meaningful only if a leak fails it: keep one 64 KiB tensor per step.
TEST(Memory, TheGrowthBoundCatchesATensorLeakedPerStep) {
  std::vector<at::Tensor> leaked;
  const std::vector<double> mib = resident_per_step([&] { leaked.push_back(at::ones({16 * 1024})); });
  EXPECT_GT(growth_mib(mib), kGrowthBoundMib);
}
