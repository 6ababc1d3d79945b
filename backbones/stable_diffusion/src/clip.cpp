#include "dedpo/sd/clip.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "dedpo/safetensors.hpp"
#include "dedpo/sd/blocks.hpp"
#include "json_config.hpp"

namespace dedpo::sd {

ClipTextConfig ClipTextConfig::from_json(const std::string& text, const std::string& origin) {
  auto top = detail::Config::parse(text, origin);
  nlohmann::json json = nlohmann::json::parse(text);
  detail::Config cfg = json.contains("text_config") && json["text_config"].is_object()
                           ? detail::Config(json["text_config"], origin + " text_config")
                           : top;
  ClipTextConfig c;
  c.vocab_size = cfg.get<int64_t>("vocab_size", c.vocab_size);
  c.hidden_size = cfg.get<int64_t>("hidden_size", c.hidden_size);
  c.intermediate_size = cfg.get<int64_t>("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = cfg.get<int64_t>("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = cfg.get<int64_t>("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = cfg.get<int64_t>("max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = cfg.get<std::string>("hidden_act", c.hidden_act);
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu") {
    cfg.fail("hidden_act", "'" + c.hidden_act + "' is not supported (quick_gelu, gelu)");
  }
  c.layer_norm_eps = cfg.get<double>("layer_norm_eps", c.layer_norm_eps);
  c.eos_token_id = cfg.get<int64_t>("eos_token_id", c.eos_token_id);
  c.projection_dim = top.get<int64_t>("projection_dim", cfg.get<int64_t>("projection_dim", c.projection_dim));
  if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
    cfg.fail("num_attention_heads", "must divide hidden_size");
  }
  detail::check_model_fits(cfg, "CLIP text encoder", c.parameter_lower_bound());
  return c;
}

double ClipTextConfig::parameter_lower_bound() const {
  // Token and position embeddings; per layer the attention projections (4h²) and the MLP (2·h·i).
  const double h = static_cast<double>(hidden_size);
  return (static_cast<double>(vocab_size) + static_cast<double>(max_position_embeddings)) * h +
         static_cast<double>(num_hidden_layers) * (4 * h * h + 2 * h * static_cast<double>(intermediate_size));
}

ClipTextConfig ClipTextConfig::from_file(const std::filesystem::path& path) {
  return from_json(detail::Config::read_text(path), "'" + path.string() + "'");
}

ClipAttentionImpl::ClipAttentionImpl(const ClipTextConfig& c) : heads_(c.num_attention_heads) {
  const int64_t d = c.hidden_size;
  k_proj = register_module("k_proj", torch::nn::Linear(d, d));
  v_proj = register_module("v_proj", torch::nn::Linear(d, d));
  q_proj = register_module("q_proj", torch::nn::Linear(d, d));
  out_proj = register_module("out_proj", torch::nn::Linear(d, d));
}

at::Tensor ClipAttentionImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  const int64_t b = x.size(0), s = x.size(1), c = x.size(2), d = c / heads_;
  auto split = [&](const at::Tensor& t) { return t.view({b, s, heads_, d}).transpose(1, 2); };  // [B, H, S, D]
  const at::Tensor out = scaled_attention(split(q_proj->forward(x)), split(k_proj->forward(x)),
                                          split(v_proj->forward(x)), mask);  // [B, H, S, D]
  return out_proj->forward(out.transpose(1, 2).reshape({b, s, c}));
}

ClipMlpImpl::ClipMlpImpl(const ClipTextConfig& c) : quick_gelu_(c.hidden_act == "quick_gelu") {
  fc1 = register_module("fc1", torch::nn::Linear(c.hidden_size, c.intermediate_size));
  fc2 = register_module("fc2", torch::nn::Linear(c.intermediate_size, c.hidden_size));
}

at::Tensor ClipMlpImpl::forward(const at::Tensor& x) {
  at::Tensor h = fc1->forward(x);
  h = quick_gelu_ ? h * at::sigmoid(1.702 * h) : at::gelu(h);
  return fc2->forward(h);
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipTextConfig& c) {
  const auto norm = torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps);
  self_attn = register_module("self_attn", ClipAttention(c));
  layer_norm1 = register_module("layer_norm1", torch::nn::LayerNorm(norm));
  mlp = register_module("mlp", ClipMlp(c));
  layer_norm2 = register_module("layer_norm2", torch::nn::LayerNorm(norm));
}

