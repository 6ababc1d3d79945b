// A prompt, through a byte-level CLIP tokenizer built once: every byte symbol (with and without
// "</w>"), a few merges, the special tokens. Encoded, then decoded back; only invalid UTF-8 may
// be refused (dedpo::Error).
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "dedpo/error.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "fuzz_support.hpp"

namespace {

std::unique_ptr<dedpo::sd::ClipTokenizer> make_tokenizer() {
  const auto& symbols = dedpo::sd::tokenizer_detail::bytes_to_unicode();
  nlohmann::json vocab = nlohmann::json::object();
  std::int64_t id = 0;
  for (const std::string& symbol : symbols) vocab[symbol] = id++;
  for (const std::string& symbol : symbols) vocab[symbol + "</w>"] = id++;
  const char* merges[] = {"t h", "th e</w>", "a n", "an d</w>", "o f</w>", "c a", "ca t</w>"};
  std::string merges_txt = "#version: 0.2\n";
  for (const char* merge : merges) {
    merges_txt += std::string(merge) + "\n";
    const std::string text(merge);
    vocab[text.substr(0, text.find(' ')) + text.substr(text.find(' ') + 1)] = id++;
  }
  vocab["<|startoftext|>"] = id++;
  vocab["<|endoftext|>"] = id++;
  const auto vocab_file = dedpo::fuzz::write_scratch_file("vocab.json", vocab.dump());
  const auto merges_file = dedpo::fuzz::write_scratch_file("merges.txt", merges_txt);
  return std::make_unique<dedpo::sd::ClipTokenizer>(vocab_file, merges_file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::unique_ptr<dedpo::sd::ClipTokenizer> tokenizer = make_tokenizer();
  const std::string prompt(reinterpret_cast<const char*>(data), size);
  try {
    const dedpo::sd::TokenizerOutput encoded = tokenizer->encode(prompt);
    const auto length = static_cast<std::int64_t>(encoded.input_ids.size());
    if (length != tokenizer->config().max_length) abort();
    tokenizer->decode(tokenizer->encode_ids(prompt));
  } catch (const dedpo::Error&) {
  }
  return 0;
}
