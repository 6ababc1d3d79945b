// The trainer: preference and denoising objectives, optimisers, schedules, EMA, the NaN/inf
// guard, checkpoints, evaluation, annotation caching, [init] experiments, and run folders.
#include "dedpo/trainer.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <algorithm>
#include <numbers>
#include <optional>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <torch/serialize/archive.h>

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/autocast.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/runner.hpp"
#include "dedpo/safetensors.hpp"
#include "dedpo/services.hpp"
#include "dedpo/files.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;
using Metrics = std::vector<std::pair<std::string, double>>;

// ---------------------------------------------------------------------------------------------
// Schedule and Adafactor

double scheduled_lr(double peak_lr, std::int64_t warmup_steps, std::int64_t total_steps,
                    std::string_view schedule, std::int64_t step) {
  if (warmup_steps > 0 && step < warmup_steps) {
    return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  std::int64_t decay_steps = std::max<std::int64_t>(1, total_steps - warmup_steps);
  double progress = std::clamp(
      static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  if (schedule == "constant") return peak_lr;
  if (schedule == "linear") return peak_lr * (1.0 - progress);
  if (schedule == "cosine") return peak_lr * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  throw Error("unknown learning-rate schedule '" + std::string(schedule) +
              "' (expected \"constant\", \"linear\" or \"cosine\")");
}

Adafactor::Adafactor(std::vector<at::Tensor> params, Options options)
    : params_(std::move(params)), options_(options) {
  for (const at::Tensor& p : params_) {
    auto float_options = p.options().dtype(at::kFloat);
    if (p.dim() >= 2) {
      std::vector<std::int64_t> row_shape(p.sizes().begin(), p.sizes().end() - 1);
      std::vector<std::int64_t> col_shape(p.sizes().begin(), p.sizes().end());
      col_shape.erase(col_shape.end() - 2);
      row_.push_back(at::zeros(row_shape, float_options));
      col_.push_back(at::zeros(col_shape, float_options));
      full_.emplace_back();
    } else {
      row_.emplace_back();
      col_.emplace_back();
      full_.push_back(at::zeros(p.sizes(), float_options));
    }
  }
}

void Adafactor::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_;
  const double beta2 = 1.0 - std::pow(static_cast<double>(step_), options_.decay_rate);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i];
    if (!p.grad().defined()) continue;
    at::Tensor grad = p.grad().to(at::kFloat);
    at::Tensor squared = grad * grad + options_.eps1;
    at::Tensor update;
    if (full_[i].defined()) {
      full_[i].mul_(beta2).add_(squared, 1.0 - beta2);
      update = full_[i].rsqrt() * grad;
    } else {
      row_[i].mul_(beta2).add_(squared.mean(-1), 1.0 - beta2);
      col_[i].mul_(beta2).add_(squared.mean(-2), 1.0 - beta2);
      at::Tensor row_factor = (row_[i] / row_[i].mean(-1, /*keepdim=*/true)).rsqrt().unsqueeze(-1);
      at::Tensor col_factor = col_[i].unsqueeze(-2).rsqrt();
      update = row_factor * col_factor * grad;
    }
    at::Tensor rms = update.pow(2).mean().sqrt();
    update.div_((rms / options_.clip_threshold).clamp_min(1.0));
    if (options_.weight_decay != 0.0) p.mul_(1.0 - options_.weight_decay * lr);
    p.sub_((update * lr).to(p.scalar_type()));
  }
}

std::vector<at::Tensor> Adafactor::state() const {
  std::vector<at::Tensor> out;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (full_[i].defined()) {
      out.push_back(full_[i]);
    } else {
      out.push_back(row_[i]);
      out.push_back(col_[i]);
    }
  }
  return out;
}

void Adafactor::set_state(std::int64_t steps, const std::vector<at::Tensor>& state) {
  at::NoGradGuard no_grad;
  std::size_t k = 0;
  auto take = [&](at::Tensor& target) {
    if (k >= state.size() || !state[k].sizes().equals(target.sizes())) {
      throw Error("checkpoint: Adafactor state does not match the model's parameters");
    }
    target.copy_(state[k++]);
  };
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (full_[i].defined()) {
      take(full_[i]);
    } else {
      take(row_[i]);
      take(col_[i]);
    }
  }
  if (k != state.size()) throw Error("checkpoint: Adafactor state has extra tensors");
  step_ = steps;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Small helpers

std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t stream) {  // splitmix64
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

at::Generator make_generator(std::uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

enum Stream : std::uint64_t { kNoise = 1, kDataOrder = 2, kLabelSplit = 3 };

std::string now_text() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M:%S", &tm);
  return buffer;
}

std::string tensor_digest(const at::Tensor& tensor) {
  at::Tensor t = tensor.contiguous().to(at::kByte);
  return digest(std::string_view(static_cast<const char*>(t.data_ptr()),
                                 static_cast<std::size_t>(t.numel())));
}

fs::path output_dir(const Experiment& experiment) {
  return fs::path(experiment.run.string("output"));
}

fs::path cache_dir(const Experiment& experiment) { return output_dir(experiment) / ".cache"; }

class RunLog {
 public:
  RunLog() = default;
  explicit RunLog(const fs::path& file) : out_(file, std::ios::app) {}
  void line(const std::string& text) {
    if (out_.is_open()) {
      out_ << "[" << now_text() << "] " << text << "\n";
      out_.flush();
    }
  }

 private:
  std::ofstream out_;
};

// ---------------------------------------------------------------------------------------------
// Settings

struct TrainSettings {
  std::string objective;
  std::int64_t steps = 0, batch_size = 1, grad_accum = 1, warmup_steps = 0;
  std::int64_t checkpoint_every = 0, log_every = 10;
  double labelled_fraction = 1.0, lr = 1e-4, weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, max_grad_norm = 0.0, ema_decay = 0.0;
  std::string optimizer, schedule;
  bool bf16 = false;
  bool split_by_prompt = false, drop_ties = false;

  explicit TrainSettings(const Options& o) {
    objective = o.string("objective");
    if (objective != "preference" && objective != "denoising") {
      o.fail("objective", "expected \"preference\" or \"denoising\", got \"" + objective + "\"");
    }
    steps = o.integer("steps");
    if (steps < 0) o.fail("steps", "must be ≥ 0");
    batch_size = o.integer("batch_size");
    if (batch_size < 1) o.fail("batch_size", "must be ≥ 1");
    grad_accum = o.integer("grad_accum");
    if (grad_accum < 1) o.fail("grad_accum", "must be ≥ 1");
    labelled_fraction = o.real("labelled_fraction");
    if (!(labelled_fraction >= 0.0 && labelled_fraction <= 1.0)) {
      o.fail("labelled_fraction", "must lie in [0, 1]");
    }
    const std::string& split = o.string("split");
    if (split != "random" && split != "by_prompt") {
      o.fail("split", "expected \"random\" or \"by_prompt\", got \"" + split + "\"");
    }
    split_by_prompt = split == "by_prompt";
    const std::string& ties = o.string("ties");
    if (ties != "keep" && ties != "drop") {
      o.fail("ties", "expected \"keep\" or \"drop\", got \"" + ties + "\"");
    }
    drop_ties = ties == "drop";
    optimizer = o.string("optimizer");
    if (optimizer != "adamw" && optimizer != "adafactor") {
      o.fail("optimizer", "expected \"adamw\" or \"adafactor\", got \"" + optimizer + "\"");
    }
    lr = o.real("lr");
    if (!(lr >= 0.0)) o.fail("lr", "must be ≥ 0");
    weight_decay = o.real("weight_decay");
    beta1 = o.real("adam_beta1");
    beta2 = o.real("adam_beta2");
    eps = o.real("adam_eps");
    warmup_steps = o.integer("warmup_steps");
    if (warmup_steps < 0) o.fail("warmup_steps", "must be ≥ 0");
    schedule = o.string("schedule");
    if (schedule != "constant" && schedule != "linear" && schedule != "cosine") {
      o.fail("schedule",
             "expected \"constant\", \"linear\" or \"cosine\", got \"" + schedule + "\"");
    }
    max_grad_norm = o.real("max_grad_norm");
    if (!(max_grad_norm >= 0.0)) o.fail("max_grad_norm", "must be ≥ 0 (0 = off)");
    std::string precision = o.string("precision");
    if (precision != "fp32" && precision != "bf16") {
      o.fail("precision", "expected \"fp32\" or \"bf16\", got \"" + precision + "\"");
    }
    bf16 = precision == "bf16";
    ema_decay = o.real("ema_decay");
    if (!(ema_decay >= 0.0 && ema_decay < 1.0)) o.fail("ema_decay", "must lie in [0, 1)");
    checkpoint_every = o.integer("checkpoint_every");
    if (checkpoint_every < 0) o.fail("checkpoint_every", "must be ≥ 0");
    log_every = std::max<std::int64_t>(1, o.integer("log_every"));
  }
};

// ---------------------------------------------------------------------------------------------
// Optimisers behind one interface

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  virtual void step(double lr) = 0;
  virtual void save(torch::serialize::OutputArchive& archive) const = 0;
  virtual void load(torch::serialize::InputArchive& archive) = 0;
};

