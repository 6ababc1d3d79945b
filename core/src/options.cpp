#include "dedpo/options.hpp"

#include <cmath>
#include <cstdio>

namespace dedpo {

const char* to_string(OptionType type) {
  switch (type) {
    case OptionType::boolean: return "boolean";
    case OptionType::integer: return "integer";
    case OptionType::real: return "number";
    case OptionType::string: return "string";
    case OptionType::real_or_string: return "number or string";
  }
  return "unknown";
}

std::string to_string(const OptionValue& value) {
  struct Printer {
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(std::int64_t v) const { return std::to_string(v); }
    std::string operator()(double v) const {
      if (std::isnan(v)) return "nan";
      if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
      char buffer[64];
      std::snprintf(buffer, sizeof buffer, "%.17g", v);
      std::string text = buffer;
      // Keep it a TOML float: 5000 -> 5000.0.
      if (text.find_first_of(".en") == std::string::npos) text += ".0";
      return text;
    }
    std::string operator()(const std::string& v) const {
      std::string out = "\"";
      for (char c : v) {
        if (c == '"' || c == '\\') out += '\\';
        if (c == '\n') {
          out += "\\n";
          continue;
        }
        out += c;
      }
      return out + "\"";
    }
  };
  return std::visit(Printer{}, value);
}

const OptionValue& Options::at(std::string_view name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    throw Error(where_ + ": option '" + std::string(name) +
                "' is not in this plugin's schema (a plugin bug: it reads an option it does not "
                "declare)");
  }
  return it->second;
}

bool Options::boolean(std::string_view name) const {
  if (auto* v = std::get_if<bool>(&at(name))) return *v;
  fail(name, "expected a boolean, got " + to_string(at(name)));
}

std::int64_t Options::integer(std::string_view name) const {
  if (auto* v = std::get_if<std::int64_t>(&at(name))) return *v;
  fail(name, "expected an integer, got " + to_string(at(name)));
}

double Options::real(std::string_view name) const {
  const OptionValue& value = at(name);
  if (auto* v = std::get_if<double>(&value)) return *v;
  if (auto* v = std::get_if<std::int64_t>(&value)) return static_cast<double>(*v);
  fail(name, "expected a number, got " + to_string(value));
}

const std::string& Options::string(std::string_view name) const {
  if (auto* v = std::get_if<std::string>(&at(name))) return *v;
  fail(name, "expected a string, got " + to_string(at(name)));
}

bool Options::is_string(std::string_view name) const {
  return std::holds_alternative<std::string>(at(name));
}

bool Options::contains(std::string_view name) const { return values_.contains(name); }

void Options::set(std::string name, OptionValue value) {
  values_.insert_or_assign(std::move(name), std::move(value));
}

void Options::fail(std::string_view name, std::string_view problem) const {
  throw Error((where_.empty() ? std::string("options") : where_) + ": option '" +
              std::string(name) + "': " + std::string(problem));
}

}  // namespace dedpo
