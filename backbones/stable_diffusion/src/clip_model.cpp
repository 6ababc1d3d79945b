#include "dedpo/sd/clip_model.hpp"

#include <ATen/ATen.h>

#include "json_config.hpp"

namespace dedpo::sd {

ClipVisionConfig ClipVisionConfig::from_json(const std::string& text, const std::string& origin) {
  const detail::Config top = detail::Config::parse(text, origin);
  const nlohmann::json json = nlohmann::json::parse(text);
  const detail::Config cfg = json.contains("vision_config") && json["vision_config"].is_object()
                                 ? detail::Config(json["vision_config"], origin + " vision_config")
                                 : top;
  ClipVisionConfig c;
  c.hidden_size = cfg.get<int64_t>("hidden_size", c.hidden_size);
  c.intermediate_size = cfg.get<int64_t>("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = cfg.get<int64_t>("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = cfg.get<int64_t>("num_attention_heads", c.num_attention_heads);
  c.num_channels = cfg.get<int64_t>("num_channels", c.num_channels);
  c.image_size = cfg.get<int64_t>("image_size", c.image_size);
  c.patch_size = cfg.get<int64_t>("patch_size", c.patch_size);
  c.hidden_act = cfg.get<std::string>("hidden_act", c.hidden_act);
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu") {
    cfg.fail("hidden_act", "'" + c.hidden_act + "' is not supported (quick_gelu, gelu)");
  }
  c.layer_norm_eps = cfg.get<double>("layer_norm_eps", c.layer_norm_eps);
  c.projection_dim = top.get<int64_t>("projection_dim", cfg.get<int64_t>("projection_dim", c.projection_dim));
  if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
    cfg.fail("num_attention_heads", "must divide hidden_size");
  }
  if (c.patch_size <= 0 || c.image_size % c.patch_size != 0) cfg.fail("patch_size", "must divide image_size");
  detail::check_model_fits(cfg, "CLIP vision encoder", c.parameter_lower_bound());
  return c;
}

double ClipVisionConfig::parameter_lower_bound() const {
  // Patch embedding and positions; per layer the attention projections (4h²) and the MLP (2·h·i).
  const double h = static_cast<double>(hidden_size);
  const double p = static_cast<double>(patch_size);
  const double patches = (static_cast<double>(image_size) / p) * (static_cast<double>(image_size) / p);
  return (static_cast<double>(num_channels) * p * p + patches + 1) * h +
         static_cast<double>(num_hidden_layers) * (4 * h * h + 2 * h * static_cast<double>(intermediate_size));
}

ClipVisionConfig ClipVisionConfig::from_file(const std::filesystem::path& path) {
  return from_json(detail::Config::read_text(path), "'" + path.string() + "'");
}

ClipTextConfig ClipVisionConfig::encoder_config() const {
  ClipTextConfig c;
  c.hidden_size = hidden_size;
  c.intermediate_size = intermediate_size;
  c.num_hidden_layers = num_hidden_layers;
  c.num_attention_heads = num_attention_heads;
  c.hidden_act = hidden_act;
  c.layer_norm_eps = layer_norm_eps;
  c.projection_dim = projection_dim;
  return c;
}

ClipVisionEmbeddingsImpl::ClipVisionEmbeddingsImpl(const ClipVisionConfig& c) {
  class_embedding = register_parameter("class_embedding", at::randn({c.hidden_size}));
  patch_embedding = register_module(
      "patch_embedding",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(c.num_channels, c.hidden_size, c.patch_size).stride(c.patch_size).bias(false)));
  position_embedding = register_module("position_embedding", torch::nn::Embedding(c.num_patches() + 1, c.hidden_size));
}

