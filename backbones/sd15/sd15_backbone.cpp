// The `sd15` backbone plugin (see sd15_backbone.hpp).
#include "sd15_backbone.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <sstream>

#include <torch/version.h>

#include "dedpo/compat.hpp"
#include "dedpo/experiment.hpp"
#include "dedpo/files.hpp"
#include "dedpo/safetensors.hpp"

namespace dedpo::sd15 {
namespace fs = std::filesystem;

namespace {

const OptionSpec kOptions[] = {
    {"path", OptionType::string, nullptr,
     "diffusers pipeline folder: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/."},
    {"prediction_type", OptionType::string, "\"auto\"",
     "\"auto\" (the scheduler config's), \"epsilon\" or \"v_prediction\"."},
    {"clip_skip", OptionType::integer, "0",
     "Text-encoder layers to skip from the end (diffusers' clip_skip; 0 = last hidden state)."},
    {"dtype", OptionType::string, "\"float32\"",
     "Compute dtype: \"float32\", or \"bfloat16\" (CPU autocast; weights stay float32)."},
    {"lora_rank", OptionType::integer, "0", "0 = full fine-tuning of the UNet; > 0 = LoRA rank."},
    {"lora_alpha", OptionType::real_or_string, "\"rank\"",
     "LoRA alpha (scale = alpha / rank); \"rank\" = scale 1."},
    {"lora_targets", OptionType::string, "\"to_q,to_k,to_v,to_out.0\"",
     "Comma-separated UNet Linear layers (by name suffix) that get LoRA adapters."},
    {"sampler", OptionType::string, "\"ddim\"", "Sampler of sample(): \"ddim\" or \"euler\"."},
    {"sample_steps", OptionType::integer, "50", "Sampling steps."},
    {"guidance_scale", OptionType::real, "7.5",
     "Classifier-free guidance scale (1 = no guidance, no unconditional pass)."},
    {"resolution", OptionType::integer, "512", "Image side in pixels for sample()."},
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto b = item.find_first_not_of(" \t");
    const auto e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

void freeze(torch::nn::Module& module) {
  for (at::Tensor& p : module.parameters()) p.set_requires_grad(false);
  module.eval();
}

// The weights file of a component folder: `<base>.safetensors`, else a variant
// (`<base>.fp16.safetensors`, ...), else the only *.safetensors of the folder.
fs::path weights_file(const fs::path& folder, const std::string& base) {
  if (fs::exists(folder / (base + ".safetensors"))) return folder / (base + ".safetensors");
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() == ".safetensors") found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  for (const auto& f : found) {
    if (f.filename().string().rfind(base + ".", 0) == 0) return f;
  }
  if (found.size() == 1) return found.front();
  throw Error("sd15: '" + folder.string() + "' has no " + base + ".safetensors" +
              (found.empty() ? std::string(" (and no other *.safetensors)")
                             : std::string(" and several other *.safetensors files")));
}

void load_component(torch::nn::Module& module, const fs::path& file, const std::string& what) {
  try {
    safetensors::load_into(module, file);
  } catch (const Error& e) {
    throw Error("sd15: loading the " + what + ": " + e.what());
  }
}

// Binds each adapted Linear's `weight` to W0 + scale·B·A (enabled) or W0, and back to W0 after.
class AdapterBinding {
 public:
  AdapterBinding(std::vector<LoraLayer>& layers, bool enabled, double scale) : layers_(layers) {
    for (LoraLayer& l : layers_) {
      l.linear->weight = enabled ? l.base + at::mm(l.up, l.down) * scale : l.base;
    }
  }
  ~AdapterBinding() {
    for (LoraLayer& l : layers_) l.linear->weight = l.base;
  }
  AdapterBinding(const AdapterBinding&) = delete;
  AdapterBinding& operator=(const AdapterBinding&) = delete;

