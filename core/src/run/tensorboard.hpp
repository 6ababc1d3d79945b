#pragma once
// TensorBoard event files: scalars and images as TensorBoard's Event records (protobuf messages in TFRecord
// framing), so `tensorboard --logdir` draws a run's curves. The messages stay inside
// tensorboard.cpp: callers hand over a step and named numbers.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "dedpo/figures.hpp"

namespace dedpo {

// An image for TensorBoard's image dashboard: PNG bytes and their size.
struct TensorBoardImage {
  std::string tag;
  std::string png;
  std::int64_t height = 0, width = 0;
};

class TensorBoardWriter {
 public:
  // Starts a new event file in `dir` (created when missing), events.out.tfevents.<seconds since
  // the epoch>.<host>.<pid>. Its first events are the file version and a session start at
  // `first_step`, from which TensorBoard drops what earlier files in the folder logged at that
  // step and after (a resumed run logs those steps again) and merges the rest.
  TensorBoardWriter(const std::filesystem::path& dir, std::int64_t first_step);

  // One event holding `values` at `step`, handed to the operating system before returning: a run
  // killed later keeps it.
  void scalars(std::int64_t step, const Figures& values);
  // One event holding `images` (RGB PNGs) at `step`, handed over as scalars() does.
  void images(std::int64_t step, const std::vector<TensorBoardImage>& images);

 private:
  void write_event(const std::string& serialized);

  std::filesystem::path file_;
  std::ofstream out_;
};

// TFRecord's checksum of `bytes`: their CRC-32C, rotated right by 15 bits plus 0xa282ead8.
std::uint32_t masked_crc32c(std::string_view bytes);

}  // namespace dedpo
