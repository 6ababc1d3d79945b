#include "dedpo/sd/schedulers.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "json_config.hpp"

namespace dedpo::sd {
namespace {

// Gathers per-sample values of a [T] table at `timesteps` and shapes them to broadcast over `like`.
at::Tensor gather_like(const at::Tensor& table, const at::Tensor& timesteps, const at::Tensor& like) {
  at::Tensor values = table.to(like.device(), like.scalar_type()).index_select(0, timesteps.to(like.device()).reshape({-1}).to(at::kLong));
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = values.size(0);
  if (like.dim() == 0) return values.reshape({});
  return values.reshape(shape);  // [B] -> [B, 1, ..., 1]
}

// Inference timesteps as diffusers' set_timesteps computes them (float64 before the cast).
std::vector<double> spaced_timesteps(const SchedulerConfig& c, int64_t n, bool round_linspace) {
  const int64_t T = c.num_train_timesteps;
  if (n <= 0 || n > T) {
    throw Error("scheduler: num_inference_steps must be in 1.." + std::to_string(T) + ", got " + std::to_string(n));
  }
  std::vector<double> out;
  if (c.timestep_spacing == "leading") {
    const int64_t ratio = T / n;
    for (int64_t i = n - 1; i >= 0; --i) out.push_back(static_cast<double>(i * ratio + c.steps_offset));
  } else if (c.timestep_spacing == "trailing") {
    const double ratio = static_cast<double>(T) / static_cast<double>(n);
    for (double t = static_cast<double>(T); t > 0; t -= ratio) out.push_back(std::nearbyint(t) - 1.0);
  } else {  // linspace
    for (int64_t i = n - 1; i >= 0; --i) {
      double t = n == 1 ? 0.0 : static_cast<double>(i) * static_cast<double>(T - 1) / static_cast<double>(n - 1);
      out.push_back(round_linspace ? std::nearbyint(t) : static_cast<double>(static_cast<float>(t)));
    }
  }
  return out;
}

}  // namespace

SchedulerConfig SchedulerConfig::from_json(const std::string& text, const std::string& origin) {
  auto cfg = detail::Config::parse(text, origin);
  SchedulerConfig c;
  c.num_train_timesteps = cfg.get<int64_t>("num_train_timesteps", c.num_train_timesteps);
  c.beta_start = cfg.get<double>("beta_start", c.beta_start);
  c.beta_end = cfg.get<double>("beta_end", c.beta_end);
  c.beta_schedule = cfg.get<std::string>("beta_schedule", c.beta_schedule);
  if (c.beta_schedule != "linear" && c.beta_schedule != "scaled_linear") {
    cfg.fail("beta_schedule", "'" + c.beta_schedule + "' is not supported (linear, scaled_linear)");
  }
  const auto prediction = cfg.get<std::string>("prediction_type", "epsilon");
  if (prediction == "epsilon") c.prediction_type = PredictionType::kEpsilon;
  else if (prediction == "v_prediction") c.prediction_type = PredictionType::kVPrediction;
  else if (prediction == "sample") c.prediction_type = PredictionType::kSample;
  else cfg.fail("prediction_type", "'" + prediction + "' is not supported (epsilon, v_prediction, sample)");
  c.steps_offset = cfg.get<int64_t>("steps_offset", c.steps_offset);
  c.timestep_spacing = cfg.get<std::string>("timestep_spacing", c.timestep_spacing);
  if (c.timestep_spacing != "leading" && c.timestep_spacing != "trailing" && c.timestep_spacing != "linspace") {
    cfg.fail("timestep_spacing", "'" + c.timestep_spacing + "' is not supported (leading, trailing, linspace)");
  }
  c.set_alpha_to_one = cfg.get<bool>("set_alpha_to_one", c.set_alpha_to_one);
  c.clip_sample = cfg.get<bool>("clip_sample", c.clip_sample);
  c.clip_sample_range = cfg.get<double>("clip_sample_range", c.clip_sample_range);
  c.interpolation_type = cfg.get<std::string>("interpolation_type", c.interpolation_type);
  if (c.interpolation_type != "linear") cfg.fail("interpolation_type", "'" + c.interpolation_type + "' is not supported (linear)");
  c.final_sigmas_type = cfg.get<std::string>("final_sigmas_type", c.final_sigmas_type);
  if (c.final_sigmas_type != "zero" && c.final_sigmas_type != "sigma_min") {
    cfg.fail("final_sigmas_type", "'" + c.final_sigmas_type + "' is not supported (zero, sigma_min)");
  }
  for (const char* flag : {"thresholding", "rescale_betas_zero_snr", "use_karras_sigmas", "use_exponential_sigmas",
                           "use_beta_sigmas"}) {
    if (cfg.get<bool>(flag, false)) cfg.fail(flag, "true is not supported");
  }
  if (cfg.has("trained_betas")) cfg.fail("trained_betas", "is not supported");
  if (cfg.get<std::string>("timestep_type", "discrete") != "discrete") cfg.fail("timestep_type", "must be 'discrete'");
  if (cfg.has("sigma_min") || cfg.has("sigma_max")) cfg.fail("sigma_min", "/ sigma_max are not supported");
  if (c.num_train_timesteps < 1) cfg.fail("num_train_timesteps", "must be positive");
  return c;
}

SchedulerConfig SchedulerConfig::from_file(const std::filesystem::path& path) {
  return from_json(detail::Config::read_text(path), "'" + path.string() + "'");
}

NoiseSchedule::NoiseSchedule(SchedulerConfig config) : config_(std::move(config)) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  if (config_.beta_schedule == "scaled_linear") {
    betas_ = at::linspace(std::sqrt(config_.beta_start), std::sqrt(config_.beta_end), config_.num_train_timesteps, f32).pow(2);
  } else {
    betas_ = at::linspace(config_.beta_start, config_.beta_end, config_.num_train_timesteps, f32);
  }
  alphas_cumprod_ = at::cumprod(1.0 - betas_, 0);
}

