// Compiled with -mavx512f on x86-64 (CMakeLists.txt); see small_head_attention_kernels.hpp for
// why nothing here may include ATen or instantiate a standard-library template.
#include "small_head_attention_kernels.hpp"

#if defined(DEDPO_AVX512_KERNELS)

#include <immintrin.h>

#include <math.h>

#include "avx512_math.hpp"

namespace dedpo::sd::avx512 {

namespace {

constexpr int kLanes = 16;
// Heads of 8 and 16 channels: queries per sweep over the keys, the fastest measured
// (bench/bench_kernels.cpp, 2 threads): in the forward 3 at D = 8 (24 accumulators; 2–4% faster
// than 2, as fast as 4, which spills) and 2 at D = 16; in the backward 4 at D = 8
// and 8 at D = 16, whose dq accumulators (Q × D vectors) spill registers and still beat fewer
// queries per sweep, since each sweep reads and writes a chunk of dKᵀ and dVᵀ once per Q queries.
template <int D>
constexpr int kForwardQueries = D == 8 ? 3 : 2;
template <int D>
constexpr int kBackwardQueries = D == 8 ? 4 : 8;

// The lanes of the 16-key chunk starting at j that hold real keys.
inline __mmask16 key_mask(int64_t j, int64_t keys) {
  const int64_t left = keys - j;
  return left >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// Q queries share each sweep over the keys (one load of a Kᵀ or Vᵀ chunk per Q queries);
// scores: Q rows of keys_padded floats.
template <int D, int Q>
void forward_queries(const float* keys_t, const float* values_t, int64_t keys, int64_t padded, const float* q_rows,
                     int64_t query_stride, int64_t count, float* out_rows, int64_t out_stride, float* log_sum_exp,
                     float* scores) {
  float q[Q][D];
  for (int r = 0; r < Q; ++r) {
    const int64_t row = r < count ? r : count - 1;  // a short last group repeats its last query
    for (int c = 0; c < D; ++c) q[r][c] = q_rows[row * query_stride + c];
  }
  // Pass 1: the scores and their maxima; the padding lanes score -inf.
  __m512 running_max[Q];
  for (int r = 0; r < Q; ++r) running_max[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < padded; j += kLanes) {
    const __mmask16 real = key_mask(j, keys);
    __m512 k[D];
    for (int c = 0; c < D; ++c) k[c] = _mm512_loadu_ps(keys_t + c * padded + j);
    for (int r = 0; r < Q; ++r) {
      __m512 s = _mm512_mul_ps(_mm512_set1_ps(q[r][0]), k[0]);
      for (int c = 1; c < D; ++c) s = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c]), k[c], s);
      s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), real, s);
      _mm512_storeu_ps(scores + r * padded + j, s);
      running_max[r] = _mm512_max_ps(running_max[r], s);
    }
  }
  // Pass 2: p = exp(s - max), its sum, and Σ_j p_j·V[j] per output channel.
  __m512 shift[Q], sum[Q], acc[Q][D];
  for (int r = 0; r < Q; ++r) {
    shift[r] = _mm512_set1_ps(_mm512_reduce_max_ps(running_max[r]));
    sum[r] = _mm512_setzero_ps();
    for (int c = 0; c < D; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < padded; j += kLanes) {
    __m512 p[Q];
    for (int r = 0; r < Q; ++r) {
      p[r] = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + r * padded + j), shift[r]));
      sum[r] = _mm512_add_ps(sum[r], p[r]);
    }
    for (int c = 0; c < D; ++c) {
      const __m512 v = _mm512_loadu_ps(values_t + c * padded + j);
      for (int r = 0; r < Q; ++r) acc[r][c] = _mm512_fmadd_ps(p[r], v, acc[r][c]);
    }
  }
  for (int r = 0; r < Q && r < count; ++r) {
    const float total = _mm512_reduce_add_ps(sum[r]);
    const float inverse = 1.0f / total;
    for (int c = 0; c < D; ++c) out_rows[r * out_stride + c] = _mm512_reduce_add_ps(acc[r][c]) * inverse;
    log_sum_exp[r] = _mm512_reduce_max_ps(shift[r]) + logf(total);
  }
}

