#include "dedpo/sd/vae.hpp"

#include <ATen/ATen.h>

#include "json_config.hpp"

namespace dedpo::sd {

using torch::nn::Conv2dOptions;
using torch::nn::GroupNormOptions;

namespace {
constexpr double kVaeEps = 1e-6;

template <typename T>
void register_list(torch::nn::Module& parent, const std::string& name, const std::vector<T>& items) {
  torch::nn::ModuleList list;
  for (const auto& item : items) list->push_back(item);
  parent.register_module(name, list);
}
}  // namespace

AutoencoderKLConfig AutoencoderKLConfig::from_json(const std::string& text, const std::string& origin) {
  auto cfg = detail::Config::parse(text, origin);
  AutoencoderKLConfig c;
  c.in_channels = cfg.get<int64_t>("in_channels", c.in_channels);
  c.out_channels = cfg.get<int64_t>("out_channels", c.out_channels);
  c.latent_channels = cfg.get<int64_t>("latent_channels", c.latent_channels);
  c.block_out_channels = cfg.get<std::vector<int64_t>>("block_out_channels", c.block_out_channels);
  c.layers_per_block = cfg.get<int64_t>("layers_per_block", c.layers_per_block);
  c.norm_num_groups = cfg.get<int64_t>("norm_num_groups", c.norm_num_groups);
  c.scaling_factor = cfg.get<double>("scaling_factor", c.scaling_factor);
  c.mid_block_add_attention = cfg.get<bool>("mid_block_add_attention", c.mid_block_add_attention);
  c.use_quant_conv = cfg.get<bool>("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = cfg.get<bool>("use_post_quant_conv", c.use_post_quant_conv);
  if (c.block_out_channels.empty()) cfg.fail("block_out_channels", "is empty");
  const auto n = c.block_out_channels.size();
  for (const auto& type : cfg.get<std::vector<std::string>>("down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D"))) {
    if (type != "DownEncoderBlock2D") cfg.fail("down_block_types", "entry '" + type + "' is not supported");
  }
  if (cfg.get<std::vector<std::string>>("down_block_types", std::vector<std::string>(n)).size() != n) {
    cfg.fail("down_block_types", "must have one entry per block_out_channels");
  }
  for (const auto& type : cfg.get<std::vector<std::string>>("up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D"))) {
    if (type != "UpDecoderBlock2D") cfg.fail("up_block_types", "entry '" + type + "' is not supported");
  }
  if (cfg.get<std::string>("act_fn", "silu") != "silu") cfg.fail("act_fn", "must be 'silu'");
  if (cfg.has("shift_factor")) cfg.fail("shift_factor", "is not supported");
  detail::check_model_fits(cfg, "VAE", c.parameter_lower_bound());
  return c;
}

double AutoencoderKLConfig::parameter_lower_bound() const {
  // The second 3x3 convolution of each resnet: layers_per_block per encoder level, one more per
  // decoder level, and the two resnets of each mid block at the deepest width.
  double total = 0;
  const double layers = static_cast<double>(layers_per_block);
  for (const int64_t channels : block_out_channels) {
    const double c = static_cast<double>(channels);
    total += (2 * layers + 1) * 9 * c * c;
  }
  const double deepest = static_cast<double>(block_out_channels.back());
  return total + 4 * 9 * deepest * deepest;
}

AutoencoderKLConfig AutoencoderKLConfig::from_file(const std::filesystem::path& path) {
  return from_json(detail::Config::read_text(path), "'" + path.string() + "'");
}

DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(int64_t in, int64_t out, int64_t num_layers, int64_t groups, bool add_downsample) {
  for (int64_t i = 0; i < num_layers; ++i) {
    resnets.push_back(ResnetBlock2D(ResnetBlock2DOptions(i == 0 ? in : out, out).groups(groups).eps(kVaeEps)));
  }
  register_list(*this, "resnets", resnets);
  if (add_downsample) {
    downsampler = Downsample2D(out, /*padding=*/0);
    register_list(*this, "downsamplers", std::vector<Downsample2D>{downsampler});
  }
}

at::Tensor DownEncoderBlock2DImpl::forward(at::Tensor x) {
  for (auto& resnet : resnets) x = resnet->forward(x);
  return downsampler ? downsampler->forward(x) : x;
}

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(int64_t in, int64_t out, int64_t num_layers, int64_t groups, bool add_upsample) {
  for (int64_t i = 0; i < num_layers; ++i) {
    resnets.push_back(ResnetBlock2D(ResnetBlock2DOptions(i == 0 ? in : out, out).groups(groups).eps(kVaeEps)));
  }
  register_list(*this, "resnets", resnets);
  if (add_upsample) {
    upsampler = Upsample2D(out);
    register_list(*this, "upsamplers", std::vector<Upsample2D>{upsampler});
  }
}

at::Tensor UpDecoderBlock2DImpl::forward(at::Tensor x) {
  for (auto& resnet : resnets) x = resnet->forward(x);
  return upsampler ? upsampler->forward(x) : x;
}

