#pragma once
// The `toy` backbone: an MLP noise-prediction denoiser eps(x_t, t, prompt) over the toy world,
// DDPM forward noising and DDIM / ancestral DDPM sampling. The world lives here so that every
// toy_* plugin of this library reaches it through the prepared backbone (toy_backbone()).
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include "dedpo/backbone.hpp"
#include "dedpo/options.hpp"
#include "toy_world.hpp"

namespace dedpo::toy {

inline constexpr OptionSpec kToyBackboneOptions[] = {
    // The world.
    {"world_seed", OptionType::integer, "0", "Seed of the world (mode centres, preferred modes, "
                                             "spurious direction)."},
    {"dim", OptionType::integer, "2", "Dimension d of the data space."},
    {"n_prompts", OptionType::integer, "4", "Number of prompts K (\"prompt 0\" ...)."},
    {"n_modes", OptionType::integer, "3", "Gaussian modes per prompt."},
    {"mode_spread", OptionType::real, "1.0", "Standard deviation of the mode centres."},
    {"mode_std", OptionType::real, "0.15", "Standard deviation sigma of each mode."},
    {"preference_width", OptionType::real, "0.5",
     "Width l of the preferred region around the preferred mode."},
    {"quality_weight", OptionType::real, "0.1",
     "Weight w_q of the quality (log mixture density) term of the true reward."},
    // The denoiser.
    {"width", OptionType::integer, "128", "Hidden width of the MLP denoiser."},
    {"depth", OptionType::integer, "3", "Hidden layers of the MLP denoiser (SiLU)."},
    {"time_embedding", OptionType::integer, "32", "Size of the sinusoidal timestep embedding."},
    {"prompt_embedding", OptionType::integer, "16", "Size of the learned prompt embedding."},
    {"timesteps", OptionType::integer, "100", "Diffusion steps T."},
    {"schedule", OptionType::string, "\"cosine\"", "Noise schedule: \"cosine\" or \"linear\"."},
    {"sampler", OptionType::string, "\"ddpm\"",
     "\"ddpm\" (ancestral, all T steps; matches the data best) or \"ddim\" (deterministic, "
     "sample_steps steps, predicted x0 clipped to the world's range)."},
    {"sample_steps", OptionType::integer, "25", "DDIM sampling steps (at most timesteps)."},
};

// The denoiser. Parameter names (the checkpoint schema): prompt_embedding.weight,
// input.{weight,bias}, hidden_<i>.{weight,bias}, output.{weight,bias}.
class ToyDenoiserImpl : public torch::nn::Module {
 public:
  ToyDenoiserImpl(std::int64_t dim, std::int64_t n_prompts, std::int64_t width,
                  std::int64_t depth, std::int64_t time_embedding, std::int64_t prompt_embedding,
                  std::int64_t timesteps);
  // x_t [N, d], t [N] int64, prompt [N] int64 -> predicted noise [N, d].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& prompt);
  void initialise(std::uint64_t seed);

 private:
  std::int64_t time_embedding_, timesteps_;
  torch::nn::Embedding prompt_embedding_{nullptr};
  torch::nn::Linear input_{nullptr};
  std::vector<torch::nn::Linear> hidden_;
  torch::nn::Linear output_{nullptr};
};

class ToyBackbone : public Backbone {
 public:
  enum class Sampler { ddpm, ddim };  // option "sampler"

  explicit ToyBackbone(const Options& options);

  void prepare(const BackboneContext& context) override;
  torch::nn::Module& model() override;
  at::Tensor encode_prompts(const std::vector<std::string>& prompts) override;
  DenoisingErrors denoising_errors(const PairBatch& batch, at::Generator& generator,
                                   bool with_reference) override;
  at::Tensor denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                            at::Generator& generator) override;
  at::Tensor sample(const at::Tensor& condition, at::Generator& generator,
                    bool from_reference) override;
  void save_weights(const std::filesystem::path& file) const override;

  const World& world() const { return world_; }
  const Options& options() const { return options_; }
  // Digest of the world configuration and the reference weights: identifies what the
  // reference samples (keys dataset fingerprints).
  std::string reference_identity() const;
  bool prepared() const { return prepared_; }

 private:
  std::shared_ptr<ToyDenoiserImpl> make_denoiser() const;
  void load_weights(const std::filesystem::path& file);
  // x_t and the target noise for samples x at timesteps t.
  at::Tensor noised(const at::Tensor& x, const at::Tensor& t, const at::Tensor& noise) const;
  at::Tensor as_condition(const at::Tensor& condition, std::int64_t rows) const;
  void require_prepared(const char* what) const;

  Options options_;
  World world_;
  std::int64_t width_, depth_, time_embedding_, prompt_embedding_, timesteps_, sample_steps_;
  Sampler sampler_;
  double clip_ = 0;  // DDIM: |predicted x0| bound, the world's data range
  at::Tensor betas_, alphas_cumprod_;  // [T] double-checked float
  std::shared_ptr<ToyDenoiserImpl> model_, reference_;
  bool prepared_ = false;
};

// The toy backbone behind a Backbone reference; dedpo::Error when it is another backbone.
ToyBackbone& toy_backbone(Backbone& backbone, const char* plugin);

}  // namespace dedpo::toy
