#pragma once
// Internal: validation of a TOML table against an option schema (shared by plugin options and
// the core's own tables).
#include <span>
#include <string>

#include <toml++/toml.h>

#include "dedpo/options.hpp"

namespace dedpo::detail {

// The source path of a `--set KEY=VALUE` override's key and value: "--set KEY=VALUE".
inline constexpr std::string_view kOverrideSource = "--set ";

// "file:line:column: " for a node that came from a file, "--set KEY=VALUE: " for one that an
// override gave, "" for one made by the program.
std::string location(const toml::source_region& source);
inline std::string location(const toml::node& node) { return location(node.source()); }

// Checks every key of `table` against `schema` (unknown key: did-you-mean; wrong type: expected
// type named), fills in defaults and reports missing required options. `skip` names a key that
// belongs to the core (e.g. "plugin") and is not an option.
Options validate_table(const toml::table& table, std::span<const OptionSpec> schema,
                       const std::string& where, std::string_view skip = {});

// The options as a TOML table body ("key = value" lines, schema order).
std::string options_to_toml(const Options& options);

}  // namespace dedpo::detail
