// dedpo_interop <component> <model folder> <inputs> <outputs>
//
// dedpo's side of the round trips with diffusers and transformers (tests/interop/*.py): loads one
// component from a folder as the Python libraries write it, runs dedpo's forward pass on the
// inputs the Python side wrote, and writes the outputs for it to compare.
//
//   unet      <unet/>            inputs: sample, timestep, encoder_hidden_states [, text_embeds, time_ids]
//                                outputs: sample
//   vae       <vae/>             inputs: image, latents
//                                outputs: latent_mean, latent_logvar (encode(image)), decoded (decode(latents))
//   text      <text_encoder/>    inputs: input_ids [, attention_mask]
//                                outputs: last_hidden_state, pooler_output, hidden_states (stacked)
//                                [, text_embeds for a CLIPTextModelWithProjection]
//   clip      <CLIPModel folder> inputs: input_ids, attention_mask, pixel_values
//                                outputs: logits_per_image, text_embeds, image_embeds, text_features,
//                                image_features
//   scorer    <scorer folder>    inputs: images (uint8 [N, H, W, 3]), prompt_bytes (uint8: N prompts in
//                                UTF-8, each ended by '\n'); the folder's model.safetensors may be an
//                                OpenCLIP state dict (HPSv2's layout), as dedpo's scorers read it
//                                outputs: image_embeds, text_embeds (normalised, ClipScorer's)
//   tokenize  <tokenizer/>       inputs: a JSON array of prompts
//                                outputs: JSON {"input_ids": [[77 ids]...], "ids": [[all ids, no BOS/EOS]...]}
//
// Tensor files are safetensors; float outputs are float32.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/scorers/clip_scorer.hpp"
#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/clip_model.hpp"
#include "dedpo/sd/diffusion_backbone.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "dedpo/sd/unet.hpp"
#include "dedpo/sd/vae.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using Tensors = std::map<std::string, at::Tensor>;

namespace {

// transformers of some versions still write CLIP's position ids buffer.
const std::vector<std::string> kPositionIdKeys = {"text_model.embeddings.position_ids", "embeddings.position_ids",
                                                  "vision_model.embeddings.position_ids"};

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw dedpo::Error("cannot read '" + file.string() + "'");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

const at::Tensor& input(const Tensors& inputs, const std::string& key) {
  const auto found = inputs.find(key);
  if (found == inputs.end()) throw dedpo::Error("the inputs have no tensor '" + key + "'");
  return found->second;
}

at::Tensor float_input(const Tensors& inputs, const std::string& key) { return input(inputs, key).to(at::kFloat); }

Tensors run_unet(const fs::path& folder, const Tensors& inputs) {
  dedpo::sd::UNet2DConditionModel unet(dedpo::sd::UNet2DConditionConfig::from_file(folder / "config.json"));
  dedpo::safetensors::load_into(*unet, dedpo::sd::component_weights_file(folder, "diffusion_pytorch_model", "unet"));
  unet->eval();
  std::optional<dedpo::sd::UNetAddedCond> added;
  if (inputs.count("text_embeds")) added = dedpo::sd::UNetAddedCond{float_input(inputs, "text_embeds"), float_input(inputs, "time_ids")};
  return {{"sample", unet->forward(float_input(inputs, "sample"), input(inputs, "timestep"),
                                   float_input(inputs, "encoder_hidden_states"), added)}};
}

Tensors run_vae(const fs::path& folder, const Tensors& inputs) {
  dedpo::sd::AutoencoderKL vae(dedpo::sd::AutoencoderKLConfig::from_file(folder / "config.json"));
  dedpo::safetensors::load_into(*vae, dedpo::sd::component_weights_file(folder, "diffusion_pytorch_model", "vae"));
  vae->eval();
  const dedpo::sd::DiagonalGaussian posterior = vae->encode(float_input(inputs, "image"));
  return {{"latent_mean", posterior.mean},
          {"latent_logvar", posterior.logvar},
          {"decoded", vae->decode(float_input(inputs, "latents"))}};
}

std::optional<at::Tensor> optional_mask(const Tensors& inputs) {
  if (!inputs.count("attention_mask")) return std::nullopt;
  return input(inputs, "attention_mask");
}

Tensors text_outputs(const dedpo::sd::ClipTextOutput& out) {
  Tensors tensors = {{"last_hidden_state", out.last_hidden_state},
                     {"pooler_output", out.pooler_output},
                     {"hidden_states", at::stack(out.hidden_states)}};
  if (out.text_embeds.defined()) tensors["text_embeds"] = out.text_embeds;
  return tensors;
}

Tensors run_text(const fs::path& folder, const Tensors& inputs) {
  const json config = json::parse(read_text(folder / "config.json"));
  const auto text_config = dedpo::sd::ClipTextConfig::from_file(folder / "config.json");
  const fs::path weights = dedpo::sd::component_weights_file(folder, "model", "text encoder");
  const bool with_projection = config.value("architectures", json::array()).dump().find("CLIPTextModelWithProjection") != std::string::npos;
  if (with_projection) {
    dedpo::sd::ClipTextModelWithProjection model(text_config);
    dedpo::safetensors::load_into(*model, weights, kPositionIdKeys);
    model->eval();
    return text_outputs(model->forward(input(inputs, "input_ids"), optional_mask(inputs)));
  }
  dedpo::sd::ClipTextModel model(text_config);
  dedpo::safetensors::load_into(dedpo::sd::clip_text_weights_root(model, weights), weights, kPositionIdKeys);
  model->eval();
  return text_outputs(model->forward(input(inputs, "input_ids"), optional_mask(inputs)));
}

Tensors run_clip(const fs::path& folder, const Tensors& inputs) {
  dedpo::sd::ClipModel model(dedpo::sd::ClipModelConfig::from_file(folder / "config.json"));
  dedpo::safetensors::load_into(*model, dedpo::sd::component_weights_file(folder, "model", "clip"), kPositionIdKeys);
  model->eval();
  const dedpo::sd::ClipModelOutput out =
      model->forward(input(inputs, "input_ids"), float_input(inputs, "pixel_values"), optional_mask(inputs));
  return {{"logits_per_image", out.logits_per_image},
          {"text_embeds", out.text_embeds},
          {"image_embeds", out.image_embeds},
          {"text_features", out.text_features},
          {"image_features", out.image_features}};
}

Tensors run_scorer(const fs::path& folder, const Tensors& inputs) {
  dedpo::scorers::ClipScorer scorer(folder);
  const at::Tensor images = input(inputs, "images");  // uint8 [N, H, W, 3]
  const at::Tensor bytes = input(inputs, "prompt_bytes").contiguous();
  const std::string text(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), static_cast<std::size_t>(bytes.numel()));
  std::vector<std::string> prompts;
  for (std::size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
    prompts.push_back(text.substr(start, end - start));
  }
  return {{"image_embeds", scorer.image_embeds(std::vector<at::Tensor>(images.unbind(0)))},
          {"text_embeds", scorer.text_embeds(prompts)}};
}

