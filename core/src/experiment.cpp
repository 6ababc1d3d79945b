#include "dedpo/host/experiment.hpp"

#include <algorithm>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "dedpo/files.hpp"
#include "dedpo/loss.hpp"
#include "option_table.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

struct SlotSpec {
  const char* table;
  PluginKind kind;
};
constexpr SlotSpec kSlots[] = {{"backbone", PluginKind::backbone},
                               {"data", PluginKind::dataset},
                               {"annotator", PluginKind::annotator},
                               {"loss", PluginKind::loss}};
constexpr const char* kMetricsTable = "metrics";
constexpr const char* kTopLevelKeys[] = {"base",     "vars",    "run",  "train",    "eval",
                                         "init",     "log",     "report",  "launcher", "plugins", "grid", "backbone",
                                         "data",     "annotator", "loss", "metrics"};

toml::table parse_text(std::string_view text, const std::string& origin) {
  try {
    return toml::parse(text, std::string_view(origin));
  } catch (const toml::parse_error& error) {
    throw Error(origin + ":" + std::to_string(error.source().begin.line) + ":" +
                std::to_string(error.source().begin.column) + ": TOML syntax error: " +
                std::string(error.description()));
  }
}

toml::table parse_file(const fs::path& file) {
  std::error_code error;
  if (fs::is_directory(file, error)) {
    throw Error(file.string() + ": is a folder, not an experiment file");
  }
  return parse_text(read_file(file), file.string());
}

// `over` wins; tables merge key by key, everything else (arrays included) is replaced. Nodes are
// moved, not copied: a copy would lose its source position, which error messages need.
void deep_merge(toml::table& into, toml::table&& over) {
  for (auto&& [key, node] : over) {
    toml::node* existing = into.get(key.str());
    if (existing && existing->is_table() && node.is_table()) {
      deep_merge(*existing->as_table(), std::move(*node.as_table()));
    } else {
      into.insert_or_assign(key, std::move(node));
    }
  }
}

std::vector<std::string> base_files(const toml::table& table, const std::string& origin) {
  std::vector<std::string> bases;
  const toml::node* node = table.get("base");
  if (!node) return bases;
  if (auto* text = node->as_string()) {
    bases.push_back(text->get());
  } else if (auto* array = node->as_array()) {
    for (const toml::node& item : *array) {
      if (!item.is_string()) {
        throw Error(detail::location(item) + "'base' expects file names (strings)");
      }
      bases.push_back(item.as_string()->get());
    }
  } else {
    throw Error(detail::location(*node) + origin +
                ": 'base' expects a file name or an array of file names");
  }
  return bases;
}

// A relative path means relative to the file that wrote it, also when that file is a base.
void resolve_paths(toml::table& table, const fs::path& base_dir) {
  auto resolve = [&](toml::node* node) {
    // A path made of variables is resolved after substitution, against the experiment file.
    if (node && node->is_string() && node->as_string()->get().find("${") == std::string::npos) {
      fs::path path = node->as_string()->get();
      if (!path.empty() && path.is_relative()) {
        *node->as_string() = fs::weakly_canonical(base_dir / path).string();
      }
    }
  };
  if (auto* run = table["run"].as_table()) resolve(run->get("output"));
  if (auto* init = table["init"].as_table()) {
    resolve(init->get("experiment"));
    resolve(init->get("weights"));
  }
  if (auto* plugins = table["plugins"].as_table()) {
    if (auto* paths = plugins->get_as<toml::array>("paths")) {
      for (toml::node& item : *paths) resolve(&item);
    }
  }
}

