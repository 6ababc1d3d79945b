// The learning-rate schedule: warm-up, then constant, linear or cosine decay.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "dedpo/host/trainer.hpp"

namespace dedpo {

double scheduled_lr(double peak_lr, std::int64_t warmup_steps, std::int64_t total_steps,
                    LrSchedule schedule, std::int64_t step) {
  if (warmup_steps > 0 && step < warmup_steps) {
    return peak_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  std::int64_t decay_steps = std::max<std::int64_t>(1, total_steps - warmup_steps);
  double progress = std::clamp(
      static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  switch (schedule) {
    case LrSchedule::constant: return peak_lr;
    case LrSchedule::linear: return peak_lr * (1.0 - progress);
    case LrSchedule::cosine: return peak_lr * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  }
  throw Error("unknown learning-rate schedule");
}

}  // namespace dedpo
