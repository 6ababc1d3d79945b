#include "dedpo/sd/cpu_linear.hpp"

#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/autocast_mode.h>
#include <torch/autograd.h>

#include "dedpo/host/accelerator.hpp"
#include "dedpo/sd/cpu_matmul.hpp"

#include "avx512_kernels.hpp"

#include <optional>
#include <vector>

namespace dedpo::sd {

namespace {

// a·b (+ bias): dedpo_sd's kernel where it runs (both operands read in place at any strides), else
// oneDNN, which takes b as its transpose in place but copies a non-contiguous a.
at::Tensor product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {}) {
  if (cpu_matmul_kernel_applies(a, b)) return cpu_matmul(a, b, bias);
  return onednn_matmul_transposed(a.contiguous(), b.t(), bias);
}

class CpuLinear : public torch::autograd::Function<CpuLinear> {
 public:
  // The bias as an optional: an undefined tensor is not a valid input of an autograd function.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    const int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor rows = x.reshape({-1, in}).contiguous();  // [N, in]
    // The input only where the weight's gradient needs it (a frozen layer keeps no activation).
    ctx->save_for_backward({weight.requires_grad() ? rows : at::Tensor(), weight});
    ctx->saved_data["bias"] = bias.has_value();
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    return product(rows, weight.t(), bias.value_or(at::Tensor())).view(shape);  // x·Wᵀ: [..., out]
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &weight = saved[1];
    const int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor dy = grads[0].reshape({-1, out});  // [N, out]: an operand a, read at any strides
    at::Tensor dx, dweight, dbias;
    if (ctx->needs_input_grad(0)) {
      std::vector<int64_t> shape = grads[0].sizes().vec();
      shape.back() = in;
      dx = product(dy, weight).view(shape);  // dy·W: [N, in]
    }
    if (ctx->needs_input_grad(1)) dweight = product(dy.t(), rows);  // dyᵀ·x: [out, in]
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) dbias = dy.sum(0);  // no edge without a bias
    return {dx, dweight, dbias};
  }
};

}  // namespace

bool cpu_linear_applies(const at::Tensor& x, const at::Tensor& weight) {
  static const bool amd_with_a_kernel = cpu_features().amd && (avx512_kernels_run_here() || at::hasMKLDNN());
  // Under autocast at::linear runs in bfloat16, which is oneDNN's already.
  return amd_with_a_kernel && !at::autocast::is_autocast_enabled(at::kCPU) && x.device().is_cpu() && weight.device().is_cpu() && x.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat && weight.dim() == 2 && x.dim() >= 1 && x.size(-1) == weight.size(1) &&
         x.numel() > 0 && weight.numel() > 0;
}

at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return CpuLinear::apply(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

}  // namespace dedpo::sd