 private:
  std::vector<LoraLayer>& layers_;
};

}  // namespace

Sd15Backbone::Sd15Backbone(const Options& options)
    : path_(options.string("path")),
      prediction_type_(options.string("prediction_type")),
      clip_skip_(options.integer("clip_skip")),
      dtype_(options.string("dtype")),
      lora_rank_(options.integer("lora_rank")),
      lora_alpha_(0),
      lora_targets_(split_list(options.string("lora_targets"))),
      sampler_(options.string("sampler")),
      sample_steps_(options.integer("sample_steps")),
      guidance_scale_(options.real("guidance_scale")),
      resolution_(options.integer("resolution")) {
  if (prediction_type_ != "auto" && prediction_type_ != "epsilon" &&
      prediction_type_ != "v_prediction") {
    options.fail("prediction_type", "expected \"auto\", \"epsilon\" or \"v_prediction\"");
  }
  if (clip_skip_ < 0) options.fail("clip_skip", "expected an integer >= 0");
  if (dtype_ != "float32" && dtype_ != "bfloat16") {
    options.fail("dtype", "expected \"float32\" or \"bfloat16\" (float16 has no CPU autocast)");
  }
#if TORCH_VERSION_MAJOR < 2
  // LibTorch 1.13's CPU autocast leaves group_norm out of its float32 list: bfloat16 conv outputs
  // then meet float32 GroupNorm weights and the forward fails.
  if (dtype_ == "bfloat16") options.fail("dtype", "\"bfloat16\" needs LibTorch >= 2.0 (CPU autocast of GroupNorm)");
#endif
  if (lora_rank_ < 0) options.fail("lora_rank", "expected an integer >= 0");
  if (options.is_string("lora_alpha")) {
    if (options.string("lora_alpha") != "rank") options.fail("lora_alpha", "expected a number or \"rank\"");
    lora_alpha_ = static_cast<double>(lora_rank_);
  } else {
    lora_alpha_ = options.real("lora_alpha");
    if (!(lora_alpha_ > 0)) options.fail("lora_alpha", "expected a number > 0");
  }
  if (lora_rank_ > 0 && lora_targets_.empty()) options.fail("lora_targets", "expected at least one layer name");
  if (sampler_ != "ddim" && sampler_ != "euler") options.fail("sampler", "expected \"ddim\" or \"euler\"");
  if (sample_steps_ < 1) options.fail("sample_steps", "expected an integer >= 1");
  if (!(guidance_scale_ >= 0)) options.fail("guidance_scale", "expected a number >= 0");
  if (resolution_ < 8) options.fail("resolution", "expected an integer >= 8");
}

Sd15Backbone::~Sd15Backbone() = default;

void Sd15Backbone::require_prepared(const char* what) const {
  if (!prepared_) throw Error(std::string("sd15 backbone: ") + what + " needs prepare() first");
}

int64_t Sd15Backbone::latent_size() const {
  require_prepared("latent_size()");
  const auto levels = static_cast<int64_t>(vae_->config().block_out_channels.size());
  return resolution_ >> (levels - 1);
}

void Sd15Backbone::prepare(const BackboneContext& context) {
  if (!fs::is_directory(path_)) {
    throw Error("sd15: option 'path': '" + path_.string() + "' is not a folder");
  }
  if (!fs::exists(path_ / "model_index.json")) {
    throw Error("sd15: '" + path_.string() + "' has no model_index.json (not a diffusers pipeline folder)");
  }
  std::string missing;
  for (const char* part : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}) {
    if (!fs::is_directory(path_ / part)) missing += std::string(missing.empty() ? "" : ", ") + part + "/";
  }
  if (!missing.empty()) throw Error("sd15: '" + path_.string() + "' lacks " + missing);

  unet_ = sd::UNet2DConditionModel(sd::UNet2DConditionConfig::from_file(path_ / "unet" / "config.json"));
  load_component(*unet_, weights_file(path_ / "unet", "diffusion_pytorch_model"), "UNet");
  if (!context.initial_weights.empty()) load_component(*unet_, context.initial_weights, "initial UNet weights");

  vae_ = sd::AutoencoderKL(sd::AutoencoderKLConfig::from_file(path_ / "vae" / "config.json"));
  load_component(*vae_, weights_file(path_ / "vae", "diffusion_pytorch_model"), "VAE");
  freeze(*vae_);

  text_encoder_ = sd::ClipTextModel(sd::ClipTextConfig::from_file(path_ / "text_encoder" / "config.json"));
  load_component(*text_encoder_, weights_file(path_ / "text_encoder", "model"), "text encoder");
  freeze(*text_encoder_);
  if (clip_skip_ >= text_encoder_->text_model->config().num_hidden_layers) {
    throw Error("sd15: option 'clip_skip' = " + std::to_string(clip_skip_) + " but the text encoder has " +
                std::to_string(text_encoder_->text_model->config().num_hidden_layers) + " layers");
  }

