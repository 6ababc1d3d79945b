#pragma once
// Building blocks shared by the UNet and the VAE, with diffusers 0.31 parameter names:
// ResnetBlock2D, Downsample2D, Upsample2D, Attention, GEGLU / FeedForward, BasicTransformerBlock,
// Transformer2DModel, TimestepEmbedding and the sinusoidal timestep embedding.
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <vector>

namespace dedpo::sd {

// softmax(q·kᵀ/√D + mask)·v per head through at::scaled_dot_product_attention (flash or
// memory-efficient kernels on CUDA, the flash kernel on the CPU: the scores are never
// materialised). q: [B, H, Sq, D]; k, v: [B, H, Sk, D]; mask: undefined or an additive float mask
// broadcastable to [B, H, Sq, Sk] -> [B, H, Sq, D].
at::Tensor scaled_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask = {});

// scaled_attention over `heads` heads of D = C / heads, or small_head_attention where it applies
// (heads of 8, 16, 32 or 64 channels on an AVX-512 CPU). q: [B, Sq, C], k / v: [B, Sk, C] -> [B, Sq, C].
at::Tensor multi_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads);

// diffusers get_timestep_embedding (max_period 10000). timesteps: [B] -> [B, dim] float32.
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos, double freq_shift);

struct ResnetBlock2DOptions {
  ResnetBlock2DOptions(int64_t in_channels, int64_t out_channels) : in_channels_(in_channels), out_channels_(out_channels) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(int64_t, temb_channels) = 0;  // 0: no time embedding (VAE)
  TORCH_ARG(int64_t, groups) = 32;
  TORCH_ARG(double, eps) = 1e-6;
  TORCH_ARG(double, output_scale_factor) = 1.0;
};

// ResnetBlock2D with time_embedding_norm "default" and SiLU.
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);
  // x: [B, Cin, H, W], temb: [B, temb_channels] or undefined -> [B, Cout, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});

  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, conv_shortcut{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};

 private:
  ResnetBlock2DOptions options_;
};
TORCH_MODULE(ResnetBlock2D);

// Downsample2D with use_conv: a stride-2 3×3 conv; padding 0 pads right/bottom by one first (VAE).
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t padding);
  at::Tensor forward(const at::Tensor& x);  // [B, C, H, W] -> [B, C, ⌈H/2⌉, ⌈W/2⌉]

  torch::nn::Conv2d conv{nullptr};

 private:
  int64_t padding_;
};
TORCH_MODULE(Downsample2D);

// Upsample2D with use_conv: nearest ×2 (or to `size`), then a 3×3 conv.
class Upsample2DImpl : public torch::nn::Module {
 public:
  explicit Upsample2DImpl(int64_t channels);
  at::Tensor forward(const at::Tensor& x, const std::optional<std::vector<int64_t>>& size = std::nullopt);

  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

struct AttentionOptions {
  AttentionOptions(int64_t query_dim, int64_t heads, int64_t dim_head)
      : query_dim_(query_dim), heads_(heads), dim_head_(dim_head) {}
  TORCH_ARG(int64_t, query_dim);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, dim_head);
  TORCH_ARG(int64_t, cross_attention_dim) = 0;  // 0: self-attention
  TORCH_ARG(bool, bias) = false;                // to_q / to_k / to_v bias
  TORCH_ARG(int64_t, norm_num_groups) = 0;      // > 0: group_norm before the projections (VAE)
  TORCH_ARG(double, eps) = 1e-5;
};

// diffusers Attention with AttnProcessor: to_q, to_k, to_v, to_out.0 (with bias), optional group_norm.
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionOptions& options);
  // x: [B, S, query_dim], context: [B, Sk, cross_attention_dim] or undefined -> [B, S, query_dim]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {});
  // The VAE form: x [B, C, H, W] -> group_norm, attention over H·W, + x (residual_connection).
  at::Tensor forward_spatial(const at::Tensor& x);

  torch::nn::GroupNorm group_norm{nullptr};
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr}, to_out0{nullptr};

 private:
  AttentionOptions options_;
};
TORCH_MODULE(Attention);

// GEGLU: proj [2·inner, dim] -> value half · gelu(gate half).
class GEGLUImpl : public torch::nn::Module {
 public:
  GEGLUImpl(int64_t dim_in, int64_t dim_out);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(GEGLU);

// FeedForward with activation "geglu": net.0 = GEGLU, net.1 = dropout, net.2 = Linear.
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, int64_t mult = 4);
  at::Tensor forward(const at::Tensor& x);
  GEGLU geglu{nullptr};
  torch::nn::Linear out{nullptr};
};
TORCH_MODULE(FeedForward);

// BasicTransformerBlock (norm_type layer_norm): self-attention, cross-attention, GEGLU feed-forward.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head, int64_t cross_attention_dim);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);  // [B, S, C] -> [B, S, C]

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DOptions {
  Transformer2DOptions(int64_t in_channels, int64_t heads, int64_t cross_attention_dim)
      : in_channels_(in_channels), heads_(heads), cross_attention_dim_(cross_attention_dim) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, heads);  // head dim = in_channels / heads
  TORCH_ARG(int64_t, cross_attention_dim);
  TORCH_ARG(int64_t, num_layers) = 1;
  TORCH_ARG(int64_t, norm_num_groups) = 32;
  TORCH_ARG(bool, use_linear_projection) = false;
};

// Transformer2DModel (continuous input): GroupNorm, proj_in (1×1 conv or Linear), blocks, proj_out, + x.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DOptions& options);
  // x: [B, C, H, W], context: [B, S, cross_attention_dim] -> [B, C, H, W]
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);

  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d proj_in_conv{nullptr}, proj_out_conv{nullptr};
  torch::nn::Linear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  std::vector<BasicTransformerBlock> transformer_blocks;

 private:
  Transformer2DOptions options_;
};
TORCH_MODULE(Transformer2DModel);

// TimestepEmbedding: linear_1, SiLU, linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim);
  at::Tensor forward(const at::Tensor& x);
  torch::nn::Linear linear_1{nullptr}, linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace dedpo::sd
