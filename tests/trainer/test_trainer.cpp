// Trainer tests on the test-only fixture plugins (tests/trainer_fixture): determinism, resume,
// NaN guard, checkpoints, run folders, annotation cache, [init], schedules and Adafactor.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include "dedpo/host/experiment.hpp"
#include "dedpo/host/optimizer.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "test_support.hpp"
#include "trainer_test_util.hpp"

namespace fs = std::filesystem;
using namespace dedpo;
using namespace dedpo::trainer_test;

// ---------------------------------------------------------------------------------------------
// Unit: schedule, AdamW, the gradient norm and Adafactor

TEST(Schedule, WarmupThenDecay) {
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 4, 14, LrSchedule::constant, 0), 0.25);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 4, 14, LrSchedule::constant, 3), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 4, 14, LrSchedule::constant, 13), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 4, 14, LrSchedule::linear, 4), 1.0);
  EXPECT_DOUBLE_EQ(scheduled_lr(1.0, 4, 14, LrSchedule::linear, 9), 0.5);
  EXPECT_NEAR(scheduled_lr(1.0, 0, 10, LrSchedule::cosine, 5), 0.5, 1e-12);
  EXPECT_NEAR(scheduled_lr(2.0, 0, 10, LrSchedule::cosine, 0), 2.0, 1e-12);
  EXPECT_NEAR(scheduled_lr(1.0, 0, 10, LrSchedule::linear, 10), 0.0, 1e-12);
}

namespace {

std::vector<at::Tensor> adamw_test_params() {
  at::manual_seed(3);
  return {at::randn({7, 5}).requires_grad_(true), at::randn({5}).requires_grad_(true),
          at::randn({3, 2, 2}).requires_grad_(true)};
}

std::vector<at::Tensor> detached_copies(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& p : params) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

}  // namespace

// dedpo's AdamW runs ATen's fused kernel on torch::optim::AdamW's state: the same update as
// torch::optim::AdamW up to float rounding, with a parameter that misses its gradient in some
// steps (its step count then lags, as in torch's) and clipping folded in as a divisor.
TEST(AdamW, FusedStepMatchesTorchAdamWWithClippingAndMissingGradients) {
  TrainSettings settings;
  settings.lr = 1e-2;
  settings.weight_decay = 0.05;
  settings.adam_beta1 = 0.8;
  settings.adam_beta2 = 0.95;
  settings.adam_eps = 1e-6;
  std::vector<at::Tensor> ours = adamw_test_params();
  std::vector<at::Tensor> theirs = detached_copies(ours);
  std::unique_ptr<Optimizer> fused = make_optimizer(ours, settings);
  torch::optim::AdamW reference(theirs, torch::optim::AdamWOptions(settings.lr)
                                            .betas({settings.adam_beta1, settings.adam_beta2})
                                            .eps(settings.adam_eps)
                                            .weight_decay(settings.weight_decay));
  for (int step = 0; step < 6; ++step) {
    const double divisor = step % 2 == 0 ? 1.0 : 3.5;
    const double lr = settings.lr * (step + 1) / 6.0;
    for (std::size_t i = 0; i < ours.size(); ++i) {
      const bool missing = i == 1 && (step == 1 || step == 4);
      if (missing) {
        ours[i].mutable_grad().reset();
        theirs[i].mutable_grad().reset();
        continue;
      }
      const at::Tensor g = at::randn(ours[i].sizes());
      ours[i].mutable_grad() = g.clone();
      theirs[i].mutable_grad() = g / divisor;
    }
    fused->step(lr, divisor);
    for (auto& group : reference.param_groups()) group.options().set_lr(lr);
    reference.step();
    for (std::size_t i = 0; i < ours.size(); ++i) {
      EXPECT_TRUE(at::allclose(ours[i].detach(), theirs[i].detach(), 1e-6, 1e-7))
          << "parameter " << i << " after step " << step << ": max difference "
          << (ours[i] - theirs[i]).abs().max().item<double>();
      if (ours[i].grad().defined()) {
        EXPECT_TRUE(at::allclose(ours[i].grad(), theirs[i].grad(), 1e-6, 0.0)) << "divided gradient " << i;
      }
    }
  }
}

