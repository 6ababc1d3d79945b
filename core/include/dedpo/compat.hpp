#pragma once
// The few LibTorch calls whose spelling differs between LibTorch 1.13 (Debian) and 2.x.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/scaled_dot_product_attention.h>
#else
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#endif

#include <cmath>

namespace dedpo::compat {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU); }
inline at::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_dtype(at::kCPU); }
inline void set_cpu_autocast(bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_dtype(at::kCPU, dtype);
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
}
#else
inline bool cpu_autocast_enabled() { return at::autocast::is_cpu_enabled(); }
inline at::ScalarType cpu_autocast_dtype() { return at::autocast::get_autocast_cpu_dtype(); }
inline void set_cpu_autocast(bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_cpu_dtype(dtype);
  at::autocast::set_cpu_enabled(enabled);
}
#endif

// softmax(q·kᵀ/√D + mask)·v per head. q: [B, H, Sq, D]; k, v: [B, H, Sk, D]; mask: undefined or an
// additive float mask broadcastable to [B, H, Sq, Sk] -> [B, H, Sq, D]. LibTorch 2.x runs its fused
// kernel (flash / memory-efficient on CUDA, flash on CPU from 2.1), which never materialises the
// scores; 1.13 has no public one (its private at::_scaled_dot_product_attention is a composite of
// the same matmuls), so it is spelled out there.
inline at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask = {}) {
#if TORCH_VERSION_MAJOR >= 2
  c10::optional<at::Tensor> attn_mask;
  if (mask.defined()) attn_mask = mask.to(q.scalar_type());  // a float mask must match q's dtype (autocast)
  return at::scaled_dot_product_attention(q, k, v, attn_mask);
#else
  // Scaling q (Sq·D values) costs less than scaling the Sq·Sk scores.
  at::Tensor scores = at::matmul(q * (1.0 / std::sqrt(static_cast<double>(q.size(-1)))), k.transpose(-2, -1));
  if (mask.defined()) scores = scores + mask;
  return at::matmul(at::softmax(scores, -1), v);
#endif
}

// Enables CPU autocast to `dtype` for its lifetime (no-op when !enabled); clears the cast cache.
class CpuAutocast {
 public:
  CpuAutocast(bool enabled, at::ScalarType dtype) : enabled_(enabled) {
    if (enabled_) {
      previous_ = cpu_autocast_enabled();
      set_cpu_autocast(true, dtype);
    }
  }
  ~CpuAutocast() {
    if (enabled_) {
      set_cpu_autocast(previous_, at::kBFloat16);
      at::autocast::clear_cache();
    }
  }
  CpuAutocast(const CpuAutocast&) = delete;
  CpuAutocast& operator=(const CpuAutocast&) = delete;

 private:
  bool enabled_;
  bool previous_ = false;
};

}  // namespace dedpo::compat
