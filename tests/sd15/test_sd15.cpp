// The `sd15` backbone end to end on a tiny random-weight diffusers folder (dedpo_make_tiny_sd),
// loaded through the plugin registry as a run loads it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dedpo/backbone.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/diffusion_backbone.hpp"
#include "dedpo/sd/unet.hpp"
#include "dedpo/sd/vae.hpp"
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

// One scratch folder per test process, removed when the process ends.
fs::path scratch() {
  static const dedpo::test::TempDir dir;
  return dir.path();
}

fs::path make_folder(const std::string& name, const std::string& flags = "") {
  const fs::path folder = scratch() / name;
  if (!fs::exists(folder / "model_index.json")) {
    const std::string command = std::string("\"") + DEDPO_MAKE_TINY_SD + "\" \"" + folder.string() + "\" " + flags + " > /dev/null";
    if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  }
  return folder;
}

fs::path tiny() { return make_folder("tiny"); }

dedpo::PluginRegistry& registry() {
  static dedpo::PluginRegistry* r = [] {
    auto* reg = new dedpo::PluginRegistry();
    reg->load_default_locations();
    return reg;
  }();
  return *r;
}

std::shared_ptr<Backbone> make(const std::string& extra = "", const fs::path& folder = tiny(),
                               const fs::path& initial_weights = {}) {
  auto b = registry().create<Backbone>(
      "sd15", "path = \"" + folder.string() + "\"\nresolution = 16\nsample_steps = 3\n" + extra);
  dedpo::BackboneContext context;
  context.cache_dir = scratch() / "cache";
  context.initial_weights = initial_weights;
  context.seed = 3;
  b->prepare(context);
  return b;
}

dedpo::PairBatch batch(Backbone& b) {
  at::Generator g = gen(11);
  dedpo::PairBatch out;
  out.a = at::randn({2, 4, 8, 8}, g, at::kFloat);
  out.b = at::randn({2, 4, 8, 8}, g, at::kFloat);
  out.condition = b.encode_prompts({"a photo of a cat", "a red dog"});
  return out;
}

dedpo::DenoisingErrors errors(Backbone& b, std::uint64_t seed = 7, bool with_reference = true) {
  at::Generator g = gen(seed);
  return b.denoising_errors(batch(b), g, with_reference);
}

