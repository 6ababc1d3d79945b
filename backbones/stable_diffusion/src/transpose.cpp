#include "dedpo/sd/transpose.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "dedpo/host/accelerator.hpp"
#include "transpose_kernels.hpp"

// at::parallel_for is inline: without OpenMP here it would run every task on the calling thread
// (cmake/DedpoDependencies.cmake compiles dedpo with LibTorch's OpenMP).
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "LibTorch runs on OpenMP: compile this file with -fopenmp, or at::parallel_for runs on one thread"
#endif

namespace dedpo::sd {

at::Tensor transposed_contiguous(const at::Tensor& m) {
  TORCH_CHECK(m.dim() == 2, "transposed_contiguous: expected a matrix, got ", m.dim(), " dimensions");
  static const bool cpu_has_kernel = avx512::transpose_compiled() && cpu_features().avx512;
  if (!cpu_has_kernel || !m.device().is_cpu() || m.scalar_type() != at::kFloat || m.stride(1) != 1 || m.numel() == 0) {
    return m.t().contiguous();
  }
  const int64_t rows = m.size(0), cols = m.size(1);
  at::Tensor out = at::empty({cols, rows}, m.options());
  const float* src = m.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  // Tasks of whole 16-column tiles (16·rows elements each), at least about 16,384 elements a task.
  const int64_t tiles = (cols + 15) / 16, tiles_per_task = std::max<int64_t>(1, 1024 / rows);
  at::parallel_for(0, tiles, tiles_per_task, [&](int64_t begin, int64_t end) {
    avx512::transpose(src, m.stride(0), rows, begin * 16, std::min(end * 16, cols), dst, rows);
  });
  return out;
}

}  // namespace dedpo::sd
