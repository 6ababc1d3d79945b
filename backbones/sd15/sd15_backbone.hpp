#pragma once
// The `sd15` backbone: Stable Diffusion 1.x / 2.x from a diffusers folder (model_index.json,
// unet/, vae/, text_encoder/, tokenizer/, scheduler/), trained in full or through LoRA adapters.
//
// Backbone space: VAE latents already multiplied by vae.scaling_factor, [N, 4, h, w].
// Conditioning: CLIP text-encoder hidden states, [N, 77, C] (clip_skip as diffusers does it).
//
// LoRA: each targeted Linear keeps its frozen weight W0; while the trainable model runs, its
// `weight` member is bound to W0 + (alpha / rank) · B·A (B = lora_B [out, r], zero at the start,
// A = lora_A [r, in]), and to W0 alone for the reference. So the reference is the same UNet with
// the adapters off, and no second copy of the UNet exists.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>

#include "dedpo/backbone.hpp"
#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/schedulers.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "dedpo/sd/unet.hpp"
#include "dedpo/sd/vae.hpp"

namespace dedpo::sd15 {

// One LoRA-adapted Linear of the UNet.
struct LoraLayer {
  std::string path;           // diffusers module path, e.g. "...attn1.to_q" or "...attn1.to_out.0"
  torch::nn::Linear linear;   // the UNet's layer
  at::Tensor base;            // its frozen weight W0 [out, in]
  at::Tensor down;            // lora_A.weight [r, in]
  at::Tensor up;              // lora_B.weight [out, r]
};

class Sd15Backbone : public Backbone {
 public:
  explicit Sd15Backbone(const Options& options);
  ~Sd15Backbone() override;

  void prepare(const BackboneContext& context) override;
  torch::nn::Module& model() override;
  at::Tensor encode_prompts(const std::vector<std::string>& prompts) override;
  DenoisingErrors denoising_errors(const PairBatch& batch, at::Generator& generator,
                                   bool with_reference) override;
  at::Tensor denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                            at::Generator& generator) override;
  at::Tensor sample(const at::Tensor& condition, at::Generator& generator,
                    bool from_reference) override;
  // Full fine-tuning: the UNet as diffusers' diffusion_pytorch_model.safetensors. LoRA: the UNet
  // with the adapters merged into `file`, and the adapters alone beside it (lora_weights_path).
  void save_weights(const std::filesystem::path& file) const override;
  // Images <-> latents through the VAE (the posterior mean, times vae.scaling_factor).
  int64_t image_resolution() const override;
  at::Tensor encode_images(const at::Tensor& images) override;
  at::Tensor decode_samples(const at::Tensor& samples) const override;
  std::string encoder_fingerprint() const override;

  // Not part of the Backbone interface.
  // The adapters file written beside `weights_file`: <stem>_lora.safetensors, keys in diffusers'
  // format ("unet.<module>.lora.down.weight" / ".lora.up.weight", the scale folded into `up`).
  static std::filesystem::path lora_weights_path(const std::filesystem::path& weights_file);

  // For tests and tools.
  sd::UNet2DConditionModel& unet() { return unet_; }
  sd::AutoencoderKL& vae() { return vae_; }
  const std::vector<LoraLayer>& lora_layers() const { return lora_; }
  int64_t latent_size() const;  // resolution / VAE scale factor

 private:
  void require_prepared(const char* what) const;
  // UNet output in float32 for the trainable model (adapters on) or the reference.
  at::Tensor run_unet(const at::Tensor& x, const at::Tensor& t, const at::Tensor& context,
                      bool reference);
  at::Tensor target(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) const;
  void setup_lora(std::uint64_t seed);
  std::string compute_encoder_fingerprint() const;

  // Options.
  std::filesystem::path path_;
  std::string prediction_type_;  // "auto" | "epsilon" | "v_prediction"
  int64_t clip_skip_;
  std::string dtype_;  // "float32" | "bfloat16"
  int64_t lora_rank_;
  double lora_alpha_;
  std::vector<std::string> lora_targets_;
  std::string sampler_;
  int64_t sample_steps_;
  double guidance_scale_;
  int64_t resolution_;

  bool prepared_ = false;
  sd::UNet2DConditionModel unet_{nullptr};
  sd::UNet2DConditionModel reference_{nullptr};  // full fine-tuning only
  sd::AutoencoderKL vae_{nullptr};
  sd::ClipTextModel text_encoder_{nullptr};
  std::optional<sd::ClipTokenizer> tokenizer_;
  std::optional<sd::SchedulerConfig> scheduler_config_;
  std::optional<sd::NoiseSchedule> schedule_;
  std::shared_ptr<torch::nn::Module> lora_root_;  // model() with LoRA
  std::vector<LoraLayer> lora_;
  std::map<std::string, at::Tensor> prompt_cache_;  // prompt -> [S, C]
  std::string encoder_fingerprint_;
};

}  // namespace dedpo::sd15