// The checkpoint format stays torch::optim::AdamW's: state written by dedpo's optimiser loads into
// torch::optim::AdamW with every moment and step count, and training continues from it alike.
TEST(AdamW, CheckpointIsTorchAdamWsFormat) {
  TrainSettings settings;
  settings.lr = 1e-2;
  std::vector<at::Tensor> ours = adamw_test_params();
  std::unique_ptr<Optimizer> fused = make_optimizer(ours, settings);
  for (int step = 0; step < 3; ++step) {
    for (const at::Tensor& p : ours) p.mutable_grad() = at::randn(p.sizes());
    fused->step(settings.lr);
  }
  torch::serialize::OutputArchive out;
  fused->save(out);
  std::ostringstream bytes;
  out.save_to(bytes);

  std::vector<at::Tensor> theirs = detached_copies(ours);
  torch::optim::AdamW loaded(theirs, torch::optim::AdamWOptions(settings.lr));
  torch::serialize::InputArchive in;
  std::istringstream read(bytes.str());
  in.load_from(read);
  loaded.load(in);
  ASSERT_EQ(loaded.state().size(), ours.size());
  for (const at::Tensor& p : theirs) {
    const auto& state = static_cast<const torch::optim::AdamWParamState&>(*loaded.state().at(p.unsafeGetTensorImpl()));
    EXPECT_EQ(state.step(), 3);
    EXPECT_GT(state.exp_avg_sq().abs().sum().item<double>(), 0.0);
  }
  std::vector<at::Tensor> again = detached_copies(ours);
  std::unique_ptr<Optimizer> resumed = make_optimizer(again, settings);
  torch::serialize::InputArchive in_again;
  std::istringstream read_again(bytes.str());
  in_again.load_from(read_again);
  resumed->load(in_again);
  for (std::size_t i = 0; i < ours.size(); ++i) {
    const at::Tensor g = at::randn(ours[i].sizes());
    ours[i].mutable_grad() = g.clone();
    again[i].mutable_grad() = g.clone();
    theirs[i].mutable_grad() = g.clone();
  }
  fused->step(settings.lr);
  resumed->step(settings.lr);
  loaded.step();
  for (std::size_t i = 0; i < ours.size(); ++i) {
    EXPECT_TRUE(at::equal(ours[i], again[i])) << "resumed parameter " << i;
    EXPECT_TRUE(at::allclose(ours[i].detach(), theirs[i].detach(), 1e-6, 1e-7)) << "torch parameter " << i;
  }
}

// params[0] and [1] take the one-pass float32 path, params[2] (bfloat16) `_foreach_norm` in float.
TEST(GradientNorm, EqualsTheDoubleNormAndTellsOverflowFromInfinity) {
  at::manual_seed(5);
  std::vector<at::Tensor> params = {at::zeros({1000}).requires_grad_(true), at::zeros({30, 7}).requires_grad_(true),
                                    at::zeros({4}, at::kBFloat16).requires_grad_(true)};
  EXPECT_EQ(gradient_norm(params), 0.0);  // no gradient at all
  params[0].mutable_grad() = at::randn({1000});
  params[1].mutable_grad() = at::randn({30, 7}, at::kFloat).to(at::kBFloat16).to(at::kFloat);
  auto double_norm = [&] {
    double squared = 0.0;
    for (const at::Tensor& p : params) {
      if (p.grad().defined()) squared += p.grad().to(at::kDouble).pow(2).sum().item<double>();
    }
    return std::sqrt(squared);
  };
  EXPECT_NEAR(gradient_norm(params), double_norm(), 1e-6 * double_norm());  // params[2] has none
  // 2^100 is a finite bfloat16 whose square overflows float, where `_foreach_norm` sums: the
  // norm is recomputed in double, finite and right.
  const double big = std::ldexp(1.0, 100);
  params[2].mutable_grad() = at::full({4}, big, at::kBFloat16);
  EXPECT_TRUE(std::isfinite(gradient_norm(params)));
  EXPECT_NEAR(gradient_norm(params), 2 * big, 1e-6 * 2 * big);
  params[2].mutable_grad()[1] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(gradient_norm(params)));
  params[2].mutable_grad()[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(gradient_norm(params)));
  // The float32 path: an inf or a NaN in one of its gradients shows as well.
  params[2].mutable_grad()[1] = 0.0;
  params[0].mutable_grad()[7] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(gradient_norm(params)));
  params[0].mutable_grad()[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(gradient_norm(params)));
}

