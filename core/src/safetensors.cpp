#include "dedpo/safetensors.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "dedpo/error.hpp"

namespace dedpo::safetensors {
namespace {

struct DtypeEntry {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeEntry kDtypes[] = {
    {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
    {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
    {"U8", at::kByte},    {"BOOL", at::kBool},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& entry : kDtypes) {
    if (name == entry.name) return &entry;
  }
  return nullptr;
}

std::string dtype_name(at::ScalarType type) {
  for (const auto& entry : kDtypes) {
    if (entry.type == type) return entry.name;
  }
  throw Error(fmt::format("safetensors: cannot store tensors of dtype {}", c10::toString(type)));
}

std::string shape_string(at::IntArrayRef shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string prefix(const std::filesystem::path& path) {
  return fmt::format("safetensors file '{}'", path.string());
}

uint64_t read_le64(const unsigned char* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

std::string list_keys(const std::vector<std::string>& keys) {
  constexpr std::size_t kShown = 20;
  std::string out;
  for (std::size_t i = 0; i < keys.size() && i < kShown; ++i) {
    if (i) out += ", ";
    out += keys[i];
  }
  if (keys.size() > kShown) out += fmt::format(", ... and {} more", keys.size() - kShown);
  return out;
}

}  // namespace

File::File(const std::filesystem::path& path) : path_(path) {
  const std::string where = prefix(path);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", where, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw Error(fmt::format("{}: cannot stat: {}", where, std::strerror(err)));
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw Error(fmt::format("{}: truncated file: {} bytes, less than the 8-byte header length",
                            where, size_));
  }
  void* map = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw Error(fmt::format("{}: cannot map: {}", where, std::strerror(err)));
  map_ = static_cast<const unsigned char*>(map);

  try {
    const uint64_t header_size = read_le64(map_);
    if (header_size > size_ - 8) {
      throw Error(fmt::format("{}: header length {} goes beyond the end of the file ({} bytes)",
                              where, header_size, size_));
    }
    data_start_ = 8 + static_cast<std::size_t>(header_size);
    const std::size_t data_size = size_ - data_start_;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(map_ + 8, map_ + data_start_);
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("{}: malformed header: {}", where, e.what()));
    }
    if (!header.is_object()) throw Error(fmt::format("{}: malformed header: not a JSON object", where));

