// Adafactor (Shazeer & Stern 2018), as described in dedpo/host/optimizer.hpp.
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/error.hpp"
#include "dedpo/host/optimizer.hpp"

namespace dedpo {

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

void Adafactor::step(double lr, double gradient_divisor) {
  at::NoGradGuard no_grad;
  ++step_;
  const double beta2 = 1.0 - std::pow(static_cast<double>(step_), options_.decay_rate);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i];
    if (!p.grad().defined()) continue;
    if (gradient_divisor != 1.0) p.grad().div_(gradient_divisor);
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

}  // namespace dedpo