// Float32 CPU gradients go through one pass cut into runs of 65,536 elements across tensor
// boundaries: many tensors, some larger than a run, some empty; the sum in double and the same
// bits on 1 and 3 threads.
TEST(GradientNorm, OnePassOverManyGradientsIsExactAndThreadIndependent) {
  at::manual_seed(6);
  std::vector<at::Tensor> params;
  for (const int64_t n : {70000, 3, 0, 200000, 65536, 1, 12345, 131072}) {
    params.push_back(at::zeros({n}).requires_grad_(true));
    params.back().mutable_grad() = at::randn({n}) * 3.0;
  }
  params.push_back(at::zeros({40, 50}).requires_grad_(true));
  params.back().mutable_grad() = at::randn({50, 40}).t();  // a non-contiguous gradient
  double squared = 0.0;
  for (const at::Tensor& p : params) squared += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const double one = gradient_norm(params);
  at::set_num_threads(3);
  const double three = gradient_norm(params);
  at::set_num_threads(before);
  EXPECT_EQ(one, three);
  EXPECT_NEAR(one, std::sqrt(squared), 1e-12 * std::sqrt(squared));
}

TEST(Adafactor, FactoredAndFullUpdatesMatchTheFormulas) {
  at::Tensor w = at::tensor({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, at::kFloat).reshape({2, 3});
  at::Tensor b = at::tensor({0.5, -0.5}, at::kFloat);
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  at::Tensor gw = at::tensor({0.1, -0.2, 0.3, 0.4, 0.0, -0.6}, at::kFloat).reshape({2, 3});
  at::Tensor gb = at::tensor({1.0, -2.0}, at::kFloat);
  w.mutable_grad() = gw.clone();
  b.mutable_grad() = gb.clone();
  at::Tensor w0 = w.detach().clone(), b0 = b.detach().clone();

  Adafactor::Options options;
  options.weight_decay = 0.1;
  Adafactor optimizer({w, b}, options);
  const double lr = 0.01;
  optimizer.step(lr);

  // Step 1: β̂₂ = 1 − 1^−0.8 = 0, so the moments are exactly the squared gradient (+ε₁).
  at::Tensor sq = gw * gw + 1e-30;
  at::Tensor row = sq.mean(1), col = sq.mean(0);
  at::Tensor v_hat = at::outer(row, col) / row.mean();
  at::Tensor u = gw / v_hat.sqrt();
  u = u / std::max(1.0, u.pow(2).mean().sqrt().item<double>());
  at::Tensor expected_w = w0 * (1 - 0.1 * lr) - lr * u;
  EXPECT_TRUE(at::allclose(w.detach(), expected_w, 1e-6, 1e-7));

  at::Tensor ub = gb / (gb * gb + 1e-30).sqrt();  // = sign(g): RMS 1, no clipping
  at::Tensor expected_b = b0 * (1 - 0.1 * lr) - lr * ub;
  EXPECT_TRUE(at::allclose(b.detach(), expected_b, 1e-6, 1e-7));

  // State round trip.
  auto state = optimizer.state();
  ASSERT_EQ(state.size(), 3u);  // row, col of w; full of b
  EXPECT_TRUE(at::allclose(state[0], row));
  EXPECT_TRUE(at::allclose(state[1], col));
  Adafactor other({w.detach().clone().requires_grad_(true), b.detach().clone().requires_grad_(true)},
                  options);
  other.set_state(optimizer.steps(), state);
  EXPECT_EQ(other.steps(), 1);
}

// ---------------------------------------------------------------------------------------------
// Runs

TEST(Trainer, SameSeedGivesBitIdenticalWeights) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path());
  RunResult a = run_experiment(e, registry, quiet(temp / "a"));
  RunResult b = run_experiment(e, registry, quiet(temp / "b"));
  ASSERT_TRUE(a.finished);
  ASSERT_TRUE(b.finished);
  EXPECT_EQ(a.steps_done, 12);
  expect_same_weights(temp / "a", temp / "b");
  EXPECT_EQ(a.metrics, b.metrics);

  Experiment other = experiment(registry, temp.path(), {{"run.seed", "4"}});
  run_experiment(other, registry, quiet(temp / "c"));
  EXPECT_FALSE(same_weights(temp / "a", temp / "c"));
}

