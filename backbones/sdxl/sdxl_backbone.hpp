#pragma once
// The `sdxl` backbone: Stable Diffusion XL (base) from a diffusers StableDiffusionXLPipeline folder
// (model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/,
// scheduler/). Everything but the text side is dedpo::sd::DiffusionBackbone's.
//
// Text conditioning as diffusers' StableDiffusionXLPipeline.encode_prompt: both text encoders
// (CLIPTextModel, CLIPTextModelWithProjection) read the prompt through their own tokenizer (the
// second pads with its own pad token), the hidden states hidden_states[-(clip_skip + 2)] of both
// (the penultimate layer, no final layer norm) are concatenated on the channel axis, and the
// second encoder's projected pooled output is the UNet's text_embeds.
//
// One conditioning row per prompt, [S + 1, W] with S = 77 tokens and W = max(cross_attention_dim,
// pooled dim): rows 0..S-1 hold the concatenated hidden states in columns 0..cross_attention_dim-1,
// row S holds text_embeds in columns 0..pooled dim-1; everything else is zero.
//
// Micro-conditioning time_ids = (original height, original width, crop top, crop left, target
// height, target width). With micro_conditioning = "data" the first four come per image from the
// pair data (PairBatch::a_info / b_info, recorded when the images were preprocessed) and the target
// is (resolution, resolution); without side information, with "fixed", and in sample() and
// denoising_loss() they are (R, R, 0, 0, R, R), R = resolution, diffusers' default.
//
// Classifier-free guidance: the unconditional row is all zeros when model_index.json says
// force_zeros_for_empty_prompt (diffusers' default for SDXL), else the encoding of "".
#include <optional>
#include <string>
#include <vector>

#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/diffusion_backbone.hpp"
#include "dedpo/sd/tokenizer.hpp"

namespace dedpo::sdxl {

class SdxlBackbone : public sd::DiffusionBackbone {
 public:
  explicit SdxlBackbone(const Options& options);

  // The layout of a conditioning row (valid after prepare()).
  int64_t sequence_length() const { return sequence_length_; }  // S
  int64_t context_dim() const { return context_dim_; }          // text_encoder + text_encoder_2 hidden sizes
  int64_t pooled_dim() const { return pooled_dim_; }            // text_encoder_2 projection_dim

 protected:
  std::vector<std::string> text_parts() const override;
  void load_text(const std::filesystem::path& folder, const sd::UNet2DConditionConfig& unet) override;
  at::Tensor encode_text(const std::vector<std::string>& prompts) override;
  at::Tensor unconditional_row() override;
  sd::UNetConditioning unet_conditioning(const at::Tensor& rows, const at::Tensor& info) const override;
  std::vector<torch::nn::Module*> text_modules() override;
  std::string text_options_fingerprint() const override;
  // kohya-ss trains SDXL on the original (SGM) UNet, so its LoRA keys spell input_blocks / middle_block / output_blocks.
  sd::KohyaNaming kohya_naming() const override { return sd::KohyaNaming::sgm; }

 private:
  int64_t clip_skip_;
  bool micro_from_data_;
  bool zero_unconditional_ = true;
  sd::ClipTextModel text_encoder_{nullptr};
  sd::ClipTextModelWithProjection text_encoder_2_{nullptr};
  std::optional<sd::ClipTokenizer> tokenizer_, tokenizer_2_;
  int64_t sequence_length_ = 0, context_dim_ = 0, pooled_dim_ = 0, row_width_ = 0;
};

}  // namespace dedpo::sdxl
