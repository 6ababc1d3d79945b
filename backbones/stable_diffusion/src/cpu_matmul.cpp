#include "dedpo/sd/cpu_matmul.hpp"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "avx512_kernels.hpp"
#include "cpu_matmul_kernels.hpp"
#include "panel_tasks.hpp"
#include "transpose_kernels.hpp"

namespace dedpo::sd {

namespace {

constexpr int64_t kPanel = avx512::kMatmulPanelColumns;
// Rows of B per pass over a panel: a packed block of 512 × 64 floats (128 KiB) stays in L2 while
// every tile of the panel's rows reads it.
constexpr int64_t kDepthBlock = 512;

// This thread's block of packed B (kDepthBlock × kPanel floats), kept for every later call: a
// fresh zero-filled vector per task cost a 128 KiB allocation and memset per call and thread.
float* thread_packed_block() {
  thread_local const std::unique_ptr<float[]> block(new float[kDepthBlock * kPanel]);
  return block.get();
}

}  // namespace

bool cpu_matmul_kernel_applies(const at::Tensor& a, const at::Tensor& b) {
  return avx512_kernels_run_here() && a.device().is_cpu() && b.device().is_cpu() && a.scalar_type() == at::kFloat &&
         b.scalar_type() == at::kFloat && a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0);
}

at::Tensor cpu_matmul(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  if (!cpu_matmul_kernel_applies(a, b) || (bias.defined() && (bias.scalar_type() != at::kFloat || !bias.device().is_cpu()))) {
    return bias.defined() ? at::addmm(bias, a, b) : at::mm(a, b);
  }
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  cpu_matmul_out(out, a, b, bias, at::Tensor(), /*accumulate=*/false);
  return out;
}

