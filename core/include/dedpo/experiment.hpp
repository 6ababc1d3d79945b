#pragma once
// An experiment is a TOML file: core tables ([run], [train], [eval], [init], [plugins]) validated
// against the core's schemas below, and one table per plugin slot naming `plugin = "..."` plus
// that plugin's options. `base = "other.toml"` inherits (deep merge, relative to the file);
// overrides `a.b=value` apply last.
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dedpo/options.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/registry.hpp"

namespace dedpo {

// The core's own tables, with their schemas (shown by `dedpo plugins show run|train|eval|init`).
std::span<const OptionSpec> run_options_schema();
std::span<const OptionSpec> train_options_schema();
std::span<const OptionSpec> eval_options_schema();
std::span<const OptionSpec> init_options_schema();

struct PluginSlot {
  std::string table;          // "loss", "metrics[1]", ...
  PluginKind kind;
  std::string plugin;         // plugin name
  Options options;            // validated, defaults filled
  std::string options_toml;   // the same options as a TOML table body
};

struct Experiment {
  std::filesystem::path file;   // absolute; empty for an experiment built from text
  std::string resolved_toml;    // fully merged and validated, defaults filled: written beside every run
  Options run;                  // [run]
  Options train;                // [train]
  Options eval;                 // [eval]
  Options init;                 // [init]: where the backbone's initial weights come from
  std::optional<PluginSlot> backbone, data, annotator, loss;
  std::vector<PluginSlot> metrics;  // [[metrics]]
  std::vector<std::filesystem::path> plugin_paths;  // [plugins] paths, absolute
  // [grid]: dotted key -> TOML array literal, and named cases; kept as text, expanded by `grid`.
  std::string grid_toml;

  std::string name() const { return run.string("name"); }
  std::uint64_t seed() const { return static_cast<std::uint64_t>(run.integer("seed")); }
};

// One `a.b.c=value` override; the value is parsed as a TOML value, or taken as a bare string when
// it is not one (so --set loss.plugin=dpo works).
struct Override {
  std::string key;
  std::string value;
};
Override parse_override(std::string_view text);  // Error when there is no '=' or the key is empty

// Reads the file, resolves `base` chains and overrides, loads the plugin folders it names into
// `registry` and validates everything against the schemas. Errors name file, line and column (TOML
// syntax), or file, table and key (schema).
Experiment load_experiment(const std::filesystem::path& file, std::span<const Override> overrides,
                           PluginRegistry& registry);
// The same from TOML text (`origin` names it in errors; relative paths resolve against `base_dir`).
Experiment load_experiment_text(std::string_view toml_text, std::string origin,
                                const std::filesystem::path& base_dir,
                                std::span<const Override> overrides, PluginRegistry& registry);

// Constructs (and discards) every plugin the experiment names, so checks a schema cannot express
// (ranges, keywords) fail now rather than mid-run. Plugin constructors are cheap by contract:
// heavy work belongs in Backbone::prepare and the other methods.
void check_plugins(const Experiment& experiment, const PluginRegistry& registry);

// Stable hex digest (FNV-1a 64) of text: run and cache keys.
std::string digest(std::string_view text);

}  // namespace dedpo
