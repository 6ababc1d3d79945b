#pragma once
// Host side, not part of the plugin SDK. What a run asks of its device beyond placement: the
// numerics of its kernels (TF32, deterministic algorithms) and the caching allocator's peak.
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>

namespace dedpo {

struct DeviceNumerics {
  // Deterministic kernels only (an op without one fails, naming itself), cuDNN without autotuning,
  // and cuBLAS with a fixed workspace: the same seed on the same GPU gives the same weights.
  bool deterministic = false;
  // TF32 tensor cores for float32 matmuls and convolutions on CUDA (about 3 decimal digits
  // instead of 7); off keeps results comparable with the CPU and the parity tests.
  bool tf32 = false;
};

// Sets them for the whole process; call before the first CUDA kernel runs (cuBLAS reads its
// workspace setting when it starts).
void apply_device_numerics(const DeviceNumerics& numerics);

// Peak bytes of tensors the caching allocator held on `device` since the last reset; none on the
// CPU (whose peak is the process's resident memory).
std::optional<std::int64_t> peak_device_memory(c10::Device device);
void reset_peak_device_memory(c10::Device device);

// What a run held at most: the process's resident memory (the host's peak) and, on an
// accelerator, the caching allocator's peak of tensors there.
struct MemoryPeaks {
  std::int64_t host_bytes = 0;
  std::optional<std::int64_t> device_bytes;
};
MemoryPeaks memory_peaks(c10::Device device);

// The process's resident memory now (/proc/self/statm), bytes.
std::int64_t resident_bytes();

// The CPU's instructions that carry bfloat16 matmuls and convolutions (oneDNN uses them), as
// LibTorch's CPU capability query reports them.
struct CpuFeatures {
  bool avx512 = false;
  bool avx512_bf16 = false;  // VDPBF16PS: bf16 dot products at twice the fp32 rate
  bool amx_bf16 = false;     // AMX tiles
};
CpuFeatures cpu_features();

// Which path a run's compute takes on `device` with bf16 autocast on or off, said in the run log
// and results.json ("compute"). On a CPU bf16 pays off only with AMX: with AVX-512 BF16 alone,
// oneDNN's bf16 matmuls and convolutions reach about half the fp32 rate (measured:
// docs/performance.md), and with neither every op is emulated in float32. There `warning` says
// so and the run goes on (the numerics are those of bf16 on any machine).
struct ComputePath {
  std::string description;
  std::string warning;  // empty: nothing to warn about
};
ComputePath compute_path(c10::Device device, bool bf16, const CpuFeatures& cpu = cpu_features());

}  // namespace dedpo
