#include "dedpo/sd/tokenizer.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "dedpo/error.hpp"
#include "dedpo/files.hpp"

namespace dedpo::sd {

namespace {

// ---- UTF-8 -------------------------------------------------------------------------------------

// Strict decoding (no overlong forms, no surrogates, at most U+10FFFF).
std::u32string decode_utf8(const std::string& text) {
  std::u32string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    unsigned char b = s[i];
    char32_t cp = 0;
    int extra = 0;
    char32_t min = 0;
    if (b < 0x80) {
      cp = b;
    } else if ((b & 0xE0) == 0xC0) {
      cp = b & 0x1F, extra = 1, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      cp = b & 0x0F, extra = 2, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      cp = b & 0x07, extra = 3, min = 0x10000;
    } else {
      throw Error(fmt::format("tokenizer: invalid UTF-8 in text at byte {}", i));
    }
    for (int k = 1; k <= extra; ++k) {
      if (i + k >= n || (s[i + k] & 0xC0) != 0x80) {
        throw Error(fmt::format("tokenizer: invalid UTF-8 in text at byte {}", i));
      }
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      throw Error(fmt::format("tokenizer: invalid UTF-8 in text at byte {}", i));
    }
    out.push_back(cp);
    i += 1 + extra;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

// Decoding with errors="replace": each byte that does not start a valid sequence becomes U+FFFD.
std::string sanitize_utf8(const std::string& bytes) {
  std::string out;
  std::size_t i = 0;
  while (i < bytes.size()) {
    std::size_t len = 0;
    auto b = static_cast<unsigned char>(bytes[i]);
    len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
    bool ok = len > 0 && i + len <= bytes.size();
    if (ok && len > 1) {
      try {
        ok = decode_utf8(bytes.substr(i, len)).size() == 1;
      } catch (const Error&) {
        ok = false;
      }
    }
    if (ok) {
      out.append(bytes, i, len);
      i += len;
    } else {
      append_utf8(out, 0xFFFD);
      i += 1;
    }
  }
  return out;
}

// ---- Unicode (ICU: the categories, case mappings and normalisation of its Unicode database) ------

// The character classes of CLIP's pattern as the tokenizers library's regex engine (Oniguruma) reads
// them: \p{L} and \p{N} are general categories, \s is the White_Space property (so U+001C..U+001F,
// spaces to Python's str.isspace, are not).
bool is_letter(char32_t cp) { return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_L_MASK) != 0; }
bool is_number(char32_t cp) { return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_N_MASK) != 0; }
bool is_space(char32_t cp) { return u_isUWhiteSpace(static_cast<UChar32>(cp)) != 0; }

// BasicTokenizer._is_chinese_char (transformers 4; a fixed list there, not a Unicode property).
struct Range {
  char32_t lo, hi;
};
constexpr Range kCjkIdeographs[] = {
    {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xF900, 0xFAFF},   {0x20000, 0x2A6DF},
    {0x2A700, 0x2B73F}, {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0x2F800, 0x2FA1F},
};
bool is_cjk(char32_t cp) {
  return std::any_of(std::begin(kCjkIdeographs), std::end(kCjkIdeographs),
                     [cp](const Range& r) { return cp >= r.lo && cp <= r.hi; });
}

// The NFC normaliser.
std::u32string nfc(const std::u32string& text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) throw Error(fmt::format("tokenizer: ICU's NFC normaliser is unavailable: {}", u_errorName(status)));
  const auto utf16 = icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(text.data()),
                                                   static_cast<int32_t>(text.size()));
  if (normalizer->isNormalized(utf16, status) && U_SUCCESS(status)) return text;
  icu::UnicodeString composed = normalizer->normalize(utf16, status);
  if (U_FAILURE(status)) throw Error(fmt::format("tokenizer: NFC normalisation failed: {}", u_errorName(status)));
  std::u32string out(static_cast<std::size_t>(composed.countChar32()), U'\0');
  composed.toUTF32(reinterpret_cast<UChar32*>(out.data()), static_cast<int32_t>(out.size()), status);
  return out;
}

