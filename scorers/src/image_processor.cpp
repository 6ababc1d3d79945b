#include "dedpo/scorers/image_processor.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <fstream>
#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"

namespace dedpo::scorers {

namespace {

// Far above any CLIP-family processor (224 to 448); a bigger side is a broken file whose image
// would not fit in memory.
constexpr std::int64_t kMaxSide = 8192;

std::array<double, 3> three_numbers(const nlohmann::json& value, const std::string& key, const std::string& origin) {
  if (!value.is_array() || value.size() != 3 ||
      !std::all_of(value.begin(), value.end(), [](const nlohmann::json& v) { return v.is_number(); })) {
    throw Error(fmt::format("{}: '{}' must be a list of 3 numbers, got {}", origin, key, value.dump()));
  }
  const std::array<double, 3> numbers{value[0].get<double>(), value[1].get<double>(), value[2].get<double>()};
  if (!std::all_of(numbers.begin(), numbers.end(), [](double x) { return std::isfinite(x); })) {
    throw Error(fmt::format("{}: '{}' must hold finite numbers, got {}", origin, key, value.dump()));
  }
  return numbers;
}

}  // namespace

ClipImageProcessorConfig ClipImageProcessorConfig::from_file(const std::filesystem::path& file) {
  const std::string origin = "'" + file.string() + "'";
  std::ifstream in(file);
  if (!in) throw Error(origin + ": cannot open");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(origin + ": malformed JSON: " + e.what());
  }
  // A side is an integer in [1, kMaxSide], given alone or as the named member of an object.
  const auto side = [&](const char* key, const char* member) -> std::optional<std::int64_t> {
    if (!json.contains(key)) return std::nullopt;
    const nlohmann::json& given = json[key];
    const nlohmann::json* value = &given;
    if (given.is_object()) {
      if (!given.contains(member)) throw Error(fmt::format("{}: '{}' has no '{}'", origin, key, member));
      value = &given[member];
    }
    // Checked before any conversion to int64: a float or a huge value does not fit one.
    const bool in_range =
        value->is_number_unsigned() ? value->get<std::uint64_t>() - 1 < std::uint64_t{kMaxSide}
        : value->is_number_integer() ? value->get<std::int64_t>() >= 1 && value->get<std::int64_t>() <= kMaxSide
                                     : false;
    if (!in_range) {
      throw Error(fmt::format("{}: '{}' must be an integer in [1, {}] or an object with one, got {}", origin, key,
                              kMaxSide, given.dump()));
    }
    return value->get<std::int64_t>();
  };
  ClipImageProcessorConfig c;
  if (const auto edge = side("size", "shortest_edge")) c.shortest_edge = *edge;
  if (const auto height = side("crop_size", "height")) c.crop_height = *height;
  if (const auto width = side("crop_size", "width")) c.crop_width = *width;
  if (json.contains("image_mean")) c.image_mean = three_numbers(json["image_mean"], "image_mean", origin);
  if (json.contains("image_std")) c.image_std = three_numbers(json["image_std"], "image_std", origin);
  // Normalising divides by the std: a zero (or a denormal) makes every pixel infinite.
  if (!std::all_of(c.image_std.begin(), c.image_std.end(), [](double x) { return x >= 1e-6; })) {
    throw Error(origin + ": 'image_std' must hold numbers >= 1e-6, got " + json["image_std"].dump());
  }
  return c;
}

ClipImageProcessorConfig ClipImageProcessorConfig::for_image_size(std::int64_t image_size) {
  ClipImageProcessorConfig c;
  c.shortest_edge = c.crop_height = c.crop_width = image_size;
  return c;
}

std::pair<std::int64_t, std::int64_t> resized_size(std::int64_t height, std::int64_t width,
                                                   std::int64_t shortest_edge) {
  const bool tall = height >= width;
  const std::int64_t short_side = tall ? width : height, long_side = tall ? height : width;
  const auto new_long = static_cast<std::int64_t>(static_cast<double>(shortest_edge) * static_cast<double>(long_side) /
                                                  static_cast<double>(short_side));
  return tall ? std::pair{new_long, shortest_edge} : std::pair{shortest_edge, new_long};
}

at::Tensor resize_shortest_edge(const at::Tensor& image, std::int64_t shortest_edge) {
  if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != at::kByte) {
    throw Error(fmt::format("CLIP preprocessing: expected a uint8 [H, W, 3] image, got {} {}",
                            c10::toString(image.scalar_type()), c10::str(image.sizes())));
  }
  const at::Tensor chw = image.permute({2, 0, 1}).to(at::kFloat);  // [3, H, W]
  const auto [height, width] = resized_size(image.size(0), image.size(1), shortest_edge);
  if (height == image.size(0) && width == image.size(1)) return chw.contiguous();
  const at::Tensor resized = at::_upsample_bicubic2d_aa(chw.unsqueeze(0), {height, width}, /*align_corners=*/false);
  // PIL hands back uint8: round and clamp like it does.
  return resized.squeeze(0).round().clamp(0, 255);
}

at::Tensor center_crop(const at::Tensor& image, std::int64_t crop_height, std::int64_t crop_width) {
  at::Tensor padded = image;
  const std::int64_t height = image.size(1), width = image.size(2);
  if (height < crop_height || width < crop_width) {
    const std::int64_t pad_h = std::max<std::int64_t>(crop_height - height, 0);
    const std::int64_t pad_w = std::max<std::int64_t>(crop_width - width, 0);
    const std::int64_t top = (pad_h + 1) / 2, left = (pad_w + 1) / 2;
    padded = at::constant_pad_nd(image, {left, pad_w - left, top, pad_h - top}, 0);
  }
  const std::int64_t top = (padded.size(1) - crop_height) / 2, left = (padded.size(2) - crop_width) / 2;
  return padded.narrow(1, top, crop_height).narrow(2, left, crop_width);
}

at::Tensor preprocess_image(const at::Tensor& image, const ClipImageProcessorConfig& config) {
  const at::Tensor cropped = center_crop(resize_shortest_edge(image, config.shortest_edge), config.crop_height,
                                         config.crop_width);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor mean = at::tensor(std::vector<double>(config.image_mean.begin(), config.image_mean.end()), options);
  const at::Tensor std = at::tensor(std::vector<double>(config.image_std.begin(), config.image_std.end()), options);
  return ((cropped / 255.0 - mean.view({3, 1, 1})) / std.view({3, 1, 1})).contiguous();
}

}  // namespace dedpo::scorers
