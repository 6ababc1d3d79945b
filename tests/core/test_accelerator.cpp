#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include "dedpo/host/accelerator.hpp"
#include "test_support.hpp"

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

// bf16 on a CPU warns where it is slower than fp32: emulated, or with a measured bf16 matmul rate
// below the fp32 rate, whatever the instruction set; never for fp32 or a GPU.
TEST(Accelerator, Bf16WarnsWhereItIsSlowerThanFp32) {
  const c10::Device cpu(c10::kCPU);
  const dedpo::CpuMatmulRates bf16_faster{.fp32_gflops = 230, .bf16_gflops = 950};
  const dedpo::CpuMatmulRates bf16_slower{.fp32_gflops = 263, .bf16_gflops = 143};
  EXPECT_EQ(dedpo::compute_path(cpu, false, {}).description, "fp32");
  EXPECT_EQ(dedpo::compute_path(cpu, false, {}).warning, "");
  const dedpo::ComputePath emulated = dedpo::compute_path(cpu, true, {.avx512 = true}, bf16_faster);
  EXPECT_NE(emulated.warning.find("is emulated on this CPU"), std::string::npos) << emulated.warning;
  const dedpo::CpuFeatures avx512_bf16{.avx512 = true, .avx512_bf16 = true};
  const dedpo::ComputePath slower = dedpo::compute_path(cpu, true, avx512_bf16, bf16_slower);
  EXPECT_EQ(slower.description, "bf16 autocast, AVX-512 BF16 without AMX");
  EXPECT_NE(slower.warning.find("slower than fp32 on this CPU: a bf16 matmul reaches 143 GFLOP/s against 263"),
            std::string::npos)
      << slower.warning;
  const dedpo::ComputePath faster = dedpo::compute_path(cpu, true, avx512_bf16, bf16_faster);
  EXPECT_EQ(faster.description, "bf16 autocast, AVX-512 BF16 without AMX");
  EXPECT_EQ(faster.warning, "");
  const dedpo::CpuFeatures amx{.avx512 = true, .avx512_bf16 = true, .amx_bf16 = true};
  EXPECT_EQ(dedpo::compute_path(cpu, true, amx, bf16_faster).description, "bf16 autocast, AMX BF16");
  EXPECT_EQ(dedpo::compute_path(cpu, true, amx, bf16_faster).warning, "");
  EXPECT_NE(dedpo::compute_path(cpu, true, amx, bf16_slower).warning, "");
  EXPECT_EQ(dedpo::compute_path(c10::Device(c10::kCUDA, 0), true, {}).warning, "");
}

// The rates come from one measurement per process, so the log and results.json agree.
TEST(Accelerator, TheCpuMatmulRatesAreMeasuredOnce) {
  const dedpo::CpuMatmulRates& rates = dedpo::cpu_matmul_rates();
  EXPECT_GT(rates.fp32_gflops, 0.1);
  EXPECT_GT(rates.bf16_gflops, 0.01);
  EXPECT_EQ(&dedpo::cpu_matmul_rates(), &rates);
}

TEST(Accelerator, TheCpuFeaturesAreLibTorchsCapabilities) {
  // This machine's /proc/cpuinfo is the other witness of the same flags.
  ASSERT_FALSE(dedpo::test::cpuinfo_line("flags").empty()) << "no flags line in /proc/cpuinfo";
  const auto has = [](const std::string& flag) { return dedpo::test::cpuinfo_has_flag(flag); };
  const dedpo::CpuFeatures cpu = dedpo::cpu_features();
  EXPECT_EQ(cpu.avx512, has("avx512f"));
  EXPECT_EQ(cpu.avx512_bf16, has("avx512_bf16"));
  const std::string vendor = dedpo::test::cpuinfo_line("vendor_id");
  EXPECT_EQ(cpu.amd, vendor.find("AuthenticAMD") != std::string::npos) << vendor;
  // AMX also needs the kernel's permission for its tile state, which LibTorch asks for.
  if (cpu.amx_bf16) EXPECT_TRUE(has("amx_bf16"));
}

// at::parallel_for is compiled into its caller: dedpo's code (the attention kernels) is built with
// LibTorch's OpenMP (cmake/DedpoDependencies.cmake), or every task would run on the calling thread.
TEST(Accelerator, ParallelForInDedposCodeUsesEveryThread) {
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  std::atomic<int> seen{0};
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) { seen |= 1 << at::get_thread_num(); });
  at::set_num_threads(threads);
  EXPECT_EQ(seen.load(), 0b11) << "at::parallel_for ran its two tasks on one thread";
}

// oneDNN's product against at::mm in double with either operand a transposed view (the linear
// backward's Wᵀ and xᵀ) and with a bias; odd sizes so that no block size divides them.
TEST(Accelerator, OneDnnMatmulTakesTransposedViewsOfEitherOperand) {
  if (!at::hasMKLDNN()) GTEST_SKIP() << "this LibTorch has no oneDNN";
  at::manual_seed(7);
  const int64_t m = 37, k = 53, n = 29;
  const at::Tensor a = at::randn({m, k}), b = at::randn({n, k}), bias = at::randn({n});
  const at::Tensor a_t = a.t().contiguous().t(), b_t = b.t().contiguous().t();  // same values, column-major
  ASSERT_FALSE(a_t.is_contiguous());
  ASSERT_FALSE(b_t.is_contiguous());
  const at::Tensor want = at::mm(a.to(at::kDouble), b.to(at::kDouble).t());
  for (const auto& [lhs, rhs, what] : {std::tuple{a, b, "contiguous"}, std::tuple{a, b_t, "b transposed"},
                                       std::tuple{a_t, b, "a transposed"}, std::tuple{a_t, b_t, "both transposed"}}) {
    const at::Tensor got = dedpo::onednn_matmul_transposed(lhs, rhs);
    ASSERT_EQ(got.sizes(), want.sizes()) << what;
    EXPECT_LE((got.to(at::kDouble) - want).abs().max().item<double>(), 1e-4) << what;
    const at::Tensor with_bias = dedpo::onednn_matmul_transposed(lhs, rhs, bias);
    EXPECT_LE((with_bias.to(at::kDouble) - want - bias.to(at::kDouble)).abs().max().item<double>(), 1e-4) << what;
  }
}
