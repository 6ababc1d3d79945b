#include "dedpo/scorers/open_clip_keys.hpp"

#include <ATen/ATen.h>

#include <cctype>
#include <optional>
#include <string_view>

namespace dedpo::scorers {

namespace {

using enum KeyTransform;

// OpenCLIP's residual block -> transformers' encoder layer, for both towers.
#define DEDPO_OPEN_CLIP_BLOCK(from, to)                                                         \
  {from ".ln_1.weight", to ".layer_norm1.weight", copy},                                          \
  {from ".ln_1.bias", to ".layer_norm1.bias", copy},                                              \
  {from ".attn.in_proj_weight", to ".self_attn.{qkv}.weight", split_qkv},                         \
  {from ".attn.in_proj_bias", to ".self_attn.{qkv}.bias", split_qkv},                             \
  {from ".attn.out_proj.weight", to ".self_attn.out_proj.weight", copy},                          \
  {from ".attn.out_proj.bias", to ".self_attn.out_proj.bias", copy},                              \
  {from ".ln_2.weight", to ".layer_norm2.weight", copy},                                          \
  {from ".ln_2.bias", to ".layer_norm2.bias", copy},                                              \
  {from ".mlp.c_fc.weight", to ".mlp.fc1.weight", copy},                                          \
  {from ".mlp.c_fc.bias", to ".mlp.fc1.bias", copy},                                              \
  {from ".mlp.c_proj.weight", to ".mlp.fc2.weight", copy},                                        \
  {from ".mlp.c_proj.bias", to ".mlp.fc2.bias", copy}

const std::vector<KeyRule> kRules = {
    {"token_embedding.weight", "text_model.embeddings.token_embedding.weight", copy},
    {"positional_embedding", "text_model.embeddings.position_embedding.weight", copy},
    DEDPO_OPEN_CLIP_BLOCK("transformer.resblocks.{n}", "text_model.encoder.layers.{n}"),
    {"ln_final.weight", "text_model.final_layer_norm.weight", copy},
    {"ln_final.bias", "text_model.final_layer_norm.bias", copy},
    {"text_projection", "text_projection.weight", transpose},
    {"logit_scale", "logit_scale", copy},
    {"visual.class_embedding", "vision_model.embeddings.class_embedding", copy},
    {"visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", copy},
    {"visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", copy},
    {"visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", copy},
    {"visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", copy},
    DEDPO_OPEN_CLIP_BLOCK("visual.transformer.resblocks.{n}", "vision_model.encoder.layers.{n}"),
    {"visual.ln_post.weight", "vision_model.post_layernorm.weight", copy},
    {"visual.ln_post.bias", "vision_model.post_layernorm.bias", copy},
    {"visual.proj", "visual_projection.weight", transpose},
};

#undef DEDPO_OPEN_CLIP_BLOCK

// The layer index when `key` matches `pattern` ("" when the pattern has no "{n}").
std::optional<std::string> match(std::string_view pattern, std::string_view key) {
  const auto slot = pattern.find("{n}");
  if (slot == std::string_view::npos) return pattern == key ? std::optional<std::string>("") : std::nullopt;
  const std::string_view prefix = pattern.substr(0, slot), suffix = pattern.substr(slot + 3);
  if (key.size() <= prefix.size() + suffix.size() || !key.starts_with(prefix) || !key.ends_with(suffix)) {
    return std::nullopt;
  }
  const std::string_view index = key.substr(prefix.size(), key.size() - prefix.size() - suffix.size());
  for (char c : index) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  return std::string(index);
}

std::string substitute(std::string text, const std::string& placeholder, const std::string& value) {
  const auto at = text.find(placeholder);
  if (at != std::string::npos) text.replace(at, placeholder.size(), value);
  return text;
}

}  // namespace

const std::vector<KeyRule>& open_clip_key_rules() { return kRules; }

bool is_open_clip_layout(const std::map<std::string, at::Tensor>& tensors) {
  return tensors.count("visual.conv1.weight") != 0;
}

std::map<std::string, at::Tensor> open_clip_to_transformers(const std::map<std::string, at::Tensor>& tensors,
                                                           std::vector<std::string>& unmatched) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, tensor] : tensors) {
    if (key == "attn_mask" || key.ends_with(".attn_mask")) continue;
    bool matched = false;
    for (const KeyRule& rule : kRules) {
      const std::optional<std::string> index = match(rule.open_clip, key);
      if (!index) continue;
      const std::string name = substitute(rule.transformers, "{n}", *index);
      switch (rule.transform) {
        case copy:
          out[name] = tensor;
          break;
        case transpose:
          out[name] = tensor.t().contiguous();
          break;
        case split_qkv: {
          const std::vector<at::Tensor> parts = tensor.chunk(3, 0);
          const char* names[] = {"q_proj", "k_proj", "v_proj"};
          for (std::size_t i = 0; i < parts.size() && i < 3; ++i) {
            out[substitute(name, "{qkv}", names[i])] = parts[i].contiguous();
          }
          break;
        }
      }
      matched = true;
      break;
    }
    if (!matched) unmatched.push_back(key);
  }
  return out;
}

}  // namespace dedpo::scorers
