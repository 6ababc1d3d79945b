#pragma once
// What the fuzz targets share: a scratch folder for parsers that read files, and one input split
// into the parts of a multi-file input.
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace dedpo::fuzz {

// A folder of this process (in /dev/shm when there is one: the files are rewritten for every
// input), removed when the process exits.
inline const std::filesystem::path& scratch_dir() {
  struct Scratch {
    std::filesystem::path path;
    Scratch() {
      const bool shm = std::filesystem::is_directory("/dev/shm");
      std::string pattern =
          (shm ? std::string("/dev/shm") : std::filesystem::temp_directory_path().string()) +
          "/dedpo-fuzz-XXXXXX";
      if (!mkdtemp(pattern.data())) {
        perror("dedpo fuzz: cannot create a scratch folder");
        abort();
      }
      path = pattern;
    }
    ~Scratch() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  };
  static const Scratch scratch;
  return scratch.path;
}

inline std::filesystem::path write_scratch_file(const std::string& name, std::string_view bytes) {
  std::filesystem::path file = scratch_dir() / name;
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) abort();
  return file;
}

// The input cut at NUL bytes into exactly `count` parts (missing ones empty, the last one keeps
// the rest, NULs included).
inline std::vector<std::string_view> split_input(const std::uint8_t* data, std::size_t size,
                                                 std::size_t count) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < count) {
    const std::size_t nul = rest.find('\0');
    parts.push_back(rest.substr(0, nul));
    rest = nul == std::string_view::npos ? std::string_view() : rest.substr(nul + 1);
  }
  parts.push_back(rest);
  return parts;
}

}  // namespace dedpo::fuzz
