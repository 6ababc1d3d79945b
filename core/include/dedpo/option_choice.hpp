#pragma once
// A string option read once into a typed value (an enum, a dtype, a flag): the one place that
// spells "expected one of ..." for core tables and plugins alike.
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "dedpo/options.hpp"

namespace dedpo {

// The value the string option `name` spells among `choices`; Options::fail lists them otherwise.
template <class T>
T read_choice(const Options& options, std::string_view name,
              std::initializer_list<std::pair<std::string_view, T>> choices) {
  const std::string& value = options.string(name);
  std::string list;
  for (const auto& [spelling, choice] : choices) {
    if (value == spelling) return choice;
    list += (list.empty() ? "\"" : ", \"") + std::string(spelling) + "\"";
  }
  options.fail(name, "expected one of " + list + ", got \"" + value + "\"");
}

}  // namespace dedpo
