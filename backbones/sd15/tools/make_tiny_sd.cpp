// dedpo_make_tiny_sd <folder> [--seed N] [--prediction-type epsilon|v_prediction] [--layout sd15|sdxl]
//
// Writes a tiny diffusers folder with random weights, for tests and smoke runs on a CPU.
//
// --layout sd15 (default), a StableDiffusionPipeline: model_index.json; unet/ (2 levels, 32/64
// channels), vae/ (2 levels, scale factor 2), text_encoder/ (2 layers, hidden 32), tokenizer/
// (byte-level vocabulary and a few merges), scheduler/ (DDIM config as SD1.5's).
//
// --layout sdxl, a StableDiffusionXLPipeline as diffusers lays it out: model_index.json (with
// force_zeros_for_empty_prompt); unet/ in the SDXL layout (DownBlock2D first, transformer layers
// per block (1, 2), heads per block, linear projections, addition_embed_type "text_time");
// text_encoder/ (CLIPTextModel, hidden 32), text_encoder_2/ (CLIPTextModelWithProjection, hidden
// 48, projection 40, gelu), tokenizer/ and tokenizer_2/ (the second pads with "!"), vae/ (SDXL's
// scaling factor), scheduler/ (EulerDiscreteScheduler config as SDXL's). Hidden sizes differ on
// purpose, so a swapped encoder or a wrong concatenation cannot pass unnoticed.
//
// Weights: UNet float32, VAE float16, text encoders bfloat16, so loaders meet every dtype. A 16×16
// image has 8×8×4 latents.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/unet.hpp"
#include "dedpo/sd/vae.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

void write_json(const fs::path& path, const json& value) { write_text(path, value.dump(2) + "\n"); }

void write_weights(const fs::path& path, torch::nn::Module& module, at::ScalarType dtype) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : module.named_parameters()) tensors.emplace_back(item.key(), item.value().detach().to(dtype));
  for (const auto& item : module.named_buffers()) {
    const at::Tensor& b = item.value();
    tensors.emplace_back(item.key(), b.is_floating_point() ? b.to(dtype) : b);
  }
  dedpo::safetensors::save(path, tensors, {{"format", "pt"}});
}

// GPT-2's bytes_to_unicode as UTF-8 strings.
std::vector<std::string> byte_symbols() {
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
  std::vector<int> code(256, -1);
  for (int b : printable) code[b] = b;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    if (code[b] < 0) code[b] = next++;
  }
  std::vector<std::string> out;
  for (int b = 0; b < 256; ++b) {
    const int cp = code[b];
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

// Tokenizer: CLIP's layout (bytes, bytes + </w>, merges, specials); returns the vocabulary size.
int64_t write_tokenizer(const fs::path& folder, const std::string& pad_token) {
  const std::vector<std::string> bytes = byte_symbols();
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "t</w>"}, {"c", "at</w>"}, {"d", "o"}, {"do", "g</w>"}, {"o", "f</w>"}, {"p", "h"},
      {"ph", "o"}, {"pho", "t"}, {"phot", "o</w>"}, {"r", "e"}, {"re", "d</w>"}};
  json vocab = json::object();
  int64_t id = 0;
  for (const auto& b : bytes) vocab[b] = id++;
  for (const auto& b : bytes) vocab[b + "</w>"] = id++;
  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = id++;
    merges_txt += l + " " + r + "\n";
  }
  vocab["<|startoftext|>"] = id++;
  vocab["<|endoftext|>"] = id++;
  write_json(folder / "vocab.json", vocab);
  write_text(folder / "merges.txt", merges_txt);
  write_json(folder / "tokenizer_config.json",
             {{"model_max_length", 77},
              {"tokenizer_class", "CLIPTokenizer"},
              {"bos_token", "<|startoftext|>"},
              {"eos_token", "<|endoftext|>"},
              {"unk_token", "<|endoftext|>"},
              {"pad_token", pad_token},
              {"do_lower_case", true}});
  write_json(folder / "special_tokens_map.json",
             {{"bos_token", "<|startoftext|>"},
              {"eos_token", "<|endoftext|>"},
              {"unk_token", "<|endoftext|>"},
              {"pad_token", pad_token}});
  return id;
}

json clip_config(const std::string& architecture, int64_t hidden, int64_t projection, const std::string& act,
                 int64_t vocab_size) {
  return {{"_name_or_path", "tiny"},
          {"architectures", {architecture}},
          {"model_type", "clip_text_model"},
          {"attention_dropout", 0.0},
          {"bos_token_id", 0},
          {"eos_token_id", 2},
          {"pad_token_id", 1},
          {"hidden_act", act},
          {"hidden_size", hidden},
          {"initializer_factor", 1.0},
          {"initializer_range", 0.02},
          {"intermediate_size", 2 * hidden},
          {"layer_norm_eps", 1e-05},
          {"max_position_embeddings", 77},
          {"num_attention_heads", 2},
          {"num_hidden_layers", 2},
          {"projection_dim", projection},
          {"torch_dtype", "bfloat16"},
          {"transformers_version", "4.44.0"},
          {"vocab_size", vocab_size}};
}

