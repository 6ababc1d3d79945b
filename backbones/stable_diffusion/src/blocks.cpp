#include "dedpo/sd/blocks.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "dedpo/sd/geglu.hpp"
#include "dedpo/sd/im2col_conv.hpp"
#include "dedpo/sd/lora.hpp"
#include "dedpo/sd/pixel_linear.hpp"
#include "dedpo/sd/small_head_attention.hpp"

namespace dedpo::sd {

using torch::nn::Conv2dOptions;
using torch::nn::GroupNormOptions;
using torch::nn::LinearOptions;

namespace {

// A 1×1 convolution (stride 1, no padding, one group: the UNet's shortcuts and projections) on a
// contiguous CPU tensor: pixel_linear where it runs (AMD CPUs with AVX-512), else one batched
// matmul over the pixels, [O, C] × [B, C, HW]. oneDNN reorders the activations and the weight into
// its blocked layout at every call, which makes these about 2× slower there, forward and backward
// (docs/performance.md). Elsewhere (a GPU, or the VAE's channels-last activations, whose layout
// the module's output keeps and the next convolutions depend on) the module runs as it is.
at::Tensor pointwise_conv(torch::nn::Conv2d& conv, const at::Tensor& x) {
  if (!x.device().is_cpu() || !x.is_contiguous()) return conv->forward(x);
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), o = conv->weight.size(0);
  const at::Tensor pixels = x.view({b, c, h * w});
  const at::Tensor weight = conv->weight.reshape({o, c});
  if (pixel_linear_applies(pixels, PixelLayout::channels_first, weight, conv->bias)) {
    return pixel_linear(pixels, PixelLayout::channels_first, weight, conv->bias, PixelLayout::channels_first)
        .view({b, o, h, w});
  }
  const at::Tensor matrix = weight.expand({b, o, c});
  const at::Tensor y = conv->bias.defined()
                           ? at::baddbmm(conv->bias.reshape({1, o, 1}).expand({b, o, h * w}), matrix, pixels)
                           : at::bmm(matrix, pixels);
  return y.view({b, o, h, w});
}

// A k×k convolution module's forward, on im2col_conv2d where that is the faster choice (the deep,
// small levels on AMD CPUs: im2col_conv_applies), else the module's own (oneDNN on the CPU).
at::Tensor convolve(torch::nn::Conv2d& conv, const at::Tensor& x) {
  const auto& o = conv->options;
  const auto* padding = std::get_if<torch::ExpandingArray<2>>(&o.padding());
  const bool plain = padding != nullptr && (*padding)->at(0) == (*padding)->at(1) && o.stride()->at(0) == o.stride()->at(1) &&
                     o.dilation()->at(0) == 1 && o.dilation()->at(1) == 1 && o.groups() == 1 &&
                     std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode());
  if (plain && im2col_conv_applies(x, conv->weight, conv->bias, o.stride()->at(0), (*padding)->at(0))) {
    return im2col_conv2d(x, conv->weight, conv->bias, o.stride()->at(0), (*padding)->at(0));
  }
  return conv->forward(x);
}

// A Transformer2DModel's proj_in or proj_out (a 1×1 convolution, or a linear layer without a LoRA
// adapter) as pixel_linear's weight and bias, where pixel_linear serves it for x laid out as
// `from`; nullopt where the layer must run as a module.
struct PixelProjection {
  at::Tensor weight, bias;
};
std::optional<PixelProjection> pixel_projection(const torch::nn::Conv2d& conv, const torch::nn::Linear& linear,
                                                const at::Tensor& x, PixelLayout from) {
  PixelProjection p;
  if (conv) {
    p = {conv->weight.flatten(1), conv->bias};
  } else {
    const LoraAdapters* adapters = ActiveAdapters::current();
    if (adapters != nullptr && adapters->find(*linear) != nullptr) return std::nullopt;
    p = {linear->weight, linear->bias};
  }
  if (!pixel_linear_applies(x, from, p.weight, p.bias)) return std::nullopt;
  return p;
}

}  // namespace

at::Tensor scaled_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  std::optional<at::Tensor> additive_mask;
  if (mask.defined()) additive_mask = mask.to(q.scalar_type());  // a float mask must match q's dtype (autocast)
  return at::scaled_dot_product_attention(q, k, v, additive_mask);
}