TEST(Trainer, RunFolderHoldsEveryFile) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path());
  RunControl control;
  control.progress_bar = false;
  RunResult first = run_experiment(e, registry, control);
  RunResult second = run_experiment(e, registry, control);
  EXPECT_EQ(first.run_dir.filename(), "t-1");
  EXPECT_EQ(second.run_dir.filename(), "t-2");
  for (const char* file : {kConfigFile, kLogFile, kMetricsFile, kWeightsFile, kResultsFile}) {
    EXPECT_TRUE(fs::exists(first.run_dir / file)) << file;
  }
  EXPECT_EQ(test::read_text(first.run_dir / kConfigFile), e.resolved_toml);
  nlohmann::json results = nlohmann::json::parse(test::read_text(first.run_dir / kResultsFile));
  EXPECT_EQ(results["steps"], 12);
  EXPECT_EQ(results["skipped_steps"], 0);
  EXPECT_TRUE(results["metrics"].contains("test_error"));
  EXPECT_TRUE(results.contains("wall_time_s"));
  // log_every = 2: steps 2, 4, ..., 12, then the final evaluation line.
  auto lines = jsonl(first.run_dir / kMetricsFile);
  ASSERT_EQ(lines.size(), 7u);
  EXPECT_EQ(lines[0]["step"], 2);
  for (const char* key : {"loss", "lr", "grad_norm", "skipped", "mean_logit"}) {
    EXPECT_TRUE(lines[0].contains(key)) << key;
  }
  EXPECT_TRUE(lines.back().contains("eval/test_error"));
}

TEST(Trainer, ResumeEqualsUninterruptedRun) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path());
  run_experiment(e, registry, quiet(temp / "full"));

  RunControl stop = quiet(temp / "cut");
  stop.stop_after_steps = 7;  // checkpoint at 4: steps 5..7 are lost, as if killed
  RunResult cut = run_experiment(e, registry, stop);
  EXPECT_FALSE(cut.finished);
  EXPECT_EQ(cut.steps_done, 7);
  EXPECT_FALSE(fs::exists(temp / "cut" / kResultsFile));
  RunResult resumed = resume_run(temp / "cut", registry, quiet({}));
  EXPECT_TRUE(resumed.finished);
  EXPECT_EQ(resumed.steps_done, 12);
  expect_same_weights(temp / "full", temp / "cut");
  // metrics.jsonl holds each logged step once.
  auto lines = jsonl(temp / "cut" / kMetricsFile);
  EXPECT_EQ(lines.size(), jsonl(temp / "full" / kMetricsFile).size());
}

