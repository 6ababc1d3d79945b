// An experiment: TOML text, then after a NUL byte one `--set key=value` override per line; loaded
// against an empty plugin registry, so the core tables are validated and plugin tables refused.
#include <cstdint>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/host/experiment.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto parts = dedpo::fuzz::split_input(data, size, 2);
  // [plugins] paths would dlopen whatever folder the input names (system libraries included):
  // that is the loader's business, not the parser's, and foreign code is not under test.
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (text.find("plugins") != std::string_view::npos) return -1;
  try {
    std::vector<dedpo::Override> overrides;
    std::string_view lines = parts[1];
    while (!lines.empty()) {
      const std::size_t end = lines.find('\n');
      overrides.push_back(dedpo::parse_override(lines.substr(0, end)));
      lines = end == std::string_view::npos ? std::string_view() : lines.substr(end + 1);
    }
    dedpo::PluginRegistry registry;
    dedpo::load_experiment_text(parts[0], "fuzz.toml", dedpo::fuzz::scratch_dir(), overrides,
                                registry);
  } catch (const dedpo::Error&) {
  }
  return 0;
}
