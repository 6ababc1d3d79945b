#include "dedpo/host/registry.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <variant>

#include <boost/dll/shared_library.hpp>
#include <toml++/toml.h>

#include "option_table.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

constexpr const char* kEntrySymbol = "dedpo_library_info";

bool is_plugin_file(const fs::path& file) { return file.extension() == ".so"; }

fs::path executable_path() {
  std::error_code error;
  fs::path self = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::path() : self;
}

}  // namespace

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = std::string::npos;
  for (const std::string& candidate : candidates) {
    // Levenshtein distance, one row at a time.
    std::vector<std::size_t> row(candidate.size() + 1);
    for (std::size_t j = 0; j <= candidate.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= word.size(); ++i) {
      std::size_t diagonal = row[0];
      row[0] = i;
      for (std::size_t j = 1; j <= candidate.size(); ++j) {
        std::size_t above = row[j];
        std::size_t substitution = diagonal + (word[i - 1] == candidate[j - 1] ? 0 : 1);
        row[j] = std::min({above + 1, row[j - 1] + 1, substitution});
        diagonal = above;
      }
    }
    if (row.back() < best_distance) {
      best_distance = row.back();
      best = candidate;
    }
  }
  // Suggest only what is plausibly a typo: at most a third of the word changed.
  std::size_t limit = std::max<std::size_t>(2, word.size() / 3);
  return best_distance <= limit ? best : std::string();
}

void PluginRegistry::load_directory(const fs::path& folder) {
  std::error_code error;
  if (!fs::is_directory(folder, error)) {
    problems_.push_back({folder, folder.string() + ": plugin folder does not exist"});
    return;
  }
  std::vector<fs::path> files;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
    if (entry.is_regular_file() && is_plugin_file(entry.path())) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) load_library(file);
}

