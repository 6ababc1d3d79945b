#pragma once
// Reading diffusers / transformers config.json values with errors that name the file and key.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/files.hpp"

namespace dedpo::sd::detail {

class Config {
 public:
  Config(nlohmann::json json, std::string origin) : json_(std::move(json)), origin_(std::move(origin)) {
    if (!json_.is_object()) throw Error(fmt::format("config {}: not a JSON object", origin_));
  }
  static Config parse(const std::string& text, const std::string& origin) {
    try {
      return Config(nlohmann::json::parse(text), origin);
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("config {}: malformed JSON: {}", origin, e.what()));
    }
  }
  static std::string read_text(const std::filesystem::path& path) {
    try {
      return dedpo::read_file(path);
    } catch (const Error&) {
      throw Error(fmt::format("config '{}': cannot open", path.string()));
    }
  }
  static Config file(const std::filesystem::path& path) {
    return parse(read_text(path), "'" + path.string() + "'");
  }

  bool present(const std::string& key) const { return json_.contains(key); }  // possibly null
  bool has(const std::string& key) const { return json_.contains(key) && !json_[key].is_null(); }

  template <typename T>
  T get(const std::string& key) const {
    if (!has(key)) throw Error(fmt::format("config {}: missing key '{}'", origin_, key));
    return convert<T>(key, json_[key]);
  }
  template <typename T>
  T get(const std::string& key, T fallback) const {
    return has(key) ? convert<T>(key, json_[key]) : fallback;
  }
  // An int or a list of ints; an int is repeated `count` times.
  std::vector<int64_t> int_or_list(const std::string& key, std::size_t count) const {
    const auto& v = json_.at(key);
    if (v.is_number_integer()) return std::vector<int64_t>(count, v.get<int64_t>());
    auto list = convert<std::vector<int64_t>>(key, v);
    if (list.size() != count) {
      throw Error(fmt::format("config {}: '{}' has {} entries, expected {}", origin_, key, list.size(), count));
    }
    return list;
  }
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw Error(fmt::format("config {}: '{}' {}", origin_, key, why));
  }
  const std::string& origin() const { return origin_; }

 private:
  template <typename T>
  T convert(const std::string& key, const nlohmann::json& value) const {
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception&) {
      throw Error(fmt::format("config {}: '{}' has the wrong type ({})", origin_, key, value.dump()));
    }
  }
  nlohmann::json json_;
  std::string origin_;
};

// Refuses, before anything is allocated, a config whose model cannot fit in this machine's memory
// (a typo or a damaged config.json would otherwise allocate for minutes and fail deep in LibTorch).
// `parameters`: a lower bound of the model's parameter count (its largest weight matrices and
// kernels), held in float32 when the model is built.
inline void check_model_fits(const Config& cfg, const std::string& model, double parameters) {
  const double memory = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  const double bytes = 4 * parameters;
  if (bytes > memory) {
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    throw Error(fmt::format("config {}: describes a {} of at least {:.3g} parameters ({:.1f} GiB in float32), more "
                            "than this machine's {:.1f} GiB of memory; check its sizes (channels, layers, hidden sizes)",
                            cfg.origin(), model, parameters, bytes / kGiB, memory / kGiB));
  }
}

}  // namespace dedpo::sd::detail
