// The `toy` backbone: world, MLP denoiser, DDPM noising, DDIM / DDPM sampling, weights I/O.
#include "toy_backbone.hpp"

#include "dedpo/digest.hpp"

#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

namespace dedpo::toy {
namespace {

ToyBackbone::Sampler read_sampler(const Options& options) {
  const std::string& sampler = options.string("sampler");
  if (sampler == "ddim") return ToyBackbone::Sampler::ddim;
  if (sampler != "ddpm") {
    options.fail("sampler", "must be \"ddim\" or \"ddpm\", got \"" + sampler + "\"");
  }
  return ToyBackbone::Sampler::ddpm;
}

constexpr double kPi = 3.14159265358979323846;

WorldConfig world_config(const Options& options) {
  WorldConfig config;
  config.world_seed = static_cast<std::uint64_t>(options.integer("world_seed"));
  config.dim = options.integer("dim");
  config.n_prompts = options.integer("n_prompts");
  config.n_modes = options.integer("n_modes");
  config.mode_spread = options.real("mode_spread");
  config.mode_std = options.real("mode_std");
  config.preference_width = options.real("preference_width");
  config.quality_weight = options.real("quality_weight");
  return config;
}

std::string world_description(const WorldConfig& c) {
  std::ostringstream out;
  out.precision(17);
  out << "toy world seed=" << c.world_seed << " dim=" << c.dim << " prompts=" << c.n_prompts
      << " modes=" << c.n_modes << " spread=" << c.mode_spread << " std=" << c.mode_std
      << " width=" << c.preference_width << " quality=" << c.quality_weight;
  return out.str();
}

// Random draws on the generator's device, then moved to where the data lives.
at::Tensor randn_like_on(at::IntArrayRef size, at::Generator& gen, const at::TensorOptions& to) {
  return at::randn(size, gen, to.device(gen.device())).to(to.device());
}
at::Tensor randint_on(std::int64_t high, std::int64_t n, at::Generator& gen, at::Device device) {
  return at::randint(high, {n}, gen, at::TensorOptions().dtype(at::kLong).device(gen.device()))
      .to(device);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Denoiser

ToyDenoiserImpl::ToyDenoiserImpl(std::int64_t dim, std::int64_t n_prompts, std::int64_t width,
                                 std::int64_t depth, std::int64_t time_embedding,
                                 std::int64_t prompt_embedding, std::int64_t timesteps)
    : time_embedding_(time_embedding), timesteps_(timesteps) {
  prompt_embedding_ = register_module(
      "prompt_embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(n_prompts,
                                                                           prompt_embedding)));
  input_ = register_module("input", torch::nn::Linear(dim + time_embedding + prompt_embedding,
                                                      width));
  for (std::int64_t i = 0; i + 1 < depth; ++i) {
    hidden_.push_back(register_module("hidden_" + std::to_string(i),
                                      torch::nn::Linear(width, width)));
  }
  output_ = register_module("output", torch::nn::Linear(width, dim));
}

at::Tensor ToyDenoiserImpl::forward(const at::Tensor& x, const at::Tensor& t,
                                    const at::Tensor& prompt) {
  const std::int64_t half = time_embedding_ / 2;
  auto options = x.options();
  at::Tensor freqs = at::exp(at::arange(half, options) * (-std::log(10000.0) / half));
  at::Tensor args = (t.to(x.scalar_type()) * (1000.0 / timesteps_)).unsqueeze(1) * freqs;
  std::vector<at::Tensor> parts = {x, at::sin(args), at::cos(args)};
  if (time_embedding_ % 2 == 1) parts.push_back(at::zeros({x.size(0), 1}, options));
  parts.push_back(prompt_embedding_->forward(prompt));
  at::Tensor h = at::silu(input_->forward(at::cat(parts, 1)));
  for (auto& layer : hidden_) h = at::silu(layer->forward(h));
  return output_->forward(h);
}

void ToyDenoiserImpl::initialise(std::uint64_t seed) {
  at::NoGradGuard no_grad;
  at::Generator gen = make_generator(seed * 0xD1B54A32D192ED03ull + 0x5EED);
  prompt_embedding_->weight.normal_(0.0, 1.0, gen);
  auto init_linear = [&](torch::nn::Linear& layer, double gain) {
    double bound = gain / std::sqrt(static_cast<double>(layer->weight.size(1)));
    layer->weight.uniform_(-bound, bound, gen);
    layer->bias.uniform_(-bound, bound, gen);
  };
  init_linear(input_, 1.0);
  for (auto& layer : hidden_) init_linear(layer, 1.0);
  init_linear(output_, 0.1);  // small initial prediction: starts near the trivial denoiser
}

// ---------------------------------------------------------------------------------------------
// Backbone

ToyBackbone::ToyBackbone(const Options& options)
    : options_(options),
      world_(world_config(options)),
      width_(options.integer("width")),
      depth_(options.integer("depth")),
      time_embedding_(options.integer("time_embedding")),
      prompt_embedding_(options.integer("prompt_embedding")),
      timesteps_(options.integer("timesteps")),
      sample_steps_(options.integer("sample_steps")),
      sampler_(read_sampler(options)) {
  if (width_ < 1) options.fail("width", "must be at least 1");
  if (depth_ < 1) options.fail("depth", "must be at least 1");
  if (time_embedding_ < 2) options.fail("time_embedding", "must be at least 2");
  if (prompt_embedding_ < 1) options.fail("prompt_embedding", "must be at least 1");
  if (timesteps_ < 2) options.fail("timesteps", "must be at least 2");
  if (sample_steps_ < 1 || sample_steps_ > timesteps_) {
    options.fail("sample_steps", "must be between 1 and timesteps (" +
                                     std::to_string(timesteps_) + ")");
  }
  const std::string& schedule = options.string("schedule");
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  const double T = static_cast<double>(timesteps_);
  if (schedule == "linear") {
    double scale = 1000.0 / T;  // the DDPM schedule, rescaled to T steps
    betas_ = at::linspace(scale * 1e-4, std::min(scale * 0.02, 0.999), timesteps_, f64);
  } else if (schedule == "cosine") {
    const double s = 0.008;  // Nichol & Dhariwal 2021
    at::Tensor steps = at::arange(timesteps_ + 1, f64) / T;
    at::Tensor f = at::cos((steps + s) / (1 + s) * (kPi / 2)).pow(2);
    at::Tensor abar = f / f[0];
    betas_ = (1 - abar.slice(0, 1) / abar.slice(0, 0, timesteps_)).clamp(0.0, 0.999);
  } else {
    options.fail("schedule", "must be \"cosine\" or \"linear\", got \"" + schedule + "\"");
  }
  alphas_cumprod_ = at::cumprod(1 - betas_, 0);
  betas_ = betas_.to(at::kFloat);
  alphas_cumprod_ = alphas_cumprod_.to(at::kFloat);
  clip_ = world_.means().abs().max().item<double>() + 5 * world_.config().mode_std;
  model_ = make_denoiser();
  model_->initialise(0);
}

std::shared_ptr<ToyDenoiserImpl> ToyBackbone::make_denoiser() const {
  return std::make_shared<ToyDenoiserImpl>(world_.dim(), world_.n_prompts(), width_, depth_,
                                           time_embedding_, prompt_embedding_, timesteps_);
}

void ToyBackbone::prepare(const BackboneContext& context) {
  if (!context.initial_weights.empty()) {
    load_weights(context.initial_weights);
  } else {
    model_->initialise(context.seed);
  }
  model_->to(context.device);  // initialised on the host: the same weights on every device
  reference_ = make_denoiser();
  {
    at::NoGradGuard no_grad;
    auto source = model_->named_parameters();
    for (auto& item : reference_->named_parameters()) {
      item.value().copy_(source[item.key()]);
      item.value().set_requires_grad(false);
    }
  }
  reference_->to(context.device);
  reference_->eval();
  prepared_ = true;
}

torch::nn::Module& ToyBackbone::model() { return *model_; }

void ToyBackbone::require_prepared(const char* what) const {
  if (!prepared_) {
    throw Error(std::string("toy backbone: ") + what + " needs prepare() first");
  }
}

at::Tensor ToyBackbone::encode_prompts(const std::vector<std::string>& prompts) {
  std::vector<std::int64_t> index;
  index.reserve(prompts.size());
  for (const std::string& prompt : prompts) {
    std::int64_t i = world_.find_prompt(prompt);
    if (i < 0) {
      std::string known;
      for (const std::string& p : world_.prompts()) {
        known += (known.empty() ? "\"" : ", \"") + p + "\"";
      }
      throw Error("toy backbone: unknown prompt \"" + prompt + "\"; the world (n_prompts = " +
                  std::to_string(world_.n_prompts()) + ") knows " + known);
    }
    index.push_back(i);
  }
  return at::tensor(index, at::TensorOptions().dtype(at::kLong));
}

at::Tensor ToyBackbone::as_condition(const at::Tensor& condition, std::int64_t rows) const {
  at::Tensor c = condition.reshape({-1}).to(at::kLong);
  if (c.size(0) != rows) {
    throw Error("toy backbone: " + std::to_string(c.size(0)) + " condition rows for " +
                std::to_string(rows) + " samples");
  }
  return c;
}

at::Tensor ToyBackbone::noised(const at::Tensor& x, const at::Tensor& t,
                               const at::Tensor& noise) const {
  at::Tensor abar = alphas_cumprod_.to(x.device()).index_select(0, t).unsqueeze(1);
  return abar.sqrt() * x + (1 - abar).sqrt() * noise;
}

DenoisingErrors ToyBackbone::denoising_errors(const PairBatch& batch, at::Generator& generator,
                                              bool with_reference) {
  require_prepared("denoising_errors");
  const std::int64_t B = batch.a.size(0);
  if (batch.b.sizes() != batch.a.sizes()) throw Error("toy backbone: A and B differ in shape");
  at::Tensor a = batch.a.reshape({B, world_.dim()});
  at::Tensor b = batch.b.reshape({B, world_.dim()}).to(a.device());
  at::Tensor c = as_condition(batch.condition, B).to(a.device());
  at::Tensor t = randint_on(timesteps_, B, generator, a.device());
  at::Tensor noise = randn_like_on({B, world_.dim()}, generator, a.options());
  at::Tensor x = at::cat({noised(a, t, noise), noised(b, t, noise)}, 0);
  at::Tensor tt = at::cat({t, t}), cc = at::cat({c, c}), target = at::cat({noise, noise}, 0);

  DenoisingErrors out;
  at::Tensor err = (model_->forward(x, tt, cc) - target).pow(2).mean(1);
  out.model_a = err.slice(0, 0, B);
  out.model_b = err.slice(0, B);
  if (with_reference) {
    at::NoGradGuard no_grad;
    at::Tensor prediction;
    {
      // No autograd bookkeeping at all for the frozen reference. Its output is an inference
      // tensor; the errors computed from it outside are ordinary ones, which losses may keep.
      c10::InferenceMode inference;
      prediction = reference_->forward(x, tt, cc);
    }
    at::Tensor ref = (prediction - target).pow(2).mean(1);
    out.ref_a = ref.slice(0, 0, B);
    out.ref_b = ref.slice(0, B);
  }
  return out;
}

at::Tensor ToyBackbone::denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                                       at::Generator& generator) {
  const std::int64_t N = samples.size(0);
  at::Tensor x0 = samples.reshape({N, world_.dim()});
  at::Tensor c = as_condition(condition, N).to(x0.device());
  at::Tensor t = randint_on(timesteps_, N, generator, x0.device());
  at::Tensor noise = randn_like_on({N, world_.dim()}, generator, x0.options());
  return (model_->forward(noised(x0, t, noise), t, c) - noise).pow(2).mean(1);
}

