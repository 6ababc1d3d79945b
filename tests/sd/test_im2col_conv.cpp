// im2col_conv2d against at::conv2d in double: kernels of 1, 3 and 5, strides 1 and 2, paddings
// that keep, shrink and pad the image, rows narrower and wider than the vector kernel's 16 floats, with and without a bias, forward and the three gradients; a
// frozen weight; where it applies (the deep, small levels only); the shapes it refuses. The
// product under it (cpu_matmul) runs on CPUs with AVX-512F; elsewhere the parity tests skip.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <tuple>

#include "dedpo/sd/im2col_conv.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::im2col_conv2d;
using dedpo::sd::im2col_conv_applies;

constexpr double kTolerance = 1e-5;  // relative to the largest |value| of the reference

bool kernel_runs() { return dedpo::test::cpuinfo_has_flag("avx512f"); }

struct Geometry {
  int64_t kernel, stride, padding, height, width;
};

std::string describe(const Geometry& g) {
  return std::to_string(g.kernel) + "x" + std::to_string(g.kernel) + " stride " + std::to_string(g.stride) + " padding " +
         std::to_string(g.padding) + " on " + std::to_string(g.height) + "x" + std::to_string(g.width);
}

void PrintTo(const Geometry& g, std::ostream* os) { *os << describe(g); }

using Case = std::tuple<Geometry, bool>;
class Im2colConvParity : public testing::TestWithParam<Case> {};

TEST_P(Im2colConvParity, ForwardAndGradientsEqualAtConv2dInDouble) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  const auto [g, with_bias] = GetParam();
  SCOPED_TRACE(describe(g));
  at::manual_seed(21);
  // 3 samples, 13 input and 70 output channels: the product's row tiles and column panels end in remainders.
  const int64_t batch = 3, in = 13, out = 70;
  const at::Tensor x_d = at::randn({batch, in, g.height, g.width}, at::kDouble).requires_grad_();
  const at::Tensor weight_d = at::randn({out, in, g.kernel, g.kernel}, at::kDouble).requires_grad_();
  const at::Tensor bias_d = with_bias ? at::randn({out}, at::kDouble).requires_grad_() : at::Tensor();
  const at::Tensor x = x_d.detach().to(at::kFloat).requires_grad_();
  const at::Tensor weight = weight_d.detach().to(at::kFloat).requires_grad_();
  const at::Tensor bias = with_bias ? bias_d.detach().to(at::kFloat).requires_grad_() : at::Tensor();

  const at::Tensor y = im2col_conv2d(x, weight, bias, g.stride, g.padding);
  const at::Tensor want = at::conv2d(x_d, weight_d, bias_d, g.stride, g.padding);
  ASSERT_EQ(y.sizes(), want.sizes());
  ASSERT_TRUE(y.is_contiguous());
  const at::Tensor upstream = at::randn(y.sizes(), at::kDouble);
  (y * upstream.to(at::kFloat)).sum().backward();
  (want * upstream).sum().backward();
  dedpo::test::expect_near_reference("output", y, want.detach(), kTolerance);
  dedpo::test::expect_near_reference("dx", x.grad(), x_d.grad(), kTolerance);
  dedpo::test::expect_near_reference("dweight", weight.grad(), weight_d.grad(), kTolerance);
  if (with_bias) dedpo::test::expect_near_reference("dbias", bias.grad(), bias_d.grad(), kTolerance);
}

INSTANTIATE_TEST_SUITE_P(
    Geometries, Im2colConvParity,
    testing::Combine(testing::Values(Geometry{3, 1, 1, 8, 8},    // a UNet's 3×3 layer, the size kept
                                     Geometry{3, 1, 1, 5, 7},    // a rectangle with odd sides
                                     Geometry{3, 1, 1, 1, 1},    // one pixel: every neighbour is padding
                                     Geometry{3, 1, 1, 3, 20},   // rows wider than one vector
                                     Geometry{3, 1, 1, 4, 16},   // rows of exactly one vector
                                     Geometry{3, 2, 1, 8, 8},    // a downsampler
                                     Geometry{3, 2, 0, 9, 7},    // stride 2, no padding, odd sides
                                     Geometry{3, 1, 0, 6, 6},    // shrinks to 4×4
                                     Geometry{5, 1, 2, 6, 9},    // a wider window, the size kept
                                     Geometry{5, 1, 3, 4, 4},    // more padding than the window needs
                                     Geometry{1, 1, 0, 4, 4}),   // 1×1
                     testing::Bool()));

TEST(Im2colConv, AFrozenWeightGivesTheInputItsGradientAndInferenceModeNoGraph) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(22);
  const at::Tensor x = at::randn({2, 4, 4, 4}).requires_grad_();
  const at::Tensor weight = at::randn({6, 4, 3, 3}), bias = at::randn({6});
  im2col_conv2d(x, weight, bias, 1, 1).sum().backward();
  const at::Tensor x_d = x.detach().to(at::kDouble).requires_grad_();
  at::conv2d(x_d, weight.to(at::kDouble), bias.to(at::kDouble), 1, 1).sum().backward();
  dedpo::test::expect_near_reference("dx", x.grad(), x_d.grad(), kTolerance);
  EXPECT_FALSE(weight.grad().defined());
  c10::InferenceMode inference;
  EXPECT_FALSE(im2col_conv2d(at::randn({2, 4, 4, 4}), weight, bias, 1, 1).requires_grad());
}

