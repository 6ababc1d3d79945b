// The `sdxl` backbone end to end on a tiny random-weight SDXL folder (dedpo_make_tiny_sd --layout
// sdxl), loaded through the plugin registry as a run loads it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "dedpo/backbone.hpp"
#include "dedpo/image.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/diffusion_backbone.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "dedpo/sd/unet.hpp"
#include "lora_test_support.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using dedpo::test::changed;
using dedpo::test::expect_close;
using dedpo::test::gen;
using dedpo::test::snapshot;
namespace fs = std::filesystem;
using dedpo::Backbone;
using testing::HasSubstr;

// The tiny folder's layout (see dedpo_make_tiny_sd): hidden sizes 32 + 48, pooled 40.
constexpr int64_t kTokens = 77, kContext = 80, kPooled = 40;

fs::path scratch() {
  static const dedpo::test::TempDir dir;
  return dir.path();
}

fs::path make_folder(const std::string& name, const std::string& flags = "--layout sdxl") {
  const fs::path folder = scratch() / name;
  if (!fs::exists(folder / "model_index.json")) {
    const std::string command =
        std::string("\"") + DEDPO_MAKE_TINY_SD + "\" \"" + folder.string() + "\" " + flags + " > /dev/null";
    if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  }
  return folder;
}

fs::path tiny() { return make_folder("tiny"); }

// A copy of the tiny folder to break.
fs::path copy_of_tiny(const std::string& name) {
  const fs::path folder = scratch() / name;
  fs::remove_all(folder);
  fs::copy(tiny(), folder, fs::copy_options::recursive);
  return folder;
}

void replace_in_file(const fs::path& file, const std::string& from, const std::string& to) {
  std::string text = dedpo::test::read_file(file);
  const auto at = text.find(from);
  ASSERT_NE(at, std::string::npos) << from << " not in " << file;
  text.replace(at, from.size(), to);
  dedpo::test::write_file(file, text);
}

dedpo::PluginRegistry& registry() {
  static dedpo::PluginRegistry* r = [] {
    auto* reg = new dedpo::PluginRegistry();
    reg->load_default_locations();
    return reg;
  }();
  return *r;
}

std::shared_ptr<Backbone> make(const std::string& extra = "", const fs::path& folder = tiny(),
                               const fs::path& initial_weights = {}, const std::string& plugin = "sdxl") {
  auto b = registry().create<Backbone>(
      plugin, "path = \"" + folder.string() + "\"\nresolution = 16\nsample_steps = 3\n" + extra);
  dedpo::BackboneContext context;
  context.cache_dir = scratch() / "cache";
  context.initial_weights = initial_weights;
  context.seed = 3;
  b->prepare(context);
  return b;
}

