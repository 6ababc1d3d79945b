#include "dedpo/sd/small_head_attention.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "avx512_kernels.hpp"
#include "small_head_attention_kernels.hpp"
#include "transpose_kernels.hpp"

namespace dedpo::sd {

namespace {

constexpr int64_t kKeyLanes = 16;
// A multiple of every kernel's queries per sweep or tile (2, 12, 6), so that no task computes rows
// it discards.
constexpr int64_t kQueriesPerTask = 48;

struct Shape {
  int64_t batch, queries, keys, keys_padded, channels, heads, head_dim;
  float scale;
};

Shape make_shape(int64_t batch, int64_t queries, int64_t keys, int64_t channels, int64_t heads) {
  const int64_t head_dim = channels / heads;
  return {batch, queries, keys, (keys + kKeyLanes - 1) / kKeyLanes * kKeyLanes, channels, heads, head_dim,
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)))};
}

// Offset of (sample, head)'s first row in a [B, S, C] tensor whose rows are C floats apart.
int64_t row_offset(const Shape& s, int64_t bh, int64_t rows) {
  return (bh / s.heads) * rows * s.channels + (bh % s.heads) * s.head_dim;
}

// [B, Sk, C] -> [B, H, D, Sk padded with zero columns to a multiple of 16]: the layout in which a
// key's channel c is contiguous across keys, for the kernels' 16-key vectors. One transpose per
// (sample, head), on every thread.
at::Tensor transposed_padded(const at::Tensor& x, const Shape& s) {
  const at::Tensor rows = x.contiguous();
  at::Tensor out = at::empty({s.batch, s.heads, s.head_dim, s.keys_padded}, x.options());
  if (s.keys_padded > s.keys) out.narrow(3, s.keys, s.keys_padded - s.keys).zero_();
  const float* src = rows.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      avx512::transpose(src + row_offset(s, bh, s.keys), s.channels, s.keys, 0, s.head_dim,
                        dst + bh * s.head_dim * s.keys_padded, s.keys_padded);
    }
  });
  return out;
}

// The inverse of transposed_padded: [B, H, D, Sk padded] -> [B, Sk, C].
at::Tensor untransposed(const at::Tensor& x, const Shape& s) {
  at::Tensor out = at::empty({s.batch, s.keys, s.channels}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      avx512::transpose(src + bh * s.head_dim * s.keys_padded, s.keys_padded, s.head_dim, 0, s.keys,
                        dst + row_offset(s, bh, s.keys), s.channels);
    }
  });
  return out;
}

// Heads of 32 and 64 channels read the values as rows in the forward pass and Vᵀ only in the
// backward, and the keys both ways; smaller heads read Kᵀ and Vᵀ only.
bool reads_rows(const Shape& s) { return s.head_dim >= 32; }

// keys_t, values_t: [B, H, D, Skp]; k, v: the contiguous [B, Sk, C] inputs. Any of them undefined
// where the pass does not read it.
avx512::AttentionHead head_at(const at::Tensor& keys_t, const at::Tensor& values_t, const at::Tensor& k,
                              const at::Tensor& v, const Shape& s, int64_t bh) {
  const int64_t offset = bh * s.head_dim * s.keys_padded, rows = row_offset(s, bh, s.keys);
  auto at_offset = [](const at::Tensor& t, int64_t n) { return t.defined() ? t.data_ptr<float>() + n : nullptr; };
  return {.head_dim = s.head_dim,
          .keys = s.keys,
          .keys_padded = s.keys_padded,
          .keys_t = at_offset(keys_t, offset),
          .values_t = at_offset(values_t, offset),
          .key_rows = at_offset(k, rows),
          .value_rows = at_offset(v, rows),
          .row_stride = s.channels};
}