  tokenizer_.emplace(sd::ClipTokenizer::from_folder(path_ / "tokenizer"));

  scheduler_config_ = sd::SchedulerConfig::from_file(path_ / "scheduler" / "scheduler_config.json");
  if (prediction_type_ == "epsilon") scheduler_config_->prediction_type = sd::PredictionType::kEpsilon;
  if (prediction_type_ == "v_prediction") scheduler_config_->prediction_type = sd::PredictionType::kVPrediction;
  if (scheduler_config_->prediction_type == sd::PredictionType::kSample) {
    throw Error("sd15: prediction_type 'sample' is not supported for training; set option 'prediction_type'");
  }
  schedule_.emplace(*scheduler_config_);

  const auto levels = static_cast<int64_t>(vae_->config().block_out_channels.size());
  if (resolution_ % (int64_t{1} << (levels - 1)) != 0) {
    throw Error("sd15: option 'resolution' = " + std::to_string(resolution_) + " is not a multiple of the VAE's " +
                std::to_string(int64_t{1} << (levels - 1)));
  }

  prompt_cache_.clear();
  if (lora_rank_ > 0) {
    freeze(*unet_);
    unet_->train();
    setup_lora(context.seed);
  } else {
    reference_ = sd::UNet2DConditionModel(unet_->config());
    {
      at::NoGradGuard no_grad;
      auto src = unet_->named_parameters();
      for (auto& item : reference_->named_parameters()) item.value().copy_(src[item.key()]);
      auto src_buffers = unet_->named_buffers();
      for (auto& item : reference_->named_buffers()) item.value().copy_(src_buffers[item.key()]);
    }
    freeze(*reference_);
    unet_->train();
  }
  encoder_fingerprint_ = compute_encoder_fingerprint();
  prepared_ = true;
}

std::string Sd15Backbone::compute_encoder_fingerprint() const {
  // Weights by value (a fine-tuned VAE with the same architecture gets another key), plus every
  // option that changes what encode_images() / encode_prompts() return.
  std::string key = "sd15-encoders\nresolution=" + std::to_string(resolution_) +
                    "\nclip_skip=" + std::to_string(clip_skip_) + "\ndtype=" + dtype_ + "\n";
  for (const torch::nn::Module* module :
       {static_cast<const torch::nn::Module*>(vae_.get()),
        static_cast<const torch::nn::Module*>(text_encoder_.get())}) {
    for (const auto& item : module->named_parameters()) {
      const at::Tensor value = item.value().detach().cpu().contiguous();
      key += item.key() + "=" +
             digest(std::string_view(static_cast<const char*>(value.data_ptr()),
                                     value.numel() * value.element_size())) +
             "\n";
    }
  }
  std::vector<fs::path> tokenizer_files;
  for (const auto& entry : fs::directory_iterator(path_ / "tokenizer")) {
    if (entry.is_regular_file()) tokenizer_files.push_back(entry.path());
  }
  std::sort(tokenizer_files.begin(), tokenizer_files.end());
  for (const fs::path& file : tokenizer_files) {
    key += "tokenizer/" + file.filename().string() + "=" + digest(read_file(file)) + "\n";
  }
  return "sd15-" + digest(key);
}

