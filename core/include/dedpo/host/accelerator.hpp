#pragma once
// Host side, not part of the plugin SDK. What a run asks of its device beyond placement: the
// numerics of its kernels (TF32, deterministic algorithms) and the caching allocator's peak.
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>

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

}  // namespace dedpo
