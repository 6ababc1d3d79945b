#include "train/ema.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/error.hpp"

namespace dedpo {

Ema::Ema(std::vector<at::Tensor> params, double decay) : params_(std::move(params)), decay_(decay) {
  if (decay_ <= 0.0) return;
  at::NoGradGuard no_grad;
  for (const at::Tensor& p : params_) averages_.push_back(p.detach().clone());
}

void Ema::update() {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < averages_.size(); ++i) {
    averages_[i].mul_(decay_).add_(params_[i].detach(), 1.0 - decay_);
  }
}

void Ema::copy_averages_into_params() {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < averages_.size(); ++i) params_[i].detach().copy_(averages_[i]);
}

Ema::Swap::Swap(Ema& ema) : ema(ema) {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < ema.params_.size(); ++i) {
    trained.push_back(ema.params_[i].detach().clone());
    ema.params_[i].detach().copy_(ema.averages_[i]);
  }
}

Ema::Swap::~Swap() {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < ema.params_.size(); ++i) ema.params_[i].detach().copy_(trained[i]);
}

void Ema::save(torch::serialize::OutputArchive& archive) const {
  archive.write("ema_count", c10::IValue(static_cast<std::int64_t>(averages_.size())));
  for (std::size_t i = 0; i < averages_.size(); ++i) {
    archive.write("ema" + std::to_string(i), averages_[i], true);
  }
}

void Ema::load(torch::serialize::InputArchive& archive) {
  c10::IValue count;
  archive.read("ema_count", count);
  if (static_cast<std::size_t>(count.toInt()) != averages_.size()) {
    throw Error("checkpoint: EMA setting differs from the experiment's [train] ema_decay");
  }
  for (std::size_t i = 0; i < averages_.size(); ++i) {
    at::Tensor t;
    archive.read("ema" + std::to_string(i), t, true);
    averages_[i].copy_(t);
  }
}

void Ema::restore_averages(torch::serialize::InputArchive& archive,
                           const std::vector<at::Tensor>& params, const std::string& file) {
  c10::IValue count;
  archive.read("ema_count", count);
  if (count.toInt() == 0) return;
  if (static_cast<std::int64_t>(params.size()) != count.toInt()) {
    throw Error(file + ": holds " + std::to_string(count.toInt()) + " EMA tensors for " +
                std::to_string(params.size()) + " trainable parameters");
  }
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params.size(); ++i) {
    at::Tensor average;
    archive.read("ema" + std::to_string(i), average, true);
    params[i].detach().copy_(average);
  }
}

}  // namespace dedpo
