#pragma once
// CLIP's vision tower and the two-tower CLIPModel with transformers' parameter names
// (vision_model.embeddings.patch_embedding, vision_model.pre_layrnorm (sic),
// vision_model.encoder.layers.N..., vision_model.post_layernorm, visual_projection,
// text_projection, logit_scale): CLIPVisionModelWithProjection and CLIPModel, the image scorers'
// architecture (PickScore, HPSv2, CLIP score, the aesthetic predictor's image embedding).
//
//   auto config = dedpo::sd::ClipModelConfig::from_file("clip/config.json");
//   dedpo::sd::ClipModel clip(config);
//   dedpo::safetensors::load_into(*clip, "clip/model.safetensors");
//   at::Tensor image = clip->image_features(pixel_values);   // [B, projection_dim]
//
// pixel_values are already preprocessed (resized, cropped, normalised with CLIP's mean / std).
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "dedpo/sd/clip.hpp"

namespace dedpo::sd {

// The fields of transformers' CLIPVisionConfig that the forward pass uses.
struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  std::string hidden_act = "quick_gelu";  // "quick_gelu" | "gelu"
  double layer_norm_eps = 1e-5;
  int64_t projection_dim = 512;

  // From a CLIPVisionConfig JSON, or a CLIPConfig JSON (its "vision_config"; projection_dim from
  // the top level).
  static ClipVisionConfig from_json(const std::string& text, const std::string& origin = "<string>");
  static ClipVisionConfig from_file(const std::filesystem::path& path);
  // A lower bound of the parameter count, from the sizes alone (from_json refuses a config whose
  // model cannot fit in memory).
  double parameter_lower_bound() const;

  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  // The encoder layers are the text tower's (same attention, MLP and norms): its config with
  // this tower's sizes.
  ClipTextConfig encoder_config() const;
};

struct ClipVisionOutput {
  at::Tensor last_hidden_state;           // [B, 1 + patches, hidden], before post_layernorm
  at::Tensor pooler_output;               // [B, hidden]: post_layernorm of the class token
  std::vector<at::Tensor> hidden_states;  // num_hidden_layers + 1 (0 = pre_layrnorm(embeddings))
  at::Tensor image_embeds;                // [B, projection_dim]; only WithProjection
};

class ClipVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipVisionEmbeddingsImpl(const ClipVisionConfig& config);
  at::Tensor forward(const at::Tensor& pixel_values);  // [B, C, H, W] -> [B, 1 + patches, hidden]

  at::Tensor class_embedding;                    // [hidden]
  torch::nn::Conv2d patch_embedding{nullptr};    // no bias
  torch::nn::Embedding position_embedding{nullptr};
};
TORCH_MODULE(ClipVisionEmbeddings);

// transformers' CLIPVisionTransformer (the `vision_model` of both models).
class ClipVisionTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipVisionTransformerImpl(ClipVisionConfig config);
  ClipVisionOutput forward(const at::Tensor& pixel_values);
  const ClipVisionConfig& config() const { return config_; }

  ClipVisionEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};

 private:
  ClipVisionConfig config_;
};
TORCH_MODULE(ClipVisionTransformer);

class ClipVisionModelWithProjectionImpl : public torch::nn::Module {
 public:
  explicit ClipVisionModelWithProjectionImpl(const ClipVisionConfig& config);
  // The vision transformer's outputs plus image_embeds = visual_projection(pooler_output).
  ClipVisionOutput forward(const at::Tensor& pixel_values);

  ClipVisionTransformer vision_model{nullptr};
  torch::nn::Linear visual_projection{nullptr};  // [projection_dim, hidden], no bias
};
TORCH_MODULE(ClipVisionModelWithProjection);

// transformers' CLIPConfig: both towers and the shared embedding size.
struct ClipModelConfig {
  ClipTextConfig text;
  ClipVisionConfig vision;
  int64_t projection_dim = 512;
  double logit_scale_init_value = 2.6592;  // log(1 / 0.07)

  static ClipModelConfig from_json(const std::string& text, const std::string& origin = "<string>");
  static ClipModelConfig from_file(const std::filesystem::path& path);
};

struct ClipModelOutput {
  at::Tensor logits_per_image;        // [images, texts] = exp(logit_scale) * image_embeds @ text_embeds.T
  at::Tensor logits_per_text;         // [texts, images]
  at::Tensor text_embeds;             // [texts, projection_dim], L2-normalised
  at::Tensor image_embeds;            // [images, projection_dim], L2-normalised
  at::Tensor text_features;           // unnormalised projections
  at::Tensor image_features;
  at::Tensor text_last_hidden_state;  // [texts, S, hidden]
};

class ClipModelImpl : public torch::nn::Module {
 public:
  explicit ClipModelImpl(const ClipModelConfig& config);
  // get_text_features / get_image_features: the unnormalised projections.
  at::Tensor text_features(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt);
  at::Tensor image_features(const at::Tensor& pixel_values);
  ClipModelOutput forward(const at::Tensor& input_ids, const at::Tensor& pixel_values,
                          const std::optional<at::Tensor>& attention_mask = std::nullopt);
  const ClipModelConfig& config() const { return config_; }

  at::Tensor logit_scale;  // scalar, the log of the logits' scale
  ClipTextTransformer text_model{nullptr};
  ClipVisionTransformer vision_model{nullptr};
  torch::nn::Linear visual_projection{nullptr};  // no bias
  torch::nn::Linear text_projection{nullptr};    // no bias

 private:
  ClipModelConfig config_;
};
TORCH_MODULE(ClipModel);

}  // namespace dedpo::sd
