#pragma once
// Access to the golden reference folders (env DEDPO_GOLDEN_DIR, default DEDPO_GOLDEN_DEFAULT), the
// device the parity tests run on (env DEDPO_TEST_DEVICE: "cpu" by default, "cuda", "cuda:N"), and
// comparison of tensors with a max-abs-diff tolerance.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>

#include "dedpo/safetensors.hpp"

namespace dedpo::test {

inline std::filesystem::path golden_root() {
  const char* env = std::getenv("DEDPO_GOLDEN_DIR");
  return env && *env ? std::filesystem::path(env) : std::filesystem::path(DEDPO_GOLDEN_DEFAULT);
}

// The parity tests' device. On CUDA, float32 stays float32: TF32 off in cuBLAS and cuDNN (cuDNN
// convolutions default to TF32), so the tolerance below measures the port, not the tensor cores.
inline at::Device test_device() {
  static const at::Device device = [] {
    const char* env = std::getenv("DEDPO_TEST_DEVICE");
    const std::string name = env && *env ? env : "cpu";
    const at::Device parsed(name);
    if (parsed.is_cuda()) {
      if (!at::hasCUDA()) throw std::runtime_error("DEDPO_TEST_DEVICE=" + name + ": this LibTorch sees no CUDA device");
      at::globalContext().setAllowTF32CuBLAS(false);
      at::globalContext().setAllowTF32CuDNN(false);
    } else if (!parsed.is_cpu()) {
      throw std::runtime_error("DEDPO_TEST_DEVICE=" + name + ": expected cpu, cuda or cuda:N");
    }
    return parsed;
  }();
  return device;
}

// Max abs difference allowed against the reference: other kernels (cuBLAS, cuDNN) sum in other
// orders than the CPU ones the golden tensors were made with.
inline double tolerance() { return test_device().is_cpu() ? 1e-4 : 1e-3; }

// A golden file's tensors, on the test device.
inline std::map<std::string, at::Tensor> load_on_device(const std::filesystem::path& file) {
  std::map<std::string, at::Tensor> tensors = dedpo::safetensors::load(file);
  for (auto& [name, tensor] : tensors) tensor = tensor.to(test_device());
  return tensors;
}

// The folder of one golden case. A missing case fails the test and names it: a parity test that
// cannot compare has not passed, whichever folder it was pointed at.
#define DEDPO_GOLDEN_CASE(var, name)                                                              \
  const std::filesystem::path var = ::dedpo::test::golden_root() / (name);                        \
  if (!std::filesystem::exists(var / "outputs.safetensors")) {                                    \
    FAIL() << "golden case '" << (name) << "' missing: no " << (var / "outputs.safetensors");     \
  }

// max |a - b| (infinity when the shapes differ), printed for the record.
inline double max_abs_diff(const at::Tensor& actual, const at::Tensor& expected) {
  if (!actual.defined() || actual.sizes() != expected.sizes()) return std::numeric_limits<double>::infinity();
  if (actual.numel() == 0) return 0.0;
  return (actual.to(at::kCPU, at::kDouble) - expected.to(at::kCPU, at::kDouble)).abs().max().item<double>();
}

#define EXPECT_TENSOR_NEAR(label, actual, expected)                                                     \
  do {                                                                                                  \
    const at::Tensor dedpo_a_ = (actual);                                                               \
    const at::Tensor dedpo_e_ = (expected);                                                             \
    const double dedpo_d_ = ::dedpo::test::max_abs_diff(dedpo_a_, dedpo_e_);                            \
    std::cout << "[ parity   ] " << ::testing::UnitTest::GetInstance()->current_test_info()->name()     \
              << " " << (label) << ": max abs diff " << dedpo_d_ << "\n";                               \
    EXPECT_LE(dedpo_d_, ::dedpo::test::tolerance())                                                     \
        << (label) << ": got shape " << (dedpo_a_.defined() ? dedpo_a_.sizes() : at::IntArrayRef{})     \
        << ", expected " << dedpo_e_.sizes();                                                           \
  } while (0)

}  // namespace dedpo::test
