#pragma once
// Finds, loads and checks plugin libraries, validates plugin options against their schema and
// creates plugin objects that keep their library loaded for as long as they live.
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/options.hpp"
#include "dedpo/plugin.hpp"

namespace dedpo {

struct LoadProblem {
  std::filesystem::path file;
  std::string message;  // complete, starts with the file name
};

struct PluginEntry {
  const PluginDescriptor* descriptor;
  const BuildInfo* build;  // the toolchain of its library
  std::filesystem::path library;
  std::shared_ptr<void> handle;  // the loaded library; shared by every object it made
};

class PluginRegistry {
 public:
  PluginRegistry() = default;

  // Every *.so file of the folder (not recursive), in name order.
  void load_directory(const std::filesystem::path& folder);
  // Returns false, and records a LoadProblem, when the library cannot be used; its plugins are
  // then absent and the registry keeps working with the others.
  bool load_library(const std::filesystem::path& file);
  // The plugin folder of the build or install tree this program runs from, then each folder of
  // DEDPO_PLUGIN_PATH (colon-separated).
  void load_default_locations();
  static std::vector<std::filesystem::path> default_locations();

  const std::vector<LoadProblem>& problems() const { return problems_; }

  std::vector<const PluginEntry*> plugins(PluginKind kind) const;  // sorted by name
  const PluginEntry* try_find(PluginKind kind, std::string_view name) const;
  // Error naming the closest known plugin of that kind when there is no such plugin.
  const PluginEntry& find(PluginKind kind, std::string_view name) const;

  // Validates `options_toml` (the body of a TOML table) against the plugin's schema: unknown keys
  // fail with a did-you-mean, wrong types name the expected type, defaults are filled in.
  Options resolve_options(PluginKind kind, std::string_view name, std::string_view options_toml,
                          std::string where) const;

  // The same for values given in code (a plugin building another): `given` names only the
  // options to set; the others take their defaults.
  Options complete_options(PluginKind kind, std::string_view name, const Options& given,
                           std::string where) const;

  std::shared_ptr<Plugin> create_plugin(PluginKind kind, std::string_view name,
                                        const Options& options) const;

  template <class T>
  std::shared_ptr<T> create(std::string_view name, const Options& options) const {
    return std::static_pointer_cast<T>(create_plugin(T::kind, name, options));
  }
  // Convenience for tests and tools: options given as TOML text.
  template <class T>
  std::shared_ptr<T> create(std::string_view name, std::string_view options_toml = {}) const {
    return create<T>(name, resolve_options(T::kind, name, options_toml,
                                           std::string(to_string(T::kind)) + " '" +
                                               std::string(name) + "'"));
  }

 private:
  std::vector<PluginEntry> entries_;
  std::vector<LoadProblem> problems_;
};

// Levenshtein-closest candidate, or empty when none is close enough to suggest.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace dedpo