template <int D, int Q>
void forward(const AttentionHead& head, const float* queries, int64_t query_stride, int64_t first, int64_t end,
             float* out, int64_t out_stride, float* log_sum_exp, float* scores) {
  for (int64_t i = first; i < end; i += Q) {
    forward_queries<D, Q>(head.keys_t, head.values_t, head.keys, head.keys_padded, queries + i * query_stride,
                          query_stride, end - i < Q ? end - i : Q, out + i * out_stride, out_stride, log_sum_exp + i,
                          scores);
  }
}

// With P = softmax(S) and dP = dO·Vᵀ: dS = P ⊙ (dP − rowsum(dO ⊙ O)), dq = dS·K, dK = dSᵀ·q,
// dV = Pᵀ·dO, P recomputed from the saved log-sum-exp chunk by chunk. Q queries share each sweep
// over the keys, so that a chunk of Kᵀ and Vᵀ is loaded, and one of dKᵀ and dVᵀ read and written,
// once per Q queries instead of once per query.
template <int D, int Q>
void backward_queries(const float* keys_t, const float* values_t, int64_t keys, int64_t padded, const float* q_rows,
                      const float* o_rows, const float* do_rows, const float* log_sum_exp, int64_t query_stride,
                      int64_t count, float* dq_rows, float* dkeys_t, float* dvalues_t) {
  float q[Q][D], g[Q][D];
  __m512 lse[Q], delta[Q], dq[Q][D];
  for (int r = 0; r < Q; ++r) {
    // Rows past `count` (the last group of an odd count) repeat the last query with a zero upstream
    // gradient, which adds nothing to dK and dV.
    const int64_t row = r < count ? r : count - 1;
    float row_delta = 0.0f;
    for (int c = 0; c < D; ++c) {
      q[r][c] = q_rows[row * query_stride + c];
      g[r][c] = r < count ? do_rows[row * query_stride + c] : 0.0f;
      row_delta += g[r][c] * o_rows[row * query_stride + c];
      dq[r][c] = _mm512_setzero_ps();
    }
    lse[r] = _mm512_set1_ps(log_sum_exp[row]);
    delta[r] = _mm512_set1_ps(row_delta);
  }
  for (int64_t j = 0; j < padded; j += kLanes) {
    const __mmask16 real = key_mask(j, keys);
    __m512 k[D];
    for (int c = 0; c < D; ++c) k[c] = _mm512_loadu_ps(keys_t + c * padded + j);
    __m512 p[Q], dp[Q];
    for (int r = 0; r < Q; ++r) {
      __m512 s = _mm512_mul_ps(_mm512_set1_ps(q[r][0]), k[0]);
      for (int c = 1; c < D; ++c) s = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c]), k[c], s);
      p[r] = _mm512_maskz_mov_ps(real, exp_nonpositive(_mm512_sub_ps(s, lse[r])));
      dp[r] = _mm512_setzero_ps();
    }
    for (int c = 0; c < D; ++c) {
      const __m512 v = _mm512_loadu_ps(values_t + c * padded + j);
      __m512 dv = _mm512_loadu_ps(dvalues_t + c * padded + j);
      for (int r = 0; r < Q; ++r) {
        const __m512 gc = _mm512_set1_ps(g[r][c]);
        dv = _mm512_fmadd_ps(p[r], gc, dv);
        dp[r] = _mm512_fmadd_ps(gc, v, dp[r]);
      }
      _mm512_storeu_ps(dvalues_t + c * padded + j, dv);
    }
    __m512 ds[Q];
    for (int r = 0; r < Q; ++r) ds[r] = _mm512_mul_ps(p[r], _mm512_sub_ps(dp[r], delta[r]));
    for (int c = 0; c < D; ++c) {
      __m512 dk = _mm512_loadu_ps(dkeys_t + c * padded + j);
      for (int r = 0; r < Q; ++r) {
        dq[r][c] = _mm512_fmadd_ps(ds[r], k[c], dq[r][c]);
        dk = _mm512_fmadd_ps(ds[r], _mm512_set1_ps(q[r][c]), dk);
      }
      _mm512_storeu_ps(dkeys_t + c * padded + j, dk);
    }
  }
  for (int r = 0; r < Q && r < count; ++r) {
    for (int c = 0; c < D; ++c) dq_rows[r * query_stride + c] = _mm512_reduce_add_ps(dq[r][c]);
  }
}