class AdamWOptimizer final : public Optimizer {
 public:
  AdamWOptimizer(std::vector<at::Tensor> params, const TrainSettings& s)
      : optimizer_(std::move(params), torch::optim::AdamWOptions(s.lr)
                                          .betas({s.beta1, s.beta2})
                                          .eps(s.eps)
                                          .weight_decay(s.weight_decay)) {}
  void step(double lr) override {
    for (auto& group : optimizer_.param_groups()) group.options().set_lr(lr);
    optimizer_.step();
  }
  void save(torch::serialize::OutputArchive& archive) const override { optimizer_.save(archive); }
  void load(torch::serialize::InputArchive& archive) override { optimizer_.load(archive); }

 private:
  torch::optim::AdamW optimizer_;
};

class AdafactorOptimizer final : public Optimizer {
 public:
  AdafactorOptimizer(std::vector<at::Tensor> params, const TrainSettings& s)
      : optimizer_(std::move(params), make_options(s)) {}
  void step(double lr) override { optimizer_.step(lr); }
  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("steps", c10::IValue(optimizer_.steps()));
    std::vector<at::Tensor> state = optimizer_.state();
    archive.write("count", c10::IValue(static_cast<std::int64_t>(state.size())));
    for (std::size_t i = 0; i < state.size(); ++i) {
      archive.write("s" + std::to_string(i), state[i], /*is_buffer=*/true);
    }
  }
  void load(torch::serialize::InputArchive& archive) override {
    c10::IValue value;
    archive.read("steps", value);
    std::int64_t steps = value.toInt();
    archive.read("count", value);
    std::vector<at::Tensor> state(static_cast<std::size_t>(value.toInt()));
    for (std::size_t i = 0; i < state.size(); ++i) {
      archive.read("s" + std::to_string(i), state[i], /*is_buffer=*/true);
    }
    optimizer_.set_state(steps, state);
  }

 private:
  static Adafactor::Options make_options(const TrainSettings& s) {
    Adafactor::Options options;
    options.weight_decay = s.weight_decay;
    return options;
  }
  Adafactor optimizer_;
};

// ---------------------------------------------------------------------------------------------
// Data order: uniform without replacement per epoch over a pool of indices

class Sampler {
 public:
  Sampler() = default;
  Sampler(at::Tensor pool, std::uint64_t seed)
      : pool_(std::move(pool)), generator_(make_generator(seed)) {}

  std::int64_t pool_size() const { return pool_.defined() ? pool_.size(0) : 0; }

  at::Tensor next(std::int64_t count) {
    if (pool_size() == 0) throw Error("the training pool is empty: no pairs to draw batches from");
    std::vector<at::Tensor> parts;
    while (count > 0) {
      if (!order_.defined() || position_ >= order_.size(0)) {
        at::Tensor permutation;
        {
          permutation = at::randperm(pool_size(), generator_, at::kLong);
        }
        order_ = pool_.index_select(0, permutation);
        position_ = 0;
        ++epoch_;
      }
      std::int64_t take = std::min(count, order_.size(0) - position_);
      parts.push_back(order_.slice(0, position_, position_ + take));
      position_ += take;
      count -= take;
    }
    return parts.size() == 1 ? parts[0] : at::cat(parts);
  }

  void save(torch::serialize::OutputArchive& archive) const {
    archive.write("generator", generator_.get_state(), true);
    archive.write("order", order_.defined() ? order_ : at::empty({0}, at::kLong), true);
    archive.write("has_order", c10::IValue(order_.defined()));
    archive.write("position", c10::IValue(position_));
    archive.write("epoch", c10::IValue(epoch_));
  }
  void load(torch::serialize::InputArchive& archive) {
    at::Tensor state, order;
    c10::IValue value;
    archive.read("generator", state, true);
    generator_.set_state(state);
    archive.read("order", order, true);
    archive.read("has_order", value);
    order_ = value.toBool() ? order : at::Tensor();
    archive.read("position", value);
    position_ = value.toInt();
    archive.read("epoch", value);
    epoch_ = value.toInt();
  }
  std::int64_t epoch() const { return epoch_; }