// Replaces ${name} in `text` by [vars] name ("$$" is a literal "$"). `node` locates errors.
std::string substitute_vars(const std::string& text, const toml::table& vars,
                            const toml::node& node, const std::string& origin) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '$') {
      out += text[i];
    } else if (i + 1 < text.size() && text[i + 1] == '$') {
      out += '$';
      ++i;
    } else if (i + 1 < text.size() && text[i + 1] == '{') {
      const std::size_t close = text.find('}', i + 2);
      if (close == std::string::npos) {
        throw Error(detail::location(node) + origin + ": unclosed '${' in \"" + text + "\"");
      }
      const std::string name = text.substr(i + 2, close - i - 2);
      const toml::node* value = vars.get(name);
      if (value == nullptr) {
        std::vector<std::string> names;
        std::string listed;
        for (const auto& [key, unused] : vars) {
          names.emplace_back(key.str());
          listed += (listed.empty() ? "" : ", ") + names.back();
        }
        std::string message = detail::location(node) + origin + ": unknown variable '${" + name +
                              "}'; [vars] defines " + (listed.empty() ? "none" : listed);
        std::string suggestion = closest_match(name, names);
        if (!suggestion.empty()) message += "; did you mean '" + suggestion + "'?";
        throw Error(message);
      }
      out += value->as_string()->get();
      i = close;
    } else {
      out += '$';
    }
  }
  return out;
}

// Applies [vars] to every string of the experiment (after bases and overrides, so a grid case or
// --set vars.NAME=... sees the final values), then drops the table: runs record plain values.
void apply_vars(toml::table& root, const std::string& origin) {
  toml::table vars;
  if (const toml::node* node = root.get("vars")) {
    if (!node->is_table()) {
      throw Error(detail::location(*node) + origin + ": 'vars' must be a table of strings");
    }
    vars = *node->as_table();
    for (const auto& [key, value] : vars) {
      if (!value.is_string()) {
        throw Error(detail::location(value) + origin + ": [vars] " + std::string(key.str()) +
                    ": expected a string");
      }
    }
    root.erase("vars");
  }
  auto visit = [&](auto&& self, toml::node& node) -> void {
    if (auto* text = node.as_string()) {
      if (text->get().find('$') != std::string::npos) {
        *text = substitute_vars(text->get(), vars, node, origin);
      }
    } else if (auto* table = node.as_table()) {
      for (auto&& [key, child] : *table) self(self, child);
    } else if (auto* array = node.as_array()) {
      for (toml::node& child : *array) self(self, child);
    }
  };
  for (auto&& [key, child] : root) visit(visit, child);
}

// The resolved configuration is read back through apply_vars (resume, eval, stale-run checks):
// a literal "$" is written as "$$" so that it reads back as itself.
void escape_dollars(toml::node& node) {
  if (auto* text = node.as_string()) {
    std::string escaped;
    for (char c : text->get()) escaped += c == '$' ? std::string("$$") : std::string(1, c);
    *text = escaped;
  } else if (auto* table = node.as_table()) {
    for (auto&& [key, child] : *table) escape_dollars(child);
  } else if (auto* array = node.as_array()) {
    for (toml::node& child : *array) escape_dollars(child);
  }
}

// Resolves the `base` chain: bases first (in order), then this table on top.
toml::table with_bases(toml::table table, const fs::path& base_dir, const std::string& origin,
                       std::vector<fs::path>& chain) {
  resolve_paths(table, base_dir);
  toml::table merged;
  for (const std::string& name : base_files(table, origin)) {
    fs::path file = fs::weakly_canonical(base_dir / name);
    if (std::find(chain.begin(), chain.end(), file) != chain.end()) {
      throw Error(origin + ": 'base' forms a cycle through " + file.string());
    }
    if (!fs::exists(file)) {
      throw Error(detail::location(*table.get("base")) + "base file '" + name +
                  "' does not exist (looked for " + file.string() + ")");
    }
    if (fs::is_directory(file)) {
      throw Error(detail::location(*table.get("base")) + "base '" + name + "' is a folder (" +
                  file.string() + "), not an experiment file");
    }
    chain.push_back(file);
    toml::table base = with_bases(parse_file(file), file.parent_path(), file.string(), chain);
    chain.pop_back();
    deep_merge(merged, std::move(base));
  }
  table.erase("base");
  deep_merge(merged, std::move(table));
  return merged;
}

