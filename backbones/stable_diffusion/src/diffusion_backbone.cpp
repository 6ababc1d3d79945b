#include "dedpo/sd/diffusion_backbone.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <vector>

#include "dedpo/autocast.hpp"
#include "dedpo/digest.hpp"
#include "dedpo/error_message.hpp"
#include "dedpo/files.hpp"
#include "dedpo/option_choice.hpp"
#include "dedpo/safetensors.hpp"
#include "json_config.hpp"

namespace dedpo::sd {
namespace fs = std::filesystem;

namespace {

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

// Moves a module to `device` for its lifetime and back to where it was after (even on errors).
class ModuleOnDevice {
 public:
  ModuleOnDevice(torch::nn::Module& module, at::Device device) : module_(module), home_(device) {
    const auto params = module_.parameters();
    if (!params.empty()) home_ = params.front().device();
    if (home_ != device) module_.to(device);
    moved_ = home_ != device;
  }
  ~ModuleOnDevice() {
    if (moved_) module_.to(home_);
  }
  ModuleOnDevice(const ModuleOnDevice&) = delete;
  ModuleOnDevice& operator=(const ModuleOnDevice&) = delete;

 private:
  torch::nn::Module& module_;
  at::Device home_;
  bool moved_ = false;
};

// The UNet's inputs in the reference's storage dtype (the timestep embedding follows `x`).
UNetConditioning conditioning_in(const UNetConditioning& conditioning, at::ScalarType dtype) {
  UNetConditioning out{conditioning.context.to(dtype), conditioning.added};
  if (out.added) out.added->text_embeds = out.added->text_embeds.to(dtype);
  return out;
}

}  // namespace

fs::path component_weights_file(const fs::path& folder, const std::string& base, const std::string& who) {
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
  throw Error(who + ": '" + folder.string() + "' has no " + base + ".safetensors" +
              (found.empty() ? std::string(" (and no other *.safetensors)")
                             : std::string(" and several other *.safetensors files")));
}

void freeze(torch::nn::Module& module) {
  for (at::Tensor& p : module.parameters()) p.set_requires_grad(false);
  module.eval();
}

void store_in(torch::nn::Module& module, at::ScalarType dtype) {
  // Not Module::to(dtype): it would convert integer buffers too.
  at::NoGradGuard no_grad;
  for (at::Tensor& tensor : module.parameters()) {
    if (tensor.is_floating_point()) tensor.set_data(tensor.to(dtype));
  }
  for (at::Tensor& tensor : module.buffers()) {
    if (tensor.is_floating_point()) tensor.set_data(tensor.to(dtype));
  }
}

bool pipeline_flag(const fs::path& folder, const std::string& key, bool fallback) {
  return detail::Config::file(folder / "model_index.json").get<bool>(key, fallback);
}

DiffusionBackbone::DiffusionBackbone(std::string name, const Options& options)
    : name_(std::move(name)),
      path_(options.string("path")),
      vae_path_(options.string("vae")),
      prediction_type_(read_choice<std::optional<PredictionType>>(
          options, "prediction_type",
          {{"auto", std::nullopt}, {"epsilon", PredictionType::kEpsilon}, {"v_prediction", PredictionType::kVPrediction}})),
      bfloat16_(read_choice<bool>(options, "dtype", {{"float32", false}, {"bfloat16", true}})),
      frozen_dtype_(read_choice<at::ScalarType>(options, "frozen_dtype",
                                                {{"float32", at::kFloat}, {"bfloat16", at::kBFloat16}})),
      lora_rank_(options.integer("lora_rank")),
      lora_alpha_(0),
      lora_targets_(split_list(options.string("lora_targets"))),
      lora_format_(read_choice<LoraFormat>(options, "lora_format",
                                           {{"diffusers", LoraFormat::diffusers}, {"kohya", LoraFormat::kohya}})),
      lora_init_(options.string("lora_init")),
      gradient_checkpointing_(options.boolean("gradient_checkpointing")),
      weights_check_(options.boolean("check_weights") ? safetensors::FiniteCheck::check : safetensors::FiniteCheck::skip),
      reference_on_cpu_(false),
      sampler_(read_choice<SamplerKind>(options, "sampler", {{"ddim", SamplerKind::ddim}, {"euler", SamplerKind::euler}})),
      sample_steps_(options.integer("sample_steps")),
      guidance_scale_(options.real("guidance_scale")),
      resolution_(options.integer("resolution")) {
  if (lora_rank_ < 0) options.fail("lora_rank", "expected an integer >= 0");
  if (options.is_string("lora_alpha")) {
    if (options.string("lora_alpha") != "rank") options.fail("lora_alpha", "expected a number or \"rank\"");
    lora_alpha_ = static_cast<double>(lora_rank_);
  } else {
    lora_alpha_ = options.real("lora_alpha");
    if (!(lora_alpha_ > 0)) options.fail("lora_alpha", "expected a number > 0");
  }
  if (lora_rank_ > 0 && lora_targets_.empty()) options.fail("lora_targets", "expected at least one layer name");
  if (!lora_init_.empty() && lora_rank_ == 0) options.fail("lora_init", "a LoRA file needs lora_rank > 0 (LoRA training)");
  // "model" = the run's device, "cpu" = host memory: true when on the host.
  auto on_host = [&](const char* key) { return read_choice<bool>(options, key, {{"model", false}, {"cpu", true}}); };
  reference_on_cpu_ = on_host("reference_device");
  text_on_host_ = on_host("text_encoder_device");
  vae_on_host_ = on_host("vae_device");
  if (reference_on_cpu_ && lora_rank_ > 0) {
    options.fail("reference_device",
                 "\"cpu\" has no effect with LoRA (lora_rank > 0): the reference is the same UNet with the adapters "
                 "off, there is no second copy to move");
  }
  if (sample_steps_ < 1) options.fail("sample_steps", "expected an integer >= 1");
  if (!(guidance_scale_ >= 0)) options.fail("guidance_scale", "expected a number >= 0");
  if (resolution_ < 8) options.fail("resolution", "expected an integer >= 8");
}

DiffusionBackbone::~DiffusionBackbone() = default;

void DiffusionBackbone::fail(const std::string& problem) const { throw Error(name_ + ": " + problem); }

void DiffusionBackbone::load_component(torch::nn::Module& module, const fs::path& file, const std::string& what) const {
  // Older transformers checkpoints of CLIP text encoders store this buffer; newer ones do not.
  // Older transformers wrote CLIP's position ids buffer (prefixed or not: clip_text_weights_root).
  static const std::vector<std::string> kOptionalKeys = {"text_model.embeddings.position_ids", "embeddings.position_ids"};
  with_context(name_ + ": loading the " + what + " from " + file.string(),
               [&] { safetensors::load_into(module, file, kOptionalKeys, weights_check_); });
}

void DiffusionBackbone::require_prepared(const char* what) const {
  if (!prepared_) fail(std::string(what) + " needs prepare() first");
}

int64_t DiffusionBackbone::latent_size() const {
  require_prepared("latent_size()");
  const auto levels = static_cast<int64_t>(vae_->config().block_out_channels.size());
  return resolution_ >> (levels - 1);
}

void DiffusionBackbone::prepare(const BackboneContext& context) {
  prepared_ = false;
  if (!fs::is_directory(path_)) fail("option 'path': '" + path_.string() + "' is not a folder");
  if (!fs::exists(path_ / "model_index.json")) {
    fail("'" + path_.string() + "' has no model_index.json (not a diffusers pipeline folder)");
  }
  std::vector<std::string> parts = {"unet", "scheduler"};
  if (vae_path_.empty()) parts.push_back("vae");
  for (const std::string& part : text_parts()) parts.push_back(part);
  std::string missing;
  for (const std::string& part : parts) {
    if (!fs::is_directory(path_ / part)) missing += (missing.empty() ? "" : ", ") + part + "/";
  }
  if (!missing.empty()) fail("'" + path_.string() + "' lacks " + missing);
  if (!vae_path_.empty() && !fs::exists(vae_path_ / "config.json")) {
    fail("option 'vae': '" + vae_path_.string() + "' is not a diffusers AutoencoderKL folder (no config.json)");
  }

  unet_config_text_ = read_file(path_ / "unet" / "config.json");
  const UNet2DConditionConfig unet_config = UNet2DConditionConfig::from_file(path_ / "unet" / "config.json");
  // The text side first: a text encoder that does not fit the UNet fails before its weights load.
  load_text(path_, unet_config);
  for (torch::nn::Module* module : text_modules()) store_in(*module, frozen_dtype_);
  unet_ = with_context(name_ + ": building the UNet of " + (path_ / "unet" / "config.json").string(),
                       [&] { return UNet2DConditionModel(unet_config); });
  load_component(*unet_, component_weights_file(path_ / "unet", "diffusion_pytorch_model", name_), "UNet");
  if (!context.initial_weights.empty()) load_component(*unet_, context.initial_weights, "initial UNet weights");

  const fs::path vae_folder = vae_path_.empty() ? path_ / "vae" : vae_path_;
  vae_ = with_context(name_ + ": building the VAE of " + (vae_folder / "config.json").string(),
                      [&] { return AutoencoderKL(AutoencoderKLConfig::from_file(vae_folder / "config.json")); });
  load_component(*vae_, component_weights_file(vae_folder, "diffusion_pytorch_model", name_),
                 vae_path_.empty() ? "VAE" : "VAE of option 'vae'");
  freeze(*vae_);
  store_in(*vae_, frozen_dtype_);
  if (vae_->config().latent_channels != unet_->config().in_channels) {
    fail("the VAE (" + vae_folder.string() + ") has " + std::to_string(vae_->config().latent_channels) +
         " latent channels but the UNet takes in_channels = " + std::to_string(unet_->config().in_channels));
  }

  scheduler_config_ = SchedulerConfig::from_file(path_ / "scheduler" / "scheduler_config.json");
  if (prediction_type_) scheduler_config_->prediction_type = *prediction_type_;
  if (scheduler_config_->prediction_type == PredictionType::kSample) {
    fail("prediction_type 'sample' is not supported for training; set option 'prediction_type'");
  }
  schedule_.emplace(*scheduler_config_);

  const auto levels = static_cast<int64_t>(vae_->config().block_out_channels.size());
  if (resolution_ % (int64_t{1} << (levels - 1)) != 0) {
    fail("option 'resolution' = " + std::to_string(resolution_) + " is not a multiple of the VAE's " +
         std::to_string(int64_t{1} << (levels - 1)));
  }

  prompt_cache_.clear();
  lora_.clear();
  lora_adapters_ = {};
  lora_root_.reset();
  reference_ = nullptr;
  if (lora_rank_ > 0) {
    // The base UNet is frozen, so it is stored like the other frozen parts (a bfloat16 base).
    freeze(*unet_);
    store_in(*unet_, frozen_dtype_);
    unet_->train();
    setup_lora(context.seed);
  } else {
    reference_ = UNet2DConditionModel(unet_->config());
    {
      at::NoGradGuard no_grad;
      auto src = unet_->named_parameters();
      for (auto& item : reference_->named_parameters()) item.value().copy_(src[item.key()]);
      auto src_buffers = unet_->named_buffers();
      for (auto& item : reference_->named_buffers()) item.value().copy_(src_buffers[item.key()]);
    }
    freeze(*reference_);
    store_in(*reference_, frozen_dtype_);
    unet_->train();
  }
  unet_->set_gradient_checkpointing(gradient_checkpointing_);
  device_ = context.device;
  unet_->to(device_);  // the adapters too: their tensors live in lora_root_
  if (lora_root_) lora_root_->to(device_);
  if (reference_) reference_->to(reference_on_cpu_ ? c10::Device(c10::kCPU) : device_);
  vae_->to(vae_device());
  for (torch::nn::Module* module : text_modules()) module->to(text_device());
  prepared_ = true;
  encoder_fingerprint_ = compute_encoder_fingerprint();
}

std::vector<torch::nn::Module*> DiffusionBackbone::frozen_modules() {
  require_prepared("frozen_modules()");
  std::vector<torch::nn::Module*> modules = text_modules();
  modules.push_back(vae_.get());
  if (reference_) modules.push_back(reference_.get());
  if (!lora_.empty()) modules.push_back(unet_.get());  // the base the adapters sit on
  return modules;
}

std::string DiffusionBackbone::compute_encoder_fingerprint() {
  // Weights by value (a fine-tuned VAE with the same architecture gets another key), the text
  // parts' configs and vocabularies (*.json, *.txt; not the weight files of other frameworks that
  // hub folders also hold), and every option that changes what encode_images() / encode_prompts()
  // return.
  std::string key = name_ + "-encoders\nresolution=" + std::to_string(resolution_) + "\ndtype=" + (bfloat16_ ? "bfloat16" : "float32") +
                    "\nfrozen_dtype=" + std::string(c10::toString(frozen_dtype_)) + "\n" +
                    text_options_fingerprint();
  std::vector<torch::nn::Module*> modules = text_modules();
  modules.insert(modules.begin(), vae_.get());
  for (const torch::nn::Module* module : modules) {
    for (const auto& item : module->named_parameters()) key += item.key() + "=" + tensor_digest(item.value()) + "\n";
  }
  for (const std::string& part : text_parts()) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(path_ / part)) {
      const fs::path extension = entry.path().extension();
      if (entry.is_regular_file() && (extension == ".json" || extension == ".txt")) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) key += part + "/" + file.filename().string() + "=" + digest(read_file(file)) + "\n";
  }
  return name_ + "-" + digest(key);
}

