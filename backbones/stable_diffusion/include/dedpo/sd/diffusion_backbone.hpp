#pragma once
// What the Stable Diffusion backbone plugins share (`sd15`, `sdxl`): a diffusers pipeline folder's
// UNet, VAE and scheduler, full fine-tuning or LoRA, denoising errors, DDIM / Euler sampling with
// classifier-free guidance, saving, images <-> latents. A plugin derives from DiffusionBackbone and
// supplies only its text side: which folder parts it reads, how prompts become conditioning rows,
// and how rows (plus per-sample side information) become the UNet's inputs.
//
// Backbone space: VAE latents already multiplied by vae.scaling_factor, [N, 4, h, w].
//
// LoRA: each targeted Linear keeps its frozen weight W0; while the trainable model runs, its
// `weight` member is bound to W0 + (alpha / rank) · B·A (B = lora_B [out, r], zero at the start,
// A = lora_A [r, in]), and to W0 alone for the reference. So the reference is the same UNet with
// the adapters off, and no second copy of the UNet exists. Full fine-tuning keeps a frozen copy.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/modules/linear.h>

#include "dedpo/backbone.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/sd/lora.hpp"
#include "dedpo/sd/lora_file.hpp"
#include "dedpo/sd/schedulers.hpp"
#include "dedpo/sd/unet.hpp"
#include "dedpo/sd/vae.hpp"

// The options every Stable Diffusion backbone declares, for a plugin's schema:
//   const dedpo::OptionSpec kOptions[] = {DEDPO_SD_BACKBONE_OPTIONS("\"ddim\"", "7.5", "512"), {"clip_skip", ...}};
// (a macro because a plugin's schema must be one static array).
#define DEDPO_SD_BACKBONE_OPTIONS(DEFAULT_SAMPLER, DEFAULT_GUIDANCE, DEFAULT_RESOLUTION)                         \
  {"path", ::dedpo::OptionType::string, nullptr, "diffusers pipeline folder (model_index.json, unet/, ...)."},   \
  {"vae", ::dedpo::OptionType::string, "\"\"",                                                                   \
   "A diffusers AutoencoderKL folder (config.json + weights) used in place of the pipeline's vae/, "             \
   "e.g. an fp16-safe VAE; \"\" = the pipeline's."},                                                             \
  {"prediction_type", ::dedpo::OptionType::string, "\"auto\"",                                                   \
   "\"auto\" (the scheduler config's), \"epsilon\" or \"v_prediction\"."},                                       \
  {"dtype", ::dedpo::OptionType::string, "\"float32\"",                                                          \
   "Compute dtype: \"float32\", or \"bfloat16\" (autocast on the run's device; weights stay float32)."},                         \
  {"frozen_dtype", ::dedpo::OptionType::string, "\"float32\"",                                                   \
   "Storage dtype of the frozen modules (text encoders, VAE, the reference UNet of full fine-tuning, the "       \
   "base UNet under LoRA): \"float32\" or \"bfloat16\" (half their memory; trainable weights stay float32)."},                        \
  {"lora_rank", ::dedpo::OptionType::integer, "0", "0 = full fine-tuning of the UNet; > 0 = LoRA rank."},        \
  {"lora_alpha", ::dedpo::OptionType::real_or_string, "\"rank\"",                                                \
   "LoRA alpha (scale = alpha / rank); \"rank\" = scale 1."},                                                    \
  {"lora_targets", ::dedpo::OptionType::string, "\"to_q,to_k,to_v,to_out.0\"",                                   \
   "Comma-separated UNet Linear layers (by name suffix) that get LoRA adapters."},                               \
  {"lora_format", ::dedpo::OptionType::string, "\"diffusers\"",                                                  \
   "Key format of the adapters file saved beside the weights (<stem>_lora.safetensors): \"diffusers\" "         \
   "(pipeline.load_lora_weights) or \"kohya\" (lora_unet_..., ComfyUI and A1111); docs/interop.md."},           \
  {"lora_init", ::dedpo::OptionType::string, "\"\"",                                                             \
   "A LoRA file (diffusers or kohya keys, told apart by its keys) the adapters start from; its rank and alpha "  \
   "must equal lora_rank / lora_alpha and its layers lora_targets'. \"\" = the usual start (B = 0)."},           \
  {"check_weights", ::dedpo::OptionType::boolean, "true",                                                        \
   "Refuse weights holding NaN or infinity when loading them (one pass over every tensor; false skips "          \
   "the check for faster loading)."},                                                                            \
  {"gradient_checkpointing", ::dedpo::OptionType::boolean, "false",                                              \
   "Recompute the UNet's block activations in the backward pass instead of keeping them "                        \
   "(less memory, about one more forward per step)."},                                                           \
  {"reference_device", ::dedpo::OptionType::string, "\"model\"",                                                 \
   "Full fine-tuning: where the frozen reference UNet lives. \"model\" = beside the trainable one; "             \
   "\"cpu\" = host memory, moved to the batch's device only for the reference pass (an accelerator "             \
   "then never holds both copies; no effect when the model runs on the CPU)."},                                  \
  {"text_encoder_device", ::dedpo::OptionType::string, "\"model\"",                                              \
   "Where the text encoders live and run: \"model\" = the run's device; \"cpu\" = host memory (prompts are "      \
   "encoded once and cached, so the accelerator's memory is kept for the UNet)."},                               \
  {"vae_device", ::dedpo::OptionType::string, "\"model\"",                                                       \
   "Where the VAE lives and runs: \"model\" = the run's device; \"cpu\" = host memory (images are encoded "       \
   "once and cached; decoding samples then runs on the host)."},                                                 \
  {"sampler", ::dedpo::OptionType::string, DEFAULT_SAMPLER, "Sampler of sample(): \"ddim\" or \"euler\"."},      \
  {"sample_steps", ::dedpo::OptionType::integer, "50", "Sampling steps."},                                       \
  {"guidance_scale", ::dedpo::OptionType::real, DEFAULT_GUIDANCE,                                                \
   "Classifier-free guidance scale (1 = no guidance, no unconditional pass)."},                                  \
  {"resolution", ::dedpo::OptionType::integer, DEFAULT_RESOLUTION, "Image side in pixels (encode_images, sample)."}

