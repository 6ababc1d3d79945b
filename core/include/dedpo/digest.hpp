#pragma once
// Stable digests for cache keys and file names: FNV-1a 64, the same across builds and platforms
// (unlike std::hash), written as 16 hex digits.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include <ATen/core/Tensor.h>

namespace dedpo {

// FNV-1a 64 fed piece by piece: Digest d; d.add(a); d.add(b); d.hex().
class Digest {
 public:
  void add(const void* data, std::size_t size);
  void add(std::string_view text) { add(text.data(), text.size()); }
  // The tensor's bytes as stored (contiguous, on the CPU): the same values give the same digest.
  void add(const at::Tensor& tensor);
  std::uint64_t value() const { return hash_; }
  std::string hex() const;

 private:
  // dedpo's offset basis since its first cache keys (not the published 14695981039346656037):
  // kept so that caches written before stay valid.
  std::uint64_t hash_ = 1469598103934665603ull;
};

std::string digest(std::string_view text);         // Digest of the text, as hex
std::string tensor_digest(const at::Tensor& tensor);  // Digest of the tensor's bytes, as hex
std::string file_digest(const std::filesystem::path& file);  // Digest of the file's bytes; Error when unreadable

}  // namespace dedpo