bool PluginRegistry::load_library(const fs::path& file) {
  fs::path canonical = fs::weakly_canonical(file);
  for (const PluginEntry& entry : entries_) {
    if (entry.library == canonical) return true;  // the same file reached through two paths
  }
  auto fail = [&](std::string message) {
    problems_.push_back({canonical, canonical.string() + ": " + std::move(message)});
    return false;
  };

  std::shared_ptr<boost::dll::shared_library> library;
  try {
    library = std::make_shared<boost::dll::shared_library>(
        canonical, boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& error) {
    return fail(std::string("cannot load library: ") + error.what());
  }
  if (!library->has(kEntrySymbol)) {
    return fail(std::string("not a dedpo plugin library: entry symbol '") + kEntrySymbol +
                "' not found (declare the plugins with DEDPO_PLUGIN_LIBRARY)");
  }
  const LibraryInfo& info = library->get_alias<const LibraryInfo>(kEntrySymbol);
  if (info.abi_version != kAbiVersion) {
    return fail("plugin ABI version mismatch: expected " + std::to_string(kAbiVersion) +
                ", found " + std::to_string(info.abi_version) +
                " (rebuild the plugin against this dedpo SDK)");
  }
  if (info.struct_size != sizeof(LibraryInfo)) {
    return fail("plugin metadata size mismatch: expected " + std::to_string(sizeof(LibraryInfo)) +
                " bytes, found " + std::to_string(info.struct_size) +
                " (built against another dedpo SDK)");
  }
  auto text = [](const char* field) { return std::string(field ? field : "unknown"); };
  if (text(info.build.libtorch) != host_build_info().libtorch) {
    return fail("built against LibTorch " + text(info.build.libtorch) + " (" +
                text(info.build.compiler) + ", " + text(info.build.standard_library) +
                "), but this program uses LibTorch " + host_build_info().libtorch +
                "; rebuild the plugin against this LibTorch");
  }

  // All or nothing: a library with one bad entry contributes no plugin.
  std::vector<PluginEntry> added;
  for (std::size_t i = 0; i < info.plugin_count; ++i) {
    const PluginDescriptor& descriptor = info.plugins[i];
    std::string label = std::string(to_string(descriptor.kind)) + " '" +
                        (descriptor.name ? descriptor.name : "") + "'";
    if (!descriptor.name || !*descriptor.name || !descriptor.create) {
      return fail("plugin entry " + std::to_string(i) + " has no name or no factory");
    }
    for (const PluginEntry& existing : entries_) {
      if (existing.descriptor->kind == descriptor.kind &&
          std::string_view(existing.descriptor->name) == descriptor.name) {
        return fail("duplicate plugin " + label + ": already provided by " +
                    existing.library.string());
      }
    }
    for (const PluginEntry& sibling : added) {
      if (sibling.descriptor->kind == descriptor.kind &&
          std::string_view(sibling.descriptor->name) == descriptor.name) {
        return fail("duplicate plugin " + label + " within the library");
      }
    }
    added.push_back({&descriptor, &info.build, canonical, library});
  }
  entries_.insert(entries_.end(), added.begin(), added.end());
  return true;
}

std::vector<fs::path> PluginRegistry::default_locations() {
  std::vector<fs::path> folders;
  fs::path self = executable_path();
  if (!self.empty()) {
    // <prefix>/bin/dedpo -> <prefix>/lib/dedpo/plugins, in the build tree and the install tree.
    fs::path prefix = self.parent_path().parent_path();
    fs::path folder = prefix / DEDPO_PLUGIN_RELATIVE_DIR;
    if (fs::is_directory(folder)) folders.push_back(folder);
  }
  if (const char* path = std::getenv("DEDPO_PLUGIN_PATH")) {
    std::string_view rest = path;
    while (!rest.empty()) {
      std::size_t colon = rest.find(':');
      std::string_view part = rest.substr(0, colon);
      if (!part.empty()) folders.emplace_back(part);
      rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
    }
  }
  return folders;
}

void PluginRegistry::load_default_locations() {
  for (const fs::path& folder : default_locations()) load_directory(folder);
}

std::vector<const PluginEntry*> PluginRegistry::plugins(PluginKind kind) const {
  std::vector<const PluginEntry*> found;
  for (const PluginEntry& entry : entries_) {
    if (entry.descriptor->kind == kind) found.push_back(&entry);
  }
  std::sort(found.begin(), found.end(), [](const PluginEntry* a, const PluginEntry* b) {
    return std::string_view(a->descriptor->name) < std::string_view(b->descriptor->name);
  });
  return found;
}

const PluginEntry* PluginRegistry::try_find(PluginKind kind, std::string_view name) const {
  for (const PluginEntry& entry : entries_) {
    if (entry.descriptor->kind == kind && name == entry.descriptor->name) return &entry;
  }
  return nullptr;
}

const PluginEntry& PluginRegistry::find(PluginKind kind, std::string_view name) const {
  if (const PluginEntry* entry = try_find(kind, name)) return *entry;
  std::vector<std::string> names;
  for (const PluginEntry* entry : plugins(kind)) names.emplace_back(entry->descriptor->name);
  std::string message = std::string("no ") + to_string(kind) + " plugin named '" +
                        std::string(name) + "'";
  std::string suggestion = closest_match(name, names);
  if (!suggestion.empty()) {
    message += "; did you mean '" + suggestion + "'?";
  } else {
    std::string list;
    for (const std::string& known : names) list += (list.empty() ? "" : ", ") + known;
    message += list.empty() ? "; none is loaded (see `dedpo plugins`)" : "; known: " + list;
  }
  throw Error(message);
}

Options PluginRegistry::resolve_options(PluginKind kind, std::string_view name,
                                        std::string_view options_toml, std::string where) const {
  const PluginEntry& entry = find(kind, name);
  toml::table table;
  try {
    table = toml::parse(options_toml, std::string_view(where));
  } catch (const toml::parse_error& error) {
    throw Error(where + ":" + std::to_string(error.source().begin.line) + ":" +
                std::to_string(error.source().begin.column) + ": " +
                std::string(error.description()));
  }
  return detail::validate_table(
      table, std::span(entry.descriptor->options, entry.descriptor->option_count), where);
}

Options PluginRegistry::complete_options(PluginKind kind, std::string_view name,
                                         const Options& given, std::string where) const {
  const PluginEntry& entry = find(kind, name);
  toml::table table;
  for (const auto& [key, value] : given.values()) {
    std::visit([&, &key = key](const auto& v) { table.insert(key, v); }, value);
  }
  return detail::validate_table(
      table, std::span(entry.descriptor->options, entry.descriptor->option_count), where);
}

std::shared_ptr<Plugin> PluginRegistry::create_plugin(PluginKind kind, std::string_view name,
                                                      const Options& options) const {
  const PluginEntry& entry = find(kind, name);
  std::unique_ptr<Plugin> made = entry.descriptor->create(options);
  if (!made) {
    throw Error(entry.library.string() + ": factory of " + to_string(kind) + " '" +
                std::string(name) + "' returned nothing");
  }
  // The deleter owns a reference to the library: the object's code stays mapped until the
  // object is gone, whatever happens to the registry.
  std::shared_ptr<void> library = entry.handle;
  return std::shared_ptr<Plugin>(made.release(), [library](Plugin* plugin) { delete plugin; });
}

}  // namespace dedpo