at::Tensor ToyBackbone::sample(const at::Tensor& condition, at::Generator& generator,
                               bool from_reference) {
  require_prepared("sample");
  at::NoGradGuard no_grad;
  ToyDenoiserImpl& net = from_reference ? *reference_ : *model_;
  at::Device device = model_->parameters().front().device();
  const std::int64_t N = condition.reshape({-1}).size(0);
  at::Tensor c = as_condition(condition, N).to(device);
  auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  at::Tensor abar = alphas_cumprod_.to(device);
  at::Tensor x = randn_like_on({N, world_.dim()}, generator, options);
  auto step_tensor = [&](std::int64_t t) { return at::full({N}, t, options.dtype(at::kLong)); };

  if (sampler_ == Sampler::ddim) {
    // Evenly spaced timesteps from T-1 down to 0 (deterministic, eta = 0).
    std::vector<std::int64_t> steps;
    for (std::int64_t i = 0; i < sample_steps_; ++i) {
      double pos = sample_steps_ == 1
                       ? timesteps_ - 1.0
                       : (timesteps_ - 1.0) * (1.0 - static_cast<double>(i) / (sample_steps_ - 1));
      auto t = static_cast<std::int64_t>(std::llround(pos));
      if (steps.empty() || t < steps.back()) steps.push_back(t);
    }
    for (std::size_t i = 0; i < steps.size(); ++i) {
      const std::int64_t t = steps[i];
      double a_t = abar[t].item<double>();
      double a_prev = i + 1 < steps.size() ? abar[steps[i + 1]].item<double>() : 1.0;
      at::Tensor eps = net.forward(x, step_tensor(t), c);
      at::Tensor x0 = ((x - std::sqrt(1 - a_t) * eps) / std::sqrt(a_t)).clamp(-clip_, clip_);
      eps = (x - std::sqrt(a_t) * x0) / std::sqrt(1 - a_t);  // consistent with the clipped x0
      x = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
    }
  } else {
    at::Tensor betas = betas_.to(device);
    for (std::int64_t t = timesteps_ - 1; t >= 0; --t) {
      double beta = betas[t].item<double>();
      double a_t = abar[t].item<double>();
      double a_prev = t > 0 ? abar[t - 1].item<double>() : 1.0;
      at::Tensor eps = net.forward(x, step_tensor(t), c);
      x = (x - beta / std::sqrt(1 - a_t) * eps) / std::sqrt(1 - beta);
      if (t > 0) {
        double variance = beta * (1 - a_prev) / (1 - a_t);
        x = x + std::sqrt(variance) * randn_like_on({N, world_.dim()}, generator, options);
      }
    }
  }
  return x;
}

