#include "dedpo/sd/im2col_conv.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "dedpo/sd/cpu_linear.hpp"
#include "dedpo/sd/cpu_matmul.hpp"
#include "avx512_kernels.hpp"
#include "im2col_kernels.hpp"

namespace dedpo::sd {

namespace {

// The geometry of one convolution: a sample's C × H × W input, a k×k window moved by `stride` over
// it padded by `padding` zeros on every side, OH × OW output pixels.
struct Window {
  int64_t channels, height, width, kernel, stride, padding, out_height, out_width;

  int64_t out_pixels() const { return out_height * out_width; }
  int64_t unfolded_rows() const { return channels * kernel * kernel; }
  // The input row (or column) that window offset `offset` reads for output row (or column) `out`;
  // out of range where it falls on the padding.
  int64_t source(int64_t out, int64_t offset) const { return out * stride - padding + offset; }
  // The output columns [first, last) whose offset-`offset` input column lies inside the image.
  std::pair<int64_t, int64_t> inside_columns(int64_t offset) const {
    auto first_reaching = [&](int64_t column) {  // the first output column whose source is ≥ column
      const int64_t gap = column + padding - offset;
      return std::clamp<int64_t>(gap <= 0 ? 0 : (gap + stride - 1) / stride, 0, out_width);
    };
    return {first_reaching(0), first_reaching(width)};
  }
};

Window window_of(at::IntArrayRef input_shape, int64_t kernel, int64_t stride, int64_t padding) {
  return {input_shape[1], input_shape[2], input_shape[3], kernel, stride, padding,
          (input_shape[2] + 2 * padding - kernel) / stride + 1, (input_shape[3] + 2 * padding - kernel) / stride + 1};
}

// Enough elements per task that a thread's share outweighs waking it.
constexpr int64_t kElementsPerTask = 1 << 14;

int64_t channel_grain(const Window& w) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, w.kernel * w.kernel * w.out_pixels()));
}

// The batch x ([B, C, H, W], contiguous) unfolded: row (c·k + i)·k + j of [C·k·k, B·OH·OW] holds,
// at column s·OH·OW + oh·OW + ow, the input the window's offset (i, j) reads for sample s's output
// pixel (oh, ow), 0 on the padding.
at::Tensor unfold_batch(const at::Tensor& x, const Window& w) {
  const int64_t batch = x.size(0), columns = batch * w.out_pixels(), window_size = w.kernel * w.kernel;
  const at::Tensor unfolded = at::empty({w.unfolded_rows(), columns}, x.options());
  const float* input = x.const_data_ptr<float>();
  float* output = unfolded.mutable_data_ptr<float>();
  // A stride-1 window that keeps the image's size (every 3×3 layer of a UNet but the downsamplers)
  // over rows of at most 16 floats (the deep levels, the only ones im2col_conv_applies picks) takes
  // the vector kernel: a loop per image row of 4 to 16 floats cost more than the copy.
  const bool small_same_size = w.stride == 1 && w.out_height == w.height && w.out_width == w.width &&
                               w.kernel % 2 == 1 && w.width <= avx512::kUnfoldMaxWidth && avx512_kernels_run_here();
  at::parallel_for(0, batch * w.channels, channel_grain(w), [&](int64_t first, int64_t last) {
    if (small_same_size) {
      std::vector<float> padded_plane((w.height + w.kernel - 1) * (w.width + w.kernel - 1));
      for (int64_t sc = first; sc < last; ++sc) {
        const int64_t s = sc / w.channels, c = sc % w.channels;
        avx512::unfold_plane(input + sc * w.height * w.width, w.height, w.width, w.kernel,
                             output + c * window_size * columns + s * w.out_pixels(), columns, padded_plane.data());
      }
      return;
    }
    for (int64_t sc = first; sc < last; ++sc) {
      const int64_t s = sc / w.channels, c = sc % w.channels;
      const float* plane = input + sc * w.height * w.width;
      for (int64_t i = 0; i < w.kernel; ++i) {
        for (int64_t j = 0; j < w.kernel; ++j) {
          float* row = output + (c * window_size + i * w.kernel + j) * columns + s * w.out_pixels();
          const auto [lo, hi] = w.inside_columns(j);
          const int64_t shift = j - w.padding;
          for (int64_t oh = 0; oh < w.out_height; ++oh) {
            float* out = row + oh * w.out_width;
            const int64_t ih = w.source(oh, i);
            if (ih < 0 || ih >= w.height) {
              std::fill(out, out + w.out_width, 0.0f);
              continue;
            }
            const float* in = plane + ih * w.width + shift;
            for (int64_t ow = 0; ow < lo; ++ow) out[ow] = 0.0f;
            for (int64_t ow = lo; ow < hi; ++ow) out[ow] = in[ow * w.stride];
            for (int64_t ow = hi; ow < w.out_width; ++ow) out[ow] = 0.0f;
          }
        }
      }
    }
  });
  return unfolded;
}