TEST(Trainer, ResumeEqualsUninterruptedWithAdafactorEmaAccumulationAndAnnotator) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  std::vector<Override> overrides = {
      {"train.optimizer", "\"adafactor\""},  {"train.ema_decay", "0.9"},
      {"train.grad_accum", "2"},            {"train.schedule", "\"cosine\""},
      {"train.warmup_steps", "3"},          {"train.max_grad_norm", "0.5"},
      {"train.labelled_fraction", "0.5"},   {"loss.use_annotator", "true"},
      {"loss.pool", "\"all\""},             {"annotator.plugin", "\"test_annotator\""},
      {"train.checkpoint_every", "5"}};
  Experiment e = experiment(registry, temp.path(), overrides);
  run_experiment(e, registry, quiet(temp / "full"));
  for (std::int64_t stop_at : {3, 6}) {
    fs::path dir = temp / fmt::format("cut{}", stop_at);
    RunControl stop = quiet(dir);
    stop.stop_after_steps = stop_at;
    EXPECT_FALSE(run_experiment(e, registry, stop).finished);
    // Interrupted twice: resume, stop again, resume to the end.
    RunControl stop_again = quiet({});
    stop_again.stop_after_steps = 4;
    resume_run(dir, registry, stop_again);
    EXPECT_TRUE(resume_run(dir, registry, quiet({})).finished);
    expect_same_weights(temp / "full", dir);
  }
  // AdamW as well.
  overrides[0] = {"train.optimizer", "\"adamw\""};
  Experiment adamw = experiment(registry, temp.path(), overrides);
  run_experiment(adamw, registry, quiet(temp / "adamw-full"));
  RunControl stop = quiet(temp / "adamw-cut");
  stop.stop_after_steps = 8;
  run_experiment(adamw, registry, stop);
  resume_run(temp / "adamw-cut", registry, quiet({}));
  expect_same_weights(temp / "adamw-full", temp / "adamw-cut");
  EXPECT_FALSE(same_weights(temp / "full", temp / "adamw-full"));
}

TEST(Trainer, AFigureSomeMicroBatchesLackIsAveragedOverThoseThatHaveIt) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  // Two micro-batches per step: calls 2s - 1 (odd, reports odd_call = 2s - 1) and 2s (none).
  Experiment e = experiment(registry, temp.path(),
                            {{"train.grad_accum", "2"}, {"train.log_every", "1"},
                             {"loss.odd_call_figure", "true"}});
  ASSERT_TRUE(run_experiment(e, registry, quiet(temp / "accum")).finished);
  int checked = 0;
  for (const auto& line : jsonl(temp / "accum" / kMetricsFile)) {
    if (!line.contains("odd_call")) continue;
    const std::int64_t step = line.at("step").get<std::int64_t>();
    EXPECT_EQ(line.at("odd_call").get<double>(), static_cast<double>(2 * step - 1))
        << "step " << step << ": averaged with the micro-batch that lacks it";
    ++checked;
  }
  EXPECT_EQ(checked, 12);
}

TEST(Trainer, NonFiniteLossSkipsTheStepAndCountsIt) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path(), {{"loss.nan_every", "3"}});
  RunResult result = run_experiment(e, registry, quiet(temp / "nan"));
  ASSERT_TRUE(result.finished);
  EXPECT_EQ(result.skipped_steps, 4);  // steps 3, 6, 9, 12
  nlohmann::json results = nlohmann::json::parse(test::read_text(temp / "nan" / kResultsFile));
  EXPECT_EQ(results["skipped_steps"], 4);
  int skipped_lines = 0;
  for (const auto& line : jsonl(temp / "nan" / kMetricsFile)) {
    if (line.value("skipped_step", false)) ++skipped_lines;
  }
  EXPECT_EQ(skipped_lines, 4);
  std::vector<at::Tensor> weights;
  torch::load(weights, (temp / "nan" / kWeightsFile).string());
  for (const auto& w : weights) EXPECT_TRUE(at::isfinite(w).all().item<bool>());
  // A skipped step changes nothing: with every step NaN the weights stay the initial ones.
  std::vector<at::Tensor> initial = {at::randn({4, 4}), at::randn({4, 2}), at::randn({4}),
                                     at::randn({4})};
  torch::save(initial, (temp / "initial.pt").string());
  Experiment all_nan = experiment(
      registry, temp.path(),
      {{"loss.nan_every", "1"}, {"init.weights", "\"" + (temp / "initial.pt").string() + "\""}});
  EXPECT_EQ(run_experiment(all_nan, registry, quiet(temp / "all")).skipped_steps, 12);
  auto after = trainer_test::weights(temp / "all");
  ASSERT_EQ(after.size(), initial.size());
  for (std::size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(at::equal(after[i], initial[i]));
}

