#include "train/master_weights.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <string>

#include "dedpo/error.hpp"

namespace dedpo {

MasterWeights::MasterWeights(std::vector<at::Tensor> weights) : weights_(std::move(weights)) {
  at::NoGradGuard no_grad;
  masters_.reserve(weights_.size());
  for (const at::Tensor& w : weights_) {
    if (w.scalar_type() == at::kFloat) {
      masters_.push_back(w);
    } else {
      masters_.push_back(w.detach().to(at::kFloat).requires_grad_(true));
      ++copies_;
    }
  }
}

void MasterWeights::gradients_to_masters() {
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    if (masters_[i].is_same(weights_[i])) continue;
    const at::Tensor& grad = weights_[i].grad();
    masters_[i].mutable_grad() = grad.defined() ? grad.to(at::kFloat) : at::Tensor();
    if (grad.defined()) weights_[i].mutable_grad().reset();
  }
}

void MasterWeights::masters_to_weights() {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    if (!masters_[i].is_same(weights_[i])) weights_[i].detach().copy_(masters_[i]);
  }
}

void MasterWeights::weights_become_masters() {
  at::NoGradGuard no_grad;
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    if (!masters_[i].is_same(weights_[i])) weights_[i].set_data(masters_[i].detach().clone());
  }
}

void MasterWeights::restore_masters(torch::serialize::InputArchive& archive, const std::vector<at::Tensor>& weights) {
  c10::IValue count;
  if (!archive.try_read("master_count", count)) return;
  at::NoGradGuard no_grad;
  std::size_t k = 0;
  for (const at::Tensor& w : weights) {
    if (w.scalar_type() == at::kFloat) continue;
    if (k == static_cast<std::size_t>(count.toInt())) throw Error("checkpoint: fewer float32 master weights than bfloat16 weights");
    at::Tensor master;
    archive.read("master" + std::to_string(k++), master, /*is_buffer=*/true);
    at::Tensor(w).set_data(master.to(w.device()));
  }
}

bool MasterWeights::saved_in(torch::serialize::InputArchive& archive) {
  c10::IValue count;
  return archive.try_read("master_count", count) && count.toInt() > 0;
}

void MasterWeights::save(torch::serialize::OutputArchive& archive) const {
  archive.write("master_count", c10::IValue(static_cast<std::int64_t>(copies_)));
  std::size_t k = 0;
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    if (!masters_[i].is_same(weights_[i])) archive.write("master" + std::to_string(k++), masters_[i], /*is_buffer=*/true);
  }
}

void MasterWeights::load(torch::serialize::InputArchive& archive) {
  c10::IValue count;
  const std::size_t saved = archive.try_read("master_count", count) ? static_cast<std::size_t>(count.toInt()) : 0;
  if (saved != copies_) throw Error("checkpoint: its float32 master weights do not match [train] weights_dtype");
  at::NoGradGuard no_grad;
  std::size_t k = 0;
  for (std::size_t i = 0; i < weights_.size(); ++i) {
    if (masters_[i].is_same(weights_[i])) continue;
    at::Tensor saved;
    archive.read("master" + std::to_string(k++), saved, /*is_buffer=*/true);
    masters_[i].copy_(saved);
  }
  masters_to_weights();
}

}  // namespace dedpo
