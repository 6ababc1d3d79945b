#pragma once
// UNet2DConditionModel (diffusers 0.31) for the SD1.5 and SDXL layouts, configured from its
// config.json: CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D /
// CrossAttnUpBlock2D, sinusoidal timestep embedding, optional SDXL "text_time" added embedding.
//
//   dedpo::sd::UNet2DConditionModel unet(dedpo::sd::UNet2DConditionConfig::from_file("unet/config.json"));
//   dedpo::safetensors::load_into(*unet, "unet/diffusion_pytorch_model.safetensors");
//   at::Tensor eps = unet->forward(latents, timesteps, text_states);   // [B, 4, h, w]
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "dedpo/sd/blocks.hpp"

namespace dedpo::sd {

struct UNet2DConditionConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<std::string> down_block_types;  // "CrossAttnDownBlock2D" | "DownBlock2D"
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // or "" (none)
  std::vector<std::string> up_block_types;    // "UpBlock2D" | "CrossAttnUpBlock2D"
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;              // per down block
  std::vector<int64_t> transformer_layers_per_block;  // per down block (mid uses the last)
  std::vector<int64_t> num_attention_heads;           // per down block (SD's attention_head_dim)
  std::vector<int64_t> cross_attention_dim;           // per down block
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool use_linear_projection = false;
  double mid_block_scale_factor = 1.0;
  int64_t downsample_padding = 1;
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;
  int64_t time_embed_dim = 0;  // time_embedding_dim, or 4·block_out_channels[0]
  std::string addition_embed_type;  // "" | "text_time" (SDXL)
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;

  static UNet2DConditionConfig from_json(const std::string& text, const std::string& origin = "<string>");
  static UNet2DConditionConfig from_file(const std::filesystem::path& path);
  // A lower bound of the parameter count, from the sizes alone (from_json refuses a config whose
  // model cannot fit in memory).
  double parameter_lower_bound() const;
};

struct Transformer2DStackOptions {
  int64_t transformer_layers = 1;
  int64_t heads = 8;
  int64_t cross_attention_dim = 768;
  bool use_linear_projection = false;
};

// CrossAttnDownBlock2D (with `attention`) or DownBlock2D: resnets [+ attentions] [+ downsamplers].
class UNetDownBlockImpl : public torch::nn::Module {
 public:
  UNetDownBlockImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, const ResnetBlock2DOptions& resnet,
                    const std::optional<Transformer2DStackOptions>& attention, bool add_downsample, int64_t downsample_padding);
  // Returns the block output and the states it adds to the skip stack.
  std::pair<at::Tensor, std::vector<at::Tensor>> forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context);

  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;
  Downsample2D downsampler{nullptr};
};
TORCH_MODULE(UNetDownBlock);

// CrossAttnUpBlock2D (with `attention`) or UpBlock2D: each resnet takes a skip state from the stack.
class UNetUpBlockImpl : public torch::nn::Module {
 public:
  UNetUpBlockImpl(int64_t in_channels, int64_t prev_output_channels, int64_t out_channels, int64_t num_layers,
                  const ResnetBlock2DOptions& resnet, const std::optional<Transformer2DStackOptions>& attention,
                  bool add_upsample);
  // skips: this block's skip states in push order (the last is used first).
  at::Tensor forward(at::Tensor x, const std::vector<at::Tensor>& skips, const at::Tensor& temb, const at::Tensor& context,
                     const std::optional<std::vector<int64_t>>& upsample_size = std::nullopt);

  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;
  Upsample2D upsampler{nullptr};
};
TORCH_MODULE(UNetUpBlock);

// UNetMidBlock2DCrossAttn: resnet, (transformer, resnet).
class UNetMidBlock2DCrossAttnImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DCrossAttnImpl(int64_t channels, const ResnetBlock2DOptions& resnet, const Transformer2DStackOptions& attention);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb, const at::Tensor& context);

  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2DModel> attentions;
};
TORCH_MODULE(UNetMidBlock2DCrossAttn);

// SDXL's added conditioning (addition_embed_type "text_time").
struct UNetAddedCond {
  at::Tensor text_embeds;  // [B, pooled dim]
  at::Tensor time_ids;     // [B, 6]
};

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(UNet2DConditionConfig config);
  // sample: [B, in, H, W]; timesteps: scalar or [B] (any numeric dtype); context: [B, S, cross_attention_dim].
  // trace (optional) receives diffusers' submodule outputs by module name ("down_blocks.0", ...).
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timesteps, const at::Tensor& context,
                     const std::optional<UNetAddedCond>& added = std::nullopt,
                     std::map<std::string, at::Tensor>* trace = nullptr);
  const UNet2DConditionConfig& config() const { return config_; }
  // diffusers' gradient checkpointing: with grad enabled, each down / mid / up block keeps only its
  // inputs and recomputes its activations in backward (about one more forward per step, for much
  // less activation memory). Gradients are those of the plain forward.
  void set_gradient_checkpointing(bool enabled) { gradient_checkpointing_ = enabled; }
  bool gradient_checkpointing() const { return gradient_checkpointing_; }

  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  TimestepEmbedding time_embedding{nullptr}, add_embedding{nullptr};
  std::vector<UNetDownBlock> down_blocks;
  UNetMidBlock2DCrossAttn mid_block{nullptr};
  std::vector<UNetUpBlock> up_blocks;
  torch::nn::GroupNorm conv_norm_out{nullptr};

 private:
  UNet2DConditionConfig config_;
  bool gradient_checkpointing_ = false;
};
TORCH_MODULE(UNet2DConditionModel);

}  // namespace dedpo::sd
