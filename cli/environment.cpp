#include "environment.hpp"

#include <fstream>
#include <set>
#include <string>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "dedpo/host/accelerator.hpp"
#include "dedpo/host/allocator_policy.hpp"

namespace dedpo::cli {

namespace {

// Paths of the shared libraries mapped into this process whose file name starts with one of
// `prefixes` (read from /proc/self/maps: what the dynamic loader really chose, not what the build
// asked for).
std::set<std::string> loaded_libraries(std::initializer_list<std::string_view> prefixes) {
  std::set<std::string> found;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const std::size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string file = path.substr(path.rfind('/') + 1);
    for (std::string_view prefix : prefixes) {
      if (file.starts_with(prefix)) found.insert(path);
    }
  }
  return found;
}

std::string yes_no(bool value) { return value ? "yes" : "no"; }

}  // namespace

void print_environment(std::ostream& out) {
  out << "LibTorch: " << TORCH_VERSION << "\n";
  const auto libraries = loaded_libraries({"libtorch_cpu.so", "libtorch_cuda.so", "libc10_cuda.so", "libcudart.so"});
  bool cuda_build = false;
  for (const std::string& path : libraries) cuda_build = cuda_build || path.find("libtorch_cuda.so") != std::string::npos;
  out << "CUDA build: " << yes_no(cuda_build) << "\n";
  for (const std::string& path : libraries) out << "loaded: " << path << "\n";
  const bool cuda = torch::cuda::is_available();
  out << "CUDA devices: " << (cuda ? std::to_string(torch::cuda::device_count()) : std::string("none")) << "\n";
  const dedpo::CpuFeatures cpu = dedpo::cpu_features();
  out << "CPU: " << std::thread::hardware_concurrency() << " hardware threads, LibTorch uses "
      << at::get_num_threads() << "; AVX-512 " << yes_no(cpu.avx512) << ", AVX-512 BF16 "
      << yes_no(cpu.avx512_bf16) << ", AMX BF16 " << yes_no(cpu.amx_bf16) << "\n";
  const dedpo::ComputePath cpu_bf16 = dedpo::compute_path(c10::Device(c10::kCPU), true, cpu);
  out << "bf16 on the CPU: " << cpu_bf16.description << "\n";
  if (cpu.avx512_bf16 || cpu.amx_bf16) {
    const dedpo::CpuMatmulRates& rates = dedpo::cpu_matmul_rates();
    out << "CPU matmul rate (512^3): fp32 " << static_cast<long>(rates.fp32_gflops) << " GFLOP/s, bf16 "
        << static_cast<long>(rates.bf16_gflops) << " GFLOP/s\n";
  }
  if (!cpu_bf16.warning.empty()) out << "warning: " << cpu_bf16.warning << "\n";
  out << "allocator: " << dedpo::describe(dedpo::current_allocator_policy()) << "\n";
}

}  // namespace dedpo::cli