namespace dedpo::sd {

// What the UNet takes besides the noisy latents and the timesteps.
struct UNetConditioning {
  at::Tensor context;                   // [N, S, cross_attention_dim]
  std::optional<UNetAddedCond> added;   // SDXL's text_embeds and time_ids
};

class DiffusionBackbone : public Backbone {
 public:
  // `name` prefixes every message ("sdxl: ..."). Reads the options of DEDPO_SD_BACKBONE_OPTIONS.
  DiffusionBackbone(std::string name, const Options& options);
  ~DiffusionBackbone() override;

  void prepare(const BackboneContext& context) override;
  torch::nn::Module& model() override;
  // Cached per prompt text; rows come from encode_text().
  at::Tensor encode_prompts(const std::vector<std::string>& prompts) override;
  DenoisingErrors denoising_errors(const PairBatch& batch, at::Generator& generator,
                                   bool with_reference) override;
  at::Tensor denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                            at::Generator& generator) override;
  at::Tensor sample(const at::Tensor& condition, at::Generator& generator,
                    bool from_reference) override;
  // Full fine-tuning: the UNet as diffusers' diffusion_pytorch_model.safetensors. LoRA: the UNet
  // with the adapters merged into `file`, and the adapters alone beside it (lora_weights_path).
  // Either way the UNet's config.json is written beside `file`, so a folder holding `file` named
  // diffusion_pytorch_model.safetensors opens with diffusers' UNet2DConditionModel.from_pretrained.
  void save_weights(const std::filesystem::path& file) const override;
  // Images <-> latents through the VAE (the posterior mean, times vae.scaling_factor).
  int64_t image_resolution() const override;
  at::Tensor encode_images(const at::Tensor& images) override;
  at::Tensor decode_samples(const at::Tensor& samples) const override;
  std::string encoder_fingerprint() const override;

  // Not part of the Backbone interface.
  // The adapters file written beside `weights_file`: <stem>_lora.safetensors, keys in the format
  // of option lora_format (lora_file.hpp).
  static std::filesystem::path lora_weights_path(const std::filesystem::path& weights_file);

  // For tests and tools.
  UNet2DConditionModel& unet() { return unet_; }
  UNet2DConditionModel& reference_unet() { return reference_; }  // null with LoRA
  AutoencoderKL& vae() { return vae_; }
  const std::vector<LoraLayer>& lora_layers() const { return lora_; }
  // The modules stored in frozen_dtype: text encoders, VAE, and the reference UNet when there is
  // one, or the base UNet under LoRA adapters.
  std::vector<torch::nn::Module*> frozen_modules();
  int64_t latent_size() const;  // resolution / VAE scale factor

