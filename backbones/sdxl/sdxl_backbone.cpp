// The `sdxl` backbone plugin (see sdxl_backbone.hpp).
#include "sdxl_backbone.hpp"

#include <ATen/ATen.h>

namespace dedpo::sdxl {
namespace fs = std::filesystem;

namespace {

const OptionSpec kOptions[] = {
    DEDPO_SD_BACKBONE_OPTIONS("\"euler\"", "5.0", "1024"),
    {"clip_skip", OptionType::integer, "0",
     "Text-encoder layers to skip, for both encoders: hidden_states[-(clip_skip + 2)] as diffusers' SDXL "
     "(0 = the penultimate layer)."},
    {"micro_conditioning", OptionType::string, "\"data\"",
     "time_ids: \"data\" = each image's original size and crop from the pair data, target = resolution "
     "(fixed form where the data has none); \"fixed\" = (R, R, 0, 0, R, R), R = resolution."},
};

std::string layers(int64_t n) { return std::to_string(n) + (n == 1 ? " layer" : " layers"); }

}  // namespace

SdxlBackbone::SdxlBackbone(const Options& options)
    : DiffusionBackbone("sdxl", options), clip_skip_(options.integer("clip_skip")), micro_from_data_(false) {
  if (clip_skip_ < 0) options.fail("clip_skip", "expected an integer >= 0");
  const std::string& micro = options.string("micro_conditioning");
  if (micro != "data" && micro != "fixed") options.fail("micro_conditioning", "expected \"data\" or \"fixed\"");
  micro_from_data_ = micro == "data";
}

std::vector<std::string> SdxlBackbone::text_parts() const {
  return {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"};
}

void SdxlBackbone::load_text(const fs::path& folder, const sd::UNet2DConditionConfig& unet) {
  const std::string unet_config = "'" + (folder / "unet" / "config.json").string() + "'";
  if (unet.addition_embed_type != "text_time") {
    fail(unet_config + " has no addition_embed_type \"text_time\" (an SD 1.x/2.x UNet?): use the sd15 backbone");
  }
  const fs::path config_1 = folder / "text_encoder" / "config.json";
  const fs::path config_2 = folder / "text_encoder_2" / "config.json";
  text_encoder_ = sd::ClipTextModel(sd::ClipTextConfig::from_file(config_1));
  const fs::path weights_1 = sd::component_weights_file(folder / "text_encoder", "model", name());
  load_component(sd::clip_text_weights_root(text_encoder_, weights_1), weights_1, "text encoder (text_encoder/)");
  sd::freeze(*text_encoder_);
  text_encoder_2_ = sd::ClipTextModelWithProjection(sd::ClipTextConfig::from_file(config_2));
  load_component(*text_encoder_2_, sd::component_weights_file(folder / "text_encoder_2", "model", name()),
                 "second text encoder (text_encoder_2/)");
  sd::freeze(*text_encoder_2_);
  tokenizer_.emplace(sd::ClipTokenizer::from_folder(folder / "tokenizer"));
  tokenizer_2_.emplace(sd::ClipTokenizer::from_folder(folder / "tokenizer_2"));

  const sd::ClipTextConfig& clip_1 = text_encoder_->text_model->config();
  const sd::ClipTextConfig& clip_2 = text_encoder_2_->text_model->config();
  for (const auto& [config, clip] : {std::pair{config_1, clip_1}, std::pair{config_2, clip_2}}) {
    if (clip_skip_ > clip.num_hidden_layers - 1) {
      fail("option 'clip_skip' = " + std::to_string(clip_skip_) + " needs hidden_states[-" +
           std::to_string(clip_skip_ + 2) + "], but '" + config.string() + "' has " + layers(clip.num_hidden_layers));
    }
  }
  sequence_length_ = tokenizer_->config().max_length;
  if (tokenizer_2_->config().max_length != sequence_length_) {
    fail("tokenizer/ has model_max_length " + std::to_string(sequence_length_) + " but tokenizer_2/ has " +
         std::to_string(tokenizer_2_->config().max_length) + "; their hidden states are concatenated per token");
  }
  for (const auto& [config, clip] : {std::pair{config_1, clip_1}, std::pair{config_2, clip_2}}) {
    if (clip.max_position_embeddings < sequence_length_) {
      fail("'" + config.string() + "' has max_position_embeddings " + std::to_string(clip.max_position_embeddings) +
           ", fewer than the tokenizers' " + std::to_string(sequence_length_) + " tokens");
    }
  }
  context_dim_ = clip_1.hidden_size + clip_2.hidden_size;
  for (const int64_t dim : unet.cross_attention_dim) {
    if (dim != context_dim_) {
      fail(unet_config + " has cross_attention_dim " + std::to_string(dim) + ", expected text_encoder hidden_size " +
           std::to_string(clip_1.hidden_size) + " + text_encoder_2 hidden_size " + std::to_string(clip_2.hidden_size) +
           " = " + std::to_string(context_dim_));
    }
  }
  pooled_dim_ = clip_2.projection_dim;
  const int64_t added = 6 * unet.addition_time_embed_dim + pooled_dim_;
  if (unet.projection_class_embeddings_input_dim != added) {
    fail(unet_config + " has projection_class_embeddings_input_dim " +
         std::to_string(unet.projection_class_embeddings_input_dim) + ", expected 6 time ids x addition_time_embed_dim " +
         std::to_string(unet.addition_time_embed_dim) + " + text_encoder_2 projection_dim " + std::to_string(pooled_dim_) +
         " = " + std::to_string(added));
  }
  row_width_ = std::max(context_dim_, pooled_dim_);
  zero_unconditional_ = sd::pipeline_flag(folder, "force_zeros_for_empty_prompt", true);
}

at::Tensor SdxlBackbone::encode_text(const std::vector<std::string>& prompts) {
  const sd::ClipTextOutput out_1 = text_encoder_->forward(tokenizer_->encode_batch(prompts).input_ids.to(text_device()));
  const sd::ClipTextOutput out_2 = text_encoder_2_->forward(tokenizer_2_->encode_batch(prompts).input_ids.to(text_device()));
  const auto penultimate = [&](const sd::ClipTextOutput& out) {
    return out.hidden_states.at(out.hidden_states.size() - 2 - static_cast<std::size_t>(clip_skip_));
  };
  const auto p = static_cast<int64_t>(prompts.size());
  at::Tensor rows = at::zeros({p, sequence_length_ + 1, row_width_}, at::kFloat);
  rows.slice(1, 0, sequence_length_).slice(2, 0, context_dim_).copy_(at::cat({penultimate(out_1), penultimate(out_2)}, -1));
  rows.select(1, sequence_length_).slice(1, 0, pooled_dim_).copy_(out_2.text_embeds);
  return rows;  // [P, S + 1, W]
}

at::Tensor SdxlBackbone::unconditional_row() {
  if (zero_unconditional_) return at::zeros({1, sequence_length_ + 1, row_width_}, at::kFloat);
  return encode_prompts({""});
}

sd::UNetConditioning SdxlBackbone::unet_conditioning(const at::Tensor& rows, const at::Tensor& info) const {
  if (rows.dim() != 3 || rows.size(1) != sequence_length_ + 1 || rows.size(2) != row_width_) {
    fail("conditioning rows must be [N, " + std::to_string(sequence_length_ + 1) + ", " + std::to_string(row_width_) +
         "] as encode_prompts() returns them; got " + std::string(c10::str(rows.sizes())));
  }
  const int64_t n = rows.size(0);
  const auto side = static_cast<float>(resolution());
  const auto options = at::TensorOptions().dtype(at::kFloat).device(rows.device());
  at::Tensor time_ids;
  if (micro_from_data_ && info.defined()) {
    if (info.dim() != 2 || info.size(0) != n || info.size(1) < 4) {
      fail("pair side information (a_info / b_info) must be [N, 4+]: original height, width, crop top, crop left; got " +
           std::string(c10::str(info.sizes())));
    }
    time_ids = at::cat({info.slice(1, 0, 4).to(options), at::full({n, 2}, side, options)}, 1);
  } else {
    time_ids = at::tensor({side, side, 0.f, 0.f, side, side}, options).expand({n, 6});
  }
  return {rows.slice(1, 0, sequence_length_).slice(2, 0, context_dim_),
          sd::UNetAddedCond{rows.select(1, sequence_length_).slice(1, 0, pooled_dim_), time_ids}};
}

std::vector<torch::nn::Module*> SdxlBackbone::text_modules() {
  return {text_encoder_.get(), text_encoder_2_.get()};
}

std::string SdxlBackbone::text_options_fingerprint() const { return "clip_skip=" + std::to_string(clip_skip_) + "\n"; }

}  // namespace dedpo::sdxl

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::sdxl::SdxlBackbone>(
    "sdxl", "1.0.0",
    "Stable Diffusion XL (base) from a diffusers folder: two text encoders, micro-conditioning; full "
    "fine-tuning or LoRA.",
    dedpo::sdxl::kOptions))
