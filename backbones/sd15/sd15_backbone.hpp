#pragma once
// The `sd15` backbone: Stable Diffusion 1.x / 2.x from a diffusers folder (model_index.json,
// unet/, vae/, text_encoder/, tokenizer/, scheduler/), trained in full or through LoRA adapters
// (dedpo::sd::DiffusionBackbone holds everything but the text side).
//
// Conditioning: CLIP text-encoder hidden states, [N, 77, C] (clip_skip as diffusers does it).
#include <optional>
#include <string>
#include <vector>

#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/diffusion_backbone.hpp"
#include "dedpo/sd/tokenizer.hpp"

namespace dedpo::sd15 {

class Sd15Backbone : public sd::DiffusionBackbone {
 public:
  explicit Sd15Backbone(const Options& options);

 protected:
  std::vector<std::string> text_parts() const override;
  void load_text(const std::filesystem::path& folder, const sd::UNet2DConditionConfig& unet) override;
  at::Tensor encode_text(const std::vector<std::string>& prompts) override;
  sd::UNetConditioning unet_conditioning(const at::Tensor& rows, const at::Tensor& info) const override;
  std::vector<torch::nn::Module*> text_modules() override;
  std::string text_options_fingerprint() const override;

 private:
  int64_t clip_skip_;
  sd::ClipTextModel text_encoder_{nullptr};
  std::optional<sd::ClipTokenizer> tokenizer_;
};

}  // namespace dedpo::sd15
