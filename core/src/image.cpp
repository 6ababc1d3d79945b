#include "dedpo/image.hpp"

#include <cstdint>
#include <memory>

#include <ATen/ATen.h>

// static: the core must not export stb symbols that could clash with a plugin's own copy
#define STB_IMAGE_STATIC
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_NO_STDIO  // every read goes through decode_image() so errors can name their source
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>

#include "dedpo/error.hpp"
#include "dedpo/files.hpp"

namespace dedpo {

at::Tensor decode_image(std::string_view bytes, const std::string& what) {
  if (bytes.empty()) throw Error(what + ": empty file, not an image");
  int width = 0, height = 0, channels = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                            static_cast<int>(bytes.size()), &width, &height, &channels, 3),
      stbi_image_free);
  if (!pixels) {
    throw Error(what + ": cannot decode image (" + stbi_failure_reason() +
                "); expected PNG, JPEG, BMP, GIF, TGA or PNM");
  }
  return at::from_blob(pixels.get(), {height, width, 3}, at::kByte).clone();
}

std::string image_file_problem(const std::filesystem::path& file) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::file_status status = fs::status(file, error);
  switch (status.type()) {
    case fs::file_type::regular: return {};
    case fs::file_type::not_found: return "image file not found";
    case fs::file_type::directory: return "a folder, not an image file";
    case fs::file_type::fifo: return "a FIFO (named pipe), not an image file";
    case fs::file_type::socket: return "a socket, not an image file";
    case fs::file_type::block:
    case fs::file_type::character: return "a device, not an image file";
    default: return "cannot be read as a file (" + error.message() + ")";
  }
}

at::Tensor read_image(const std::filesystem::path& file) {
  if (const std::string problem = image_file_problem(file); !problem.empty()) {
    throw Error(file.string() + ": " + problem);
  }
  return decode_image(read_file(file), file.string());
}

std::string encode_png(const at::Tensor& image) {
  if (image.dim() != 3 || image.scalar_type() != at::kByte ||
      (image.size(2) != 1 && image.size(2) != 3 && image.size(2) != 4)) {
    throw Error("encode_png: expected a uint8 tensor [H, W, 1|3|4], got " +
                std::string(image.toString()) + " of " + std::to_string(image.dim()) +
                " dimensions");
  }
  const at::Tensor pixels = image.cpu().contiguous();
  const int height = static_cast<int>(pixels.size(0)), width = static_cast<int>(pixels.size(1));
  const int channels = static_cast<int>(pixels.size(2));
  std::string out;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data),
                                               static_cast<std::size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &out, width, height, channels, pixels.data_ptr<std::uint8_t>(),
                              width * channels)) {
    throw Error("encode_png: PNG encoding failed");
  }
  return out;
}

void write_png(const std::filesystem::path& file, const at::Tensor& image) {
  const std::string bytes = encode_png(image);
  if (!file.parent_path().empty()) std::filesystem::create_directories(file.parent_path());
  write_file_atomic(file, bytes);
}

}  // namespace dedpo