    for (const auto& [key, entry] : header.items()) {
      if (key == "__metadata__") {
        if (!entry.is_object()) {
          throw Error(fmt::format("{}: malformed header: __metadata__ is not an object", where));
        }
        for (const auto& [name, value] : entry.items()) {
          if (!value.is_string()) {
            throw Error(fmt::format("{}: malformed header: __metadata__ value '{}' is not a string",
                                    where, name));
          }
          metadata_[name] = value.get<std::string>();
        }
        continue;
      }
      const std::string at_key = fmt::format("{}: malformed header: tensor '{}'", where, key);
      if (!entry.is_object()) throw Error(at_key + " is not an object");
      if (!entry.contains("dtype") || !entry["dtype"].is_string()) {
        throw Error(at_key + " has no string 'dtype'");
      }
      if (!entry.contains("shape") || !entry["shape"].is_array()) {
        throw Error(at_key + " has no array 'shape'");
      }
      if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
          entry["data_offsets"].size() != 2 || !entry["data_offsets"][0].is_number_unsigned() ||
          !entry["data_offsets"][1].is_number_unsigned()) {
        throw Error(at_key + " has no 'data_offsets' [begin, end] of two non-negative integers");
      }
      TensorInfo info;
      info.dtype = entry["dtype"].get<std::string>();
      const DtypeEntry* dtype = find_dtype(info.dtype);
      if (!dtype) throw Error(fmt::format("{}: tensor '{}' has unknown dtype '{}'", where, key, info.dtype));
      uint64_t bytes = c10::elementSize(dtype->type);
      // The bytes of the shape without its zero sizes must fit too: LibTorch checks that product
      // for every tensor, also an empty one such as [0, 2^40, 2^40].
      uint64_t bytes_of_nonzero = bytes;
      for (const auto& dim : entry["shape"]) {
        if (!dim.is_number_unsigned()) throw Error(at_key + " has a shape entry that is not a non-negative integer");
        const uint64_t d = dim.get<uint64_t>();
        if (d > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(bytes, d, &bytes) ||
            (d != 0 && __builtin_mul_overflow(bytes_of_nonzero, d, &bytes_of_nonzero)) ||
            bytes_of_nonzero > static_cast<uint64_t>(INT64_MAX)) {
          throw Error(at_key + " has a shape too large");
        }
        info.shape.push_back(static_cast<int64_t>(d));
      }
      info.begin = entry["data_offsets"][0].get<uint64_t>();
      info.end = entry["data_offsets"][1].get<uint64_t>();
      if (info.begin > info.end) {
        throw Error(fmt::format("{}: tensor '{}' has bad data_offsets [{}, {}]: begin after end", where,
                                key, info.begin, info.end));
      }
      if (info.end - info.begin != bytes) {
        throw Error(fmt::format(
            "{}: tensor '{}' has bad data_offsets [{}, {}]: {} bytes, but dtype {} with shape {} needs {}",
            where, key, info.begin, info.end, info.end - info.begin, info.dtype,
            shape_string(info.shape), bytes));
      }
      if (info.end > data_size) {
        throw Error(fmt::format(
            "{}: truncated file: tensor '{}' ends at byte {} of the data section, which holds {} bytes",
            where, key, info.end, data_size));
      }
      keys_.push_back(key);
      infos_.emplace(key, std::move(info));
    }
    std::sort(keys_.begin(), keys_.end(), [&](const std::string& a, const std::string& b) {
      const auto& ia = infos_.at(a);
      const auto& ib = infos_.at(b);
      return ia.begin != ib.begin ? ia.begin < ib.begin : ia.end < ib.end;
    });
    for (std::size_t i = 1; i < keys_.size(); ++i) {
      const auto& prev = infos_.at(keys_[i - 1]);
      const auto& cur = infos_.at(keys_[i]);
      if (cur.begin < prev.end && cur.end > cur.begin) {
        throw Error(fmt::format("{}: tensor '{}' has bad data_offsets [{}, {}]: they overlap tensor '{}' [{}, {}]",
                                where, keys_[i], cur.begin, cur.end, keys_[i - 1], prev.begin, prev.end));
      }
    }
  } catch (...) {
    ::munmap(const_cast<unsigned char*>(map_), size_);
    map_ = nullptr;
    throw;
  }
}

File::~File() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), size_);
}

const TensorInfo& File::info(const std::string& key) const {
  auto it = infos_.find(key);
  if (it == infos_.end()) throw Error(fmt::format("{}: no tensor '{}'", prefix(path_), key));
  return it->second;
}

at::Tensor File::get(const std::string& key) const {
  const TensorInfo& meta = info(key);
  at::Tensor out = at::empty(meta.shape, at::TensorOptions().dtype(find_dtype(meta.dtype)->type));
  if (meta.end > meta.begin) std::memcpy(out.data_ptr(), map_ + data_start_ + meta.begin, meta.end - meta.begin);
  return out;
}

std::map<std::string, at::Tensor> load(const std::filesystem::path& path) {
  File file(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& key : file.keys()) out.emplace(key, file.get(key));
  return out;
}

void save(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  const std::string where = prefix(path);
  std::map<std::string, at::Tensor> sorted;
  for (const auto& [key, tensor] : tensors) {
    if (key.empty() || key == "__metadata__") throw Error(fmt::format("{}: invalid tensor key '{}'", where, key));
    if (!sorted.emplace(key, tensor.detach().to(at::kCPU).contiguous()).second) {
      throw Error(fmt::format("{}: duplicate tensor key '{}'", where, key));
    }
  }
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& [key, tensor] : sorted) {
    const std::size_t bytes = tensor.numel() * tensor.element_size();
    header[key] = {{"dtype", dtype_name(tensor.scalar_type())},
                   {"shape", tensor.sizes().vec()},
                   {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>((uint64_t{text.size()} >> (8 * i)) & 0xff);

  const std::filesystem::path temp = path.string() + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("{}: cannot create '{}': {}", where, temp.string(), std::strerror(errno)));
  auto write_all = [&](const void* data, std::size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        ::close(fd);
        std::filesystem::remove(temp);
        throw Error(fmt::format("{}: cannot write: {}", where, std::strerror(err)));
      }
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  };
  write_all(length, 8);
  write_all(text.data(), text.size());
  for (const auto& [key, tensor] : sorted) write_all(tensor.data_ptr(), tensor.numel() * tensor.element_size());
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    std::filesystem::remove(temp);
    throw Error(fmt::format("{}: cannot flush: {}", where, std::strerror(errno)));
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::filesystem::remove(temp);
    throw Error(fmt::format("{}: cannot rename '{}' over it: {}", where, temp.string(), ec.message()));
  }
}

