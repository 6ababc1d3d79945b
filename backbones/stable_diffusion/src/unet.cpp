#include "dedpo/sd/unet.hpp"

#include <ATen/ATen.h>

#include "dedpo/sd/checkpoint.hpp"
#include "dedpo/sd/lora.hpp"
#include "json_config.hpp"

namespace dedpo::sd {

using torch::nn::Conv2dOptions;
using torch::nn::GroupNormOptions;

namespace {

template <typename T>
void register_list(torch::nn::Module& parent, const std::string& name, const std::vector<T>& items) {
  torch::nn::ModuleList list;
  for (const auto& item : items) list->push_back(item);
  parent.register_module(name, list);
}

std::vector<Transformer2DModel> make_transformers(int64_t count, int64_t channels, int64_t groups,
                                                  const Transformer2DStackOptions& a) {
  std::vector<Transformer2DModel> out;
  for (int64_t i = 0; i < count; ++i) {
    out.push_back(Transformer2DModel(Transformer2DOptions(channels, a.heads, a.cross_attention_dim)
                                         .num_layers(a.transformer_layers)
                                         .norm_num_groups(groups)
                                         .use_linear_projection(a.use_linear_projection)));
  }
  return out;
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const std::string& text, const std::string& origin) {
  auto cfg = detail::Config::parse(text, origin);
  UNet2DConditionConfig c;
  c.in_channels = cfg.get<int64_t>("in_channels", c.in_channels);
  c.out_channels = cfg.get<int64_t>("out_channels", c.out_channels);
  c.center_input_sample = cfg.get<bool>("center_input_sample", c.center_input_sample);
  c.flip_sin_to_cos = cfg.get<bool>("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = cfg.get<double>("freq_shift", c.freq_shift);
  c.block_out_channels = cfg.get<std::vector<int64_t>>("block_out_channels", {320, 640, 1280, 1280});
  if (c.block_out_channels.empty()) cfg.fail("block_out_channels", "is empty");
  for (const int64_t channels : c.block_out_channels) {
    if (channels <= 0) cfg.fail("block_out_channels", "must be positive sizes");
  }
  const std::size_t n = c.block_out_channels.size();
  c.down_block_types = cfg.get<std::vector<std::string>>(
      "down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"});
  c.up_block_types = cfg.get<std::vector<std::string>>(
      "up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"});
  if (c.down_block_types.size() != n) cfg.fail("down_block_types", "must have one entry per block_out_channels");
  if (c.up_block_types.size() != n) cfg.fail("up_block_types", "must have one entry per block_out_channels");
  for (const auto& t : c.down_block_types) {
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D") cfg.fail("down_block_types", "entry '" + t + "' is not supported");
  }
  for (const auto& t : c.up_block_types) {
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D") cfg.fail("up_block_types", "entry '" + t + "' is not supported");
  }
  // An explicit null means no mid block; an absent key means diffusers' default.
  c.mid_block_type = cfg.present("mid_block_type") ? cfg.get<std::string>("mid_block_type", "") : c.mid_block_type;
  if (!c.mid_block_type.empty() && c.mid_block_type != "UNetMidBlock2DCrossAttn") {
    cfg.fail("mid_block_type", "'" + c.mid_block_type + "' is not supported");
  }
  auto int_or_list = [&](const std::string& key, int64_t fallback) {
    return cfg.has(key) ? cfg.int_or_list(key, n) : std::vector<int64_t>(n, fallback);
  };
  c.layers_per_block = int_or_list("layers_per_block", 2);
  c.transformer_layers_per_block = int_or_list("transformer_layers_per_block", 1);
  c.cross_attention_dim = int_or_list("cross_attention_dim", 1280);
  // diffusers: num_attention_heads = num_attention_heads or attention_head_dim (SD's naming).
  c.num_attention_heads = cfg.has("num_attention_heads") ? int_or_list("num_attention_heads", 8)
                                                         : int_or_list("attention_head_dim", 8);
  c.norm_num_groups = cfg.get<int64_t>("norm_num_groups", c.norm_num_groups);
  c.norm_eps = cfg.get<double>("norm_eps", c.norm_eps);
  c.use_linear_projection = cfg.get<bool>("use_linear_projection", c.use_linear_projection);
  c.mid_block_scale_factor = cfg.get<double>("mid_block_scale_factor", c.mid_block_scale_factor);
  c.downsample_padding = cfg.get<int64_t>("downsample_padding", c.downsample_padding);
  c.conv_in_kernel = cfg.get<int64_t>("conv_in_kernel", c.conv_in_kernel);
  c.conv_out_kernel = cfg.get<int64_t>("conv_out_kernel", c.conv_out_kernel);
  int64_t default_time_embed_dim = 0;  // diffusers: 4 x the first block's channels
  if (__builtin_mul_overflow(int64_t{4}, c.block_out_channels[0], &default_time_embed_dim)) {
    cfg.fail("block_out_channels", "is too large");
  }
  c.time_embed_dim = cfg.get<int64_t>("time_embedding_dim", default_time_embed_dim);
  c.addition_embed_type = cfg.get<std::string>("addition_embed_type", "");
  if (!c.addition_embed_type.empty()) {
    if (c.addition_embed_type != "text_time") cfg.fail("addition_embed_type", "'" + c.addition_embed_type + "' is not supported");
    c.addition_time_embed_dim = cfg.get<int64_t>("addition_time_embed_dim");
    c.projection_class_embeddings_input_dim = cfg.get<int64_t>("projection_class_embeddings_input_dim");
  }
  // Features of UNet2DConditionModel this port does not implement: reject rather than ignore.
  for (const char* key : {"class_embed_type", "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim",
                          "encoder_hid_dim_type", "cross_attention_norm", "timestep_post_act", "time_embedding_act_fn",
                          "reverse_transformer_layers_per_block"}) {
    if (cfg.has(key)) cfg.fail(key, "is not supported");
  }
  for (const char* key : {"dual_cross_attention", "resnet_skip_time_act", "class_embeddings_concat"}) {
    if (cfg.get<bool>(key, false)) cfg.fail(key, "true is not supported");
  }
  if (cfg.has("only_cross_attention")) {
    try {
      if (cfg.get<bool>("only_cross_attention")) cfg.fail("only_cross_attention", "true is not supported");
    } catch (const Error&) {
      cfg.fail("only_cross_attention", "must be false");
    }
  }
  if (cfg.get<std::string>("act_fn", "silu") != "silu") cfg.fail("act_fn", "must be 'silu'");
  if (cfg.get<std::string>("resnet_time_scale_shift", "default") != "default") cfg.fail("resnet_time_scale_shift", "must be 'default'");
  if (cfg.get<std::string>("time_embedding_type", "positional") != "positional") cfg.fail("time_embedding_type", "must be 'positional'");
  if (cfg.get<std::string>("attention_type", "default") != "default") cfg.fail("attention_type", "must be 'default'");
  if (cfg.get<double>("resnet_out_scale_factor", 1.0) != 1.0) cfg.fail("resnet_out_scale_factor", "must be 1");
  for (std::size_t i = 0; i < n; ++i) {
    if (c.num_attention_heads[i] <= 0 || c.block_out_channels[i] % c.num_attention_heads[i] != 0) {
      cfg.fail("attention_head_dim", "(heads) must divide block_out_channels");
    }
  }
  detail::check_model_fits(cfg, "UNet", c.parameter_lower_bound());
  return c;
}

double UNet2DConditionConfig::parameter_lower_bound() const {
  // Per level: the second 3x3 convolution of each resnet (down: layers_per_block, up: one more),
  // and in cross-attention levels each transformer layer's projections (self-attention 4c², the
  // cross-attention's query and output 2c², key and value from the text 2·c·cross, GEGLU
  // feed-forward 12c²).
  double total = 0;
  for (std::size_t i = 0; i < block_out_channels.size(); ++i) {
    const double c = static_cast<double>(block_out_channels[i]);
    const double layers = static_cast<double>(layers_per_block[i]);
    total += (2 * layers + 1) * 9 * c * c;
    if (down_block_types[i] == "CrossAttnDownBlock2D") {
      const double cross = static_cast<double>(cross_attention_dim[i]);
      total += layers * static_cast<double>(transformer_layers_per_block[i]) * (18 * c * c + 2 * c * cross);
    }
  }
  return total;
}

UNet2DConditionConfig UNet2DConditionConfig::from_file(const std::filesystem::path& path) {
  return from_json(detail::Config::read_text(path), "'" + path.string() + "'");
}

UNetDownBlockImpl::UNetDownBlockImpl(int64_t in, int64_t out, int64_t num_layers, const ResnetBlock2DOptions& resnet,
                                     const std::optional<Transformer2DStackOptions>& attention, bool add_downsample,
                                     int64_t downsample_padding) {
  for (int64_t i = 0; i < num_layers; ++i) {
    ResnetBlock2DOptions o = resnet;
    resnets.push_back(ResnetBlock2D(o.in_channels(i == 0 ? in : out).out_channels(out)));
  }
  if (attention) {
    attentions = make_transformers(num_layers, out, resnet.groups(), *attention);
    register_list(*this, "attentions", attentions);
  }
  register_list(*this, "resnets", resnets);
  if (add_downsample) {
    downsampler = Downsample2D(out, downsample_padding);
    register_list(*this, "downsamplers", std::vector<Downsample2D>{downsampler});
  }
}

std::pair<at::Tensor, std::vector<at::Tensor>> UNetDownBlockImpl::forward(at::Tensor x, const at::Tensor& temb,
                                                                          const at::Tensor& context) {
  std::vector<at::Tensor> states;
  for (std::size_t i = 0; i < resnets.size(); ++i) {
    x = resnets[i]->forward(x, temb);
    if (!attentions.empty()) x = attentions[i]->forward(x, context);
    states.push_back(x);
  }
  if (downsampler) {
    x = downsampler->forward(x);  // [B, C, H, W] -> [B, C, H/2, W/2]
    states.push_back(x);
  }
  return {x, states};
}

UNetUpBlockImpl::UNetUpBlockImpl(int64_t in, int64_t prev_out, int64_t out, int64_t num_layers,
                                 const ResnetBlock2DOptions& resnet, const std::optional<Transformer2DStackOptions>& attention,
                                 bool add_upsample) {
  for (int64_t i = 0; i < num_layers; ++i) {
    const int64_t skip_channels = i == num_layers - 1 ? in : out;
    const int64_t resnet_in = i == 0 ? prev_out : out;
    ResnetBlock2DOptions o = resnet;
    resnets.push_back(ResnetBlock2D(o.in_channels(resnet_in + skip_channels).out_channels(out)));
  }
  if (attention) {
    attentions = make_transformers(num_layers, out, resnet.groups(), *attention);
    register_list(*this, "attentions", attentions);
  }
  register_list(*this, "resnets", resnets);
  if (add_upsample) {
    upsampler = Upsample2D(out);
    register_list(*this, "upsamplers", std::vector<Upsample2D>{upsampler});
  }
}

at::Tensor UNetUpBlockImpl::forward(at::Tensor x, const std::vector<at::Tensor>& skips, const at::Tensor& temb,
                                    const at::Tensor& context, const std::optional<std::vector<int64_t>>& upsample_size) {
  TORCH_CHECK(skips.size() == resnets.size(), "UNet up block: expected ", resnets.size(), " skip states, got ", skips.size());
  for (std::size_t i = 0; i < resnets.size(); ++i) {
    x = at::cat({x, skips[skips.size() - 1 - i]}, 1);  // [B, C + Cskip, H, W]
    x = resnets[i]->forward(x, temb);
    if (!attentions.empty()) x = attentions[i]->forward(x, context);
  }
  return upsampler ? upsampler->forward(x, upsample_size) : x;
}

UNetMidBlock2DCrossAttnImpl::UNetMidBlock2DCrossAttnImpl(int64_t channels, const ResnetBlock2DOptions& resnet,
                                                         const Transformer2DStackOptions& attention) {
  ResnetBlock2DOptions o = resnet;
  o.in_channels(channels).out_channels(channels);
  resnets = {ResnetBlock2D(o), ResnetBlock2D(o)};
  attentions = make_transformers(1, channels, resnet.groups(), attention);
  register_list(*this, "attentions", attentions);
  register_list(*this, "resnets", resnets);
}

at::Tensor UNetMidBlock2DCrossAttnImpl::forward(const at::Tensor& x, const at::Tensor& temb, const at::Tensor& context) {
  at::Tensor h = resnets[0]->forward(x, temb);
  h = attentions[0]->forward(h, context);
  return resnets[1]->forward(h, temb);
}

UNet2DConditionModelImpl::UNet2DConditionModelImpl(UNet2DConditionConfig config) : config_(std::move(config)) {
  const auto& c = config_;
  const auto& boc = c.block_out_channels;
  const std::size_t n = boc.size();
  conv_in = register_module("conv_in", torch::nn::Conv2d(Conv2dOptions(c.in_channels, boc[0], c.conv_in_kernel)
                                                             .padding((c.conv_in_kernel - 1) / 2)));
  time_embedding = register_module("time_embedding", TimestepEmbedding(boc[0], c.time_embed_dim));
  if (c.addition_embed_type == "text_time") {
    add_embedding = register_module("add_embedding", TimestepEmbedding(c.projection_class_embeddings_input_dim, c.time_embed_dim));
  }
  const auto resnet = ResnetBlock2DOptions(0, 0).temb_channels(c.time_embed_dim).groups(c.norm_num_groups).eps(c.norm_eps);
  auto attention_at = [&](std::size_t i) {
    return Transformer2DStackOptions{c.transformer_layers_per_block[i], c.num_attention_heads[i], c.cross_attention_dim[i],
                                     c.use_linear_projection};
  };

  int64_t out = boc[0];
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = boc[i];
    std::optional<Transformer2DStackOptions> attention;
    if (c.down_block_types[i] == "CrossAttnDownBlock2D") attention = attention_at(i);
    down_blocks.push_back(UNetDownBlock(in, out, c.layers_per_block[i], resnet, attention, i + 1 < n, c.downsample_padding));
  }
  register_list(*this, "down_blocks", down_blocks);

