#include "dedpo/host/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/optim/adamw.h>

namespace dedpo {
namespace {

// Tensors of one device and dtype: `_fused_adamw_` and `_foreach_norm` take one such list.
using DeviceDtype = std::tuple<c10::DeviceType, c10::DeviceIndex, at::ScalarType>;
DeviceDtype device_dtype(const at::Tensor& t) { return {t.device().type(), t.device().index(), t.scalar_type()}; }

class AdamWOptimizer final : public Optimizer {
 public:
  AdamWOptimizer(std::vector<at::Tensor> params, const TrainSettings& s)
      : optimizer_(std::move(params), torch::optim::AdamWOptions(s.lr)
                                          .betas({s.adam_beta1, s.adam_beta2})
                                          .eps(s.adam_eps)
                                          .weight_decay(s.weight_decay)) {}

  // torch::optim::AdamW's update (same state, lazily created on a parameter's first gradient, and
  // the same per-parameter step count) in ATen's fused kernel: one pass instead of about eight,
  // with the clipping division folded in.
  void step(double lr, double gradient_divisor) override {
    at::NoGradGuard no_grad;
    struct Lists {
      std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
      std::map<std::int64_t, at::Tensor> step_tensors;  // one scalar per step count
    };
    std::map<DeviceDtype, Lists> lists;
    // One parameter group, whose options hold the betas, eps and weight decay.
    auto& group = optimizer_.param_groups().front();
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (const at::Tensor& param : group.params()) {
      if (!param.grad().defined()) continue;
      auto& slot = optimizer_.state()[param.unsafeGetTensorImpl()];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(at::zeros_like(param, at::MemoryFormat::Preserve));
        fresh->exp_avg_sq(at::zeros_like(param, at::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& state = static_cast<torch::optim::AdamWParamState&>(*slot);
      state.step(state.step() + 1);
      Lists& l = lists[device_dtype(param)];
      l.params.push_back(param);
      l.grads.push_back(param.grad());
      l.exp_avgs.push_back(state.exp_avg());
      l.exp_avg_sqs.push_back(state.exp_avg_sq());
      at::Tensor& step = l.step_tensors[state.step()];
      if (!step.defined()) {
        step = at::scalar_tensor(static_cast<double>(state.step()), param.options().dtype(at::kFloat));
      }
      l.steps.push_back(step);
    }
    for (auto& [key, l] : lists) {
      std::optional<at::Tensor> divisor;
      if (gradient_divisor != 1.0) {
        divisor = at::scalar_tensor(gradient_divisor, l.params.front().options().dtype(at::kFloat));
      }
      at::_fused_adamw_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, /*max_exp_avg_sqs=*/{}, l.steps, lr,
                        std::get<0>(options.betas()), std::get<1>(options.betas()), options.weight_decay(),
                        options.eps(), /*amsgrad=*/false, /*maximize=*/false, divisor, /*found_inf=*/std::nullopt);
    }
  }
  void save(torch::serialize::OutputArchive& archive) const override { optimizer_.save(archive); }
  void load(torch::serialize::InputArchive& archive) override {
    optimizer_.load(archive);
    // The moments come back on the device they were saved from: rank 0's GPU (cuda:0) for every
    // rank of a data-parallel run, whose parameters are on cuda:LOCAL_RANK. (Adafactor copies its
    // state into tensors of its own.)
    for (const at::Tensor& param : optimizer_.param_groups().front().params()) {
      const auto found = optimizer_.state().find(param.unsafeGetTensorImpl());
      if (found == optimizer_.state().end()) continue;
      auto& moments = static_cast<torch::optim::AdamWParamState&>(*found->second);
      moments.exp_avg(moments.exp_avg().to(param.device()));
      moments.exp_avg_sq(moments.exp_avg_sq().to(param.device()));
    }
  }

 private:
  torch::optim::AdamW optimizer_;  // holds the parameters, options and state, and the checkpoint format
};

class AdafactorOptimizer final : public Optimizer {
 public:
  AdafactorOptimizer(std::vector<at::Tensor> params, const TrainSettings& s)
      : optimizer_(std::move(params), Adafactor::Options{.weight_decay = s.weight_decay}) {}
  void step(double lr, double gradient_divisor) override { optimizer_.step(lr, gradient_divisor); }
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
  Adafactor optimizer_;
};

// Σ g² over float32 CPU gradients in one parallel pass over all of them, in double (no float
// overflow, an inf or a NaN stays one): `_foreach_norm` opens a parallel region per tensor, which
// for a UNet's ~1,000 gradients took about twice the time of one pass over the same memory. The
// work is cut into fixed runs of elements across tensor boundaries and their sums are added in
// order, so the result is the same on any number of threads.
double float_cpu_sum_of_squares(const std::vector<at::Tensor>& grads) {
  std::vector<at::Tensor> held;  // contiguous copies where a gradient is not
  std::vector<const float*> data;
  std::vector<int64_t> starts{0};
  for (const at::Tensor& g : grads) {
    held.push_back(g.contiguous());
    data.push_back(held.back().data_ptr<float>());
    starts.push_back(starts.back() + g.numel());
  }
  constexpr int64_t kRun = 1 << 16;
  const int64_t total = starts.back(), runs = (total + kRun - 1) / kRun;
  std::vector<double> sums(static_cast<std::size_t>(runs), 0.0);
  at::parallel_for(0, runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      const int64_t first = run * kRun, last = std::min(total, first + kRun);
      // The tensor holding element `first`, then on through the following ones.
      auto tensor = static_cast<std::size_t>(std::upper_bound(starts.begin(), starts.end(), first) - starts.begin() - 1);
      double sum = 0.0;
      for (int64_t at_element = first; at_element < last; ++tensor) {
        const int64_t from = at_element - starts[tensor], to = std::min(last, starts[tensor + 1]) - starts[tensor];
        const float* g = data[tensor];
        double part = 0.0;
#pragma omp simd reduction(+ : part)
        for (int64_t i = from; i < to; ++i) part += static_cast<double>(g[i]) * static_cast<double>(g[i]);
        sum += part;
        at_element += to - from;
      }
      sums[static_cast<std::size_t>(run)] = sum;
    }
  });
  return std::accumulate(sums.begin(), sums.end(), 0.0);
}

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(std::vector<at::Tensor> params,
                                          const TrainSettings& settings) {
  switch (settings.optimizer) {
    case OptimizerKind::adafactor:
      return std::make_unique<AdafactorOptimizer>(std::move(params), settings);
    case OptimizerKind::adamw:
      break;
  }
  return std::make_unique<AdamWOptimizer>(std::move(params), settings);
}

double gradient_norm(const std::vector<at::Tensor>& params) {
  RECORD_FUNCTION("dedpo::gradient_norm", std::vector<c10::IValue>());  // a profile shows it beside the optimiser
  at::NoGradGuard no_grad;
  std::map<DeviceDtype, std::vector<at::Tensor>> grads;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) grads[device_dtype(p.grad())].push_back(p.grad());
  }
  double squared = 0.0;
  for (const auto& [key, list] : grads) {
    if (std::get<0>(key) == c10::DeviceType::CPU && std::get<2>(key) == at::kFloat) {
      squared += float_cpu_sum_of_squares(list);
      continue;
    }
    // bfloat16 or half gradients are reduced in float.
    const std::optional<at::ScalarType> in = at::isReducedFloatingType(std::get<2>(key))
                                                 ? std::optional<at::ScalarType>(at::kFloat)
                                                 : std::nullopt;
    squared += at::stack(at::_foreach_norm(list, 2, in)).to(at::kDouble).pow(2).sum().item<double>();
  }
  if (std::isinf(squared)) {
    // Float overflow, or a gradient holds inf: the double sum tells which (float32 CPU gradients
    // were summed in double already).
    squared = 0.0;
    for (const auto& [key, list] : grads) {
      if (std::get<0>(key) == c10::DeviceType::CPU && std::get<2>(key) == at::kFloat) {
        squared += float_cpu_sum_of_squares(list);
        continue;
      }
      for (const at::Tensor& g : list) squared += g.to(at::kDouble).pow(2).sum().item<double>();
    }
  }
  return std::sqrt(squared);
}

double clipping_divisor(double grad_norm, double max_grad_norm) {
  if (max_grad_norm <= 0.0 || grad_norm <= max_grad_norm) return 1.0;
  return (grad_norm + 1e-6) / max_grad_norm;
}

}  // namespace dedpo
