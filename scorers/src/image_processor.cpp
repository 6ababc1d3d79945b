#include "dedpo/scorers/image_processor.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"

namespace dedpo::scorers {

namespace {

std::array<double, 3> three_numbers(const nlohmann::json& value, const std::string& key, const std::string& origin) {
  if (!value.is_array() || value.size() != 3) {
    throw Error(fmt::format("{}: '{}' must be a list of 3 numbers", origin, key));
  }
  return {value[0].get<double>(), value[1].get<double>(), value[2].get<double>()};
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
  ClipImageProcessorConfig c;
  try {
    if (json.contains("size")) {
      const auto& size = json["size"];
      c.shortest_edge = size.is_object() ? size.at("shortest_edge").get<std::int64_t>() : size.get<std::int64_t>();
    }
    if (json.contains("crop_size")) {
      const auto& crop = json["crop_size"];
      c.crop_height = crop.is_object() ? crop.at("height").get<std::int64_t>() : crop.get<std::int64_t>();
      c.crop_width = crop.is_object() ? crop.at("width").get<std::int64_t>() : crop.get<std::int64_t>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(origin + ": 'size' / 'crop_size': " + e.what());
  }
  if (json.contains("image_mean")) c.image_mean = three_numbers(json["image_mean"], "image_mean", origin);
  if (json.contains("image_std")) c.image_std = three_numbers(json["image_std"], "image_std", origin);
  if (c.shortest_edge < 1 || c.crop_height < 1 || c.crop_width < 1) {
    throw Error(origin + ": sizes must be positive");
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
