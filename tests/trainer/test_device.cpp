// The run's device reaches every plugin; bf16 trainable weights with float32 masters; numerics
// options; what results.json records of the device and memory.
#include <string>

#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "dedpo/host/accelerator.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/settings.hpp"
#include "test_support.hpp"
#include "trainer_test_util.hpp"

namespace fs = std::filesystem;
using namespace dedpo;
using namespace dedpo::trainer_test;

namespace {

nlohmann::json results_of(const fs::path& run_dir) {
  return nlohmann::json::parse(test::read_text(run_dir / kResultsFile));
}

// What "auto" resolves to on this machine.
std::string automatic_device() { return available_cuda_devices() > 0 ? "cuda:0" : "cpu"; }

}  // namespace

TEST(Device, EveryPluginGetsTheRunsDeviceAndResultsRecordItWithMemoryPeaks) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  for (const std::string device : {"cpu", "auto"}) {
    // The annotator (which trains a backbone of its own through the services) fails when its
    // context names another device than the backbone's; the metric reports whether it matched.
    Experiment e = experiment(registry, temp.path(),
                              {{"run.device", "\"" + device + "\""},
                               {"annotator.plugin", "\"test_annotator\""},
                               {"annotator.train_steps", "2"},
                               {"loss.use_annotator", "true"},
                               {"loss.pool", "\"all\""}});
    const fs::path run_dir = temp / device;
    RunResult result = run_experiment(e, registry, quiet(run_dir));
    ASSERT_TRUE(result.finished) << device;
    const nlohmann::json results = results_of(run_dir);
    EXPECT_EQ(results["device"], device == "auto" ? automatic_device() : device);
    EXPECT_EQ(results["metrics"]["test_on_run_device"], 1.0) << device;
    EXPECT_GT(results["peak_rss_bytes"].get<std::int64_t>(), 0);
    // The caching allocator's peak exists on CUDA only.
    EXPECT_EQ(results["peak_device_memory_bytes"].is_null(), results["device"] == "cpu");
    EXPECT_NE(test::read_text(run_dir / kLogFile).find("peak host memory"), std::string::npos);
  }
}

TEST(Device, TheComputePathAndTheAllocatorAreInTheLogAndResults) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  for (const std::string precision : {"fp32", "bf16"}) {
    Experiment e = experiment(registry, temp.path(), {{"train.precision", "\"" + precision + "\""}});
    const fs::path run_dir = temp / precision;
    ASSERT_TRUE(run_experiment(e, registry, quiet(run_dir)).finished);
    const ComputePath expected = compute_path(c10::Device(c10::kCPU), precision == "bf16");
    const nlohmann::json results = results_of(run_dir);
    EXPECT_EQ(results["compute"], expected.description);
    EXPECT_EQ(results["allocator"], describe(current_allocator_policy()));
    const std::string log = test::read_text(run_dir / kLogFile);
    EXPECT_NE(log.find("compute: " + expected.description + "; allocator: "), std::string::npos) << log;
    EXPECT_EQ(log.find("warning: precision") != std::string::npos, !expected.warning.empty()) << log;
    if (!expected.warning.empty()) EXPECT_NE(log.find("warning: " + expected.warning), std::string::npos) << log;
  }
}

TEST(Device, NumericsOptionsReachTheContext) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path(), {{"run.deterministic", "true"}, {"run.tf32", "true"}});
  ASSERT_TRUE(run_experiment(e, registry, quiet(temp / "a")).finished);
  EXPECT_TRUE(at::globalContext().deterministicAlgorithms());
  EXPECT_TRUE(at::globalContext().allowTF32CuBLAS());
  Experiment plain = experiment(registry, temp.path());
  ASSERT_TRUE(run_experiment(plain, registry, quiet(temp / "b")).finished);
  EXPECT_FALSE(at::globalContext().deterministicAlgorithms());
  EXPECT_FALSE(at::globalContext().allowTF32CuBLAS());
  // Deterministic kernels do not change CPU results, which are deterministic already.
  expect_same_weights(temp / "a", temp / "b");
}

TEST(WeightsDtype, Bfloat16WeightsTrainWithFloat32MastersAndResumeExactly) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  const std::vector<Override> bf16 = {{"train.precision", "\"bf16\""}, {"train.weights_dtype", "\"bfloat16\""}};
  Experiment e = experiment(registry, temp.path(), bf16);
  RunResult full = run_experiment(e, registry, quiet(temp / "full"));
  ASSERT_TRUE(full.finished);
  EXPECT_EQ(full.skipped_steps, 0);
  // The saved weights are the float32 masters: their low bits are not a bfloat16 rounding.
  double below_bf16 = 0;
  for (const at::Tensor& w : weights(temp / "full")) {
    EXPECT_EQ(w.scalar_type(), at::kFloat);
    below_bf16 += (w - w.to(at::kBFloat16).to(at::kFloat)).abs().sum().item<double>();
  }
  EXPECT_GT(below_bf16, 0);
  // The weights moved away from the float32 run's start by training (the masters' updates show).
  Experiment fp32 = experiment(registry, temp.path(), {{"train.steps", "1"}, {"train.lr", "1e-12"}});
  run_experiment(fp32, registry, quiet(temp / "start"));
  const auto start = weights(temp / "start"), trained = weights(temp / "full");
  double moved = 0;
  for (std::size_t i = 0; i < start.size(); ++i) moved += (trained[i] - start[i]).abs().sum().item<double>();
  EXPECT_GT(moved, 0.05);

  // `dedpo eval` of the run evaluates the float32 masters it saved, as the run's own evaluation did.
  const nlohmann::json results = results_of(temp / "full");  // before eval rewrites it
  const Figures again = evaluate_run(temp / "full", {}, registry);
  ASSERT_FALSE(again.empty());
  for (const auto& [name, value] : again) EXPECT_NEAR(value, results["metrics"][name].get<double>(), 1e-6) << name;

  // Resuming restores the float32 masters, not only their bf16 rounding: the same weights.
  RunControl stop = quiet(temp / "cut");
  stop.stop_after_steps = 7;
  run_experiment(e, registry, stop);
  EXPECT_TRUE(resume_run(temp / "cut", registry, quiet({})).finished);
  expect_same_weights(temp / "full", temp / "cut");
}

TEST(WeightsDtype, Bfloat16WeightsNeedBf16ComputeAndNoEma) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  auto error = [&](std::vector<Override> overrides) -> std::string {
    try {
      experiment(registry, temp.path(), std::move(overrides));
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(error({{"train.weights_dtype", "\"bfloat16\""}}).find("needs precision = \"bf16\""), std::string::npos);
  EXPECT_NE(error({{"train.precision", "\"bf16\""}, {"train.weights_dtype", "\"bfloat16\""}, {"train.ema_decay", "0.9"}})
                .find("ema_decay"),
            std::string::npos);
  EXPECT_NE(error({{"train.weights_dtype", "\"float16\""}}).find("weights_dtype"), std::string::npos);
}