 private:
  at::Tensor pool_;
  at::Generator generator_;
  at::Tensor order_;
  std::int64_t position_ = 0;
  std::int64_t epoch_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Prompt conditioning, cached on disk per prompt and encoder

// [P, ...] rows of backbone.encode_prompts(prompts). When `folder` is given and the backbone names
// its encoders (encoder_fingerprint()), each row is read from or written to
// <folder>/<encoder digest>/<prompt digest>.safetensors: text encoding is paid once per prompt
// across the runs of a grid. Writers hold the folder's lock, so parallel runs encode once.
at::Tensor encode_prompts_cached(Backbone& backbone, const std::vector<std::string>& prompts,
                                 const fs::path& folder) {
  at::NoGradGuard no_grad;
  const std::string encoder = folder.empty() ? std::string() : backbone.encoder_fingerprint();
  if (encoder.empty()) return backbone.encode_prompts(prompts);
  const fs::path dir = folder / digest(encoder);
  auto file_of = [&](const std::string& prompt) {
    return dir / (digest("prompt\n" + prompt) + ".safetensors");
  };
  std::vector<at::Tensor> rows(prompts.size());
  auto read_cached = [&](std::vector<std::size_t> wanted) {
    std::vector<std::size_t> missing;
    for (std::size_t i : wanted) {
      std::error_code error;
      fs::path file = file_of(prompts[i]);
      if (fs::exists(file, error)) {
        rows[i] = safetensors::File(file).get("condition");
      } else {
        missing.push_back(i);
      }
    }
    return missing;
  };
  std::vector<std::size_t> all(prompts.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<std::size_t> missing = read_cached(all);
  if (!missing.empty()) {
    fs::create_directories(dir);
    FileLock lock(dir / ".lock");
    missing = read_cached(missing);  // another run may have written them meanwhile
    std::vector<std::string> texts;
    for (std::size_t i : missing) texts.push_back(prompts[i]);
    if (!texts.empty()) {
      at::Tensor encoded = backbone.encode_prompts(texts).to(at::kCPU);
      for (std::size_t k = 0; k < missing.size(); ++k) {
        at::Tensor row = encoded[static_cast<std::int64_t>(k)].contiguous();
        safetensors::save(file_of(texts[k]), std::map<std::string, at::Tensor>{{"condition", row}},
                          {{"prompt", texts[k]}});
        rows[missing[k]] = row;
      }
    }
  }
  return at::stack(rows);
}

// ---------------------------------------------------------------------------------------------
// The training loop, one optimiser step at a time

struct StepReport {
  double loss = 0.0;
  double grad_norm = 0.0;
  double lr = 0.0;
  bool skipped = false;
  Metrics diagnostics;
};

class Trainer {
 public:
  Trainer(Backbone& backbone, const TrainSettings& settings, std::uint64_t seed,
          std::int64_t total_steps)
      : backbone_(backbone),
        settings_(settings),
        total_steps_(total_steps),
        noise_(make_generator(derive_seed(seed, kNoise))),
        data_seed_(derive_seed(seed, kDataOrder)) {
    for (const at::Tensor& p : backbone_.model().parameters()) {
      if (p.requires_grad()) params_.push_back(p);
    }
    if (params_.empty()) throw Error("the backbone's model has no trainable parameters");
    if (settings_.optimizer == "adafactor") {
      optimizer_ = std::make_unique<AdafactorOptimizer>(params_, settings_);
    } else {
      optimizer_ = std::make_unique<AdamWOptimizer>(params_, settings_);
    }
    if (settings_.ema_decay > 0.0) {
      at::NoGradGuard no_grad;
      for (const at::Tensor& p : params_) ema_.push_back(p.detach().clone());
    }
  }

  // Preference objective. `is_labelled` [N] bool; `annotator_prob` [N] or undefined.
  void set_preference(Loss& loss, const PairDataset& data, const at::Tensor& is_labelled,
                      const at::Tensor& annotator_prob) {
    loss_ = &loss;
    pairs_ = &data;
    is_labelled_ = is_labelled.to(at::kBool);
    annotator_prob_ = annotator_prob;
    n_labelled_ = is_labelled_.sum().item<std::int64_t>();
    n_unlabelled_ = data.size() - n_labelled_;
    at::Tensor label = data.human_label.to(at::kFloat);
    visible_label_ = at::where(is_labelled_, label, at::full_like(label, NAN));
    condition_ = encode_prompts_cached(backbone_, data.prompts, prompt_cache_);
    at::Tensor pool = loss.pool() == PairPool::labelled
                          ? at::nonzero(is_labelled_).flatten()
                          : at::arange(data.size(), at::kLong);
    if (pool.size(0) == 0) {
      throw Error(loss.pool() == PairPool::labelled
                      ? "the loss trains on labelled pairs, but none is labelled (check [train] "
                        "labelled_fraction and the data's human labels)"
                      : "the dataset has no pairs");
    }
    sampler_ = Sampler(pool, data_seed_);
  }

  void set_denoising(const SampleDataset& data) {
    samples_ = &data;
    if (data.size() == 0) throw Error("the dataset has no samples");
    condition_ = encode_prompts_cached(backbone_, data.prompts, prompt_cache_);
    sampler_ = Sampler(at::arange(data.size(), at::kLong), data_seed_);
  }

  // Caches prompt conditioning in this folder (set before set_preference / set_denoising).
  void set_prompt_cache(fs::path folder) { prompt_cache_ = std::move(folder); }

  std::int64_t step_index() const { return step_; }
  std::int64_t skipped() const { return skipped_; }
  std::int64_t total_steps() const { return total_steps_; }

  StepReport step() {
    StepReport report;
    report.lr = scheduled_lr(settings_.lr, settings_.warmup_steps, total_steps_,
                             settings_.schedule, step_);
    for (at::Tensor& p : params_) {
      if (p.grad().defined()) p.mutable_grad().reset();
    }
    double loss_sum = 0.0;
    std::vector<std::pair<std::string, double>> diagnostics;
    for (std::int64_t micro = 0; micro < settings_.grad_accum; ++micro) {
      at::Tensor loss;
      {
        AutocastRegion autocast(c10::DeviceType::CPU, settings_.bf16);
        loss = pairs_ != nullptr ? preference_loss(diagnostics) : denoising_loss();
      }
      loss = loss.to(at::kFloat);
      loss_sum += loss.item<double>();
      if (loss.requires_grad()) (loss / static_cast<double>(settings_.grad_accum)).backward();
    }
    for (auto& [name, value] : diagnostics) value /= static_cast<double>(settings_.grad_accum);
    report.diagnostics = std::move(diagnostics);
    report.loss = loss_sum / static_cast<double>(settings_.grad_accum);

    double squared = 0.0;
    for (const at::Tensor& p : params_) {
      if (p.grad().defined()) squared += p.grad().to(at::kDouble).pow(2).sum().item<double>();
    }
    report.grad_norm = std::sqrt(squared);
    if (!std::isfinite(report.loss) || !std::isfinite(report.grad_norm)) {
      report.skipped = true;
      ++skipped_;
      for (at::Tensor& p : params_) {
        if (p.grad().defined()) p.mutable_grad().reset();
      }
    } else {
      if (settings_.max_grad_norm > 0.0 && report.grad_norm > settings_.max_grad_norm) {
        at::NoGradGuard no_grad;
        double scale = settings_.max_grad_norm / (report.grad_norm + 1e-6);
        for (at::Tensor& p : params_) {
          if (p.grad().defined()) p.mutable_grad().mul_(scale);
        }
      }
      optimizer_->step(report.lr);
      update_ema();
    }
    ++step_;
    return report;
  }

  // Evaluation and final weights use the EMA weights when there are any.
  template <class F>
  auto with_eval_weights(F&& f) {
    if (ema_.empty()) return f();
    std::vector<at::Tensor> saved;
    {
      at::NoGradGuard no_grad;
      for (std::size_t i = 0; i < params_.size(); ++i) {
        saved.push_back(params_[i].detach().clone());
        params_[i].detach().copy_(ema_[i]);
      }
    }
    struct Restore {
      std::vector<at::Tensor>& params;
      std::vector<at::Tensor>& saved;
      ~Restore() {
        at::NoGradGuard no_grad;
        for (std::size_t i = 0; i < params.size(); ++i) params[i].detach().copy_(saved[i]);
      }
    } restore{params_, saved};
    return f();
  }
  void load_ema_into_model() {
    at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < ema_.size(); ++i) params_[i].detach().copy_(ema_[i]);
  }

  void save(torch::serialize::OutputArchive& archive) const {
    archive.write("step", c10::IValue(step_));
    archive.write("skipped", c10::IValue(skipped_));
    torch::serialize::OutputArchive model;
    backbone_.model().save(model);
    archive.write("model", model);
    torch::serialize::OutputArchive optimizer;
    optimizer_->save(optimizer);
    archive.write("optimizer", optimizer);
    archive.write("ema_count", c10::IValue(static_cast<std::int64_t>(ema_.size())));
    for (std::size_t i = 0; i < ema_.size(); ++i) {
      archive.write("ema" + std::to_string(i), ema_[i], true);
    }
    archive.write("noise_generator", noise_.get_state(), true);
    torch::serialize::OutputArchive sampler;
    sampler_.save(sampler);
    archive.write("sampler", sampler);
    std::vector<double> loss_state = loss_ != nullptr ? loss_->state() : std::vector<double>{};
    archive.write("loss_state",
                  at::tensor(at::ArrayRef<double>(loss_state), at::kDouble).reshape({-1}), true);
  }

  void load(torch::serialize::InputArchive& archive) {
    c10::IValue value;
    archive.read("step", value);
    step_ = value.toInt();
    archive.read("skipped", value);
    skipped_ = value.toInt();
    torch::serialize::InputArchive model;
    archive.read("model", model);
    backbone_.model().load(model);
    torch::serialize::InputArchive optimizer;
    archive.read("optimizer", optimizer);
    optimizer_->load(optimizer);
    archive.read("ema_count", value);
    if (static_cast<std::size_t>(value.toInt()) != ema_.size()) {
      throw Error("checkpoint: EMA setting differs from the experiment's [train] ema_decay");
    }
    for (std::size_t i = 0; i < ema_.size(); ++i) {
      at::Tensor t;
      archive.read("ema" + std::to_string(i), t, true);
      ema_[i].copy_(t);
    }
    at::Tensor state;
    archive.read("noise_generator", state, true);
    noise_.set_state(state);
    torch::serialize::InputArchive sampler;
    archive.read("sampler", sampler);
    sampler_.load(sampler);
    at::Tensor loss_state;
    archive.read("loss_state", loss_state, true);
    if (loss_ != nullptr) {
      loss_state = loss_state.contiguous().to(at::kDouble);
      const double* data = loss_state.data_ptr<double>();
      loss_->load_state(std::vector<double>(data, data + loss_state.numel()));
    }
  }

 private:
  at::Tensor preference_loss(Metrics& diagnostics) {
    at::Tensor index = sampler_.next(settings_.batch_size);
    PairBatch batch;
    batch.a = pairs_->a.index_select(0, index);
    batch.b = pairs_->b.index_select(0, index);
    batch.condition = condition_.index_select(0, pairs_->prompt_index.index_select(0, index));
    if (pairs_->a_info.defined()) batch.a_info = pairs_->a_info.index_select(0, index);
    if (pairs_->b_info.defined()) batch.b_info = pairs_->b_info.index_select(0, index);
    DenoisingErrors errors = backbone_.denoising_errors(batch, noise_, loss_->needs_reference());
    PairTerms terms;
    terms.model_err_a = errors.model_a;
    terms.model_err_b = errors.model_b;
    terms.ref_err_a = errors.ref_a;
    terms.ref_err_b = errors.ref_b;
    terms.human_label = visible_label_.index_select(0, index);
    terms.is_labelled = is_labelled_.index_select(0, index);
    if (annotator_prob_.defined()) terms.annotator_prob = annotator_prob_.index_select(0, index);
    terms.n_labelled = n_labelled_;
    terms.n_unlabelled = n_unlabelled_;
    terms.drawn_from = loss_->pool();
    LossResult result = loss_->compute(terms);
    for (auto& [name, value] : result.diagnostics) {
      auto it = std::find_if(diagnostics.begin(), diagnostics.end(),
                             [&](const auto& entry) { return entry.first == name; });
      if (it == diagnostics.end()) {
        diagnostics.emplace_back(name, value);
      } else {
        it->second += value;
      }
    }
    return result.loss;
  }

  at::Tensor denoising_loss() {
    at::Tensor index = sampler_.next(settings_.batch_size);
    at::Tensor samples = samples_->samples.index_select(0, index);
    at::Tensor condition =
        condition_.index_select(0, samples_->prompt_index.index_select(0, index));
    return backbone_.denoising_loss(samples, condition, noise_).mean();
  }

  void update_ema() {
    if (ema_.empty()) return;
    at::NoGradGuard no_grad;
    for (std::size_t i = 0; i < ema_.size(); ++i) {
      ema_[i].mul_(settings_.ema_decay).add_(params_[i].detach(), 1.0 - settings_.ema_decay);
    }
  }

  Backbone& backbone_;
  TrainSettings settings_;
  std::int64_t total_steps_;
  at::Generator noise_;
  std::uint64_t data_seed_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<at::Tensor> ema_;
  Sampler sampler_;

  fs::path prompt_cache_;
  Loss* loss_ = nullptr;
  const PairDataset* pairs_ = nullptr;
  const SampleDataset* samples_ = nullptr;
  at::Tensor condition_, is_labelled_, visible_label_, annotator_prob_;
  std::int64_t n_labelled_ = 0, n_unlabelled_ = 0;

  std::int64_t step_ = 0;
  std::int64_t skipped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Checkpoint files: checkpoint/step-<N>.pt, and checkpoint/latest naming the newest

fs::path latest_checkpoint(const fs::path& run_dir) {
  fs::path pointer = run_dir / kCheckpointDir / "latest";
  std::error_code error;
  if (!fs::exists(pointer, error)) return {};
  std::string name = read_file(pointer);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  fs::path file = run_dir / kCheckpointDir / name;
  if (name.empty() || !fs::exists(file, error)) {
    throw Error(pointer.string() + ": names a checkpoint that does not exist");
  }
  return file;
}

void save_checkpoint(const fs::path& run_dir, const Trainer& trainer) {
  fs::path folder = run_dir / kCheckpointDir;
  fs::create_directories(folder);
  std::string name = fmt::format("step-{:08d}.pt", trainer.step_index());
  fs::path file = folder / name;
  fs::path temp = temp_path_for(file);
  {
    torch::serialize::OutputArchive archive;
    trainer.save(archive);
    archive.save_to(temp.string());
  }
  commit_file(temp, file);
  write_file_atomic(folder / "latest", name + "\n");
  // Keep the newest two checkpoints.
  std::vector<fs::path> old;
  for (const auto& entry : fs::directory_iterator(folder)) {
    std::string entry_name = entry.path().filename().string();
    if (entry_name.starts_with("step-") && entry_name.ends_with(".pt") && entry_name < name) {
      old.push_back(entry.path());
    }
  }
  std::sort(old.begin(), old.end());
  for (std::size_t i = 0; i + 1 < old.size(); ++i) fs::remove(old[i]);
}

void load_checkpoint(const fs::path& file, Trainer& trainer) {
  torch::serialize::InputArchive archive;
  archive.load_from(file.string());
  trainer.load(archive);
}

// ---------------------------------------------------------------------------------------------
// Building the pieces of an experiment

std::shared_ptr<Backbone> create_backbone(const Experiment& experiment,
                                          const PluginRegistry& registry) {
  if (!experiment.backbone) throw Error("the experiment has no [backbone] table");
  return registry.create<Backbone>(experiment.backbone->plugin, experiment.backbone->options);
}

struct InitInfo {
  fs::path weights;
  std::string key;  // identifies the initial weights in cache keys
};

InitInfo resolve_init(const Experiment& experiment, PluginRegistry& registry, RunLog& log) {
  InitInfo info;
  const std::string& init_experiment = experiment.init.string("experiment");
  const std::string& init_weights = experiment.init.string("weights");
  if (!init_experiment.empty() && !init_weights.empty()) {
    experiment.init.fail("experiment", "give either [init] experiment or weights, not both");
  }
  if (!init_weights.empty()) {
    info.weights = init_weights;
    if (!fs::exists(info.weights)) experiment.init.fail("weights", "file does not exist: " + init_weights);
    info.key = "weights:" + fs::absolute(info.weights).string();
    return info;
  }
  if (init_experiment.empty()) return info;
  Experiment sub = load_experiment(init_experiment, {}, registry);
  std::string key = digest(sub.resolved_toml);
  fs::path root = cache_dir(experiment) / "init";
  fs::create_directories(root);
  fs::path dir = root / key;
  info.weights = dir / kWeightsFile;
  info.key = "experiment:" + key;
  FileLock lock(root / (key + ".lock"));
  if (!fs::exists(dir / kResultsFile)) {
    log.line("training the [init] experiment " + init_experiment + " into " + dir.string());
    RunControl control;
    control.run_dir = dir;
    control.progress_bar = false;
    std::error_code error;
    if (fs::exists(dir / kConfigFile, error) && !latest_checkpoint(dir).empty()) {
      resume_run(dir, registry, control);
    } else {
      run_experiment(sub, registry, control);
    }
  } else {
    log.line("[init] experiment " + init_experiment + ": cached in " + dir.string());
  }
  if (!fs::exists(info.weights)) {
    throw Error("[init] experiment " + init_experiment + " left no weights file " +
                info.weights.string());
  }
  return info;
}

// The labelled subset: round(fraction · available) of the pairs that carry a human label, drawn
// uniformly, or stratified by prompt: candidates shuffled, grouped by prompt (prompts in random
// order), and every (1/fraction)-th taken (systematic sampling), so each prompt gets
// ⌊fraction · n_p⌋ or ⌈fraction · n_p⌉ labels.
at::Tensor choose_labelled(const PairDataset& data, double fraction, std::uint64_t seed,
                           bool by_prompt) {
  at::Tensor has_label = at::logical_not(at::isnan(data.human_label.to(at::kFloat)));
  at::Tensor candidates = at::nonzero(has_label).flatten();
  std::int64_t available = candidates.size(0);
  auto count = static_cast<std::int64_t>(std::llround(fraction * static_cast<double>(available)));
  at::Generator generator = make_generator(derive_seed(seed, kLabelSplit));
  at::Tensor permutation = at::randperm(available, generator, at::kLong);
  at::Tensor chosen;
  if (by_prompt) {
    at::Tensor shuffled = candidates.index_select(0, permutation);
    auto n_prompts = static_cast<std::int64_t>(data.prompts.size());
    at::Tensor prompt_rank = at::randperm(n_prompts, generator, at::kLong)
                                 .index_select(0, data.prompt_index.index_select(0, shuffled));
    at::Tensor grouped =
        shuffled.index_select(0, std::get<1>(at::sort(prompt_rank, c10::optional<bool>(true), 0)));
    at::Tensor k = at::arange(available, at::kDouble);
    at::Tensor taken = at::floor((k + 1) * fraction + 0.5) > at::floor(k * fraction + 0.5);
    chosen = grouped.masked_select(taken);
  } else {
    chosen = candidates.index_select(0, permutation.slice(0, 0, count));
  }
  at::Tensor mask = at::zeros({data.size()}, at::kBool);
  mask.index_fill_(0, chosen, true);
  return mask;
}

// Removes the pairs whose human label is a tie (0.5) from every per-pair field.
void drop_tied_pairs(PairDataset& data) {
  at::Tensor keep = data.human_label.to(at::kFloat) != 0.5f;  // NaN (no label) is kept
  if (keep.all().item<bool>()) return;
  // Positions shift once pairs are dropped: data without ids gets its original positions as ids,
  // so the split file and id-matched annotations keep naming the same pairs.
  if (data.ids.empty()) {
    for (std::int64_t i = 0; i < data.size(); ++i) data.ids.push_back(std::to_string(i));
  }
  at::Tensor index = at::nonzero(keep).flatten();
  data.prompt_index = data.prompt_index.index_select(0, index);
  data.a = data.a.index_select(0, index);
  data.b = data.b.index_select(0, index);
  data.human_label = data.human_label.index_select(0, index);
  if (data.a_info.defined()) data.a_info = data.a_info.index_select(0, index);
  if (data.b_info.defined()) data.b_info = data.b_info.index_select(0, index);
  auto select = [&](auto& items) {
    if (items.empty()) return;
    std::remove_reference_t<decltype(items)> kept;
    const std::int64_t* rows = index.data_ptr<std::int64_t>();
    for (std::int64_t i = 0; i < index.size(0); ++i) {
      kept.push_back(items[static_cast<std::size_t>(rows[i])]);
    }
    items = std::move(kept);
  };
  select(data.a_files);
  select(data.b_files);
  select(data.ids);
  data.fingerprint += "|ties=drop";
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// split.csv: one row per pair (its index in the data, id, prompt, whether it is labelled for this
// run, and the human label training may see: empty for unlabelled pairs), so every run of a
// grid can be audited.
void write_split_file(const fs::path& file, const PairDataset& data, const at::Tensor& is_labelled) {
  std::string text = "pair,id,prompt,labelled,label\n";
  at::Tensor labelled = is_labelled.to(at::kBool).contiguous();
  at::Tensor label = data.human_label.to(at::kFloat).contiguous();
  at::Tensor prompt = data.prompt_index.to(at::kLong).contiguous();
  for (std::int64_t i = 0; i < data.size(); ++i) {
    const bool is = labelled.data_ptr<bool>()[i];
    const auto prompt_row = static_cast<std::size_t>(prompt.data_ptr<std::int64_t>()[i]);
    const std::string id = data.ids.empty() ? std::string() : data.ids[static_cast<std::size_t>(i)];
    text += fmt::format("{},{},{},{},{}\n", i, csv_field(id), csv_field(data.prompts.at(prompt_row)),
                        is ? 1 : 0, is ? fmt::format("{:g}", label.data_ptr<float>()[i]) : "");
  }
  write_file_atomic(file, text);
}

// The experiment's services for annotators: fresh backbones, losses, training without files.
class RunServices final : public ExperimentServices {
 public:
  RunServices(const Experiment& experiment, PluginRegistry& registry, BackboneContext context)
      : experiment_(experiment), registry_(registry), context_(std::move(context)) {}

  std::shared_ptr<Backbone> fresh_backbone() override {
    std::shared_ptr<Backbone> backbone = create_backbone(experiment_, registry_);
    backbone->prepare(context_);
    return backbone;
  }

  std::shared_ptr<Loss> make_loss(const std::string& name,
                                  const std::string& options_toml) override {
    Options options = registry_.resolve_options(PluginKind::loss, name, options_toml,
                                                "loss '" + name + "' (made by the annotator)");
    return registry_.create<Loss>(name, options);
  }

  void train(Backbone& backbone, Loss& loss, const PairDataset& data,
             const at::Tensor& is_labelled, const at::Tensor& annotator_prob, std::int64_t steps,
             std::uint64_t seed) override {
    if (loss.needs_annotator() && !annotator_prob.defined()) {
      throw Error("services.train: the loss needs annotator probabilities, none were given");
    }
    TrainSettings settings(experiment_.train);
    Trainer trainer(backbone, settings, seed, steps);
    trainer.set_prompt_cache(cache_dir(experiment_) / "prompts");
    trainer.set_preference(loss, data, is_labelled, annotator_prob);
    while (trainer.step_index() < steps) trainer.step();
  }

 private:
  const Experiment& experiment_;
  PluginRegistry& registry_;
  BackboneContext context_;
};

at::Tensor checked_annotations(const at::Tensor& annotations, const PluginSlot& slot,
                               const PairDataset& data) {
  at::Tensor prob = annotations.detach().to(at::kFloat).contiguous();
  if (prob.dim() != 1 || prob.size(0) != data.size()) {
    throw Error("annotator '" + slot.plugin + "' returned a tensor of shape " +
                fmt::format("{}", fmt::join(prob.sizes(), "x")) + ", expected [" +
                std::to_string(data.size()) + "]");
  }
  return prob;
}

at::Tensor annotate_cached(const Experiment& experiment, PluginRegistry& registry,
                           const PairDataset& data, const at::Tensor& is_labelled,
                           Backbone& backbone, RunServices& services, const InitInfo& init,
                           RunLog& log) {
  if (!experiment.annotator) {
    throw Error("the loss '" + experiment.loss->plugin +
                "' needs an annotator, but the experiment has no [annotator] table");
  }
  const PluginSlot& slot = *experiment.annotator;
  std::shared_ptr<Annotator> annotator = registry.create<Annotator>(slot.plugin, slot.options);
  fs::path annotator_cache = cache_dir(experiment) / "annotator";
  fs::create_directories(annotator_cache);
  AnnotatorContext context{data, is_labelled, backbone, services, experiment.seed(),
                           annotator_cache};
  if (!annotator->cacheable()) {
    log.line("annotations: running annotator '" + slot.plugin + "' (not cached)");
    return checked_annotations(annotator->annotate(context), slot, data);
  }
  std::string key = fmt::format(
      "annotator={}\n{}\ndata={}\nbackbone={}\n{}\ninit={}\nseed={}\n", slot.plugin,
      slot.options_toml, data.fingerprint, experiment.backbone->plugin,
      experiment.backbone->options_toml, init.key, experiment.seed());
  if (annotator->uses_labels()) key += "labelled=" + tensor_digest(is_labelled) + "\n";
  fs::path folder = cache_dir(experiment) / "annotations";
  fs::path file = folder / (digest(key) + ".pt");
  std::error_code error;
  if (fs::exists(file, error)) {
    at::Tensor prob;
    torch::load(prob, file.string());
    if (prob.dim() == 1 && prob.size(0) == data.size()) {
      log.line("annotations: cached " + file.string());
      return prob;
    }
  }
  log.line("annotations: running annotator '" + slot.plugin + "'");
  at::Tensor prob = checked_annotations(annotator->annotate(context), slot, data);
  fs::create_directories(folder);
  fs::path temp = temp_path_for(file);
  torch::save(prob, temp.string());
  commit_file(temp, file);
  return prob;
}

// ---------------------------------------------------------------------------------------------
// Run folders and their files

fs::path make_run_dir(const Experiment& experiment, const RunControl& control) {
  if (!control.run_dir.empty()) {
    fs::create_directories(control.run_dir);
    return fs::absolute(control.run_dir);
  }
  fs::path output = output_dir(experiment);
  fs::create_directories(output);
  for (int n = 1;; ++n) {
    fs::path candidate = output / fmt::format("{}-{}", experiment.name(), n);
    std::error_code error;
    if (fs::create_directory(candidate, error)) return fs::absolute(candidate);
    if (error) throw Error(candidate.string() + ": cannot create run folder: " + error.message());
  }
}

json metrics_json(const Metrics& metrics) {
  json object = json::object();
  for (const auto& [name, value] : metrics) object[name] = value;
  return object;
}

// Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites what follows).
void truncate_metrics(const fs::path& file, std::int64_t step) {
  std::error_code error;
  if (!fs::exists(file, error)) return;
  std::ifstream in(file);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      json object = json::parse(line);
      if (object.value("step", std::int64_t{0}) > step) continue;
    } catch (const std::exception&) {
      continue;  // a partial line from a killed run
    }
    kept += line + "\n";
  }
  write_file_atomic(file, kept);
}

class ProgressBar {
 public:
  ProgressBar(bool enabled, std::int64_t start, std::int64_t total)
      : enabled_(enabled && ::isatty(2) != 0), start_step_(start), total_(total),
        start_(std::chrono::steady_clock::now()) {}
  void update(std::int64_t step, double loss) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (step < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    double elapsed = std::chrono::duration<double>(now - start_).count();
    double rate = elapsed > 0 ? static_cast<double>(step - start_step_) / elapsed : 0.0;
    double eta = rate > 0 ? static_cast<double>(total_ - step) / rate : 0.0;
    int width = 30;
    int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(static_cast<std::size_t>(width), '.');
    auto eta_s = static_cast<long>(eta);
    std::cerr << fmt::format("\r[{}] {}/{}  {:.1f} steps/s  ETA {:02d}:{:02d}  loss {:.4g}  ",
                             bar, step, total_, rate, eta_s / 60, eta_s % 60, loss)
              << std::flush;
    drawn_ = true;
  }
  ~ProgressBar() {
    if (drawn_) std::cerr << "\n";
  }

