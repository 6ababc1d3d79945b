#include "dedpo/sd/tokenizer.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

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

// ---- Unicode categories (tables; see the limits in the header) ----------------------------------

struct Range {
  char32_t lo, hi;
};

bool in_ranges(char32_t cp, const Range* ranges, std::size_t count) {
  // Ranges are sorted and disjoint.
  const Range* end = ranges + count;
  const Range* it = std::upper_bound(ranges, end, cp, [](char32_t c, const Range& r) { return c < r.lo; });
  return it != ranges && cp <= (it - 1)->hi;
}

// \p{L} (subset).
constexpr Range kLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xAA, 0xAA},       {0xB5, 0xB5},       {0xBA, 0xBA},
    {0xC0, 0xD6},       {0xD8, 0xF6},       {0xF8, 0x2C1},      {0x2C6, 0x2D1},     {0x2E0, 0x2E4},
    {0x2EC, 0x2EC},     {0x2EE, 0x2EE},     {0x370, 0x374},     {0x376, 0x377},     {0x37A, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},     {0x38E, 0x3A1},
    {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},     {0x531, 0x556},     {0x559, 0x559},
    {0x560, 0x588},     {0x5D0, 0x5EA},     {0x5EF, 0x5F2},     {0x620, 0x64A},     {0x66E, 0x66F},
    {0x671, 0x6D3},     {0x6D5, 0x6D5},     {0x904, 0x939},     {0x93D, 0x93D},     {0x950, 0x950},
    {0x958, 0x961},     {0x971, 0x980},     {0xE01, 0xE30},     {0xE32, 0xE33},     {0xE40, 0xE46},
    {0x1100, 0x11FF},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},   {0x1F48, 0x1F4D},
    {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},   {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},
    {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},   {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},
    {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2C60, 0x2C7F},   {0x3005, 0x3006},   {0x3031, 0x3035},   {0x303B, 0x303C},   {0x3041, 0x3096},
    {0x309D, 0x309F},   {0x30A1, 0x30FA},   {0x30FC, 0x30FF},   {0x3131, 0x318E},   {0x3400, 0x4DBF},
    {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},   {0xF900, 0xFA6D},   {0xFA70, 0xFAD9},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0xFF66, 0xFFBE},   {0x20000, 0x2A6DF}, {0x2A700, 0x2B739}, {0x2B740, 0x2B81D},
    {0x2B820, 0x2CEA1}, {0x2CEB0, 0x2EBE0}, {0x2F800, 0x2FA1D}, {0x30000, 0x3134A},
};

// \p{N} (subset).
constexpr Range kNumbers[] = {
    {0x30, 0x39},     {0xB2, 0xB3},     {0xB9, 0xB9},     {0xBC, 0xBE},     {0x660, 0x669},
    {0x6F0, 0x6F9},   {0x966, 0x96F},   {0xE50, 0xE59},   {0x2070, 0x2070}, {0x2074, 0x2079},
    {0x2080, 0x2089}, {0x2150, 0x2182}, {0x2185, 0x2189}, {0x2460, 0x249B}, {0x24EA, 0x24FF},
    {0x2776, 0x2793}, {0x3007, 0x3007}, {0x3021, 0x3029}, {0x3038, 0x303A}, {0x3192, 0x3195},
    {0x3220, 0x3229}, {0x3248, 0x324F}, {0x3251, 0x325F}, {0x3280, 0x3289}, {0x32B1, 0x32BF},
    {0xFF10, 0xFF19},
};

// Python's str.isspace (what re's \s matches in str patterns).
constexpr Range kSpaces[] = {
    {0x09, 0x0D},     {0x1C, 0x20},     {0x85, 0x85},     {0xA0, 0xA0},     {0x1680, 0x1680},
    {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
};

// BasicTokenizer._is_chinese_char.
constexpr Range kCjkIdeographs[] = {
    {0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xF900, 0xFAFF},   {0x20000, 0x2A6DF},
    {0x2A700, 0x2B73F}, {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0x2F800, 0x2FA1F},
};

bool is_letter(char32_t cp) { return in_ranges(cp, kLetters, std::size(kLetters)); }
bool is_number(char32_t cp) { return in_ranges(cp, kNumbers, std::size(kNumbers)); }
bool is_space(char32_t cp) { return in_ranges(cp, kSpaces, std::size(kSpaces)); }
bool is_cjk(char32_t cp) { return in_ranges(cp, kCjkIdeographs, std::size(kCjkIdeographs)); }

// Simple lower-case mapping of one code point (see the header for what is covered).
char32_t lower_simple(char32_t c) {
  auto even_to_odd = [&](char32_t lo, char32_t hi) { return c >= lo && c <= hi && (c % 2) == (lo % 2); };
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c < 0xC0) return c;
  if (c <= 0xDE) return c == 0xD7 ? c : c + 32;                                  // Latin-1
  if (even_to_odd(0x100, 0x12F) || even_to_odd(0x132, 0x137)) return c + 1;     // Latin Ext-A
  if (even_to_odd(0x139, 0x148) || even_to_odd(0x14A, 0x177)) return c + 1;
  if (c == 0x178) return 0xFF;
  if (even_to_odd(0x179, 0x17E)) return c + 1;
  if (c == 0x386) return 0x3AC;                                                   // Greek
  if (c >= 0x388 && c <= 0x38A) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (c == 0x38E || c == 0x38F) return c + 63;
  if ((c >= 0x391 && c <= 0x3A1) || (c >= 0x3A3 && c <= 0x3AB)) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;                                   // Cyrillic
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (even_to_odd(0x460, 0x481) || even_to_odd(0x48A, 0x4BF)) return c + 1;
  if (c == 0x4C0) return 0x4CF;
  if (even_to_odd(0x4C1, 0x4CE)) return c + 1;
  if (even_to_odd(0x4D0, 0x52F)) return c + 1;
  if (c >= 0x531 && c <= 0x556) return c + 48;                                   // Armenian
  if (even_to_odd(0x1E00, 0x1E95) || even_to_odd(0x1EA0, 0x1EFF)) return c + 1;  // Latin Ext Add.
  if (c == 0x1E9E) return 0xDF;
  if (c >= 0x2160 && c <= 0x216F) return c + 16;                                 // Roman numerals
  if (c >= 0x24B6 && c <= 0x24CF) return c + 26;                                 // circled letters
  if (c >= 0xFF21 && c <= 0xFF3A) return c + 32;                                 // fullwidth
  return c;
}