template <int D, int Q>
void backward(const AttentionHead& head, const float* queries, const float* out, const float* dout,
              const float* log_sum_exp, int64_t query_stride, int64_t queries_count, float* dq, float* dkeys_t,
              float* dvalues_t) {
  for (int64_t i = 0; i < queries_count; i += Q) {
    const int64_t offset = i * query_stride;
    backward_queries<D, Q>(head.keys_t, head.values_t, head.keys, head.keys_padded, queries + offset, out + offset,
                           dout + offset, log_sum_exp + i, query_stride, queries_count - i < Q ? queries_count - i : Q,
                           dq + offset, dkeys_t, dvalues_t);
  }
}

// Heads of 32 and 64 channels. A query's D-channel accumulators no longer fit in registers, so
// these work on tiles of R queries as small matrix products: the scores of 16 keys at a time from
// Kᵀ (one load per channel, R multiply-adds with the queries' channels broadcast), and
// P·V, dq = dS·K from the keys' and values' own rows (D/16 loads per key, R·D/16 multiply-adds
// into R·D/16 accumulators: 24 of the 32 registers at both sizes).
template <int D>
constexpr int kWideRows = 24 / (D / kLanes);

// scores[r][j] = q_r · k_j for the 16 keys from j (the padding lanes hold -inf).
template <int D, int R>
inline void wide_scores(const float* keys_t, int64_t padded, int64_t keys, int64_t j, const float* const* q,
                        __m512* s) {
  for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_ps();
  for (int c = 0; c < D; ++c) {
    const __m512 k = _mm512_loadu_ps(keys_t + c * padded + j);
    for (int r = 0; r < R; ++r) s[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c]), k, s[r]);
  }
  const __mmask16 real = key_mask(j, keys);
  for (int r = 0; r < R; ++r) s[r] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), real, s[r]);
}

// acc[r] += Σ_j weights[r][j] · rows_j for the real keys: rows are `row_stride` floats apart, D wide.
template <int D, int R>
inline void wide_weighted_rows(const float* weights, int64_t weight_stride, const float* rows, int64_t row_stride,
                               int64_t keys, __m512 (*acc)[D / kLanes]) {
  for (int64_t j = 0; j < keys; ++j) {
    __m512 row[D / kLanes];
    for (int b = 0; b < D / kLanes; ++b) row[b] = _mm512_loadu_ps(rows + j * row_stride + b * kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_set1_ps(weights[r * weight_stride + j]);
      for (int b = 0; b < D / kLanes; ++b) acc[r][b] = _mm512_fmadd_ps(w, row[b], acc[r][b]);
    }
  }
}

