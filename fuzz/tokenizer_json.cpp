// A tokenizer folder holding a tokenizer.json (as transformers 5 saves it) and a
// tokenizer_config.json (absent when empty), then a prompt, separated by NUL bytes. A tokenizer that
// loads encodes and decodes the prompt.
#include <cstdint>
#include <filesystem>

#include "dedpo/error.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using dedpo::fuzz::scratch_dir;
  const auto parts = dedpo::fuzz::split_input(data, size, 3);
  dedpo::fuzz::write_scratch_file("tokenizer.json", parts[0]);
  if (parts[1].empty()) {
    std::filesystem::remove(scratch_dir() / "tokenizer_config.json");
  } else {
    dedpo::fuzz::write_scratch_file("tokenizer_config.json", parts[1]);
  }
  try {
    const auto tokenizer = dedpo::sd::ClipTokenizer::from_folder(scratch_dir());
    const std::string prompt(parts[2]);
    tokenizer.decode(tokenizer.encode(prompt).input_ids, /*skip_special_tokens=*/false);
  } catch (const dedpo::Error&) {
  }
  return 0;
}