// A few Diffusion-DPO steps with the `dpo` loss plugin and AdamW.
void dpo_steps(Backbone& b, int steps) {
  auto loss = registry().create<dedpo::Loss>("dpo", "");
  std::vector<at::Tensor> params;
  for (const at::Tensor& p : b.model().parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  ASSERT_FALSE(params.empty());
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(1e-3));
  for (int step = 0; step < steps; ++step) {
    at::Generator g = gen(100 + step);
    dedpo::DenoisingErrors e = b.denoising_errors(batch(b), g, true);
    dedpo::PairTerms terms;
    terms.model_err_a = e.model_a;
    terms.model_err_b = e.model_b;
    terms.ref_err_a = e.ref_a;
    terms.ref_err_b = e.ref_b;
    terms.human_label = at::ones({2}, at::kFloat);
    terms.is_labelled = at::ones({2}, at::kBool);
    terms.n_labelled = 2;
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

TEST(Sd15, RegisteredWithOptions) {
  const dedpo::PluginEntry& entry = registry().find(dedpo::PluginKind::backbone, "sd15");
  EXPECT_STREQ(entry.descriptor->name, "sd15");
  EXPECT_THROW(registry().create<Backbone>("sd15", "path = \"x\"\nsampler = \"plms\""), dedpo::Error);
  EXPECT_THROW(registry().create<Backbone>("sd15", "path = \"x\"\ndtype = \"float16\""), dedpo::Error);
}

TEST(Sd15, PromptsAndErrorsAtStepZero) {
  auto b = make();
  const at::Tensor c = b->encode_prompts({"a photo of a cat", "a red dog", "a photo of a cat"});
  ASSERT_EQ(c.sizes(), (at::IntArrayRef{3, 77, 32}));
  EXPECT_TRUE(at::equal(c[0], c[2]));
  EXPECT_FALSE(at::equal(c[0], c[1]));
  const dedpo::DenoisingErrors e = errors(*b);
  ASSERT_EQ(e.model_a.sizes(), (at::IntArrayRef{2}));
  EXPECT_TRUE(at::isfinite(e.model_a).all().item<bool>());
  EXPECT_TRUE(at::isfinite(e.model_b).all().item<bool>());
  expect_close(e.ref_a, e.model_a);
  expect_close(e.ref_b, e.model_b);
  EXPECT_FALSE(e.ref_a.requires_grad());
  EXPECT_TRUE(e.model_a.requires_grad());
  // Same generator state, same draws.
  expect_close(errors(*b).model_a, e.model_a);
  at::Generator g = gen(5);
  const at::Tensor loss = b->denoising_loss(batch(*b).a, batch(*b).condition, g);
  ASSERT_EQ(loss.sizes(), (at::IntArrayRef{2}));
  EXPECT_TRUE(at::isfinite(loss).all().item<bool>());
}

TEST(Sd15, ClipSkipChangesConditioning) {
  auto a = make();
  auto b = make("clip_skip = 1");
  EXPECT_FALSE(at::allclose(a->encode_prompts({"a dog"}), b->encode_prompts({"a dog"})));
}

// sd15's own text path (final layer norm after clip_skip) with a bf16 text encoder: within 2%
// (bf16's 8-bit mantissa rounds each value by <= 0.2%), rows in float32.
TEST(Sd15, Bfloat16TextEncoderAgreesWithFloat32) {
  auto f32 = make("clip_skip = 1");
  auto bf16 = make("clip_skip = 1\nfrozen_dtype = \"bfloat16\"");
  const at::Tensor rows = bf16->encode_prompts({"a dog"}), rows_f32 = f32->encode_prompts({"a dog"});
  ASSERT_EQ(rows.scalar_type(), at::kFloat);
  EXPECT_FALSE(at::equal(rows, rows_f32));
  EXPECT_LT((rows - rows_f32).norm().item<double>() / rows_f32.norm().item<double>(), 2e-2);
}

TEST(Sd15, DpoStepsMoveModelNotReferenceAndSaveReloads) {
  auto b = make();
  const dedpo::DenoisingErrors before = errors(*b);
  const auto params = snapshot(b->model());
  dpo_steps(*b, 3);
  EXPECT_TRUE(changed(b->model(), params));
  const dedpo::DenoisingErrors after = errors(*b);
  expect_close(after.ref_a, before.ref_a);
  expect_close(after.ref_b, before.ref_b);
  EXPECT_FALSE(at::allclose(after.model_a, before.model_a, 1e-6, 1e-6));

  const fs::path file = scratch() / "full" / "diffusion_pytorch_model.safetensors";
  b->save_weights(file);
  ASSERT_TRUE(fs::exists(file));
  EXPECT_TRUE(dedpo::safetensors::File(file).contains("conv_in.weight"));
  // The UNet's config.json beside the weights: the folder is a diffusers UNet folder.
  EXPECT_EQ(dedpo::test::read_file(file.parent_path() / "config.json"),
            dedpo::test::read_file(tiny() / "unet" / "config.json"));
  auto reloaded = make("", tiny(), file);
  const dedpo::DenoisingErrors again = errors(*reloaded);
  expect_close(again.model_a, after.model_a);
  expect_close(again.model_b, after.model_b);
  expect_close(again.ref_a, after.model_a);  // the initial weights are the new reference
}

TEST(Sd15, SampleAndWritePng) {
  for (const std::string sampler : {"ddim", "euler"}) {
    auto b = make("sampler = \"" + sampler + "\"\nguidance_scale = 3.0");
    const at::Tensor cond = b->encode_prompts({"a photo of a cat", "a red dog"});
    at::Generator g1 = gen(21), g2 = gen(21);
    const at::Tensor x = b->sample(cond, g1, false);
    const at::Tensor r = b->sample(cond, g2, true);
    ASSERT_EQ(x.sizes(), (at::IntArrayRef{2, 4, 8, 8})) << sampler;
    EXPECT_TRUE(at::isfinite(x).all().item<bool>()) << sampler;
    expect_close(x, r);

    const fs::path out = scratch() / ("png_" + sampler);
    b->write_samples(x, {out / "img_000.png", out / "img_001.png"});
    for (const char* name : {"img_000.png", "img_001.png"}) {
      ASSERT_TRUE(fs::exists(out / name)) << (out / name);
      EXPECT_EQ(png_size(out / name), std::make_pair(16, 16));
    }
    EXPECT_THROW(b->write_samples(x, {out / "only_one.png"}), dedpo::Error);
  }
}

// `dedpo sample` end to end: an experiment naming the tiny folder, and a run folder.
class Sd15Sample : public testing::Test {
 protected:
  static fs::path dir() { return scratch() / "cli"; }
  static fs::path experiment() {
    const fs::path file = dir() / "exp.toml";
    if (!fs::exists(file)) {
      dedpo::test::write_file(file, "[run]\nname = \"s\"\noutput = \"runs\"\nthreads = 1\n"
                                    "[backbone]\nplugin = \"sd15\"\npath = \"" + tiny().string() +
                                    "\"\nresolution = 16\nsample_steps = 2\nguidance_scale = 2.0\n"
                                    "[data]\nplugin = \"toy_samples\"\n"
                                    "[train]\nobjective = \"denoising\"\n");
    }
    return file;
  }
  static dedpo::test::CommandResult sample(const std::string& arguments) {
    return dedpo::test::run_dedpo("sample " + arguments);
  }
  static std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }
};

TEST_F(Sd15Sample, WritesNPngsPerPromptReproducibly) {
  const std::string common = quoted(experiment()) + " --prompt 'a photo of a cat' --prompt 'a red dog' --n 2 ";
  const fs::path a = dir() / "a", b = dir() / "b", c = dir() / "c";
  auto result = sample(common + "--seed 5 --out " + quoted(a));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const char* name : {"0-0.png", "0-1.png", "1-0.png", "1-1.png"}) {
    ASSERT_TRUE(fs::exists(a / name)) << name << "\n" << result.output;
    EXPECT_EQ(png_size(a / name), std::make_pair(16, 16)) << name;
    EXPECT_THAT(result.output, testing::HasSubstr((a / name).string()));
  }
  EXPECT_FALSE(fs::exists(a / "2-0.png"));
  EXPECT_FALSE(fs::exists(a / "0-2.png"));
  result = sample(common + "--seed 5 --out " + quoted(b));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  result = sample(common + "--seed 6 --out " + quoted(c));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  for (const char* name : {"0-0.png", "0-1.png", "1-0.png", "1-1.png"}) {
    EXPECT_EQ(dedpo::test::read_file(a / name), dedpo::test::read_file(b / name)) << name;
    EXPECT_NE(dedpo::test::read_file(a / name), dedpo::test::read_file(c / name)) << name;
  }
  EXPECT_NE(dedpo::test::read_file(a / "0-0.png"), dedpo::test::read_file(a / "0-1.png"));

  // Sampler options through --set, prompts from a file.
  const fs::path prompts = dir() / "prompts.txt";
  dedpo::test::write_file(prompts, "a photo of a cat\n\na red dog\n");
  const fs::path d = dir() / "d";
  result = sample(quoted(experiment()) + " --set backbone.sampler=euler --set backbone.resolution=8 --prompts-file " +
                  quoted(prompts) + " --out " + quoted(d));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(png_size(d / "1-0.png"), std::make_pair(8, 8));
  EXPECT_FALSE(fs::exists(d / "2-0.png"));
}