namespace {

// A pid no process can have (above the kernel's largest pid_max): the writer of a temp file so
// named is gone.
constexpr const char* kDeadPid = "99999999";

void truncate_to_half(const fs::path& file) { fs::resize_file(file, fs::file_size(file) / 2); }

// `e` with checkpoint_every = 2, run in `dir` and stopped after step 5: checkpoints at 2 and 4.
Experiment run_interrupted_at_5(PluginRegistry& registry, const fs::path& temp, const fs::path& dir) {
  Experiment e = experiment(registry, temp, {{"train.checkpoint_every", "2"}});
  RunControl stop = quiet(dir);
  stop.stop_after_steps = 5;
  run_experiment(e, registry, stop);
  return e;
}

}  // namespace

TEST(Trainer, CheckpointsAreWholeFilesBehindAnAtomicPointer) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = run_interrupted_at_5(registry, temp.path(), temp / "run");
  fs::path folder = temp / "run" / kCheckpointDir;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(folder)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  // Two newest checkpoints kept, the pointer, nothing temporary.
  EXPECT_EQ(names, (std::vector<std::string>{"latest", "step-00000002.pt", "step-00000004.pt"}));
  EXPECT_EQ(test::read_text(folder / "latest"), "step-00000004.pt\n");
  // A temporary file left by a crash during a checkpoint write does not disturb resuming.
  { std::ofstream(folder / ".step-00000006.pt.tmp.999") << "partial"; }
  RunResult resumed = resume_run(temp / "run", registry, quiet({}));
  EXPECT_TRUE(resumed.finished);
  run_experiment(e, registry, quiet(temp / "full"));
  expect_same_weights(temp / "full", temp / "run");
  for (const auto& entry : fs::directory_iterator(temp / "full" / kCheckpointDir)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos);
  }
}

TEST(Trainer, ResumeFallsBackFromACorruptLatestCheckpointAndRemovesAbandonedTempFiles) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = run_interrupted_at_5(registry, temp.path(), temp / "run");
  run_experiment(e, registry, quiet(temp / "full"));
  const fs::path run = temp / "run";
  const fs::path folder = run / kCheckpointDir;
  truncate_to_half(folder / "step-00000004.pt");
  // What writes killed before their rename leave, and files that are not such leftovers.
  const std::string dead = kDeadPid;
  const std::string alive = std::to_string(::getpid());
  for (const fs::path& file :
       {folder / (".step-00000006.pt.tmp." + dead), folder / (".latest.tmp." + dead),
        run / (".results.json.tmp." + dead), run / (".weights.pt.tmp." + alive),
        run / ".notes.tmp.txt", run / (".notes.tmp." + dead + "x")}) {
    std::ofstream(file) << "partial";
  }

  testing::internal::CaptureStderr();
  RunResult resumed = resume_run(run, registry, quiet({}));
  const std::string warnings = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(resumed.finished);
  expect_same_weights(temp / "full", run);
  EXPECT_EQ(jsonl(run / kMetricsFile).size(), jsonl(temp / "full" / kMetricsFile).size());
  // One line names the skipped checkpoint, why, and where the run continued; no stack trace.
  EXPECT_THAT(warnings, testing::HasSubstr("skipped checkpoint step-00000004.pt: "));
  EXPECT_THAT(warnings, testing::HasSubstr("; resuming from step-00000002.pt\n"));
  EXPECT_EQ(std::count(warnings.begin(), warnings.end(), '\n'), 1) << warnings;
  EXPECT_THAT(test::read_text(run / kLogFile),
              testing::HasSubstr("skipped checkpoint step-00000004.pt: "));
  // The final checkpoint is the one the resumed run wrote, not the corrupt one.
  EXPECT_EQ(test::read_text(folder / "latest"), "step-00000012.pt\n");
  for (const fs::path& gone : {folder / (".step-00000006.pt.tmp." + dead),
                               folder / (".latest.tmp." + dead), run / (".results.json.tmp." + dead)}) {
    EXPECT_FALSE(fs::exists(gone)) << gone;
  }
  // A live process's temp file and names of another pattern stay.
  for (const fs::path& kept : {run / (".weights.pt.tmp." + alive), run / ".notes.tmp.txt",
                               run / (".notes.tmp." + dead + "x")}) {
    EXPECT_TRUE(fs::exists(kept)) << kept;
  }
}