void Sd15Backbone::setup_lora(std::uint64_t seed) {
  lora_.clear();
  lora_root_ = std::make_shared<torch::nn::Module>("Sd15Lora");
  std::map<std::string, std::shared_ptr<torch::nn::Module>> nodes{{"", lora_root_}};
  // The node of a dotted path, created with its parents.
  auto node = [&](const std::string& path) {
    std::string prefix;
    std::shared_ptr<torch::nn::Module> current = lora_root_;
    std::stringstream in(path);
    std::string part;
    while (std::getline(in, part, '.')) {
      prefix += (prefix.empty() ? "" : ".") + part;
      auto it = nodes.find(prefix);
      if (it == nodes.end()) {
        auto child = std::make_shared<torch::nn::Module>("LoraNode");
        current->register_module(part, child);
        it = nodes.emplace(prefix, child).first;
      }
      current = it->second;
    }
    return current;
  };
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed ^ 0x10a4ada9ULL);
  std::set<std::string> used;
  for (const auto& item : unet_->named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    std::string matched;
    for (const std::string& t : lora_targets_) {
      if (name == t || (name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
                        name[name.size() - t.size() - 1] == '.')) {
        matched = t;
      }
    }
    if (matched.empty()) continue;
    auto linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value());
    if (!linear) throw Error("sd15: lora_targets: UNet module '" + name + "' is not a Linear layer");
    used.insert(matched);
    LoraLayer layer{name, torch::nn::Linear(linear), linear->weight, {}, {}};
    const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));  // peft: kaiming_uniform(a=√5)
    at::Tensor down = at::empty({lora_rank_, in}, at::kFloat).uniform_(-bound, bound, gen);
    at::Tensor up = at::zeros({out, lora_rank_}, at::kFloat);
    auto leaf = node(name);
    auto a = std::make_shared<torch::nn::Module>("LoraA");
    auto b = std::make_shared<torch::nn::Module>("LoraB");
    layer.down = a->register_parameter("weight", down);
    layer.up = b->register_parameter("weight", up);
    leaf->register_module("lora_A", a);
    leaf->register_module("lora_B", b);
    lora_.push_back(std::move(layer));
  }
  for (const std::string& t : lora_targets_) {
    if (!used.count(t)) throw Error("sd15: lora_targets: no Linear layer of the UNet is named '" + t + "'");
  }
}

torch::nn::Module& Sd15Backbone::model() {
  require_prepared("model()");
  if (lora_root_) return *lora_root_;
  return *unet_;
}

at::Tensor Sd15Backbone::encode_prompts(const std::vector<std::string>& prompts) {
  require_prepared("encode_prompts()");
  std::vector<std::string> todo;
  for (const std::string& p : prompts) {
    if (!prompt_cache_.count(p) && std::find(todo.begin(), todo.end(), p) == todo.end()) todo.push_back(p);
  }
  if (!todo.empty()) {
    at::NoGradGuard no_grad;
    compat::CpuAutocast autocast(dtype_ == "bfloat16", at::kBFloat16);
    const sd::TokenizerBatch tokens = tokenizer_->encode_batch(todo);
    const sd::ClipTextOutput out = text_encoder_->forward(tokens.input_ids);
    at::Tensor states = out.last_hidden_state;  // [P, S, C]
    if (clip_skip_ > 0) {
      // diffusers: hidden_states[-(clip_skip + 1)] through the final layer norm.
      const at::Tensor& h = out.hidden_states.at(out.hidden_states.size() - 1 - clip_skip_);
      states = text_encoder_->text_model->final_layer_norm(h);
    }
    states = states.to(at::kFloat);
    for (std::size_t i = 0; i < todo.size(); ++i) prompt_cache_[todo[i]] = states[static_cast<int64_t>(i)].clone();
  }
  std::vector<at::Tensor> rows;
  rows.reserve(prompts.size());
  for (const std::string& p : prompts) rows.push_back(prompt_cache_.at(p));
  return at::stack(rows);  // [P, S, C]
}

at::Tensor Sd15Backbone::run_unet(const at::Tensor& x, const at::Tensor& t, const at::Tensor& context,
                                  bool reference) {
  compat::CpuAutocast autocast(dtype_ == "bfloat16", at::kBFloat16);
  if (!lora_.empty()) {
    AdapterBinding binding(lora_, !reference, lora_alpha_ / static_cast<double>(lora_rank_));
    return unet_->forward(x, t, context).to(at::kFloat);
  }
  return (reference ? reference_ : unet_)->forward(x, t, context).to(at::kFloat);
}

at::Tensor Sd15Backbone::target(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) const {
  return scheduler_config_->prediction_type == sd::PredictionType::kVPrediction
             ? schedule_->get_velocity(x0, noise, t)
             : noise;
}