template <int D>
void forward_wide(const AttentionHead& head, const float* queries, int64_t query_stride, int64_t first, int64_t end,
                  float* out, int64_t out_stride, float* log_sum_exp, float* scores) {
  constexpr int R = kWideRows<D>;
  const int64_t padded = head.keys_padded;
  for (int64_t i = first; i < end; i += R) {
    const int64_t count = end - i < R ? end - i : R;
    const float* q[R];
    for (int r = 0; r < R; ++r) q[r] = queries + (i + (r < count ? r : count - 1)) * query_stride;  // a short tile repeats its last query
    __m512 running_max[R];
    for (int r = 0; r < R; ++r) running_max[r] = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < padded; j += kLanes) {
      __m512 s[R];
      wide_scores<D, R>(head.keys_t, padded, head.keys, j, q, s);
      for (int r = 0; r < R; ++r) {
        _mm512_storeu_ps(scores + r * padded + j, s[r]);
        running_max[r] = _mm512_max_ps(running_max[r], s[r]);
      }
    }
    float shift[R], total[R];
    for (int r = 0; r < R; ++r) {
      shift[r] = _mm512_reduce_max_ps(running_max[r]);
      const __m512 m = _mm512_set1_ps(shift[r]);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < padded; j += kLanes) {
        const __m512 p = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + r * padded + j), m));
        _mm512_storeu_ps(scores + r * padded + j, p);
        sum = _mm512_add_ps(sum, p);
      }
      total[r] = _mm512_reduce_add_ps(sum);
    }
    __m512 acc[R][D / kLanes];
    for (int r = 0; r < R; ++r) {
      for (int b = 0; b < D / kLanes; ++b) acc[r][b] = _mm512_setzero_ps();
    }
    wide_weighted_rows<D, R>(scores, padded, head.value_rows, head.row_stride, head.keys, acc);
    for (int r = 0; r < count; ++r) {
      const __m512 inverse = _mm512_set1_ps(1.0f / total[r]);
      for (int b = 0; b < D / kLanes; ++b) _mm512_storeu_ps(out + (i + r) * out_stride + b * kLanes, _mm512_mul_ps(acc[r][b], inverse));
      log_sum_exp[i + r] = shift[r] + logf(total[r]);
    }
  }
}

// The backward pass of a tile of R queries as in backward_queries, with the products arranged for
// wide heads: per 16-key chunk the scores and dP = dO·Vᵀ from Kᵀ and Vᵀ, dVᵀ and dKᵀ updated channel
// by channel (R multiply-adds per load and store), dS kept for dq = dS·K over the keys' rows.
template <int D>
void backward_wide(const AttentionHead& head, const float* queries, const float* out, const float* dout,
                   const float* log_sum_exp, int64_t query_stride, int64_t queries_count, float* dq, float* dkeys_t,
                   float* dvalues_t, float* ds_rows) {
  constexpr int R = kWideRows<D>;
  const int64_t padded = head.keys_padded;
  const float zeros[D] = {};
  for (int64_t i = 0; i < queries_count; i += R) {
    const int64_t count = queries_count - i < R ? queries_count - i : R;
    // Rows past `count` repeat the last query with a zero upstream gradient: they add nothing.
    const float* q[R];
    const float* g[R];
    __m512 lse[R], delta[R];
    for (int r = 0; r < R; ++r) {
      const int64_t row = i + (r < count ? r : count - 1);
      q[r] = queries + row * query_stride;
      g[r] = r < count ? dout + row * query_stride : zeros;
      __m512 dot = _mm512_setzero_ps();
      for (int b = 0; b < D / kLanes; ++b) {
        dot = _mm512_fmadd_ps(_mm512_loadu_ps(g[r] + b * kLanes), _mm512_loadu_ps(out + row * query_stride + b * kLanes), dot);
      }
      lse[r] = _mm512_set1_ps(log_sum_exp[row]);
      delta[r] = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
    }
    for (int64_t j = 0; j < padded; j += kLanes) {
      __m512 p[R], dp[R];
      wide_scores<D, R>(head.keys_t, padded, head.keys, j, q, p);
      for (int r = 0; r < R; ++r) {
        p[r] = exp_nonpositive(_mm512_sub_ps(p[r], lse[r]));  // -inf padding: 0
        dp[r] = _mm512_setzero_ps();
      }
      for (int c = 0; c < D; ++c) {
        const __m512 v = _mm512_loadu_ps(head.values_t + c * padded + j);
        __m512 dv = _mm512_loadu_ps(dvalues_t + c * padded + j);
        for (int r = 0; r < R; ++r) {
          const __m512 gc = _mm512_set1_ps(g[r][c]);
          dp[r] = _mm512_fmadd_ps(gc, v, dp[r]);
          dv = _mm512_fmadd_ps(gc, p[r], dv);
        }
        _mm512_storeu_ps(dvalues_t + c * padded + j, dv);
      }
      for (int r = 0; r < R; ++r) {
        dp[r] = _mm512_mul_ps(p[r], _mm512_sub_ps(dp[r], delta[r]));  // dS
        _mm512_storeu_ps(ds_rows + r * padded + j, dp[r]);
      }
      for (int c = 0; c < D; ++c) {
        __m512 dk = _mm512_loadu_ps(dkeys_t + c * padded + j);
        for (int r = 0; r < R; ++r) dk = _mm512_fmadd_ps(_mm512_set1_ps(q[r][c]), dp[r], dk);
        _mm512_storeu_ps(dkeys_t + c * padded + j, dk);
      }
    }
    __m512 acc[R][D / kLanes];
    for (int r = 0; r < R; ++r) {
      for (int b = 0; b < D / kLanes; ++b) acc[r][b] = _mm512_setzero_ps();
    }
    wide_weighted_rows<D, R>(ds_rows, padded, head.key_rows, head.row_stride, head.keys, acc);
    for (int r = 0; r < count; ++r) {
      for (int b = 0; b < D / kLanes; ++b) _mm512_storeu_ps(dq + (i + r) * query_stride + b * kLanes, acc[r][b]);
    }
  }
}

}  // namespace

