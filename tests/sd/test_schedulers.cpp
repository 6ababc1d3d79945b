#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"
#include "dedpo/sd/schedulers.hpp"
#include "golden.hpp"

namespace {

using dedpo::sd::SchedulerConfig;

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

SchedulerConfig config_of(const std::filesystem::path& dir, const std::string& name) {
  return SchedulerConfig::from_json(read_json(dir / "config.json").at(name).dump(), name);
}

TEST(Schedulers, NoiseScheduleMatchesDdpm) {
  DEDPO_GOLDEN_CASE(dir, "schedulers");
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  dedpo::sd::NoiseSchedule schedule(config_of(dir, "ddpm"));
  EXPECT_TENSOR_NEAR("betas", schedule.betas(), out.at("betas"));
  EXPECT_TENSOR_NEAR("alphas_cumprod", schedule.alphas_cumprod(), out.at("alphas_cumprod"));
  // SNR reaches ~1e3 at t = 0: compare relative to its magnitude.
  const at::Tensor snr = schedule.snr();
  EXPECT_TENSOR_NEAR("snr (relative)", snr / out.at("snr"), at::ones_like(snr));
  const at::Tensor t = in.at("train_timesteps");
  EXPECT_TENSOR_NEAR("ddpm.add_noise", schedule.add_noise(in.at("x0"), in.at("noise"), t), out.at("ddpm.add_noise"));
  EXPECT_TENSOR_NEAR("ddpm.velocity", schedule.get_velocity(in.at("x0"), in.at("noise"), t), out.at("ddpm.velocity"));
}

TEST(Schedulers, DdimStepsAndLoop) {
  DEDPO_GOLDEN_CASE(dir, "schedulers");
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  dedpo::sd::DDIMScheduler ddim(config_of(dir, "ddim"));
  ddim.set_timesteps(out.at("ddim.timesteps").size(0));
  EXPECT_TRUE(at::equal(ddim.timesteps(), out.at("ddim.timesteps").to(at::kLong)))
      << ddim.timesteps() << " vs " << out.at("ddim.timesteps");
  const at::Tensor steps = in.at("ddim.step_timesteps");
  for (int64_t i = 0; i < steps.size(0); ++i) {
    const int64_t t = steps[i].item<int64_t>();
    const std::string p = "ddim.step" + std::to_string(i);
    auto r = ddim.step(in.at("model_output"), t, in.at("sample"));
    EXPECT_TENSOR_NEAR(p + ".prev_sample", r.prev_sample, out.at(p + ".prev_sample"));
    EXPECT_TENSOR_NEAR(p + ".pred_original_sample", r.pred_original_sample, out.at(p + ".pred_original_sample"));
    auto r1 = ddim.step(in.at("model_output"), t, in.at("sample"), 1.0, in.at("variance_noise"));
    EXPECT_TENSOR_NEAR(p + ".eta1.prev_sample", r1.prev_sample, out.at(p + ".eta1.prev_sample"));
  }
  EXPECT_THROW(ddim.step(in.at("model_output"), steps[0].item<int64_t>(), in.at("sample"), 1.0), dedpo::Error);

  const at::Tensor expected = out.at("ddim.loop10.trajectory");
  ddim.set_timesteps(out.at("ddim.loop10.timesteps").size(0));
  EXPECT_TRUE(at::equal(ddim.timesteps(), out.at("ddim.loop10.timesteps").to(at::kLong)));
  at::Tensor x = in.at("loop_start");
  std::vector<at::Tensor> trajectory{x};
  for (int64_t i = 0; i < ddim.timesteps().size(0); ++i) {
    const int64_t t = ddim.timesteps()[i].item<int64_t>();
    const at::Tensor eps = 0.5 * at::tanh(x) + 1e-4 * static_cast<double>(t);
    x = ddim.step(eps, t, x).prev_sample;
    trajectory.push_back(x);
  }
  EXPECT_TENSOR_NEAR("ddim.loop10.trajectory", at::stack(trajectory), expected);
}

TEST(Schedulers, EulerStepsAndLoop) {
  DEDPO_GOLDEN_CASE(dir, "schedulers");
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  dedpo::sd::EulerDiscreteScheduler euler(config_of(dir, "euler"));
  euler.set_timesteps(out.at("euler.timesteps").size(0));
  EXPECT_TENSOR_NEAR("euler.timesteps", euler.timesteps(), out.at("euler.timesteps"));
  EXPECT_TENSOR_NEAR("euler.sigmas", euler.sigmas(), out.at("euler.sigmas"));
  EXPECT_TENSOR_NEAR("euler.init_noise_sigma", euler.init_noise_sigma(), out.at("euler.init_noise_sigma"));
  at::Tensor x = in.at("sample") * euler.init_noise_sigma();
  std::vector<at::Tensor> scaled, prev;
  at::Tensor pred2;
  for (int64_t i = 0; i < 3; ++i) {
    const double t = euler.timesteps()[i].item<double>();
    scaled.push_back(euler.scale_model_input(x, t));
    auto r = euler.step(in.at("model_output"), t, x);
    x = r.prev_sample;
    prev.push_back(x);
    pred2 = r.pred_original_sample;
  }
  EXPECT_TENSOR_NEAR("euler.first3.scaled_input", at::stack(scaled), out.at("euler.first3.scaled_input"));
  EXPECT_TENSOR_NEAR("euler.first3.prev_sample", at::stack(prev), out.at("euler.first3.prev_sample"));
  EXPECT_TENSOR_NEAR("euler.step2.pred_original_sample", pred2, out.at("euler.step2.pred_original_sample"));

  euler.set_timesteps(out.at("euler.loop10.timesteps").size(0));
  EXPECT_TENSOR_NEAR("euler.loop10.timesteps", euler.timesteps(), out.at("euler.loop10.timesteps"));
  EXPECT_TENSOR_NEAR("euler.loop10.sigmas", euler.sigmas(), out.at("euler.loop10.sigmas"));
  EXPECT_TENSOR_NEAR("euler.loop10.init_noise_sigma", euler.init_noise_sigma(), out.at("euler.loop10.init_noise_sigma"));
  x = in.at("loop_start") * euler.init_noise_sigma();
  std::vector<at::Tensor> trajectory{x};
  for (int64_t i = 0; i < euler.timesteps().size(0); ++i) {
    const double t = euler.timesteps()[i].item<double>();
    const at::Tensor eps = 0.5 * at::tanh(euler.scale_model_input(x, t)) + 1e-4 * t;
    x = euler.step(eps, t, x).prev_sample;
    trajectory.push_back(x);
  }
  EXPECT_TENSOR_NEAR("euler.loop10.trajectory", at::stack(trajectory), out.at("euler.loop10.trajectory"));
}

// With the exact model output of each prediction type, every sampler recovers x0.
TEST(Schedulers, ExactPredictionRecoversOriginalForEveryPredictionType) {
  const at::Tensor x0 = at::randn({2, 3, 4, 4});
  const at::Tensor noise = at::randn({2, 3, 4, 4});
  for (const char* type : {"epsilon", "v_prediction", "sample"}) {
    const std::string json = std::string(R"({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "steps_offset": 1, "set_alpha_to_one": false, "prediction_type": ")") + type + "\"}";
    const auto config = SchedulerConfig::from_json(json);
    dedpo::sd::DDIMScheduler ddim(config);
    ddim.set_timesteps(20);
    const int64_t t = ddim.timesteps()[3].item<int64_t>();
    const at::Tensor tt = at::full({2}, t, at::kLong);
    const at::Tensor x_t = ddim.schedule().add_noise(x0, noise, tt);
    const at::Tensor target = ddim.schedule().target(x0, noise, tt);
    EXPECT_TENSOR_NEAR(std::string("ddim ") + type, ddim.step(target, t, x_t).pred_original_sample, x0);

    dedpo::sd::EulerDiscreteScheduler euler(config);
    euler.set_timesteps(20);
    const double te = euler.timesteps()[3].item<double>();
    const at::Tensor sigma = euler.sigmas()[3];
    const at::Tensor te_long = at::full({2}, static_cast<int64_t>(te), at::kLong);
    const at::Tensor x_sigma = x0 + sigma * noise;  // Euler works in σ-space
    const at::Tensor target_e = euler.schedule().target(x0, noise, te_long);
    EXPECT_TENSOR_NEAR(std::string("euler ") + type, euler.step(target_e, te, x_sigma).pred_original_sample, x0);
  }
}

TEST(Schedulers, RejectsUnsupportedConfig) {
  EXPECT_THROW(SchedulerConfig::from_json(R"({"beta_schedule": "squaredcos_cap_v2"})"), dedpo::Error);
  EXPECT_THROW(SchedulerConfig::from_json(R"({"prediction_type": "flow"})"), dedpo::Error);
  EXPECT_THROW(SchedulerConfig::from_json(R"({"thresholding": true})"), dedpo::Error);
  auto c = SchedulerConfig::from_json(R"({"prediction_type": "v_prediction"})");
  EXPECT_EQ(c.prediction_type, dedpo::sd::PredictionType::kVPrediction);
}

}  // namespace