void save(const std::filesystem::path& path, const std::map<std::string, at::Tensor>& tensors,
          const std::map<std::string, std::string>& metadata) {
  save(path, std::vector<std::pair<std::string, at::Tensor>>(tensors.begin(), tensors.end()), metadata);
}

void WeightCopier::copy(const std::string& key, at::Tensor& target, const at::Tensor& stored) {
  const at::ScalarType from = stored.scalar_type();
  const at::ScalarType to = target.scalar_type();
  if (from != to) {
    if (!at::isFloatingType(from) || !at::isFloatingType(to)) {
      throw Error(fmt::format("{}: tensor '{}' is stored as {}, but the model's is {}; only "
                              "floating-point dtypes convert into each other",
                              origin_, key, dtype_name(from), dtype_name(to)));
    }
    ++casts_[{dtype_name(from), dtype_name(to)}];
  }
  target.copy_(stored);
  if (finite_ == FiniteCheck::check && at::isFloatingType(to) &&
      !at::isfinite(target).all().item<bool>()) {
    const at::Tensor bad = at::logical_not(at::isfinite(target));
    throw Error(fmt::format("{}: tensor '{}' holds {} non-finite values (NaN or infinity) of {}; "
                            "the weights are damaged",
                            origin_, key, bad.sum().item<std::int64_t>(), target.numel()));
  }
}

void WeightCopier::warn_casts() const {
  if (casts_.empty()) return;
  std::string list;
  for (const auto& [types, count] : casts_) {
    list += fmt::format("{}{} to {} ({} tensor{})", list.empty() ? "" : ", ", types.first,
                        types.second, count, count == 1 ? "" : "s");
  }
  std::cerr << fmt::format("warning: {}: converted to the model's dtype: {}\n", origin_, list);
}

void load_into(torch::nn::Module& module, const std::filesystem::path& path,
               const std::vector<std::string>& ignored_keys, FiniteCheck finite) {
  File file(path);
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module.named_parameters(true)) targets.emplace(item.key(), item.value());
  for (const auto& item : module.named_buffers(true)) targets.emplace(item.key(), item.value());
  const std::set<std::string> ignored(ignored_keys.begin(), ignored_keys.end());

  std::vector<std::string> missing, unexpected;
  for (const auto& [key, tensor] : targets) {
    if (!file.contains(key) && !ignored.count(key)) missing.push_back(key);
  }
  std::vector<std::string> file_keys = file.keys();
  std::sort(file_keys.begin(), file_keys.end());
  for (const auto& key : file_keys) {
    if (!targets.count(key) && !ignored.count(key)) unexpected.push_back(key);
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string message = fmt::format("{} does not match the model:", prefix(path));
    if (!missing.empty()) message += fmt::format(" missing keys ({}): {}", missing.size(), list_keys(missing));
    if (!missing.empty() && !unexpected.empty()) message += ";";
    if (!unexpected.empty()) {
      message += fmt::format(" unexpected keys ({}): {}", unexpected.size(), list_keys(unexpected));
    }
    throw Error(message);
  }
  at::NoGradGuard no_grad;
  WeightCopier copier(prefix(path), finite);
  for (auto& [key, target] : targets) {
    if (!file.contains(key)) continue;  // an ignored key the file lacks
    const TensorInfo& meta = file.info(key);
    if (target.sizes() != at::IntArrayRef(meta.shape)) {
      throw Error(fmt::format("{}: tensor '{}' has shape {}, but the model expects {}", prefix(path), key,
                              shape_string(meta.shape), shape_string(target.sizes())));
    }
    copier.copy(key, target, file.get(key));
  }
  copier.warn_casts();
}

}  // namespace dedpo::safetensors
