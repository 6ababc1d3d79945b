// The AVX-512 small-head attention against the definition softmax(q·kᵀ/√D)·v evaluated in double,
// forward and backward, on shapes that exercise the 16-key tail, cross-attention lengths, one key,
// and scores large enough that the softmax depends on subtracting the maximum.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "dedpo/sd/blocks.hpp"
#include "dedpo/sd/small_head_attention.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using namespace dedpo::sd;

struct Case {
  int64_t batch, queries, keys, heads, head_dim;
  double magnitude;  // standard deviation of q and k: 4 gives scores in the tens
};

// [B, S, C] -> [B, H, S, D]
at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  return x.reshape({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);
}

at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2) / heads));
  const at::Tensor p = at::softmax(at::matmul(split_heads(q, heads), split_heads(k, heads).transpose(-1, -2)) * scale, -1);
  return at::matmul(p, split_heads(v, heads)).transpose(1, 2).reshape(q.sizes());
}

// Whether this CPU runs the kernels at all (AVX-512F): where not, multi_head_attention keeps
// at::scaled_dot_product_attention and the kernel tests skip.
bool kernels_run_here() {
  const at::Tensor x = at::zeros({1, 1, 8});
  return small_head_attention_applies(x, x, x, 1);
}

// Relative to the largest |value| of the reference in double.
constexpr double kTolerance = 2e-5;

class SmallHeadAttentionParity : public testing::TestWithParam<Case> {};