at::Tensor NoiseSchedule::snr() const { return alphas_cumprod_ / (1.0 - alphas_cumprod_); }

at::Tensor NoiseSchedule::snr(const at::Tensor& timesteps) const {
  return snr().index_select(0, timesteps.reshape({-1}).to(at::kLong).cpu()).to(timesteps.device());
}

at::Tensor NoiseSchedule::add_noise(const at::Tensor& original, const at::Tensor& noise, const at::Tensor& timesteps) const {
  at::Tensor ac = gather_like(alphas_cumprod_, timesteps, original);  // [B, 1, 1, 1]
  return ac.pow(0.5) * original + (1.0 - ac).pow(0.5) * noise;
}

at::Tensor NoiseSchedule::get_velocity(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& timesteps) const {
  at::Tensor ac = gather_like(alphas_cumprod_, timesteps, sample);
  return ac.pow(0.5) * noise - (1.0 - ac).pow(0.5) * sample;
}

at::Tensor NoiseSchedule::target(const at::Tensor& original, const at::Tensor& noise, const at::Tensor& timesteps) const {
  switch (config_.prediction_type) {
    case PredictionType::kEpsilon: return noise;
    case PredictionType::kVPrediction: return get_velocity(original, noise, timesteps);
    case PredictionType::kSample: return original;
  }
  return noise;
}

// ---------------------------------------------------------------------------------------------- DDIM

DDIMScheduler::DDIMScheduler(SchedulerConfig config) : schedule_(std::move(config)) {
  final_alpha_cumprod_ = schedule_.config().set_alpha_to_one ? at::ones({}, at::kFloat) : schedule_.alphas_cumprod()[0].clone();
}

void DDIMScheduler::set_timesteps(int64_t num_inference_steps) {
  auto values = spaced_timesteps(schedule_.config(), num_inference_steps, /*round_linspace=*/true);
  std::vector<int64_t> ints(values.begin(), values.end());
  timesteps_ = at::tensor(ints, at::kLong);
  num_inference_steps_ = num_inference_steps;
}

SchedulerStepOutput DDIMScheduler::step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample,
                                        double eta, const std::optional<at::Tensor>& variance_noise) const {
  if (num_inference_steps_ == 0) throw Error("DDIMScheduler: call set_timesteps before step");
  const auto& c = schedule_.config();
  if (timestep < 0 || timestep >= c.num_train_timesteps) throw Error("DDIMScheduler: timestep out of range: " + std::to_string(timestep));
  const int64_t prev_timestep = timestep - c.num_train_timesteps / num_inference_steps_;
  // Scalars as 0-dim float32 tensors, as diffusers computes them.
  const at::Tensor alpha_prod_t = schedule_.alphas_cumprod()[timestep];
  const at::Tensor alpha_prod_t_prev = prev_timestep >= 0 ? schedule_.alphas_cumprod()[prev_timestep] : final_alpha_cumprod_;
  const at::Tensor beta_prod_t = 1.0 - alpha_prod_t;

  at::Tensor pred_original, pred_epsilon;
  switch (c.prediction_type) {
    case PredictionType::kEpsilon:
      pred_original = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
      pred_epsilon = model_output;
      break;
    case PredictionType::kSample:
      pred_original = model_output;
      pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original) / beta_prod_t.pow(0.5);
      break;
    case PredictionType::kVPrediction:
      pred_original = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
      pred_epsilon = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
      break;
  }
  if (c.clip_sample) pred_original = pred_original.clamp(-c.clip_sample_range, c.clip_sample_range);

  const at::Tensor beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
  const at::Tensor variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
  const at::Tensor std_dev_t = eta * variance.pow(0.5);
  const at::Tensor direction = (1.0 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;
  at::Tensor prev_sample = alpha_prod_t_prev.pow(0.5) * pred_original + direction;
  if (eta > 0) {
    if (!variance_noise) throw Error("DDIMScheduler: eta > 0 needs variance_noise");
    prev_sample = prev_sample + std_dev_t * *variance_noise;
  }
  return {prev_sample, pred_original};
}