void DiffusionBackbone::setup_lora(std::uint64_t seed) {
  lora_root_ = std::make_shared<torch::nn::Module>("UNetLora");
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
    if (!linear) fail("lora_targets: UNet module '" + name + "' is not a Linear layer");
    used.insert(matched);
    LoraLayer layer{name, linear->weight, {}, {}};
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
    lora_adapters_.add(*linear, {layer.down, layer.up, lora_alpha_ / static_cast<double>(lora_rank_)});
    lora_.push_back(std::move(layer));
  }
  for (const std::string& t : lora_targets_) {
    if (!used.count(t)) fail("lora_targets: no Linear layer of the UNet is named '" + t + "'");
  }
  if (!lora_init_.empty()) {
    with_context(name_ + ": option 'lora_init'",
                 [&] { load_lora_file(lora_init_, lora_, lora_rank_, lora_alpha_, unet_->config()); });
  }
}

torch::nn::Module& DiffusionBackbone::model() {
  require_prepared("model()");
  if (lora_root_) return *lora_root_;
  return *unet_;
}

at::Tensor DiffusionBackbone::encode_prompts(const std::vector<std::string>& prompts) {
  require_prepared("encode_prompts()");
  std::vector<std::string> todo;
  for (const std::string& p : prompts) {
    if (!prompt_cache_.count(p) && std::find(todo.begin(), todo.end(), p) == todo.end()) todo.push_back(p);
  }
  if (!todo.empty()) {
    at::NoGradGuard no_grad;
    AutocastRegion autocast(text_device().type(), bfloat16());
    // Rows are kept on the host: the cache outlives the device a batch runs on.
    const at::Tensor rows = encode_text(todo).to(at::kCPU, at::kFloat);
    for (std::size_t i = 0; i < todo.size(); ++i) prompt_cache_[todo[i]] = rows[static_cast<int64_t>(i)].clone();
  }
  std::vector<at::Tensor> rows;
  rows.reserve(prompts.size());
  for (const std::string& p : prompts) rows.push_back(prompt_cache_.at(p));
  return at::stack(rows);  // [P, ...]
}

