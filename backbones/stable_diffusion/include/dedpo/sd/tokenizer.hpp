#pragma once
// The CLIP byte-level BPE tokenizer, as transformers' CLIPTokenizer does it (transformers 5: the
// tokenizers library's BPE; tests/interop/roundtrip.py compares the ids on a corpus of 1,200
// prompts and on every code point): SD1.5's `tokenizer/` and SDXL's `tokenizer/` + `tokenizer_2/`,
// read from vocab.json + merges.txt or from tokenizer.json.
//
//   auto tok = dedpo::sd::ClipTokenizer::from_folder("sd15/tokenizer");
//   auto batch = tok.encode_batch({"a photo of a cat", "a dog"});  // input_ids: int64 [2, 77]
//
// Pipeline, step by step as in transformers:
//  1. The raw text is split on the special tokens (bos, eos, unk, pad and tokenizer.json's
//     added_tokens; exact, case-sensitive, leftmost longest), as transformers does with its added
//     tokens. A special token becomes its own id; so SDXL's tokenizer_2, whose pad token is "!",
//     maps every "!" to id 0.
//  2. Each other piece is normalised as CLIP's tokenizer.json says: NFC, runs of White_Space become
//     one space, then each code point gets its full lower-case mapping on its own (Σ is always σ,
//     İ becomes "i̇"). ICU provides the normalisation, the mappings and the character classes
//     below, so they follow its Unicode version (Debian 12's ICU 72: Unicode 15).
//  3. Pre-tokenisation with CLIP's pattern
//       <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//     on decoded code points (a hand-written scanner, not std::regex; \s is White_Space, \p{L}
//     and \p{N} general categories). A pre-token spelling a special token (one cased otherwise in
//     the text, so not split out in step 1) is split again into "<|", the name and "|>", as the
//     byte-level step's GPT-2 pattern does.
//  4. Each pre-token's UTF-8 bytes go through GPT-2's bytes_to_unicode table, "</w>" is appended to
//     the last symbol, and the merges are applied lowest rank first (cached per pre-token).
//  5. Symbols map to ids through the vocabulary (unknown symbols -> unk id); encode() adds BOS ...
//     EOS, truncates to max_length keeping EOS last, pads with the pad token, and returns the mask.
//
// Limits:
//  - transformers 4's slow tokenizer without ftfy used a BasicTokenizer that also put spaces around
//    CJK ideographs ("猫犬" two pre-tokens there, one in transformers 5);
//    TokenizerConfig::split_cjk_ideographs = true reproduces that part only. Neither transformers 5
//    nor dedpo applies ftfy's text repairs (mojibake, HTML entities).
//  - Every merge of merges.txt is used, as in transformers 5; transformers 4's slow tokenizer used
//    at most the first 48894 (CLIP's file has exactly that many).
//  - Text must be valid UTF-8 (dedpo::Error otherwise).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace dedpo::sd {

// The settings of a diffusers `tokenizer/` folder's tokenizer_config.json / special_tokens_map.json
// that encoding uses. Defaults are SD1.5's (CLIPTokenizer's defaults, model_max_length 77).
struct TokenizerConfig {
  int64_t max_length = 77;                 // model_max_length: BOS + up to 75 tokens + EOS
  std::string bos_token = "<|startoftext|>";
  std::string eos_token = "<|endoftext|>";
  std::string unk_token = "<|endoftext|>";
  std::string pad_token = "<|endoftext|>";  // SDXL's tokenizer_2: "!" (id 0)
  bool split_cjk_ideographs = false;       // see the limits above

  // Reads `folder`/tokenizer_config.json (model_max_length, *_token) and then
  // `folder`/special_tokens_map.json (*_token, which take precedence, as in transformers), each when
  // present; a token is a string or an object with "content". Missing keys keep the defaults.
  static TokenizerConfig from_folder(const std::filesystem::path& folder);
};

// One encoded text: exactly max_length entries.
struct TokenizerOutput {
  std::vector<int64_t> input_ids;       // BOS, tokens..., EOS, pad...
  std::vector<int64_t> attention_mask;  // 1 for BOS, tokens and EOS; 0 for padding
};

struct TokenizerBatch {
  at::Tensor input_ids;       // int64 [N, max_length]
  at::Tensor attention_mask;  // int64 [N, max_length]
};

class ClipTokenizer {
 public:
  // Throws dedpo::Error naming the file (and line or key) for a missing or malformed vocab.json or
  // merges.txt, a merge whose result is not in the vocabulary, or a special token missing from it.
  ClipTokenizer(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt,
                TokenizerConfig config = {});
  // A tokenizer.json (the tokenizers library's file; transformers 5's save_pretrained writes only
  // it): model.vocab, model.merges and added_tokens are read; the normaliser, pre-tokeniser,
  // post-processor and BPE settings must be CLIP's (dedpo::Error naming the file and the key of the
  // first one that is not). Its truncation and padding entries are ignored: encode() pads and
  // truncates to config.max_length, as a transformers call with padding="max_length" does.
  static ClipTokenizer from_tokenizer_json(const std::filesystem::path& tokenizer_json, TokenizerConfig config = {});
  // `folder`/tokenizer.json when present (transformers 5 prefers it too), else `folder`/vocab.json
  // and `folder`/merges.txt; with TokenizerConfig::from_folder(folder).
  static ClipTokenizer from_folder(const std::filesystem::path& folder);

  // BPE symbols of the text, without BOS / EOS (e.g. "a</w>", "c", "at</w>").
  std::vector<std::string> tokenize(const std::string& text) const;
  // Ids of tokenize(text): no BOS / EOS, no truncation, no padding.
  std::vector<int64_t> encode_ids(const std::string& text) const;
  // BOS + ids (truncated to max_length - 2) + EOS, padded to max_length.
  TokenizerOutput encode(const std::string& text) const;
  TokenizerBatch encode_batch(const std::vector<std::string>& texts) const;

  // For debugging: byte-level reverse of the ids, "</w>" -> " ", ends stripped. Special tokens are
  // left out when skip_special_tokens, else written as they are, separated by spaces. Invalid UTF-8
  // becomes U+FFFD. Throws dedpo::Error for an id not in the vocabulary.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  // The id of a vocabulary entry; dedpo::Error when it is not there.
  int64_t token_to_id(const std::string& token) const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t unk_id() const;
  int64_t pad_id() const;
  int64_t vocab_size() const;
  const TokenizerConfig& config() const;

  struct Impl;

 private:
  explicit ClipTokenizer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // immutable tables + a mutex-guarded BPE cache; copies share it
};

// The building blocks, exposed for tests.
namespace tokenizer_detail {
// GPT-2's bytes_to_unicode: the UTF-8 string of the code point standing for each byte.
const std::vector<std::string>& bytes_to_unicode();
// whitespace_clean(text).lower() (with split_cjk_ideographs: spaces around CJK ideographs first).
std::string clean_text(const std::string& text, bool split_cjk_ideographs = false);
// CLIP's pre-tokenisation pattern applied to cleaned text.
std::vector<std::string> pre_tokenize(const std::string& cleaned);
}  // namespace tokenizer_detail

}  // namespace dedpo::sd