void tokenize(const fs::path& folder, const fs::path& prompts_file, const fs::path& out_file) {
  const auto tokenizer = dedpo::sd::ClipTokenizer::from_folder(folder);
  const json prompts = json::parse(read_text(prompts_file));
  json padded = json::array(), ids = json::array();
  for (const auto& prompt : prompts) {
    const std::string text = prompt.get<std::string>();
    padded.push_back(tokenizer.encode(text).input_ids);
    ids.push_back(tokenizer.encode_ids(text));
  }
  std::ofstream out(out_file, std::ios::binary);
  out << json{{"input_ids", padded}, {"ids", ids}}.dump();
  if (!out) throw dedpo::Error("cannot write '" + out_file.string() + "'");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: dedpo_interop unet|vae|text|clip|scorer|tokenize <model folder> <inputs> <outputs>\n";
    return 2;
  }
  const std::string component = argv[1];
  const fs::path folder = argv[2], inputs_file = argv[3], outputs_file = argv[4];
  try {
    if (component == "tokenize") {
      tokenize(folder, inputs_file, outputs_file);
      return 0;
    }
    const Tensors inputs = dedpo::safetensors::load(inputs_file);
    at::NoGradGuard no_grad;
    Tensors outputs;
    if (component == "unet") outputs = run_unet(folder, inputs);
    else if (component == "vae") outputs = run_vae(folder, inputs);
    else if (component == "text") outputs = run_text(folder, inputs);
    else if (component == "clip") outputs = run_clip(folder, inputs);
    else if (component == "scorer") outputs = run_scorer(folder, inputs);
    else throw dedpo::Error("unknown component '" + component + "' (expected unet, vae, text, clip, scorer or tokenize)");
    for (auto& [name, tensor] : outputs) tensor = tensor.to(at::kFloat).contiguous();
    dedpo::safetensors::save(outputs_file, outputs);
  } catch (const std::exception& error) {
    std::cerr << "dedpo_interop: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