// The adjoint of unfolding, from the unfolded gradient laid out pixel by pixel (dUᵀ: row
// s·OH·OW + oh·OW + ow, column (c·k + i)·k + j): dx [B, C, H, W], each input pixel the sum of the
// gradient at every place unfolding copied it to. Each (sample, channel) plane gathers from its own
// columns only, so planes run in parallel and every sum in the same order.
at::Tensor fold_batch(const at::Tensor& dunfolded_by_pixel, const Window& w, at::IntArrayRef input_shape) {
  const int64_t batch = input_shape[0], row_size = dunfolded_by_pixel.size(1), window_size = w.kernel * w.kernel;
  const at::Tensor dx = at::empty(input_shape, dunfolded_by_pixel.options());
  const float* input = dunfolded_by_pixel.const_data_ptr<float>();
  float* output = dx.mutable_data_ptr<float>();
  at::parallel_for(0, batch * w.channels, channel_grain(w), [&](int64_t first, int64_t last) {
    for (int64_t sc = first; sc < last; ++sc) {
      const int64_t s = sc / w.channels, c = sc % w.channels;
      float* plane = output + sc * w.height * w.width;
      std::fill(plane, plane + w.height * w.width, 0.0f);
      for (int64_t oh = 0; oh < w.out_height; ++oh) {
        for (int64_t ow = 0; ow < w.out_width; ++ow) {
          const float* window = input + (s * w.out_pixels() + oh * w.out_width + ow) * row_size + c * window_size;
          for (int64_t i = 0; i < w.kernel; ++i) {
            const int64_t ih = w.source(oh, i);
            if (ih < 0 || ih >= w.height) continue;
            for (int64_t j = 0; j < w.kernel; ++j) {
              const int64_t iw = w.source(ow, j);
              if (iw >= 0 && iw < w.width) plane[ih * w.width + iw] += window[i * w.kernel + j];
            }
          }
        }
      }
    }
  });
  return dx;
}

