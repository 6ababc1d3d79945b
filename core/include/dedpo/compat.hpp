#pragma once
// The few LibTorch calls whose spelling differs between LibTorch 1.13 (Debian) and 2.x.
#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace dedpo::compat {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
inline bool cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU); }
inline void set_cpu_autocast(bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_dtype(at::kCPU, dtype);
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
}
#else
inline bool cpu_autocast_enabled() { return at::autocast::is_cpu_enabled(); }
inline void set_cpu_autocast(bool enabled, at::ScalarType dtype) {
  at::autocast::set_autocast_cpu_dtype(dtype);
  at::autocast::set_cpu_enabled(enabled);
}
#endif

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