at::Tensor DiffusionBackbone::unconditional_row() { return encode_prompts({""}); }

at::Tensor DiffusionBackbone::run_unet(const at::Tensor& x, const at::Tensor& t, const UNetConditioning& conditioning,
                                       bool reference) {
  AutocastRegion autocast(x.device().type(), bfloat16());
  // The frozen reference runs under inference mode: no autograd bookkeeping at all. Its output is
  // an inference tensor, which callers only read (no in-place update, no use in the backward).
  std::optional<c10::InferenceMode> inference;
  if (!lora_.empty()) {
    // The reference is the base with the adapters off; a bfloat16 base computes in bfloat16.
    ActiveAdapters active(reference ? nullptr : &lora_adapters_);
    if (reference) inference.emplace();
    const UNetConditioning inputs = conditioning_in(conditioning, frozen_dtype_);
    return unet_->forward(x.to(frozen_dtype_), t, inputs.context, inputs.added).to(at::kFloat);
  }
  if (!reference) return unet_->forward(x, t, conditioning.context, conditioning.added).to(at::kFloat);
  // reference_device = "cpu": the copy visits the batch's device for this pass only; it moves
  // outside inference mode, so that its weights stay ordinary tensors.
  std::optional<ModuleOnDevice> visit;
  if (reference_on_cpu_) visit.emplace(*reference_, x.device());
  inference.emplace();
  const UNetConditioning inputs = conditioning_in(conditioning, frozen_dtype_);
  return reference_->forward(x.to(frozen_dtype_), t, inputs.context, inputs.added).to(at::kFloat);
}

