#include "dedpo/sd/lora_file.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"

namespace dedpo::sd {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kDiffusersPrefix = "unet.";
constexpr const char* kKohyaPrefix = "lora_unet_";
// The header key diffusers keeps the adapter's LoraConfig under (diffusers.loaders.lora_base).
constexpr const char* kAdapterMetadataKey = "lora_adapter_metadata";

enum class Part { down, up, alpha };
struct Suffix {
  const char* text;
  Part part;
};
constexpr Suffix kDiffusersSuffixes[] = {{".lora_A.weight", Part::down}, {".lora_B.weight", Part::up}};
constexpr Suffix kKohyaSuffixes[] = {{".lora_down.weight", Part::down}, {".lora_up.weight", Part::up}, {".alpha", Part::alpha}};

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream in(path);
  std::string part;
  while (std::getline(in, part, '.')) parts.push_back(part);
  return parts;
}

std::string join_from(const std::vector<std::string>& parts, std::size_t first) {
  std::string out;
  for (std::size_t i = first; i < parts.size(); ++i) out += "." + parts[i];
  return out;
}

bool is_index(const std::string& text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The module path in the original SGM UNet (as kohya-ss trains SDXL) of a Linear layer of the
// diffusers UNet: input_blocks.N holds the down blocks' resnets (.0) and attentions (.1) level by
// level, each level ending with its downsampler; output_blocks.N the up blocks' likewise;
// middle_block.0/1/2 = resnet, attention, resnet. Inside a resnet the time projection is
// emb_layers.1. None for a module without a counterpart.
std::optional<std::string> sgm_path(const std::string& path, const UNet2DConditionConfig& config) {
  static const std::map<std::string, std::string> kTopLevel = {
      {"time_embedding.linear_1", "time_embed.0"}, {"time_embedding.linear_2", "time_embed.2"},
      {"add_embedding.linear_1", "label_emb.0.0"}, {"add_embedding.linear_2", "label_emb.0.2"}};
  if (auto found = kTopLevel.find(path); found != kTopLevel.end()) return found->second;
  const std::vector<std::string> p = split_path(path);
  const std::vector<int64_t>& layers = config.layers_per_block;
  const auto levels = static_cast<int64_t>(layers.size());
  // Inside the block: resnets only have time_emb_proj as a Linear; attentions keep their names.
  auto inner = [&](const std::string& kind, std::size_t first) -> std::optional<std::string> {
    if (kind == "attentions") return ".1" + join_from(p, first);
    if (kind == "resnets" && join_from(p, first) == ".time_emb_proj") return std::string(".0.emb_layers.1");
    return std::nullopt;
  };
  if ((p[0] == "down_blocks" || p[0] == "up_blocks") && p.size() > 4 && is_index(p[1]) && is_index(p[3])) {
    const int64_t block = std::stoll(p[1]), layer = std::stoll(p[3]);
    if (block >= levels) return std::nullopt;
    const bool down = p[0] == "down_blocks";
    // Down levels have layers_per_block entries plus a downsampler, up levels one more resnet.
    int64_t index = down ? 1 : 0;
    for (int64_t level = 0; level < block; ++level) index += layers[down ? level : levels - 1 - level] + 1;
    const std::optional<std::string> rest = inner(p[2], 4);
    if (!rest) return std::nullopt;
    return std::string(down ? "input_blocks." : "output_blocks.") + std::to_string(index + layer) + *rest;
  }
  if (p[0] == "mid_block" && p.size() > 3 && is_index(p[2])) {
    const int64_t layer = std::stoll(p[2]);
    if (p[1] == "attentions" && layer == 0) return "middle_block.1" + join_from(p, 3);
    if (p[1] == "resnets" && layer <= 1 && join_from(p, 3) == ".time_emb_proj") {
      return "middle_block." + std::to_string(2 * layer) + ".emb_layers.1";
    }
  }
  return std::nullopt;
}

std::string underscored(std::string path) {
  std::replace(path.begin(), path.end(), '.', '_');
  return path;
}

std::string key_list(const std::vector<std::string>& keys) {
  constexpr std::size_t kShown = 6;
  std::string out;
  for (std::size_t i = 0; i < keys.size() && i < kShown; ++i) out += (i ? ", '" : "'") + keys[i] + "'";
  if (keys.size() > kShown) out += " and " + std::to_string(keys.size() - kShown) + " more";
  return out;
}

std::string shape_text(const at::Tensor& tensor) { return c10::str(tensor.sizes()); }

}  // namespace

