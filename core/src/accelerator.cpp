#include "dedpo/host/accelerator.hpp"

#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <sys/resource.h>

#include <cstdlib>

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

std::optional<std::int64_t> peak_device_memory(c10::Device device) {
  if (!device.is_cuda()) return std::nullopt;
  const auto stats = c10::getDeviceAllocator(device.type())->getDeviceStats(device.index());
  return stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
}

void reset_peak_device_memory(c10::Device device) {
  if (device.is_cuda()) c10::getDeviceAllocator(device.type())->resetPeakStats(device.index());
}

MemoryPeaks memory_peaks(c10::Device device) {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return {static_cast<std::int64_t>(usage.ru_maxrss) * 1024, peak_device_memory(device)};  // ru_maxrss: KiB
}

}  // namespace dedpo