TEST_F(Sd15Sample, RunFolderSamplesTrainedWeightsAndItsReference) {
  const fs::path run = dir() / "run-1";
  fs::create_directories(run);
  fs::copy_file(experiment(), run / "config.toml", fs::copy_options::overwrite_existing);
  const std::string args = " --prompt 'a red dog' --seed 3 --out ";
  auto result = sample("--run " + quoted(run) + args + quoted(dir() / "x"));
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_THAT(result.output, testing::HasSubstr("weights.pt"));

  auto b = make();
  dpo_steps(*b, 3);
  b->save_weights(run / "weights.pt");
  const fs::path base = dir() / "base", trained = dir() / "trained", ref = dir() / "ref";
  result = sample(quoted(experiment()) + args + quoted(base));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  result = sample("--run " + quoted(run) + args + quoted(trained));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  result = sample("--run " + quoted(run) + " --reference" + args + quoted(ref));
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(dedpo::test::read_file(base / "0-0.png"), dedpo::test::read_file(trained / "0-0.png"));
  EXPECT_EQ(dedpo::test::read_file(base / "0-0.png"), dedpo::test::read_file(ref / "0-0.png"));
}

TEST_F(Sd15Sample, UsageErrors) {
  const std::string exp = quoted(experiment());
  const std::string out = " --out " + quoted(dir() / "never");
  auto result = sample(exp + out);
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, testing::HasSubstr("no prompt"));
  result = sample(exp + " --run " + quoted(dir()) + " --prompt cat" + out);
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, testing::HasSubstr("not both"));
  result = sample(exp + " --prompt cat");
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, testing::HasSubstr("missing --out"));
  result = sample("--prompt cat" + out);
  EXPECT_EQ(result.exit_code, 2);
  EXPECT_THAT(result.output, testing::HasSubstr("EXP.toml or --run"));
  result = sample(exp + " --prompt cat --n 0" + out);
  EXPECT_EQ(result.exit_code, 2);
  result = sample("--run " + quoted(dir() / "nothing") + " --prompt cat" + out);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, testing::HasSubstr("not a run folder"));
  // [init] experiment: trained weights come from a run folder.
  result = sample(exp + " --set init.experiment=" + quoted(experiment()) + " --prompt cat" + out);
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, testing::HasSubstr("--run RUN_DIR"));
  EXPECT_FALSE(fs::exists(dir() / "never"));
}

