#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip.hpp"
#include "golden.hpp"
#include "test_support.hpp"

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

// transformers 5's CLIPTextModel.save_pretrained leaves out the "text_model." prefix of
// transformers 4: both files load, each into the module whose names it has.
TEST(ClipText, WeightsWithAndWithoutTheTextModelPrefixLoad) {
  ClipTextConfig config;
  config.vocab_size = 40, config.hidden_size = 8, config.intermediate_size = 16, config.num_hidden_layers = 1;
  config.num_attention_heads = 2, config.max_position_embeddings = 6;
  ClipTextModel saved(config);
  const dedpo::test::TempDir dir;
  std::vector<std::pair<std::string, at::Tensor>> prefixed, bare;
  for (const auto& p : saved->named_parameters()) prefixed.emplace_back(p.key(), p.value().detach());
  for (const auto& p : saved->text_model->named_parameters()) bare.emplace_back(p.key(), p.value().detach());
  dedpo::safetensors::save(dir / "v4.safetensors", prefixed);
  dedpo::safetensors::save(dir / "v5.safetensors", bare);
  const at::Tensor ids = at::randint(0, 40, {2, 6});
  at::NoGradGuard no_grad;
  const at::Tensor expected = saved->forward(ids).last_hidden_state;
  for (const char* name : {"v4.safetensors", "v5.safetensors"}) {
    ClipTextModel loaded(config);
    EXPECT_EQ(&clip_text_weights_root(loaded, dir / name) == loaded.ptr().get(), std::string(name) == "v4.safetensors");
    dedpo::safetensors::load_into(clip_text_weights_root(loaded, dir / name), dir / name);
    EXPECT_TRUE(at::equal(loaded->forward(ids).last_hidden_state, expected)) << name;
  }
}

}  // namespace
