#include "dedpo/sd/lora.hpp"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include "dedpo/sd/cpu_linear.hpp"

namespace dedpo::sd {

namespace {
thread_local const LoraAdapters* active_adapters = nullptr;

at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return !t.defined() || t.scalar_type() == dtype ? t : t.to(dtype);
}
}  // namespace

void LoraAdapters::add(const torch::nn::LinearImpl& layer, LoraAdapter adapter) {
  parameters_.push_back(adapter.down);
  parameters_.push_back(adapter.up);
  by_layer_.insert_or_assign(&layer, std::move(adapter));
}

const LoraAdapter* LoraAdapters::find(const torch::nn::LinearImpl& layer) const {
  const auto it = by_layer_.find(&layer);
  return it == by_layer_.end() ? nullptr : &it->second;
}

ActiveAdapters::ActiveAdapters(const LoraAdapters* adapters) : previous_(active_adapters) { active_adapters = adapters; }
ActiveAdapters::~ActiveAdapters() { active_adapters = previous_; }
const LoraAdapters* ActiveAdapters::current() { return active_adapters; }

at::Tensor linear(const torch::nn::Linear& layer, const at::Tensor& x) {
  const auto& impl = *layer;
  // Under autocast at::linear casts for itself; without it, a weight of another dtype is cast here.
  const bool cast = !at::autocast::is_autocast_enabled(x.device().type()) && impl.weight.scalar_type() != x.scalar_type();
  const at::Tensor weight = cast ? in_dtype(impl.weight, x.scalar_type()) : impl.weight;
  const at::Tensor bias = cast ? in_dtype(impl.bias, x.scalar_type()) : impl.bias;
  at::Tensor y = cpu_linear_applies(x, weight)           ? cpu_linear(x, weight, bias)
                 : cpu_linear_bf16_applies(x, weight, bias) ? cpu_linear_bf16(x, weight, bias)
                                                            : at::linear(x, weight, bias);
  const LoraAdapter* adapter = active_adapters == nullptr ? nullptr : active_adapters->find(impl);
  if (adapter == nullptr) return y;
  const at::ScalarType dtype = y.scalar_type();
  const at::Tensor low_rank = at::linear(x.to(dtype), in_dtype(adapter->down, dtype));           // [.., r]
  return y + at::linear(low_rank, in_dtype(adapter->up, dtype)) * adapter->scale;            // [.., out]
}

}  // namespace dedpo::sd
