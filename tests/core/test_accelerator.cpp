#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
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

// bf16 on a CPU is faster than fp32 only with AMX: the run warns on AVX-512 BF16 alone (half the
// fp32 matmul rate) and where it is emulated, never for fp32, AMX or a GPU.
TEST(Accelerator, Bf16WarnsWithoutAmx) {
  const c10::Device cpu(c10::kCPU);
  EXPECT_EQ(dedpo::compute_path(cpu, false, {}).description, "fp32");
  EXPECT_EQ(dedpo::compute_path(cpu, false, {}).warning, "");
  const dedpo::ComputePath emulated = dedpo::compute_path(cpu, true, {.avx512 = true});
  EXPECT_NE(emulated.warning.find("is emulated on this CPU"), std::string::npos) << emulated.warning;
  const dedpo::ComputePath avx512_bf16 = dedpo::compute_path(cpu, true, {.avx512 = true, .avx512_bf16 = true});
  EXPECT_EQ(avx512_bf16.description, "bf16 autocast, AVX-512 BF16 without AMX");
  EXPECT_NE(avx512_bf16.warning.find("half the fp32 rate"), std::string::npos) << avx512_bf16.warning;
  const dedpo::ComputePath amx = dedpo::compute_path(cpu, true, {.avx512 = true, .avx512_bf16 = true, .amx_bf16 = true});
  EXPECT_EQ(amx.description, "bf16 autocast, AMX BF16");
  EXPECT_EQ(amx.warning, "");
  EXPECT_EQ(dedpo::compute_path(c10::Device(c10::kCUDA, 0), true, {}).warning, "");
}

TEST(Accelerator, TheCpuFeaturesAreLibTorchsCapabilities) {
  // This machine's /proc/cpuinfo is the other witness of the same flags.
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line) && line.rfind("flags", 0) != 0) {
  }
  ASSERT_FALSE(line.empty()) << "no flags line in /proc/cpuinfo";
  const auto has = [&](const std::string& flag) { return (line + " ").find(" " + flag + " ") != std::string::npos; };
  const dedpo::CpuFeatures cpu = dedpo::cpu_features();
  EXPECT_EQ(cpu.avx512, has("avx512f"));
  EXPECT_EQ(cpu.avx512_bf16, has("avx512_bf16"));
  // AMX also needs the kernel's permission for its tile state, which LibTorch asks for.
  if (cpu.amx_bf16) EXPECT_TRUE(has("amx_bf16"));
}