TEST_P(SmallHeadAttentionParity, ForwardAndGradientsEqualTheDefinitionInDouble) {
  const Case c = GetParam();
  if (!kernels_run_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(static_cast<uint64_t>(c.queries * 131 + c.keys));
  const int64_t channels = c.heads * c.head_dim;
  const at::Tensor q = (at::randn({c.batch, c.queries, channels}) * c.magnitude).requires_grad_();
  const at::Tensor k = (at::randn({c.batch, c.keys, channels}) * c.magnitude).requires_grad_();
  const at::Tensor v = at::randn({c.batch, c.keys, channels}).requires_grad_();
  const at::Tensor upstream = at::randn({c.batch, c.queries, channels});
  ASSERT_TRUE(small_head_attention_applies(q, k, v, c.heads));

  const at::Tensor out = small_head_attention(q, k, v, c.heads);
  (out * upstream).sum().backward();

  const at::Tensor qd = q.detach().to(at::kDouble).requires_grad_(), kd = k.detach().to(at::kDouble).requires_grad_(),
                   vd = v.detach().to(at::kDouble).requires_grad_();
  const at::Tensor want = reference_attention(qd, kd, vd, c.heads);
  (want * upstream.to(at::kDouble)).sum().backward();

  dedpo::test::expect_near_reference("output", out, want.detach(), kTolerance);
  dedpo::test::expect_near_reference("dq", q.grad(), qd.grad(), kTolerance);
  dedpo::test::expect_near_reference("dk", k.grad(), kd.grad(), kTolerance);
  dedpo::test::expect_near_reference("dv", v.grad(), vd.grad(), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SmallHeadAttentionParity,
                         testing::Values(Case{2, 64, 64, 8, 8, 1.0},    // self-attention, keys a multiple of 16
                                         Case{1, 7, 33, 2, 8, 2.0},     // last sweeps of 3 (backward) and 1 (forward) queries
                                         Case{2, 37, 77, 2, 8, 1.0},    // cross-attention on 77 text tokens
                                         Case{3, 100, 17, 3, 8, 1.0},   // a one-key tail chunk
                                         Case{1, 5, 1, 1, 8, 1.0},      // a single key, fewer queries than a sweep takes
                                         Case{2, 70, 300, 4, 8, 4.0},   // peaked softmax, scores in the tens
                                         Case{1, 129, 45, 2, 8, 4.0},   // a last sweep of 1 query
                                         Case{2, 64, 64, 8, 16, 1.0},   // D = 16: self-attention
                                         Case{1, 13, 77, 2, 16, 1.0},   // D = 16: cross-attention, a last backward sweep of 5
                                         Case{2, 9, 1, 3, 16, 2.0},     // D = 16: a single key
                                         Case{1, 70, 300, 2, 16, 4.0},  // D = 16: peaked softmax
                                         Case{2, 256, 256, 2, 64, 1.0},  // D = 64: sdxl_small's 16×16 self-attention
                                         Case{2, 64, 77, 4, 64, 1.0},    // D = 64: cross-attention at 8×8
                                         Case{1, 11, 33, 2, 64, 4.0},    // D = 64: a short tile (6 + 5), peaked, 1-key tail
                                         Case{2, 5, 1, 1, 64, 1.0},      // D = 64: a single key
                                         Case{2, 64, 64, 8, 32, 1.0},    // D = 32: unet_sd15_small's 8×8 level
                                         Case{1, 25, 77, 3, 32, 2.0},    // D = 32: a last tile of 1 query
                                         Case{1, 70, 300, 2, 32, 4.0}));  // D = 32: peaked softmax

// Heads of 8 channels (one query per register row) and of 64 (tiles of queries) take different
// kernels; the tests below run both.
constexpr int64_t kHeadDims[] = {8, 64};

TEST(SmallHeadAttention, InferenceModeGivesTheSameOutputWithoutAGraph) {
  if (!kernels_run_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  for (const int64_t d : kHeadDims) {
    SCOPED_TRACE("D = " + std::to_string(d));
    at::manual_seed(3);
    const at::Tensor q = at::randn({2, 40, 4 * d}), k = at::randn({2, 50, 4 * d}), v = at::randn({2, 50, 4 * d});
    const at::Tensor with_grad_mode = small_head_attention(q, k, v, 4);
    c10::InferenceMode inference;
    const at::Tensor inferred = small_head_attention(q, k, v, 4);
    EXPECT_TRUE(at::equal(inferred, with_grad_mode));
    EXPECT_FALSE(inferred.requires_grad());
  }
}

TEST(SmallHeadAttention, ANanKeyMakesItsHeadNanAsInScaledDotProductAttention) {
  if (!kernels_run_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  for (const int64_t d : kHeadDims) {
    SCOPED_TRACE("D = " + std::to_string(d));
    at::manual_seed(4);
    const at::Tensor q = at::randn({1, 20, 2 * d}), k = at::randn({1, 40, 2 * d}), v = at::randn({1, 40, 2 * d});
    k[0][33][3] = std::nan("");  // head 0 (channels 0..D-1) of key 33
    const at::Tensor out = small_head_attention(q, k, v, 2);
    EXPECT_TRUE(out.narrow(2, 0, d).isnan().all().item<bool>());
    EXPECT_TRUE(out.narrow(2, d, d).isfinite().all().item<bool>());
    const at::Tensor sdpa = scaled_attention(split_heads(q, 2), split_heads(k, 2), split_heads(v, 2));
    EXPECT_TRUE(sdpa.select(1, 0).isnan().all().item<bool>());
  }
}

TEST(SmallHeadAttention, ServesOnlyFloat32CpuHeadsOf8To64OnAvx512) {
  ASSERT_FALSE(dedpo::test::cpuinfo_line("flags").empty()) << "no flags line in /proc/cpuinfo";
  const bool avx512f = dedpo::test::cpuinfo_has_flag("avx512f");
  const at::Tensor q = at::zeros({1, 4, 64});
  EXPECT_EQ(small_head_attention_applies(q, q, q, 8), avx512f) << "D = 8";
  const at::Tensor bf16 = q.to(at::kBFloat16);
  EXPECT_EQ(small_head_attention_applies(bf16, bf16, bf16, 8), avx512f) << "bf16";
  EXPECT_EQ(small_head_attention_applies(q, q, q, 4), avx512f) << "D = 16";
  EXPECT_EQ(small_head_attention_applies(q, q, q, 2), avx512f) << "D = 32";
  EXPECT_EQ(small_head_attention_applies(q, q, q, 1), avx512f) << "D = 64";
  const at::Tensor wider = at::zeros({1, 4, 128});
  EXPECT_FALSE(small_head_attention_applies(wider, wider, wider, 1)) << "D = 128";
  const at::Tensor odd = at::zeros({1, 4, 48});
  EXPECT_FALSE(small_head_attention_applies(odd, odd, odd, 1)) << "D = 48";
  EXPECT_FALSE(small_head_attention_applies(q, q, q, 5)) << "64 channels do not split into 5 heads";
  EXPECT_FALSE(small_head_attention_applies(q, q, bf16, 8)) << "mixed dtypes";
  EXPECT_FALSE(small_head_attention_applies(q.to(at::kDouble), q.to(at::kDouble), q.to(at::kDouble), 8)) << "double";
  const at::Tensor other_batch = at::zeros({2, 4, 64}), other_channels = at::zeros({1, 4, 32});
  EXPECT_FALSE(small_head_attention_applies(q, other_batch, other_batch, 8)) << "batch sizes differ";
  EXPECT_FALSE(small_head_attention_applies(q, other_channels, other_channels, 8)) << "channels differ";
  const at::Tensor elsewhere = at::zeros({1, 4, 64}, at::TensorOptions().device(at::kMeta));
  EXPECT_FALSE(small_head_attention_applies(q, elsewhere, elsewhere, 8)) << "keys on another device";
  const at::Tensor no_keys = at::zeros({1, 0, 64});
  EXPECT_FALSE(small_head_attention_applies(q, no_keys, no_keys, 8)) << "no keys";
}

// Under bf16 autocast the projections hand over bfloat16: computed in float32, returned and
// differentiated in bfloat16.
TEST(SmallHeadAttention, Bfloat16InputsAreComputedInFloat32) {
  if (!kernels_run_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  for (const int64_t d : kHeadDims) {
    SCOPED_TRACE("D = " + std::to_string(d));
    at::manual_seed(6);
    const at::Tensor q = at::randn({2, 50, 4 * d}).to(at::kBFloat16).requires_grad_();
    const at::Tensor k = at::randn({2, 77, 4 * d}).to(at::kBFloat16).requires_grad_();
    const at::Tensor v = at::randn({2, 77, 4 * d}).to(at::kBFloat16).requires_grad_();
    const at::Tensor out = small_head_attention(q, k, v, 4);
    EXPECT_EQ(out.scalar_type(), at::kBFloat16);
    out.sum().backward();
    EXPECT_EQ(q.grad().scalar_type(), at::kBFloat16);
    EXPECT_EQ(k.grad().scalar_type(), at::kBFloat16);
    const at::Tensor want = reference_attention(q.detach().to(at::kDouble), k.detach().to(at::kDouble),
                                                v.detach().to(at::kDouble), 4);
    // The float32 result rounded once to bfloat16: within bfloat16's half-ulp (2^-9 relative).
    EXPECT_LE((out.detach().to(at::kDouble) - want).abs().max().item<double>(), 4e-3 * want.abs().max().item<double>());
  }
}

TEST(SmallHeadAttention, MultiHeadAttentionAgreesWithScaledDotProductAttention) {
  if (!kernels_run_here()) GTEST_SKIP() << "this CPU has no AVX-512F: both sides would be ATen's kernel";
  at::manual_seed(5);
  const at::Tensor q = at::randn({2, 33, 64}), k = at::randn({2, 77, 64}), v = at::randn({2, 77, 64});
  const at::Tensor via_sdpa = scaled_attention(split_heads(q, 8), split_heads(k, 8), split_heads(v, 8))
                                  .transpose(1, 2)
                                  .reshape({2, 33, 64});
  EXPECT_TRUE(at::allclose(multi_head_attention(q, k, v, 8), via_sdpa, 1e-5, 1e-5));
}

}  // namespace
