// A tokenizer folder: vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json
// (each of the two absent when empty) and a prompt, separated by NUL bytes. A tokenizer that loads
// encodes and decodes the prompt.
#include <cstdint>
#include <filesystem>

#include "dedpo/error.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "fuzz_support.hpp"

namespace {

void write_or_remove(const std::string& name, std::string_view bytes) {
  if (bytes.empty()) {
    std::filesystem::remove(dedpo::fuzz::scratch_dir() / name);
  } else {
    dedpo::fuzz::write_scratch_file(name, bytes);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using dedpo::fuzz::write_scratch_file;
  const auto parts = dedpo::fuzz::split_input(data, size, 5);
  write_scratch_file("vocab.json", parts[0]);
  write_scratch_file("merges.txt", parts[1]);
  write_or_remove("tokenizer_config.json", parts[2]);
  write_or_remove("special_tokens_map.json", parts[3]);
  try {
    const auto tokenizer = dedpo::sd::ClipTokenizer::from_folder(dedpo::fuzz::scratch_dir());
    const std::string prompt(parts[4]);
    tokenizer.decode(tokenizer.encode(prompt).input_ids, /*skip_special_tokens=*/false);
  } catch (const dedpo::Error&) {
  }
  return 0;
}
