#pragma once
// CLIP's image preprocessing, as transformers' CLIPImageProcessor does it: resize so that the
// shortest side is `shortest_edge` (bicubic, antialiased), center crop, scale to [0, 1],
// normalise with CLIP's mean / std.
//
// Residual difference from transformers: it resizes with PIL (BICUBIC, a = -0.5, two separable
// passes on uint8 with rounding between them); here at::_upsample_bicubic2d_aa (the same kernel
// and support, computed in float) is rounded and clamped to uint8 values once at the end. Pixels
// can differ by 1/255 where PIL's intermediate rounding tips a value; no other step differs.
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <utility>

namespace dedpo::scorers {

struct ClipImageProcessorConfig {
  std::int64_t shortest_edge = 224;
  std::int64_t crop_height = 224;
  std::int64_t crop_width = 224;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};

  // transformers' preprocessor_config.json: size ({"shortest_edge": N} or N), crop_size
  // ({"height", "width"} or N), image_mean, image_std. Missing keys keep the defaults.
  static ClipImageProcessorConfig from_file(const std::filesystem::path& file);
  // The defaults with every side set to `image_size` (a model folder without a preprocessor file).
  static ClipImageProcessorConfig for_image_size(std::int64_t image_size);
};

// Height and width after resizing an h × w image so that its shortest side is `shortest_edge`; the
// long side is truncated, as transformers' get_resize_output_image_size does.
std::pair<std::int64_t, std::int64_t> resized_size(std::int64_t height, std::int64_t width,
                                                   std::int64_t shortest_edge);

// The resize step alone: uint8 [H, W, 3] -> float [3, h, w] holding whole values in [0, 255].
at::Tensor resize_shortest_edge(const at::Tensor& image, std::int64_t shortest_edge);

// The crop step alone on [C, H, W]: a centred crop_height × crop_width window, top / left offsets
// floor((H - crop) / 2); a smaller image is zero-padded first (centred, the extra row / column at
// the bottom / right), as transformers' center_crop does.
at::Tensor center_crop(const at::Tensor& image, std::int64_t crop_height, std::int64_t crop_width);

// The whole pipeline on one uint8 [H, W, 3] RGB image -> float [3, crop_height, crop_width].
at::Tensor preprocess_image(const at::Tensor& image, const ClipImageProcessorConfig& config);

}  // namespace dedpo::scorers