// The Lowercase normaliser: each code point's full lower-case mapping on its own (Rust's
// char::to_lowercase), so Σ is always σ (never the final ς of a context-aware mapping) and
// İ is "i" + U+0307.
std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
      continue;
    }
    UChar in[2], mapped[8];  // a full mapping is at most 3 code points
    int32_t in_length = 0;
    U16_APPEND_UNSAFE(in, in_length, static_cast<UChar32>(c));
    UErrorCode status = U_ZERO_ERROR;
    const int32_t length = u_strToLower(mapped, 8, in, in_length, "", &status);
    if (U_FAILURE(status)) throw Error(fmt::format("tokenizer: lower-casing U+{:04X} failed: {}", static_cast<uint32_t>(c), u_errorName(status)));
    for (int32_t i = 0; i < length;) {
      UChar32 cp;
      U16_NEXT_UNSAFE(mapped, i, cp);
      out.push_back(static_cast<char32_t>(cp));
    }
  }
  return out;
}

// CLIP's normaliser sequence: NFC, Replace(\s+, " ") (here also stripping the ends, which the
// pre-tokeniser drops anyway), Lowercase.
std::u32string clean(const std::u32string& raw, bool split_cjk) {
  const std::u32string text = nfc(raw);
  std::u32string spaced;
  if (split_cjk) {
    for (char32_t c : text) {
      if (is_cjk(c)) {
        spaced += U' ';
        spaced += c;
        spaced += U' ';
      } else {
        spaced += c;
      }
    }
  }
  const std::u32string& in = split_cjk ? spaced : text;
  std::u32string collapsed;
  collapsed.reserve(in.size());
  bool pending_space = false;
  for (char32_t c : in) {
    if (is_space(c)) {
      pending_space = true;
      continue;
    }
    if (pending_space && !collapsed.empty()) collapsed.push_back(U' ');
    pending_space = false;
    collapsed.push_back(c);
  }
  return lower(collapsed);
}

bool starts_with(const std::u32string& s, std::size_t at, std::u32string_view prefix) {
  return s.size() - at >= prefix.size() && std::u32string_view(s).substr(at, prefix.size()) == prefix;
}

// <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (findall: leftmost match at each position, alternatives in order, unmatched characters skipped).
std::vector<std::u32string> pre_tokenize_cp(const std::u32string& s) {
  static constexpr std::u32string_view kFixed[] = {U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t",
                                                   U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  std::vector<std::u32string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    bool fixed = false;
    for (auto f : kFixed) {
      if (starts_with(s, i, f)) {
        out.emplace_back(f);
        i += f.size();
        fixed = true;
        break;
      }
    }
    if (fixed) continue;
    char32_t c = s[i];
    std::size_t j = i + 1;
    if (is_letter(c)) {
      while (j < s.size() && is_letter(s[j])) ++j;
    } else if (is_number(c)) {
      // one code point
    } else if (is_space(c)) {
      i = j;
      continue;
    } else {
      while (j < s.size() && !is_space(s[j]) && !is_letter(s[j]) && !is_number(s[j])) ++j;
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// GPT-2's bytes_to_unicode: printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves,
// the other 68 bytes, in increasing order, for U+0100, U+0101, ...
std::array<char32_t, 256> byte_code_points() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// dedpo::read_file, with the tokenizer's message naming which file it wanted.
std::string read_file(const std::filesystem::path& path, const char* what) {
  try {
    return dedpo::read_file(path);
  } catch (const Error&) {
    throw Error(fmt::format("tokenizer: cannot open {} '{}'", what, path.string()));
  }
}

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

nlohmann::json parse_json(const std::string& text, const std::filesystem::path& path, const char* what) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{} {}: malformed JSON: {}", what, quoted(path), e.what()));
  }
}

}  // namespace

namespace tokenizer_detail {

const std::vector<std::string>& bytes_to_unicode() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    auto cps = byte_code_points();
    for (int b = 0; b < 256; ++b) append_utf8(t[b], cps[b]);
    return t;
  }();
  return table;
}

std::string clean_text(const std::string& text, bool split_cjk_ideographs) {
  return encode_utf8(clean(decode_utf8(text), split_cjk_ideographs));
}

