#include "dedpo/sd/transpose.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "avx512_kernels.hpp"
#include "transpose_kernels.hpp"

namespace dedpo::sd {

at::Tensor transposed_contiguous(const at::Tensor& m) {
  TORCH_CHECK(m.dim() == 2, "transposed_contiguous: expected a matrix, got ", m.dim(), " dimensions");
  if (!avx512_kernels_run_here() || !m.device().is_cpu() || m.scalar_type() != at::kFloat || m.stride(1) != 1 || m.numel() == 0) {
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
