#include "run/progress.hpp"

#include <unistd.h>

#include <iostream>
#include <string>

#include <fmt/format.h>

namespace dedpo {

ProgressBar::ProgressBar(bool enabled, std::int64_t start, std::int64_t total)
    : enabled_(enabled && ::isatty(2) != 0), start_step_(start), total_(total),
      start_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(std::int64_t step, double loss) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (step < total_ && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(step - start_step_) / elapsed : 0.0;
  double eta = rate > 0 ? static_cast<double>(total_ - step) / rate : 0.0;
  int width = 30;
  int filled = total_ > 0 ? static_cast<int>(width * step / total_) : width;
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(static_cast<std::size_t>(width), '.');
  auto eta_s = static_cast<long>(eta);
  std::cerr << fmt::format("\r[{}] {}/{}  {:.1f} steps/s  ETA {:02d}:{:02d}  loss {:.4g}  ", bar,
                           step, total_, rate, eta_s / 60, eta_s % 60, loss)
            << std::flush;
  drawn_ = true;
}

ProgressBar::~ProgressBar() {
  if (drawn_) std::cerr << "\n";
}

}  // namespace dedpo