std::vector<std::string> pre_tokenize(const std::string& cleaned) {
  std::vector<std::string> out;
  for (const auto& piece : pre_tokenize_cp(decode_utf8(cleaned))) out.push_back(encode_utf8(piece));
  return out;
}

}  // namespace tokenizer_detail

// ---- TokenizerConfig ---------------------------------------------------------------------------

TokenizerConfig TokenizerConfig::from_folder(const std::filesystem::path& folder) {
  TokenizerConfig config;
  auto read_json = [](const std::filesystem::path& path) -> std::optional<nlohmann::json> {
    if (!std::filesystem::exists(path)) return std::nullopt;
    nlohmann::json json = parse_json(read_file(path, "tokenizer config"), path, "tokenizer config");
    if (!json.is_object()) throw Error(fmt::format("tokenizer config {}: not a JSON object", quoted(path)));
    return json;
  };
  auto read_tokens = [&](const nlohmann::json& json, const std::filesystem::path& path) {
    for (auto [key, field] : {std::pair{"bos_token", &config.bos_token}, std::pair{"eos_token", &config.eos_token},
                              std::pair{"unk_token", &config.unk_token}, std::pair{"pad_token", &config.pad_token}}) {
      if (!json.contains(key) || json[key].is_null()) continue;
      const auto& value = json[key];
      if (value.is_string()) {
        *field = value.get<std::string>();
      } else if (value.is_object() && value.contains("content") && value["content"].is_string()) {
        *field = value["content"].get<std::string>();
      } else {
        throw Error(fmt::format("tokenizer config {}: '{}' must be a string or an object with a string 'content'",
                                quoted(path), key));
      }
    }
  };
  auto config_path = folder / "tokenizer_config.json";
  if (auto json = read_json(config_path)) {
    if (json->contains("model_max_length") && !(*json)["model_max_length"].is_null()) {
      const auto& v = (*json)["model_max_length"];
      if (!v.is_number_integer() || v.get<int64_t>() < 2 || v.get<int64_t>() > (int64_t{1} << 20)) {
        throw Error(fmt::format("tokenizer config {}: 'model_max_length' must be an integer in [2, 1048576], got {}",
                                quoted(config_path), v.dump()));
      }
      config.max_length = v.get<int64_t>();
    }
    read_tokens(*json, config_path);
  }
  auto map_path = folder / "special_tokens_map.json";
  if (auto json = read_json(map_path)) read_tokens(*json, map_path);
  return config;
}

// ---- ClipTokenizer -----------------------------------------------------------------------------

struct ClipTokenizer::Impl {
  TokenizerConfig config;
  std::unordered_map<std::string, int64_t> encoder;
  std::unordered_map<int64_t, std::string> decoder;
  std::unordered_map<std::string, int> ranks;  // "first second" -> rank
  std::unordered_map<char32_t, unsigned char> byte_decoder;
  std::vector<std::string> specials;  // split out of the raw text before cleaning
  int64_t bos = 0, eos = 0, unk = 0, pad = 0;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<std::string>> cache;

  explicit Impl(TokenizerConfig config_);
  // The vocabulary object {"token": id, ...}; `where` names it in messages.
  void read_vocabulary(const nlohmann::json& vocab, const std::string& where);
  // The next merge by rank; `where` names it and `vocabulary` the vocabulary in messages.
  void add_merge(const std::string& first, const std::string& second, const std::string& where,
                 const std::string& vocabulary);
  void add_special(const std::string& token);
  // The ids of the config's bos / eos / unk / pad tokens; `source` names the vocabulary's file.
  void resolve_special_tokens(const std::filesystem::path& source);

  std::vector<std::string> bpe(const std::string& token) const;
  void tokenize_piece(const std::string& piece, std::vector<std::string>& out) const;
};

ClipTokenizer::Impl::Impl(TokenizerConfig config_) : config(std::move(config_)) {
  if (config.max_length < 2) {
    throw Error(fmt::format("tokenizer: max_length must be at least 2 (BOS and EOS), got {}", config.max_length));
  }
  auto cps = byte_code_points();
  for (int b = 0; b < 256; ++b) byte_decoder[cps[b]] = static_cast<unsigned char>(b);
}