TEST(Trainer, ResumeWithNoCheckpointThatLoadsNamesEachAndStops) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  run_interrupted_at_5(registry, temp.path(), temp / "run");
  const fs::path folder = temp / "run" / kCheckpointDir;
  truncate_to_half(folder / "step-00000004.pt");
  std::ofstream(folder / "step-00000002.pt", std::ios::trunc) << "not a checkpoint";
  try {
    resume_run(temp / "run", registry, quiet({}));
    FAIL() << "resumed from corrupt checkpoints";
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_THAT(message, testing::HasSubstr("no checkpoint loads; step-00000004.pt: "));
    EXPECT_THAT(message, testing::HasSubstr("; step-00000002.pt: "));
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_EQ(message.find("Exception raised from"), std::string::npos) << message;
  }
  EXPECT_FALSE(fs::exists(temp / "run" / kResultsFile));
}

TEST(Trainer, WallTimeAddsUpTheSessionsOfAResumedRun) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path());
  run_experiment(e, registry, quiet(temp / "full"));
  const fs::path run = temp / "run";
  auto checkpoint_wall_time = [&](const char* name) {
    torch::serialize::InputArchive archive;
    archive.load_from((run / kCheckpointDir / name).string());
    c10::IValue value;
    archive.read("wall_time_s", value);
    return value.toDouble();
  };
  RunControl stop = quiet(run);
  stop.stop_after_steps = 7;  // session 1: checkpoint at 4
  run_experiment(e, registry, stop);
  const double at_4 = checkpoint_wall_time("step-00000004.pt");
  RunControl stop_again = quiet({});
  stop_again.stop_after_steps = 4;  // session 2: from 4 to 8, checkpoint at 8
  resume_run(run, registry, stop_again);
  const double at_8 = checkpoint_wall_time("step-00000008.pt");
  ASSERT_TRUE(resume_run(run, registry, quiet({})).finished);  // session 3: to the end
  const double total =
      nlohmann::json::parse(test::read_text(run / kResultsFile))["wall_time_s"].get<double>();
  EXPECT_GT(at_4, 0);
  EXPECT_GT(at_8, at_4);   // session 2 counted on top of session 1
  EXPECT_GT(total, at_8);  // and session 3 on top of both
  EXPECT_THAT(test::read_text(run / kLogFile),
              testing::HasSubstr(fmt::format("loaded step-00000008.pt (step 8, {:.1f} s of earlier "
                                             "sessions)", at_8)));
  expect_same_weights(temp / "full", run);
}