 protected:
  // The text side, supplied by each plugin.
  //
  // Folder parts besides unet/, vae/ and scheduler/ that prepare() requires ("tokenizer", ...).
  virtual std::vector<std::string> text_parts() const = 0;
  // Loads tokenizers and text encoders from `folder`; throws dedpo::Error (fail()) when they do
  // not fit `unet` (e.g. hidden size against cross_attention_dim).
  virtual void load_text(const std::filesystem::path& folder, const UNet2DConditionConfig& unet) = 0;
  // Conditioning rows [P, ...] of `prompts`; called without gradient, in the compute dtype. The
  // text modules hold frozen_dtype weights, so rows may come back in it; the caller casts to float32.
  virtual at::Tensor encode_text(const std::vector<std::string>& prompts) = 0;
  // The unconditional row of classifier-free guidance, [1, ...]. Default: encode_prompts({""}).
  virtual at::Tensor unconditional_row();
  // Rows [N, ...] of encode_prompts() and per-sample side information (PairBatch::a_info,
  // undefined when there is none) -> the UNet's inputs.
  virtual UNetConditioning unet_conditioning(const at::Tensor& rows, const at::Tensor& info) const = 0;
  // The text encoders (their weights key encoder_fingerprint(); prepare() stores them in frozen_dtype).
  virtual std::vector<torch::nn::Module*> text_modules() = 0;
  // Options of the plugin that change encode_prompts(), as "key=value\n" lines (fingerprint).
  virtual std::string text_options_fingerprint() const = 0;
  // The module paths of the kohya LoRA format for this model family (lora_file.hpp).
  virtual KohyaNaming kohya_naming() const { return KohyaNaming::diffusers; }

  // safetensors::load_into (with the option check_weights), every failure one line naming the
  // component and file ("<name>: loading the <what> from <file>: ...").
  void load_component(torch::nn::Module& module, const std::filesystem::path& file, const std::string& what) const;
  [[noreturn]] void fail(const std::string& problem) const;  // dedpo::Error("<name>: problem")
  const std::string& name() const { return name_; }
  const std::filesystem::path& path() const { return path_; }
  int64_t resolution() const { return resolution_; }
  bool bfloat16() const { return bfloat16_; }
  // Where the text encoders live and run (encode_text() puts token ids there).
  c10::Device text_device() const { return text_on_host_ ? c10::Device(c10::kCPU) : device_; }

 private:
  void require_prepared(const char* what) const;
  c10::Device vae_device() const { return vae_on_host_ ? c10::Device(c10::kCPU) : device_; }
  // UNet output in float32 for the trainable model (adapters on) or the reference.
  at::Tensor run_unet(const at::Tensor& x, const at::Tensor& t, const UNetConditioning& conditioning,
                      bool reference);
  at::Tensor target(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) const;
  void setup_lora(std::uint64_t seed);
  std::string compute_encoder_fingerprint();

  std::string name_;
  // Options.
  std::filesystem::path path_;
  std::filesystem::path vae_path_;  // empty = path_/vae
  std::optional<PredictionType> prediction_type_;  // none: the scheduler config's
  bool bfloat16_;                   // compute dtype: bfloat16 autocast, else float32
  at::ScalarType frozen_dtype_;     // kFloat | kBFloat16
  int64_t lora_rank_;
  double lora_alpha_;
  std::vector<std::string> lora_targets_;
  LoraFormat lora_format_;
  std::filesystem::path lora_init_;  // empty: adapters start with B = 0
  bool gradient_checkpointing_;
  safetensors::FiniteCheck weights_check_;
  bool reference_on_cpu_;
  bool text_on_host_;
  bool vae_on_host_;
  c10::Device device_ = c10::kCPU;  // the run's: the trainable UNet's
  enum class SamplerKind { ddim, euler };
  SamplerKind sampler_;
  int64_t sample_steps_;
  double guidance_scale_;
  int64_t resolution_;

  bool prepared_ = false;
  std::string unet_config_text_;  // unet/config.json as read, written beside saved weights
  UNet2DConditionModel unet_{nullptr};
  UNet2DConditionModel reference_{nullptr};  // full fine-tuning only
  AutoencoderKL vae_{nullptr};
  std::optional<SchedulerConfig> scheduler_config_;
  std::optional<NoiseSchedule> schedule_;
  std::shared_ptr<torch::nn::Module> lora_root_;  // model() with LoRA
  std::vector<LoraLayer> lora_;
  LoraAdapters lora_adapters_;  // lora_ by layer, applied beside the base weights
  std::map<std::string, at::Tensor> prompt_cache_;  // prompt -> one row
  std::string encoder_fingerprint_;
};

// Helpers for the plugins' text side.
//
// The weights file of a component folder: `<base>.safetensors`, else a variant
// (`<base>.fp16.safetensors`, ...), else the only *.safetensors of the folder.
std::filesystem::path component_weights_file(const std::filesystem::path& folder, const std::string& base,
                                             const std::string& who);
// No gradients, eval mode.
void freeze(torch::nn::Module& module);
// Converts the floating-point parameters and buffers of `module` to `dtype` in place.
void store_in(torch::nn::Module& module, at::ScalarType dtype);
// A boolean of `folder`/model_index.json (the pipeline's own config, e.g. SDXL's
// force_zeros_for_empty_prompt); `fallback` when the key is absent or null.
bool pipeline_flag(const std::filesystem::path& folder, const std::string& key, bool fallback);

}  // namespace dedpo::sd