void ClipTokenizer::Impl::read_vocabulary(const nlohmann::json& vocab, const std::string& where) {
  if (!vocab.is_object()) throw Error(fmt::format("{}: expected a JSON object of token -> id", where));
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      throw Error(fmt::format("{}: key '{}' must map to a non-negative integer id, got {}", where, token, id.dump()));
    }
    encoder[token] = id.get<int64_t>();
    decoder[id.get<int64_t>()] = token;
  }
}

void ClipTokenizer::Impl::add_merge(const std::string& first, const std::string& second, const std::string& where,
                                    const std::string& vocabulary) {
  // The tokenizers library refuses these too ("Token `x` out of vocabulary").
  for (const std::string* part : {&first, &second}) {
    if (!encoder.count(*part)) {
      throw Error(fmt::format("{}: the merge '{} {}' has '{}', which is not in the vocabulary {}", where, first, second,
                              *part, vocabulary));
    }
  }
  if (!encoder.count(first + second)) {
    throw Error(fmt::format("{}: the merge '{} {}' gives '{}', which is not in the vocabulary {}", where, first, second,
                            first + second, vocabulary));
  }
  // A repeated pair keeps its last rank, as a Python dict does.
  ranks[first + " " + second] = static_cast<int>(ranks.size());
}

void ClipTokenizer::Impl::add_special(const std::string& token) {
  if (std::find(specials.begin(), specials.end(), token) == specials.end()) specials.push_back(token);
}

void ClipTokenizer::Impl::resolve_special_tokens(const std::filesystem::path& source) {
  auto special = [&](const char* key, const std::string& token) {
    auto it = encoder.find(token);
    if (token.empty() || it == encoder.end()) {
      throw Error(fmt::format("tokenizer vocabulary {}: the {} '{}' is not in the vocabulary", quoted(source), key,
                              token));
    }
    add_special(token);
    return it->second;
  };
  bos = special("bos_token", config.bos_token);
  eos = special("eos_token", config.eos_token);
  unk = special("unk_token", config.unk_token);
  pad = special("pad_token", config.pad_token);
}

ClipTokenizer::ClipTokenizer(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt,
                             TokenizerConfig config)
    : impl_(std::make_shared<Impl>(std::move(config))) {
  Impl& m = *impl_;
  m.read_vocabulary(parse_json(read_file(vocab_json, "vocabulary"), vocab_json, "tokenizer vocabulary"),
                    fmt::format("tokenizer vocabulary {}", quoted(vocab_json)));

  // merges.txt: "#version: ..." then one "first second" per line, rank = order; all of them, as the
  // tokenizers library reads the file (transformers 4's slow tokenizer stopped after 48894).
  std::string merges_text = read_file(merges_txt, "merges file");
  while (!merges_text.empty() && std::isspace(static_cast<unsigned char>(merges_text.back()))) merges_text.pop_back();
  std::istringstream lines(merges_text);
  std::string line;
  std::size_t line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_number == 1) {
      if (line.rfind("#version", 0) != 0) {
        throw Error(fmt::format("tokenizer merges {}:1: expected the '#version: ...' header, got '{}'",
                                merges_txt.string(), line));
      }
      continue;
    }
    std::istringstream fields(line);
    std::string first, second, extra;
    if (!(fields >> first >> second) || (fields >> extra)) {
      throw Error(fmt::format("tokenizer merges {}:{}: malformed merge '{}' (expected two symbols separated by a space)",
                              merges_txt.string(), line_number, line));
    }
    m.add_merge(first, second, fmt::format("tokenizer merges {}:{}", merges_txt.string(), line_number), quoted(vocab_json));
  }
  m.resolve_special_tokens(vocab_json);
}

ClipTokenizer::ClipTokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

namespace {

// What dedpo implements of a tokenizer.json: CLIP's pipeline, as transformers' CLIPTokenizer builds it.
const nlohmann::json& clip_normalizer() {
  static const auto json = nlohmann::json::parse(R"({"type": "Sequence", "normalizers": [
      {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]})");
  return json;
}
constexpr const char* kClipSplitPattern =
    R"(<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)";