TEST(Sd15, LoraReferenceIsBaseAndAdaptersStartAtZero) {
  auto full = make();
  auto lora = make("lora_rank = 2\nlora_alpha = 4.0");
  std::size_t n_trainable = 0;
  for (const auto& item : lora->model().named_parameters()) {
    EXPECT_TRUE(item.value().requires_grad()) << item.key();
    EXPECT_NE(item.key().find(".lora_"), std::string::npos) << item.key();
    ++n_trainable;
  }
  // Tiny UNet: 4 transformer blocks (down 1, mid 1, up 2) × 2 attentions × 4 targets × (A, B).
  EXPECT_EQ(n_trainable, 4u * 2 * 4 * 2);
  const dedpo::DenoisingErrors base = errors(*full);
  const dedpo::DenoisingErrors e = errors(*lora);
  expect_close(e.ref_a, base.model_a);
  expect_close(e.ref_b, base.model_b);
  expect_close(e.model_a, base.model_a);
  expect_close(e.model_b, base.model_b);

  dpo_steps(*lora, 3);
  const dedpo::DenoisingErrors after = errors(*lora);
  expect_close(after.ref_a, base.model_a);
  EXPECT_FALSE(at::allclose(after.model_a, base.model_a, 1e-6, 1e-6));

  const fs::path file = scratch() / "lora" / "diffusion_pytorch_model.safetensors";
  lora->save_weights(file);
  const fs::path adapters = scratch() / "lora" / "diffusion_pytorch_model_lora.safetensors";
  ASSERT_TRUE(fs::exists(adapters));
  dedpo::safetensors::File lf(adapters);
  EXPECT_EQ(lf.keys().size(), n_trainable);
  EXPECT_TRUE(lf.contains("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.weight"));
  auto merged = make("", tiny(), file);
  expect_close(errors(*merged).model_a, after.model_a, 1e-5);
}

