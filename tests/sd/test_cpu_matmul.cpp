// dedpo_sd's float32 cpu_matmul against at::mm in double: every row remainder of its 6-row tiles,
// panels narrower than 64 columns, depths across its 512-row blocks, both operands in place at the
// strides the linear layers pass (a transposed gradient, a transposed weight, row-strided views),
// bias or none; results independent of the thread count; ATen where the kernel does not apply.
// The kernel runs on CPUs with AVX-512F; elsewhere cpu_matmul is at::mm and the kernel tests skip.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "dedpo/sd/cpu_matmul.hpp"
#include "module_test_support.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::cpu_matmul;
using dedpo::sd::cpu_matmul_out;
using dedpo::sd::cpu_matmul_kernel_applies;

// Relative to the largest |value| of the reference: float rounding over up to 1,100 terms.
constexpr double kTolerance = 1e-5;

bool kernel_runs() { return dedpo::test::cpuinfo_has_flag("avx512f"); }

void expect_product(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias, const std::string& what) {
  SCOPED_TRACE(what + ": a " + std::to_string(a.size(0)) + "x" + std::to_string(a.size(1)) + ", b " +
               std::to_string(b.size(0)) + "x" + std::to_string(b.size(1)));
  const at::Tensor got = cpu_matmul(a, b, bias);
  ASSERT_TRUE(got.is_contiguous());
  const at::Tensor want = bias.defined() ? at::addmm(bias.to(at::kDouble), a.to(at::kDouble), b.to(at::kDouble))
                                         : at::mm(a.to(at::kDouble), b.to(at::kDouble));
  dedpo::test::expect_near_reference("product", got, want, kTolerance);
}

struct Shape {
  int64_t rows, depth, cols;
};

TEST(CpuMatmul, EqualsTheProductInDoubleOnEveryTileRemainder) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(5);
  // Rows: 1 to 13 cover every remainder of the 6-row tile; columns: 64-wide panels, narrower
  // last panels and one narrower than a vector; depth: one row of B, a 512-row block and 1 past it.
  for (const Shape s : {Shape{1, 1, 1}, Shape{5, 3, 64}, Shape{6, 16, 65}, Shape{7, 64, 17}, Shape{11, 512, 128},
                        Shape{12, 513, 130}, Shape{13, 1100, 63}, Shape{128, 256, 256}, Shape{154, 96, 40}}) {
    const at::Tensor a = at::randn({s.rows, s.depth}), b = at::randn({s.depth, s.cols}), bias = at::randn({s.cols});
    expect_product(a, b, at::Tensor(), "plain");
    expect_product(a, b, bias, "with bias");
  }
}

TEST(CpuMatmul, ReadsTransposedAndStridedOperandsInPlace) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(6);
  for (const Shape s : {Shape{9, 70, 80}, Shape{128, 600, 64}, Shape{3, 5, 7}}) {
    const at::Tensor a = at::randn({s.rows, s.depth}), b = at::randn({s.depth, s.cols}), bias = at::randn({s.cols});
    // The linear layers' operands: x·Wᵀ (b a transposed weight), dyᵀ·x (a a transposed gradient).
    const at::Tensor weight = at::randn({s.cols, s.depth}), dy = at::randn({s.depth, s.rows});
    expect_product(a, weight.t(), bias, "b = Wᵀ");
    expect_product(dy.t(), b, at::Tensor(), "a = dyᵀ");
    expect_product(dy.t(), weight.t(), bias, "both transposed");
    // Rows further apart than their length (a slice of a wider matrix), on both sides.
    expect_product(at::randn({s.rows, s.depth + 9}).narrow(1, 4, s.depth), at::randn({s.depth, s.cols + 3}).narrow(1, 1, s.cols),
                   bias, "row-strided views");
    // Neither stride of b is 1: b is copied first.
    expect_product(a, at::randn({2 * s.depth, 2 * s.cols}).slice(0, 0, 2 * s.depth, 2).slice(1, 0, 2 * s.cols, 2),
                   at::Tensor(), "b strided both ways");
  }
}

