#include "dedpo/host/registry.hpp"

#include <elf.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <variant>

#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>
#include <toml++/toml.h>

#include "option_table.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

constexpr const char* kEntrySymbol = "dedpo_library_info";

bool is_plugin_file(const fs::path& file) { return file.extension() == ".so"; }

// Why `file` cannot be a shared library of this program, or empty. dlopen maps a file's segments
// as its headers say: a truncated library would map pages past the end of the file and stop the
// process with SIGBUS when touched, so every table and segment must lie within the file.
std::string elf_problem(const fs::path& file) {
  std::error_code error;
  const std::uintmax_t size = fs::file_size(file, error);
  if (error) return "cannot read: " + error.message();
  std::ifstream in(file, std::ios::binary);
  if (!in) return "cannot open for reading";
  auto read_at = [&](std::uint64_t offset, void* into, std::size_t bytes) {
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(static_cast<char*>(into), static_cast<std::streamsize>(bytes));
    return static_cast<bool>(in);
  };
  // Does [offset, offset + count * entry) lie within the file? (No overflow: each is < 2^48.)
  auto within = [&](std::uint64_t offset, std::uint64_t count, std::uint64_t entry) {
    return offset <= size && count * entry <= size - offset;
  };
  Elf64_Ehdr header;
  if (size < sizeof header || !read_at(0, &header, sizeof header) ||
      std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
    return fmt::format("not an ELF shared library ({} bytes, no ELF header)", size);
  }
  if (header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB ||
      header.e_type != ET_DYN) {
    return "not a 64-bit little-endian ELF shared library (built for another machine?)";
  }
  const std::string truncated = fmt::format(
      "truncated or corrupt library: its ELF headers describe data beyond its {} bytes", size);
  if (header.e_phentsize != sizeof(Elf64_Phdr) ||
      !within(header.e_phoff, header.e_phnum, sizeof(Elf64_Phdr)) ||
      (header.e_shoff != 0 && !within(header.e_shoff, header.e_shnum, header.e_shentsize))) {
    return truncated;
  }
  for (std::uint16_t i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr segment;
    if (!read_at(header.e_phoff + i * sizeof segment, &segment, sizeof segment)) {
      return "cannot read its program headers";
    }
    if (segment.p_type == PT_LOAD && !within(segment.p_offset, 1, segment.p_filesz)) {
      return truncated;
    }
  }
  return {};
}

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
  // Every *.so name goes to load_library, which reports one that is not a usable file (a
  // symlink loop, a dangling link, no permission) as that file's problem.
  std::vector<fs::path> files;
  fs::directory_iterator entries(folder, error);
  for (; !error && entries != fs::directory_iterator(); entries.increment(error)) {
    std::error_code type_error;
    const bool folder_entry = entries->is_directory(type_error);
    if (is_plugin_file(entries->path()) && !folder_entry) files.push_back(entries->path());
  }
  if (error) {
    problems_.push_back({folder, folder.string() + ": cannot list plugin folder: " + error.message()});
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& file : files) load_library(file);
}

bool PluginRegistry::load_library(const fs::path& file) {
  std::error_code error;
  fs::path canonical = fs::weakly_canonical(file, error);
  if (error) canonical = fs::absolute(file, error);
  for (const PluginEntry& entry : entries_) {
    if (entry.library == canonical) return true;  // the same file reached through two paths
  }
  auto fail = [&](std::string message) {
    problems_.push_back({canonical, canonical.string() + ": " + std::move(message)});
    return false;
  };

  const fs::file_status status = fs::status(canonical, error);
  if (error || !fs::exists(status)) {
    return fail("cannot read: " + (error ? error.message() : std::string("no such file")));
  }
  if (!fs::is_regular_file(status)) return fail("not a regular file");
  if (std::string problem = elf_problem(canonical); !problem.empty()) return fail(problem);

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