std::string kohya_lora_name(const std::string& path, KohyaNaming naming, const UNet2DConditionConfig& config) {
  if (naming == KohyaNaming::diffusers) return kKohyaPrefix + underscored(path);
  const std::optional<std::string> sgm = sgm_path(path, config);
  if (!sgm) throw Error("the kohya format has no name for UNet module '" + path + "' (SDXL's original UNet has no counterpart)");
  return kKohyaPrefix + underscored(*sgm);
}

void save_lora_file(const fs::path& file, const std::vector<LoraLayer>& layers, int64_t rank, double alpha,
                    LoraFormat format, KohyaNaming naming, const UNet2DConditionConfig& config) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (format == LoraFormat::diffusers) {
    json targets = json::array();
    for (const LoraLayer& layer : layers) {
      tensors.emplace_back(kDiffusersPrefix + layer.path + ".lora_A.weight", layer.down);
      tensors.emplace_back(kDiffusersPrefix + layer.path + ".lora_B.weight", layer.up);
      targets.push_back(layer.path);
    }
    metadata[kAdapterMetadataKey] =
        json{{"unet.r", rank}, {"unet.lora_alpha", alpha}, {"unet.target_modules", targets}}.dump();
  } else {
    for (const LoraLayer& layer : layers) {
      const std::string name = kohya_lora_name(layer.path, naming, config);
      tensors.emplace_back(name + ".lora_down.weight", layer.down);
      tensors.emplace_back(name + ".lora_up.weight", layer.up);
      tensors.emplace_back(name + ".alpha", at::scalar_tensor(alpha, at::kFloat));
    }
    // What kohya-ss writes and A1111 shows; readers take the scale from ".alpha".
    metadata["ss_network_dim"] = std::to_string(rank);
    metadata["ss_network_alpha"] = json(alpha).dump();
  }
  safetensors::save(file, tensors, metadata);
}

