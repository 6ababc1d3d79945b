// The AVX-512 GEGLU against diffusers' definition, value · gelu(gate) with the exact gelu, in
// double: forward and gradient, on widths with and without a 16-lane tail, gates from the tails of
// the normal distribution, NaN, and the module that uses it.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "dedpo/sd/blocks.hpp"
#include "dedpo/sd/geglu.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::geglu;
using dedpo::sd::geglu_applies;

at::Tensor reference_geglu(const at::Tensor& x) {
  const auto halves = x.chunk(2, -1);
  return halves[0] * at::gelu(halves[1]);
}

// Whether this CPU runs the kernel (AVX-512F): where not, GEGLU keeps ATen's ops and these skip.
bool kernel_runs_here() { return geglu_applies(at::zeros({2})); }

// Relative to the largest |value| of the reference in double.
constexpr double kTolerance = 1e-6;

struct Case {
  std::vector<int64_t> shape;  // [..., 2·n]
  double gate_scale;           // standard deviation of the input: 6 reaches Φ's flat tails
};

class GegluParity : public testing::TestWithParam<Case> {};

TEST_P(GegluParity, ForwardAndGradientEqualTheDefinitionInDouble) {
  if (!kernel_runs_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  const Case c = GetParam();
  at::manual_seed(static_cast<uint64_t>(c.shape.back()));
  const at::Tensor x = (at::randn(c.shape) * c.gate_scale).requires_grad_();
  const at::Tensor y = geglu(x);
  const at::Tensor upstream = at::randn(y.sizes());
  (y * upstream).sum().backward();

  const at::Tensor xd = x.detach().to(at::kDouble).requires_grad_();
  const at::Tensor want = reference_geglu(xd);
  (want * upstream.to(at::kDouble)).sum().backward();
  dedpo::test::expect_near_reference("output", y, want.detach(), kTolerance);
  dedpo::test::expect_near_reference("dx", x.grad(), xd.grad(), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GegluParity,
                         testing::Values(Case{{2, 64, 2 * 1024}, 1.0},  // sdxl_small's 8×8 level, one pair
                                         Case{{2, 9, 2 * 37}, 1.0},     // a tail of 5 lanes
                                         Case{{3, 2 * 16}, 1.0},        // 2-D, one full vector
                                         Case{{1, 2, 2 * 1}, 1.0},      // one lane
                                         Case{{4, 7, 2 * 40}, 6.0}));   // gates far into both tails

TEST(Geglu, NanGatesAndValuesStayNan) {
  if (!kernel_runs_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::Tensor x = at::randn({3, 2 * 20});
  x.index_put_({0, 25}, std::numeric_limits<float>::quiet_NaN());  // row 0's gate 5
  x.index_put_({1, 7}, std::numeric_limits<float>::quiet_NaN());   // row 1's value 7
  const at::Tensor y = geglu(x);
  EXPECT_TRUE(y.index({0, 5}).isnan().item<bool>());
  EXPECT_TRUE(y.index({1, 7}).isnan().item<bool>());
  EXPECT_EQ(y.isnan().sum().item<int64_t>(), 2) << "a NaN stays in its own element";
}

// The reference UNet runs under inference mode: no graph, no saved input.
TEST(Geglu, RunsUnderInferenceMode) {
  if (!kernel_runs_here()) GTEST_SKIP() << "this CPU has no AVX-512F";
  const at::Tensor x = at::randn({2, 5, 2 * 24});
  c10::InferenceMode inference;
  const at::Tensor y = geglu(x);
  EXPECT_FALSE(y.requires_grad());
  dedpo::test::expect_near_reference("output", y, reference_geglu(x.to(at::kDouble)), kTolerance);
}

// The module takes the kernel where it applies and computes what diffusers' GEGLU does either way.
TEST(Geglu, TheModuleMatchesTheDefinition) {
  dedpo::sd::GEGLU module(12, 40);
  const at::Tensor x = at::randn({2, 3, 12});
  const at::Tensor y = module->forward(x);
  const at::Tensor projected = at::linear(x.to(at::kDouble), module->proj->weight.to(at::kDouble),
                                          module->proj->bias.to(at::kDouble));
  dedpo::test::expect_near_reference("module output", y.detach(), reference_geglu(projected), kTolerance);
}

TEST(Geglu, ServesOnlyFloat32CpuTensorsWithEvenWidthOnAvx512) {
  ASSERT_FALSE(dedpo::test::cpuinfo_line("flags").empty()) << "no flags line in /proc/cpuinfo";
  const bool avx512f = dedpo::test::cpuinfo_has_flag("avx512f");
  EXPECT_EQ(geglu_applies(at::zeros({2, 8})), avx512f);
  EXPECT_FALSE(geglu_applies(at::zeros({2, 7}))) << "odd width";
  EXPECT_FALSE(geglu_applies(at::zeros({0, 8}))) << "no rows";
  EXPECT_FALSE(geglu_applies(at::zeros({2, 8}, at::kBFloat16))) << "bf16 (autocast keeps ATen's ops)";
  EXPECT_FALSE(geglu_applies(at::zeros({2, 8}, at::kDouble))) << "double";
  EXPECT_FALSE(geglu_applies(at::zeros({2, 8}, at::TensorOptions().device(at::kMeta)))) << "another device";
}

}  // namespace
