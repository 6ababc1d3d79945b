#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip.hpp"
#include "golden.hpp"

namespace {

using namespace dedpo::sd;

TEST(ClipText, MatchesTransformersClipTextModel) {
  DEDPO_GOLDEN_CASE(dir, "clip_text");
  ClipTextModel model(ClipTextConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*model, dir / "weights.safetensors");
  model->eval();
  model->to(dedpo::test::test_device());
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  at::NoGradGuard no_grad;
  auto r = model->forward(in.at("input_ids"));
  EXPECT_TENSOR_NEAR("last_hidden_state", r.last_hidden_state, out.at("last_hidden_state"));
  EXPECT_TENSOR_NEAR("pooler_output", r.pooler_output, out.at("pooler_output"));
  EXPECT_TENSOR_NEAR("hidden_states", at::stack(r.hidden_states), out.at("hidden_states"));
}

TEST(ClipText, MatchesTransformersClipTextModelWithProjection) {
  DEDPO_GOLDEN_CASE(dir, "clip_text_proj");
  ClipTextModelWithProjection model(ClipTextConfig::from_file(dir / "config.json"));
  dedpo::safetensors::load_into(*model, dir / "weights.safetensors");
  model->eval();
  model->to(dedpo::test::test_device());
  auto in = dedpo::test::load_on_device(dir / "inputs.safetensors");
  auto out = dedpo::safetensors::load(dir / "outputs.safetensors");
  at::NoGradGuard no_grad;
  auto r = model->forward(in.at("input_ids"));
  EXPECT_TENSOR_NEAR("text_embeds", r.text_embeds, out.at("text_embeds"));
  EXPECT_TENSOR_NEAR("last_hidden_state", r.last_hidden_state, out.at("last_hidden_state"));
  EXPECT_TENSOR_NEAR("hidden_states", at::stack(r.hidden_states), out.at("hidden_states"));
}

TEST(ClipText, ParameterNamesAreTheCheckpointKeys) {
  DEDPO_GOLDEN_CASE(dir, "clip_text");
  ClipTextModel model(ClipTextConfig::from_file(dir / "config.json"));
  dedpo::safetensors::File file(dir / "weights.safetensors");
  std::vector<std::string> names;
  for (const auto& p : model->named_parameters()) names.push_back(p.key());
  std::vector<std::string> keys = file.keys();
  std::sort(names.begin(), names.end());
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(names, keys);
}

}  // namespace