// Reads and checks a tokenizer.json (the tokenizers library's format) against the CLIP pipeline.
class TokenizerJsonReader {
 public:
  TokenizerJsonReader(const std::filesystem::path& path, nlohmann::json json) : path_(path), json_(std::move(json)) {
    if (!json_.is_object()) throw Error(fmt::format("tokenizer file {}: expected a JSON object", quoted(path_)));
  }

  [[noreturn]] void fail(const std::string& key, const std::string& expected, const nlohmann::json& got) const {
    std::string shown = got.dump();
    if (shown.size() > 200) shown = shown.substr(0, 200) + "...";
    throw Error(fmt::format("tokenizer file {}: key '{}' must be {}, got {}", quoted(path_), key, expected, shown));
  }
  std::string where(const std::string& key) const { return fmt::format("tokenizer file {}: key '{}'", quoted(path_), key); }

  // object[key]; null when absent.
  static const nlohmann::json& field(const nlohmann::json& object, const char* key) {
    static const nlohmann::json null;
    auto it = object.find(key);
    return it == object.end() ? null : *it;
  }
  void expect_type(const nlohmann::json& object, const std::string& at, const char* type) const {
    const auto& value = field(object, "type");
    if (value != type) fail(at + ".type", fmt::format("\"{}\"", type), value);
  }
  // A setting that must be absent, null or equal to `supported` (its value in CLIP's pipeline).
  void expect_setting(const nlohmann::json& object, const std::string& at, const char* key,
                      const nlohmann::json& supported) const {
    const auto& value = field(object, key);
    if (!value.is_null() && value != supported) {
      fail(at + "." + key, fmt::format("{} (the only value dedpo supports) or absent", supported.dump()), value);
    }
  }

  void read(ClipTokenizer::Impl& m) const {
    read_model(m);
    read_added_tokens(m);
    const auto& normalizer = field(json_, "normalizer");
    if (normalizer != clip_normalizer()) {
      fail("normalizer", "CLIP's Sequence [NFC, Replace(\\s+ -> \" \"), Lowercase] (the only one dedpo implements)",
           normalizer);
    }
    read_pre_tokenizer();
    read_post_processor(m);
    const auto& decoder = field(json_, "decoder");
    if (!decoder.is_null()) expect_type(decoder, "decoder", "ByteLevel");
  }

 private:
  void read_model(ClipTokenizer::Impl& m) const {
    const auto& model = field(json_, "model");
    if (!model.is_object()) fail("model", "an object", model);
    expect_type(model, "model", "BPE");
    const auto& suffix = field(model, "end_of_word_suffix");
    if (suffix != "</w>") fail("model.end_of_word_suffix", "\"</w>\" (CLIP's BPE)", suffix);
    expect_setting(model, "model", "continuing_subword_prefix", "");
    expect_setting(model, "model", "dropout", nullptr);
    expect_setting(model, "model", "fuse_unk", false);
    expect_setting(model, "model", "byte_fallback", false);
    expect_setting(model, "model", "ignore_merges", false);
    const auto& unk = field(model, "unk_token");
    if (!unk.is_null() && unk != m.config.unk_token) {
      fail("model.unk_token", fmt::format("the unk_token of the tokenizer config (\"{}\")", m.config.unk_token), unk);
    }
    m.read_vocabulary(field(model, "vocab"), where("model.vocab"));
    const auto& merges = field(model, "merges");
    if (!merges.is_array()) fail("model.merges", "an array of merges", merges);
    for (std::size_t i = 0; i < merges.size(); ++i) {
      const auto& merge = merges[i];
      const std::string at = fmt::format("model.merges[{}]", i);
      std::string first, second, extra;
      if (merge.is_string()) {  // "first second"
        std::istringstream fields(merge.get<std::string>());
        if (!(fields >> first >> second) || (fields >> extra)) {
          fail(at, "\"first second\" (two symbols separated by a space) or [\"first\", \"second\"]", merge);
        }
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string() &&
                 !merge[0].get<std::string>().empty() && !merge[1].get<std::string>().empty()) {
        first = merge[0].get<std::string>(), second = merge[1].get<std::string>();
      } else {
        fail(at, "\"first second\" (two symbols separated by a space) or [\"first\", \"second\"]", merge);
      }
      m.add_merge(first, second, where(at), "model.vocab");
    }
  }