DenoisingErrors Sd15Backbone::denoising_errors(const PairBatch& batch, at::Generator& generator,
                                               bool with_reference) {
  require_prepared("denoising_errors()");
  const int64_t n = batch.a.size(0);
  const auto device = batch.a.device();
  // One timestep and one noise draw per pair, from the generator on the CPU.
  at::Tensor t = at::randint(0, scheduler_config_->num_train_timesteps, {n}, generator,
                             at::TensorOptions().dtype(at::kLong)).to(device);
  at::Tensor noise = at::randn(batch.a.sizes(), generator, at::TensorOptions().dtype(at::kFloat)).to(device);
  const at::Tensor x0 = at::cat({batch.a, batch.b}).to(at::kFloat);  // [2B, 4, h, w]
  const at::Tensor noise2 = at::cat({noise, noise});
  const at::Tensor t2 = at::cat({t, t});
  const at::Tensor context = at::cat({batch.condition, batch.condition}).to(at::kFloat);
  const at::Tensor noisy = schedule_->add_noise(x0, noise2, t2);
  const at::Tensor goal = target(x0, noise2, t2);

  DenoisingErrors out;
  const at::Tensor err = (run_unet(noisy, t2, context, false) - goal).pow(2).mean({1, 2, 3});  // [2B]
  out.model_a = err.slice(0, 0, n);
  out.model_b = err.slice(0, n, 2 * n);
  if (with_reference) {
    at::NoGradGuard no_grad;
    const at::Tensor ref = (run_unet(noisy, t2, context, true) - goal).pow(2).mean({1, 2, 3});
    out.ref_a = ref.slice(0, 0, n);
    out.ref_b = ref.slice(0, n, 2 * n);
  }
  return out;
}

at::Tensor Sd15Backbone::denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                                        at::Generator& generator) {
  require_prepared("denoising_loss()");
  const int64_t n = samples.size(0);
  const auto device = samples.device();
  at::Tensor t = at::randint(0, scheduler_config_->num_train_timesteps, {n}, generator,
                             at::TensorOptions().dtype(at::kLong)).to(device);
  at::Tensor noise = at::randn(samples.sizes(), generator, at::TensorOptions().dtype(at::kFloat)).to(device);
  const at::Tensor x0 = samples.to(at::kFloat);
  const at::Tensor noisy = schedule_->add_noise(x0, noise, t);
  return (run_unet(noisy, t, condition.to(at::kFloat), false) - target(x0, noise, t)).pow(2).mean({1, 2, 3});
}

at::Tensor Sd15Backbone::sample(const at::Tensor& condition, at::Generator& generator, bool from_reference) {
  require_prepared("sample()");
  at::NoGradGuard no_grad;
  const int64_t n = condition.size(0);
  const int64_t side = latent_size();
  const auto device = condition.device();
  const at::Tensor cond = condition.to(at::kFloat);
  const bool guided = guidance_scale_ != 1.0;
  at::Tensor context = cond;
  if (guided) {
    const at::Tensor uncond = encode_prompts({""}).to(device).expand({n, cond.size(1), cond.size(2)});
    context = at::cat({uncond, cond});  // [2N, S, C]
  }
  auto predict = [&](const at::Tensor& x, const at::Tensor& t) {
    if (!guided) return run_unet(x, t.expand({n}), context, from_reference);
    const at::Tensor out = run_unet(at::cat({x, x}), t.expand({2 * n}), context, from_reference);
    const at::Tensor u = out.slice(0, 0, n), c = out.slice(0, n, 2 * n);
    return u + (c - u) * guidance_scale_;
  };
  const int64_t channels = unet_->config().in_channels;
  at::Tensor latents =
      at::randn({n, channels, side, side}, generator, at::TensorOptions().dtype(at::kFloat)).to(device);
  if (sampler_ == "ddim") {
    sd::DDIMScheduler scheduler(*scheduler_config_);
    scheduler.set_timesteps(sample_steps_);
    const at::Tensor ts = scheduler.timesteps().cpu();
    for (int64_t i = 0; i < ts.size(0); ++i) {
      const int64_t t = ts[i].item<int64_t>();
      const at::Tensor eps = predict(latents, at::full({1}, t, at::TensorOptions().dtype(at::kLong).device(device)));
      latents = scheduler.step(eps, t, latents).prev_sample;
    }
  } else {
    sd::EulerDiscreteScheduler scheduler(*scheduler_config_);
    scheduler.set_timesteps(sample_steps_);
    latents = latents * scheduler.init_noise_sigma().to(device);
    const at::Tensor ts = scheduler.timesteps().cpu();
    for (int64_t i = 0; i < ts.size(0); ++i) {
      const double t = ts[i].item<double>();
      const at::Tensor in = scheduler.scale_model_input(latents, t);
      const at::Tensor eps = predict(in, at::full({1}, t, at::TensorOptions().dtype(at::kFloat).device(device)));
      latents = scheduler.step(eps, t, latents).prev_sample;
    }
  }
  return latents;
}

