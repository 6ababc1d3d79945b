// cpu_linear's bfloat16 path (cpu_linear.hpp): the three products of a linear layer under CPU bf16
// autocast on VDPBF16PS, from operands packed into bf16 pairs (cpu_matmul_bf16_kernels.hpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "dedpo/host/accelerator.hpp"
#include "dedpo/sd/cpu_linear.hpp"

#include "avx512_kernels.hpp"
#include "cpu_matmul_bf16_kernels.hpp"
#include "panel_tasks.hpp"
#include "transpose_kernels.hpp"

namespace dedpo::sd {

namespace {

constexpr int64_t kPanel = 64;
constexpr int64_t kPairsPerBlock = 256;  // 512 rows of B per pass, as cpu_matmul's

int64_t padded_to_panels(int64_t cols) { return (cols + kPanel - 1) / kPanel * kPanel; }
uint32_t* words(const at::Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }
const uint16_t* bf16_bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

// m [R, K] (float32 or bfloat16, unit column stride) -> [R, ceil(K/2)] pairs along its rows.
at::Tensor pairs_along_rows(const at::Tensor& m_in) {
  const at::Tensor m = m_in.stride(1) == 1 ? m_in : m_in.contiguous();
  const int64_t rows = m.size(0), cols = m.size(1), pairs = (cols + 1) / 2;
  at::Tensor out = at::empty({rows, pairs}, m.options().dtype(at::kInt));
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    if (m.scalar_type() == at::kFloat) {
      avx512::pack_pairs_along_rows(m.data_ptr<float>() + begin * m.stride(0), m.stride(0), end - begin, cols,
                                    words(out) + begin * pairs, pairs);
    } else {
      avx512::pack_pairs_along_rows(bf16_bits(m) + begin * m.stride(0), m.stride(0), end - begin, cols,
                                    words(out) + begin * pairs, pairs);
    }
  });
  return out;
}

// m [R, J] -> [ceil(R/2), columns] pairs across its rows, the columns past J zero.
at::Tensor pairs_across_rows(const at::Tensor& m_in, int64_t columns) {
  const at::Tensor m = m_in.stride(1) == 1 ? m_in : m_in.contiguous();
  const int64_t rows = m.size(0), cols = m.size(1), pairs = (rows + 1) / 2;
  at::Tensor out = columns > cols ? at::zeros({pairs, columns}, m.options().dtype(at::kInt))
                                  : at::empty({pairs, columns}, m.options().dtype(at::kInt));
  at::parallel_for(0, pairs, 8, [&](int64_t begin, int64_t end) {
    if (m.scalar_type() == at::kFloat) {
      avx512::pack_pairs_across_rows(m.data_ptr<float>(), m.stride(0), rows, cols, begin, end, words(out), columns);
    } else {
      avx512::pack_pairs_across_rows(bf16_bits(m), m.stride(0), rows, cols, begin, end, words(out), columns);
    }
  });
  return out;
}

// The transpose of packed words [R, P] into [P, columns], the columns past R zero.
at::Tensor transposed_words(const at::Tensor& w, int64_t columns) {
  const int64_t rows = w.size(0), pairs = w.size(1);
  at::Tensor out = columns > rows ? at::zeros({pairs, columns}, w.options()) : at::empty({pairs, columns}, w.options());
  const auto* src = reinterpret_cast<const float*>(w.data_ptr<int32_t>());  // bits moved, never computed on
  auto* dst = reinterpret_cast<float*>(out.data_ptr<int32_t>());
  at::parallel_for(0, (pairs + 15) / 16, 4, [&](int64_t begin, int64_t end) {
    avx512::transpose(src, pairs, rows, begin * 16, std::min(end * 16, pairs), dst, columns);
  });
  return out;
}

// C [rows, columns of b] = bias + A·B in `dtype` (float32, or bfloat16: rounded once as the tile
// stores it when the sum takes one block of pairs, else summed in float32 and converted); A's pair
// (i, p) at a[i·a_row_stride + p·a_pair_stride], b packed [pairs, columns] with columns a multiple
// of 64; bias float32 [columns] or undefined.
at::Tensor product(const uint32_t* a, int64_t a_row_stride, int64_t a_pair_stride, int64_t rows, const at::Tensor& b,
                   const at::Tensor& bias, at::ScalarType dtype) {
  const int64_t pairs = b.size(0), columns = b.size(1);
  const bool bf16_store = dtype == at::kBFloat16 && pairs <= kPairsPerBlock;
  at::Tensor c = at::empty({rows, columns}, b.options().dtype(bf16_store ? at::kBFloat16 : at::kFloat));
  const uint32_t* b_words = words(b);
  const float* bias_data = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* c_data = bf16_store ? nullptr : c.data_ptr<float>();
  auto* c_bf16 = bf16_store ? reinterpret_cast<uint16_t*>(c.data_ptr<at::BFloat16>()) : nullptr;
  for_each_panel_task(rows, columns, [&](const PanelTask& t) {
    const int64_t first_col = t.panel * kPanel, offset = t.first_row * columns + first_col;
    for (int64_t p = 0; p < pairs; p += kPairsPerBlock) {
      avx512::matmul_bf16_panel(a + t.first_row * a_row_stride + p * a_pair_stride, a_row_stride, a_pair_stride, t.rows,
                                std::min(kPairsPerBlock, pairs - p), b_words + p * columns + first_col, columns,
                                bias_data ? bias_data + first_col : nullptr, /*accumulate=*/p > 0,
                                c_data ? c_data + offset : nullptr, c_bf16 ? c_bf16 + offset : nullptr, columns);
    }
  });
  return c.scalar_type() == dtype ? c : c.to(dtype);
}