// The message of the dedpo::Error that `make` throws.
std::string make_error(const std::string& extra, const fs::path& folder, const std::string& plugin = "sdxl") {
  try {
    make(extra, folder, {}, plugin);
  } catch (const dedpo::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// (original height, width, crop top, crop left) per image.
at::Tensor info(std::initializer_list<float> row, int64_t n = 2) {
  return at::tensor(std::vector<float>(row)).reshape({1, 4}).expand({n, 4}).contiguous();
}

dedpo::PairBatch batch(Backbone& b, int64_t pairs = 2) {
  at::Generator g = gen(11);
  dedpo::PairBatch out;
  out.a = at::randn({pairs, 4, 8, 8}, g, at::kFloat);
  out.b = at::randn({pairs, 4, 8, 8}, g, at::kFloat);
  std::vector<std::string> prompts;
  for (int64_t i = 0; i < pairs; ++i) prompts.push_back(i % 2 ? "a red dog" : "a photo of a cat");
  out.condition = b.encode_prompts(prompts);
  return out;
}

dedpo::DenoisingErrors errors(Backbone& b, const dedpo::PairBatch& pairs, std::uint64_t seed = 7) {
  at::Generator g = gen(seed);
  return b.denoising_errors(pairs, g, true);
}

// A few DeDPO steps (the `dedpo` loss plugin, AdamW) on 4 pairs: 2 human-labelled, 2 labelled by
// an annotator, with per-image original sizes and crops as image data records them.
void dedpo_steps(Backbone& b, int steps) {
  auto loss = registry().create<dedpo::Loss>("dedpo", "beta = 500.0");
  std::vector<at::Tensor> params;
  for (const at::Tensor& p : b.model().parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  ASSERT_FALSE(params.empty());
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(1e-3));
  dedpo::PairBatch pairs = batch(b, 4);
  pairs.a_info = at::tensor({16.f, 16.f, 0.f, 0.f, 24.f, 20.f, 4.f, 2.f, 16.f, 32.f, 0.f, 8.f, 40.f, 16.f, 12.f, 0.f})
                     .reshape({4, 4});
  pairs.b_info = pairs.a_info.flip({0});
  for (int step = 0; step < steps; ++step) {
    dedpo::DenoisingErrors e = errors(b, pairs, 100 + step);
    dedpo::PairTerms terms;
    terms.model_err_a = e.model_a;
    terms.model_err_b = e.model_b;
    terms.ref_err_a = e.ref_a;
    terms.ref_err_b = e.ref_b;
    terms.human_label = at::tensor({1.f, 0.f, NAN, NAN});
    terms.is_labelled = at::tensor({1, 1, 0, 0}).to(at::kBool);
    terms.annotator_prob = at::tensor({0.8f, 0.3f, 0.9f, 0.2f});
    terms.n_labelled = 2;
    terms.n_unlabelled = 2;
    terms.drawn_from = dedpo::PairPool::all;
    dedpo::LossResult result = loss->compute(terms);
    ASSERT_TRUE(std::isfinite(result.loss.item<double>()));
    optimizer.zero_grad();
    result.loss.backward();
    optimizer.step();
  }
}

std::pair<int, int> png_size(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  unsigned char header[24] = {};
  in.read(reinterpret_cast<char*>(header), sizeof header);
  auto be32 = [&](int at) { return (header[at] << 24) | (header[at + 1] << 16) | (header[at + 2] << 8) | header[at + 3]; };
  return {be32(16), be32(20)};  // IHDR width, height
}

TEST(Sdxl, OptionsAreCheckedWhenConstructed) {
  const dedpo::PluginEntry& entry = registry().find(dedpo::PluginKind::backbone, "sdxl");
  EXPECT_STREQ(entry.descriptor->name, "sdxl");
  auto error = [](const std::string& options) -> std::string {
    try {
      registry().create<Backbone>("sdxl", "path = \"x\"\n" + options);
    } catch (const dedpo::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_THAT(error("micro_conditioning = \"crop\""), HasSubstr("micro_conditioning"));
  EXPECT_THAT(error("clip_skip = -1"), HasSubstr("clip_skip"));
  EXPECT_THAT(error("sampler = \"plms\""), HasSubstr("sampler"));
  EXPECT_THAT(error("reference_device = \"gpu\""), HasSubstr("reference_device"));
  EXPECT_THAT(error("reference_device = \"cpu\"\nlora_rank = 4"), HasSubstr("no effect with LoRA"));
  EXPECT_THAT(error("gradient_checkpointing = 1"), HasSubstr("gradient_checkpointing"));
  EXPECT_EQ(error("gradient_checkpointing = true\nlora_rank = 4"), "(no error)");
  EXPECT_THAT(error("frozen_dtype = \"float16\""), HasSubstr("frozen_dtype"));
  EXPECT_EQ(error("reference_device = \"cpu\"\ngradient_checkpointing = true"), "(no error)");
}

// The packed row against the components run by hand as diffusers' SDXL encode_prompt does.
TEST(Sdxl, ConditioningRowPacksBothEncodersAsDiffusers) {
  auto b = make();
  const at::Tensor rows = b->encode_prompts({"a photo of a cat", "a red dog", "a photo of a cat"});
  ASSERT_EQ(rows.sizes(), (at::IntArrayRef{3, kTokens + 1, kContext}));
  EXPECT_TRUE(at::equal(rows[0], rows[2]));
  EXPECT_FALSE(at::equal(rows[0], rows[1]));

  namespace sd = dedpo::sd;
  sd::ClipTextModel clip_1(sd::ClipTextConfig::from_file(tiny() / "text_encoder" / "config.json"));
  dedpo::safetensors::load_into(*clip_1, tiny() / "text_encoder" / "model.safetensors");
  sd::ClipTextModelWithProjection clip_2(sd::ClipTextConfig::from_file(tiny() / "text_encoder_2" / "config.json"));
  dedpo::safetensors::load_into(*clip_2, tiny() / "text_encoder_2" / "model.safetensors");
  const auto tokenizer_1 = sd::ClipTokenizer::from_folder(tiny() / "tokenizer");
  const auto tokenizer_2 = sd::ClipTokenizer::from_folder(tiny() / "tokenizer_2");
  const auto ids_1 = tokenizer_1.encode_batch({"a red dog"}).input_ids;
  const auto ids_2 = tokenizer_2.encode_batch({"a red dog"}).input_ids;
  // The second tokenizer pads with "!", the first with its end token.
  EXPECT_EQ(ids_2[0][kTokens - 1].item<int64_t>(), tokenizer_2.token_to_id("!"));
  EXPECT_EQ(ids_1[0][kTokens - 1].item<int64_t>(), tokenizer_1.eos_id());
  EXPECT_NE(tokenizer_1.eos_id(), tokenizer_2.token_to_id("!"));
  at::NoGradGuard no_grad;
  const sd::ClipTextOutput out_1 = clip_1->forward(ids_1);
  const sd::ClipTextOutput out_2 = clip_2->forward(ids_2);
  const at::Tensor hidden = at::cat({out_1.hidden_states.end()[-2], out_2.hidden_states.end()[-2]}, -1)[0];
  expect_close(rows[1].slice(0, 0, kTokens), hidden, 1e-5);
  expect_close(rows[1][kTokens].slice(0, 0, kPooled), out_2.text_embeds[0], 1e-5);
  EXPECT_TRUE(at::equal(rows[1][kTokens].slice(0, kPooled), at::zeros({kContext - kPooled})));

  // clip_skip = 1 reads hidden_states[-3] of both.
  auto skip = make("clip_skip = 1");
  const at::Tensor skipped = skip->encode_prompts({"a red dog"})[0];
  const at::Tensor hidden_3 = at::cat({out_1.hidden_states.end()[-3], out_2.hidden_states.end()[-3]}, -1)[0];
  expect_close(skipped.slice(0, 0, kTokens), hidden_3, 1e-5);
  expect_close(skipped[kTokens].slice(0, 0, kPooled), out_2.text_embeds[0], 1e-5);
}

TEST(Sdxl, TimeIdsComeFromThePairDataUnlessFixed) {
  auto b = make();
  dedpo::PairBatch pairs = batch(*b);
  const dedpo::DenoisingErrors fixed = errors(*b, pairs);
  expect_close(fixed.ref_a, fixed.model_a);  // step 0: the reference is the model
  EXPECT_TRUE(fixed.model_a.requires_grad());
  EXPECT_FALSE(fixed.ref_a.requires_grad());

  // (R, R, 0, 0) from the data is the fixed form (target = resolution = 16).
  pairs.a_info = info({16, 16, 0, 0});
  pairs.b_info = info({16, 16, 0, 0});
  expect_close(errors(*b, pairs).model_a, fixed.model_a);

  // Another original size or crop changes the prediction, per image: only A's info changes here.
  pairs.a_info = info({48, 32, 8, 0});
  const dedpo::DenoisingErrors cropped = errors(*b, pairs);
  EXPECT_FALSE(at::allclose(cropped.model_a, fixed.model_a, 1e-6, 1e-6));
  expect_close(cropped.model_b, fixed.model_b);
  expect_close(cropped.ref_a, cropped.model_a);

  // "fixed" ignores the data.
  auto fixed_backbone = make("micro_conditioning = \"fixed\"");
  expect_close(errors(*fixed_backbone, pairs).model_a, fixed.model_a);

  pairs.b_info = at::Tensor();
  EXPECT_THROW(errors(*b, pairs), dedpo::Error);
  pairs.a_info = at::zeros({2, 3});
  pairs.b_info = at::zeros({2, 3});
  try {
    errors(*b, pairs);
    FAIL() << "expected dedpo::Error";
  } catch (const dedpo::Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("original height, width, crop top, crop left"));
  }
}

// The end-to-end path: load -> DeDPO for a few steps -> save -> reload -> sample a PNG.
TEST(Sdxl, DedpoStepsSaveReloadAndSamplePng) {
  auto b = make();
  dedpo::PairBatch pairs = batch(*b);
  const dedpo::DenoisingErrors before = errors(*b, pairs);
  const auto params = snapshot(b->model());
  dedpo_steps(*b, 3);
  EXPECT_TRUE(changed(b->model(), params));
  const dedpo::DenoisingErrors after = errors(*b, pairs);
  expect_close(after.ref_a, before.ref_a);
  expect_close(after.ref_b, before.ref_b);
  EXPECT_FALSE(at::allclose(after.model_a, before.model_a, 1e-6, 1e-6));

  const fs::path folder = scratch() / "saved" / "unet";
  const fs::path file = folder / "diffusion_pytorch_model.safetensors";
  b->save_weights(file);
  ASSERT_TRUE(fs::exists(file));
  EXPECT_TRUE(dedpo::safetensors::File(file).contains("add_embedding.linear_1.weight"));
  // The UNet's config.json beside the weights: the folder is a diffusers UNet folder.
  ASSERT_TRUE(fs::exists(folder / "config.json"));
  EXPECT_EQ(dedpo::test::read_file(folder / "config.json"), dedpo::test::read_file(tiny() / "unet" / "config.json"));
  dedpo::sd::UNet2DConditionModel reopened(dedpo::sd::UNet2DConditionConfig::from_file(folder / "config.json"));
  dedpo::safetensors::load_into(*reopened, file);

  auto reloaded = make("", tiny(), file);
  const dedpo::DenoisingErrors again = errors(*reloaded, pairs);
  expect_close(again.model_a, after.model_a);
  expect_close(again.model_b, after.model_b);
  expect_close(again.ref_a, after.model_a);  // the initial weights are the new reference

  const at::Tensor cond = reloaded->encode_prompts({"a photo of a cat"});
  at::Generator g1 = gen(21), g2 = gen(21);
  const at::Tensor x = reloaded->sample(cond, g1, false);
  ASSERT_EQ(x.sizes(), (at::IntArrayRef{1, 4, 8, 8}));
  EXPECT_TRUE(at::isfinite(x).all().item<bool>());
  expect_close(x, reloaded->sample(cond, g2, true));  // reference = loaded weights
  const fs::path png = scratch() / "png" / "cat.png";
  reloaded->write_samples(x, {png});
  ASSERT_TRUE(fs::exists(png));
  EXPECT_EQ(png_size(png), std::make_pair(16, 16));
}

TEST(Sdxl, LoraReferenceIsBaseAndMergedSaveReloads) {
  auto full = make();
  auto lora = make("lora_rank = 2\nlora_alpha = 4.0");
  std::size_t n_trainable = 0;
  for (const auto& item : lora->model().named_parameters()) {
    EXPECT_NE(item.key().find(".lora_"), std::string::npos) << item.key();
    ++n_trainable;
  }
  // Tiny SDXL UNet, 2 transformer layers per Transformer2DModel: down 1 + mid 1 + up 2 models = 8
  // blocks, × 2 attentions × 4 targets × (A, B).
  EXPECT_EQ(n_trainable, 8u * 2 * 4 * 2);
  dedpo::PairBatch pairs = batch(*full);
  pairs.a_info = info({32, 24, 4, 0});
  pairs.b_info = info({16, 16, 0, 0});
  const dedpo::DenoisingErrors base = errors(*full, pairs);
  const dedpo::DenoisingErrors e = errors(*lora, pairs);
  expect_close(e.model_a, base.model_a);
  expect_close(e.ref_b, base.model_b);
  dedpo_steps(*lora, 2);
  const dedpo::DenoisingErrors after = errors(*lora, pairs);
  expect_close(after.ref_a, base.model_a);
  EXPECT_FALSE(at::allclose(after.model_a, base.model_a, 1e-6, 1e-6));

  const fs::path file = scratch() / "lora" / "diffusion_pytorch_model.safetensors";
  lora->save_weights(file);
  EXPECT_EQ(dedpo::safetensors::File(scratch() / "lora" / "diffusion_pytorch_model_lora.safetensors").keys().size(),
            n_trainable);
  EXPECT_TRUE(fs::exists(scratch() / "lora" / "config.json"));
  auto merged = make("", tiny(), file);
  expect_close(errors(*merged, pairs).model_a, after.model_a, 1e-5);
}

TEST(Sdxl, GradientCheckpointingGivesTheSameGradients) {
  auto plain = make();
  auto checkpointed = make("gradient_checkpointing = true");
  ASSERT_TRUE(dynamic_cast<dedpo::sd::DiffusionBackbone&>(*checkpointed).unet()->gradient_checkpointing());
  ASSERT_FALSE(dynamic_cast<dedpo::sd::DiffusionBackbone&>(*plain).unet()->gradient_checkpointing());
  std::map<std::string, at::Tensor> grads;
  for (Backbone* b : {plain.get(), checkpointed.get()}) {
    dedpo::PairBatch pairs = batch(*b);
    pairs.a_info = info({32, 24, 4, 0});
    pairs.b_info = info({16, 16, 0, 0});
    const dedpo::DenoisingErrors e = errors(*b, pairs);
    (e.model_a.sum() - e.model_b.sum()).backward();
    for (const auto& item : b->model().named_parameters()) {
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      auto [it, fresh] = grads.emplace(item.key(), item.value().grad().clone());
      if (!fresh) EXPECT_TRUE(at::allclose(it->second, item.value().grad(), 1e-5, 1e-6)) << item.key();
    }
  }
}

TEST(Sdxl, KohyaLoraKeysSpellTheOriginalUNetAndRoundTrip) {
  // Names of kohya-ss SDXL LoRA files, for SDXL's own layout (2 layers per block).
  dedpo::sd::UNet2DConditionConfig sdxl;
  sdxl.layers_per_block = {2, 2, 2};
  auto kohya = [&](const std::string& path) { return dedpo::sd::kohya_lora_name(path, dedpo::sd::KohyaNaming::sgm, sdxl); };
  EXPECT_EQ(kohya("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0");
  EXPECT_EQ(kohya("down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2"), "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2");
  EXPECT_EQ(kohya("mid_block.attentions.0.proj_in"), "lora_unet_middle_block_1_proj_in");
  EXPECT_EQ(kohya("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_k"), "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_k");
  EXPECT_EQ(kohya("up_blocks.1.attentions.0.proj_out"), "lora_unet_output_blocks_3_1_proj_out");
  EXPECT_EQ(kohya("down_blocks.0.resnets.1.time_emb_proj"), "lora_unet_input_blocks_2_0_emb_layers_1");
  EXPECT_EQ(kohya("mid_block.resnets.1.time_emb_proj"), "lora_unet_middle_block_2_emb_layers_1");
  EXPECT_EQ(kohya("add_embedding.linear_2"), "lora_unet_label_emb_0_2");
  EXPECT_THROW(kohya("down_blocks.0.downsamplers.0.conv"), dedpo::Error);
  EXPECT_EQ(dedpo::sd::kohya_lora_name("up_blocks.0.attentions.0.proj_out", dedpo::sd::KohyaNaming::diffusers, sdxl),
            "lora_unet_up_blocks_0_attentions_0_proj_out");

  auto trained = make("lora_rank = 2\nlora_alpha = 1.0\nlora_format = \"kohya\"");
  dedpo::test::randomize_lora_up(*trained, 5);
  const fs::path file = scratch() / "kohya" / "weights.safetensors";
  trained->save_weights(file);
  const fs::path adapters = dedpo::sd::DiffusionBackbone::lora_weights_path(file);
  const dedpo::safetensors::File saved(adapters);
  for (const std::string& key : saved.keys()) {
    EXPECT_THAT(key, testing::AnyOf(testing::StartsWith("lora_unet_input_blocks_"), testing::StartsWith("lora_unet_middle_block_1_"),
                                    testing::StartsWith("lora_unet_output_blocks_")));
  }
  auto loaded = make("lora_rank = 2\nlora_alpha = 1.0\nlora_init = \"" + adapters.string() + "\"");
  dedpo::test::expect_same_adapters(*loaded, *trained);
}

// The replay of a checkpointed block re-activates the adapters: they get the gradients they get
// without checkpointing (lora_B is set away from its zero initialisation, so that lora_A's
// gradients are not trivially zero).
TEST(Sdxl, LoraWithGradientCheckpointingGivesTheSameGradients) {
  std::map<std::string, at::Tensor> grads;
  for (const char* options : {"lora_rank = 2", "lora_rank = 2\ngradient_checkpointing = true"}) {
    auto b = make(options);
    {
      at::NoGradGuard no_grad;
      at::Generator g = gen(5);
      for (const auto& layer : dynamic_cast<dedpo::sd::DiffusionBackbone&>(*b).lora_layers()) layer.up.normal_(0, 0.1, g);
    }
    dedpo::PairBatch pairs = batch(*b);
    pairs.a_info = info({32, 24, 4, 0});
    pairs.b_info = info({16, 16, 0, 0});
    const dedpo::DenoisingErrors e = errors(*b, pairs);
    ASSERT_TRUE(e.model_a.requires_grad()) << options;
    (e.model_a.sum() - e.model_b.sum()).backward();
    for (const auto& item : b->model().named_parameters()) {
      ASSERT_TRUE(item.value().grad().defined()) << options << ": " << item.key();
      EXPECT_GT(item.value().grad().abs().max().item<double>(), 0) << options << ": " << item.key();
      auto [it, fresh] = grads.emplace(item.key(), item.value().grad().clone());
      if (!fresh) EXPECT_TRUE(at::allclose(it->second, item.value().grad(), 1e-5, 1e-6)) << item.key();
    }
  }
}

TEST(Sdxl, ReferenceOnCpuIsTheSameReference) {
  auto b = make("reference_device = \"cpu\"");
  auto plain = make();
  dedpo::PairBatch pairs = batch(*b);
  const dedpo::DenoisingErrors e = errors(*b, pairs), p = errors(*plain, pairs);
  expect_close(e.ref_a, p.ref_a);
  expect_close(e.model_b, p.model_b);
  EXPECT_TRUE(dynamic_cast<dedpo::sd::DiffusionBackbone&>(*b).reference_unet()->parameters().front().is_cpu());
}

// ‖x - y‖ / ‖y‖.
double relative_error(const at::Tensor& x, const at::Tensor& y) {
  return (x - y).norm().item<double>() / y.norm().item<double>();
}

int64_t parameter_bytes(torch::nn::Module& m) {
  int64_t bytes = 0;
  for (const at::Tensor& p : m.parameters()) bytes += p.numel() * p.element_size();
  return bytes;
}

TEST(Sdxl, Bfloat16FrozenModulesHalveTheirMemoryAndAgreeWithFloat32) {
  auto full = make();
  auto halved = make("frozen_dtype = \"bfloat16\"");
  auto& f = dynamic_cast<dedpo::sd::DiffusionBackbone&>(*full);
  auto& h = dynamic_cast<dedpo::sd::DiffusionBackbone&>(*halved);
  // Both text encoders, the VAE and the reference UNet; the trainable UNet stays float32.
  ASSERT_EQ(h.frozen_modules().size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) {
    for (const at::Tensor& p : h.frozen_modules()[i]->parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
    EXPECT_EQ(2 * parameter_bytes(*h.frozen_modules()[i]), parameter_bytes(*f.frozen_modules()[i]));
  }
  for (const at::Tensor& p : h.model().parameters()) ASSERT_EQ(p.scalar_type(), at::kFloat);

  // bf16 keeps 8 significant bits (relative rounding error <= 2^-9 = 0.2% per value); a few layers
  // of rounding stay within 2%. Outputs come back as float32.
  const std::vector<std::string> prompts = {"a photo of a cat", "a red dog"};
  const at::Tensor rows = halved->encode_prompts(prompts), rows_f32 = full->encode_prompts(prompts);
  ASSERT_EQ(rows.scalar_type(), at::kFloat);
  EXPECT_FALSE(at::equal(rows, rows_f32));
  EXPECT_LT(relative_error(rows, rows_f32), 2e-2);
  const at::Tensor images = at::randint(0, 256, {2, 16, 16, 3}, gen(4), at::TensorOptions().dtype(at::kByte));
  const at::Tensor latents = halved->encode_images(images), latents_f32 = full->encode_images(images);
  ASSERT_EQ(latents.scalar_type(), at::kFloat);
  EXPECT_LT(relative_error(latents, latents_f32), 2e-2);
  const at::Tensor decoded = halved->decode_samples(latents_f32), decoded_f32 = full->decode_samples(latents_f32);
  EXPECT_LT(relative_error(decoded.to(at::kFloat), decoded_f32.to(at::kFloat)), 2e-2);
  EXPECT_NE(halved->encoder_fingerprint(), full->encoder_fingerprint());  // cached latents differ

  // The same float32 batch through both: the trainable pass is untouched, the reference within 2%.
  dedpo::PairBatch pairs = batch(*full);
  const dedpo::DenoisingErrors e = errors(*halved, pairs), e_f32 = errors(*full, pairs);
  expect_close(e.model_a, e_f32.model_a);
  EXPECT_LT(relative_error(at::cat({e.ref_a, e.ref_b}), at::cat({e_f32.ref_a, e_f32.ref_b})), 2e-2);
  // Sampling from the reference: guidance u + 5·(c - u) scales the difference up to 5×, over 3 steps.
  at::Generator g1 = gen(21), g2 = gen(21);
  const at::Tensor sampled = halved->sample(pairs.condition, g1, true);
  EXPECT_LT(relative_error(sampled, full->sample(pairs.condition, g2, true)), 1e-1);

  const auto params = snapshot(halved->model());
  dedpo_steps(*halved, 2);
  EXPECT_TRUE(changed(halved->model(), params));
  expect_close(errors(*halved, pairs).ref_a, e.ref_a);

  // With LoRA the frozen base UNet is stored in bfloat16 too; the adapters stay float32 (the
  // optimiser's master copies) and are never merged into the base.
  auto lora = make("lora_rank = 2\nfrozen_dtype = \"bfloat16\"");
  auto& l = dynamic_cast<dedpo::sd::DiffusionBackbone&>(*lora);
  EXPECT_EQ(l.frozen_modules().size(), 4u);
  EXPECT_EQ(l.unet()->parameters().front().scalar_type(), at::kBFloat16);
  for (const at::Tensor& p : lora->model().parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
  const dedpo::DenoisingErrors lora_e = errors(*lora, pairs);
  EXPECT_LT(relative_error(at::cat({lora_e.ref_a, lora_e.ref_b}), at::cat({e_f32.ref_a, e_f32.ref_b})), 2e-2);
  expect_close(lora_e.model_a, lora_e.ref_a);  // lora_B starts at zero: the adapters add nothing yet
  const auto adapters = snapshot(lora->model());
  const auto base = snapshot(*l.unet());
  dedpo_steps(*lora, 2);
  EXPECT_TRUE(changed(lora->model(), adapters));
  EXPECT_FALSE(changed(*l.unet(), base));
}

TEST(Sdxl, SeparateVaeFolderReplacesThePipelines) {
  const fs::path other = make_folder("other", "--layout sdxl --seed 9");
  auto own = make();
  auto swapped = make("vae = \"" + (other / "vae").string() + "\"");
  const at::Tensor images = at::randint(0, 256, {1, 16, 16, 3}, gen(4), at::TensorOptions().dtype(at::kByte));
  const at::Tensor a = own->encode_images(images), b = swapped->encode_images(images);
  ASSERT_EQ(a.sizes(), (at::IntArrayRef{1, 4, 8, 8}));
  EXPECT_FALSE(at::allclose(a, b));
  EXPECT_NE(own->encoder_fingerprint(), swapped->encoder_fingerprint());
  // The other folder's VAE is what the pipeline folder would hold there: same latents.
  auto theirs = make("", other);
  expect_close(theirs->encode_images(images), b);

  EXPECT_THAT(make_error("vae = \"" + (scratch() / "nowhere").string() + "\"", tiny()),
              AllOf(HasSubstr("option 'vae'"), HasSubstr("nowhere"), HasSubstr("config.json")));
  // A separate VAE makes the pipeline's vae/ optional.
  const fs::path no_vae = copy_of_tiny("no_vae");
  fs::remove_all(no_vae / "vae");
  EXPECT_THAT(make_error("", no_vae), HasSubstr("lacks vae/"));
  EXPECT_NO_THROW(make("vae = \"" + (other / "vae").string() + "\"", no_vae));
}

TEST(Sdxl, UnconditionalRowIsZerosUnlessThePipelineSaysOtherwise) {
  const fs::path encoded = copy_of_tiny("encoded_uncond");
  replace_in_file(encoded / "model_index.json", "\"force_zeros_for_empty_prompt\": true",
                  "\"force_zeros_for_empty_prompt\": false");
  for (const std::string guidance : {"1.0", "4.0"}) {
    auto zeros = make("guidance_scale = " + guidance);
    auto empty = make("guidance_scale = " + guidance, encoded);
    const at::Tensor cond = zeros->encode_prompts({"a red dog"});
    at::Generator g1 = gen(5), g2 = gen(5);
    const at::Tensor x = zeros->sample(cond, g1, false), y = empty->sample(cond, g2, false);
    if (guidance == "1.0") {
      expect_close(x, y);  // no unconditional pass
    } else {
      EXPECT_FALSE(at::allclose(x, y, 1e-6, 1e-6));
    }
  }
}

TEST(Sdxl, FolderErrorsNameTheFileAndWhatWasExpected) {
  const fs::path missing = copy_of_tiny("missing");
  fs::remove_all(missing / "text_encoder_2");
  fs::remove_all(missing / "tokenizer_2");
  EXPECT_THAT(make_error("", missing), HasSubstr("lacks text_encoder_2/, tokenizer_2/"));

  const fs::path cross = copy_of_tiny("cross");
  replace_in_file(cross / "unet" / "config.json", "\"cross_attention_dim\": 80", "\"cross_attention_dim\": 64");
  EXPECT_THAT(make_error("", cross), AllOf(HasSubstr("unet/config.json"), HasSubstr("cross_attention_dim 64"),
                                           HasSubstr("hidden_size 32"), HasSubstr("hidden_size 48"), HasSubstr("= 80")));

  const fs::path projection = copy_of_tiny("projection");
  replace_in_file(projection / "unet" / "config.json", "\"addition_time_embed_dim\": 8", "\"addition_time_embed_dim\": 4");
  EXPECT_THAT(make_error("", projection), AllOf(HasSubstr("projection_class_embeddings_input_dim 88"),
                                                HasSubstr("projection_dim 40"), HasSubstr("= 64")));

  const fs::path tokens = copy_of_tiny("tokens");
  replace_in_file(tokens / "tokenizer_2" / "tokenizer_config.json", "\"model_max_length\": 77", "\"model_max_length\": 64");
  EXPECT_THAT(make_error("", tokens), AllOf(HasSubstr("tokenizer_2/"), HasSubstr("64"), HasSubstr("77")));

  EXPECT_THAT(make_error("clip_skip = 2", tiny()),
              AllOf(HasSubstr("clip_skip"), HasSubstr("hidden_states[-4]"), HasSubstr("2 layers")));

  // The two plugins refuse each other's folders.
  const fs::path sd15 = make_folder("sd15", "--layout sd15");
  EXPECT_THAT(make_error("", sd15), AllOf(HasSubstr("lacks text_encoder_2/, tokenizer_2/")));
  const fs::path sd15_unet = copy_of_tiny("sd15_unet");
  fs::remove_all(sd15_unet / "unet");
  fs::copy(sd15 / "unet", sd15_unet / "unet", fs::copy_options::recursive);
  EXPECT_THAT(make_error("", sd15_unet), AllOf(HasSubstr("addition_embed_type"), HasSubstr("sd15 backbone")));
  EXPECT_THAT(make_error("", tiny(), "sd15"), AllOf(HasSubstr("sd15:"), HasSubstr("use the sdxl backbone")));
}

// `dedpo sample` with an SDXL experiment: prompts through both encoders, Euler, PNGs.
TEST(SdxlCli, SampleWritesPngs) {
  const fs::path dir = scratch() / "cli";
  const fs::path experiment = dir / "exp.toml";
  dedpo::test::write_file(experiment, "[run]\nname = \"s\"\noutput = \"runs\"\nthreads = 1\n"
                                      "[backbone]\nplugin = \"sdxl\"\npath = \"" + tiny().string() +
                                      "\"\nresolution = 16\nsample_steps = 2\n"
                                      "[data]\nplugin = \"toy_samples\"\n[train]\nobjective = \"denoising\"\n");
  const auto result = dedpo::test::run_dedpo("sample '" + experiment.string() +
                                             "' --prompt 'a red dog' --n 2 --seed 4 --out '" + (dir / "out").string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const char* name : {"0-0.png", "0-1.png"}) {
    ASSERT_TRUE(fs::exists(dir / "out" / name)) << name << "\n" << result.output;
    EXPECT_EQ(png_size(dir / "out" / name), std::make_pair(16, 16));
  }
  EXPECT_NE(dedpo::test::read_file(dir / "out" / "0-0.png"), dedpo::test::read_file(dir / "out" / "0-1.png"));
}

// The path through the program: `dedpo run` trains DeDPO for a few steps on pairs read
// from images of several sizes (so each side carries its own original size and crop), saves, and
// `dedpo sample --run` reloads the run's weights and writes PNGs.
// The losses a run logged in metrics.jsonl, in step order.
std::vector<double> logged_losses(const fs::path& run) {
  std::vector<double> losses;
  std::istringstream lines(dedpo::test::read_file(run / "metrics.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const auto entry = nlohmann::json::parse(line);
    if (entry.contains("loss")) losses.push_back(entry["loss"].get<double>());
  }
  return losses;
}

TEST(SdxlCli, DedpoRunOnImagePairsThenSampleTheRun) {
  const fs::path dir = scratch() / "run";
  std::string manifest, annotations = "id,g\n";
  for (int i = 0; i < 6; ++i) {
    for (const char side : {'a', 'b'}) {
      at::Generator g = gen(100 + 2 * i + (side == 'b'));
      const int64_t height = side == 'a' ? 16 + 8 * (i % 3) : 24, width = side == 'a' ? 24 : 16 + 4 * (i % 2);
      dedpo::write_png(dir / "img" / (std::string(1, side) + std::to_string(i) + ".png"),
                       at::randint(0, 256, {height, width, 3}, g, at::kLong).to(at::kByte));
    }
    manifest += "{\"id\": \"p" + std::to_string(i) + "\", \"prompt\": \"prompt " + std::to_string(i % 2) +
                "\", \"image_a\": \"img/a" + std::to_string(i) + ".png\", \"image_b\": \"img/b" + std::to_string(i) +
                ".png\", \"label\": " + std::to_string(i % 2) + "}\n";
    annotations += "p" + std::to_string(i) + "," + std::to_string(0.2 + 0.1 * i) + "\n";
  }
  dedpo::test::write_file(dir / "pairs.jsonl", manifest);
  dedpo::test::write_file(dir / "g.csv", annotations);
  const fs::path experiment = dir / "dedpo.toml";
  dedpo::test::write_file(
      experiment, "[run]\nname = \"dedpo\"\nseed = 3\nthreads = 1\noutput = \"" + (dir / "runs").string() + "\"\n"
                  "[backbone]\nplugin = \"sdxl\"\npath = \"" + tiny().string() +
                  "\"\nresolution = 16\nsample_steps = 2\ngradient_checkpointing = true\n"
                  "[data]\nplugin = \"pairs_manifest\"\nmanifest = \"" + (dir / "pairs.jsonl").string() + "\"\n"
                  "[annotator]\nplugin = \"file\"\npath = \"" + (dir / "g.csv").string() + "\"\n"
                  "[loss]\nplugin = \"dedpo\"\nbeta = 100.0\n"
                  "[train]\nsteps = 3\nbatch_size = 2\nlr = 1e-4\nlabelled_fraction = 0.5\n");
  auto result = dedpo::test::run_dedpo("run '" + experiment.string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const fs::path run = dir / "runs" / "dedpo-1";
  ASSERT_TRUE(fs::exists(run / "results.json")) << result.output;
  ASSERT_TRUE(fs::exists(run / "weights.pt"));
  EXPECT_EQ(dedpo::test::read_file(run / "config.json"), dedpo::test::read_file(tiny() / "unet" / "config.json"));
  // The run's weights moved away from the pipeline's.
  EXPECT_FALSE(at::equal(dedpo::safetensors::File(run / "weights.pt").get("conv_in.weight"),
                         dedpo::safetensors::File(tiny() / "unet" / "diffusion_pytorch_model.safetensors").get("conv_in.weight")));

  const std::string args = " --prompt 'prompt 1' --seed 2 --out '";
  result = dedpo::test::run_dedpo("sample --run '" + run.string() + "'" + args + (dir / "trained").string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  result = dedpo::test::run_dedpo("sample --run '" + run.string() + "' --reference" + args + (dir / "ref").string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  ASSERT_TRUE(fs::exists(dir / "trained" / "0-0.png")) << result.output;
  EXPECT_EQ(png_size(dir / "trained" / "0-0.png"), std::make_pair(16, 16));
  EXPECT_NE(dedpo::test::read_file(dir / "trained" / "0-0.png"), dedpo::test::read_file(dir / "ref" / "0-0.png"));

  // The same run with bfloat16 weights (float32 masters in the optimiser) under bf16 autocast and
  // DPO on the human labels: the loss goes down from log 2 (model = reference at step 1).
  result = dedpo::test::run_dedpo("run '" + experiment.string() +
                                  "' --set run.name='\"bf16\"' --set train.precision='\"bf16\"'"
                                  " --set train.weights_dtype='\"bfloat16\"' --set loss.plugin='\"dpo\"'"
                                  " --set train.labelled_fraction=1.0 --set train.steps=12 --set train.lr=1e-3 --set train.log_every=1");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const std::vector<double> losses = logged_losses(dir / "runs" / "bf16-1");
  ASSERT_EQ(losses.size(), 12u);
  EXPECT_NEAR(losses.front(), std::log(2.0), 1e-2);
  EXPECT_LT((losses[9] + losses[10] + losses[11]) / 3, (losses[0] + losses[1] + losses[2]) / 3);
}

}  // namespace

