#pragma once
// Noise schedules and samplers of diffusers 0.31: DDPMScheduler (forward noising for training),
// DDIMScheduler and EulerDiscreteScheduler (sampling), configured from the scheduler config JSON.
//
//   auto config = dedpo::sd::SchedulerConfig::from_file("scheduler/scheduler_config.json");
//   dedpo::sd::NoiseSchedule schedule(config);
//   at::Tensor x_t = schedule.add_noise(x0, noise, t);      // t: int64 [B]
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <optional>
#include <string>

namespace dedpo::sd {

enum class PredictionType { kEpsilon, kVPrediction, kSample };

struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";  // "linear" | "scaled_linear"
  PredictionType prediction_type = PredictionType::kEpsilon;
  int64_t steps_offset = 0;
  std::string timestep_spacing = "leading";  // "leading" | "trailing" | "linspace"
  bool set_alpha_to_one = true;              // DDIM
  bool clip_sample = false;                  // DDIM
  double clip_sample_range = 1.0;            // DDIM
  std::string interpolation_type = "linear";  // Euler
  std::string final_sigmas_type = "zero";     // Euler

  // From a diffusers scheduler config (unknown keys ignored, unsupported features rejected).
  static SchedulerConfig from_json(const std::string& text, const std::string& origin = "<string>");
  static SchedulerConfig from_file(const std::filesystem::path& path);
};

// The training-time schedule (DDPMScheduler's forward process): float32 as diffusers computes it.
class NoiseSchedule {
 public:
  explicit NoiseSchedule(SchedulerConfig config);
  const SchedulerConfig& config() const { return config_; }
  const at::Tensor& betas() const { return betas_; }                    // [T] float32
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // [T] float32
  // alphas_cumprod / (1 - alphas_cumprod), [T] (or at `timesteps` when given).
  at::Tensor snr() const;
  at::Tensor snr(const at::Tensor& timesteps) const;
  // sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·noise; timesteps int64 [B] (or scalar), broadcast over dims ≥ 1.
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // The v-prediction target sqrt(ᾱ_t)·noise − sqrt(1−ᾱ_t)·x0.
  at::Tensor get_velocity(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // The training target for the configured prediction type.
  at::Tensor target(const at::Tensor& original, const at::Tensor& noise, const at::Tensor& timesteps) const;

 private:
  SchedulerConfig config_;
  at::Tensor betas_, alphas_cumprod_;
};

struct SchedulerStepOutput {
  at::Tensor prev_sample;
  at::Tensor pred_original_sample;
};

class DDIMScheduler {
 public:
  explicit DDIMScheduler(SchedulerConfig config);
  const NoiseSchedule& schedule() const { return schedule_; }
  void set_timesteps(int64_t num_inference_steps);
  const at::Tensor& timesteps() const { return timesteps_; }  // int64 [n], descending
  double init_noise_sigma() const { return 1.0; }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t /*timestep*/) const { return sample; }
  // One DDIM step from `timestep`; eta > 0 needs `variance_noise` (same shape as sample).
  SchedulerStepOutput step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample,
                           double eta = 0.0, const std::optional<at::Tensor>& variance_noise = std::nullopt) const;

 private:
  NoiseSchedule schedule_;
  at::Tensor final_alpha_cumprod_;
  int64_t num_inference_steps_ = 0;
  at::Tensor timesteps_;
};

class EulerDiscreteScheduler {
 public:
  explicit EulerDiscreteScheduler(SchedulerConfig config);
  const NoiseSchedule& schedule() const { return schedule_; }
  void set_timesteps(int64_t num_inference_steps);
  const at::Tensor& timesteps() const { return timesteps_; }  // float32 [n], descending
  const at::Tensor& sigmas() const { return sigmas_; }        // float32 [n + 1], last 0
  at::Tensor init_noise_sigma() const;                        // float32 scalar
  // Index of `timestep` in timesteps() (the second match when it occurs twice, as diffusers).
  int64_t index_for_timestep(double timestep) const;
  // sample / sqrt(σ² + 1) with σ of `timestep`.
  at::Tensor scale_model_input(const at::Tensor& sample, double timestep) const;
  // One Euler step (s_churn = 0) from `timestep` to the next sigma.
  SchedulerStepOutput step(const at::Tensor& model_output, double timestep, const at::Tensor& sample) const;

 private:
  NoiseSchedule schedule_;
  at::Tensor timesteps_, sigmas_;
};

}  // namespace dedpo::sd