TEST(Im2colConv, TheResultDoesNotDependOnTheNumberOfThreads) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(23);
  const at::Tensor x = at::randn({2, 64, 8, 8}).requires_grad_();
  const at::Tensor weight = at::randn({96, 64, 3, 3}).requires_grad_();
  auto run = [&](int threads) {
    at::set_num_threads(threads);
    x.mutable_grad() = at::Tensor();
    weight.mutable_grad() = at::Tensor();
    const at::Tensor y = im2col_conv2d(x, weight, at::Tensor(), 1, 1);
    (y * y).sum().backward();
    return std::make_tuple(y.detach(), x.grad().clone(), weight.grad().clone());
  };
  const int before = at::get_num_threads();
  const auto [y1, dx1, dw1] = run(1);
  const auto [y2, dx2, dw2] = run(3);  // 3: the planes and the products' rows split unevenly
  at::set_num_threads(before);
  EXPECT_TRUE(at::equal(y1, y2));
  EXPECT_TRUE(at::equal(dx1, dx2));
  EXPECT_TRUE(at::equal(dw1, dw2));
}

TEST(Im2colConv, AppliesOnlyWhereTheBatchsOutputPixelsAreFewerThanTheOutputChannels) {
  const bool amd = dedpo::test::cpuinfo_line("vendor_id").find("AuthenticAMD") != std::string::npos;
  const bool here = amd && kernel_runs();
  const at::Tensor weight = at::zeros({256, 256, 3, 3}), bias = at::zeros({256});
  EXPECT_EQ(im2col_conv_applies(at::zeros({2, 256, 8, 8}), weight, bias, 1, 1), here) << "128 output pixels, 256 channels";
  EXPECT_EQ(im2col_conv_applies(at::zeros({4, 256, 8, 8}), weight, bias, 1, 1), here) << "256 output pixels";
  EXPECT_EQ(im2col_conv_applies(at::zeros({2, 256, 16, 16}), weight, bias, 2, 1), here) << "stride 2: 128 output pixels";
  EXPECT_FALSE(im2col_conv_applies(at::zeros({2, 256, 16, 16}), weight, bias, 1, 1)) << "512 output pixels";
  EXPECT_FALSE(im2col_conv_applies(at::zeros({2, 256, 8, 8}).transpose(2, 3), weight, bias, 1, 1)) << "not contiguous";
  EXPECT_FALSE(im2col_conv_applies(at::zeros({2, 256, 8, 8}, at::kDouble), weight.to(at::kDouble), bias.to(at::kDouble), 1, 1));
  EXPECT_FALSE(im2col_conv_applies(at::zeros({2, 256, 8, 8}), weight, bias.to(at::kDouble), 1, 1)) << "a double bias";
  EXPECT_FALSE(im2col_conv_applies(at::zeros({0, 256, 8, 8}), weight, bias, 1, 1)) << "no samples";
  EXPECT_FALSE(im2col_conv_applies(at::zeros({2, 128, 8, 8}), weight, bias, 1, 1)) << "128 channels for a 256-channel weight";
  EXPECT_FALSE(im2col_conv_applies(at::zeros({2, 256, 8, 8}), at::zeros({256, 256, 3, 1}), bias, 1, 1)) << "not square";
}

TEST(Im2colConv, RefusesShapesThatDoNotMatch) {
  const at::Tensor weight = at::zeros({4, 3, 3, 3});
  EXPECT_THROW(im2col_conv2d(at::zeros({2, 2, 5, 5}), weight, at::Tensor(), 1, 1), c10::Error) << "channels";
  EXPECT_THROW(im2col_conv2d(at::zeros({2, 3, 5, 5}), weight, at::zeros({5}), 1, 1), c10::Error) << "bias size";
  EXPECT_THROW(im2col_conv2d(at::zeros({2, 3, 1, 1}), weight, at::Tensor(), 1, 0), c10::Error) << "window larger than the input";
  EXPECT_THROW(im2col_conv2d(at::zeros({2, 3, 5, 5}), weight, at::Tensor(), 0, 1), c10::Error) << "stride 0";
  EXPECT_THROW(im2col_conv2d(at::zeros({2, 3, 5, 5}), weight, at::Tensor(), 1, -1), c10::Error) << "negative padding";
  EXPECT_THROW(im2col_conv2d(at::zeros({0, 3, 5, 5}), weight, at::Tensor(), 1, 1), c10::Error) << "no samples";
  EXPECT_THROW(im2col_conv2d(at::zeros({3, 5, 5}), weight, at::Tensor(), 1, 1), c10::Error) << "not 4-D";
  EXPECT_THROW(im2col_conv2d(at::zeros({2, 3, 5, 5}, at::kDouble), weight.to(at::kDouble), at::Tensor(), 1, 1), c10::Error)
      << "double";
}

}  // namespace