at::Tensor multi_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  if (small_head_attention_applies(q, k, v, heads)) return small_head_attention(q, k, v, heads);
  const int64_t b = q.size(0), sq = q.size(1), sk = k.size(1), c = q.size(2), d = c / heads;
  const at::Tensor qh = q.reshape({b, sq, heads, d}).transpose(1, 2);  // [B, H, Sq, D]
  const at::Tensor kh = k.reshape({b, sk, heads, d}).transpose(1, 2);  // [B, H, Sk, D]
  const at::Tensor vh = v.reshape({b, sk, heads, d}).transpose(1, 2);  // [B, H, Sk, D]
  return scaled_attention(qh, kh, vh).transpose(1, 2).reshape({b, sq, c});
}

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos, double freq_shift) {
  const int64_t half = dim / 2;
  const auto f32 = timesteps.options().dtype(at::kFloat);
  at::Tensor exponent = -std::log(10000.0) * at::arange(0, half, f32);
  exponent = exponent / (static_cast<double>(half) - freq_shift);
  const at::Tensor freqs = at::exp(exponent);                                    // [half]
  const at::Tensor args = timesteps.reshape({-1, 1}).to(at::kFloat) * freqs.unsqueeze(0);  // [B, half]
  at::Tensor emb = flip_sin_to_cos ? at::cat({at::cos(args), at::sin(args)}, -1) : at::cat({at::sin(args), at::cos(args)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1, 0, 0});
  return emb;
}

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : options_(o) {
  norm1 = register_module("norm1", torch::nn::GroupNorm(GroupNormOptions(o.groups(), o.in_channels()).eps(o.eps())));
  conv1 = register_module("conv1", torch::nn::Conv2d(Conv2dOptions(o.in_channels(), o.out_channels(), 3).padding(1)));
  if (o.temb_channels() > 0) {
    time_emb_proj = register_module("time_emb_proj", torch::nn::Linear(o.temb_channels(), o.out_channels()));
  }
  norm2 = register_module("norm2", torch::nn::GroupNorm(GroupNormOptions(o.groups(), o.out_channels()).eps(o.eps())));
  conv2 = register_module("conv2", torch::nn::Conv2d(Conv2dOptions(o.out_channels(), o.out_channels(), 3).padding(1)));
  if (o.in_channels() != o.out_channels()) {
    conv_shortcut = register_module("conv_shortcut", torch::nn::Conv2d(Conv2dOptions(o.in_channels(), o.out_channels(), 1)));
  }
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x, const at::Tensor& temb) {
  at::Tensor h = convolve(conv1, at::silu(norm1->forward(x)));
  if (temb.defined() && time_emb_proj) {
    h = h + linear(time_emb_proj, at::silu(temb)).unsqueeze(-1).unsqueeze(-1);  // [B, C] -> [B, C, 1, 1]
  }
  h = convolve(conv2, at::silu(norm2->forward(h)));
  const at::Tensor skip = conv_shortcut ? pointwise_conv(conv_shortcut, x) : x;
  at::Tensor out = skip + h;
  if (options_.output_scale_factor() != 1.0) out = out / options_.output_scale_factor();
  return out;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t padding) : padding_(padding) {
  conv = register_module("conv", torch::nn::Conv2d(Conv2dOptions(channels, channels, 3).stride(2).padding(padding)));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (padding_ == 0) return convolve(conv, at::constant_pad_nd(x, {0, 1, 0, 1}, 0));  // pad right and bottom
  return convolve(conv, x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels) {
  conv = register_module("conv", torch::nn::Conv2d(Conv2dOptions(channels, channels, 3).padding(1)));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, const std::optional<std::vector<int64_t>>& size) {
  const std::vector<int64_t> out_size = size ? *size : std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2};
  return convolve(conv, at::upsample_nearest2d(x, out_size));  // [B, C, H, W] -> [B, C, 2H, 2W]
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : options_(o) {
  const int64_t inner = o.heads() * o.dim_head();
  const int64_t context_dim = o.cross_attention_dim() > 0 ? o.cross_attention_dim() : o.query_dim();
  if (o.norm_num_groups() > 0) {
    group_norm = register_module(
        "group_norm", torch::nn::GroupNorm(GroupNormOptions(o.norm_num_groups(), o.query_dim()).eps(o.eps())));
  }
  to_q = register_module("to_q", torch::nn::Linear(LinearOptions(o.query_dim(), inner).bias(o.bias())));
  to_k = register_module("to_k", torch::nn::Linear(LinearOptions(context_dim, inner).bias(o.bias())));
  to_v = register_module("to_v", torch::nn::Linear(LinearOptions(context_dim, inner).bias(o.bias())));
  torch::nn::ModuleList to_out;
  to_out0 = torch::nn::Linear(inner, o.query_dim());
  to_out->push_back(to_out0);
  register_module("to_out", to_out);
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const at::Tensor& ctx = context.defined() ? context : x;
  return linear(to_out0, multi_head_attention(linear(to_q, x), linear(to_k, ctx), linear(to_v, ctx), options_.heads()));
}

at::Tensor AttentionImpl::forward_spatial(const at::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor t = group_norm ? group_norm->forward(x) : x;
  t = t.view({b, c, h * w}).transpose(1, 2);  // [B, HW, C]
  t = forward(t);
  return t.transpose(1, 2).reshape({b, c, h, w}) + x;
}

GEGLUImpl::GEGLUImpl(int64_t dim_in, int64_t dim_out) {
  proj = register_module("proj", torch::nn::Linear(dim_in, dim_out * 2));
}

at::Tensor GEGLUImpl::forward(const at::Tensor& x) {
  const at::Tensor projected = linear(proj, x);  // value, gate: [.., inner] each
  if (geglu_applies(projected)) return geglu(projected);
  const auto halves = projected.chunk(2, -1);
  return halves[0] * at::gelu(halves[1]);
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult) {
  torch::nn::ModuleList net;
  geglu = GEGLU(dim, dim * mult);
  out = torch::nn::Linear(dim * mult, dim);
  net->push_back(geglu);
  net->push_back(torch::nn::Identity());  // net.1: dropout
  net->push_back(out);
  register_module("net", net);
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) { return linear(out, geglu->forward(x)); }

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t dim_head,
                                                     int64_t cross_attention_dim) {
  const auto ln = torch::nn::LayerNormOptions({dim}).eps(1e-5);
  norm1 = register_module("norm1", torch::nn::LayerNorm(ln));
  attn1 = register_module("attn1", Attention(AttentionOptions(dim, heads, dim_head)));
  norm2 = register_module("norm2", torch::nn::LayerNorm(ln));
  attn2 = register_module("attn2", Attention(AttentionOptions(dim, heads, dim_head).cross_attention_dim(cross_attention_dim)));
  norm3 = register_module("norm3", torch::nn::LayerNorm(ln));
  ff = register_module("ff", FeedForward(dim));
}