UNetMidBlock2DImpl::UNetMidBlock2DImpl(int64_t channels, int64_t groups, bool add_attention) {
  const auto options = ResnetBlock2DOptions(channels, channels).groups(groups).eps(kVaeEps);
  resnets.push_back(ResnetBlock2D(options));
  if (add_attention) {
    // One head of dim `channels` (attention_head_dim = block_out_channels[-1]), q/k/v with bias.
    attention = Attention(AttentionOptions(channels, 1, channels).bias(true).norm_num_groups(groups).eps(kVaeEps));
    register_list(*this, "attentions", std::vector<Attention>{attention});
  }
  resnets.push_back(ResnetBlock2D(options));
  register_list(*this, "resnets", resnets);
}

at::Tensor UNetMidBlock2DImpl::forward(const at::Tensor& x) {
  at::Tensor h = resnets[0]->forward(x);
  if (attention) h = attention->forward_spatial(h);
  return resnets[1]->forward(h);
}

VaeEncoderImpl::VaeEncoderImpl(const AutoencoderKLConfig& c) {
  const auto& boc = c.block_out_channels;
  conv_in = register_module("conv_in", torch::nn::Conv2d(Conv2dOptions(c.in_channels, boc[0], 3).padding(1)));
  int64_t out = boc[0];
  for (std::size_t i = 0; i < boc.size(); ++i) {
    const int64_t in = out;
    out = boc[i];
    down_blocks.push_back(DownEncoderBlock2D(in, out, c.layers_per_block, c.norm_num_groups, i + 1 < boc.size()));
  }
  register_list(*this, "down_blocks", down_blocks);
  mid_block = register_module("mid_block", UNetMidBlock2D(boc.back(), c.norm_num_groups, c.mid_block_add_attention));
  conv_norm_out = register_module(
      "conv_norm_out", torch::nn::GroupNorm(GroupNormOptions(c.norm_num_groups, boc.back()).eps(kVaeEps)));
  conv_out = register_module("conv_out", torch::nn::Conv2d(Conv2dOptions(boc.back(), 2 * c.latent_channels, 3).padding(1)));
}

at::Tensor VaeEncoderImpl::forward(const at::Tensor& image) {
  at::Tensor h = conv_in->forward(image);
  for (auto& block : down_blocks) h = block->forward(h);
  h = mid_block->forward(h);
  return conv_out->forward(at::silu(conv_norm_out->forward(h)));
}

VaeDecoderImpl::VaeDecoderImpl(const AutoencoderKLConfig& c) {
  const auto& boc = c.block_out_channels;
  conv_in = register_module("conv_in", torch::nn::Conv2d(Conv2dOptions(c.latent_channels, boc.back(), 3).padding(1)));
  mid_block = register_module("mid_block", UNetMidBlock2D(boc.back(), c.norm_num_groups, c.mid_block_add_attention));
  int64_t out = boc.back();
  for (std::size_t i = 0; i < boc.size(); ++i) {
    const int64_t in = out;
    out = boc[boc.size() - 1 - i];
    up_blocks.push_back(UpDecoderBlock2D(in, out, c.layers_per_block + 1, c.norm_num_groups, i + 1 < boc.size()));
  }
  register_list(*this, "up_blocks", up_blocks);
  conv_norm_out = register_module("conv_norm_out", torch::nn::GroupNorm(GroupNormOptions(c.norm_num_groups, boc[0]).eps(kVaeEps)));
  conv_out = register_module("conv_out", torch::nn::Conv2d(Conv2dOptions(boc[0], c.out_channels, 3).padding(1)));
}

at::Tensor VaeDecoderImpl::forward(const at::Tensor& latents) {
  at::Tensor h = mid_block->forward(conv_in->forward(latents));
  for (auto& block : up_blocks) h = block->forward(h);
  return conv_out->forward(at::silu(conv_norm_out->forward(h)));
}

AutoencoderKLImpl::AutoencoderKLImpl(AutoencoderKLConfig config) : config_(std::move(config)) {
  encoder = register_module("encoder", VaeEncoder(config_));
  decoder = register_module("decoder", VaeDecoder(config_));
  const int64_t z = config_.latent_channels;
  if (config_.use_quant_conv) quant_conv = register_module("quant_conv", torch::nn::Conv2d(Conv2dOptions(2 * z, 2 * z, 1)));
  if (config_.use_post_quant_conv) {
    post_quant_conv = register_module("post_quant_conv", torch::nn::Conv2d(Conv2dOptions(z, z, 1)));
  }
}

DiagonalGaussian AutoencoderKLImpl::encode(const at::Tensor& image) {
  DiagonalGaussian out;
  out.moments = encoder->forward(image);
  if (quant_conv) out.moments = quant_conv->forward(out.moments);
  const auto halves = out.moments.chunk(2, 1);  // mean, logvar: [B, latent, h, w]
  out.mean = halves[0];
  out.logvar = at::clamp(halves[1], -30.0, 20.0);
  out.std = at::exp(0.5 * out.logvar);
  out.var = at::exp(out.logvar);
  return out;
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& latents, std::map<std::string, at::Tensor>* trace) {
  at::Tensor z = post_quant_conv ? post_quant_conv->forward(latents) : latents;
  if (trace) (*trace)["post_quant_conv"] = z;
  return decoder->forward(z);
}

}  // namespace dedpo::sd
