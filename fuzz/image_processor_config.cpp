// A CLIP scorer's preprocessor_config.json (transformers' CLIPImageProcessor settings). A config
// that loads preprocesses a small image whenever its sizes keep the work small.
#include <ATen/ATen.h>

#include <cstdint>

#include "dedpo/error.hpp"
#include "dedpo/scorers/image_processor.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = dedpo::fuzz::write_scratch_file(
      "preprocessor_config.json", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const auto config = dedpo::scorers::ClipImageProcessorConfig::from_file(file);
    if (config.shortest_edge <= 64 && config.crop_height <= 64 && config.crop_width <= 64) {
      const at::Tensor image = at::full({5, 7, 3}, 128, at::kByte);
      const at::Tensor pixels = dedpo::scorers::preprocess_image(image, config);
      if (!at::isfinite(pixels).all().item<bool>()) abort();  // a config must not make NaN / inf pixels
    }
  } catch (const dedpo::Error&) {
  }
  return 0;
}
