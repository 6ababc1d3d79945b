#include "dedpo/digest.hpp"

#include <cstdio>
#include <fstream>
#include <vector>

#include <ATen/ATen.h>

#include "dedpo/error.hpp"

namespace dedpo {

void Digest::add(const void* data, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < size; ++i) hash_ = (hash_ ^ bytes[i]) * 1099511628211ull;
}

void Digest::add(const at::Tensor& tensor) {
  const at::Tensor bytes = tensor.detach().to(at::kCPU).contiguous();
  add(bytes.data_ptr(), bytes.nbytes());
}

std::string Digest::hex() const {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash_));
  return text;
}

std::string digest(std::string_view text) {
  Digest d;
  d.add(text);
  return d.hex();
}

std::string tensor_digest(const at::Tensor& tensor) {
  Digest d;
  d.add(tensor);
  return d.hex();
}

std::string file_digest(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open to digest it");
  Digest d;
  std::vector<char> chunk(1 << 20);
  while (in.read(chunk.data(), static_cast<std::streamsize>(chunk.size())) || in.gcount() > 0) {
    d.add(chunk.data(), static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) throw Error(file.string() + ": read error while digesting it");
  return d.hex();
}

}  // namespace dedpo
