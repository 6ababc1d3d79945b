#pragma once
// Host side, not part of the plugin SDK. What a run asks of its device beyond placement: the
// numerics of its kernels (TF32, deterministic algorithms) and the caching allocator's peak.
#include <ATen/core/Tensor.h>
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
// LibTorch's CPU capability query reports them, and its vendor (MKL, ATen's float32 matmul, runs a
// slower code path on AMD CPUs: dedpo/sd/cpu_linear.hpp).
struct CpuFeatures {
  bool avx512 = false;
  bool avx512_bf16 = false;  // VDPBF16PS: bf16 dot products at twice the fp32 rate
  bool amx_bf16 = false;     // AMX tiles
  bool amd = false;
};
CpuFeatures cpu_features();

// a [M, K], b [N, K], CPU float tensors -> a·bᵀ + bias [M, N] through oneDNN (ATen's
// mkldnn::_linear_pointwise on plain strided tensors), where at::mm would take MKL: on AMD CPUs
// MKL's float32 path runs at about half of oneDNN's rate. b may be row-major or column-major (a
// transposed view): oneDNN reads it in place, so a linear layer's backward passes Wᵀ and xᵀ
// uncopied (ATen makes a contiguous copy of a). Requires at::hasMKLDNN().
at::Tensor onednn_matmul_transposed(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias = {});

// The CPU's matmul rates in fp32 and bf16, GFLOP/s: a 512³ matmul, median of 5 after 2 warm-ups,
// measured once per process (about 20 ms) on the threads LibTorch has at the first call; fp32 is
// the faster of at::mm and onednn_matmul_transposed (on AMD CPUs with AVX-512 the float32 linear
// layers run dedpo_sd's cpu_matmul, as fast as oneDNN or a little faster on a UNet's shapes).
// The instruction set does not tell whether bf16 pays off: with AVX-512 BF16 and no AMX, bf16
// matmuls reached half the fp32 rate on a Xeon and about twice oneDNN's (four times MKL's) on an
// AMD EPYC (Zen 5) of this project's machines (docs/performance.md).
struct CpuMatmulRates {
  double fp32_gflops = 0;
  double bf16_gflops = 0;
};
const CpuMatmulRates& cpu_matmul_rates();

// Which path a run's compute takes on `device` with bf16 autocast on or off, said in the run log
// and results.json ("compute"). On a CPU `warning` says when bf16 runs slower than fp32 would:
// where it is emulated (neither AVX-512 BF16 nor AMX), or where the measured bf16 matmul rate is
// below the fp32 rate (`rates`, by default cpu_matmul_rates()). The run goes on either way (the
// numerics are those of bf16 on any machine).
struct ComputePath {
  std::string description;
  std::string warning;  // empty: nothing to warn about
};
ComputePath compute_path(c10::Device device, bool bf16, const CpuFeatures& cpu = cpu_features(),
                         const std::optional<CpuMatmulRates>& rates = std::nullopt);

}  // namespace dedpo