// cpu_matmul_out: a row bias, accumulation onto what the output holds (with B read in place and
// packed), an output that is a slice of a wider matrix (its other columns untouched), narrow and
// full panels, one and two depth blocks; the outputs it refuses.
TEST(CpuMatmul, WritesIntoASliceWithARowBiasOrAccumulates) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(8);
  for (const Shape s : {Shape{7, 20, 70}, Shape{13, 600, 64}, Shape{7, 600, 70}, Shape{4, 3, 5}}) {
    SCOPED_TRACE("rows " + std::to_string(s.rows) + ", depth " + std::to_string(s.depth) + ", cols " + std::to_string(s.cols));
    const at::Tensor a = at::randn({s.rows, s.depth}), b = at::randn({s.depth, s.cols}), row_bias = at::randn({s.rows});
    const at::Tensor product = at::mm(a.to(at::kDouble), b.to(at::kDouble));
    const at::Tensor wide = at::randn({s.rows, s.cols + 10});
    const at::Tensor before = wide.clone();
    cpu_matmul_out(wide.narrow(1, 3, s.cols), a, b, at::Tensor(), row_bias, /*accumulate=*/false);
    dedpo::test::expect_near_reference("row bias", wide.narrow(1, 3, s.cols), product + row_bias.to(at::kDouble).unsqueeze(1),
                                       kTolerance);
    EXPECT_TRUE(at::equal(wide.narrow(1, 0, 3), before.narrow(1, 0, 3)));
    EXPECT_TRUE(at::equal(wide.narrow(1, 3 + s.cols, 7), before.narrow(1, 3 + s.cols, 7)));

    const at::Tensor start = at::randn({s.rows, s.cols}), sum = start.clone();
    cpu_matmul_out(sum, a, b, at::Tensor(), at::Tensor(), /*accumulate=*/true);
    dedpo::test::expect_near_reference("accumulated", sum, start.to(at::kDouble) + product, kTolerance);
    // B a transposed weight (packed), the panel narrow, two depth blocks: accumulated too.
    const at::Tensor weight = at::randn({s.cols, s.depth}), into = at::randn({s.rows, s.cols}), onto = into.clone();
    cpu_matmul_out(onto, a, weight.t(), at::Tensor(), at::Tensor(), /*accumulate=*/true);
    dedpo::test::expect_near_reference("accumulated onto, b = Wᵀ", onto,
                                       into.to(at::kDouble) + at::mm(a.to(at::kDouble), weight.t().to(at::kDouble)),
                                       kTolerance);
  }
  EXPECT_THROW(cpu_matmul_out(at::zeros({4, 3}), at::zeros({4, 2}), at::zeros({2, 3}), at::zeros({3}), at::Tensor(), true),
               c10::Error) << "a bias with accumulate";
  const at::Tensor square = at::randn({8, 8});
  EXPECT_THROW(cpu_matmul_out(square, square, at::randn({8, 8}), at::Tensor(), at::Tensor(), false), c10::Error)
      << "the output is an operand";
  EXPECT_THROW(cpu_matmul_out(at::zeros({1, 3}).expand({4, 3}), at::zeros({4, 2}), at::zeros({2, 3}), at::Tensor(),
                              at::Tensor(), false),
               c10::Error) << "an output whose rows overlap";
  EXPECT_THROW(cpu_matmul_out(at::zeros({3, 4}).t(), at::zeros({4, 2}), at::zeros({2, 3}), at::Tensor(), at::Tensor(), false),
               c10::Error) << "an output without unit column stride";
  EXPECT_THROW(cpu_matmul_out(at::zeros({4, 3}), at::zeros({4, 2}), at::zeros({2, 3}), at::Tensor(), at::zeros({3}), false),
               c10::Error) << "a row bias of the wrong length";
}

// The sum over the depth runs in the same order whatever the split of the work: bit-equal results
// on 1 and 3 threads (3 splits each panel's rows over tasks).
TEST(CpuMatmul, GivesTheSameBitsOnAnyNumberOfThreads) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(7);
  const at::Tensor a = at::randn({100, 700}), weight = at::randn({64, 700}), bias = at::randn({64});
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = cpu_matmul(a, weight.t(), bias);
  at::set_num_threads(3);
  const at::Tensor three = cpu_matmul(a, weight.t(), bias);
  at::set_num_threads(before);
  EXPECT_TRUE(at::equal(one, three));
}

TEST(CpuMatmul, EmptyDepthGivesTheBiasAndEmptyOperandsAnEmptyProduct) {
  const at::Tensor bias = at::randn({5});
  EXPECT_TRUE(at::equal(cpu_matmul(at::zeros({3, 0}), at::zeros({0, 5}), bias), bias.expand({3, 5})));
  EXPECT_TRUE(at::equal(cpu_matmul(at::zeros({3, 0}), at::zeros({0, 5})), at::zeros({3, 5})));
  EXPECT_EQ(cpu_matmul(at::zeros({0, 4}), at::zeros({4, 5})).sizes(), (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(cpu_matmul(at::zeros({3, 4}), at::zeros({4, 0})).sizes(), (std::vector<int64_t>{3, 0}));
}

TEST(CpuMatmul, AppliesToFloat32CpuMatricesOnAvx512) {
  const at::Tensor a = at::zeros({2, 4}), b = at::zeros({4, 3});
  EXPECT_EQ(cpu_matmul_kernel_applies(a, b), kernel_runs());
  EXPECT_FALSE(cpu_matmul_kernel_applies(a.to(at::kDouble), b.to(at::kDouble)));
  EXPECT_FALSE(cpu_matmul_kernel_applies(a.to(at::kBFloat16), b.to(at::kBFloat16)));
  EXPECT_FALSE(cpu_matmul_kernel_applies(a, at::zeros({5, 3}))) << "inner sizes differ";
  EXPECT_FALSE(cpu_matmul_kernel_applies(at::zeros({8}), b)) << "a vector";
}

TEST(CpuMatmul, OtherOperandsTakeAten) {
  const at::Tensor a = at::randn({4, 6}, at::kDouble), b = at::randn({6, 3}, at::kDouble), bias = at::randn({3}, at::kDouble);
  EXPECT_TRUE(at::equal(cpu_matmul(a, b), at::mm(a, b)));
  EXPECT_TRUE(at::equal(cpu_matmul(a, b, bias), at::addmm(bias, a, b)));
  EXPECT_THROW(cpu_matmul(at::zeros({2, 3}), at::zeros({4, 5})), c10::Error);
}

TEST(CpuMatmul, RejectsABiasOfTheWrongLength) {
  if (!kernel_runs()) GTEST_SKIP() << "this CPU has no AVX-512F";
  EXPECT_THROW(cpu_matmul(at::zeros({2, 3}), at::zeros({3, 4}), at::zeros({5})), c10::Error);
}

}  // namespace
