#pragma once
// Autocast regions for the device a computation runs on (CPU or CUDA): mixed precision in a scope,
// restored on exit.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>

namespace dedpo {

struct AutocastState {
  bool enabled = false;
  at::ScalarType dtype = at::kBFloat16;

  static AutocastState current(c10::DeviceType device) {
    return {at::autocast::is_autocast_enabled(device), at::autocast::get_autocast_dtype(device)};
  }
  void apply(c10::DeviceType device) const {
    at::autocast::set_autocast_dtype(device, dtype);
    at::autocast::set_autocast_enabled(device, enabled);
  }
};

// Autocast to `dtype` on `device` for its lifetime (nothing when !enabled); clears the weight-cast
// cache on exit so that casts never outlive the region that made them.
class AutocastRegion {
 public:
  AutocastRegion(c10::DeviceType device, bool enabled, at::ScalarType dtype = at::kBFloat16)
      : device_(device), enabled_(enabled), previous_(AutocastState::current(device)) {
    if (enabled_) AutocastState{true, dtype}.apply(device_);
  }
  ~AutocastRegion() {
    if (!enabled_) return;
    previous_.apply(device_);
    at::autocast::clear_cache();
  }
  AutocastRegion(const AutocastRegion&) = delete;
  AutocastRegion& operator=(const AutocastRegion&) = delete;

 private:
  c10::DeviceType device_;
  bool enabled_;
  AutocastState previous_;
};

}  // namespace dedpo
