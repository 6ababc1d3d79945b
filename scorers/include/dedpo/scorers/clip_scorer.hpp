#pragma once
// Image scorers: a CLIP image-text scorer (CLIP score, PickScore, HPSv2) and the LAION aesthetic
// predictor. Both read a scorer folder:
//
//   config.json               transformers CLIPConfig (text_config + vision_config)
//   model.safetensors         weights, transformers names or an OpenCLIP state dict (auto-detected)
//   tokenizer.json or vocab.json + merges.txt   CLIP tokenizer (+ tokenizer_config.json, ...)
//   preprocessor_config.json  optional: CLIPImageProcessor settings (default: the model's image size)
//
// Images are uint8 [H, W, 3] RGB tensors of any size (each is resized and cropped on its own).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "dedpo/scorers/image_processor.hpp"
#include "dedpo/sd/clip_model.hpp"
#include "dedpo/sd/tokenizer.hpp"

namespace dedpo::scorers {

// Copies `tensors` into the module's parameters and buffers by name, by safetensors::WeightCopier's
// rule (float-to-float casts stated, other dtype changes refused, non-finite weights refused). Missing
// and unexpected keys are listed together in one dedpo::Error naming `origin`; a shape mismatch
// names the key and both shapes. Keys in `ignored` may be present or absent.
void load_named_tensors(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& origin, const std::vector<std::string>& ignored = {});

// A weights file's tensors with transformers CLIPModel names: an OpenCLIP state dict is renamed
// through open_clip_to_transformers (its unmatched keys are reported as unexpected by the load).
std::map<std::string, at::Tensor> read_clip_weights(const std::filesystem::path& file,
                                                    std::vector<std::string>& unmatched);

// The weights file of a scorer folder: `weights` when given, else <folder>/model.safetensors.
// dedpo::Error names what is missing.
std::filesystem::path clip_weights_file(const std::filesystem::path& folder, const std::filesystem::path& weights);

// Batches uint8 [H, W, 3] images through the processor: float [N, 3, crop_h, crop_w].
at::Tensor preprocess_images(const std::vector<at::Tensor>& images, const ClipImageProcessorConfig& config);

class ClipScorer {
 public:
  // Loads config, weights, tokenizer and preprocessor settings; `weights` overrides the file.
  explicit ClipScorer(const std::filesystem::path& folder, const std::filesystem::path& weights = {});

  // L2-normalised embeddings: [N, projection_dim].
  at::Tensor image_embeds(const std::vector<at::Tensor>& images);
  at::Tensor text_embeds(const std::vector<std::string>& prompts);
  // Cosine similarity of image i with prompt i: [N] float.
  at::Tensor cosine(const std::vector<at::Tensor>& images, const std::vector<std::string>& prompts);
  // exp(logit_scale): the factor CLIP (and PickScore) multiplies cosines with.
  double logit_scale() const;
  // Moves the model to `device`: inputs go there, scores come back on the host.
  void to(c10::Device device);

 private:
  c10::Device device_ = c10::kCPU;
  sd::ClipModel model_{nullptr};
  std::unique_ptr<sd::ClipTokenizer> tokenizer_;
  ClipImageProcessorConfig processor_;
};

// improved-aesthetic-predictor's head: Linear layers layers.{i} (i ascending; the Dropouts between
// them have no weights and no activation is applied) from the normalised CLIP image embedding to 1.
class AestheticHeadImpl : public torch::nn::Module {
 public:
  // Reads the layer shapes from `file` (safetensors with layers.N.weight / layers.N.bias) and loads them.
  explicit AestheticHeadImpl(const std::filesystem::path& file);
  at::Tensor forward(const at::Tensor& embeds);  // [N, D] -> [N]
  std::int64_t input_size() const;

 private:
  std::vector<torch::nn::Linear> layers_;
};
TORCH_MODULE(AestheticHead);

class AestheticScorer {
 public:
  // The vision tower of the CLIP folder (ViT-L/14 for the LAION predictor; the text tower, if the
  // file has one, is not loaded) and the head file.
  AestheticScorer(const std::filesystem::path& clip_folder, const std::filesystem::path& head_file,
                  const std::filesystem::path& weights = {});
  at::Tensor score(const std::vector<at::Tensor>& images);  // [N] float, on the host
  void to(c10::Device device);                              // where the models run

 private:
  c10::Device device_ = c10::kCPU;
  sd::ClipVisionModelWithProjection vision_{nullptr};
  AestheticHead head_{nullptr};
  ClipImageProcessorConfig processor_;
};

}  // namespace dedpo::scorers
