#include "dedpo/host/gradient_reducer.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "dedpo/error.hpp"

namespace dedpo {

namespace {

// Called by the autograd engine once a parameter's gradient has been accumulated into .grad.
class ReadyHook final : public torch::autograd::PostAccumulateGradHook {
 public:
  ReadyHook(GradientReducer& reducer, std::size_t index) : reducer_(reducer), index_(index) {}
  void operator()(const torch::autograd::Variable& /*parameter*/) override {
    reducer_.parameter_ready(index_);
  }

 private:
  GradientReducer& reducer_;
  std::size_t index_;
};

}  // namespace

GradientReducer::GradientReducer(Collectives& collectives, std::vector<at::Tensor> parameters,
                                 std::int64_t bucket_bytes)
    : collectives_(collectives), parameters_(std::move(parameters)) {
  bucket_of_.resize(parameters_.size());
  std::int64_t filled = 0;
  for (std::size_t k = parameters_.size(); k-- > 0;) {
    const at::Tensor& parameter = parameters_[k];
    if (parameter.scalar_type() != at::kFloat || parameter.device() != parameters_.front().device()) {
      throw Error("gradient reducer: parameters must be float32 on one device");
    }
    const std::int64_t bytes = parameter.numel() * static_cast<std::int64_t>(sizeof(float));
    if (buckets_.empty() || filled + bytes > bucket_bytes) {
      buckets_.emplace_back();
      filled = 0;
    }
    buckets_.back().members.push_back(k);
    buckets_.back().numel += parameter.numel();
    bucket_of_[k] = buckets_.size() - 1;
    filled += bytes;
  }
  for (std::size_t k = 0; k < parameters_.size(); ++k) {
    torch::autograd::impl::set_post_acc_grad_hooks(parameters_[k],
                                                   std::make_unique<ReadyHook>(*this, k));
  }
}

GradientReducer::~GradientReducer() {
  for (const at::Tensor& parameter : parameters_) {
    torch::autograd::impl::set_post_acc_grad_hooks(parameter, nullptr);
  }
}

void GradientReducer::arm() { armed_ = true; }

void GradientReducer::parameter_ready(std::size_t index) {
  if (!armed_) return;  // an earlier micro-batch of the step: its gradient keeps accumulating
  ++buckets_[bucket_of_[index]].ready;
  while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].members.size()) {
    start(buckets_[next_++]);
  }
}

void GradientReducer::start(Bucket& bucket) {
  at::NoGradGuard no_grad;
  const at::Tensor& first = parameters_[bucket.members.front()];
  std::vector<at::Tensor> parts;
  std::vector<float> presence;
  for (std::size_t k : bucket.members) {
    const at::Tensor& grad = parameters_[k].grad();
    parts.push_back(grad.defined() ? grad.reshape({-1}) : at::zeros({parameters_[k].numel()}, first.options()));
    presence.push_back(grad.defined() ? 1.0F : 0.0F);
  }
  parts.push_back(at::tensor(presence, first.options()));
  bucket.flat = at::cat(parts);
  bucket.wait = collectives_.start_sum_in_place(bucket.flat, "gradient all-reduce");
}

void GradientReducer::finish() {
  at::NoGradGuard no_grad;
  armed_ = false;
  overlapped_ = next_;  // the buckets the backward pass started
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  const double share = 1.0 / collectives_.world_size();
  for (Bucket& bucket : buckets_) {
    bucket.wait();
    const at::Tensor ranks_with_gradient =
        bucket.flat.narrow(0, bucket.numel, static_cast<std::int64_t>(bucket.members.size())).to(at::kCPU);
    const float* count = ranks_with_gradient.data_ptr<float>();
    bucket.flat.mul_(share);
    std::int64_t offset = 0;
    for (std::size_t m = 0; m < bucket.members.size(); ++m) {
      at::Tensor& parameter = parameters_[bucket.members[m]];
      const std::int64_t numel = parameter.numel();
      if (count[m] == 0.0F) {
        parameter.mutable_grad().reset();  // no rank had one: the optimiser skips it
      } else {
        if (!parameter.grad().defined()) parameter.mutable_grad() = at::empty_like(parameter);
        parameter.mutable_grad().copy_(bucket.flat.narrow(0, offset, numel).view_as(parameter));
      }
      offset += numel;
    }
    bucket.flat = at::Tensor();
    bucket.wait = nullptr;
    bucket.ready = 0;
  }
  next_ = 0;  // ready for the next step
}

}  // namespace dedpo