void load_lora_file(const fs::path& file, const std::vector<LoraLayer>& layers, int64_t rank, double alpha,
                    const UNet2DConditionConfig& config) {
  const safetensors::File source(file);
  const std::string where = "LoRA file '" + file.string() + "'";
  const auto& keys = source.keys();
  const bool kohya = std::any_of(keys.begin(), keys.end(), [](const std::string& k) { return k.rfind("lora_", 0) == 0; });
  const bool diffusers = std::any_of(keys.begin(), keys.end(), [](const std::string& k) {
    return k.find(".lora_A.") != std::string::npos || k.find(".lora_B.") != std::string::npos;
  });
  if (!kohya && !diffusers) {
    throw Error(where + " is not a LoRA file: no key in the diffusers format (unet.<module>.lora_A.weight / "
                        "lora_B.weight) or the kohya format (lora_unet_<module>.lora_down.weight / lora_up.weight / "
                        "alpha); its keys: " + (keys.empty() ? std::string("none") : key_list(keys)));
  }

  // The file's module names -> layer index; kohya names in either naming.
  std::map<std::string, std::size_t> modules;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (!kohya) {
      modules[kDiffusersPrefix + layers[i].path] = i;
      continue;
    }
    modules[kohya_lora_name(layers[i].path, KohyaNaming::diffusers, config)] = i;
    if (const std::optional<std::string> sgm = sgm_path(layers[i].path, config)) modules[kKohyaPrefix + underscored(*sgm)] = i;
  }
  struct Found {
    std::string down_key, up_key;
    at::Tensor down, up, alpha;
  };
  std::vector<Found> found(layers.size());
  std::vector<std::string> unexpected;
  const std::vector<Suffix> suffixes = kohya ? std::vector<Suffix>(std::begin(kKohyaSuffixes), std::end(kKohyaSuffixes))
                                             : std::vector<Suffix>(std::begin(kDiffusersSuffixes), std::end(kDiffusersSuffixes));
  for (const std::string& key : keys) {
    bool used = false;
    for (const Suffix& suffix : suffixes) {
      const std::string text = suffix.text;
      if (key.size() <= text.size() || key.compare(key.size() - text.size(), text.size(), text) != 0) continue;
      const auto module = modules.find(key.substr(0, key.size() - text.size()));
      if (module == modules.end()) break;
      Found& f = found[module->second];
      if (suffix.part == Part::down) f.down_key = key, f.down = source.get(key);
      if (suffix.part == Part::up) f.up_key = key, f.up = source.get(key);
      if (suffix.part == Part::alpha) f.alpha = source.get(key);
      used = true;
      break;
    }
    if (!used) unexpected.push_back(key);
  }
  std::vector<std::string> missing;
  const std::string down_suffix = kohya ? ".lora_down.weight" : ".lora_A.weight";
  const std::string up_suffix = kohya ? ".lora_up.weight" : ".lora_B.weight";
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::string module = kohya ? kohya_lora_name(layers[i].path, KohyaNaming::diffusers, config)
                                     : kDiffusersPrefix + layers[i].path;
    if (!found[i].down.defined()) missing.push_back(module + down_suffix);
    if (!found[i].up.defined()) missing.push_back(module + up_suffix);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string problem = where + " (" + (kohya ? "kohya" : "diffusers") +
                          " format) does not hold the adapters of this run's lora_targets:";
    if (!missing.empty()) problem += " missing keys " + key_list(missing) + ";";
    if (!unexpected.empty()) problem += " unexpected keys " + key_list(unexpected) + ";";
    problem.pop_back();
    throw Error(problem);
  }

  // Rank and shapes.
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const Found& f = found[i];
    if (f.down.dim() != 2 || f.up.dim() != 2) {
      throw Error(where + ": '" + f.down_key + "' is " + shape_text(f.down) + " and '" + f.up_key + "' is " +
                  shape_text(f.up) + "; expected matrices");
    }
    if (f.down.size(0) != rank) {
      throw Error(where + " has rank " + std::to_string(f.down.size(0)) + " ('" + f.down_key + "' is " +
                  shape_text(f.down) + ") but lora_rank = " + std::to_string(rank));
    }
    const at::Tensor& base = layers[i].base;
    if (f.down.size(1) != base.size(1) || f.up.size(0) != base.size(0) || f.up.size(1) != rank) {
      throw Error(where + ": '" + f.down_key + "' is " + shape_text(f.down) + " and '" + f.up_key + "' is " +
                  shape_text(f.up) + ", but UNet layer '" + layers[i].path + "' is " + shape_text(base) +
                  " (expected [" + std::to_string(rank) + ", " + std::to_string(base.size(1)) + "] and [" +
                  std::to_string(base.size(0)) + ", " + std::to_string(rank) + "])");
    }
  }

  // Alpha: kohya's per-layer scalars, diffusers' adapter config; alpha = rank without either.
  auto check_alpha = [&](double file_alpha, const std::string& from) {
    // Compared in float32, kohya's storage type.
    if (static_cast<float>(file_alpha) != static_cast<float>(alpha)) {
      throw Error(where + " has alpha " + json(file_alpha).dump() + " (" + from + ") but lora_alpha = " +
                  json(alpha).dump() + " (with lora_alpha = \"rank\", alpha = lora_rank)");
    }
  };
  if (kohya) {
    for (const Found& f : found) {
      if (f.alpha.defined() && f.alpha.numel() != 1) {
        throw Error(where + ": the alpha of '" + f.down_key + "' is " + shape_text(f.alpha) + "; expected a scalar");
      }
      check_alpha(f.alpha.defined() ? f.alpha.item<double>() : static_cast<double>(rank),
                  f.alpha.defined() ? "the .alpha of '" + f.down_key + "'" : "no .alpha beside '" + f.down_key + "': alpha = rank");
    }
  } else {
    const auto& metadata = source.metadata();
    const auto entry = metadata.find(kAdapterMetadataKey);
    if (entry == metadata.end()) {
      check_alpha(static_cast<double>(rank), "no lora_adapter_metadata: alpha = rank, as diffusers reads it");
    } else {
      json config_json;
      try {
        config_json = json::parse(entry->second);
      } catch (const json::exception& error) {
        throw Error(where + ": its lora_adapter_metadata is not JSON (" + error.what() + ")");
      }
      for (const char* pattern : {"unet.rank_pattern", "unet.alpha_pattern"}) {
        if (config_json.contains(pattern) && !config_json[pattern].empty()) {
          throw Error(where + ": per-layer ranks or alphas (" + std::string(pattern) + " in lora_adapter_metadata) "
                              "are not supported; dedpo uses one lora_rank and one lora_alpha");
        }
      }
      const json& file_alpha = config_json.contains("unet.lora_alpha") ? config_json["unet.lora_alpha"] : json(rank);
      if (!file_alpha.is_number()) throw Error(where + ": unet.lora_alpha in lora_adapter_metadata is not a number");
      check_alpha(file_alpha.get<double>(), "unet.lora_alpha of lora_adapter_metadata");
    }
  }

  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    layers[i].down.copy_(found[i].down);
    layers[i].up.copy_(found[i].up);
  }
}

}  // namespace dedpo::sd