void write_unet(const fs::path& folder, const json& config) {
  write_json(folder / "config.json", config);
  dedpo::sd::UNet2DConditionModel unet(dedpo::sd::UNet2DConditionConfig::from_json(config.dump()));
  write_weights(folder / "diffusion_pytorch_model.safetensors", *unet, at::kFloat);
}

void write_vae(const fs::path& folder, double scaling_factor) {
  const json config = {{"_class_name", "AutoencoderKL"},
                       {"_diffusers_version", "0.31.0"},
                       {"act_fn", "silu"},
                       {"block_out_channels", {8, 16}},
                       {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                       {"in_channels", 3},
                       {"latent_channels", 4},
                       {"layers_per_block", 1},
                       {"norm_num_groups", 4},
                       {"out_channels", 3},
                       {"sample_size", 16},
                       {"scaling_factor", scaling_factor},
                       {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}}};
  write_json(folder / "config.json", config);
  dedpo::sd::AutoencoderKL vae(dedpo::sd::AutoencoderKLConfig::from_json(config.dump()));
  write_weights(folder / "diffusion_pytorch_model.safetensors", *vae, at::kHalf);
}

void write_sd15(const fs::path& folder, const std::string& prediction) {
  write_json(folder / "model_index.json",
             {{"_class_name", "StableDiffusionPipeline"},
              {"_diffusers_version", "0.31.0"},
              {"feature_extractor", {nullptr, nullptr}},
              {"image_encoder", {nullptr, nullptr}},
              {"requires_safety_checker", false},
              {"safety_checker", {nullptr, nullptr}},
              {"scheduler", {"diffusers", "DDIMScheduler"}},
              {"text_encoder", {"transformers", "CLIPTextModel"}},
              {"tokenizer", {"transformers", "CLIPTokenizer"}},
              {"unet", {"diffusers", "UNet2DConditionModel"}},
              {"vae", {"diffusers", "AutoencoderKL"}}});
  const int64_t vocab_size = write_tokenizer(folder / "tokenizer", "<|endoftext|>");
  const json text_config = clip_config("CLIPTextModel", 32, 32, "quick_gelu", vocab_size);
  write_json(folder / "text_encoder" / "config.json", text_config);
  dedpo::sd::ClipTextModel clip(dedpo::sd::ClipTextConfig::from_json(text_config.dump()));
  write_weights(folder / "text_encoder" / "model.safetensors", *clip, at::kBFloat16);

  write_unet(folder / "unet", {{"_class_name", "UNet2DConditionModel"},
                               {"_diffusers_version", "0.31.0"},
                               {"act_fn", "silu"},
                               {"attention_head_dim", 2},
                               {"block_out_channels", {32, 64}},
                               {"center_input_sample", false},
                               {"cross_attention_dim", 32},
                               {"down_block_types", {"CrossAttnDownBlock2D", "DownBlock2D"}},
                               {"downsample_padding", 1},
                               {"flip_sin_to_cos", true},
                               {"freq_shift", 0},
                               {"in_channels", 4},
                               {"layers_per_block", 1},
                               {"mid_block_scale_factor", 1},
                               {"norm_eps", 1e-05},
                               {"norm_num_groups", 8},
                               {"out_channels", 4},
                               {"sample_size", 8},
                               {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D"}},
                               {"use_linear_projection", false}});
  write_vae(folder / "vae", 0.18215);
  write_json(folder / "scheduler" / "scheduler_config.json",
             {{"_class_name", "DDIMScheduler"},
              {"_diffusers_version", "0.31.0"},
              {"beta_end", 0.012},
              {"beta_schedule", "scaled_linear"},
              {"beta_start", 0.00085},
              {"clip_sample", false},
              {"num_train_timesteps", 1000},
              {"prediction_type", prediction},
              {"set_alpha_to_one", false},
              {"steps_offset", 1},
              {"timestep_spacing", "leading"}});
}

void write_sdxl(const fs::path& folder, const std::string& prediction) {
  write_json(folder / "model_index.json",
             {{"_class_name", "StableDiffusionXLPipeline"},
              {"_diffusers_version", "0.31.0"},
              {"feature_extractor", {nullptr, nullptr}},
              {"force_zeros_for_empty_prompt", true},
              {"image_encoder", {nullptr, nullptr}},
              {"scheduler", {"diffusers", "EulerDiscreteScheduler"}},
              {"text_encoder", {"transformers", "CLIPTextModel"}},
              {"text_encoder_2", {"transformers", "CLIPTextModelWithProjection"}},
              {"tokenizer", {"transformers", "CLIPTokenizer"}},
              {"tokenizer_2", {"transformers", "CLIPTokenizer"}},
              {"unet", {"diffusers", "UNet2DConditionModel"}},
              {"vae", {"diffusers", "AutoencoderKL"}}});
  const int64_t vocab_size = write_tokenizer(folder / "tokenizer", "<|endoftext|>");
  write_tokenizer(folder / "tokenizer_2", "!");
  const json text_config = clip_config("CLIPTextModel", 32, 32, "quick_gelu", vocab_size);
  write_json(folder / "text_encoder" / "config.json", text_config);
  dedpo::sd::ClipTextModel clip(dedpo::sd::ClipTextConfig::from_json(text_config.dump()));
  write_weights(folder / "text_encoder" / "model.safetensors", *clip, at::kBFloat16);
  const json text_config_2 = clip_config("CLIPTextModelWithProjection", 48, 40, "gelu", vocab_size);
  write_json(folder / "text_encoder_2" / "config.json", text_config_2);
  dedpo::sd::ClipTextModelWithProjection clip_2(dedpo::sd::ClipTextConfig::from_json(text_config_2.dump()));
  write_weights(folder / "text_encoder_2" / "model.safetensors", *clip_2, at::kBFloat16);

  const int64_t addition_time_embed_dim = 8;
  write_unet(folder / "unet", {{"_class_name", "UNet2DConditionModel"},
                               {"_diffusers_version", "0.31.0"},
                               {"act_fn", "silu"},
                               {"addition_embed_type", "text_time"},
                               {"addition_embed_type_num_heads", 64},
                               {"addition_time_embed_dim", addition_time_embed_dim},
                               {"attention_head_dim", {2, 4}},
                               {"block_out_channels", {32, 64}},
                               {"center_input_sample", false},
                               {"cross_attention_dim", 32 + 48},
                               {"down_block_types", {"DownBlock2D", "CrossAttnDownBlock2D"}},
                               {"downsample_padding", 1},
                               {"flip_sin_to_cos", true},
                               {"freq_shift", 0},
                               {"in_channels", 4},
                               {"layers_per_block", 1},
                               {"mid_block_scale_factor", 1},
                               {"norm_eps", 1e-05},
                               {"norm_num_groups", 8},
                               {"out_channels", 4},
                               {"projection_class_embeddings_input_dim", 6 * addition_time_embed_dim + 40},
                               {"sample_size", 8},
                               {"transformer_layers_per_block", {1, 2}},
                               {"up_block_types", {"CrossAttnUpBlock2D", "UpBlock2D"}},
                               {"use_linear_projection", true}});
  write_vae(folder / "vae", 0.13025);
  write_json(folder / "scheduler" / "scheduler_config.json",
             {{"_class_name", "EulerDiscreteScheduler"},
              {"_diffusers_version", "0.31.0"},
              {"beta_end", 0.012},
              {"beta_schedule", "scaled_linear"},
              {"beta_start", 0.00085},
              {"clip_sample", false},
              {"interpolation_type", "linear"},
              {"num_train_timesteps", 1000},
              {"prediction_type", prediction},
              {"sample_max_value", 1.0},
              {"set_alpha_to_one", false},
              {"skip_prk_steps", true},
              {"steps_offset", 1},
              {"timestep_spacing", "leading"},
              {"trained_betas", nullptr},
              {"use_karras_sigmas", false}});
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: dedpo_make_tiny_sd <folder> [--seed N] [--prediction-type epsilon|v_prediction] [--layout sd15|sdxl]\n";
  if (argc < 2) {
    std::cerr << usage;
    return 2;
  }
  fs::path folder = argv[1];
  std::uint64_t seed = 0;
  std::string prediction = "epsilon";
  std::string layout = "sd15";
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::cerr << "dedpo_make_tiny_sd: " << flag << " needs a value\n" << usage;
      return 2;
    }
    if (flag == "--seed") seed = std::stoull(argv[i + 1]);
    else if (flag == "--prediction-type") prediction = argv[i + 1];
    else if (flag == "--layout") layout = argv[i + 1];
    else {
      std::cerr << "dedpo_make_tiny_sd: unknown flag " << flag << "\n" << usage;
      return 2;
    }
  }
  if (layout != "sd15" && layout != "sdxl") {
    std::cerr << "dedpo_make_tiny_sd: --layout must be sd15 or sdxl, got " << layout << "\n";
    return 2;
  }
  try {
    at::manual_seed(seed);
    fs::create_directories(folder);
    if (layout == "sdxl") {
      write_sdxl(folder, prediction);
    } else {
      write_sd15(folder, prediction);
    }
  } catch (const std::exception& e) {
    std::cerr << "dedpo_make_tiny_sd: " << e.what() << "\n";
    return 1;
  }
  std::cout << folder.string() << "\n";
  return 0;
}
