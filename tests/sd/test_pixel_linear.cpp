// pixel_linear against the 1×1 convolution it replaces, in double: all four pairs of layouts
// (channels first [B, C, HW], tokens [B, HW, C]), with and without a bias, forward and the three
// gradients; a frozen weight; where it applies; the shapes it refuses. The kernel under it
// (cpu_matmul) runs on CPUs with AVX-512F; elsewhere the parity tests skip.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <string>
#include <tuple>

#include "dedpo/sd/pixel_linear.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::PixelLayout;
using dedpo::sd::pixel_linear;
using dedpo::sd::pixel_linear_applies;

constexpr double kTolerance = 1e-5;  // relative to the largest |value| of the reference

bool kernel_runs() { return dedpo::test::cpuinfo_has_flag("avx512f"); }

// [B, C, H, W] as the layout's 3-D tensor, and back.
at::Tensor in_layout(const at::Tensor& image, PixelLayout layout) {
  const at::Tensor flat = image.flatten(2);  // [B, C, HW]
  return layout == PixelLayout::tokens ? flat.transpose(1, 2).contiguous() : flat.contiguous();
}

using Case = std::tuple<PixelLayout, PixelLayout, bool>;
class PixelLinearParity : public testing::TestWithParam<Case> {};

TEST_P(PixelLinearParity, ForwardAndGradientsEqualThe1x1ConvolutionInDouble) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  const auto [from, to, with_bias] = GetParam();
  at::manual_seed(11);
  const int64_t batch = 3, in = 40, out = 70, h = 5, w = 7;  // 35 pixels: tile and panel remainders
  const at::Tensor image = at::randn({batch, in, h, w}, at::kDouble);
  const at::Tensor weight = at::randn({out, in}).requires_grad_();
  const at::Tensor bias = with_bias ? at::randn({out}).requires_grad_() : at::Tensor();
  const at::Tensor x = in_layout(image, from).to(at::kFloat).requires_grad_();
  const at::Tensor y = pixel_linear(x, from, weight, bias, to);
  ASSERT_TRUE(y.is_contiguous());
  const at::Tensor upstream = at::randn(y.sizes());
  (y * upstream).sum().backward();

  const at::Tensor image_d = image.clone().requires_grad_();
  const at::Tensor weight_d = weight.detach().to(at::kDouble).requires_grad_();
  const at::Tensor bias_d = with_bias ? bias.detach().to(at::kDouble).requires_grad_() : at::Tensor();
  const at::Tensor want = in_layout(at::conv2d(image_d, weight_d.view({out, in, 1, 1}), bias_d), to);
  (want * upstream.to(at::kDouble)).sum().backward();
  dedpo::test::expect_near_reference("output", y, want.detach(), kTolerance);
  dedpo::test::expect_near_reference("dx", x.grad(), in_layout(image_d.grad(), from), kTolerance);
  dedpo::test::expect_near_reference("dweight", weight.grad(), weight_d.grad(), kTolerance);
  if (with_bias) dedpo::test::expect_near_reference("dbias", bias.grad(), bias_d.grad(), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(Layouts, PixelLinearParity,
                         testing::Combine(testing::Values(PixelLayout::channels_first, PixelLayout::tokens),
                                          testing::Values(PixelLayout::channels_first, PixelLayout::tokens),
                                          testing::Bool()));

TEST(PixelLinear, AFrozenWeightGivesTheInputItsGradientAndInferenceModeNoGraph) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(12);
  const at::Tensor x = at::randn({2, 8, 10}).requires_grad_();  // [B, C, HW]
  const at::Tensor weight = at::randn({6, 8}), bias = at::randn({6});
  pixel_linear(x, PixelLayout::channels_first, weight, bias, PixelLayout::tokens).sum().backward();
  // d/dx of Σ (W·x + b) is Wᵀ·1 at every pixel.
  const at::Tensor want = weight.to(at::kDouble).sum(0).view({1, 8, 1}).expand({2, 8, 10});
  dedpo::test::expect_near_reference("dx", x.grad(), want, kTolerance);
  EXPECT_FALSE(weight.grad().defined());
  c10::InferenceMode inference;
  EXPECT_FALSE(pixel_linear(at::randn({2, 8, 10}), PixelLayout::channels_first, weight, bias, PixelLayout::tokens)
                   .requires_grad());
}

TEST(PixelLinear, AppliesWhereCpuLinearDoesWithTheKernel) {
  const bool amd = dedpo::test::cpuinfo_line("vendor_id").find("AuthenticAMD") != std::string::npos;
  const at::Tensor weight = at::zeros({4, 8});
  EXPECT_EQ(pixel_linear_applies(at::zeros({2, 8, 5}), PixelLayout::channels_first, weight, at::Tensor()), amd && kernel_runs());
  EXPECT_EQ(pixel_linear_applies(at::zeros({2, 5, 8}), PixelLayout::tokens, weight, at::zeros({4})), amd && kernel_runs());
  EXPECT_FALSE(pixel_linear_applies(at::zeros({2, 5, 8}), PixelLayout::channels_first, weight, at::Tensor())) << "5 channels";
  EXPECT_FALSE(pixel_linear_applies(at::zeros({2, 8, 5}, at::kDouble), PixelLayout::channels_first, weight.to(at::kDouble), at::Tensor()));
  EXPECT_FALSE(pixel_linear_applies(at::zeros({0, 8, 5}), PixelLayout::channels_first, weight, at::Tensor())) << "no samples";
  EXPECT_FALSE(pixel_linear_applies(at::zeros({8, 5}), PixelLayout::channels_first, weight, at::Tensor())) << "not 3-D";
  EXPECT_FALSE(pixel_linear_applies(at::zeros({2, 8, 5}), PixelLayout::channels_first, weight, at::zeros({4}, at::kDouble)))
      << "a double bias";
}

TEST(PixelLinear, RefusesShapesThatDoNotMatchAndOperandsItDoesNotServe) {
  const at::Tensor weight = at::zeros({4, 8});
  EXPECT_THROW(pixel_linear(at::zeros({2, 8, 5}, at::kDouble), PixelLayout::channels_first, weight.to(at::kDouble),
                            at::Tensor(), PixelLayout::tokens),
               c10::Error);
  EXPECT_THROW(pixel_linear(at::zeros({2, 7, 5}), PixelLayout::channels_first, weight, at::Tensor(), PixelLayout::tokens),
               c10::Error);
  EXPECT_THROW(pixel_linear(at::zeros({2, 8, 5}), PixelLayout::channels_first, weight, at::zeros({5}), PixelLayout::tokens),
               c10::Error);
  EXPECT_THROW(pixel_linear(at::zeros({8, 5}), PixelLayout::channels_first, weight, at::Tensor(), PixelLayout::tokens),
               c10::Error);
}

}  // namespace
