#pragma once
// How cpu_matmul and cpu_linear_bf16 split a product over LibTorch's threads: a task is one panel
// of 64 columns of C and a run of its rows in whole 6-row tiles. A panel's rows are split only when
// there are fewer than two panels per thread, since each task reads (or packs) its panel's B again.
// The split never changes the order of a sum, so results are the same on any number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "avx512_kernels.hpp"  // the OpenMP build at::parallel_for needs
#include "cpu_matmul_kernels.hpp"

namespace dedpo::sd {

struct PanelTask {
  int64_t panel;      // columns [64·panel, 64·panel + 64)
  int64_t first_row;  // a multiple of 6
  int64_t rows;       // > 0
};

template <typename Fn>
void for_each_panel_task(int64_t rows, int64_t cols, Fn&& fn) {
  // Both kernels' tiles (cpu_matmul_kernels.hpp, cpu_matmul_bf16_kernels.hpp) are 6 × 64.
  constexpr int64_t kPanel = avx512::kMatmulPanelColumns, kTileRows = avx512::kMatmulTileRows;
  const int64_t panels = (cols + kPanel - 1) / kPanel, row_tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t splits = std::clamp<int64_t>((2 * at::get_num_threads() + panels - 1) / panels, 1, row_tiles);
  const int64_t tiles_per_split = (row_tiles + splits - 1) / splits;
  at::parallel_for(0, panels * splits, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first_row = task % splits * tiles_per_split * kTileRows;
      const int64_t task_rows = std::min(rows, first_row + tiles_per_split * kTileRows) - first_row;
      if (task_rows > 0) fn(PanelTask{task / splits, first_row, task_rows});
    }
  });
}

}  // namespace dedpo::sd
