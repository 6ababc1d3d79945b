#pragma once
// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
// 8-byte little-endian header length N, N bytes of JSON {key: {dtype, shape, data_offsets}, ...,
// "__metadata__": {string: string}}, then the raw little-endian tensor data. Offsets are relative
// to the end of the header. Every failure throws dedpo::Error naming the file (and the key).
//
//   dedpo::safetensors::File file("unet/weights.safetensors");   // memory-mapped
//   at::Tensor w = file.get("conv_in.weight");                    // a copy, owns its memory
//   dedpo::safetensors::load_into(unet, "unet/weights.safetensors");
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace dedpo::safetensors {

// One entry of the header.
struct TensorInfo {
  std::string dtype;            // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  std::size_t begin = 0;        // data_offsets, relative to the data section
  std::size_t end = 0;
};

// A memory-mapped safetensors file; the header is validated on opening.
class File {
 public:
  explicit File(const std::filesystem::path& path);
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Keys in the order of their data in the file.
  const std::vector<std::string>& keys() const { return keys_; }
  bool contains(const std::string& key) const { return infos_.count(key) != 0; }
  const TensorInfo& info(const std::string& key) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor copied out of the mapping (CPU, contiguous, dtype of the file).
  at::Tensor get(const std::string& key) const;

 private:
  std::filesystem::path path_;
  const unsigned char* map_ = nullptr;
  std::size_t size_ = 0;
  std::size_t data_start_ = 0;
  std::vector<std::string> keys_;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// Every tensor of a file, by name.
std::map<std::string, at::Tensor> load(const std::filesystem::path& path);

// Writes the tensors (any device / layout; stored contiguous from CPU) atomically: a temporary
// file beside `path` is written, flushed and renamed over it. Keys must be unique and non-empty.
void save(const std::filesystem::path& path,
          const std::vector<std::pair<std::string, at::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata = {});
void save(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata = {});

// Whether loaded floating-point weights are checked for NaN and infinity (one pass over them;
// skipping it only saves that time).
enum class FiniteCheck { check, skip };

// The one rule for copying stored tensors into a model's (load_into and the loaders of other
// layouts): the stored dtype must be the model's, or both are floating point and the cast is
// stated once (warn_casts); any other pair (an integer stored for a float, F32 for I64) is
// refused, as are non-finite values unless the check is skipped. Errors name `origin` and the key.
class WeightCopier {
 public:
  WeightCopier(std::string origin, FiniteCheck finite) : origin_(std::move(origin)), finite_(finite) {}
  void copy(const std::string& key, at::Tensor& target, const at::Tensor& stored);
  // One warning line on stderr listing the casts made, e.g. "F16 to F32 (12 tensors)"; none when
  // every dtype matched.
  void warn_casts() const;

 private:
  std::string origin_;
  FiniteCheck finite_;
  std::map<std::pair<std::string, std::string>, std::size_t> casts_;  // (stored, model) -> count
};

// Copies a file into `module`'s named_parameters() and named_buffers() by exact name, through a
// WeightCopier (dtype rule, finite check, casts stated). Every key of the file must be used and
// every parameter/buffer filled, else one dedpo::Error lists the missing and the unexpected keys;
// keys in `ignored_keys` may be absent or present (keys some writers of the format add, such as
// older CLIP checkpoints' position_ids). A shape mismatch names the key, the expected and the
// found shape.
void load_into(torch::nn::Module& module, const std::filesystem::path& path,
               const std::vector<std::string>& ignored_keys = {},
               FiniteCheck finite = FiniteCheck::check);

}  // namespace dedpo::safetensors
