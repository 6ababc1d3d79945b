#include "dedpo/scorers/tiny.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/sd/clip_model.hpp"
#include "dedpo/sd/tokenizer.hpp"

namespace dedpo::scorers {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary);
  out << text;
  if (!out) throw Error("cannot write '" + file.string() + "'");
}

void write_module(const fs::path& file, torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : module.named_parameters()) tensors.emplace_back(item.key(), item.value().detach());
  safetensors::save(file, tensors, {{"format", "pt"}});
}

// CLIP's tokenizer layout: the 256 byte symbols, the same with "</w>", a few merges, the specials
// last (so the end-of-text id is the highest, as CLIP's legacy pooling expects). Returns its size.
std::int64_t write_tokenizer(const fs::path& folder) {
  const std::vector<std::string>& bytes = sd::tokenizer_detail::bytes_to_unicode();
  json vocab = json::object();
  std::int64_t id = 0;
  for (const auto& b : bytes) vocab[b] = id++;
  for (const auto& b : bytes) vocab[b + "</w>"] = id++;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "n</w>"}, {"t", "h"}, {"th", "e</w>"}, {"o", "f</w>"}, {"c", "at</w>"}, {"a", "t</w>"}};
  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [left, right] : merges) {
    if (!vocab.contains(left + right)) vocab[left + right] = id++;
    merges_txt += left + " " + right + "\n";
  }
  vocab["<|startoftext|>"] = id++;
  vocab["<|endoftext|>"] = id++;
  write_text(folder / "vocab.json", vocab.dump());
  write_text(folder / "merges.txt", merges_txt);
  write_text(folder / "tokenizer_config.json",
             json{{"tokenizer_class", "CLIPTokenizer"}, {"model_max_length", 77}}.dump(2));
  write_text(folder / "special_tokens_map.json",
             json{{"bos_token", "<|startoftext|>"}, {"eos_token", "<|endoftext|>"},
                  {"unk_token", "<|endoftext|>"}, {"pad_token", "<|endoftext|>"}}.dump(2));
  return id;
}

}  // namespace

void write_tiny_clip_folder(const fs::path& folder, std::uint64_t seed) {
  fs::create_directories(folder);
  const std::int64_t vocab_size = write_tokenizer(folder);
  const json tower = {{"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 2},
                      {"num_attention_heads", 4}, {"hidden_act", "gelu"}, {"layer_norm_eps", 1e-5}};
  json text = tower, vision = tower;
  text.update({{"vocab_size", vocab_size}, {"max_position_embeddings", 77}, {"eos_token_id", 2},
               {"model_type", "clip_text_model"}});
  vision.update({{"image_size", 32}, {"patch_size", 8}, {"num_channels", 3}, {"model_type", "clip_vision_model"}});
  const json config = {{"architectures", {"CLIPModel"}}, {"model_type", "clip"},
                       {"projection_dim", 16}, {"logit_scale_init_value", 2.6592},
                       {"text_config", text}, {"vision_config", vision}};
  write_text(folder / "config.json", config.dump(2));
  write_text(folder / "preprocessor_config.json",
             json{{"image_processor_type", "CLIPImageProcessor"}, {"size", {{"shortest_edge", 32}}},
                  {"crop_size", {{"height", 32}, {"width", 32}}}, {"resample", 3}}.dump(2));

  at::manual_seed(seed);
  sd::ClipModel model(sd::ClipModelConfig::from_json(config.dump()));
  write_module(folder / "model.safetensors", *model);

  // improved-aesthetic-predictor's Sequential: Linear at 0, 2, 4, 6, 7 (Dropout between).
  const std::vector<std::pair<int, std::pair<int, int>>> head = {
      {0, {16, 1024}}, {2, {1024, 128}}, {4, {128, 64}}, {6, {64, 16}}, {7, {16, 1}}};
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [index, shape] : head) {
    const auto [in, out] = shape;
    tensors.emplace_back("layers." + std::to_string(index) + ".weight", at::randn({out, in}) / std::sqrt(in));
    tensors.emplace_back("layers." + std::to_string(index) + ".bias", at::randn({out}) * 0.1);
  }
  safetensors::save(folder / "aesthetic_head.safetensors", tensors);
}

}  // namespace dedpo::scorers