class Im2colConv : public torch::autograd::Function<Im2colConv> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_in, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t stride, int64_t padding) {
    const at::Tensor x = x_in.contiguous();
    const Window w = window_of(x.sizes(), weight.size(2), stride, padding);
    const int64_t batch = x.size(0), out = weight.size(0);
    ctx->save_for_backward({weight.requires_grad() ? x : at::Tensor(), weight});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["input_shape"] = x.sizes();
    ctx->saved_data["bias"] = bias.has_value();
    const at::Tensor y_by_output = at::empty({out, batch * w.out_pixels()}, x.options());
    cpu_matmul_out(y_by_output, weight.reshape({out, w.unfolded_rows()}), unfold_batch(x, w), at::Tensor(),
                   bias.value_or(at::Tensor()), /*accumulate=*/false);
    return y_by_output.view({out, batch, w.out_height, w.out_width}).transpose(0, 1).contiguous();
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const std::vector<int64_t> input_shape = ctx->saved_data["input_shape"].toIntVector();
    const Window w = window_of(input_shape, weight.size(2), ctx->saved_data["stride"].toInt(),
                               ctx->saved_data["padding"].toInt());
    const int64_t batch = input_shape[0], out = weight.size(0);
    // dY as the forward's product made Y, [O, B·OH·OW].
    const at::Tensor dy_by_output =
        grads[0].reshape({batch, out, w.out_pixels()}).transpose(0, 1).reshape({out, batch * w.out_pixels()});
    at::Tensor dx, dweight, dbias;
    if (ctx->needs_input_grad(0)) {
      // dUᵀ = dYᵀ·W: the weight read in place as the wide side, [B·OH·OW, C·k·k].
      dx = fold_batch(cpu_matmul(dy_by_output.t(), weight.reshape({out, w.unfolded_rows()})), w, input_shape);
    }
    // U unfolded again rather than kept from the forward: it is 9 times the input, and unfolding
    // costs a small fraction of the product.
    if (ctx->needs_input_grad(1)) dweight = cpu_matmul(dy_by_output, unfold_batch(x, w).t()).view(weight.sizes());
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) dbias = dy_by_output.sum(1);
    return {dx, dweight, dbias, at::Tensor(), at::Tensor()};
  }
};

bool shapes_fit(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t stride, int64_t padding) {
  return x.dim() == 4 && weight.dim() == 4 && x.size(0) > 0 && weight.size(2) == weight.size(3) && x.size(1) == weight.size(1) &&
         stride >= 1 && padding >= 0 && x.size(2) + 2 * padding >= weight.size(2) &&
         x.size(3) + 2 * padding >= weight.size(3) && (!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)));
}

bool float_cpu(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }

}  // namespace

bool im2col_conv_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t stride,
                         int64_t padding) {
  if (!shapes_fit(x, weight, bias, stride, padding) || !x.is_contiguous() || !float_cpu(x) ||
      (bias.defined() && !float_cpu(bias))) {
    return false;
  }
  // The products' operands pass cpu_linear's checks (an AMD CPU, float32, no CPU autocast) as the
  // weight matrix does, and cpu_matmul's kernel runs.
  const at::Tensor matrix = weight.reshape({weight.size(0), -1});
  if (!cpu_linear_applies(matrix, matrix) || !cpu_matmul_kernel_applies(matrix, matrix.t())) return false;
  const Window w = window_of(x.sizes(), weight.size(2), stride, padding);
  return x.size(0) * w.out_pixels() <= weight.size(0);
}

at::Tensor im2col_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t stride,
                         int64_t padding) {
  TORCH_CHECK(shapes_fit(x, weight, bias, stride, padding), "im2col_conv2d: expected x [B, C, H, W] with B ≥ 1, a square "
              "weight [O, C, k, k] no larger than the padded input, bias [O] or none, stride ≥ 1 and padding ≥ 0; got x ",
              x.sizes(), ", weight ", weight.sizes(), ", bias ", bias.defined() ? bias.sizes() : at::IntArrayRef{},
              ", stride ", stride, ", padding ", padding);
  const at::Tensor matrix = weight.reshape({weight.size(0), -1});
  TORCH_CHECK(float_cpu(x) && cpu_matmul_kernel_applies(matrix, matrix.t()) && (!bias.defined() || float_cpu(bias)),
              "im2col_conv2d: runs on float32 CPU tensors on a CPU with AVX-512F (cpu_matmul's kernel), got x ",
              x.scalar_type(), " on ", x.device(), ", weight ", weight.scalar_type(), " on ", weight.device());
  // The profiler's and the bench's FLOP count (a convolution's work).
  RECORD_FUNCTION("dedpo::im2col_conv", std::vector<c10::IValue>({x, weight, stride, padding}));
  return Im2colConv::apply(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt, stride, padding);
}

}  // namespace dedpo::sd
