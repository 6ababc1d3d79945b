#include "run/tensorboard.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <string>

#include <boost/crc.hpp>

#include "dedpo/error.hpp"
#include "proto/tensorboard_event.pb.h"

namespace dedpo {
namespace fs = std::filesystem;
namespace tb = dedpo::tensorboard;

namespace {

double seconds_since_epoch() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string host_name() {
  std::array<char, HOST_NAME_MAX + 1> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) return "localhost";
  return name.data();
}

// TFRecord stores integers little-endian.
template <class Integer>
std::string little_endian(Integer value) {
  std::string bytes(sizeof value, '\0');
  for (std::size_t i = 0; i < sizeof value; ++i) {
    bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  }
  return bytes;
}

constexpr std::string_view kPrefix = "events.out.tfevents.";

// The seconds field of a new event file's name. TensorBoard reads a folder's files in name order,
// so a session started within the second of the previous one is named a second later to still
// come after it.
long long file_seconds(const fs::path& dir) {
  long long seconds = static_cast<long long>(seconds_since_epoch());
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(kPrefix)) continue;
    try {
      seconds = std::max(seconds, std::stoll(name.substr(kPrefix.size())) + 1);
    } catch (const std::exception&) {  // not a number: no file of ours
    }
  }
  return seconds;
}

tb::Event event_at(std::int64_t step) {
  tb::Event event;
  event.set_wall_time(seconds_since_epoch());
  event.set_step(step);
  return event;
}

}  // namespace

std::uint32_t masked_crc32c(std::string_view bytes) {
  // CRC-32C (Castagnoli): polynomial 0x1EDC6F41, reflected, initial and final XOR all ones.
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(bytes.data(), bytes.size());
  const std::uint32_t value = crc.checksum();
  return ((value >> 15) | (value << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir, std::int64_t first_step) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw Error(dir.string() + ": cannot create the TensorBoard folder: " + error.message());
  }
  file_ = dir / (std::string(kPrefix) + std::to_string(file_seconds(dir)) + "." + host_name() +
                 "." + std::to_string(::getpid()));
  out_.open(file_, std::ios::binary | std::ios::app);
  if (!out_) throw Error(file_.string() + ": cannot open for writing");

  tb::Event version = event_at(first_step);
  version.set_file_version("brain.Event:2");  // the version whose readers honour session starts
  write_event(version.SerializeAsString());
  tb::Event start = event_at(first_step);
  start.mutable_session_log()->set_status(tb::SessionLog::START);
  write_event(start.SerializeAsString());
}

void TensorBoardWriter::scalars(std::int64_t step, const Figures& values) {
  tb::Event event = event_at(step);
  tb::Summary* summary = event.mutable_summary();
  for (const auto& [tag, value] : values) {
    tb::Summary::Value* entry = summary->add_value();
    entry->set_tag(tag);
    entry->set_simple_value(static_cast<float>(value));  // TensorBoard's scalars are float32
  }
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::images(std::int64_t step, const std::vector<TensorBoardImage>& images) {
  tb::Event event = event_at(step);
  tb::Summary* summary = event.mutable_summary();
  for (const TensorBoardImage& image : images) {
    tb::Summary::Value* entry = summary->add_value();
    entry->set_tag(image.tag);
    tb::Summary::Image* encoded = entry->mutable_image();
    encoded->set_height(static_cast<std::int32_t>(image.height));
    encoded->set_width(static_cast<std::int32_t>(image.width));
    encoded->set_colorspace(3);
    encoded->set_encoded_image_string(image.png);
  }
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::write_event(const std::string& serialized) {
  const std::string length = little_endian(static_cast<std::uint64_t>(serialized.size()));
  out_ << length << little_endian(masked_crc32c(length)) << serialized
       << little_endian(masked_crc32c(serialized));
  out_.flush();
  if (!out_) throw Error(file_.string() + ": cannot write TensorBoard events");
}

}  // namespace dedpo
