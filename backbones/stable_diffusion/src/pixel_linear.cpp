#include "dedpo/sd/pixel_linear.hpp"

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <optional>

#include "dedpo/sd/cpu_linear.hpp"
#include "dedpo/sd/cpu_matmul.hpp"

namespace dedpo::sd {

namespace {

// Sample b of an activation as a matrix of pixels × channels, a view either way.
at::Tensor pixels_by_channels(const at::Tensor& t, int64_t b, PixelLayout layout) {
  return layout == PixelLayout::tokens ? t[b] : t[b].t();
}

at::Tensor empty_activation(int64_t batch, int64_t pixels, int64_t channels, PixelLayout layout,
                            const at::TensorOptions& options) {
  return layout == PixelLayout::tokens ? at::empty({batch, pixels, channels}, options)
                                       : at::empty({batch, channels, pixels}, options);
}

// With P_b the pixels × in matrix of sample b and Y_b the pixels × out one: Y_b = P_b·Wᵀ + bias
// written in Y's layout directly (tokens: Y_b = P_b·Wᵀ; channels first: Y_bᵀ = W·P_bᵀ, the bias
// added per row); dP_b = dY_b·W, dW = Σ_b dY_bᵀ·P_b, dbias = Σ dY over samples and pixels.
class PixelLinear : public torch::autograd::Function<PixelLinear> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t from_code, int64_t to_code) {
    const auto from = static_cast<PixelLayout>(from_code), to = static_cast<PixelLayout>(to_code);
    const at::Tensor x = x_in.contiguous();
    const int64_t batch = x.size(0), out = weight.size(0);
    const int64_t pixels = from == PixelLayout::tokens ? x.size(1) : x.size(2);
    ctx->save_for_backward({weight.requires_grad() ? x : at::Tensor(), weight});
    ctx->saved_data["from"] = from_code;
    ctx->saved_data["to"] = to_code;
    ctx->saved_data["bias"] = bias.has_value();
    const at::Tensor b = bias.value_or(at::Tensor());
    at::Tensor y = empty_activation(batch, pixels, out, to, x.options());
    for (int64_t s = 0; s < batch; ++s) {
      const at::Tensor p = pixels_by_channels(x, s, from);
      if (to == PixelLayout::tokens) {
        cpu_matmul_out(y[s], p, weight.t(), b, at::Tensor(), /*accumulate=*/false);
      } else {
        cpu_matmul_out(y[s], weight, p.t(), at::Tensor(), b, /*accumulate=*/false);
      }
    }
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const auto from = static_cast<PixelLayout>(ctx->saved_data["from"].toInt());
    const auto to = static_cast<PixelLayout>(ctx->saved_data["to"].toInt());
    const at::Tensor dy = grads[0].contiguous();
    const int64_t batch = dy.size(0), in = weight.size(1);
    const int64_t pixels = to == PixelLayout::tokens ? dy.size(1) : dy.size(2);
    at::Tensor dx, dweight, dbias;
    if (ctx->needs_input_grad(0)) {
      dx = empty_activation(batch, pixels, in, from, dy.options());
      for (int64_t s = 0; s < batch; ++s) {
        const at::Tensor d = pixels_by_channels(dy, s, to);  // pixels × out
        if (from == PixelLayout::tokens) {
          cpu_matmul_out(dx[s], d, weight, at::Tensor(), at::Tensor(), /*accumulate=*/false);
        } else {
          cpu_matmul_out(dx[s], weight.t(), d.t(), at::Tensor(), at::Tensor(), /*accumulate=*/false);
        }
      }
    }
    if (ctx->needs_input_grad(1)) {
      dweight = at::empty(weight.sizes(), weight.options());
      for (int64_t s = 0; s < batch; ++s) {
        cpu_matmul_out(dweight, pixels_by_channels(dy, s, to).t(), pixels_by_channels(x, s, from), at::Tensor(),
                       at::Tensor(), /*accumulate=*/s > 0);
      }
    }
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) {
      dbias = dy.sum(to == PixelLayout::tokens ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{0, 2});
    }
    return {dx, dweight, dbias, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool pixel_linear_applies(const at::Tensor& x, PixelLayout from, const at::Tensor& weight, const at::Tensor& bias) {
  if (x.dim() != 3 || x.size(0) == 0) return false;
  const at::Tensor sample = pixels_by_channels(x, 0, from);  // pixels × channels, as cpu_linear would see it
  return cpu_linear_applies(sample, weight) && cpu_matmul_kernel_applies(sample, weight.t()) &&
         (!bias.defined() || (bias.scalar_type() == at::kFloat && bias.device().is_cpu()));
}

at::Tensor pixel_linear(const at::Tensor& x, PixelLayout from, const at::Tensor& weight, const at::Tensor& bias,
                        PixelLayout to) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2, "pixel_linear: expected x [B, C, HW] or [B, HW, C] and weight [O, C], got ",
              x.sizes(), " and ", weight.sizes());
  const int64_t channels = from == PixelLayout::tokens ? x.size(2) : x.size(1);
  TORCH_CHECK(channels == weight.size(1), "pixel_linear: x has ", channels, " channels, the weight takes ", weight.size(1));
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)), "pixel_linear: bias of shape ",
              bias.sizes(), " for ", weight.size(0), " outputs");
  TORCH_CHECK(x.size(0) == 0 || pixel_linear_applies(x, from, weight, bias),
              "pixel_linear: runs on float32 CPU tensors outside autocast, on AMD CPUs with AVX-512F "
              "(pixel_linear_applies), got x ", x.scalar_type(), " on ", x.device(), ", weight ", weight.scalar_type());
  // The profiler's and the bench's FLOP count (a 1×1 convolution's work, not a linear layer's).
  RECORD_FUNCTION("dedpo::pixel_linear", std::vector<c10::IValue>({x, weight}));
  return PixelLinear::apply(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
                            static_cast<int64_t>(from), static_cast<int64_t>(to));
}

}  // namespace dedpo::sd
