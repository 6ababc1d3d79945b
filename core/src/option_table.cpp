#include "option_table.hpp"

#include <sstream>
#include <vector>

#include "dedpo/host/registry.hpp"

namespace dedpo::detail {

std::string location(const toml::source_region& source) {
  if (!source.begin) return {};
  if (source.path && source.path->starts_with(kOverrideSource)) return *source.path + ": ";
  std::string file = source.path ? std::string(*source.path) : std::string("<text>");
  return file + ":" + std::to_string(source.begin.line) + ":" + std::to_string(source.begin.column) +
         ": ";
}

namespace {


std::string describe_node(const toml::node& node) {
  std::ostringstream out;
  switch (node.type()) {
    case toml::node_type::string: out << "string \"" << node.as_string()->get() << '"'; break;
    case toml::node_type::integer: out << "integer " << node.as_integer()->get(); break;
    case toml::node_type::floating_point: out << "number " << node.as_floating_point()->get(); break;
    case toml::node_type::boolean: out << "boolean " << (node.as_boolean()->get() ? "true" : "false"); break;
    case toml::node_type::table: out << "a table"; break;
    case toml::node_type::array: out << "an array"; break;
    default: out << "a date/time"; break;
  }
  return out.str();
}

std::string with_article(OptionType type) {
  return (type == OptionType::integer ? "an " : "a ") + std::string(to_string(type));
}

// Converts a TOML value to the option's declared type; false when the type does not fit.
bool convert(const toml::node& node, OptionType type, OptionValue& out) {
  switch (type) {
    case OptionType::boolean:
      if (auto* v = node.as_boolean()) return out = v->get(), true;
      return false;
    case OptionType::integer:
      if (auto* v = node.as_integer()) return out = v->get(), true;
      return false;
    case OptionType::real:
      if (auto* v = node.as_floating_point()) return out = v->get(), true;
      if (auto* v = node.as_integer()) return out = static_cast<double>(v->get()), true;
      return false;
    case OptionType::string:
      if (auto* v = node.as_string()) return out = v->get(), true;
      return false;
    case OptionType::real_or_string:
      if (auto* v = node.as_string()) return out = v->get(), true;
      return convert(node, OptionType::real, out);
  }
  return false;
}

}  // namespace

Options validate_table(const toml::table& table, std::span<const OptionSpec> schema,
                       const std::string& where, std::string_view skip) {
  // Checks made later (Options::fail: ranges, keywords) name the --set arguments among the values.
  std::string given;
  for (const auto& [key, node] : table) {
    const auto& path = node.source().path;
    if (path && path->starts_with(kOverrideSource)) given += (given.empty() ? "" : ", ") + *path;
  }
  Options options(given.empty() ? where : where + " (" + given + ")");
  std::vector<std::string> known;
  for (const OptionSpec& spec : schema) known.emplace_back(spec.name);

  for (const auto& [key, node] : table) {
    if (key.str() == skip) continue;
    const OptionSpec* spec = nullptr;
    for (const OptionSpec& candidate : schema) {
      if (key.str() == candidate.name) spec = &candidate;
    }
    if (!spec) {
      std::string message = location(key.source()) + where + ": unknown option '" + std::string(key.str()) + "'";
      std::string suggestion = closest_match(key.str(), known);
      if (!suggestion.empty()) {
        message += "; did you mean '" + suggestion + "'?";
      } else if (known.empty()) {
        message += "; this table takes no options";
      } else {
        std::string list;
        for (const std::string& name : known) list += (list.empty() ? "" : ", ") + name;
        message += "; known options: " + list;
      }
      throw Error(message);
    }
    OptionValue value;
    if (!convert(node, spec->type, value)) {
      throw Error(location(node) + where + ": option '" + spec->name + "' expects " +
                  with_article(spec->type) + ", got " + describe_node(node));
    }
    options.set(spec->name, std::move(value));
  }

  for (const OptionSpec& spec : schema) {
    if (options.contains(spec.name)) continue;
    if (!spec.default_value) {
      throw Error(where + ": required option '" + spec.name + "' (" + to_string(spec.type) +
                  ": " + spec.help + ") is missing");
    }
    toml::table parsed;
    try {
      parsed = toml::parse(std::string("v = ") + spec.default_value);
    } catch (const toml::parse_error&) {
    }
    const toml::node* node = parsed.get("v");
    OptionValue value;
    if (!node || !convert(*node, spec.type, value)) {
      throw Error(where + ": the plugin's default for option '" + spec.name + "' (" +
                  spec.default_value + ") is not a valid " + to_string(spec.type) +
                  " (a plugin bug)");
    }
    options.set(spec.name, std::move(value));
  }
  return options;
}

std::string options_to_toml(const Options& options) {
  std::string out;
  for (const auto& [name, value] : options.values()) out += name + " = " + to_string(value) + "\n";
  return out;
}

}  // namespace dedpo::detail