void cpu_matmul_out(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& column_bias,
                    const at::Tensor& row_bias, bool accumulate) {
  TORCH_CHECK(cpu_matmul_kernel_applies(a, b), "cpu_matmul_out: needs float32 CPU matrices a [M, K], b [K, N] on a CPU "
              "with AVX-512F, got ", a.sizes(), " and ", b.sizes());
  RECORD_FUNCTION("dedpo::cpu_matmul", std::vector<c10::IValue>({a, b}));  // the profiler's and the bench's FLOP count
  const int64_t rows = a.size(0), depth = a.size(1), cols = b.size(1);
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.device().is_cpu() && out.dim() == 2 && out.size(0) == rows &&
                  out.size(1) == cols && (out.stride(1) == 1 || cols <= 1),
              "cpu_matmul_out: the output must be a float32 CPU matrix [", rows, ", ", cols,
              "] with unit column stride, got ", out.sizes(), " with strides ", out.strides());
  auto check_bias = [](const at::Tensor& bias, int64_t size, const char* what) {
    TORCH_CHECK(!bias.defined() || (bias.scalar_type() == at::kFloat && bias.device().is_cpu() && bias.dim() == 1 &&
                                    bias.size(0) == size),
                "cpu_matmul: a ", what, " bias must be float32 of shape [", size, "], got ", bias.sizes());
  };
  check_bias(column_bias, cols, "column");
  check_bias(row_bias, rows, "row");
  TORCH_CHECK(!accumulate || (!column_bias.defined() && !row_bias.defined()),
              "cpu_matmul_out: a bias with accumulate = true (C += A·B adds no bias)");
  // Tasks write disjoint rows and columns of `out` while reading a and b.
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, a);
  at::assert_no_overlap(out, b);
  if (rows == 0 || cols == 0 || (depth == 0 && accumulate)) return;
  if (depth == 0) {
    out.zero_();
    if (column_bias.defined()) out.add_(column_bias);
    if (row_bias.defined()) out.add_(row_bias.unsqueeze(1));
    return;
  }

  // B's rows are read in place when they are contiguous; B stored column by column (the transpose
  // of a weight) is packed per panel and depth block by the transpose kernel; anything else copied.
  const at::Tensor b_in = b.stride(1) == 1 || b.stride(0) == 1 ? b : b.contiguous();
  const bool packed = b_in.stride(1) != 1;
  const at::Tensor column_bias_in = column_bias.defined() ? column_bias.contiguous() : column_bias;
  const at::Tensor row_bias_in = row_bias.defined() ? row_bias.contiguous() : row_bias;
  const float* a_data = a.data_ptr<float>();
  const float* b_data = b_in.data_ptr<float>();
  const float* column_bias_data = column_bias_in.defined() ? column_bias_in.data_ptr<float>() : nullptr;
  const float* row_bias_data = row_bias_in.defined() ? row_bias_in.data_ptr<float>() : nullptr;
  float* c_data = out.data_ptr<float>();
  const int64_t a_row_stride = a.stride(0), a_col_stride = a.stride(1);
  const int64_t b_row_stride = b_in.stride(0), b_col_stride = b_in.stride(1), c_row_stride = out.stride(0);

  for_each_panel_task(rows, cols, [&](const PanelTask& t) {
    // The kernel reads and writes all 64 columns of a panel: a narrower last panel (cols not a
    // multiple of 64) runs on zero-padded copies of its B and bias and into a C of its own.
    std::vector<float> narrow_c, narrow_bias;
    const int64_t first_row = t.first_row, task_rows = t.rows;
    const int64_t first_col = t.panel * kPanel, panel_cols = std::min(kPanel, cols - first_col);
    const bool narrow = panel_cols < kPanel;
    float* const task_c = c_data + first_row * c_row_stride + first_col;
    float* c = task_c;
    int64_t c_stride = c_row_stride;
    avx512::MatmulBias bias{column_bias_data ? column_bias_data + first_col : nullptr,
                            row_bias_data ? row_bias_data + first_row : nullptr};
    if (narrow) {
      narrow_c.assign(task_rows * kPanel, 0.0f);
      if (accumulate) {
        for (int64_t i = 0; i < task_rows; ++i) {
          std::copy(task_c + i * c_row_stride, task_c + i * c_row_stride + panel_cols, narrow_c.begin() + i * kPanel);
        }
      }
      c = narrow_c.data();
      c_stride = kPanel;
      if (bias.per_column) {
        narrow_bias.assign(kPanel, 0.0f);
        std::copy(bias.per_column, bias.per_column + panel_cols, narrow_bias.begin());
        bias.per_column = narrow_bias.data();
      }
    }
    for (int64_t k = 0; k < depth; k += kDepthBlock) {
      const int64_t block = std::min(kDepthBlock, depth - k);
      const float* b_block = b_data + k * b_row_stride + first_col * b_col_stride;
      int64_t b_stride = b_row_stride;
      if (packed || narrow) {
        float* const packed_b = thread_packed_block();
        if (narrow) std::fill(packed_b, packed_b + block * kPanel, 0.0f);  // columns its copy leaves unwritten
        if (packed) {
          // B[k + i][first_col + j] = b_block[j·b_col_stride + i]: the panel's columns are rows
          // of the stored matrix, transposed into [block][64].
          avx512::transpose(b_block, b_col_stride, panel_cols, 0, block, packed_b, kPanel);
        } else {
          for (int64_t i = 0; i < block; ++i) {
            std::copy(b_block + i * b_row_stride, b_block + i * b_row_stride + panel_cols, packed_b + i * kPanel);
          }
        }
        b_block = packed_b;
        b_stride = kPanel;
      }
      avx512::matmul_panel(a_data + first_row * a_row_stride + k * a_col_stride, a_row_stride, a_col_stride,
                           task_rows, block, b_block, b_stride, bias, /*accumulate=*/accumulate || k > 0, c, c_stride);
    }
    if (narrow) {
      for (int64_t i = 0; i < task_rows; ++i) {
        std::copy(narrow_c.begin() + i * kPanel, narrow_c.begin() + i * kPanel + panel_cols, task_c + i * c_row_stride);
      }
    }
  });
}

}  // namespace dedpo::sd
