// A tokenizer folder: vocab.json, merges.txt, tokenizer_config.json (absent when empty) and a
// prompt, separated by NUL bytes. A tokenizer that loads encodes and decodes the prompt.
#include <cstdint>
#include <filesystem>

#include "dedpo/error.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using dedpo::fuzz::write_scratch_file;
  const auto parts = dedpo::fuzz::split_input(data, size, 4);
  write_scratch_file("vocab.json", parts[0]);
  write_scratch_file("merges.txt", parts[1]);
  if (parts[2].empty()) {
    std::filesystem::remove(dedpo::fuzz::scratch_dir() / "tokenizer_config.json");
  } else {
    write_scratch_file("tokenizer_config.json", parts[2]);
  }
  try {
    const auto tokenizer = dedpo::sd::ClipTokenizer::from_folder(dedpo::fuzz::scratch_dir());
    const std::string prompt(parts[3]);
    tokenizer.decode(tokenizer.encode(prompt).input_ids, /*skip_special_tokens=*/false);
  } catch (const dedpo::Error&) {
  }
  return 0;
}
