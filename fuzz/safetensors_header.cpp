// A safetensors file (header length, JSON header, data): opening validates the header; every
// tensor it names is then copied out. Only dedpo::Error may escape the parser.
#include <cstdint>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = dedpo::fuzz::write_scratch_file(
      "input.safetensors", {reinterpret_cast<const char*>(data), size});
  try {
    dedpo::safetensors::File tensors(file);
    for (const std::string& key : tensors.keys()) tensors.get(key);
  } catch (const dedpo::Error&) {
  }
  return 0;
}