// A LoRA backbone (rank 2, alpha 3) with lora_B away from zero, and the adapters file it saves in `format`.
std::pair<std::shared_ptr<Backbone>, fs::path> saved_lora(const std::string& format) {
  auto b = make("lora_rank = 2\nlora_alpha = 3.0\nlora_format = \"" + format + "\"");
  dedpo::test::randomize_lora_up(*b, 5);
  const fs::path file = scratch() / ("lora_" + format) / "weights.safetensors";
  b->save_weights(file);
  return {b, dedpo::sd::DiffusionBackbone::lora_weights_path(file)};
}

TEST(Sd15, LoraFilesOfBothFormatsRoundTripExactly) {
  for (const std::string format : {"diffusers", "kohya"}) {
    SCOPED_TRACE(format);
    const auto [trained, adapters] = saved_lora(format);
    const dedpo::safetensors::File saved(adapters);
    if (format == "diffusers") {
      EXPECT_TRUE(saved.contains("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.weight"));
      const auto config = nlohmann::json::parse(saved.metadata().at("lora_adapter_metadata"));
      EXPECT_EQ(config.at("unet.r"), 2);
      EXPECT_EQ(config.at("unet.lora_alpha"), 3.0);
    } else {
      const std::string module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0";
      EXPECT_TRUE(saved.contains(module + ".lora_down.weight"));
      EXPECT_EQ(saved.get(module + ".alpha").item<float>(), 3.0f);
    }
    // The format is told from the keys, whatever lora_format says.
    auto loaded = make("lora_rank = 2\nlora_alpha = 3.0\nlora_init = \"" + adapters.string() + "\"");
    dedpo::test::expect_same_adapters(*loaded, *trained);
    const dedpo::DenoisingErrors before = errors(*trained), after = errors(*loaded);
    EXPECT_TRUE(at::equal(after.model_a, before.model_a));
    EXPECT_FALSE(at::allclose(after.model_a, after.ref_a, 1e-5, 1e-5));  // the adapters count
  }
}