at::Tensor ClipEncoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  at::Tensor h = x + self_attn->forward(layer_norm1->forward(x), mask);
  return h + mlp->forward(layer_norm2->forward(h));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipTextConfig& c) {
  torch::nn::ModuleList list;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layers.push_back(ClipEncoderLayer(c));
    list->push_back(layers.back());
  }
  register_module("layers", list);
}

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(const ClipTextConfig& c) {
  token_embedding = register_module("token_embedding", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  position_embedding = register_module("position_embedding", torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
}

at::Tensor ClipTextEmbeddingsImpl::forward(const at::Tensor& input_ids) {
  const int64_t s = input_ids.size(1);
  const at::Tensor positions = at::arange(s, input_ids.options().dtype(at::kLong));  // [S]
  return token_embedding->forward(input_ids) + position_embedding->forward(positions).unsqueeze(0);
}

ClipTextTransformerImpl::ClipTextTransformerImpl(ClipTextConfig config) : config_(std::move(config)) {
  embeddings = register_module("embeddings", ClipTextEmbeddings(config_));
  encoder = register_module("encoder", ClipEncoder(config_));
  final_layer_norm = register_module(
      "final_layer_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({config_.hidden_size}).eps(config_.layer_norm_eps)));
}

ClipTextOutput ClipTextTransformerImpl::forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask) {
  TORCH_CHECK(input_ids.dim() == 2, "CLIP text model: input_ids must be [B, S], got ", input_ids.sizes());
  TORCH_CHECK(input_ids.size(1) <= config_.max_position_embeddings, "CLIP text model: sequence length ",
              input_ids.size(1), " exceeds max_position_embeddings ", config_.max_position_embeddings);
  ClipTextOutput out;
  at::Tensor h = embeddings->forward(input_ids);  // [B, S, C]
  const int64_t s = h.size(1);
  // diffusers' torch.finfo(dtype).min: float's lowest overflows a bfloat16 mask.
  const double lowest = h.scalar_type() == at::kBFloat16
                            ? static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest())
                            : std::numeric_limits<float>::lowest();
  at::Tensor mask = at::full({s, s}, lowest, h.options()).triu(1);  // causal: [S, S]
  if (attention_mask) {
    const at::Tensor keep = attention_mask->to(h.scalar_type()).view({h.size(0), 1, 1, s});  // [B, 1, 1, S]
    mask = mask + (1.0 - keep) * lowest;  // [B, 1, S, S]
  }
  out.hidden_states.push_back(h);
  for (auto& layer : encoder->layers) {
    h = layer->forward(h, mask);
    out.hidden_states.push_back(h);
  }
  out.last_hidden_state = final_layer_norm->forward(h);
  const at::Tensor ids = input_ids.to(at::kInt);
  const at::Tensor eos_index = config_.eos_token_id == 2
                                   ? ids.argmax(-1)                                        // legacy: EOS has the highest id
                                   : (ids == config_.eos_token_id).to(at::kInt).argmax(-1);  // first EOS
  const int64_t b = h.size(0), c = h.size(2);
  const at::Tensor gather_index = eos_index.to(at::kLong).view({b, 1, 1}).expand({b, 1, c});  // [B, 1, C]
  out.pooler_output = out.last_hidden_state.gather(1, gather_index).squeeze(1);  // [B, C]
  return out;
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& config) {
  text_model = register_module("text_model", ClipTextTransformer(config));
}

ClipTextOutput ClipTextModelImpl::forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& attention_mask) {
  return text_model->forward(input_ids, attention_mask);
}

ClipTextModelWithProjectionImpl::ClipTextModelWithProjectionImpl(const ClipTextConfig& config) {
  text_model = register_module("text_model", ClipTextTransformer(config));
  text_projection = register_module(
      "text_projection", torch::nn::Linear(torch::nn::LinearOptions(config.hidden_size, config.projection_dim).bias(false)));
}

ClipTextOutput ClipTextModelWithProjectionImpl::forward(const at::Tensor& input_ids,
                                                        const std::optional<at::Tensor>& attention_mask) {
  ClipTextOutput out = text_model->forward(input_ids, attention_mask);
  out.text_embeds = text_projection->forward(out.pooler_output);
  return out;
}

torch::nn::Module& clip_text_weights_root(ClipTextModel& model, const std::filesystem::path& weights_file) {
  const safetensors::File file(weights_file);
  for (const std::string& key : file.keys()) {
    if (key.rfind("text_model.", 0) == 0) return *model;
  }
  return *model->text_model;
}

}  // namespace dedpo::sd
