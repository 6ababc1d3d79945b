// A model's config.json as the SD backbones and the CLIP scorers read it: the first byte picks the
// reader (UNet, VAE, CLIP text, CLIP vision, CLIP model, noise scheduler); the rest is the JSON.
#include <cstdint>
#include <string>

#include "dedpo/error.hpp"
#include "dedpo/sd/clip.hpp"
#include "dedpo/sd/clip_model.hpp"
#include "dedpo/sd/schedulers.hpp"
#include "dedpo/sd/unet.hpp"
#include "dedpo/sd/vae.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string json(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    switch (data[0] % 6) {
      case 0: dedpo::sd::UNet2DConditionConfig::from_json(json); break;
      case 1: dedpo::sd::AutoencoderKLConfig::from_json(json); break;
      case 2: dedpo::sd::ClipTextConfig::from_json(json); break;
      case 3: dedpo::sd::ClipVisionConfig::from_json(json); break;
      case 4: dedpo::sd::ClipModelConfig::from_json(json); break;
      default: dedpo::sd::SchedulerConfig::from_json(json); break;
    }
  } catch (const dedpo::Error&) {
  }
  return 0;
}