TEST(Sd15, BadLoraOptionsAndFilesAreNamed) {
  auto error = [](const std::string& extra) {
    try {
      make(extra);
    } catch (const dedpo::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  using testing::AllOf;
  using testing::HasSubstr;
  EXPECT_THAT(error("lora_rank = 2\nlora_format = \"peft\""),
              AllOf(HasSubstr("lora_format"), HasSubstr("\"diffusers\", \"kohya\""), HasSubstr("\"peft\"")));
  EXPECT_THAT(error("lora_init = \"a.safetensors\""), AllOf(HasSubstr("lora_init"), HasSubstr("lora_rank > 0")));
  EXPECT_THAT(error("lora_rank = 2\nlora_init = \"" + (scratch() / "none.safetensors").string() + "\""),
              AllOf(HasSubstr("lora_init"), HasSubstr("none.safetensors")));
  const fs::path kohya = saved_lora("kohya").second, diffusers = saved_lora("diffusers").second;
  const std::string init_kohya = "\nlora_init = \"" + kohya.string() + "\"";
  const std::string init_diffusers = "\nlora_init = \"" + diffusers.string() + "\"";
  EXPECT_THAT(error("lora_rank = 4\nlora_alpha = 3.0" + init_kohya),
              AllOf(HasSubstr(kohya.string()), HasSubstr("has rank 2"), HasSubstr("lora_rank = 4")));
  EXPECT_THAT(error("lora_rank = 2" + init_diffusers),
              AllOf(HasSubstr(diffusers.string()), HasSubstr("has alpha 3.0"), HasSubstr("lora_alpha = 2.0")));
  EXPECT_THAT(error("lora_rank = 2\nlora_alpha = 4.0" + init_kohya), AllOf(HasSubstr("has alpha 3.0"), HasSubstr(".alpha")));
  EXPECT_THAT(error("lora_rank = 2\nlora_alpha = 3.0\nlora_targets = \"to_q,to_k,to_v,to_out.0,ff.net.2\"" + init_kohya),
              AllOf(HasSubstr("kohya format"), HasSubstr("missing keys"),
                    HasSubstr("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2.lora_down.weight")));
  EXPECT_THAT(error("lora_rank = 2\nlora_alpha = 3.0\nlora_targets = \"to_q\"" + init_diffusers),
              AllOf(HasSubstr("diffusers format"), HasSubstr("unexpected keys"),
                    HasSubstr("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.lora_A.weight")));
  const fs::path not_lora = kohya.parent_path() / "weights.safetensors";  // the merged UNet beside it
  EXPECT_THAT(error("lora_rank = 2\nlora_alpha = 3.0\nlora_init = \"" + not_lora.string() + "\""),
              AllOf(HasSubstr(not_lora.string()), HasSubstr("is not a LoRA file"), HasSubstr(".weight'")));
  EXPECT_EQ(error("lora_rank = 2\nlora_alpha = 3.0" + init_kohya), "(no error)");
}

TEST(Sd15, GradientCheckpointingGivesTheSameGradients) {
  std::map<std::string, at::Tensor> grads;
  for (const char* option : {"gradient_checkpointing = false", "gradient_checkpointing = true"}) {
    auto b = make(option);
    EXPECT_EQ(dynamic_cast<dedpo::sd::DiffusionBackbone&>(*b).unet()->gradient_checkpointing(),
              std::string(option).find("true") != std::string::npos);
    const dedpo::DenoisingErrors e = errors(*b);
    (e.model_a.sum() - e.model_b.sum()).backward();
    for (const auto& item : b->model().named_parameters()) {
      ASSERT_TRUE(item.value().grad().defined()) << option << " " << item.key();
      auto [it, fresh] = grads.emplace(item.key(), item.value().grad().clone());
      if (!fresh) EXPECT_TRUE(at::allclose(it->second, item.value().grad(), 1e-5, 1e-6)) << item.key();
    }
  }
}

TEST(Sd15, VPredictionAndBfloat16Run) {
  auto v = make("prediction_type = \"v_prediction\"");
  auto eps = make();
  const dedpo::DenoisingErrors ev = errors(*v), ee = errors(*eps);
  EXPECT_TRUE(at::isfinite(ev.model_a).all().item<bool>());
  EXPECT_FALSE(at::allclose(ev.model_a, ee.model_a));
  auto bf = make("dtype = \"bfloat16\"");
  const dedpo::DenoisingErrors eb = errors(*bf);
  EXPECT_TRUE(at::isfinite(eb.model_a).all().item<bool>());
  expect_close(eb.model_a, ee.model_a, 0.1);
}

TEST(Sd15, CorruptedFolderNamesMissingAndUnexpectedKeys) {
  const fs::path folder = scratch() / "corrupt";
  fs::remove_all(folder);
  fs::copy(tiny(), folder, fs::copy_options::recursive);
  const fs::path unet = folder / "unet" / "diffusion_pytorch_model.safetensors";
  auto tensors = dedpo::safetensors::load(unet);
  tensors.erase("conv_in.weight");
  tensors["bogus.weight"] = at::zeros({2});
  dedpo::safetensors::save(unet, tensors);
  try {
    make("", folder);
    FAIL() << "expected dedpo::Error";
  } catch (const dedpo::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("UNet"), std::string::npos) << message;
    EXPECT_NE(message.find("missing"), std::string::npos) << message;
    EXPECT_NE(message.find("conv_in.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("unexpected"), std::string::npos) << message;
    EXPECT_NE(message.find("bogus.weight"), std::string::npos) << message;
  }
  fs::remove(folder / "model_index.json");
  EXPECT_THROW(make("", folder), dedpo::Error);
}

}  // namespace

namespace {

// A copy of the tiny folder whose UNet weights `change` edits.
fs::path folder_with_unet(const std::string& name,
                          const std::function<void(std::map<std::string, at::Tensor>&)>& change) {
  const fs::path folder = scratch() / name;
  fs::remove_all(folder);
  fs::copy(tiny(), folder, fs::copy_options::recursive);
  const fs::path unet = folder / "unet" / "diffusion_pytorch_model.safetensors";
  auto tensors = dedpo::safetensors::load(unet);
  change(tensors);
  dedpo::safetensors::save(unet, tensors);
  return folder;
}

// A copy of the tiny folder whose UNet config.json `change` edits.
fs::path folder_with_unet_config(const std::string& name, const std::function<void(nlohmann::json&)>& change) {
  const fs::path folder = scratch() / name;
  fs::remove_all(folder);
  fs::copy(tiny(), folder, fs::copy_options::recursive);
  const fs::path config = folder / "unet" / "config.json";
  nlohmann::json json = nlohmann::json::parse(dedpo::test::read_file(config));
  change(json);
  dedpo::test::write_file(config, json.dump(2));
  return folder;
}

// The message of the dedpo::Error that preparing the backbone on `folder` throws.
std::string prepare_error(const fs::path& folder) {
  try {
    make("", folder);
  } catch (const dedpo::Error& e) {
    return e.what();
  }
  return "(prepared without an error)";
}

}  // namespace

TEST(Sd15, WeightsStoredInAnIntegerDtypeAreRefused) {
  const fs::path folder = folder_with_unet("int32", [](auto& tensors) {
    tensors["conv_in.weight"] = tensors["conv_in.weight"].mul(100).to(at::kInt);
  });
  const std::string message = prepare_error(folder);
  EXPECT_THAT(message, testing::HasSubstr((folder / "unet" / "diffusion_pytorch_model.safetensors").string()));
  EXPECT_THAT(message, testing::HasSubstr("tensor 'conv_in.weight' is stored as I32, but the model's is F32"));
}

TEST(Sd15, Float16WeightsLoadWithTheCastStated) {
  std::size_t count = 0;
  const fs::path folder = folder_with_unet("float16", [&](auto& tensors) {
    for (auto& [key, tensor] : tensors) tensor = tensor.to(at::kHalf);
    count = tensors.size();
  });
  testing::internal::CaptureStderr();
  auto b = make("", folder);
  const std::string warnings = testing::internal::GetCapturedStderr();
  const std::string unet_file = (folder / "unet" / "diffusion_pytorch_model.safetensors").string();
  EXPECT_THAT(warnings, testing::HasSubstr("warning: safetensors file '" + unet_file +
                                           "': converted to the model's dtype: F16 to F32 (" +
                                           std::to_string(count) + " tensors)\n"));
  // Once for the file, not per tensor.
  EXPECT_EQ(warnings.find(unet_file), warnings.rfind(unet_file)) << warnings;
  const auto stored = dedpo::safetensors::load(folder / "unet" / "diffusion_pytorch_model.safetensors");
  auto loaded = b->model().named_parameters();
  EXPECT_TRUE(at::equal(loaded["conv_in.weight"], stored.at("conv_in.weight").to(at::kFloat)));
}

TEST(Sd15, NonFiniteWeightsAreRefusedUnlessTheCheckIsOff) {
  const fs::path folder = folder_with_unet("nan", [](auto& tensors) {
    tensors["conv_in.weight"] = at::full_like(tensors["conv_in.weight"], std::nan(""));
  });
  const std::int64_t count = dedpo::safetensors::load(folder / "unet" / "diffusion_pytorch_model.safetensors")
                                 .at("conv_in.weight")
                                 .numel();
  const std::string message = prepare_error(folder);
  EXPECT_THAT(message, testing::HasSubstr("sd15: loading the UNet from "));
  EXPECT_THAT(message, testing::HasSubstr(fmt::format("tensor 'conv_in.weight' holds {} non-finite values", count)));
  // check_weights = false: loaded as they are (for speed; the caller vouches for the file).
  auto b = make("check_weights = false", folder);
  EXPECT_TRUE(at::isnan(b->model().named_parameters()["conv_in.weight"]).all().item<bool>());
}

TEST(Sd15, AbsurdConfigSizesAreRefusedBeforeAllocating) {
  // Channels 10^5 times the tiny model's: about 10^14 parameters, which no machine holds; built,
  // the UNet would allocate until it failed.
  const fs::path folder = folder_with_unet_config("huge", [](nlohmann::json& config) {
    for (auto& channels : config["block_out_channels"]) channels = channels.get<std::int64_t>() * 100000;
  });
  const std::string message = prepare_error(folder);
  EXPECT_THAT(message, testing::HasSubstr("config '" + (folder / "unet" / "config.json").string() +
                                          "': describes a UNet of at least "));
  EXPECT_THAT(message, testing::HasSubstr("GiB in float32), more than this machine's"));
}

TEST(Sd15, ParameterLowerBoundsHoldForTheTinyModels) {
  auto count = [](torch::nn::Module& module) {
    double n = 0;
    for (const at::Tensor& p : module.parameters()) n += static_cast<double>(p.numel());
    return n;
  };
  const auto unet_config = dedpo::sd::UNet2DConditionConfig::from_file(tiny() / "unet" / "config.json");
  dedpo::sd::UNet2DConditionModel unet(unet_config);
  const auto vae_config = dedpo::sd::AutoencoderKLConfig::from_file(tiny() / "vae" / "config.json");
  dedpo::sd::AutoencoderKL vae(vae_config);
  const auto clip_config = dedpo::sd::ClipTextConfig::from_file(tiny() / "text_encoder" / "config.json");
  dedpo::sd::ClipTextModel clip(clip_config);
  // A bound, and a useful one: a large share of the weights even in these tiny models, where
  // biases, norms and embeddings weigh more than at real sizes.
  for (const auto& [bound, actual] : {std::pair{unet_config.parameter_lower_bound(), count(*unet)},
                                      std::pair{vae_config.parameter_lower_bound(), count(*vae)},
                                      std::pair{clip_config.parameter_lower_bound(), count(*clip)}}) {
    EXPECT_LE(bound, actual);
    EXPECT_GE(bound, actual / 8);
  }
}

TEST(Sd15, LibTorchErrorsReachTheUserAsOneLineWithWhatWasBeingDone) {
  // A negative size passes the config reader and fails inside LibTorch when the UNet is built.
  const fs::path folder = folder_with_unet_config("negative", [](nlohmann::json& config) {
    config["time_embedding_dim"] = -4;
  });
  const fs::path experiment = scratch() / "negative.toml";
  dedpo::test::write_file(experiment, "[run]\nname = \"n\"\noutput = \"runs\"\nthreads = 1\n"
                                      "[backbone]\nplugin = \"sd15\"\npath = \"" + folder.string() +
                                      "\"\nresolution = 16\n[data]\nplugin = \"toy_samples\"\n"
                                      "[train]\nobjective = \"denoising\"\n");
  const auto result = dedpo::test::run_dedpo("sample '" + experiment.string() + "' --prompt cat --out '" +
                                             (scratch() / "never").string() + "'");
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_THAT(result.output, testing::HasSubstr("error: sd15: building the UNet of " +
                                                (folder / "unet" / "config.json").string() + ": "));
  EXPECT_THAT(result.output, testing::HasSubstr("negative dimension"));
  EXPECT_THAT(result.output, testing::Not(testing::HasSubstr("Exception raised from")));
  // Besides the stated casts of the tiny model's bfloat16 text encoder, one line: the error.
  std::istringstream lines(result.output);
  int errors = 0;
  for (std::string line; std::getline(lines, line);) {
    EXPECT_TRUE(line.starts_with("warning: ") || line.starts_with("error: ")) << line;
    errors += line.starts_with("error: ") ? 1 : 0;
  }
  EXPECT_EQ(errors, 1) << result.output;
}
