#include "dedpo/scorers/clip_scorer.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <algorithm>
#include <regex>
#include <set>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/scorers/open_clip_keys.hpp"

namespace dedpo::scorers {

namespace fs = std::filesystem;

namespace {

// A checkpoint saved with the position ids buffer of older transformers versions still loads.
const std::vector<std::string> kIgnoredClipKeys = {"text_model.embeddings.position_ids",
                                                   "vision_model.embeddings.position_ids"};

std::string listed(const std::vector<std::string>& keys, std::size_t limit = 12) {
  std::string out;
  for (std::size_t i = 0; i < keys.size() && i < limit; ++i) out += (i ? ", " : "") + keys[i];
  if (keys.size() > limit) out += fmt::format(", ... ({} in all)", keys.size());
  return out;
}

ClipImageProcessorConfig processor_for(const fs::path& folder, std::int64_t image_size) {
  const fs::path file = folder / "preprocessor_config.json";
  return fs::exists(file) ? ClipImageProcessorConfig::from_file(file) : ClipImageProcessorConfig::for_image_size(image_size);
}

fs::path config_file(const fs::path& folder) {
  if (!fs::is_directory(folder)) throw Error("scorer folder '" + folder.string() + "' does not exist");
  const fs::path file = folder / "config.json";
  if (!fs::exists(file)) throw Error("scorer folder '" + folder.string() + "' has no config.json (a transformers CLIPConfig)");
  return file;
}

}  // namespace

void load_named_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& origin, const std::vector<std::string>& ignored) {
  const std::set<std::string> ignore(ignored.begin(), ignored.end());
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module.named_parameters()) targets[item.key()] = item.value();
  for (const auto& item : module.named_buffers()) targets[item.key()] = item.value();
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, target] : targets) {
    if (!tensors.count(name) && !ignore.count(name)) missing.push_back(name);
  }
  for (const auto& [name, tensor] : tensors) {
    if (!targets.count(name) && !ignore.count(name)) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string message = origin + ": the weights do not fit the model";
    if (!missing.empty()) message += fmt::format("; missing keys ({}): {}", missing.size(), listed(missing));
    if (!unexpected.empty()) message += fmt::format("; unexpected keys ({}): {}", unexpected.size(), listed(unexpected));
    throw Error(message);
  }
  at::NoGradGuard no_grad;
  safetensors::WeightCopier copier(origin, safetensors::FiniteCheck::check);
  for (auto& [name, target] : targets) {
    const auto found = tensors.find(name);
    if (found == tensors.end()) continue;
    if (found->second.sizes() != target.sizes()) {
      throw Error(fmt::format("{}: key '{}' has shape {}, the model expects {}", origin, name,
                              c10::str(found->second.sizes()), c10::str(target.sizes())));
    }
    copier.copy(name, target, found->second);
  }
  copier.warn_casts();
}

std::map<std::string, at::Tensor> read_clip_weights(const fs::path& file, std::vector<std::string>& unmatched) {
  std::map<std::string, at::Tensor> tensors = safetensors::load(file);
  return is_open_clip_layout(tensors) ? open_clip_to_transformers(tensors, unmatched) : tensors;
}

fs::path clip_weights_file(const fs::path& folder, const fs::path& weights) {
  const fs::path file = weights.empty() ? folder / "model.safetensors" : weights;
  if (!fs::exists(file)) {
    throw Error(weights.empty() ? "scorer folder '" + folder.string() + "' has no model.safetensors"
                                : "weights file '" + file.string() + "' does not exist");
  }
  return file;
}

at::Tensor preprocess_images(const std::vector<at::Tensor>& images, const ClipImageProcessorConfig& config) {
  std::vector<at::Tensor> rows;
  rows.reserve(images.size());
  for (const at::Tensor& image : images) rows.push_back(preprocess_image(image, config));
  return at::stack(rows);
}

ClipScorer::ClipScorer(const fs::path& folder, const fs::path& weights) {
  const sd::ClipModelConfig config = sd::ClipModelConfig::from_file(config_file(folder));
  model_ = sd::ClipModel(config);
  const fs::path file = clip_weights_file(folder, weights);
  std::vector<std::string> unmatched;
  std::map<std::string, at::Tensor> tensors = read_clip_weights(file, unmatched);
  for (const std::string& key : unmatched) tensors[key] = at::Tensor();  // reported as unexpected
  load_named_tensors(*model_, tensors, "'" + file.string() + "'", kIgnoredClipKeys);
  model_->eval();
  tokenizer_ = std::make_unique<sd::ClipTokenizer>(sd::ClipTokenizer::from_folder(folder));
  processor_ = processor_for(folder, config.vision.image_size);
}

at::Tensor ClipScorer::image_embeds(const std::vector<at::Tensor>& images) {
  at::NoGradGuard no_grad;
  const at::Tensor features = model_->image_features(preprocess_images(images, processor_).to(device_));
  return features / features.norm(2, {-1}, /*keepdim=*/true);
}