void apply_override(toml::table& root, const Override& change) {
  std::vector<std::string> parts;
  std::string_view rest = change.key;
  while (true) {
    std::size_t dot = rest.find('.');
    parts.emplace_back(rest.substr(0, dot));
    if (dot == std::string_view::npos) break;
    rest = rest.substr(dot + 1);
  }
  toml::table* table = &root;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i].empty()) throw Error("--set " + change.key + ": empty key part");
    toml::node* next = table->get(parts[i]);
    if (!next) {
      table->insert(parts[i], toml::table{});
      next = table->get(parts[i]);
    }
    if (!next->is_table()) {
      throw Error("--set " + change.key + ": '" + parts[i] + "' is not a table");
    }
    table = next->as_table();
  }
  // A TOML value when it parses as one, else the text itself (so loss.plugin=dpo works). Parsed
  // with the argument as its source, so errors about the key or value name the --set argument.
  const std::string source = std::string(detail::kOverrideSource) + change.key + "=" + change.value;
  std::ostringstream key;
  key << toml::value<std::string>(parts.back());
  toml::table parsed;
  try {
    parsed = toml::parse(key.str() + " = " + change.value, source);
  } catch (const toml::parse_error&) {
    std::ostringstream text;
    text << toml::value<std::string>(change.value);
    parsed = toml::parse(key.str() + " = " + text.str(), source);
  }
  auto entry = parsed.begin();
  table->insert_or_assign(entry->first, std::move(entry->second));
}

// What the overrides changed about the plugin slots, for resolve().
struct OverrideEffects {
  std::set<std::string> switched_slots;  // slots whose plugin an override replaced
  std::set<std::string> set_keys;        // "slot.key" given by an override
};

// `slot.plugin=NAME` overrides go first, then the rest in order. A switch to another plugin
// keeps the slot's options from the files that the new plugin also declares (beta stays beta
// from dpo to dedpo); resolve() drops the others.
OverrideEffects apply_overrides(toml::table& root, std::span<const Override> overrides) {
  OverrideEffects effects;
  auto is_plugin_switch = [](const Override& change) {
    return change.key.ends_with(".plugin") &&
           change.key.find('.') == change.key.size() - std::string_view(".plugin").size();
  };
  for (const Override& change : overrides) {
    if (!is_plugin_switch(change)) continue;
    std::string slot = change.key.substr(0, change.key.find('.'));
    std::optional<std::string> before = root[slot]["plugin"].value<std::string>();
    apply_override(root, change);
    if (before != root[slot]["plugin"].value<std::string>()) effects.switched_slots.insert(slot);
  }
  for (const Override& change : overrides) {
    effects.set_keys.insert(change.key);
    if (!is_plugin_switch(change)) apply_override(root, change);
  }
  return effects;
}

const toml::table* optional_table(const toml::table& root, const char* key,
                                  const std::string& origin) {
  const toml::node* node = root.get(key);
  if (!node) return nullptr;
  if (!node->is_table()) {
    throw Error(detail::location(*node) + origin + ": '" + key + "' must be a table ([" + key +
                "])");
  }
  return node->as_table();
}

Options core_table(const toml::table& root, const char* key, std::span<const OptionSpec> schema,
                   const std::string& origin) {
  static const toml::table empty;
  const toml::table* table = optional_table(root, key, origin);
  return detail::validate_table(table ? *table : empty, schema, origin + " [" + key + "]");
}

PluginSlot resolve_slot(const toml::table& table, const std::string& table_name, PluginKind kind,
                        const std::string& origin, const PluginRegistry& registry) {
  const toml::node* plugin = table.get("plugin");
  std::string where = origin + " [" + table_name + "]";
  if (!plugin || !plugin->is_string()) {
    std::string known;
    for (const PluginEntry* entry : registry.plugins(kind)) {
      known += (known.empty() ? "" : ", ") + std::string(entry->descriptor->name);
    }
    throw Error((plugin ? detail::location(*plugin) : std::string()) + where +
                ": expected plugin = \"<name>\" naming a " + to_string(kind) + " plugin" +
                (known.empty() ? std::string() : " (known: " + known + ")"));
  }
  std::string name = plugin->as_string()->get();
  const PluginEntry* entry = registry.try_find(kind, name);
  if (!entry) {
    try {
      registry.find(kind, name);
    } catch (const Error& error) {
      throw Error(detail::location(*plugin) + where + ": " + error.what());
    }
  }
  where += " (" + std::string(to_string(kind)) + " '" + name + "')";
  Options options = detail::validate_table(
      table, std::span(entry->descriptor->options, entry->descriptor->option_count), where,
      "plugin");
  return {table_name, kind, name, options};
}