TEST(Trainer, AnnotationsAreCachedAcrossRuns) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  std::vector<Override> overrides = {{"loss.use_annotator", "true"},
                                     {"loss.pool", "\"all\""},
                                     {"annotator.plugin", "\"test_annotator\""},
                                     {"annotator.train_steps", "3"}};
  Experiment e = experiment(registry, temp.path(), overrides);
  run_experiment(e, registry, quiet(temp / "a"));
  fs::path cache = temp / "runs" / ".cache" / "annotations";
  ASSERT_TRUE(fs::is_directory(cache));
  EXPECT_EQ(std::distance(fs::directory_iterator(cache), fs::directory_iterator()), 1);
  run_experiment(e, registry, quiet(temp / "b"));
  EXPECT_NE(test::read_text(temp / "b" / kLogFile).find("annotations: cached"), std::string::npos);
  expect_same_weights(temp / "a", temp / "b");
  // A labels-dependent annotator is keyed by the labelled set as well.
  overrides.push_back({"annotator.uses_labels", "true"});
  run_experiment(experiment(registry, temp.path(), overrides), registry, quiet(temp / "c"));
  EXPECT_EQ(std::distance(fs::directory_iterator(cache), fs::directory_iterator()), 2);
  // ... and by the [train] settings it trains with: a new learning rate is a new annotation.
  overrides.push_back({"train.lr", "0.005"});
  run_experiment(experiment(registry, temp.path(), overrides), registry, quiet(temp / "c2"));
  EXPECT_EQ(std::distance(fs::directory_iterator(cache), fs::directory_iterator()), 3);
  EXPECT_EQ(test::read_text(temp / "c2" / kLogFile).find("annotations: cached"), std::string::npos);
  // An annotator that learns nothing from the labels is not: the first annotation is reused.
  std::vector<Override> plain_lr = {overrides[0], overrides[1], overrides[2], overrides[3], overrides.back()};
  run_experiment(experiment(registry, temp.path(), plain_lr), registry, quiet(temp / "c3"));
  EXPECT_EQ(std::distance(fs::directory_iterator(cache), fs::directory_iterator()), 3);
  EXPECT_NE(test::read_text(temp / "c3" / kLogFile).find("annotations: cached"), std::string::npos);

  // A loss that needs an annotator without an [annotator] table is an error.
  Experiment missing = experiment(registry, temp.path(), {{"loss.use_annotator", "true"}});
  EXPECT_THROW(run_experiment(missing, registry, quiet(temp / "d")), Error);
}

TEST(Trainer, InitExperimentRunsOnceAndInitialisesTheBackbone) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  fs::path reference = temp / "reference.toml";
  {
    std::ofstream out(reference);
    out << kReferenceToml;
  }
  std::vector<Override> overrides = {{"init.experiment", "\"" + reference.string() + "\""}};
  Experiment e = experiment(registry, temp.path(), overrides);
  run_experiment(e, registry, quiet(temp / "a"));
  fs::path init_root = temp / "runs" / ".cache" / "init";
  std::vector<fs::path> runs;
  for (const auto& entry : fs::directory_iterator(init_root)) {
    if (entry.is_directory()) runs.push_back(entry.path());
  }
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_TRUE(fs::exists(runs[0] / kResultsFile));
  EXPECT_TRUE(fs::exists(runs[0] / kWeightsFile));
  auto trained = fs::last_write_time(runs[0] / kResultsFile);
  run_experiment(e, registry, quiet(temp / "b"));
  EXPECT_EQ(fs::last_write_time(runs[0] / kResultsFile), trained);  // not trained twice
  expect_same_weights(temp / "a", temp / "b");
  // [init] weights = the same file gives the same run.
  Experiment direct = experiment(
      registry, temp.path(), {{"init.weights", "\"" + (runs[0] / kWeightsFile).string() + "\""}});
  run_experiment(direct, registry, quiet(temp / "c"));
  expect_same_weights(temp / "a", temp / "c");
  run_experiment(experiment(registry, temp.path()), registry, quiet(temp / "d"));
  EXPECT_FALSE(same_weights(temp / "a", temp / "d"));
}

TEST(Trainer, Bf16AutocastRunsAndIsDeterministic) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path(), {{"train.precision", "\"bf16\""}});
  EXPECT_TRUE(run_experiment(e, registry, quiet(temp / "a")).finished);
  run_experiment(e, registry, quiet(temp / "b"));
  expect_same_weights(temp / "a", temp / "b");
}

TEST(Trainer, DenoisingObjectiveTrainsOnSamples) {
  test::TempDir temp;
  PluginRegistry registry = fixture_registry();
  Experiment e = experiment(registry, temp.path(), {{"train.objective", "\"denoising\""}});
  RunResult result = run_experiment(e, registry, quiet(temp / "a"));
  EXPECT_TRUE(result.finished);
  EXPECT_EQ(result.skipped_steps, 0);
}
