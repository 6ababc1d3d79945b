#include "dedpo/host/accelerator.hpp"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/stack.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/cpu/Utils.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace dedpo {

void apply_device_numerics(const DeviceNumerics& numerics) {
  at::Context& context = at::globalContext();
  if (numerics.deterministic) {
    // cuBLAS is deterministic only with a fixed workspace (NVIDIA's cuBLAS documentation, "Results
    // reproducibility"); a value the user set is kept.
    setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  }
  context.setDeterministicAlgorithms(numerics.deterministic, /*warn_only=*/false);
  context.setDeterministicCuDNN(numerics.deterministic);
  context.setBenchmarkCuDNN(false);
  context.setAllowTF32CuBLAS(numerics.tf32);
  context.setAllowTF32CuDNN(numerics.tf32);
}

namespace {

// The device's caching allocator, started: before the first tensor on the device (a run resets the
// peak first) it holds no per-device state and refuses every index ("Invalid device argument ...: did
// you call init?"). Its statistics are per index; "cuda" names none (-1) and means the current device.
c10::DeviceIndex started_allocator_index(c10::Device device) {
  at::globalContext().lazyInitDevice(device.type());
  return device.has_index() ? device.index() : at::accelerator::getDeviceIndex();
}

}  // namespace

std::optional<std::int64_t> peak_device_memory(c10::Device device) {
  if (!device.is_cuda()) return std::nullopt;
  const auto stats = c10::getDeviceAllocator(device.type())->getDeviceStats(started_allocator_index(device));
  return stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
}

void reset_peak_device_memory(c10::Device device) {
  if (device.is_cuda()) c10::getDeviceAllocator(device.type())->resetPeakStats(started_allocator_index(device));
}

CpuFeatures cpu_features() {
  const auto capabilities = at::cpu::get_cpu_capabilities();
  auto flag = [&](const std::string& key) {
    const auto it = capabilities.find(key);
    return it != capabilities.end() && it->second.isBool() && it->second.toBool();
  };
  bool amd = false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  amd = __builtin_cpu_is("amd");
#endif
  return {flag("avx512_f"), flag("avx512_bf16"), flag("amx_bf16"), amd};  // LibTorch's keys, not /proc/cpuinfo's
}

namespace {

// GFLOP/s of `matmul` on 512³ operands of `dtype`: median of 5 after 2 warm-ups. Constant
// operands: the timing does not depend on the values, and the global generator, whose stream a
// run's randomness follows, is left untouched.
double matmul_gflops(at::ScalarType dtype, at::Tensor (*matmul)(const at::Tensor&, const at::Tensor&)) {
  constexpr int64_t n = 512;
  const at::Tensor a = at::full({n, n}, 0.5, at::TensorOptions().dtype(dtype));
  const at::Tensor b = at::full({n, n}, 0.25, at::TensorOptions().dtype(dtype));
  std::vector<double> seconds;
  for (int rep = 0; rep < 7; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    matmul(a, b);
    if (rep >= 2) seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(seconds.begin(), seconds.begin() + 2, seconds.end());
  return 2.0 * n * n * n / (seconds[2] * 1e9);
}

at::Tensor aten_mm(const at::Tensor& a, const at::Tensor& b) { return at::mm(a, b); }
at::Tensor onednn_mm(const at::Tensor& a, const at::Tensor& b) { return onednn_matmul_transposed(a, b); }

}  // namespace

at::Tensor onednn_matmul_transposed(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack{a, b, bias.defined() ? c10::IValue(bias) : c10::IValue(), std::string("none"),
                          c10::List<std::optional<at::Scalar>>(), c10::IValue()};  // fused activation: none
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

const CpuMatmulRates& cpu_matmul_rates() {
  static const CpuMatmulRates rates = [] {
    at::NoGradGuard no_grad;
    double fp32 = matmul_gflops(at::kFloat, &aten_mm);
    if (at::hasMKLDNN()) fp32 = std::max(fp32, matmul_gflops(at::kFloat, &onednn_mm));
    return CpuMatmulRates{fp32, matmul_gflops(at::kBFloat16, &aten_mm)};
  }();
  return rates;
}

ComputePath compute_path(c10::Device device, bool bf16, const CpuFeatures& cpu,
                         const std::optional<CpuMatmulRates>& rates) {
  if (!bf16) return {"fp32"};
  if (!device.is_cpu()) return {"bf16 autocast on " + device.str()};
  if (!cpu.amx_bf16 && !cpu.avx512_bf16) {
    return {"bf16 autocast, emulated (this CPU has neither AVX-512 BF16 nor AMX)",
            "precision = \"bf16\" is emulated on this CPU; precision = \"fp32\" runs faster here"};
  }
  ComputePath path{cpu.amx_bf16 ? "bf16 autocast, AMX BF16" : "bf16 autocast, AVX-512 BF16 without AMX"};
  const CpuMatmulRates measured = rates ? *rates : cpu_matmul_rates();
  if (measured.bf16_gflops < measured.fp32_gflops) {
    path.warning = fmt::format(
        "precision = \"bf16\" is slower than fp32 on this CPU: a bf16 matmul reaches {:.0f} GFLOP/s against "
        "{:.0f} in fp32 (measured at start-up); precision = \"fp32\" runs faster here",
        measured.bf16_gflops, measured.fp32_gflops);
  }
  return path;
}

MemoryPeaks memory_peaks(c10::Device device) {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return {static_cast<std::int64_t>(usage.ru_maxrss) * 1024, peak_device_memory(device)};  // ru_maxrss: KiB
}

std::int64_t resident_bytes() {
  long pages_total = 0, pages_resident = 0;
  if (FILE* statm = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(statm, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
    std::fclose(statm);
  }
  return static_cast<std::int64_t>(pages_resident) * sysconf(_SC_PAGESIZE);
}

}  // namespace dedpo
