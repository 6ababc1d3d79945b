// transposed_contiguous equals ATen's m.t().contiguous() exactly, on shapes with and without
// 16-row and 16-column remainders, on row-strided views, and where it falls back to ATen. The
// kernel runs on CPUs with AVX-512F only; elsewhere the kernel tests skip (both sides would be ATen).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <utility>

#include "dedpo/sd/transpose.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::transposed_contiguous;

void expect_transpose(const at::Tensor& m) {
  const at::Tensor got = transposed_contiguous(m);
  EXPECT_TRUE(got.is_contiguous());
  EXPECT_EQ(got.scalar_type(), m.scalar_type());
  EXPECT_TRUE(at::equal(got, m.t().contiguous())) << "rows " << m.size(0) << ", columns " << m.size(1);
}

TEST(TransposedContiguous, EqualsAtensTransposeOnEveryRemainder) {
  if (!dedpo::test::cpuinfo_has_flag("avx512f")) GTEST_SKIP() << "this CPU has no AVX-512F";
  at::manual_seed(3);
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{2048, 256}, {16, 16}, {17, 33}, {1, 40}, {40, 1},
                                   {5, 7}, {128, 1030}, {1000, 48}}) {
    expect_transpose(at::randn({rows, cols}));
  }
}

TEST(TransposedContiguous, ReadsARowStridedView) {
  if (!dedpo::test::cpuinfo_has_flag("avx512f")) GTEST_SKIP() << "this CPU has no AVX-512F";
  const at::Tensor wide = at::randn({64, 100});
  expect_transpose(wide.narrow(1, 10, 50));  // rows 100 floats apart, 50 read
}

TEST(TransposedContiguous, OtherDtypesAndLayoutsTakeAtensCopy) {
  expect_transpose(at::randn({20, 30}, at::kDouble));
  expect_transpose(at::randn({30, 20}).t());  // column-major: its transpose is a plain copy
  expect_transpose(at::zeros({0, 5}));
  EXPECT_THROW(transposed_contiguous(at::zeros({2, 3, 4})), c10::Error);
}

}  // namespace