toml::table options_table(const Options& options) {
  return parse_text(detail::options_to_toml(options), "<resolved>");
}

fs::path absolute_from(const fs::path& base_dir, const std::string& path) {
  return fs::weakly_canonical(base_dir / path);
}

// After a plugin switch, drops the slot's options from the files that the new plugin does not
// declare; options given by overrides stay, so a typo there is still reported.
void drop_foreign_options(toml::table& table, const std::string& slot, PluginKind kind,
                          const OverrideEffects& effects, const PluginRegistry& registry) {
  if (!effects.switched_slots.contains(slot)) return;
  std::optional<std::string> name = table["plugin"].value<std::string>();
  const PluginEntry* entry = name ? registry.try_find(kind, *name) : nullptr;
  if (!entry) return;  // resolve_slot reports it
  std::vector<std::string> foreign;
  for (const auto& [key, node] : table) {
    std::string option(key.str());
    if (option == "plugin" || effects.set_keys.contains(slot + "." + option)) continue;
    bool declared = false;
    for (std::size_t i = 0; i < entry->descriptor->option_count; ++i) {
      declared = declared || option == entry->descriptor->options[i].name;
    }
    if (!declared) foreign.push_back(option);
  }
  for (const std::string& option : foreign) table.erase(option);
}

// Constructs (and discards) every plugin the experiment names, so the plugins' own checks fail
// at load. Plugin constructors are cheap by contract: heavy work belongs in Backbone::prepare and
// the other methods.
void construct_plugins(const Experiment& experiment, const PluginRegistry& registry) {
  for (const std::optional<PluginSlot>* slot :
       {&experiment.backbone, &experiment.data, &experiment.annotator, &experiment.loss}) {
    if (*slot) registry.create_plugin((*slot)->kind, (*slot)->plugin, (*slot)->options);
  }
  for (const PluginSlot& slot : experiment.metrics) {
    registry.create_plugin(slot.kind, slot.plugin, slot.options);
  }
}

void reject_unknown_top_level_keys(const toml::table& root, const std::string& origin) {
  std::vector<std::string> known(std::begin(kTopLevelKeys), std::end(kTopLevelKeys));
  for (const auto& [key, node] : root) {
    if (std::find(known.begin(), known.end(), key.str()) != known.end()) continue;
    std::string message = detail::location(key.source()) + origin + ": unknown table or key '" +
                          std::string(key.str()) + "'";
    std::string suggestion = closest_match(key.str(), known);
    if (!suggestion.empty()) message += "; did you mean '" + suggestion + "'?";
    throw Error(message);
  }
}

// The core tables as validated, before they become typed settings (the resolved config writes
// them back).
struct CoreTables {
  Options run, train, eval, init, log, report, launcher;
};

// Validates [run], [train], [eval], [init], [log], [report] and [launcher]. Paths are resolved against the
// experiment's folder once, here, so the resolved config means the same from any working
// directory.
CoreTables read_core_tables(const toml::table& root, const std::string& origin,
                            const fs::path& base_dir) {
  CoreTables tables{core_table(root, "run", run_options_schema(), origin),
                    core_table(root, "train", train_options_schema(), origin),
                    core_table(root, "eval", eval_options_schema(), origin),
                    core_table(root, "init", init_options_schema(), origin),
                    core_table(root, "log", log_options_schema(), origin),
                    core_table(root, "report", report_options_schema(), origin),
                    core_table(root, "launcher", launcher_options_schema(), origin)};
  tables.run.set("output", absolute_from(base_dir, tables.run.string("output")).string());
  for (const char* key : {"experiment", "weights"}) {
    const std::string& value = tables.init.string(key);
    if (value.empty()) continue;
    fs::path file = absolute_from(base_dir, value);
    if (!fs::exists(file)) {
      tables.init.fail(key, "file '" + value + "' does not exist (looked for " + file.string() + ")");
    }
    tables.init.set(key, file.string());
  }
  return tables;
}