  if (!c.mid_block_type.empty()) {
    ResnetBlock2DOptions mid = resnet;
    mid.output_scale_factor(c.mid_block_scale_factor);
    mid_block = register_module("mid_block", UNetMidBlock2DCrossAttn(boc.back(), mid, attention_at(n - 1)));
  }

  out = boc.back();
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t r = n - 1 - i;  // index into the down-block lists, reversed
    const int64_t prev_out = out;
    out = boc[r];
    const int64_t in = boc[r == 0 ? 0 : r - 1];  // reversed[min(i + 1, n - 1)]
    std::optional<Transformer2DStackOptions> attention;
    if (c.up_block_types[i] == "CrossAttnUpBlock2D") attention = attention_at(r);
    up_blocks.push_back(UNetUpBlock(in, prev_out, out, c.layers_per_block[r] + 1, resnet, attention, i + 1 < n));
  }
  register_list(*this, "up_blocks", up_blocks);

  conv_norm_out = register_module("conv_norm_out",
                                  torch::nn::GroupNorm(GroupNormOptions(c.norm_num_groups, boc[0]).eps(c.norm_eps)));
  conv_out = register_module("conv_out", torch::nn::Conv2d(Conv2dOptions(boc[0], c.out_channels, c.conv_out_kernel)
                                                               .padding((c.conv_out_kernel - 1) / 2)));
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timesteps, const at::Tensor& context,
                                             const std::optional<UNetAddedCond>& added,
                                             std::map<std::string, at::Tensor>* trace) {
  const auto& c = config_;
  auto record = [&](const std::string& name, const at::Tensor& t) {
    if (trace) (*trace)[name] = t;
  };
  const int64_t batch = sample.size(0);
  // Skip sizes must be forwarded to the upsamplers when H or W is not a multiple of 2^upsamplers.
  const int64_t up_factor = int64_t{1} << (c.block_out_channels.size() - 1);
  const bool forward_upsample_size = sample.size(2) % up_factor != 0 || sample.size(3) % up_factor != 0;

  at::Tensor t = timesteps.dim() == 0 ? timesteps.reshape({1}) : timesteps;
  t = t.to(sample.device()).expand({batch});  // [B]
  const at::Tensor t_emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift).to(sample.scalar_type());
  at::Tensor emb = time_embedding->forward(t_emb);  // [B, time_embed_dim]
  record("time_embedding", emb);
  if (add_embedding) {
    TORCH_CHECK(added && added->text_embeds.defined() && added->time_ids.defined(),
                "UNet with addition_embed_type text_time needs text_embeds and time_ids");
    const at::Tensor time_embeds = timestep_embedding(added->time_ids.flatten(), c.addition_time_embed_dim,
                                                      c.flip_sin_to_cos, c.freq_shift)
                                       .reshape({batch, -1});  // [B, 6·addition_time_embed_dim]
    const at::Tensor add_embeds = at::cat({added->text_embeds, time_embeds}, -1).to(emb.scalar_type());
    const at::Tensor aug = add_embedding->forward(add_embeds);
    record("add_embedding", aug);
    emb = emb + aug;
  }

  // Runs one block as fn(inputs), checkpointed when gradient checkpointing is on. The replay in
  // backward re-activates the LoRA adapters this forward saw, and names them as parameters, so that
  // they get their gradients.
  const LoraAdapters* adapters = ActiveAdapters::current();
  auto run_block = [&](const torch::nn::Module& block, const CheckpointedFn& fn, const std::vector<at::Tensor>& inputs) {
    if (!gradient_checkpointing_) return fn(inputs);
    std::vector<at::Tensor> parameters = block.parameters();
    if (adapters != nullptr) parameters.insert(parameters.end(), adapters->parameters().begin(), adapters->parameters().end());
    const CheckpointedFn with_adapters = [fn, adapters](const std::vector<at::Tensor>& in) {
      ActiveAdapters active(adapters);
      return fn(in);
    };
    return checkpoint(with_adapters, inputs, parameters);
  };

  at::Tensor x = c.center_input_sample ? 2.0 * sample - 1.0 : sample;
  x = conv_in->forward(x);
  record("conv_in", x);
  std::vector<at::Tensor> skips{x};
  for (std::size_t i = 0; i < down_blocks.size(); ++i) {
    const auto block = down_blocks[i].ptr();
    // The block's skip states; the last one is its output.
    const std::vector<at::Tensor> states = run_block(
        *block, [block](const std::vector<at::Tensor>& in) { return block->forward(in[0], in[1], in[2]).second; },
        {x, emb, context});
    x = states.back();
    skips.insert(skips.end(), states.begin(), states.end());
    record("down_blocks." + std::to_string(i), x);
  }
  if (mid_block) {
    const auto block = mid_block.ptr();
    x = run_block(
        *block, [block](const std::vector<at::Tensor>& in) { return std::vector<at::Tensor>{block->forward(in[0], in[1], in[2])}; },
        {x, emb, context})[0];
    record("mid_block", x);
  }
  for (std::size_t i = 0; i < up_blocks.size(); ++i) {
    const auto block = up_blocks[i].ptr();
    const std::size_t take = block->resnets.size();
    std::vector<at::Tensor> inputs{x, emb, context};  // then this block's skip states
    inputs.insert(inputs.end(), skips.end() - static_cast<std::ptrdiff_t>(take), skips.end());
    skips.resize(skips.size() - take);
    std::optional<std::vector<int64_t>> upsample_size;
    if (i + 1 < up_blocks.size() && forward_upsample_size) {
      upsample_size = std::vector<int64_t>{skips.back().size(2), skips.back().size(3)};
    }
    x = run_block(
        *block,
        [block, upsample_size](const std::vector<at::Tensor>& in) {
          return std::vector<at::Tensor>{block->forward(in[0], {in.begin() + 3, in.end()}, in[1], in[2], upsample_size)};
        },
        inputs)[0];
    record("up_blocks." + std::to_string(i), x);
  }
  x = conv_out->forward(at::silu(conv_norm_out->forward(x)));
  record("conv_out", x);
  return x;
}

}  // namespace dedpo::sd