void Sd15Backbone::save_weights(const fs::path& file) const {
  require_prepared("save_weights()");
  at::NoGradGuard no_grad;
  std::map<std::string, const LoraLayer*> adapted;
  for (const LoraLayer& l : lora_) adapted[l.path + ".weight"] = &l;
  const double scale = lora_rank_ > 0 ? lora_alpha_ / static_cast<double>(lora_rank_) : 0.0;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : unet_->named_parameters()) {
    auto it = adapted.find(item.key());
    tensors.emplace_back(item.key(), it == adapted.end()
                                         ? item.value()
                                         : it->second->base + at::mm(it->second->up, it->second->down) * scale);
  }
  for (const auto& item : unet_->named_buffers()) tensors.emplace_back(item.key(), item.value());
  if (!file.parent_path().empty()) fs::create_directories(file.parent_path());
  safetensors::save(file, tensors, {{"format", "pt"}});
  if (!lora_.empty()) {
    std::vector<std::pair<std::string, at::Tensor>> lora;
    for (const LoraLayer& l : lora_) {
      lora.emplace_back("unet." + l.path + ".lora.down.weight", l.down);
      lora.emplace_back("unet." + l.path + ".lora.up.weight", l.up * scale);
    }
    safetensors::save(lora_weights_path(file), lora,
                      {{"format", "pt"},
                       {"lora_rank", std::to_string(lora_rank_)},
                       {"lora_alpha", std::to_string(lora_alpha_)},
                       {"note", "alpha/rank folded into lora.up"}});
  }
}

fs::path Sd15Backbone::lora_weights_path(const fs::path& weights_file) {
  return weights_file.parent_path() / (weights_file.stem().string() + "_lora.safetensors");
}

int64_t Sd15Backbone::image_resolution() const { return resolution_; }

at::Tensor Sd15Backbone::encode_images(const at::Tensor& images) {
  require_prepared("encode_images()");
  if (images.dim() != 4 || images.scalar_type() != at::kByte || images.size(1) != resolution_ ||
      images.size(2) != resolution_ || images.size(3) != 3) {
    throw Error("sd15: encode_images() expects uint8 RGB images [N, " + std::to_string(resolution_) +
                ", " + std::to_string(resolution_) + ", 3] (option 'resolution'); got " +
                std::string(images.toString()) + " " + std::string(c10::str(images.sizes())));
  }
  at::NoGradGuard no_grad;
  compat::CpuAutocast autocast(dtype_ == "bfloat16", at::kBFloat16);
  // uint8 [0, 255] -> [-1, 1], channels first. The posterior mean, not a draw: cached latents
  // stay deterministic (the draw's noise is ~1e-2 of the latent scale for SD VAEs).
  const at::Tensor x = images.permute({0, 3, 1, 2}).to(at::kFloat) / 127.5 - 1.0;
  return (vae_->encode(x).mean * vae_->config().scaling_factor).to(at::kFloat);
}

at::Tensor Sd15Backbone::decode_samples(const at::Tensor& samples) const {
  require_prepared("decode_samples()");
  if (samples.dim() != 4 || samples.size(1) != vae_->config().latent_channels) {
    throw Error("sd15: decode_samples() expects latents [N, " +
                std::to_string(vae_->config().latent_channels) + ", h, w]; got " +
                std::string(c10::str(samples.sizes())));
  }
  at::NoGradGuard no_grad;
  compat::CpuAutocast autocast(dtype_ == "bfloat16", at::kBFloat16);
  sd::AutoencoderKL vae = vae_;  // the holder's forward is not const
  const at::Tensor x = vae->decode(samples.to(at::kFloat) / vae->config().scaling_factor).to(at::kFloat);
  // [-1, 1] -> uint8 [N, H, W, C]
  return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(at::kByte).permute({0, 2, 3, 1}).contiguous().cpu();
}

std::string Sd15Backbone::encoder_fingerprint() const {
  require_prepared("encoder_fingerprint()");
  return encoder_fingerprint_;
}

}  // namespace dedpo::sd15

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::sd15::Sd15Backbone>(
    "sd15", "1.0.0",
    "Stable Diffusion 1.x/2.x from a diffusers folder; full fine-tuning or LoRA.",
    dedpo::sd15::kOptions))

