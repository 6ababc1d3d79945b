#pragma once
// AutoencoderKL (diffusers 0.31, SD layout): Encoder (DownEncoderBlock2D ×N, UNetMidBlock2D with
// attention), quant_conv, DiagonalGaussian posterior, post_quant_conv, Decoder (UpDecoderBlock2D ×N).
// encode/decode do not apply scaling_factor: a pipeline multiplies latents by it after encode and
// divides before decode.
//
//   dedpo::sd::AutoencoderKL vae(dedpo::sd::AutoencoderKLConfig::from_file("vae/config.json"));
//   dedpo::safetensors::load_into(*vae, "vae/diffusion_pytorch_model.safetensors");
//   at::Tensor z = vae->encode(image).mean * vae->config().scaling_factor;
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "dedpo/sd/blocks.hpp"

namespace dedpo::sd {

struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels{128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  double scaling_factor = 0.18215;
  bool mid_block_add_attention = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;

  static AutoencoderKLConfig from_json(const std::string& text, const std::string& origin = "<string>");
  static AutoencoderKLConfig from_file(const std::filesystem::path& path);
  // A lower bound of the parameter count, from the sizes alone (from_json refuses a config whose
  // model cannot fit in memory).
  double parameter_lower_bound() const;
};

// DownEncoderBlock2D: resnets (no time embedding) and an optional downsampler (padding 0).
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  DownEncoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups, bool add_downsample);
  at::Tensor forward(at::Tensor x);
  std::vector<ResnetBlock2D> resnets;
  Downsample2D downsampler{nullptr};
};
TORCH_MODULE(DownEncoderBlock2D);

// UpDecoderBlock2D: resnets and an optional upsampler.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, int64_t groups, bool add_upsample);
  at::Tensor forward(at::Tensor x);
  std::vector<ResnetBlock2D> resnets;
  Upsample2D upsampler{nullptr};
};
TORCH_MODULE(UpDecoderBlock2D);

// UNetMidBlock2D as the VAE uses it: resnet, (single-head attention with group_norm, resnet).
class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DImpl(int64_t channels, int64_t groups, bool add_attention);
  at::Tensor forward(const at::Tensor& x);
  std::vector<ResnetBlock2D> resnets;
  Attention attention{nullptr};
};
TORCH_MODULE(UNetMidBlock2D);

class VaeEncoderImpl : public torch::nn::Module {
 public:
  explicit VaeEncoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& image);  // [B, in, H, W] -> [B, 2·latent, H/2^(n-1), W/2^(n-1)]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  std::vector<DownEncoderBlock2D> down_blocks;
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeEncoder);

class VaeDecoderImpl : public torch::nn::Module {
 public:
  explicit VaeDecoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& latents);  // [B, latent, h, w] -> [B, out, h·2^(n-1), w·2^(n-1)]
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  std::vector<UpDecoderBlock2D> up_blocks;
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VaeDecoder);

// The posterior of encode(): moments split into mean and log-variance (clamped to [-30, 20]).
struct DiagonalGaussian {
  at::Tensor moments;  // [B, 2·latent, h, w]
  at::Tensor mean;     // [B, latent, h, w]
  at::Tensor logvar;
  at::Tensor std;
  at::Tensor var;
  at::Tensor sample(const at::Tensor& noise) const { return mean + std * noise; }
};

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(AutoencoderKLConfig config);
  DiagonalGaussian encode(const at::Tensor& image);
  // trace (optional) receives "post_quant_conv" as diffusers' intermediate output.
  at::Tensor decode(const at::Tensor& latents, std::map<std::string, at::Tensor>* trace = nullptr);
  const AutoencoderKLConfig& config() const { return config_; }

  VaeEncoder encoder{nullptr};
  VaeDecoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};

 private:
  AutoencoderKLConfig config_;
};
TORCH_MODULE(AutoencoderKL);

}  // namespace dedpo::sd
