#include "dedpo/sd/geglu.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <algorithm>
#include <vector>

#include "avx512_kernels.hpp"
#include "geglu_kernels.hpp"

namespace dedpo::sd {

namespace {

// Rows per task: about 4,096 output elements, enough to pay for a thread's wake-up and few enough
// that sdxl_small's smallest feed-forward (128 rows of 1,024 at one pair) splits over two threads.
int64_t rows_per_task(int64_t n) { return std::max<int64_t>(1, 4096 / n); }

class Geglu : public torch::autograd::Function<Geglu> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& projected) {
    const at::Tensor x = projected.contiguous();
    const int64_t n = x.size(-1) / 2, rows = x.numel() / (2 * n);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = n;
    at::Tensor out = at::empty(shape, x.options());
    const float* in = x.data_ptr<float>();
    float* y = out.data_ptr<float>();
    at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
      avx512::geglu_forward(in + begin * 2 * n, end - begin, n, y + begin * n);
    });
    ctx->save_for_backward({x});
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor dout = grads[0].contiguous();
    const int64_t n = x.size(-1) / 2, rows = x.numel() / (2 * n);
    at::Tensor dx = at::empty_like(x);
    const float* in = x.data_ptr<float>();
    const float* dy = dout.data_ptr<float>();
    float* out = dx.data_ptr<float>();
    at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
      avx512::geglu_backward(in + begin * 2 * n, dy + begin * n, end - begin, n, out + begin * 2 * n);
    });
    return {dx};
  }
};

}  // namespace

bool geglu_applies(const at::Tensor& x) {
  return avx512_kernels_run_here() && x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 1 &&
         x.size(-1) % 2 == 0 && x.numel() > 0;
}

at::Tensor geglu(const at::Tensor& x) {
  TORCH_CHECK(geglu_applies(x), "geglu: an input it does not serve");
  return Geglu::apply(x);
}

}  // namespace dedpo::sd