 private:
  bool enabled_;
  std::int64_t start_step_, total_;
  std::chrono::steady_clock::time_point start_, last_{};
  bool drawn_ = false;
};

Metrics evaluate_metrics(std::vector<std::shared_ptr<Metric>>& metrics, Backbone& backbone,
                         const PairDataset* pairs, std::uint64_t seed) {
  Metrics out;
  at::NoGradGuard no_grad;
  for (auto& metric : metrics) {
    MetricContext context{backbone, pairs, seed};
    for (auto& entry : metric->evaluate(context)) out.push_back(std::move(entry));
  }
  return out;
}

// What loading the data did (pairs, labelled, ties, the dataset's own counts such as skipped
// lines) goes to the log, into `report` (results.json "data"), and to stderr when input was
// skipped or dropped, so nothing is dropped silently.
void log_data_report(const PairDataset& pairs, const at::Tensor& is_labelled, std::int64_t ties,
                     const TrainSettings& settings, RunLog& log, json& report) {
  const std::int64_t labelled = is_labelled.sum().item<std::int64_t>();
  report = {{"pairs", pairs.size()},
            {"labelled", labelled},
            {settings.drop_ties ? "ties_dropped" : "ties_kept", ties}};
  std::string counts;
  bool skipped = settings.drop_ties && ties > 0;
  for (const auto& [name, count] : pairs.counts) {
    report[name] = count;
    counts += fmt::format(", {} {}", name, count);
    skipped = skipped || (name.starts_with("skipped_") && count > 0);
  }
  std::string summary = fmt::format("data: {} pairs, {} labelled ({} split), {} ties {}{}",
                                    pairs.size(), labelled,
                                    settings.split_by_prompt ? "by_prompt" : "random", ties,
                                    settings.drop_ties ? "dropped" : "kept as 0.5", counts);
  log.line(summary);
  if (skipped) std::cerr << summary << "\n";
}

RunResult read_result(const fs::path& run_dir) {
  json results = json::parse(read_file(run_dir / kResultsFile));
  RunResult result;
  result.run_dir = run_dir;
  for (auto& [name, value] : results.at("metrics").items()) {
    result.metrics.emplace_back(name, value.is_number() ? value.get<double>() : NAN);
  }
  result.steps_done = results.value("steps", std::int64_t{0});
  result.skipped_steps = results.value("skipped_steps", std::int64_t{0});
  result.finished = true;
  return result;
}

RunResult execute(const Experiment& experiment, PluginRegistry& registry,
                  const RunControl& control, bool resume) {
  auto started = std::chrono::steady_clock::now();
  std::int64_t threads = experiment.run.integer("threads");
  if (threads < 0) experiment.run.fail("threads", "must be ≥ 0 (0 = one per core)");
  at::set_num_threads(threads > 0 ? static_cast<int>(threads)
                                  : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const std::string& device = experiment.run.string("device");
  if (device != "cpu") {
    experiment.run.fail("device", "only \"cpu\" is supported by this trainer, got \"" + device + "\"");
  }
  TrainSettings settings(experiment.train);

  fs::path run_dir = make_run_dir(experiment, control);
  if (!resume) {
    // A fresh start in a reused folder: forget what a previous attempt left.
    std::error_code error;
    fs::remove_all(run_dir / kCheckpointDir, error);
    fs::remove(run_dir / kMetricsFile, error);
    fs::remove(run_dir / kResultsFile, error);
    write_file_atomic(run_dir / kConfigFile, experiment.resolved_toml);
  }
  RunLog log(run_dir / kLogFile);
  try {
    log.line(resume ? "resuming " + run_dir.string() : "starting " + run_dir.string());

    InitInfo init = resolve_init(experiment, registry, log);
    BackboneContext backbone_context;
    backbone_context.cache_dir = cache_dir(experiment) / "backbone";
    backbone_context.initial_weights = init.weights;
    backbone_context.seed = experiment.seed();
    std::shared_ptr<Backbone> backbone = create_backbone(experiment, registry);
    backbone->prepare(backbone_context);

    if (!experiment.data) throw Error("the experiment has no [data] table");
    std::shared_ptr<Dataset> dataset =
        registry.create<Dataset>(experiment.data->plugin, experiment.data->options);
    DatasetContext data_context{*backbone, cache_dir(experiment) / "data", experiment.seed()};

    RunServices services(experiment, registry, backbone_context);
    std::vector<std::shared_ptr<Metric>> metrics;
    for (const PluginSlot& slot : experiment.metrics) {
      metrics.push_back(registry.create<Metric>(slot.plugin, slot.options));
    }

    Trainer trainer(*backbone, settings, experiment.seed(), settings.steps);
    trainer.set_prompt_cache(cache_dir(experiment) / "prompts");
    std::optional<PairDataset> pairs;
    json data_report = json::object();
    std::optional<SampleDataset> samples;
    std::shared_ptr<Loss> loss;
    if (settings.objective == "preference") {
      if (!experiment.loss) throw Error("the preference objective needs a [loss] table");
      loss = registry.create<Loss>(experiment.loss->plugin, experiment.loss->options);
      pairs = dataset->pairs(data_context);
      std::int64_t ties = (pairs->human_label.to(at::kFloat) == 0.5f).sum().item<std::int64_t>();
      if (settings.drop_ties) drop_tied_pairs(*pairs);
      at::Tensor is_labelled = choose_labelled(*pairs, settings.labelled_fraction,
                                               experiment.seed(), settings.split_by_prompt);
      write_split_file(run_dir / kSplitFile, *pairs, is_labelled);
      log_data_report(*pairs, is_labelled, ties, settings, log, data_report);
      at::Tensor annotator_prob;
      if (loss->needs_annotator()) {
        annotator_prob = annotate_cached(experiment, registry, *pairs, is_labelled, *backbone,
                                         services, init, log);
      }
      trainer.set_preference(*loss, *pairs, is_labelled, annotator_prob);
    } else {
      samples = dataset->samples(data_context);
      log.line(fmt::format("{} samples (denoising objective)", samples->size()));
      trainer.set_denoising(*samples);
    }
    const PairDataset* eval_pairs = pairs ? &*pairs : nullptr;

    if (resume) {
      fs::path checkpoint = latest_checkpoint(run_dir);
      if (!checkpoint.empty()) {
        load_checkpoint(checkpoint, trainer);
        log.line(fmt::format("loaded {} (step {})", checkpoint.filename().string(),
                             trainer.step_index()));
      } else {
        log.line("no checkpoint: starting from step 0");
      }
      truncate_metrics(run_dir / kMetricsFile, trainer.step_index());
    }

    std::ofstream metrics_out(run_dir / kMetricsFile, std::ios::app);
    std::int64_t eval_every = experiment.eval.integer("every");
    auto eval_seed = static_cast<std::uint64_t>(experiment.eval.integer("seed"));
    std::int64_t session_steps = 0;
    bool stopped = false;
    {
      ProgressBar progress(control.progress_bar, trainer.step_index(), settings.steps);
      while (trainer.step_index() < settings.steps) {
        if (control.stop_after_steps > 0 && session_steps >= control.stop_after_steps) {
          stopped = true;
          break;
        }
        StepReport report = trainer.step();
        ++session_steps;
        std::int64_t step = trainer.step_index();
        bool last = step == settings.steps;
        bool evaluate = eval_every > 0 && step % eval_every == 0 && !last;
        if (step % settings.log_every == 0 || evaluate || last || report.skipped) {
          json line = {{"step", step},          {"loss", report.loss},
                       {"lr", report.lr},       {"grad_norm", report.grad_norm},
                       {"skipped", trainer.skipped()}, {"skipped_step", report.skipped}};
          for (const auto& [name, value] : report.diagnostics) line[name] = value;
          if (evaluate) {
            Metrics values = trainer.with_eval_weights(
                [&] { return evaluate_metrics(metrics, *backbone, eval_pairs, eval_seed); });
            for (const auto& [name, value] : values) line["eval/" + name] = value;
          }
          metrics_out << line.dump() << "\n";
          metrics_out.flush();
        }
        if (report.skipped) {
          log.line(fmt::format("step {}: non-finite loss or gradient (loss {}, grad norm {}); "
                               "step skipped",
                               step, report.loss, report.grad_norm));
        }
        if (settings.checkpoint_every > 0 && step % settings.checkpoint_every == 0 && !last) {
          save_checkpoint(run_dir, trainer);
        }
        progress.update(step, report.loss);
      }
    }

    RunResult result;
    result.run_dir = run_dir;
    result.steps_done = trainer.step_index();
    result.skipped_steps = trainer.skipped();
    if (stopped) {
      log.line(fmt::format("stopped after step {} (as if killed)", trainer.step_index()));
      return result;
    }
    fs::path last_checkpoint = latest_checkpoint(run_dir);
    if (last_checkpoint.empty() ||
        last_checkpoint.filename().string() != fmt::format("step-{:08d}.pt", trainer.step_index())) {
      save_checkpoint(run_dir, trainer);
    }
    trainer.load_ema_into_model();
    backbone->save_weights(run_dir / kWeightsFile);
    result.metrics = evaluate_metrics(metrics, *backbone, eval_pairs, eval_seed);
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    json final_line = {{"step", trainer.step_index()}, {"skipped", trainer.skipped()}};
    for (const auto& [name, value] : result.metrics) final_line["eval/" + name] = value;
    metrics_out << final_line.dump() << "\n";
    metrics_out.flush();

    json results = {{"metrics", metrics_json(result.metrics)},
                    {"steps", trainer.step_index()},
                    {"skipped_steps", trainer.skipped()},
                    {"wall_time_s", wall},
                    {"data", data_report},
                    // The annotator the loss actually used ("" when none): reports name it.
                    {"annotator", loss && loss->needs_annotator() && experiment.annotator
                                      ? experiment.annotator->plugin
                                      : std::string()},
                    {"finished", true}};
    write_file_atomic(run_dir / kResultsFile, results.dump(2) + "\n");
    result.finished = true;
    std::string summary = fmt::format("finished: {} steps, {} skipped (non-finite), {:.1f} s",
                                      trainer.step_index(), trainer.skipped(), wall);
    for (const auto& [name, value] : result.metrics) summary += fmt::format(", {} = {:.6g}", name, value);
    log.line(summary);
    return result;
  } catch (const std::exception& error) {
    log.line(std::string("error: ") + error.what());
    // A fresh exception made here: the caught one may live in a plugin library (its vtable and
    // message) that is unloaded when the caller's registry goes away before the catch.
    throw Error(error.what());
  }
}

}  // namespace

RunResult run_experiment(const Experiment& experiment, PluginRegistry& registry,
                         const RunControl& control) {
  return execute(experiment, registry, control, /*resume=*/false);
}

RunResult resume_run(const fs::path& run_dir, PluginRegistry& registry, const RunControl& control) {
  fs::path dir = fs::absolute(run_dir);
  std::error_code error;
  if (fs::exists(dir / kResultsFile, error)) return read_result(dir);
  fs::path config = dir / kConfigFile;
  if (!fs::exists(config, error)) {
    throw Error(dir.string() + ": not a run folder (no " + kConfigFile + ")");
  }
  Experiment experiment =
      load_experiment_text(read_file(config), config.string(), dir, {}, registry);
  RunControl resumed = control;
  resumed.run_dir = dir;
  return execute(experiment, registry, resumed, /*resume=*/true);
}

std::vector<std::pair<std::string, double>> evaluate_run(const fs::path& run_dir,
                                                         std::span<const Override> overrides,
                                                         PluginRegistry& registry) {
  const fs::path dir = fs::absolute(run_dir);
  std::error_code error;
  const fs::path config = dir / kConfigFile;
  if (!fs::exists(config, error)) throw Error(dir.string() + ": not a run folder (no " + kConfigFile + ")");
  if (!fs::exists(dir / kWeightsFile, error) || !fs::exists(dir / kResultsFile, error)) {
    throw Error(dir.string() + ": the run has not finished (no " + kWeightsFile + " / " + kResultsFile +
                "); `dedpo run --resume " + dir.string() + "` completes it");
  }
  Experiment experiment = load_experiment_text(read_file(config), config.string(), dir,
                                               std::vector<Override>(overrides.begin(), overrides.end()),
                                               registry);
  if (experiment.metrics.empty()) throw Error(dir.string() + ": the experiment has no [[metrics]]");
  RunLog log(dir / kLogFile);
  log.line("eval: evaluating the trained model of the final checkpoint");

  // The backbone as the run had it (reference = the run's initial weights), its model restored
  // from the final checkpoint: exact for every backbone (LoRA adapters included) and, with EMA,
  // the averaged weights the run evaluated and saved.
  InitInfo init = resolve_init(experiment, registry, log);
  BackboneContext context;
  context.cache_dir = cache_dir(experiment) / "backbone";
  context.initial_weights = init.weights;
  context.seed = experiment.seed();
  std::shared_ptr<Backbone> backbone = create_backbone(experiment, registry);
  backbone->prepare(context);
  {
    const fs::path checkpoint = latest_checkpoint(dir);
    if (checkpoint.empty()) throw Error(dir.string() + ": no final checkpoint in " + kCheckpointDir);
    torch::serialize::InputArchive archive;
    archive.load_from(checkpoint.string());
    torch::serialize::InputArchive model;
    archive.read("model", model);
    backbone->model().load(model);
    c10::IValue ema_count;
    archive.read("ema_count", ema_count);
    if (ema_count.toInt() > 0) {
      // The trainer's EMA tensors follow its trainable parameters in model() order.
      std::vector<at::Tensor> trainable;
      for (const at::Tensor& p : backbone->model().parameters()) {
        if (p.requires_grad()) trainable.push_back(p);
      }
      if (static_cast<std::int64_t>(trainable.size()) != ema_count.toInt()) {
        throw Error(checkpoint.string() + ": holds " + std::to_string(ema_count.toInt()) +
                    " EMA tensors for " + std::to_string(trainable.size()) + " trainable parameters");
      }
      at::NoGradGuard no_grad;
      for (std::size_t i = 0; i < trainable.size(); ++i) {
        at::Tensor average;
        archive.read("ema" + std::to_string(i), average, true);
        trainable[i].copy_(average);
      }
    }
  }

  std::optional<PairDataset> pairs;
  if (experiment.data && TrainSettings(experiment.train).objective == "preference") {
    std::shared_ptr<Dataset> dataset = registry.create<Dataset>(experiment.data->plugin, experiment.data->options);
    DatasetContext data_context{*backbone, cache_dir(experiment) / "data", experiment.seed()};
    pairs = dataset->pairs(data_context);
    if (TrainSettings(experiment.train).drop_ties) drop_tied_pairs(*pairs);  // as the run did
  }
  std::vector<std::shared_ptr<Metric>> metrics;
  for (const PluginSlot& slot : experiment.metrics) {
    metrics.push_back(registry.create<Metric>(slot.plugin, slot.options));
  }
  const Metrics figures = evaluate_metrics(metrics, *backbone, pairs ? &*pairs : nullptr,
                                           static_cast<std::uint64_t>(experiment.eval.integer("seed")));

  // New figures join (or replace) the run's results, so reports show them beside the others.
  json results = json::parse(read_file(dir / kResultsFile));
  for (const auto& [name, value] : figures) results["metrics"][name] = value;
  write_file_atomic(dir / kResultsFile, results.dump(2) + "\n");
  std::string summary = "eval: finished";
  for (const auto& [name, value] : figures) summary += fmt::format(", {} = {:.6g}", name, value);
  log.line(summary);
  // A run of a grid: its report (results.csv beside the runs) is rewritten.
  if (fs::exists(dir.parent_path() / "results.csv", error)) write_report(dir.parent_path());
  return figures;
}

}  // namespace dedpo
