// The `sd15` backbone plugin (see sd15_backbone.hpp).
#include "sd15_backbone.hpp"

#include <ATen/ATen.h>

namespace dedpo::sd15 {
namespace fs = std::filesystem;

namespace {

const OptionSpec kOptions[] = {
    DEDPO_SD_BACKBONE_OPTIONS("\"ddim\"", "7.5", "512"),
    {"clip_skip", OptionType::integer, "0",
     "Text-encoder layers to skip from the end (diffusers' clip_skip; 0 = last hidden state)."},
};

}  // namespace

Sd15Backbone::Sd15Backbone(const Options& options)
    : DiffusionBackbone("sd15", options), clip_skip_(options.integer("clip_skip")) {
  if (clip_skip_ < 0) options.fail("clip_skip", "expected an integer >= 0");
}

std::vector<std::string> Sd15Backbone::text_parts() const { return {"text_encoder", "tokenizer"}; }

void Sd15Backbone::load_text(const fs::path& folder, const sd::UNet2DConditionConfig& unet) {
  if (unet.addition_embed_type == "text_time") {
    fail("'" + (folder / "unet" / "config.json").string() +
         "' is an SDXL UNet (addition_embed_type \"text_time\"): use the sdxl backbone");
  }
  const fs::path config = folder / "text_encoder" / "config.json";
  text_encoder_ = sd::ClipTextModel(sd::ClipTextConfig::from_file(config));
  const fs::path weights = sd::component_weights_file(folder / "text_encoder", "model", name());
  load_component(sd::clip_text_weights_root(text_encoder_, weights), weights, "text encoder");
  sd::freeze(*text_encoder_);
  const sd::ClipTextConfig& clip = text_encoder_->text_model->config();
  if (clip_skip_ >= clip.num_hidden_layers) {
    fail("option 'clip_skip' = " + std::to_string(clip_skip_) + " but the text encoder has " +
         std::to_string(clip.num_hidden_layers) + " layers");
  }
  for (const int64_t dim : unet.cross_attention_dim) {
    if (dim != clip.hidden_size) {
      fail("'" + config.string() + "' hidden_size = " + std::to_string(clip.hidden_size) +
           " but the UNet's cross_attention_dim is " + std::to_string(dim));
    }
  }
  tokenizer_.emplace(sd::ClipTokenizer::from_folder(folder / "tokenizer"));
}

at::Tensor Sd15Backbone::encode_text(const std::vector<std::string>& prompts) {
  const sd::TokenizerBatch tokens = tokenizer_->encode_batch(prompts);
  const sd::ClipTextOutput out = text_encoder_->forward(tokens.input_ids.to(text_device()));
  if (clip_skip_ == 0) return out.last_hidden_state;  // [P, S, C]
  // diffusers: hidden_states[-(clip_skip + 1)] through the final layer norm.
  const at::Tensor& h = out.hidden_states.at(out.hidden_states.size() - 1 - clip_skip_);
  return text_encoder_->text_model->final_layer_norm(h);
}

sd::UNetConditioning Sd15Backbone::unet_conditioning(const at::Tensor& rows, const at::Tensor& /*info*/) const {
  return {rows, std::nullopt};
}

std::vector<torch::nn::Module*> Sd15Backbone::text_modules() { return {text_encoder_.get()}; }

std::string Sd15Backbone::text_options_fingerprint() const { return "clip_skip=" + std::to_string(clip_skip_) + "\n"; }

}  // namespace dedpo::sd15

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::sd15::Sd15Backbone>(
    "sd15", "1.0.0",
    "Stable Diffusion 1.x/2.x from a diffusers folder; full fine-tuning or LoRA.",
    dedpo::sd15::kOptions))