void ToyBackbone::save_weights(const std::filesystem::path& file) const {
  torch::serialize::OutputArchive archive;
  for (const auto& item : model_->named_parameters()) {
    archive.write(item.key(), item.value().detach().to(at::kCPU));
  }
  archive.save_to(file.string());
}

void ToyBackbone::load_weights(const std::filesystem::path& file) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(file.string());
  } catch (const std::exception& error) {
    throw Error("toy backbone: cannot read weights file " + file.string() + ": " +
                std::string(error.what()).substr(0, 300));
  }
  std::set<std::string> stored;
  for (const std::string& key : archive.keys()) stored.insert(key);
  std::vector<std::string> problems;
  std::vector<std::pair<at::Tensor, at::Tensor>> copies;
  for (auto& item : model_->named_parameters()) {
    at::Tensor value;
    if (!stored.count(item.key()) || !archive.try_read(item.key(), value)) {
      problems.push_back("missing '" + item.key() + "'");
      continue;
    }
    stored.erase(item.key());
    if (value.sizes() != item.value().sizes()) {
      std::ostringstream message;
      message << "'" << item.key() << "' has shape " << value.sizes() << ", the model "
              << item.value().sizes();
      problems.push_back(message.str());
      continue;
    }
    copies.emplace_back(item.value(), value);
  }
  for (const std::string& key : stored) problems.push_back("unexpected '" + key + "'");
  if (!problems.empty()) {
    std::string message = "toy backbone: weights file " + file.string() +
                          " does not match this backbone's options (";
    for (std::size_t i = 0; i < problems.size(); ++i) {
      message += (i ? "; " : "") + problems[i];
    }
    throw Error(message + ")");
  }
  at::NoGradGuard no_grad;
  for (auto& [target, value] : copies) target.copy_(value);
}

std::string ToyBackbone::reference_identity() const {
  require_prepared("reference_identity");
  Digest identity;
  identity.add(world_description(world_.config()));
  for (const auto& item : reference_->named_parameters()) {
    identity.add(item.key());
    identity.add(item.value());
  }
  return identity.hex();
}

ToyBackbone& toy_backbone(Backbone& backbone, const char* plugin) {
  auto* toy = dynamic_cast<ToyBackbone*>(&backbone);
  if (toy == nullptr) {
    throw Error(std::string("the toy_* plugins need backbone 'toy', got another backbone (") +
                typeid(backbone).name() + ") for '" + plugin + "'");
  }
  return *toy;
}

}  // namespace dedpo::toy
