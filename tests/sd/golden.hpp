#pragma once
// Access to the golden reference folders (env DEDPO_GOLDEN_DIR, default DEDPO_GOLDEN_DEFAULT) and
// comparison of tensors with a max-abs-diff tolerance.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>

#include "dedpo/safetensors.hpp"

namespace dedpo::test {

constexpr double kTolerance = 1e-4;

inline std::filesystem::path golden_root() {
  const char* env = std::getenv("DEDPO_GOLDEN_DIR");
  return env && *env ? std::filesystem::path(env) : std::filesystem::path(DEDPO_GOLDEN_DEFAULT);
}

// The folder of one golden case; the test is skipped when a user-given folder lacks the case.
#define DEDPO_GOLDEN_CASE(var, name)                                                        \
  const std::filesystem::path var = ::dedpo::test::golden_root() / (name);                  \
  if (!std::filesystem::exists(var / "outputs.safetensors")) {                              \
    if (std::getenv("DEDPO_GOLDEN_DIR")) GTEST_SKIP() << "no golden case " << var;          \
    FAIL() << "golden case missing: " << var;                                               \
  }

// max |a - b| (infinity when the shapes differ), printed for the record.
inline double max_abs_diff(const at::Tensor& actual, const at::Tensor& expected) {
  if (!actual.defined() || actual.sizes() != expected.sizes()) return std::numeric_limits<double>::infinity();
  if (actual.numel() == 0) return 0.0;
  return (actual.to(at::kDouble) - expected.to(at::kDouble)).abs().max().item<double>();
}

#define EXPECT_TENSOR_NEAR(label, actual, expected)                                                     \
  do {                                                                                                  \
    const at::Tensor dedpo_a_ = (actual);                                                               \
    const at::Tensor dedpo_e_ = (expected);                                                             \
    const double dedpo_d_ = ::dedpo::test::max_abs_diff(dedpo_a_, dedpo_e_);                            \
    std::cout << "[ parity   ] " << ::testing::UnitTest::GetInstance()->current_test_info()->name()     \
              << " " << (label) << ": max abs diff " << dedpo_d_ << "\n";                               \
    EXPECT_LE(dedpo_d_, ::dedpo::test::kTolerance)                                                      \
        << (label) << ": got shape " << (dedpo_a_.defined() ? dedpo_a_.sizes() : at::IntArrayRef{})     \
        << ", expected " << dedpo_e_.sizes();                                                           \
  } while (0)

}  // namespace dedpo::test