class SmallHeadAttention : public torch::autograd::Function<SmallHeadAttention> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, int64_t heads) {
    const Shape s = make_shape(q.size(0), q.size(1), k.size(1), q.size(2), heads);
    const at::Tensor scaled_q = (q * s.scale).contiguous();  // [B, Sq, C]
    const at::Tensor key_rows = reads_rows(s) ? k.contiguous() : at::Tensor();
    const at::Tensor value_rows = reads_rows(s) ? v.contiguous() : at::Tensor();
    const at::Tensor keys_t = transposed_padded(key_rows.defined() ? key_rows : k, s);  // [B, H, D, Skp]
    const at::Tensor values_t = reads_rows(s) ? at::Tensor() : transposed_padded(v, s);  // built by the backward
    at::Tensor out = at::empty({s.batch, s.queries, s.channels}, q.options());
    at::Tensor log_sum_exp = at::empty({s.batch * s.heads, s.queries}, q.options());
    const int64_t blocks = (s.queries + kQueriesPerTask - 1) / kQueriesPerTask;
    at::parallel_for(0, s.batch * s.heads * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(avx512::forward_scratch_floats(s.head_dim, s.keys_padded)));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bh = task / blocks, first = (task % blocks) * kQueriesPerTask;
        const int64_t rows = row_offset(s, bh, s.queries);
        avx512::attention_forward(head_at(keys_t, values_t, key_rows, value_rows, s, bh), scaled_q.data_ptr<float>() + rows, s.channels,
                                  first, std::min(first + kQueriesPerTask, s.queries), out.data_ptr<float>() + rows,
                                  s.channels, log_sum_exp.data_ptr<float>() + bh * s.queries, scratch.data());
      }
    });
    ctx->save_for_backward({scaled_q, keys_t, reads_rows(s) ? value_rows : values_t, out, log_sum_exp, key_rows});
    ctx->saved_data["heads"] = heads;
    ctx->saved_data["keys"] = s.keys;
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &scaled_q = saved[0], &keys_t = saved[1], &out = saved[3], &log_sum_exp = saved[4],
                     &key_rows = saved[5];
    const Shape s = make_shape(scaled_q.size(0), scaled_q.size(1), ctx->saved_data["keys"].toInt(),
                               scaled_q.size(2), ctx->saved_data["heads"].toInt());
    const at::Tensor values_t = reads_rows(s) ? transposed_padded(saved[2], s) : saved[2];
    const at::Tensor dout = grads[0].contiguous();
    at::Tensor dq = at::empty_like(scaled_q);
    at::Tensor dkeys_t = at::zeros_like(keys_t), dvalues_t = at::zeros_like(values_t);
    // One task per (sample, head): a head's key and value gradients sum over all its queries.
    at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(avx512::backward_scratch_floats(s.head_dim, s.keys_padded)));
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t rows = row_offset(s, bh, s.queries);
        const int64_t offset = bh * s.head_dim * s.keys_padded;
        avx512::attention_backward(head_at(keys_t, values_t, key_rows, at::Tensor(), s, bh),
                                   scaled_q.data_ptr<float>() + rows, out.data_ptr<float>() + rows,
                                   dout.data_ptr<float>() + rows, log_sum_exp.data_ptr<float>() + bh * s.queries,
                                   s.channels, s.queries, dq.data_ptr<float>() + rows,
                                   dkeys_t.data_ptr<float>() + offset, dvalues_t.data_ptr<float>() + offset,
                                   scratch.data());
      }
    });
    dq.mul_(s.scale);  // the kernels differentiate with respect to the scaled queries
    return {dq, untransposed(dkeys_t, s), untransposed(dvalues_t, s), at::Tensor()};
  }
};

}  // namespace

bool small_head_attention_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  if (!avx512_kernels_run_here() || !q.device().is_cpu() || !k.device().is_cpu() || !v.device().is_cpu()) return false;
  const at::ScalarType dtype = q.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kBFloat16) || k.scalar_type() != dtype || v.scalar_type() != dtype) return false;
  if (q.dim() != 3 || k.dim() != 3 || v.sizes() != k.sizes() || k.size(0) != q.size(0) || k.size(2) != q.size(2) ||
      k.size(1) == 0 || heads <= 0 || q.size(2) % heads != 0)
    return false;
  return avx512::supports_head_dim(q.size(2) / heads);
}

at::Tensor small_head_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  TORCH_CHECK(small_head_attention_applies(q, k, v, heads), "small_head_attention: inputs it does not serve");
  // Named for profilers and for the FLOP count of bench/bench_dpo_step.cpp, which sees aten ops only.
  RECORD_FUNCTION("dedpo::small_head_attention", std::vector<c10::IValue>({q, k}));
  if (q.scalar_type() == at::kFloat) return SmallHeadAttention::apply(q, k, v, heads);
  // bf16 (autocast): cast to float32 and computed there; the output and gradients come back in bf16.
  return SmallHeadAttention::apply(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), heads).to(q.scalar_type());
}

}  // namespace dedpo::sd