at::Tensor DiffusionBackbone::target(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) const {
  return scheduler_config_->prediction_type == PredictionType::kVPrediction ? schedule_->get_velocity(x0, noise, t)
                                                                             : noise;
}

DenoisingErrors DiffusionBackbone::denoising_errors(const PairBatch& batch, at::Generator& generator,
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
  if (batch.a_info.defined() != batch.b_info.defined()) fail("denoising_errors(): a_info and b_info must both be given or neither");
  const at::Tensor info = batch.a_info.defined() ? at::cat({batch.a_info, batch.b_info}) : at::Tensor();
  const UNetConditioning conditioning =
      unet_conditioning(at::cat({batch.condition, batch.condition}).to(at::kFloat), info);
  const at::Tensor noisy = schedule_->add_noise(x0, noise2, t2);
  const at::Tensor goal = target(x0, noise2, t2);

  DenoisingErrors out;
  // The reference pass first, so that with reference_device = "cpu" its copy has left the
  // accelerator before the trainable pass keeps its activations for the backward.
  if (with_reference) {
    at::NoGradGuard no_grad;
    const at::Tensor ref = (run_unet(noisy, t2, conditioning, true) - goal).pow(2).mean({1, 2, 3});
    out.ref_a = ref.slice(0, 0, n);
    out.ref_b = ref.slice(0, n, 2 * n);
  }
  const at::Tensor err = (run_unet(noisy, t2, conditioning, false) - goal).pow(2).mean({1, 2, 3});  // [2B]
  out.model_a = err.slice(0, 0, n);
  out.model_b = err.slice(0, n, 2 * n);
  return out;
}