at::Tensor padded_bias(const at::Tensor& bias, int64_t columns) {
  if (!bias.defined()) return bias;
  at::Tensor out = at::zeros({columns}, bias.options().dtype(at::kFloat));
  out.narrow(0, 0, bias.size(0)).copy_(bias);
  return out;
}

class CpuLinearBf16 : public torch::autograd::Function<CpuLinearBf16> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    const int64_t in = weight.size(1), out = weight.size(0), columns = padded_to_panels(out);
    const at::Tensor rows = x.reshape({-1, in});  // [N, in], float32 or bfloat16
    ctx->save_for_backward({weight.requires_grad() ? rows : at::Tensor(), weight});
    ctx->saved_data["bias"] = bias.has_value();
    ctx->saved_data["bias_dtype"] = static_cast<int64_t>(bias.has_value() ? bias->scalar_type() : at::kFloat);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    const at::Tensor a = pairs_along_rows(rows);                                // [N, in/2]
    const at::Tensor b = transposed_words(pairs_along_rows(weight), columns);   // [in/2, out padded]
    const at::Tensor c = product(words(a), a.size(1), 1, rows.size(0), b, padded_bias(bias.value_or(at::Tensor()), columns),
                                 at::kBFloat16);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    return c.narrow(1, 0, out).contiguous().view(shape);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &weight = saved[1];
    const int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor dy = grads[0].reshape({-1, out});  // [N, out]
    at::Tensor dx, dweight, dbias;
    if (ctx->needs_input_grad(0)) {
      const at::Tensor a = pairs_along_rows(dy);  // [N, out/2]
      const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
      const at::Tensor c = product(words(a), a.size(1), 1, dy.size(0), pairs_across_rows(weight, padded_to_panels(in)), {},
                                   x_dtype);
      std::vector<int64_t> shape = grads[0].sizes().vec();
      shape.back() = in;
      dx = c.narrow(1, 0, in).contiguous().view(shape);
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor a = pairs_across_rows(dy, out);  // [N/2, out]: dyᵀ's pair (o, p) at p·out + o
      const at::Tensor c = product(words(a), 1, out, out, pairs_across_rows(rows, padded_to_panels(in)), {}, at::kFloat);
      dweight = c.narrow(1, 0, in).to(weight.scalar_type()).contiguous();
    }
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) {
      dbias = dy.to(at::kFloat).sum(0).to(static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()));
    }
    return {dx, dweight, dbias};
  }
};

}  // namespace

bool cpu_linear_bf16_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  static const bool amd_with_bf16 = cpu_features().amd && avx512_bf16_kernels_run_here();
  return amd_with_bf16 && at::autocast::is_autocast_enabled(at::kCPU) &&
         at::autocast::get_autocast_dtype(at::kCPU) == at::kBFloat16 && x.device().is_cpu() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && x.dim() >= 1 && x.numel() > 0 &&
         weight.device().is_cpu() && (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16) &&
         weight.dim() == 2 && weight.numel() > 0 && x.size(-1) == weight.size(1) &&
         (!bias.defined() || ((bias.scalar_type() == at::kFloat || bias.scalar_type() == at::kBFloat16) &&
                              bias.device().is_cpu() && bias.dim() == 1 && bias.size(0) == weight.size(0)));
}

at::Tensor cpu_linear_bf16(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(cpu_linear_bf16_applies(x, weight, bias),
              "cpu_linear_bf16: serves float32 weights under CPU bfloat16 autocast on AMD CPUs with AVX512-BF16 "
              "(cpu_linear_bf16_applies)");
  RECORD_FUNCTION("dedpo::cpu_linear_bf16", std::vector<c10::IValue>({x, weight}));  // the bench's FLOP count
  return CpuLinearBf16::apply(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

}  // namespace dedpo::sd