bool supports_head_dim(int64_t head_dim) { return head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64; }

int64_t forward_scratch_floats(int64_t head_dim, int64_t keys_padded) {
  const int64_t rows = head_dim == 32 ? kWideRows<32> : head_dim == 64 ? kWideRows<64> : head_dim == 8 ? kForwardQueries<8> : kForwardQueries<16>;
  return rows * keys_padded;
}

int64_t backward_scratch_floats(int64_t head_dim, int64_t keys_padded) {
  return head_dim == 32 ? kWideRows<32> * keys_padded : head_dim == 64 ? kWideRows<64> * keys_padded : 0;
}

void attention_forward(const AttentionHead& head, const float* queries, int64_t query_stride, int64_t first, int64_t end,
                       float* out, int64_t out_stride, float* log_sum_exp, float* scratch) {
  switch (head.head_dim) {
    case 8: return forward<8, kForwardQueries<8>>(head, queries, query_stride, first, end, out, out_stride, log_sum_exp, scratch);
    case 16: return forward<16, kForwardQueries<16>>(head, queries, query_stride, first, end, out, out_stride, log_sum_exp, scratch);
    case 32: return forward_wide<32>(head, queries, query_stride, first, end, out, out_stride, log_sum_exp, scratch);
    default: return forward_wide<64>(head, queries, query_stride, first, end, out, out_stride, log_sum_exp, scratch);
  }
}

void attention_backward(const AttentionHead& head, const float* queries, const float* out, const float* dout,
                        const float* log_sum_exp, int64_t query_stride, int64_t queries_count, float* dq,
                        float* dkeys_t, float* dvalues_t, float* scratch) {
  switch (head.head_dim) {
    case 8:
      return backward<8, kBackwardQueries<8>>(head, queries, out, dout, log_sum_exp, query_stride, queries_count, dq,
                                              dkeys_t, dvalues_t);
    case 16:
      return backward<16, kBackwardQueries<16>>(head, queries, out, dout, log_sum_exp, query_stride, queries_count, dq,
                                                dkeys_t, dvalues_t);
    case 32:
      return backward_wide<32>(head, queries, out, dout, log_sum_exp, query_stride, queries_count, dq, dkeys_t,
                               dvalues_t, scratch);
    default:
      return backward_wide<64>(head, queries, out, dout, log_sum_exp, query_stride, queries_count, dq, dkeys_t,
                               dvalues_t, scratch);
  }
}

}  // namespace dedpo::sd::avx512

#else  // no AVX-512 kernels in this build: the callers keep at::scaled_dot_product_attention

namespace dedpo::sd::avx512 {
bool supports_head_dim(int64_t) { return false; }
int64_t forward_scratch_floats(int64_t, int64_t) { return 0; }
int64_t backward_scratch_floats(int64_t, int64_t) { return 0; }
void attention_forward(const AttentionHead&, const float*, int64_t, int64_t, int64_t, float*, int64_t, float*, float*) {}
void attention_backward(const AttentionHead&, const float*, const float*, const float*, const float*, int64_t, int64_t,
                        float*, float*, float*, float*) {}
}  // namespace dedpo::sd::avx512

#endif