at::Tensor ClipScorer::text_embeds(const std::vector<std::string>& prompts) {
  at::NoGradGuard no_grad;
  const sd::TokenizerBatch batch = tokenizer_->encode_batch(prompts);
  const at::Tensor features = model_->text_features(batch.input_ids.to(device_), batch.attention_mask.to(device_));
  return features / features.norm(2, {-1}, /*keepdim=*/true);
}

at::Tensor ClipScorer::cosine(const std::vector<at::Tensor>& images, const std::vector<std::string>& prompts) {
  if (images.size() != prompts.size()) {
    throw Error(fmt::format("CLIP scorer: {} images but {} prompts", images.size(), prompts.size()));
  }
  return (image_embeds(images) * text_embeds(prompts)).sum(-1).to(at::kCPU);
}

void ClipScorer::to(c10::Device device) {
  model_->to(device);
  device_ = device;
}

double ClipScorer::logit_scale() const { return model_->logit_scale.exp().item<double>(); }

AestheticHeadImpl::AestheticHeadImpl(const fs::path& file) {
  if (!fs::exists(file)) throw Error("aesthetic head file '" + file.string() + "' does not exist");
  const std::map<std::string, at::Tensor> tensors = safetensors::load(file);
  const std::regex pattern(R"(layers\.(\d+)\.weight)");
  std::vector<int> indices;
  for (const auto& [key, tensor] : tensors) {
    std::smatch m;
    if (std::regex_match(key, m, pattern)) indices.push_back(std::stoi(m[1]));
  }
  std::sort(indices.begin(), indices.end());
  const std::string origin = "aesthetic head '" + file.string() + "'";
  if (indices.empty()) throw Error(origin + ": no layers.N.weight keys (improved-aesthetic-predictor layout)");
  // Submodule "layers" with children "0", "2", ...: the file's names (a module name has no dots).
  auto container = register_module("layers", std::make_shared<torch::nn::Module>());
  std::int64_t width = -1;
  for (int index : indices) {
    const at::Tensor& weight = tensors.at(fmt::format("layers.{}.weight", index));
    if (weight.dim() != 2 || (width >= 0 && weight.size(1) != width)) {
      throw Error(fmt::format("{}: layers.{}.weight has shape {}, expected [*, {}]", origin, index,
                              c10::str(weight.sizes()), width));
    }
    layers_.push_back(container->register_module(std::to_string(index), torch::nn::Linear(weight.size(1), weight.size(0))));
    width = weight.size(0);
  }
  if (width != 1) throw Error(fmt::format("{}: the last layer has {} outputs, expected 1", origin, width));
  load_named_tensors(*this, tensors, origin);
  eval();
}

at::Tensor AestheticHeadImpl::forward(const at::Tensor& embeds) {
  at::Tensor h = embeds;
  for (auto& layer : layers_) h = layer->forward(h);
  return h.squeeze(-1);
}

std::int64_t AestheticHeadImpl::input_size() const { return layers_.front()->weight.size(1); }

AestheticScorer::AestheticScorer(const fs::path& clip_folder, const fs::path& head_file, const fs::path& weights) {
  const sd::ClipVisionConfig config = sd::ClipVisionConfig::from_file(config_file(clip_folder));
  vision_ = sd::ClipVisionModelWithProjection(config);
  const fs::path file = clip_weights_file(clip_folder, weights);
  std::vector<std::string> unmatched;
  std::map<std::string, at::Tensor> tensors;
  for (auto& [key, tensor] : read_clip_weights(file, unmatched)) {
    if (key.starts_with("vision_model.") || key.starts_with("visual_projection.")) tensors[key] = tensor;
  }
  for (const std::string& key : unmatched) tensors[key] = at::Tensor();
  load_named_tensors(*vision_, tensors, "'" + file.string() + "'", kIgnoredClipKeys);
  vision_->eval();
  head_ = AestheticHead(head_file);
  if (head_->input_size() != config.projection_dim) {
    throw Error(fmt::format("aesthetic head '{}' takes {}-dimensional embeddings, the CLIP model gives {}",
                            head_file.string(), head_->input_size(), config.projection_dim));
  }
  processor_ = processor_for(clip_folder, config.image_size);
}

at::Tensor AestheticScorer::score(const std::vector<at::Tensor>& images) {
  at::NoGradGuard no_grad;
  const at::Tensor features = vision_->forward(preprocess_images(images, processor_).to(device_)).image_embeds;
  return head_->forward(features / features.norm(2, {-1}, /*keepdim=*/true)).to(at::kCPU);
}

void AestheticScorer::to(c10::Device device) {
  vision_->to(device);
  head_->to(device);
  device_ = device;
}

}  // namespace dedpo::scorers