// --------------------------------------------------------------------------------------------- Euler

EulerDiscreteScheduler::EulerDiscreteScheduler(SchedulerConfig config) : schedule_(std::move(config)) {
  const auto& ac = schedule_.alphas_cumprod();
  sigmas_ = at::cat({((1.0 - ac) / ac).pow(0.5).flip(0), at::zeros({1}, at::kFloat)});
  timesteps_ = at::linspace(0, static_cast<double>(schedule_.config().num_train_timesteps - 1),
                            schedule_.config().num_train_timesteps, at::kDouble).flip(0).to(at::kFloat);
}

void EulerDiscreteScheduler::set_timesteps(int64_t num_inference_steps) {
  const auto& c = schedule_.config();
  auto values = spaced_timesteps(c, num_inference_steps, /*round_linspace=*/false);
  // σ(t) of the training table, linearly interpolated at fractional t (np.interp in float64).
  const at::Tensor ac = schedule_.alphas_cumprod();
  const at::Tensor table = ((1.0 - ac) / ac).pow(0.5).to(at::kDouble).contiguous();  // [T]
  const double* s = table.data_ptr<double>();
  const int64_t T = table.size(0);
  std::vector<float> sigmas, steps;
  for (double t : values) {
    t = static_cast<double>(static_cast<float>(t));  // timesteps are float32 before np.interp
    double sigma;
    if (t <= 0) sigma = s[0];
    else if (t >= static_cast<double>(T - 1)) sigma = s[T - 1];
    else {
      const auto i = static_cast<int64_t>(std::floor(t));
      const double w = t - static_cast<double>(i);
      sigma = s[i] + (s[i + 1] - s[i]) * w;
    }
    sigmas.push_back(static_cast<float>(sigma));
    steps.push_back(static_cast<float>(t));
  }
  const double last = c.final_sigmas_type == "zero" ? 0.0 : std::sqrt((1.0 - ac[0].item<double>()) / ac[0].item<double>());
  sigmas.push_back(static_cast<float>(last));
  sigmas_ = at::tensor(sigmas, at::kFloat);
  timesteps_ = at::tensor(steps, at::kFloat);
}

at::Tensor EulerDiscreteScheduler::init_noise_sigma() const {
  const at::Tensor max_sigma = sigmas_.max();
  const auto& spacing = schedule_.config().timestep_spacing;
  if (spacing == "linspace" || spacing == "trailing") return max_sigma;
  return (max_sigma.pow(2) + 1.0).pow(0.5);
}

int64_t EulerDiscreteScheduler::index_for_timestep(double timestep) const {
  const at::Tensor matches = (timesteps_ == at::scalar_tensor(timestep, at::kFloat)).nonzero();  // [k, 1]
  if (matches.size(0) == 0) throw Error("EulerDiscreteScheduler: timestep " + std::to_string(timestep) + " is not in the schedule");
  return matches[matches.size(0) > 1 ? 1 : 0][0].item<int64_t>();
}

at::Tensor EulerDiscreteScheduler::scale_model_input(const at::Tensor& sample, double timestep) const {
  const at::Tensor sigma = sigmas_[index_for_timestep(timestep)];
  return sample / (sigma.pow(2) + 1.0).pow(0.5);
}

SchedulerStepOutput EulerDiscreteScheduler::step(const at::Tensor& model_output, double timestep, const at::Tensor& sample) const {
  const int64_t index = index_for_timestep(timestep);
  const at::Tensor x = sample.to(at::kFloat);
  const at::Tensor sigma = sigmas_[index];
  const at::Tensor sigma_hat = sigma * 1.0;  // gamma = 0 (s_churn = 0)
  at::Tensor pred_original;
  switch (schedule_.config().prediction_type) {
    case PredictionType::kEpsilon: pred_original = x - sigma_hat * model_output; break;
    case PredictionType::kVPrediction:
      pred_original = model_output * (-sigma / (sigma.pow(2) + 1.0).pow(0.5)) + (x / (sigma.pow(2) + 1.0));
      break;
    case PredictionType::kSample: pred_original = model_output; break;
  }
  const at::Tensor derivative = (x - pred_original) / sigma_hat;
  const at::Tensor dt = sigmas_[index + 1] - sigma_hat;
  const at::Tensor prev = (x + derivative * dt).to(model_output.scalar_type());
  return {prev, pred_original};
}

}  // namespace dedpo::sd
