#pragma once
// Image files for plugins and the core: decoding (PNG, JPEG, BMP, ...; stb_image) and PNG
// writing. Images are uint8 tensors [H, W, 3] (RGB, channels last) on the CPU.
#include <filesystem>
#include <string>
#include <string_view>

#include <ATen/core/Tensor.h>

namespace dedpo {

// Decodes an encoded image (the bytes of a file); grey and RGBA become RGB (alpha dropped).
// `what` names the source in errors ("pairs.jsonl line 3: image_a 'x.png'").
at::Tensor decode_image(std::string_view bytes, const std::string& what);

// What keeps `file` from being read as an image ("image file not found", "a folder, not an image
// file", "a FIFO (named pipe), not an image file", ...); empty for a regular file.
std::string image_file_problem(const std::filesystem::path& file);

// Reads and decodes `file`. Errors name the file and say whether it is missing or not an image.
at::Tensor read_image(const std::filesystem::path& file);

// Encodes uint8 [H, W, 3] (or [H, W, 1|4]) as PNG bytes.
std::string encode_png(const at::Tensor& image);

// Writes `image` as a PNG file atomically; missing folders are created.
void write_png(const std::filesystem::path& file, const at::Tensor& image);

}  // namespace dedpo
