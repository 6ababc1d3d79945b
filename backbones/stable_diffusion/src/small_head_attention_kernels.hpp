#pragma once
// The AVX-512 kernels behind small_head_attention.hpp, one (batch, head) per call. They live in a
// translation unit of their own, compiled with -mavx512f and free of ATen and of the standard
// library's inline templates, so that no AVX-512 copy of a shared inline function can end up in
// the binary for callers on other CPUs; small_head_attention.cpp calls them only after checking
// the CPU.
#include <cstdint>

namespace dedpo::sd::avx512 {

// Head dimensions the kernels are instantiated for.
bool supports_head_dim(int64_t head_dim);

// One head of one sample. The keys and values are stored transposed, [D][keys_padded], with the
// padding columns (keys..keys_padded, keys_padded a multiple of 16) zero; queries are rows of D
// floats `query_stride` apart, already multiplied by the softmax scale. Heads of 32 and 64 channels
// also read the keys and values as rows, D floats each, `row_stride` apart (the [B, Sk, C] inputs).
struct AttentionHead {
  int64_t head_dim;
  int64_t keys;
  int64_t keys_padded;
  const float* keys_t;
  const float* values_t;
  const float* key_rows;
  const float* value_rows;
  int64_t row_stride;
};

// For the queries [first, end): out = softmax(q·Kᵀ)·V (rows `out_stride` apart) and the
// log-sum-exp of each row's scores, which the backward pass needs. scratch: forward_scratch_floats.
int64_t forward_scratch_floats(int64_t head_dim, int64_t keys_padded);
void attention_forward(const AttentionHead& head, const float* queries, int64_t query_stride, int64_t first, int64_t end,
                       float* out, int64_t out_stride, float* log_sum_exp, float* scratch);

// The gradients of one head over all its queries [0, queries): dq (rows `query_stride` apart,
// overwritten, with respect to the scaled queries) and dkeys_t / dvalues_t ([D][keys_padded],
// accumulated into). out, dout: rows `query_stride` apart. scratch: backward_scratch_floats.
int64_t backward_scratch_floats(int64_t head_dim, int64_t keys_padded);
void attention_backward(const AttentionHead& head, const float* queries, const float* out, const float* dout,
                        const float* log_sum_exp, int64_t query_stride, int64_t queries_count, float* dq,
                        float* dkeys_t, float* dvalues_t, float* scratch);

}  // namespace dedpo::sd::avx512
