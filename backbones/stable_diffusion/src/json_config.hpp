#pragma once
// Reading diffusers / transformers config.json values with errors that name the file and key.
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
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
    if (std::optional<int64_t> n = integer(v)) return std::vector<int64_t>(count, *n);
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
  // An integer within int64_t, also one written as a float without a fraction (3.0). nlohmann's
  // get<int64_t>() casts any float, which is undefined behaviour beyond the range (1e300).
  static std::optional<int64_t> integer(const nlohmann::json& value) {
    if (value.is_number_unsigned()) {
      const auto n = value.get<uint64_t>();
      if (n > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<int64_t>(n);
    }
    if (value.is_number_integer()) return value.get<int64_t>();
    if (value.is_number_float()) {
      const double d = value.get<double>();
      // [-2^63, 2^63): the doubles that convert to int64_t.
      if (std::trunc(d) == d && d >= -0x1p63 && d < 0x1p63) return static_cast<int64_t>(d);
    }
    return std::nullopt;
  }
  template <typename T>
  T convert(const std::string& key, const nlohmann::json& value) const {
    auto wrong_type = [&] {
      return Error(fmt::format("config {}: '{}' has the wrong type ({})", origin_, key, value.dump()));
    };
    if constexpr (std::is_same_v<T, int64_t>) {
      if (std::optional<int64_t> n = integer(value)) return *n;
      throw wrong_type();
    } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
      if (!value.is_array()) throw wrong_type();
      std::vector<int64_t> list;
      for (const auto& item : value) {
        std::optional<int64_t> n = integer(item);
        if (!n) throw wrong_type();
        list.push_back(*n);
      }
      return list;
    } else {
      try {
        return value.get<T>();
      } catch (const nlohmann::json::exception&) {
        throw wrong_type();
      }
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
