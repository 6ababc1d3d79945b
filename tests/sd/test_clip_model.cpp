#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip_model.hpp"
#include "golden.hpp"

namespace {

using namespace dedpo::sd;

std::vector<std::string> sorted_parameter_names(torch::nn::Module& module) {
  std::vector<std::string> names;
  for (const auto& p : module.named_parameters()) names.push_back(p.key());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<std::string> sorted_keys(const std::filesystem::path& file) {
  std::vector<std::string> keys = dedpo::safetensors::File(file).keys();
  std::sort(keys.begin(), keys.end());
  return keys;
}

TEST(ClipVision, MatchesTransformersClipVisionModelWithProjection) {
  DEDPO_GOLDEN_CASE(dir, "clip_vision_proj");
  ClipVisionModelWithProjection model(ClipVisionConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*model, dir / "weights.safetensors");
  model->eval();
  model->to(dedpo::test::test_device());
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  at::NoGradGuard no_grad;
  auto r = model->forward(in.at("pixel_values"));
  EXPECT_TENSOR_NEAR("image_embeds", r.image_embeds, out.at("image_embeds"));
  EXPECT_TENSOR_NEAR("last_hidden_state", r.last_hidden_state, out.at("last_hidden_state"));
  EXPECT_TENSOR_NEAR("hidden_states", at::stack(r.hidden_states), out.at("hidden_states"));
}

TEST(ClipVision, ParameterNamesAreTheCheckpointKeys) {
  DEDPO_GOLDEN_CASE(dir, "clip_vision_proj");
  ClipVisionModelWithProjection model(ClipVisionConfig::from_file(dir / "config.json"));
  EXPECT_EQ(sorted_parameter_names(*model), sorted_keys(dir / "weights.safetensors"));
}

TEST(ClipVision, RejectsAnImageOfAnotherSize) {
  DEDPO_GOLDEN_CASE(dir, "clip_vision_proj");
  ClipVisionModelWithProjection model(ClipVisionConfig::from_file(dir / "config.json"));
  at::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(at::zeros({1, 3, 40, 40})), c10::Error);
}

TEST(ClipModel, MatchesTransformersClipModel) {
  DEDPO_GOLDEN_CASE(dir, "clip_model");
  ClipModel model(ClipModelConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*model, dir / "weights.safetensors");
  model->eval();
  model->to(dedpo::test::test_device());
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  at::NoGradGuard no_grad;
  const at::Tensor ids = in.at("input_ids"), pixels = in.at("pixel_values");
  auto r = model->forward(ids, pixels, in.at("attention_mask"));
  EXPECT_TENSOR_NEAR("logits_per_image", r.logits_per_image, out.at("logits_per_image"));
  EXPECT_TENSOR_NEAR("logits_per_text", r.logits_per_text, out.at("logits_per_text"));
  EXPECT_TENSOR_NEAR("text_embeds", r.text_embeds, out.at("text_embeds"));
  EXPECT_TENSOR_NEAR("image_embeds", r.image_embeds, out.at("image_embeds"));
  EXPECT_TENSOR_NEAR("text_features", r.text_features, out.at("text_features"));
  EXPECT_TENSOR_NEAR("image_features", r.image_features, out.at("image_features"));
  EXPECT_TENSOR_NEAR("text_last_hidden_state", r.text_last_hidden_state, out.at("text_last_hidden_state"));
  auto unmasked = model->forward(ids, pixels);
  EXPECT_TENSOR_NEAR("logits_per_image_nomask", unmasked.logits_per_image, out.at("logits_per_image_nomask"));
  EXPECT_TENSOR_NEAR("text_last_hidden_state_nomask", unmasked.text_last_hidden_state,
                     out.at("text_last_hidden_state_nomask"));
  EXPECT_TENSOR_NEAR("text_features()", model->text_features(ids, in.at("attention_mask")), out.at("text_features"));
  EXPECT_TENSOR_NEAR("image_features()", model->image_features(pixels), out.at("image_features"));
}

TEST(ClipModel, ParameterNamesAreTheCheckpointKeys) {
  DEDPO_GOLDEN_CASE(dir, "clip_model");
  ClipModel model(ClipModelConfig::from_file(dir / "config.json"));
  EXPECT_EQ(sorted_parameter_names(*model), sorted_keys(dir / "weights.safetensors"));
}

TEST(ClipModel, ConfigWithoutTowersIsRejected) {
  EXPECT_THROW(ClipModelConfig::from_json(R"({"projection_dim": 16})"), dedpo::Error);
}

}  // namespace