// [plugins] paths: loads each folder or library into the registry; returns them, absolute.
std::vector<fs::path> load_plugin_paths(const toml::table& root, const std::string& origin,
                                        const fs::path& base_dir, PluginRegistry& registry) {
  std::vector<fs::path> loaded;
  const toml::table* plugins = optional_table(root, "plugins", origin);
  if (!plugins) return loaded;
  for (const auto& [key, node] : *plugins) {
    if (key.str() != "paths" || !node.is_array()) {
      throw Error(detail::location(node) + origin +
                  " [plugins]: expected only paths = [\"folder\", ...]");
    }
    for (const toml::node& item : *node.as_array()) {
      if (!item.is_string()) {
        throw Error(detail::location(item) + origin + " [plugins] paths: expected strings");
      }
      fs::path path = absolute_from(base_dir, item.as_string()->get());
      if (fs::is_directory(path)) {
        registry.load_directory(path);
      } else if (fs::exists(path)) {
        registry.load_library(path);
      } else {
        throw Error(detail::location(item) + origin + " [plugins] paths: '" +
                    item.as_string()->get() + "' does not exist (looked for " + path.string() +
                    ")");
      }
      loaded.push_back(path);
    }
  }
  return loaded;
}

// The plugin tables: one per slot and [[metrics]].
void resolve_plugin_slots(toml::table& root, const std::string& origin,
                          const OverrideEffects& effects, const PluginRegistry& registry,
                          Experiment& experiment) {
  for (const SlotSpec& slot : kSlots) {
    if (const toml::table* table = optional_table(root, slot.table, origin)) {
      drop_foreign_options(*root[slot.table].as_table(), slot.table, slot.kind, effects, registry);
      PluginSlot resolved = resolve_slot(*table, slot.table, slot.kind, origin, registry);
      std::optional<PluginSlot>& target =
          slot.kind == PluginKind::backbone   ? experiment.backbone
          : slot.kind == PluginKind::dataset  ? experiment.data
          : slot.kind == PluginKind::annotator ? experiment.annotator
                                               : experiment.loss;
      target = std::move(resolved);
    }
  }
  if (const toml::node* metrics = root.get(kMetricsTable)) {
    const toml::array* array = metrics->as_array();
    if (!array || !array->is_array_of_tables()) {
      throw Error(detail::location(*metrics) + origin +
                  ": 'metrics' must be an array of tables ([[metrics]])");
    }
    for (std::size_t i = 0; i < array->size(); ++i) {
      experiment.metrics.push_back(resolve_slot(*array->get(i)->as_table(),
                                                "metrics[" + std::to_string(i) + "]",
                                                PluginKind::metric, origin, registry));
    }
  }
}

// The resolved configuration: every table with every option, defaults filled in.
std::string resolved_config(const CoreTables& tables, const Experiment& experiment) {
  toml::table resolved;
  resolved.insert("run", options_table(tables.run));
  resolved.insert("train", options_table(tables.train));
  resolved.insert("eval", options_table(tables.eval));
  resolved.insert("init", options_table(tables.init));
  // [log] only says how a run reports. At its defaults it is left out, so the resolved config (and
  // with it a run's identity: grids' stale checks, [init] caches) of an experiment that does not
  // use it stays what it was before the table existed.
  if (experiment.log.tensorboard) resolved.insert("log", options_table(tables.log));
  if (!experiment.plugin_paths.empty()) {
    toml::array paths;
    for (const fs::path& path : experiment.plugin_paths) paths.push_back(path.string());
    resolved.insert("plugins", toml::table{{"paths", paths}});
  }
  auto add_slot = [](const PluginSlot& slot) {
    toml::table table = options_table(slot.options);
    table.insert("plugin", slot.plugin);
    return table;
  };
  for (const std::optional<PluginSlot>* slot :
       {&experiment.backbone, &experiment.data, &experiment.annotator, &experiment.loss}) {
    if (*slot) resolved.insert((*slot)->table, add_slot(**slot));
  }
  if (!experiment.metrics.empty()) {
    toml::array metrics;
    for (const PluginSlot& slot : experiment.metrics) metrics.push_back(add_slot(slot));
    resolved.insert("metrics", metrics);
  }
  for (auto&& [key, child] : resolved) escape_dollars(child);
  std::ostringstream text;
  text << resolved;
  return text.str() + "\n";
}

