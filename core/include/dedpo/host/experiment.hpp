#pragma once
// An experiment is a TOML file: core tables ([run], [train], [eval], [init], [log], [report],
// [launcher], [plugins]) validated into typed settings (dedpo/host/settings.hpp), and one table per plugin slot
// naming `plugin = "..."` plus that plugin's options. `base = "other.toml"` inherits (deep merge, relative to the file);
// overrides `a.b=value` apply last.
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dedpo/host/settings.hpp"
#include "dedpo/options.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/host/registry.hpp"

namespace dedpo {

struct PluginSlot {
  std::string table;          // "loss", "metrics[1]", ...
  PluginKind kind;
  std::string plugin;         // plugin name
  Options options;            // validated, defaults filled
};

// The experiment resolved once: typed core settings and validated plugin slots. Loading
// constructs every plugin it names once, so checks a schema cannot express (ranges, keywords)
// fail at load, before any run starts.
struct Experiment {
  std::filesystem::path file;   // absolute; empty for an experiment built from text
  std::string resolved_toml;    // fully merged and validated, defaults filled: written beside every run
  RunSettings run;              // [run]
  TrainSettings train;          // [train]
  std::string train_toml;       // [train] as resolved: what a learned annotator's trainings depend on
  EvalSettings eval;            // [eval]
  InitSettings init;            // [init]: where the backbone's initial weights come from
  LogSettings log;              // [log]
  ReportSettings report;        // [report]: a grid's report; not in resolved_toml (no run depends on it)
  LauncherSettings launcher;    // [launcher]: a grid's Slurm resources; not in resolved_toml either
  std::optional<PluginSlot> backbone, data, annotator, loss;
  std::vector<PluginSlot> metrics;  // [[metrics]]
  std::vector<std::filesystem::path> plugin_paths;  // [plugins] paths, absolute
  // [grid]: dotted key -> TOML array literal, and named cases; kept as text, expanded by `grid`.
  std::string grid_toml;
};

// One `a.b.c=value` override; the value is parsed as a TOML value, or taken as a bare string when
// it is not one (so --set loss.plugin=dpo works).
struct Override {
  std::string key;
  std::string value;
};
Override parse_override(std::string_view text);  // Error when there is no '=' or the key is empty

// Reads the file, resolves `base` chains and overrides, loads the plugin folders it names into
// `registry`, validates everything against the schemas and constructs each plugin once. Errors name file, line and column (TOML
// syntax), or file, table and key (schema).
Experiment load_experiment(const std::filesystem::path& file, std::span<const Override> overrides,
                           PluginRegistry& registry);
// The same from TOML text (`origin` names it in errors; relative paths resolve against `base_dir`).
Experiment load_experiment_text(std::string_view toml_text, std::string origin,
                                const std::filesystem::path& base_dir,
                                std::span<const Override> overrides, PluginRegistry& registry);

}  // namespace dedpo