  // Added tokens are split out of the raw text (before normalisation), each its own id.
  void read_added_tokens(ClipTokenizer::Impl& m) const {
    const auto& added = field(json_, "added_tokens");
    if (added.is_null()) return;
    if (!added.is_array()) fail("added_tokens", "an array", added);
    for (std::size_t i = 0; i < added.size(); ++i) {
      const auto& token = added[i];
      const std::string at = fmt::format("added_tokens[{}]", i);
      if (!token.is_object()) fail(at, "an object", token);
      const auto& content = field(token, "content");
      const auto& id = field(token, "id");
      if (!content.is_string() || content.get<std::string>().empty()) fail(at + ".content", "a non-empty string", content);
      auto known = m.encoder.find(content.get<std::string>());
      if (!id.is_number_integer() || known == m.encoder.end() || known->second != id.get<int64_t>()) {
        fail(at + ".id", fmt::format("the id of \"{}\" in model.vocab", content.get<std::string>()), id);
      }
      for (const char* key : {"single_word", "lstrip", "rstrip", "normalized"}) expect_setting(token, at, key, false);
      m.add_special(content.get<std::string>());
    }
  }

  void read_pre_tokenizer() const {
    const auto& pre = field(json_, "pre_tokenizer");
    const char* expected = "CLIP's Sequence [Split(its pattern, Removed, invert), ByteLevel(add_prefix_space false)]";
    if (!pre.is_object()) fail("pre_tokenizer", expected, pre);
    expect_type(pre, "pre_tokenizer", "Sequence");
    const auto& steps = field(pre, "pretokenizers");
    if (!steps.is_array() || steps.size() != 2) fail("pre_tokenizer.pretokenizers", expected, steps);
    const auto& split = steps[0];
    expect_type(split, "pre_tokenizer.pretokenizers[0]", "Split");
    const auto& pattern = field(split, "pattern");
    if (!pattern.is_object() || field(pattern, "Regex") != kClipSplitPattern) {
      fail("pre_tokenizer.pretokenizers[0].pattern", fmt::format("{{\"Regex\": \"{}\"}} (CLIP's)", kClipSplitPattern),
           pattern);
    }
    if (field(split, "behavior") != "Removed") fail("pre_tokenizer.pretokenizers[0].behavior", "\"Removed\"", field(split, "behavior"));
    if (field(split, "invert") != true) fail("pre_tokenizer.pretokenizers[0].invert", "true", field(split, "invert"));
    const auto& byte_level = steps[1];
    expect_type(byte_level, "pre_tokenizer.pretokenizers[1]", "ByteLevel");
    expect_setting(byte_level, "pre_tokenizer.pretokenizers[1]", "add_prefix_space", false);
    expect_setting(byte_level, "pre_tokenizer.pretokenizers[1]", "use_regex", true);
  }

  // RobertaProcessing: cls + ids + sep, which must be the config's bos and eos.
  void read_post_processor(const ClipTokenizer::Impl& m) const {
    const auto& post = field(json_, "post_processor");
    if (post.is_null()) return;
    expect_type(post, "post_processor", "RobertaProcessing");
    for (auto [key, token] : {std::pair{"cls", &m.config.bos_token}, std::pair{"sep", &m.config.eos_token}}) {
      const auto& value = field(post, key);
      auto known = m.encoder.find(*token);
      if (!value.is_array() || value.size() != 2 || value[0] != *token || known == m.encoder.end() ||
          value[1] != known->second) {
        fail(fmt::format("post_processor.{}", key),
             fmt::format("[\"{}\", its id] (the {} of the tokenizer config)", *token, key == std::string("cls") ? "bos_token" : "eos_token"),
             value);
      }
    }
  }

  std::filesystem::path path_;
  nlohmann::json json_;
};

}  // namespace

