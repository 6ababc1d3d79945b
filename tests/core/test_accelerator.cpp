#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include <ATen/Context.h>

#include "dedpo/host/accelerator.hpp"

TEST(Accelerator, NumericsAreSetProcessWide) {
  unsetenv("CUBLAS_WORKSPACE_CONFIG");
  dedpo::apply_device_numerics({.deterministic = true, .tf32 = true});
  EXPECT_TRUE(at::globalContext().deterministicAlgorithms());
  EXPECT_TRUE(at::globalContext().deterministicCuDNN());
  EXPECT_TRUE(at::globalContext().allowTF32CuBLAS());
  EXPECT_TRUE(at::globalContext().allowTF32CuDNN());
  ASSERT_NE(std::getenv("CUBLAS_WORKSPACE_CONFIG"), nullptr);
  EXPECT_EQ(std::string(std::getenv("CUBLAS_WORKSPACE_CONFIG")), ":4096:8");

  // A workspace the user chose is kept.
  setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8", 1);
  dedpo::apply_device_numerics({.deterministic = true, .tf32 = false});
  EXPECT_EQ(std::string(std::getenv("CUBLAS_WORKSPACE_CONFIG")), ":16:8");
  EXPECT_FALSE(at::globalContext().allowTF32CuBLAS());

  dedpo::apply_device_numerics({});
  EXPECT_FALSE(at::globalContext().deterministicAlgorithms());
  EXPECT_FALSE(at::globalContext().allowTF32CuDNN());
}

TEST(Accelerator, TheHostHasNoAllocatorPeak) {
  EXPECT_FALSE(dedpo::peak_device_memory(c10::Device(c10::kCPU)).has_value());
  dedpo::reset_peak_device_memory(c10::Device(c10::kCPU));  // nothing to reset, nothing fails
}
