#pragma once
// A backbone owns a trainable denoiser and its frozen reference copy, and turns prompts into
// conditioning. The trainer, losses and metrics only meet it through this interface.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>

#include "dedpo/plugin.hpp"

namespace dedpo {

struct BackboneContext {
  // Where the run trains: prepare() puts the trainable model there, and the frozen parts there or,
  // where the plugin's options say so, on the host.
  c10::Device device = c10::kCPU;
  std::filesystem::path cache_dir;      // for derived artefacts (encoded data, reference weights)
  std::filesystem::path initial_weights;  // empty = the backbone's own initialisation
  std::uint64_t seed = 0;
};

struct PairBatch {
  at::Tensor a;          // [B, ...] backbone space
  at::Tensor b;          // [B, ...]
  at::Tensor condition;  // [B, ...] rows of encode_prompts()
  at::Tensor a_info;     // [B, K] rows of PairDataset::a_info; undefined when the data has none
  at::Tensor b_info;     // [B, K]
};

struct DenoisingErrors {
  at::Tensor model_a, model_b;  // [B] per-sample mean squared error of the noise prediction
  at::Tensor ref_a, ref_b;      // [B]; undefined unless requested
};

class Backbone : public Plugin {
 public:
  static constexpr PluginKind kind = PluginKind::backbone;

  // Called once before use: builds or loads the weights (context.initial_weights when given) and
  // snapshots them as the frozen reference.
  virtual void prepare(const BackboneContext& context) = 0;

  // The trainable model; its named_parameters() are the checkpoint schema.
  virtual torch::nn::Module& model() = 0;

  // [P, ...] conditioning, one row per prompt.
  virtual at::Tensor encode_prompts(const std::vector<std::string>& prompts) = 0;

  // One timestep and one noise draw per pair, shared by A and B. No gradient flows into the
  // reference errors.
  virtual DenoisingErrors denoising_errors(const PairBatch& batch, at::Generator& generator,
                                           bool with_reference) = 0;

  // Plain denoising loss per sample (the objective that trains a reference model): [N].
  virtual at::Tensor denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                                    at::Generator& generator) = 0;

  // Draws one sample per condition row: [N, ...]. Same generator state, same initial noise for
  // model and reference, so their samples can be compared pairwise.
  virtual at::Tensor sample(const at::Tensor& condition, at::Generator& generator,
                            bool from_reference) = 0;

  // Weights of the trainable model, in the backbone's native format.
  virtual void save_weights(const std::filesystem::path& file) const = 0;

  // Image backbones. The defaults throw dedpo::Error (the backbone has no image form).
  //
  // Side length of the square images encode_images() takes (0: not an image backbone).
  virtual std::int64_t image_resolution() const;
  // uint8 [N, R, R, 3] RGB images, R = image_resolution() -> backbone space [N, ...]. Row i depends
  // on image i alone, to the bit: latent caches encode an image again on its own.
  virtual at::Tensor encode_images(const at::Tensor& images);
  // Backbone-space samples [N, ...] -> uint8 [N, H, W, 3] RGB images on the CPU.
  virtual at::Tensor decode_samples(const at::Tensor& samples) const;
  // Identifies what encode_images() and encode_prompts() compute (encoder weights, resolution,
  // options), so disk caches of their outputs are keyed by model. Empty: not cacheable.
  virtual std::string encoder_fingerprint() const;

  // Writes samples ([N, ...], as sample() returns them) as files, row i to files[i];
  // files.size() == N; missing folders are created. The default writes decode_samples() as PNGs.
  virtual void write_samples(const at::Tensor& samples,
                             const std::vector<std::filesystem::path>& files) const;
};

}  // namespace dedpo