at::Tensor ClipVisionEmbeddingsImpl::forward(const at::Tensor& pixel_values) {
  const at::Tensor weight = patch_embedding->weight;
  const at::Tensor patches = patch_embedding->forward(pixel_values.to(weight.scalar_type()));  // [B, C, h, w]
  const int64_t b = patches.size(0), c = patches.size(1);
  const int64_t tokens = patches.size(2) * patches.size(3) + 1;
  TORCH_CHECK(tokens == position_embedding->weight.size(0), "CLIP vision model: ", tokens - 1,
              " patches, but the position embedding has ", position_embedding->weight.size(0) - 1,
              " (image size must be the config's image_size)");
  const at::Tensor cls = class_embedding.view({1, 1, c}).expand({b, 1, c});
  const at::Tensor h = at::cat({cls, patches.flatten(2).transpose(1, 2)}, 1);  // [B, 1 + patches, C]
  return h + position_embedding->weight.unsqueeze(0);
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(ClipVisionConfig config) : config_(std::move(config)) {
  const auto norm = torch::nn::LayerNormOptions({config_.hidden_size}).eps(config_.layer_norm_eps);
  embeddings = register_module("embeddings", ClipVisionEmbeddings(config_));
  pre_layrnorm = register_module("pre_layrnorm", torch::nn::LayerNorm(norm));
  encoder = register_module("encoder", ClipEncoder(config_.encoder_config()));
  post_layernorm = register_module("post_layernorm", torch::nn::LayerNorm(norm));
}

ClipVisionOutput ClipVisionTransformerImpl::forward(const at::Tensor& pixel_values) {
  TORCH_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == config_.num_channels,
              "CLIP vision model: pixel_values must be [B, ", config_.num_channels, ", H, W], got ",
              pixel_values.sizes());
  ClipVisionOutput out;
  at::Tensor h = pre_layrnorm->forward(embeddings->forward(pixel_values));
  out.hidden_states.push_back(h);
  for (auto& layer : encoder->layers) {
    h = layer->forward(h, at::Tensor());  // no mask: every patch sees every patch
    out.hidden_states.push_back(h);
  }
  out.last_hidden_state = h;
  out.pooler_output = post_layernorm->forward(h.select(1, 0));
  return out;
}

ClipVisionModelWithProjectionImpl::ClipVisionModelWithProjectionImpl(const ClipVisionConfig& config) {
  vision_model = register_module("vision_model", ClipVisionTransformer(config));
  visual_projection = register_module(
      "visual_projection", torch::nn::Linear(torch::nn::LinearOptions(config.hidden_size, config.projection_dim).bias(false)));
}

ClipVisionOutput ClipVisionModelWithProjectionImpl::forward(const at::Tensor& pixel_values) {
  ClipVisionOutput out = vision_model->forward(pixel_values);
  out.image_embeds = visual_projection->forward(out.pooler_output);
  return out;
}

ClipModelConfig ClipModelConfig::from_json(const std::string& text, const std::string& origin) {
  const detail::Config top = detail::Config::parse(text, origin);
  if (!top.has("text_config") || !top.has("vision_config")) {
    throw Error("config " + origin + ": not a CLIPConfig (needs text_config and vision_config)");
  }
  ClipModelConfig c;
  c.text = ClipTextConfig::from_json(text, origin);
  c.vision = ClipVisionConfig::from_json(text, origin);
  c.projection_dim = top.get<int64_t>("projection_dim", c.projection_dim);
  c.text.projection_dim = c.vision.projection_dim = c.projection_dim;
  c.logit_scale_init_value = top.get<double>("logit_scale_init_value", c.logit_scale_init_value);
  return c;
}

ClipModelConfig ClipModelConfig::from_file(const std::filesystem::path& path) {
  return from_json(detail::Config::read_text(path), "'" + path.string() + "'");
}

ClipModelImpl::ClipModelImpl(const ClipModelConfig& config) : config_(config) {
  logit_scale = register_parameter("logit_scale", at::full({}, config.logit_scale_init_value));
  text_model = register_module("text_model", ClipTextTransformer(config.text));
  vision_model = register_module("vision_model", ClipVisionTransformer(config.vision));
  visual_projection = register_module(
      "visual_projection",
      torch::nn::Linear(torch::nn::LinearOptions(config.vision.hidden_size, config.projection_dim).bias(false)));
  text_projection = register_module(
      "text_projection",
      torch::nn::Linear(torch::nn::LinearOptions(config.text.hidden_size, config.projection_dim).bias(false)));
}

at::Tensor ClipModelImpl::text_features(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask) {
  return text_projection->forward(text_model->forward(input_ids, attention_mask).pooler_output);
}

at::Tensor ClipModelImpl::image_features(const at::Tensor& pixel_values) {
  return visual_projection->forward(vision_model->forward(pixel_values).pooler_output);
}

ClipModelOutput ClipModelImpl::forward(const at::Tensor& input_ids, const at::Tensor& pixel_values,
                                       const std::optional<at::Tensor>& attention_mask) {
  ClipModelOutput out;
  const ClipTextOutput text = text_model->forward(input_ids, attention_mask);
  out.text_last_hidden_state = text.last_hidden_state;
  out.text_features = text_projection->forward(text.pooler_output);
  out.image_features = image_features(pixel_values);
  out.text_embeds = out.text_features / out.text_features.norm(2, {-1}, /*keepdim=*/true);
  out.image_embeds = out.image_features / out.image_features.norm(2, {-1}, /*keepdim=*/true);
  out.logits_per_text = at::matmul(out.text_embeds, out.image_embeds.t()) * logit_scale.exp();
  out.logits_per_image = out.logits_per_text.t();
  return out;
}

}  // namespace dedpo::sd