at::Tensor DiffusionBackbone::denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                                             at::Generator& generator) {
  require_prepared("denoising_loss()");
  const int64_t n = samples.size(0);
  const auto device = samples.device();
  at::Tensor t = at::randint(0, scheduler_config_->num_train_timesteps, {n}, generator,
                             at::TensorOptions().dtype(at::kLong)).to(device);
  at::Tensor noise = at::randn(samples.sizes(), generator, at::TensorOptions().dtype(at::kFloat)).to(device);
  const at::Tensor x0 = samples.to(at::kFloat);
  const at::Tensor noisy = schedule_->add_noise(x0, noise, t);
  const UNetConditioning conditioning = unet_conditioning(condition.to(at::kFloat), at::Tensor());
  return (run_unet(noisy, t, conditioning, false) - target(x0, noise, t)).pow(2).mean({1, 2, 3});
}

at::Tensor DiffusionBackbone::sample(const at::Tensor& condition, at::Generator& generator, bool from_reference) {
  require_prepared("sample()");
  at::NoGradGuard no_grad;
  const int64_t n = condition.size(0);
  const int64_t side = latent_size();
  const auto device = device_;
  const at::Tensor cond = condition.to(device, at::kFloat);
  const bool guided = guidance_scale_ != 1.0;
  at::Tensor rows = cond;
  if (guided) {
    std::vector<int64_t> shape = cond.sizes().vec();
    const at::Tensor uncond = unconditional_row().to(device).expand(shape);
    rows = at::cat({uncond, cond});  // [2N, ...]
  }
  const UNetConditioning conditioning = unet_conditioning(rows, at::Tensor());
  auto predict = [&](const at::Tensor& x, const at::Tensor& t) {
    if (!guided) return run_unet(x, t.expand({n}), conditioning, from_reference);
    const at::Tensor out = run_unet(at::cat({x, x}), t.expand({2 * n}), conditioning, from_reference);
    const at::Tensor u = out.slice(0, 0, n), c = out.slice(0, n, 2 * n);
    return u + (c - u) * guidance_scale_;
  };
  const int64_t channels = unet_->config().in_channels;
  at::Tensor latents =
      at::randn({n, channels, side, side}, generator, at::TensorOptions().dtype(at::kFloat)).to(device);
  if (sampler_ == SamplerKind::ddim) {
    DDIMScheduler scheduler(*scheduler_config_);
    scheduler.set_timesteps(sample_steps_);
    const at::Tensor ts = scheduler.timesteps().cpu();
    for (int64_t i = 0; i < ts.size(0); ++i) {
      const int64_t t = ts[i].item<int64_t>();
      const at::Tensor eps = predict(latents, at::full({1}, t, at::TensorOptions().dtype(at::kLong).device(device)));
      latents = scheduler.step(eps, t, latents).prev_sample;
    }
  } else {
    EulerDiscreteScheduler scheduler(*scheduler_config_);
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

void DiffusionBackbone::save_weights(const fs::path& file) const {
  require_prepared("save_weights()");
  at::NoGradGuard no_grad;
  std::map<std::string, const LoraLayer*> adapted;
  for (const LoraLayer& l : lora_) adapted[l.path + ".weight"] = &l;
  const double scale = lora_rank_ > 0 ? lora_alpha_ / static_cast<double>(lora_rank_) : 0.0;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& item : unet_->named_parameters()) {
    auto it = adapted.find(item.key());
    // Merged one layer at a time, in float32 whatever the base's storage dtype.
    tensors.emplace_back(item.key(), it == adapted.end()
                                         ? item.value().to(at::kFloat)
                                         : it->second->base.to(at::kFloat) + at::mm(it->second->up, it->second->down) * scale);
  }
  for (const auto& item : unet_->named_buffers()) tensors.emplace_back(item.key(), item.value());
  if (!file.parent_path().empty()) fs::create_directories(file.parent_path());
  safetensors::save(file, tensors, {{"format", "pt"}});
  write_file_atomic(file.parent_path() / "config.json", unet_config_text_);
  if (!lora_.empty()) {
    save_lora_file(lora_weights_path(file), lora_, lora_rank_, lora_alpha_, lora_format_, kohya_naming(), unet_->config());
  }
}

fs::path DiffusionBackbone::lora_weights_path(const fs::path& weights_file) {
  return weights_file.parent_path() / (weights_file.stem().string() + "_lora.safetensors");
}

int64_t DiffusionBackbone::image_resolution() const { return resolution_; }

at::Tensor DiffusionBackbone::encode_images(const at::Tensor& images) {
  require_prepared("encode_images()");
  if (images.dim() != 4 || images.scalar_type() != at::kByte || images.size(1) != resolution_ ||
      images.size(2) != resolution_ || images.size(3) != 3) {
    fail("encode_images() expects uint8 RGB images [N, " + std::to_string(resolution_) + ", " +
         std::to_string(resolution_) + ", 3] (option 'resolution'); got " + std::string(images.toString()) + " " +
         std::string(c10::str(images.sizes())));
  }
  at::NoGradGuard no_grad;
  AutocastRegion autocast(vae_device().type(), bfloat16());
  // uint8 [0, 255] -> [-1, 1], channels first. The posterior mean, not a draw: cached latents
  // stay deterministic (the draw's noise is ~1e-2 of the latent scale for SD VAEs).
  const at::Tensor x = (images.to(vae_device()).permute({0, 3, 1, 2}).to(at::kFloat) / 127.5 - 1.0).to(frozen_dtype_);
  // One image per VAE call: convolution libraries pick their kernels by batch size (oneDNN on an
  // AMD EPYC gives an image's 3×3 convolutions up to 2e-5 apart alone and in a batch of 4), and an
  // image's latent must not depend on the images it was encoded with: a cache entry encoded again
  // alone equals the one written from its batch.
  std::vector<at::Tensor> latents;
  latents.reserve(static_cast<std::size_t>(x.size(0)));
  for (int64_t i = 0; i < x.size(0); ++i) latents.push_back(vae_->encode(x.narrow(0, i, 1)).mean);
  const at::Tensor mean = latents.empty() ? vae_->encode(x).mean : at::cat(latents);  // N = 0 passes through
  return (mean * vae_->config().scaling_factor).to(at::kCPU, at::kFloat);
}

at::Tensor DiffusionBackbone::decode_samples(const at::Tensor& samples) const {
  require_prepared("decode_samples()");
  if (samples.dim() != 4 || samples.size(1) != vae_->config().latent_channels) {
    fail("decode_samples() expects latents [N, " + std::to_string(vae_->config().latent_channels) + ", h, w]; got " +
         std::string(c10::str(samples.sizes())));
  }
  at::NoGradGuard no_grad;
  AutocastRegion autocast(vae_device().type(), bfloat16());
  AutoencoderKL vae = vae_;  // the holder's forward is not const
  const at::Tensor latents = (samples.to(vae_device(), at::kFloat) / vae->config().scaling_factor).to(frozen_dtype_);
  const at::Tensor x = vae->decode(latents).to(at::kFloat);
  // [-1, 1] -> uint8 [N, H, W, C]
  return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(at::kByte).permute({0, 2, 3, 1}).contiguous().cpu();
}

std::string DiffusionBackbone::encoder_fingerprint() const {
  require_prepared("encoder_fingerprint()");
  return encoder_fingerprint_;
}

}  // namespace dedpo::sd
