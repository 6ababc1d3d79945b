// cpu_linear against at::linear in double, forward and the three gradients, on the input ranks and
// options the UNets use. cpu_linear runs on any x86 CPU with AVX-512 (dedpo_sd's cpu_matmul) or a
// LibTorch with oneDNN, so these run on every such CPU; cpu_linear_applies decides where the layers
// take it (AMD CPUs).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dedpo/autocast.hpp"
#include "dedpo/sd/cpu_linear.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::cpu_linear;
using dedpo::sd::cpu_linear_applies;
using dedpo::sd::cpu_linear_bf16;
using dedpo::sd::cpu_linear_bf16_applies;

bool runs_here() { return dedpo::test::cpuinfo_has_flag("avx512f") || at::hasMKLDNN(); }

// Relative to the largest |value| of the reference in double.
constexpr double kTolerance = 1e-5;

struct Case {
  std::vector<int64_t> input;  // [..., in]
  int64_t out;
  bool bias;
};

class CpuLinearParity : public testing::TestWithParam<Case> {};

TEST_P(CpuLinearParity, ForwardAndGradientsEqualAtLinearInDouble) {
  if (!runs_here()) GTEST_SKIP() << "no AVX-512 and no oneDNN";
  const Case c = GetParam();
  at::manual_seed(c.out);
  const at::Tensor x = at::randn(c.input).requires_grad_();
  const at::Tensor weight = at::randn({c.out, c.input.back()}).requires_grad_();
  const at::Tensor bias = c.bias ? at::randn({c.out}).requires_grad_() : at::Tensor();
  const at::Tensor upstream = at::randn(at::linear(x.detach(), weight.detach()).sizes());
  const at::Tensor y = cpu_linear(x, weight, bias);
  (y * upstream).sum().backward();

  const at::Tensor xd = x.detach().to(at::kDouble).requires_grad_(), wd = weight.detach().to(at::kDouble).requires_grad_();
  const at::Tensor bd = c.bias ? bias.detach().to(at::kDouble).requires_grad_() : at::Tensor();
  const at::Tensor want = at::linear(xd, wd, bd);
  (want * upstream.to(at::kDouble)).sum().backward();
  dedpo::test::expect_near_reference("output", y, want.detach(), kTolerance);
  dedpo::test::expect_near_reference("dx", x.grad(), xd.grad(), kTolerance);
  dedpo::test::expect_near_reference("dweight", weight.grad(), wd.grad(), kTolerance);
  if (c.bias) dedpo::test::expect_near_reference("dbias", bias.grad(), bd.grad(), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CpuLinearParity,
                         testing::Values(Case{{2, 1024, 64}, 64, true},   // attention projections, 3-D
                                         Case{{2, 77, 768}, 64, false},   // to_k / to_v on the text
                                         Case{{2, 320}, 1280, true},      // the time embedding, 2-D
                                         Case{{3, 5, 7, 24}, 9, true}));  // 4-D, odd sizes

// A frozen layer (the reference, LoRA's base): the input gets its gradient, the weight none, and
// inference mode builds no graph.
TEST(CpuLinear, FrozenWeightsGiveTheInputItsGradientAndTakeNone) {
  if (!runs_here()) GTEST_SKIP() << "no AVX-512 and no oneDNN";
  at::manual_seed(1);
  const at::Tensor x = at::randn({4, 16}).requires_grad_();
  const at::Tensor frozen_weight = at::randn({8, 16}), frozen_bias = at::randn({8});
  cpu_linear(x, frozen_weight, frozen_bias).sum().backward();
  dedpo::test::expect_near_reference("dx", x.grad(), at::ones({4, 8}, at::kDouble).mm(frozen_weight.to(at::kDouble)), kTolerance);
  EXPECT_FALSE(frozen_weight.grad().defined());
  c10::InferenceMode inference;
  const at::Tensor y = cpu_linear(at::randn({4, 16}), frozen_weight, frozen_bias);
  EXPECT_FALSE(y.requires_grad());
}

TEST(CpuLinear, AppliesToFloat32OnAmdCpusOnly) {
  const bool amd = dedpo::test::cpuinfo_line("vendor_id").find("AuthenticAMD") != std::string::npos;
  const at::Tensor x = at::zeros({2, 16}), weight = at::zeros({8, 16});
  EXPECT_EQ(cpu_linear_applies(x, weight), amd && runs_here());
  EXPECT_FALSE(cpu_linear_applies(x.to(at::kBFloat16), weight.to(at::kBFloat16)));
  EXPECT_FALSE(cpu_linear_applies(x.to(at::kDouble), weight.to(at::kDouble)));
  EXPECT_FALSE(cpu_linear_applies(at::zeros({2, 15}), weight)) << "in features differ";
  EXPECT_FALSE(cpu_linear_applies(at::zeros({0, 16}), weight)) << "no rows";
}

// The bfloat16 path (under CPU bf16 autocast, AMD CPUs with AVX512-BF16): against the same products
// in double on the operands rounded to bf16 as autocast rounds them. The forward's output is
// rounded once to bf16 (2^-8 relative); the gradients are float32 sums of bf16 products.
bool bf16_runs_here() {
  return dedpo::test::cpuinfo_line("vendor_id").find("AuthenticAMD") != std::string::npos &&
         dedpo::test::cpuinfo_has_flag("avx512_bf16");
}

at::Tensor rounded(const at::Tensor& t) { return t.detach().to(at::kBFloat16).to(at::kDouble); }

struct Bf16Case {
  std::vector<int64_t> input;  // [..., in]
  int64_t out;
  bool bias;
  at::ScalarType x_dtype, weight_dtype;
};

class CpuLinearBf16Parity : public testing::TestWithParam<Bf16Case> {};

TEST_P(CpuLinearBf16Parity, ForwardAndGradientsEqualTheBf16ProductsInDouble) {
  if (!bf16_runs_here()) GTEST_SKIP() << "not an AMD CPU with AVX512-BF16";
  const Bf16Case c = GetParam();
  at::manual_seed(c.out);
  const at::Tensor x = at::randn(c.input).to(c.x_dtype).requires_grad_();
  const at::Tensor weight = at::randn({c.out, c.input.back()}).to(c.weight_dtype).requires_grad_();
  const at::Tensor bias = c.bias ? at::randn({c.out}).to(c.weight_dtype).requires_grad_() : at::Tensor();
  at::Tensor y;
  {
    dedpo::AutocastRegion autocast(at::kCPU, true);
    ASSERT_TRUE(cpu_linear_bf16_applies(x, weight, bias));
    y = cpu_linear_bf16(x, weight, bias);
  }
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  const at::Tensor upstream = at::randn(y.sizes()).to(at::kBFloat16);  // what flows back into a bf16 output
  (y * upstream).sum().backward();
  EXPECT_EQ(x.grad().scalar_type(), c.x_dtype);
  EXPECT_EQ(weight.grad().scalar_type(), c.weight_dtype);

  const at::Tensor rows = rounded(x).reshape({-1, c.input.back()}), w = rounded(weight), up = rounded(upstream).reshape({-1, c.out});
  const at::Tensor want = c.bias ? at::addmm(bias.detach().to(at::kDouble), rows, w.t()) : at::mm(rows, w.t());
  dedpo::test::expect_near_reference("output", y.reshape({-1, c.out}), want, 4e-3);
  // A bf16 gradient holds only bf16's precision; a float32 one the float32 sum's.
  const double dx_tolerance = c.x_dtype == at::kBFloat16 ? 4e-3 : 2e-5;
  const double dw_tolerance = c.weight_dtype == at::kBFloat16 ? 4e-3 : 2e-5;
  dedpo::test::expect_near_reference("dx", x.grad().reshape({-1, c.input.back()}), up.mm(w), dx_tolerance);
  dedpo::test::expect_near_reference("dweight", weight.grad(), up.t().mm(rows), dw_tolerance);
  if (c.bias) dedpo::test::expect_near_reference("dbias", bias.grad(), up.sum(0), dw_tolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuLinearBf16Parity,
    testing::Values(Bf16Case{{2, 1024, 64}, 64, true, at::kFloat, at::kFloat},      // an attention projection, 3-D
                    Bf16Case{{2, 77, 768}, 64, false, at::kBFloat16, at::kFloat},   // bf16 activations in
                    Bf16Case{{2, 320}, 1280, true, at::kFloat, at::kFloat},         // the time embedding
                    Bf16Case{{3, 5, 7, 25}, 9, true, at::kFloat, at::kFloat},       // odd sizes: pair and panel tails
                    Bf16Case{{13, 601}, 70, true, at::kBFloat16, at::kBFloat16},    // a bf16 reference, two depth blocks
                    Bf16Case{{1, 3}, 1, false, at::kFloat, at::kFloat}));           // one row, one output

TEST(CpuLinearBf16, AppliesUnderBf16AutocastOnAmdCpusWithAvx512Bf16Only) {
  const at::Tensor x = at::zeros({2, 16}), weight = at::zeros({8, 16});
  EXPECT_FALSE(cpu_linear_bf16_applies(x, weight, at::Tensor())) << "no autocast";
  {
    dedpo::AutocastRegion autocast(at::kCPU, true);
    EXPECT_EQ(cpu_linear_bf16_applies(x, weight, at::Tensor()), bf16_runs_here());
    EXPECT_FALSE(cpu_linear_bf16_applies(x.to(at::kDouble), weight.to(at::kDouble), at::Tensor()));
    EXPECT_FALSE(cpu_linear_bf16_applies(at::zeros({2, 15}), weight, at::Tensor())) << "in features differ";
    EXPECT_FALSE(cpu_linear_bf16_applies(at::zeros({0, 16}), weight, at::Tensor())) << "no rows";
    EXPECT_FALSE(cpu_linear_bf16_applies(x, weight, at::zeros({7}))) << "a bias of the wrong length";
  }
  {
    dedpo::AutocastRegion autocast(at::kCPU, true, at::kHalf);
    EXPECT_FALSE(cpu_linear_bf16_applies(x, weight, at::Tensor())) << "float16 autocast";
  }
}

}  // namespace
