// The CLIP and aesthetic scorers on a tiny random-weight folder, the OpenCLIP key map, prompt files.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/scorers/clip_scorer.hpp"
#include "dedpo/scorers/open_clip_keys.hpp"
#include "dedpo/scorers/prompts.hpp"
#include "dedpo/scorers/tiny.hpp"
#include "test_support.hpp"

namespace {

using namespace dedpo::scorers;
namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const dedpo::Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::vector<at::Tensor> some_images() {
  at::manual_seed(3);
  return {at::randint(0, 256, {32, 32, 3}, at::kByte), at::randint(0, 256, {48, 40, 3}, at::kByte),
          at::randint(0, 256, {20, 64, 3}, at::kByte)};
}

class TinyScorer : public ::testing::Test {
 protected:
  void SetUp() override { write_tiny_clip_folder(dir_.path(), 1); }
  dedpo::test::TempDir dir_;
};

TEST_F(TinyScorer, EmbeddingsAreUnitVectorsAndCosinesPairImagesWithPrompts) {
  ClipScorer scorer(dir_.path());
  const auto images = some_images();
  const std::vector<std::string> prompts = {"a cat", "the dog", "a photo of the sea"};
  const at::Tensor image = scorer.image_embeds(images), text = scorer.text_embeds(prompts);
  ASSERT_EQ(image.sizes(), (at::IntArrayRef{3, 16}));
  EXPECT_TRUE(at::allclose(image.norm(2, {1}), at::ones({3}), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(text.norm(2, {1}), at::ones({3}), 1e-5, 1e-5));
  const at::Tensor cosine = scorer.cosine(images, prompts);
  EXPECT_TRUE(at::allclose(cosine, (image * text).sum(1), 1e-6, 1e-6));
  // An image's embedding does not depend on the batch it is in.
  EXPECT_TRUE(at::allclose(scorer.image_embeds({images[1]}), image.slice(0, 1, 2), 1e-5, 1e-5));
  EXPECT_NEAR(scorer.logit_scale(), std::exp(2.6592), 1e-3);
  EXPECT_THROW(scorer.cosine(images, {"one prompt"}), dedpo::Error);
}

TEST_F(TinyScorer, OpenClipStateDictGivesTheSameScores) {
  // Written by hand from the OpenCLIP names, independent of the rule table.
  std::map<std::string, at::Tensor> hf = dedpo::safetensors::load(dir_.path() / "model.safetensors");
  std::map<std::string, at::Tensor> oc;
  auto block = [&](const std::string& from, const std::string& to) {
    for (int n = 0; n < 2; ++n) {
      const std::string f = from + std::to_string(n), t = to + std::to_string(n);
      for (const char* kind : {"weight", "bias"}) {
        const std::string k = kind;
        oc[f + ".attn.in_proj_" + k] = at::cat({hf.at(t + ".self_attn.q_proj." + k), hf.at(t + ".self_attn.k_proj." + k),
                                                hf.at(t + ".self_attn.v_proj." + k)});
        oc[f + ".attn.out_proj." + k] = hf.at(t + ".self_attn.out_proj." + k);
        oc[f + ".ln_1." + k] = hf.at(t + ".layer_norm1." + k);
        oc[f + ".ln_2." + k] = hf.at(t + ".layer_norm2." + k);
        oc[f + ".mlp.c_fc." + k] = hf.at(t + ".mlp.fc1." + k);
        oc[f + ".mlp.c_proj." + k] = hf.at(t + ".mlp.fc2." + k);
      }
    }
  };
  block("transformer.resblocks.", "text_model.encoder.layers.");
  block("visual.transformer.resblocks.", "vision_model.encoder.layers.");
  oc["token_embedding.weight"] = hf.at("text_model.embeddings.token_embedding.weight");
  oc["positional_embedding"] = hf.at("text_model.embeddings.position_embedding.weight");
  oc["ln_final.weight"] = hf.at("text_model.final_layer_norm.weight");
  oc["ln_final.bias"] = hf.at("text_model.final_layer_norm.bias");
  oc["text_projection"] = hf.at("text_projection.weight").t().contiguous();
  oc["logit_scale"] = hf.at("logit_scale");
  oc["visual.class_embedding"] = hf.at("vision_model.embeddings.class_embedding");
  oc["visual.positional_embedding"] = hf.at("vision_model.embeddings.position_embedding.weight");
  oc["visual.conv1.weight"] = hf.at("vision_model.embeddings.patch_embedding.weight");
  oc["visual.ln_pre.weight"] = hf.at("vision_model.pre_layrnorm.weight");
  oc["visual.ln_pre.bias"] = hf.at("vision_model.pre_layrnorm.bias");
  oc["visual.ln_post.weight"] = hf.at("vision_model.post_layernorm.weight");
  oc["visual.ln_post.bias"] = hf.at("vision_model.post_layernorm.bias");
  oc["visual.proj"] = hf.at("visual_projection.weight").t().contiguous();
  oc["attn_mask"] = at::zeros({77, 77});  // older OpenCLIP saved it; not a weight
  ASSERT_EQ(oc.size(), hf.size() + 1 - 4 * 4);  // per layer (4 in all), 6 q/k/v tensors are 2 packed ones
  dedpo::safetensors::save(dir_ / "open_clip.safetensors", oc);

  ClipScorer reference(dir_.path());
  ClipScorer mapped(dir_.path(), dir_ / "open_clip.safetensors");
  const auto images = some_images();
  const std::vector<std::string> prompts = {"a cat", "the dog", "of the sea"};
  EXPECT_TRUE(at::equal(mapped.cosine(images, prompts), reference.cosine(images, prompts)));

  // A key no rule knows, and a missing one: both listed.
  oc["visual.bogus"] = at::zeros({1});
  oc.erase("ln_final.weight");
  dedpo::safetensors::save(dir_ / "broken.safetensors", oc);
  const std::string message = error_of([&] { ClipScorer(dir_.path(), dir_ / "broken.safetensors"); });
  EXPECT_NE(message.find("broken.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("missing keys (1): text_model.final_layer_norm.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected keys (1): visual.bogus"), std::string::npos) << message;
}

TEST(OpenClipKeys, RulesCoverEveryOpenClipTensorName) {
  // The names of an OpenCLIP ViT state dict (one block per tower), as open_clip writes them.
  const std::vector<std::string> names = {
      "positional_embedding", "text_projection", "logit_scale", "token_embedding.weight", "ln_final.weight",
      "ln_final.bias", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
      "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight",
      "visual.ln_post.bias", "visual.transformer.resblocks.31.attn.in_proj_weight",
      "visual.transformer.resblocks.31.attn.in_proj_bias", "visual.transformer.resblocks.31.attn.out_proj.weight",
      "visual.transformer.resblocks.31.attn.out_proj.bias", "visual.transformer.resblocks.31.ln_1.weight",
      "visual.transformer.resblocks.31.ln_1.bias", "visual.transformer.resblocks.31.mlp.c_fc.weight",
      "visual.transformer.resblocks.31.mlp.c_fc.bias", "visual.transformer.resblocks.31.mlp.c_proj.weight",
      "visual.transformer.resblocks.31.mlp.c_proj.bias", "visual.transformer.resblocks.31.ln_2.weight",
      "visual.transformer.resblocks.31.ln_2.bias", "transformer.resblocks.23.attn.in_proj_weight"};
  std::map<std::string, at::Tensor> tensors;
  for (const auto& name : names) tensors[name] = at::zeros({6, 6});
  std::vector<std::string> unmatched;
  const auto mapped = open_clip_to_transformers(tensors, unmatched);
  EXPECT_TRUE(unmatched.empty());
  EXPECT_TRUE(mapped.count("vision_model.encoder.layers.31.self_attn.v_proj.bias"));
  EXPECT_TRUE(mapped.count("text_model.encoder.layers.23.self_attn.k_proj.weight"));
  EXPECT_EQ(mapped.at("vision_model.encoder.layers.31.self_attn.q_proj.weight").sizes(), (at::IntArrayRef{2, 6}));
  EXPECT_TRUE(mapped.count("vision_model.pre_layrnorm.bias"));
  EXPECT_TRUE(is_open_clip_layout(tensors));
  tensors["visual.transformer.resblocks.x.ln_1.weight"] = at::zeros({1});
  open_clip_to_transformers(tensors, unmatched);
  EXPECT_EQ(unmatched, std::vector<std::string>{"visual.transformer.resblocks.x.ln_1.weight"});
}

TEST_F(TinyScorer, BadFoldersAndWeightsAreNamed) {
  EXPECT_NE(error_of([&] { ClipScorer(dir_ / "nowhere"); }).find("does not exist"), std::string::npos);
  fs::remove(dir_ / "config.json");
  EXPECT_NE(error_of([&] { ClipScorer(dir_.path()); }).find("has no config.json"), std::string::npos);
  write_tiny_clip_folder(dir_.path(), 1);
  EXPECT_NE(error_of([&] { ClipScorer(dir_.path(), dir_ / "missing.safetensors"); }).find("missing.safetensors' does not exist"),
            std::string::npos);
  auto tensors = dedpo::safetensors::load(dir_ / "model.safetensors");
  tensors["vision_model.post_layrnorm.weight"] = tensors.at("vision_model.post_layernorm.weight");  // misspelt
  tensors.erase("vision_model.post_layernorm.weight");
  dedpo::safetensors::save(dir_ / "renamed.safetensors", tensors);
  const std::string message = error_of([&] { ClipScorer(dir_.path(), dir_ / "renamed.safetensors"); });
  EXPECT_NE(message.find("missing keys (1): vision_model.post_layernorm.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected keys (1): vision_model.post_layrnorm.weight"), std::string::npos) << message;
  tensors = dedpo::safetensors::load(dir_ / "model.safetensors");
  tensors["visual_projection.weight"] = at::zeros({8, 32});
  dedpo::safetensors::save(dir_ / "shape.safetensors", tensors);
  EXPECT_NE(error_of([&] { ClipScorer(dir_.path(), dir_ / "shape.safetensors"); }).find("visual_projection.weight' has shape [8, 32]"),
            std::string::npos);
}

TEST_F(TinyScorer, AestheticScoreIsTheHeadOnTheNormalisedImageEmbedding) {
  AestheticScorer aesthetic(dir_.path(), dir_ / "aesthetic_head.safetensors");
  ClipScorer clip(dir_.path());
  const auto images = some_images();
  // The head by hand: five Linear layers, no activation.
  auto head = dedpo::safetensors::load(dir_ / "aesthetic_head.safetensors");
  at::Tensor h = clip.image_embeds(images);
  for (int i : {0, 2, 4, 6, 7}) {
    h = at::linear(h, head.at("layers." + std::to_string(i) + ".weight"), head.at("layers." + std::to_string(i) + ".bias"));
  }
  const at::Tensor scores = aesthetic.score(images);
  ASSERT_EQ(scores.sizes(), (at::IntArrayRef{3}));
  EXPECT_TRUE(at::allclose(scores, h.squeeze(1), 1e-5, 1e-5));
}

TEST_F(TinyScorer, AestheticHeadErrorsNameTheFile) {
  EXPECT_NE(error_of([&] { AestheticScorer(dir_.path(), dir_ / "no_head.safetensors"); }).find("no_head.safetensors' does not exist"),
            std::string::npos);
  auto head = dedpo::safetensors::load(dir_ / "aesthetic_head.safetensors");
  head["layers.4.weight"] = at::zeros({64, 100});  // does not take layer 2's 128 outputs
  dedpo::safetensors::save(dir_ / "chain.safetensors", head);
  const std::string message = error_of([&] { AestheticScorer(dir_.path(), dir_ / "chain.safetensors"); });
  EXPECT_NE(message.find("layers.4.weight has shape [64, 100], expected [*, 128]"), std::string::npos) << message;
  dedpo::safetensors::save(dir_ / "wide.safetensors", std::map<std::string, at::Tensor>{{"layers.0.weight", at::zeros({1, 8})},
                                                                                         {"layers.0.bias", at::zeros({1})}});
  EXPECT_NE(error_of([&] { AestheticScorer(dir_.path(), dir_ / "wide.safetensors"); }).find("takes 8-dimensional embeddings"),
            std::string::npos);
}

TEST(PromptFiles, ReadTextAndJsonLists) {
  dedpo::test::TempDir dir;
  dedpo::test::write_file(dir / "photo.txt", "a cat\n\n  a dog on a sofa  \r\nthe sea\n");
  const PromptSet text = read_prompt_set(dir / "photo.txt");
  EXPECT_EQ(text.name, "photo");
  EXPECT_EQ(text.prompts, (std::vector<std::string>{"a cat", "a dog on a sofa", "the sea"}));
  EXPECT_EQ(read_prompt_set(dir / "photo.txt", 2).prompts.size(), 2u);
  dedpo::test::write_file(dir / "anime.json", R"(["a girl", "a robot"])");
  EXPECT_EQ(read_prompt_set(dir / "anime.json").prompts, (std::vector<std::string>{"a girl", "a robot"}));
  EXPECT_EQ(split_path_list(" a.txt ,b.json,, "), (std::vector<fs::path>{"a.txt", "b.json"}));
}

TEST(PromptFiles, BadFilesAreNamedWithTheLine) {
  dedpo::test::TempDir dir;
  EXPECT_NE(error_of([&] { read_prompt_set(dir / "none.txt"); }).find("none.txt': cannot open"), std::string::npos);
  dedpo::test::write_file(dir / "latin1.txt", "fine\ncaf\xe9 au lait\n");
  EXPECT_NE(error_of([&] { read_prompt_set(dir / "latin1.txt"); }).find("latin1.txt' line 2: not valid UTF-8"),
            std::string::npos);
  dedpo::test::write_file(dir / "empty.txt", "\n \n");
  EXPECT_NE(error_of([&] { read_prompt_set(dir / "empty.txt"); }).find("no prompts"), std::string::npos);
  dedpo::test::write_file(dir / "object.json", R"({"prompts": []})");
  EXPECT_NE(error_of([&] { read_prompt_set(dir / "object.json"); }).find("expected a JSON list"), std::string::npos);
  dedpo::test::write_file(dir / "mixed.json", R"(["a", 3])");
  EXPECT_NE(error_of([&] { read_prompt_set(dir / "mixed.json"); }).find("entry 1 is not a string"), std::string::npos);
}

}  // namespace
