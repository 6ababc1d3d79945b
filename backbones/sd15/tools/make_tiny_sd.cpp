// dedpo_make_tiny_sd <folder> [--seed N] [--prediction-type epsilon|v_prediction]
//
// Writes a tiny Stable-Diffusion-1.5-shaped diffusers folder with random weights, for tests and
// smoke runs on a CPU: model_index.json; unet/ (2 levels, 32/64 channels), vae/ (2 levels, scale
// factor 2), text_encoder/ (2 layers, hidden 32), tokenizer/ (byte-level vocabulary and a few
// merges), scheduler/ (DDIM config as SD1.5's). Weights: UNet float32, VAE float16, text encoder
// bfloat16, so loaders meet every dtype. A 16×16 image has 8×8×4 latents.
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dedpo_make_tiny_sd <folder> [--seed N] [--prediction-type epsilon|v_prediction]\n";
    return 2;
  }
  fs::path folder = argv[1];
  std::uint64_t seed = 0;
  std::string prediction = "epsilon";
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seed") seed = std::stoull(argv[i + 1]);
    else if (flag == "--prediction-type") prediction = argv[i + 1];
    else {
      std::cerr << "dedpo_make_tiny_sd: unknown flag " << flag << "\n";
      return 2;
    }
  }
  try {
    at::manual_seed(seed);
    fs::create_directories(folder);
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

    // Tokenizer: CLIP's layout (bytes, bytes + </w>, merges, specials).
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
    const int64_t vocab_size = id;
    write_json(folder / "tokenizer" / "vocab.json", vocab);
    write_text(folder / "tokenizer" / "merges.txt", merges_txt);
    write_json(folder / "tokenizer" / "tokenizer_config.json",
               {{"model_max_length", 77},
                {"tokenizer_class", "CLIPTokenizer"},
                {"bos_token", "<|startoftext|>"},
                {"eos_token", "<|endoftext|>"},
                {"unk_token", "<|endoftext|>"},
                {"pad_token", "<|endoftext|>"},
                {"do_lower_case", true}});
    write_json(folder / "tokenizer" / "special_tokens_map.json",
               {{"bos_token", "<|startoftext|>"},
                {"eos_token", "<|endoftext|>"},
                {"unk_token", "<|endoftext|>"},
                {"pad_token", "<|endoftext|>"}});

    // Text encoder.
    const json clip_config = {{"_name_or_path", "tiny"},
                              {"architectures", {"CLIPTextModel"}},
                              {"model_type", "clip_text_model"},
                              {"attention_dropout", 0.0},
                              {"bos_token_id", 0},
                              {"eos_token_id", 2},
                              {"pad_token_id", 1},
                              {"hidden_act", "quick_gelu"},
                              {"hidden_size", 32},
                              {"initializer_factor", 1.0},
                              {"initializer_range", 0.02},
                              {"intermediate_size", 64},
                              {"layer_norm_eps", 1e-05},
                              {"max_position_embeddings", 77},
                              {"num_attention_heads", 2},
                              {"num_hidden_layers", 2},
                              {"projection_dim", 32},
                              {"torch_dtype", "bfloat16"},
                              {"transformers_version", "4.44.0"},
                              {"vocab_size", vocab_size}};
    write_json(folder / "text_encoder" / "config.json", clip_config);
    dedpo::sd::ClipTextModel clip(dedpo::sd::ClipTextConfig::from_json(clip_config.dump()));
    write_weights(folder / "text_encoder" / "model.safetensors", *clip, at::kBFloat16);

    // UNet.
    const json unet_config = {{"_class_name", "UNet2DConditionModel"},
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
                              {"use_linear_projection", false}};
    write_json(folder / "unet" / "config.json", unet_config);
    dedpo::sd::UNet2DConditionModel unet(dedpo::sd::UNet2DConditionConfig::from_json(unet_config.dump()));
    write_weights(folder / "unet" / "diffusion_pytorch_model.safetensors", *unet, at::kFloat);

    // VAE.
    const json vae_config = {{"_class_name", "AutoencoderKL"},
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
                             {"scaling_factor", 0.18215},
                             {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}}};
    write_json(folder / "vae" / "config.json", vae_config);
    dedpo::sd::AutoencoderKL vae(dedpo::sd::AutoencoderKLConfig::from_json(vae_config.dump()));
    write_weights(folder / "vae" / "diffusion_pytorch_model.safetensors", *vae, at::kHalf);

    // Scheduler (SD1.5's values).
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
  } catch (const std::exception& e) {
    std::cerr << "dedpo_make_tiny_sd: " << e.what() << "\n";
    return 1;
  }
  std::cout << folder.string() << "\n";
  return 0;
}