// The tokenizers library's Lowercase normaliser on the covered ranges: each code point on its own
// (so Σ is always σ, never the final ς of Python's str.lower()), İ -> i + U+0307.
std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c == 0x130) {  // İ -> i + COMBINING DOT ABOVE
      out.push_back(U'i');
      out.push_back(0x307);
    } else {
      out.push_back(lower_simple(c));
    }
  }
  return out;
}

std::u32string clean(const std::u32string& text, bool split_cjk) {
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
  // whitespace_clean: re.sub(r"\s+", " ", text).strip()
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
    std::string text = read_file(path, "tokenizer config");
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("tokenizer config {}: malformed JSON: {}", quoted(path), e.what()));
    }
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

  std::vector<std::string> bpe(const std::string& token) const;
  void tokenize_piece(const std::string& piece, std::vector<std::string>& out) const;
};

namespace {

// The maximum number of merges CLIPTokenizer reads: lines [1, 49152 - 256 - 2 + 1) of the file.
constexpr std::size_t kMaxMerges = 49152 - 256 - 2;

}  // namespace

ClipTokenizer::ClipTokenizer(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt,
                             TokenizerConfig config)
    : impl_(std::make_shared<Impl>()) {
  Impl& m = *impl_;
  if (config.max_length < 2) {
    throw Error(fmt::format("tokenizer: max_length must be at least 2 (BOS and EOS), got {}", config.max_length));
  }
  m.config = std::move(config);

  // vocab.json: {"token": id, ...}
  std::string vocab_text = read_file(vocab_json, "vocabulary");
  nlohmann::json vocab;
  try {
    vocab = nlohmann::json::parse(vocab_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("tokenizer vocabulary {}: malformed JSON: {}", quoted(vocab_json), e.what()));
  }
  if (!vocab.is_object()) {
    throw Error(fmt::format("tokenizer vocabulary {}: expected a JSON object of token -> id", quoted(vocab_json)));
  }
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      throw Error(fmt::format("tokenizer vocabulary {}: key '{}' must map to a non-negative integer id, got {}",
                              quoted(vocab_json), token, id.dump()));
    }
    m.encoder[token] = id.get<int64_t>();
    m.decoder[id.get<int64_t>()] = token;
  }

  // merges.txt: "#version: ..." then one "first second" per line, rank = order.
  std::string merges_text = read_file(merges_txt, "merges file");
  while (!merges_text.empty() && std::isspace(static_cast<unsigned char>(merges_text.back()))) merges_text.pop_back();
  std::istringstream lines(merges_text);
  std::string line;
  std::size_t line_number = 0;
  int rank = 0;
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
    if (static_cast<std::size_t>(rank) >= kMaxMerges) break;
    std::istringstream fields(line);
    std::string first, second, extra;
    if (!(fields >> first >> second) || (fields >> extra)) {
      throw Error(fmt::format("tokenizer merges {}:{}: malformed merge '{}' (expected two symbols separated by a space)",
                              merges_txt.string(), line_number, line));
    }
    if (!m.encoder.count(first + second)) {
      throw Error(fmt::format("tokenizer merges {}:{}: the merge '{} {}' gives '{}', which is not in the vocabulary {}",
                              merges_txt.string(), line_number, first, second, first + second, quoted(vocab_json)));
    }
    m.ranks[first + " " + second] = rank++;  // a repeated pair keeps its last rank, as a Python dict does
  }

  auto cps = byte_code_points();
  for (int b = 0; b < 256; ++b) m.byte_decoder[cps[b]] = static_cast<unsigned char>(b);

  auto special = [&](const char* key, const std::string& token) {
    auto it = m.encoder.find(token);
    if (token.empty() || it == m.encoder.end()) {
      throw Error(fmt::format("tokenizer vocabulary {}: the {} '{}' is not in the vocabulary", quoted(vocab_json), key,
                              token));
    }
    if (std::find(m.specials.begin(), m.specials.end(), token) == m.specials.end()) m.specials.push_back(token);
    return it->second;
  };
  m.bos = special("bos_token", m.config.bos_token);
  m.eos = special("eos_token", m.config.eos_token);
  m.unk = special("unk_token", m.config.unk_token);
  m.pad = special("pad_token", m.config.pad_token);
}

ClipTokenizer ClipTokenizer::from_folder(const std::filesystem::path& folder) {
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
