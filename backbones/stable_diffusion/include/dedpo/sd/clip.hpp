#pragma once
// CLIP text encoders with transformers' parameter names (text_model.embeddings.token_embedding,
// text_model.encoder.layers.N.self_attn.q_proj, ..., text_projection): CLIPTextModel (SD1.5's
// text encoder) and CLIPTextModelWithProjection (SDXL's text_encoder_2).
//
//   auto config = dedpo::sd::ClipTextConfig::from_file("text_encoder/config.json");
//   dedpo::sd::ClipTextModel clip(config);
//   dedpo::safetensors::load_into(*clip, "text_encoder/model.safetensors");
//   auto out = clip->forward(input_ids);   // out.last_hidden_state: [B, S, hidden]
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace dedpo::sd {

// The fields of transformers' CLIPTextConfig that the forward pass uses.
struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // "quick_gelu" | "gelu"
  double layer_norm_eps = 1e-5;
  int64_t eos_token_id = 2;  // 2 selects the legacy argmax pooling
  int64_t projection_dim = 512;

  // From a CLIPTextConfig JSON, or a CLIPConfig JSON (its "text_config").
  static ClipTextConfig from_json(const std::string& text, const std::string& origin = "<string>");
  static ClipTextConfig from_file(const std::filesystem::path& path);
  // A lower bound of the parameter count, from the sizes alone (from_json refuses a config whose
  // model cannot fit in memory).
  double parameter_lower_bound() const;
};

struct ClipTextOutput {
  at::Tensor last_hidden_state;            // [B, S, hidden], after final_layer_norm
  at::Tensor pooler_output;                // [B, hidden], final-normed state at the EOS token
  std::vector<at::Tensor> hidden_states;   // num_hidden_layers + 1 of [B, S, hidden] (0 = embeddings)
  at::Tensor text_embeds;                  // [B, projection_dim]; only WithProjection
};

class ClipAttentionImpl : public torch::nn::Module {
 public:
  explicit ClipAttentionImpl(const ClipTextConfig& config);
  // x: [B, S, C]; mask: additive, broadcastable to [B, H, S, S].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);

  torch::nn::Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  explicit ClipMlpImpl(const ClipTextConfig& config);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  bool quick_gelu_;
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const ClipTextConfig& config);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);

  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  ClipMlp mlp{nullptr};
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderImpl(const ClipTextConfig& config);
  std::vector<ClipEncoderLayer> layers;
};
TORCH_MODULE(ClipEncoder);

class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipTextEmbeddingsImpl(const ClipTextConfig& config);
  at::Tensor forward(const at::Tensor& input_ids);  // [B, S] -> [B, S, C]

  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

// transformers' CLIPTextTransformer (the `text_model` of both models).
class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipTextTransformerImpl(ClipTextConfig config);
  // input_ids: int64 [B, S]; attention_mask: optional [B, S] of 1 (keep) / 0 (pad).
  ClipTextOutput forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt);
  const ClipTextConfig& config() const { return config_; }

  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  ClipTextConfig config_;
};
TORCH_MODULE(ClipTextTransformer);

class ClipTextModelImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelImpl(const ClipTextConfig& config);
  ClipTextOutput forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt);

  ClipTextTransformer text_model{nullptr};
};
TORCH_MODULE(ClipTextModel);

class ClipTextModelWithProjectionImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelWithProjectionImpl(const ClipTextConfig& config);
  // As ClipTextModel, plus text_embeds = text_projection(pooler_output).
  ClipTextOutput forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask = std::nullopt);

  ClipTextTransformer text_model{nullptr};
  torch::nn::Linear text_projection{nullptr};  // [projection_dim, hidden], no bias
};
TORCH_MODULE(ClipTextModelWithProjection);

// The module a CLIPTextModel weights file fills: transformers 4 names its keys
// "text_model.<name>" (the model), transformers 5's save_pretrained "<name>" (the text transformer,
// model->text_model). Picked from the file's keys, so both load with safetensors::load_into.
torch::nn::Module& clip_text_weights_root(ClipTextModel& model, const std::filesystem::path& weights_file);

}  // namespace dedpo::sd
