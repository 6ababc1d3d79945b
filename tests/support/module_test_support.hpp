#pragma once
// Helpers for tests of LibTorch modules and backbones: seeded generators, tensor comparison and
// parameter snapshots.
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

namespace dedpo::test {

inline at::Generator gen(std::uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

inline void expect_close(const at::Tensor& x, const at::Tensor& y, double tol = 1e-6) {
  ASSERT_EQ(x.sizes(), y.sizes());
  EXPECT_TRUE(at::allclose(x, y, tol, tol)) << x << "\n" << y;
}

// A kernel's result against its definition evaluated in double: the largest difference at most
// `relative` × max(1, largest |want|), named `what` in the failure.
inline void expect_near_reference(const char* what, const at::Tensor& got, const at::Tensor& want, double relative) {
  ASSERT_TRUE(got.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double tolerance = relative * std::max(1.0, want.abs().max().item<double>());
  const double error = (got.to(at::kDouble) - want).abs().max().item<double>();
  EXPECT_LE(error, tolerance) << what << ": largest difference " << error;
}

// Copies of every parameter, by name.
inline std::map<std::string, at::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : m.named_parameters()) out[item.key()] = item.value().detach().clone();
  return out;
}

// Whether any parameter differs from its snapshot.
inline bool changed(torch::nn::Module& m, const std::map<std::string, at::Tensor>& before) {
  for (const auto& item : m.named_parameters()) {
    if (!at::equal(item.value().detach(), before.at(item.key()))) return true;
  }
  return false;
}

}  // namespace dedpo::test