at::Tensor BasicTransformerBlockImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  at::Tensor h = x + attn1->forward(norm1->forward(x));
  h = h + attn2->forward(norm2->forward(h), context);
  return h + ff->forward(norm3->forward(h));
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DOptions& o) : options_(o) {
  const int64_t c = o.in_channels();
  norm = register_module("norm", torch::nn::GroupNorm(GroupNormOptions(o.norm_num_groups(), c).eps(1e-6)));
  if (o.use_linear_projection()) {
    proj_in_linear = register_module("proj_in", torch::nn::Linear(c, c));
  } else {
    proj_in_conv = register_module("proj_in", torch::nn::Conv2d(Conv2dOptions(c, c, 1)));
  }
  torch::nn::ModuleList blocks;
  for (int64_t i = 0; i < o.num_layers(); ++i) {
    transformer_blocks.push_back(BasicTransformerBlock(c, o.heads(), c / o.heads(), o.cross_attention_dim()));
    blocks->push_back(transformer_blocks.back());
  }
  register_module("transformer_blocks", blocks);
  if (o.use_linear_projection()) {
    proj_out_linear = register_module("proj_out", torch::nn::Linear(c, c));
  } else {
    proj_out_conv = register_module("proj_out", torch::nn::Conv2d(Conv2dOptions(c, c, 1)));
  }
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  at::Tensor t = norm->forward(x).reshape({b, c, h * w});  // [B, C, HW]
  // proj_in from channels first into tokens in one pass where pixel_linear serves it; else the
  // layer, then one contiguous copy: the reshape alone is a view with channels-first strides, which
  // every layer norm and linear of the blocks below would copy again (2–3% of a DPO step on sd15_small).
  if (const auto in = pixel_projection(proj_in_conv, proj_in_linear, t, PixelLayout::channels_first)) {
    t = pixel_linear(t, PixelLayout::channels_first, in->weight, in->bias, PixelLayout::tokens);
  } else {
    if (proj_in_conv) t = pointwise_conv(proj_in_conv, t.view({b, c, h, w})).view({b, c, h * w});
    t = t.transpose(1, 2).contiguous();  // [B, HW, C]
    if (proj_in_linear) t = linear(proj_in_linear, t);
  }
  for (auto& block : transformer_blocks) t = block->forward(t, context);
  if (const auto out = pixel_projection(proj_out_conv, proj_out_linear, t, PixelLayout::tokens)) {
    t = pixel_linear(t, PixelLayout::tokens, out->weight, out->bias, PixelLayout::channels_first);
  } else {
    if (proj_out_linear) t = linear(proj_out_linear, t);
    t = t.transpose(1, 2).contiguous();  // [B, C, HW]
    if (proj_out_conv) t = pointwise_conv(proj_out_conv, t.view({b, c, h, w}));
  }
  return t.reshape({b, c, h, w}) + x;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim) {
  linear_1 = register_module("linear_1", torch::nn::Linear(in_channels, time_embed_dim));
  linear_2 = register_module("linear_2", torch::nn::Linear(time_embed_dim, time_embed_dim));
}

at::Tensor TimestepEmbeddingImpl::forward(const at::Tensor& x) { return linear(linear_2, at::silu(linear(linear_1, x))); }

}  // namespace dedpo::sd
