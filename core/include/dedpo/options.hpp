#pragma once
// Plugin options: a schema each plugin declares (plain data, readable across the library
// boundary) and the validated values the core hands to the plugin's factory.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>

#include "dedpo/error.hpp"

namespace dedpo {

enum class OptionType : std::uint32_t {
  boolean,
  integer,
  real,            // accepts integers too
  string,
  real_or_string,  // a number, or a keyword such as "auto"
};

const char* to_string(OptionType type);

// One entry of a plugin's option schema. `default_value` is a TOML literal ("5000.0", "\"auto\"",
// "true"); nullptr makes the option required.
struct OptionSpec {
  const char* name;
  OptionType type;
  const char* default_value;
  const char* help;
};

using OptionValue = std::variant<bool, std::int64_t, double, std::string>;

// Validated option values: every key of the schema is present with a value of its declared type.
class Options {
 public:
  Options() = default;
  // `where` names the table the options came from, e.g. "experiment.toml [loss] (plugin 'dpo')".
  explicit Options(std::string where) : where_(std::move(where)) {}

  bool boolean(std::string_view name) const;
  std::int64_t integer(std::string_view name) const;
  double real(std::string_view name) const;
  const std::string& string(std::string_view name) const;
  bool is_string(std::string_view name) const;
  bool contains(std::string_view name) const;

  void set(std::string name, OptionValue value);
  const std::map<std::string, OptionValue, std::less<>>& values() const { return values_; }
  const std::string& where() const { return where_; }

  // Throws dedpo::Error "<where>: option '<name>': <problem>" for values a schema cannot express
  // (ranges, keywords).
  [[noreturn]] void fail(std::string_view name, std::string_view problem) const;

 private:
  const OptionValue& at(std::string_view name) const;

  std::string where_;
  std::map<std::string, OptionValue, std::less<>> values_;
};

std::string to_string(const OptionValue& value);  // as a TOML literal

}  // namespace dedpo