Experiment resolve(toml::table root, std::string origin, const fs::path& base_dir,
                   const OverrideEffects& effects, PluginRegistry& registry) {
  reject_unknown_top_level_keys(root, origin);
  const CoreTables tables = read_core_tables(root, origin, base_dir);
  Experiment experiment;
  experiment.train = read_train_settings(tables.train);
  experiment.train_toml = detail::options_to_toml(tables.train);
  experiment.run = read_run_settings(tables.run, available_cuda_devices());
  experiment.eval = read_eval_settings(tables.eval);
  experiment.init = read_init_settings(tables.init);
  experiment.log = read_log_settings(tables.log);
  experiment.report = read_report_settings(tables.report);
  experiment.launcher = read_launcher_settings(tables.launcher);
  experiment.plugin_paths = load_plugin_paths(root, origin, base_dir, registry);
  resolve_plugin_slots(root, origin, effects, registry, experiment);
  if (const toml::table* grid = optional_table(root, "grid", origin)) {
    std::ostringstream text;
    text << *grid;
    experiment.grid_toml = text.str();
  }

  const std::string& objective = tables.train.string("objective");
  auto require = [&](const std::optional<PluginSlot>& slot, const char* table) {
    if (!slot) {
      throw Error(origin + ": [train] objective = \"" + objective + "\" needs a [" + table +
                  "] table");
    }
  };
  require(experiment.backbone, "backbone");
  require(experiment.data, "data");
  if (experiment.train.objective == Objective::preference) require(experiment.loss, "loss");
  construct_plugins(experiment, registry);
  if (experiment.loss && experiment.train.batches == BatchComposition::two_stream) {
    const std::shared_ptr<Loss> loss =
        registry.create<Loss>(experiment.loss->plugin, experiment.loss->options);
    try {
      check_batches_suit_loss(experiment.train, *loss, experiment.loss->plugin);
    } catch (const Error& error) {
      throw Error(origin + ": " + error.what());
    }
  }
  experiment.resolved_toml = resolved_config(tables, experiment);
  return experiment;
}

}  // namespace

Override parse_override(std::string_view text) {
  std::size_t equals = text.find('=');
  if (equals == std::string_view::npos || equals == 0) {
    throw Error("--set expects KEY=VALUE (e.g. train.steps=100), got '" + std::string(text) + "'");
  }
  auto trim = [](std::string_view s) {
    while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
    while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
    return std::string(s);
  };
  return {trim(text.substr(0, equals)), trim(text.substr(equals + 1))};
}

Experiment load_experiment(const fs::path& file, std::span<const Override> overrides,
                           PluginRegistry& registry) {
  fs::path absolute = fs::weakly_canonical(fs::absolute(file));
  if (!fs::exists(absolute)) throw Error(file.string() + ": experiment file does not exist");
  std::vector<fs::path> chain{absolute};
  toml::table root =
      with_bases(parse_file(absolute), absolute.parent_path(), absolute.string(), chain);
  OverrideEffects effects = apply_overrides(root, overrides);
  apply_vars(root, absolute.string());
  Experiment experiment =
      resolve(std::move(root), absolute.string(), absolute.parent_path(), effects, registry);
  experiment.file = absolute;
  return experiment;
}

Experiment load_experiment_text(std::string_view toml_text, std::string origin,
                                const fs::path& base_dir, std::span<const Override> overrides,
                                PluginRegistry& registry) {
  std::vector<fs::path> chain;
  toml::table root = with_bases(parse_text(toml_text, origin), base_dir, origin, chain);
  OverrideEffects effects = apply_overrides(root, overrides);
  apply_vars(root, origin);
  return resolve(std::move(root), origin, base_dir, effects, registry);
}

}  // namespace dedpo
