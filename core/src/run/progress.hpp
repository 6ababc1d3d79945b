#pragma once
// The progress bar on stderr: steps, rate, ETA and loss; drawn only on a terminal.
#include <chrono>
#include <cstdint>

namespace dedpo {

class ProgressBar {
 public:
  ProgressBar(bool enabled, std::int64_t start, std::int64_t total);
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ~ProgressBar();
  void update(std::int64_t step, double loss);

 private:
  bool enabled_;
  std::int64_t start_step_, total_;
  std::chrono::steady_clock::time_point start_, last_{};
  bool drawn_ = false;
};

}  // namespace dedpo