ClipTokenizer ClipTokenizer::from_tokenizer_json(const std::filesystem::path& tokenizer_json, TokenizerConfig config) {
  auto impl = std::make_shared<Impl>(std::move(config));
  TokenizerJsonReader(tokenizer_json, parse_json(read_file(tokenizer_json, "tokenizer file"), tokenizer_json,
                                                 "tokenizer file"))
      .read(*impl);
  impl->resolve_special_tokens(tokenizer_json);
  return ClipTokenizer(std::move(impl));
}

ClipTokenizer ClipTokenizer::from_folder(const std::filesystem::path& folder) {
  // tokenizer.json first, as transformers 5 does; transformers 5's save_pretrained writes only it.
  if (std::filesystem::exists(folder / "tokenizer.json")) {
    return from_tokenizer_json(folder / "tokenizer.json", TokenizerConfig::from_folder(folder));
  }
  return ClipTokenizer(folder / "vocab.json", folder / "merges.txt", TokenizerConfig::from_folder(folder));
}

// CLIPTokenizer.bpe on a byte-mapped pre-token: the lowest-ranked adjacent pair is merged everywhere
// (left to right, non-overlapping) until no adjacent pair has a rank.
std::vector<std::string> ClipTokenizer::Impl::bpe(const std::string& token) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(token);
    if (it != cache.end()) return it->second;
  }
  std::vector<std::string> word;
  for (char32_t cp : decode_utf8(token)) {
    word.emplace_back();
    append_utf8(word.back(), cp);
  }
  word.back() += "</w>";
  while (word.size() > 1) {
    int best = std::numeric_limits<int>::max();
    std::size_t best_at = 0;
    for (std::size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = ranks.find(word[i] + " " + word[i + 1]);
      if (it != ranks.end() && it->second < best) best = it->second, best_at = i;
    }
    if (best == std::numeric_limits<int>::max()) break;
    const std::string first = word[best_at], second = word[best_at + 1];
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (std::size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i]);
        i += 1;
      }
    }
    word = std::move(merged);
  }
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache.emplace(token, word);
  return word;
}

// CLIPTokenizer._tokenize on one piece of text between special tokens.
void ClipTokenizer::Impl::tokenize_piece(const std::string& piece, std::vector<std::string>& out) const {
  const auto& byte_encoder = tokenizer_detail::bytes_to_unicode();
  for (const auto& pre : pre_tokenize_cp(clean(decode_utf8(piece), config.split_cjk_ideographs))) {
    // The fast tokenizer's ByteLevel step splits each pre-token again with GPT-2's pattern. Of
    // CLIP's pre-tokens only its two special-token alternatives (a special token cased otherwise
    // in the text, lower-cased after the split on special tokens) mix punctuation and letters: they
    // become "<|", the name and "|>", each ending a word.
    const bool special_text = pre == U"<|startoftext|>" || pre == U"<|endoftext|>";
    const std::vector<std::u32string> parts =
        special_text ? std::vector<std::u32string>{pre.substr(0, 2), pre.substr(2, pre.size() - 4), pre.substr(pre.size() - 2)}
                     : std::vector<std::u32string>{pre};
    for (const auto& part : parts) {
      std::string mapped;
      for (unsigned char b : encode_utf8(part)) mapped += byte_encoder[b];
      for (auto& symbol : bpe(mapped)) out.push_back(std::move(symbol));
    }
  }
}

std::vector<std::string> ClipTokenizer::tokenize(const std::string& text) const {
  const Impl& m = *impl_;
  std::vector<std::string> out;
  // Split on the special tokens: leftmost match, longest at that position.
  std::size_t start = 0, at = 0;
  while (at < text.size()) {
    const std::string* found = nullptr;
    for (const auto& s : m.specials) {
      if (text.compare(at, s.size(), s) == 0 && (!found || s.size() > found->size())) found = &s;
    }
    if (!found) {
      ++at;
      continue;
    }
    if (at > start) m.tokenize_piece(text.substr(start, at - start), out);
    out.push_back(*found);
    at += found->size();
    start = at;
  }
  if (start < text.size()) m.tokenize_piece(text.substr(start), out);
  return out;
}

