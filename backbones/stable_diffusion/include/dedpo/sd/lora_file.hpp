#pragma once
// LoRA adapter files in the two key formats the ecosystem reads (docs/interop.md):
//
//   diffusers  what `pipeline.save_lora_weights` writes and `pipeline.load_lora_weights` reads
//              (PEFT names): "unet.<module>.lora_A.weight" [r, in], "unet.<module>.lora_B.weight"
//              [out, r]; rank and alpha in the header's "lora_adapter_metadata" JSON ("unet.r",
//              "unet.lora_alpha"), which diffusers turns into the adapter's LoraConfig. Without it
//              diffusers takes alpha = rank, and so does load_lora_file().
//   kohya      what ComfyUI and A1111 read (kohya-ss sd-scripts): "lora_unet_<module, '.' -> '_'>
//              .lora_down.weight" [r, in], ".lora_up.weight" [out, r], ".alpha" (a scalar);
//              module paths of the diffusers UNet for SD1.x, of the original (SGM) UNet for SDXL
//              (input_blocks / middle_block / output_blocks). Without ".alpha", alpha = rank.
//
// Either way the tensors are stored as trained (the scale alpha / rank is not folded in), so
// rank, alpha and the tensors come back exactly.
#include <ATen/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "dedpo/sd/unet.hpp"

namespace dedpo::sd {

// One LoRA-adapted Linear of the UNet.
struct LoraLayer {
  std::string path;           // diffusers module path, e.g. "...attn1.to_q" or "...attn1.to_out.0"
  at::Tensor base;            // its frozen weight W0 [out, in]
  at::Tensor down;            // lora_A.weight [r, in]
  at::Tensor up;              // lora_B.weight [out, r]
};

enum class LoraFormat { diffusers, kohya };
// Which module paths kohya keys spell: the diffusers UNet's (SD1.x) or the original SGM UNet's (SDXL).
enum class KohyaNaming { diffusers, sgm };

// "lora_unet_..." of a diffusers module path; throws dedpo::Error for a module the SGM UNet has
// no counterpart for.
std::string kohya_lora_name(const std::string& path, KohyaNaming naming, const UNet2DConditionConfig& config);

void save_lora_file(const std::filesystem::path& file, const std::vector<LoraLayer>& layers, int64_t rank,
                    double alpha, LoraFormat format, KohyaNaming naming, const UNet2DConditionConfig& config);

// Reads a file of either format (told apart by its keys; kohya keys in either naming) into the
// down / up tensors of `layers`. Throws dedpo::Error naming the file when it is no LoRA file, when
// its rank or alpha differ from `rank` / `alpha`, when a tensor's shape differs, or with the keys
// missing (a layer of `layers` without adapter) and unexpected (an adapter of no layer of `layers`).
void load_lora_file(const std::filesystem::path& file, const std::vector<LoraLayer>& layers, int64_t rank,
                    double alpha, const UNet2DConditionConfig& config);

}  // namespace dedpo::sd
