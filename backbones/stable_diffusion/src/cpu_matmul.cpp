#include "dedpo/sd/cpu_matmul.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <vector>

#include "avx512_kernels.hpp"
#include "cpu_matmul_kernels.hpp"
#include "transpose_kernels.hpp"

namespace dedpo::sd {

namespace {

constexpr int64_t kPanel = avx512::kMatmulPanelColumns;
constexpr int64_t kTileRows = avx512::kMatmulTileRows;
// Rows of B per pass over a panel: a packed block of 512 × 64 floats (128 KiB) stays in L2 while
// every tile of the panel's rows reads it.
constexpr int64_t kDepthBlock = 512;

}  // namespace

bool cpu_matmul_kernel_applies(const at::Tensor& a, const at::Tensor& b) {
  return avx512_kernels_run_here() && a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0);
}

at::Tensor cpu_matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  if (!cpu_matmul_kernel_applies(a, b) || (bias.defined() && (bias.scalar_type() != at::kFloat || !bias.device().is_cpu()))) {
    return bias.defined() ? at::addmm(bias, a, b) : at::mm(a, b);
  }
  RECORD_FUNCTION("dedpo::cpu_matmul", std::vector<c10::IValue>({a, b}));  // the profiler's and the bench's FLOP count
  const int64_t rows = a.size(0), depth = a.size(1), cols = b.size(1);
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == cols), "matmul: bias of shape ", bias.sizes(),
              " for ", cols, " columns");
  at::Tensor out = at::empty({rows, cols}, a.options());
  if (rows == 0 || cols == 0) return out;
  if (depth == 0) return bias.defined() ? out.copy_(bias.expand({rows, cols})) : out.zero_();

  // B's rows are read in place when they are contiguous; B stored column by column (the transpose
  // of a weight) is packed per panel and depth block by the transpose kernel; anything else copied.
  const at::Tensor b_in = b.stride(1) == 1 || b.stride(0) == 1 ? b : b.contiguous();
  const bool packed = b_in.stride(1) != 1;
  const at::Tensor bias_in = bias.defined() ? bias.contiguous() : bias;
  const float* a_data = a.data_ptr<float>();
  const float* b_data = b_in.data_ptr<float>();
  const float* bias_data = bias_in.defined() ? bias_in.data_ptr<float>() : nullptr;
  float* c_data = out.data_ptr<float>();
  const int64_t a_row_stride = a.stride(0), a_col_stride = a.stride(1);
  const int64_t b_row_stride = b_in.stride(0), b_col_stride = b_in.stride(1);

  // Tasks: a panel of 64 columns and a run of its rows. A panel's rows are split only when there
  // are fewer than two panels per thread, since each task reads (or packs) its panel's B again.
  const int64_t panels = (cols + kPanel - 1) / kPanel, row_tiles = (rows + kTileRows - 1) / kTileRows;
  const int64_t splits = std::clamp<int64_t>((2 * at::get_num_threads() + panels - 1) / panels, 1, row_tiles);
  const int64_t tiles_per_split = (row_tiles + splits - 1) / splits;
  at::parallel_for(0, panels * splits, 1, [&](int64_t begin, int64_t end) {
    // The kernel reads and writes all 64 columns of a panel: a narrower last panel (cols not a
    // multiple of 64) runs on zero-padded copies of its B and bias and into a C of its own.
    std::vector<float> packed_b, narrow_c, narrow_bias;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t panel = task / splits, split = task % splits;
      const int64_t first_row = split * tiles_per_split * kTileRows;
      const int64_t task_rows = std::min(rows, first_row + tiles_per_split * kTileRows) - first_row;
      if (task_rows <= 0) continue;
      const int64_t first_col = panel * kPanel, panel_cols = std::min(kPanel, cols - first_col);
      const bool narrow = panel_cols < kPanel;
      float* c = c_data + first_row * cols + first_col;
      int64_t c_stride = cols;
      const float* panel_bias = bias_data ? bias_data + first_col : nullptr;
      if (narrow) {
        narrow_c.assign(task_rows * kPanel, 0.0f);
        c = narrow_c.data();
        c_stride = kPanel;
        if (panel_bias) {
          narrow_bias.assign(kPanel, 0.0f);
          std::copy(panel_bias, panel_bias + panel_cols, narrow_bias.begin());
          panel_bias = narrow_bias.data();
        }
      }
      for (int64_t k = 0; k < depth; k += kDepthBlock) {
        const int64_t block = std::min(kDepthBlock, depth - k);
        const float* b_block = b_data + k * b_row_stride + first_col * b_col_stride;
        int64_t b_stride = b_row_stride;
        if (packed || narrow) {
          packed_b.assign(block * kPanel, 0.0f);
          if (packed) {
            // B[k + i][first_col + j] = b_block[j·b_col_stride + i]: the panel's columns are rows
            // of the stored matrix, transposed into [block][64].
            avx512::transpose(b_block, b_col_stride, panel_cols, 0, block, packed_b.data(), kPanel);
          } else {
            for (int64_t i = 0; i < block; ++i) {
              std::copy(b_block + i * b_row_stride, b_block + i * b_row_stride + panel_cols, packed_b.begin() + i * kPanel);
            }
          }
          b_block = packed_b.data();
          b_stride = kPanel;
        }
        avx512::matmul_panel(a_data + first_row * a_row_stride + k * a_col_stride, a_row_stride, a_col_stride,
                             task_rows, block, b_block, b_stride, panel_bias, /*accumulate=*/k > 0, c, c_stride);
      }
      if (narrow) {
        for (int64_t i = 0; i < task_rows; ++i) {
          std::copy(narrow_c.begin() + i * kPanel, narrow_c.begin() + i * kPanel + panel_cols,
                    c_data + (first_row + i) * cols + first_col);
        }
      }
    }
  });
  return out;
}

}  // namespace dedpo::sd