std::vector<int64_t> ClipTokenizer::encode_ids(const std::string& text) const {
  std::vector<int64_t> ids;
  for (const auto& token : tokenize(text)) {
    auto it = impl_->encoder.find(token);
    ids.push_back(it == impl_->encoder.end() ? impl_->unk : it->second);
  }
  return ids;
}

TokenizerOutput ClipTokenizer::encode(const std::string& text) const {
  const Impl& m = *impl_;
  auto ids = encode_ids(text);
  const auto length = static_cast<std::size_t>(m.config.max_length);
  if (ids.size() > length - 2) ids.resize(length - 2);  // truncation keeps the start
  TokenizerOutput out;
  out.input_ids.reserve(length);
  out.input_ids.push_back(m.bos);
  out.input_ids.insert(out.input_ids.end(), ids.begin(), ids.end());
  out.input_ids.push_back(m.eos);
  out.attention_mask.assign(out.input_ids.size(), 1);
  out.input_ids.resize(length, m.pad);
  out.attention_mask.resize(length, 0);
  return out;
}

TokenizerBatch ClipTokenizer::encode_batch(const std::vector<std::string>& texts) const {
  const int64_t n = static_cast<int64_t>(texts.size());
  const int64_t length = impl_->config.max_length;
  TokenizerBatch batch;
  batch.input_ids = at::empty({n, length}, at::TensorOptions().dtype(at::kLong));       // [N, L]
  batch.attention_mask = at::empty({n, length}, at::TensorOptions().dtype(at::kLong));  // [N, L]
  int64_t* ids = batch.input_ids.data_ptr<int64_t>();
  int64_t* mask = batch.attention_mask.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    auto one = encode(texts[i]);
    std::copy(one.input_ids.begin(), one.input_ids.end(), ids + i * length);
    std::copy(one.attention_mask.begin(), one.attention_mask.end(), mask + i * length);
  }
  return batch;
}

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> parts;
  std::string bytes;
  auto flush = [&] {
    if (bytes.empty()) return;
    std::string text = sanitize_utf8(bytes);
    bytes.clear();
    std::string replaced;
    for (std::size_t i = 0; i < text.size();) {
      if (text.compare(i, 4, "</w>") == 0) {
        replaced += ' ';
        i += 4;
      } else {
        replaced += text[i++];
      }
    }
    auto first = replaced.find_first_not_of(" \t\n\r\f\v");
    auto last = replaced.find_last_not_of(" \t\n\r\f\v");
    if (first != std::string::npos) parts.push_back(replaced.substr(first, last - first + 1));
  };
  for (int64_t id : ids) {
    auto it = m.decoder.find(id);
    if (it == m.decoder.end()) throw Error(fmt::format("tokenizer: id {} is not in the vocabulary", id));
    const std::string& token = it->second;
    if (std::find(m.specials.begin(), m.specials.end(), token) != m.specials.end()) {
      flush();
      if (!skip_special_tokens) parts.push_back(token);
      continue;
    }
    for (char32_t cp : decode_utf8(token)) {
      auto b = m.byte_decoder.find(cp);
      if (b == m.byte_decoder.end()) {
        throw Error(fmt::format("tokenizer: vocabulary entry '{}' (id {}) is not byte-level encoded", token, id));
      }
      bytes.push_back(static_cast<char>(b->second));
    }
  }
  flush();
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : " ") + p;
  return out;
}

int64_t ClipTokenizer::token_to_id(const std::string& token) const {
  auto it = impl_->encoder.find(token);
  if (it == impl_->encoder.end()) throw Error(fmt::format("tokenizer: '{}' is not in the vocabulary", token));
  return it->second;
}
int64_t ClipTokenizer::bos_id() const { return impl_->bos; }
int64_t ClipTokenizer::eos_id() const { return impl_->eos; }
int64_t ClipTokenizer::unk_id() const { return impl_->unk; }
int64_t ClipTokenizer::pad_id() const { return impl_->pad; }
int64_t ClipTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->encoder.size()); }
const TokenizerConfig& ClipTokenizer::config() const { return impl_->config; }

}  // namespace dedpo::sd
