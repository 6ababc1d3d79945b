// The CLIP BPE tokenizer against a miniature CLIP vocabulary built here, with every expected id
// derived by hand from transformers' CLIPTokenizer algorithm.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/sd/tokenizer.hpp"
#include "test_support.hpp"

namespace {

using dedpo::sd::ClipTokenizer;
using dedpo::sd::TokenizerConfig;
namespace detail = dedpo::sd::tokenizer_detail;
using Ids = std::vector<int64_t>;

// ---- The miniature vocabulary ------------------------------------------------------------------
// Laid out as CLIP's: ids 0..255 are the 256 byte symbols, first the 188 printable bytes in byte
// order ('!'..'~' -> 0..93, '¡'..'¬' -> 94..105, '®'..'ÿ' -> 106..187), then the 68 others in byte
// order (0x00..0x20 -> 188..220, 0x7F..0xA0 -> 221..254, 0xAD -> 255); 256..511 the same symbols
// + "</w>"; then one entry per merge (512 + rank); then <|startoftext|> and <|endoftext|>.
// So for printable ASCII c: id(c) = c - 33 and id(c + "</w>") = c + 223.
int64_t byte_id(unsigned b) {
  if (b >= 33 && b <= 126) return b - 33;
  if (b >= 161 && b <= 172) return 94 + (b - 161);
  if (b >= 174) return 106 + (b - 174);
  if (b <= 32) return 188 + b;
  if (b <= 160) return 221 + (b - 127);
  return 255;  // 0xAD
}

std::string utf8(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// The symbol standing for a byte: printable bytes stand for themselves, the others for
// U+0100 + (their position among the non-printable bytes).
std::string byte_symbol(unsigned b) {
  int64_t id = byte_id(b);
  return utf8(id < 188 ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + (id - 188)));
}

const std::vector<std::string> kMerges = {
    "e r</w>",     // 0 -> er</w>     512
    "l o",         // 1 -> lo         513
    "lo w",        // 2 -> low        514
    "low er</w>",  // 3 -> lower</w>  515
    "a t</w>",     // 4 -> at</w>     516
    "c a",         // 5 -> ca         517
    "' s</w>",     // 6 -> 's</w>     518
    "i t</w>",     // 7 -> it</w>     519
    "' r",         // 8 -> 'r         520
    "'r e</w>",    // 9 -> 're</w>    521
    "t h",         // 10 -> th        522
    "th e</w>",    // 11 -> the</w>   523
    "a n",         // 12 -> an        524
    "! !</w>",     // 13 -> !!</w>    525
    "Ã ©</w>",     // 14 -> Ã©</w>    526 ("é" is C3 A9: 'Ã' '©')
};
constexpr int64_t kBos = 527, kEos = 528;

nlohmann::json mini_vocab() {
  nlohmann::json vocab = nlohmann::json::object();
  for (unsigned b = 0; b < 256; ++b) {
    vocab[byte_symbol(b)] = byte_id(b);
    vocab[byte_symbol(b) + "</w>"] = 256 + byte_id(b);
  }
  for (std::size_t r = 0; r < kMerges.size(); ++r) {
    std::string merged = kMerges[r];
    merged.erase(merged.find(' '), 1);
    vocab[merged] = static_cast<int64_t>(512 + r);
  }
  vocab["<|startoftext|>"] = kBos;
  vocab["<|endoftext|>"] = kEos;
  return vocab;
}

std::string mini_merges() {
  std::string text = "#version: 0.2\n";
  for (const auto& m : kMerges) text += m + "\n";
  return text;
}

struct Mini {
  dedpo::test::TempDir dir;
  std::filesystem::path vocab = dir / "tokenizer/vocab.json";
  std::filesystem::path merges = dir / "tokenizer/merges.txt";
  explicit Mini(const nlohmann::json& v = mini_vocab(), const std::string& m = mini_merges()) {
    dedpo::test::write_file(vocab, v.dump());
    dedpo::test::write_file(merges, m);
  }
  ClipTokenizer make(TokenizerConfig config = {}) const { return ClipTokenizer(vocab, merges, config); }
};

TokenizerConfig short_config(int64_t max_length, std::string pad = "<|endoftext|>") {
  TokenizerConfig c;
  c.max_length = max_length;
  c.pad_token = std::move(pad);
  return c;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const dedpo::Error& e) {
    return e.what();
  }
  return "<no dedpo::Error>";
}

// ---- Building blocks ---------------------------------------------------------------------------

TEST(ClipTokenizer, BytesToUnicodeIsGpt2Table) {
  const auto& table = detail::bytes_to_unicode();
  ASSERT_EQ(table.size(), 256u);
  EXPECT_EQ(table['!'], "!");
  EXPECT_EQ(table['~'], "~");
  EXPECT_EQ(table[0xE9], "\u00e9");
  EXPECT_EQ(table[0x00], "\u0100");  // first non-printable byte
  EXPECT_EQ(table[' '], "\u0120");   // 'Ġ'
  EXPECT_EQ(table[0x7F], "\u0121");
  EXPECT_EQ(table[0xAD], "\u0143");  // 'Ń', the last one
  for (unsigned b = 0; b < 256; ++b) EXPECT_EQ(table[b], byte_symbol(b)) << b;
}

TEST(ClipTokenizer, CleanTextCollapsesWhitespaceAndLowerCases) {
  EXPECT_EQ(detail::clean_text("  Hello \t\n World\u00a0\u3000AGAIN  "), "hello world again");
  EXPECT_EQ(detail::clean_text(""), "");
  EXPECT_EQ(detail::clean_text(" \t "), "");
  // Latin-1, Latin Extended-A (Ÿ -> ÿ), Python's İ -> "i" + U+0307.
  EXPECT_EQ(detail::clean_text("\u00c0\u00c9\u00ce\u00d5\u00dc \u0178 \u0130 \u0141\u00d7"),
            "\u00e0\u00e9\u00ee\u00f5\u00fc \u00ff i\u0307 \u0142\u00d7");
  // Greek, one code point at a time as the tokenizers library does (no final ς): ΟΔΟΣ ΣΟΦΙΑ -> οδοσ σοφια.
  EXPECT_EQ(detail::clean_text("\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u0399\u0391"),
            "\u03bf\u03b4\u03bf\u03c3 \u03c3\u03bf\u03c6\u03b9\u03b1");
  // Cyrillic МИР ЁЖ -> мир ёж; CJK unchanged.
  EXPECT_EQ(detail::clean_text("\u041c\u0418\u0420 \u0401\u0416 \u732b"), "\u043c\u0438\u0440 \u0451\u0436 \u732b");
  EXPECT_EQ(detail::clean_text("\u732b\u72ac", /*split_cjk_ideographs=*/true), "\u732b \u72ac");
}

TEST(ClipTokenizer, CleanTextNormalisesAsTokenizerJsonSays) {
  // NFC composes e + U+0301 and Hangul jamo; it keeps compatibility forms (NFKC would fold them):
  // the ligature ﬁ, fullwidth Ａ (lower-cased to ａ), the circled Ⓐ (to ⓐ).
  EXPECT_EQ(detail::clean_text("e\u0301 \u1100\u1161 \ufb01 \uff21 \u24b6"), "\u00e9 \uac00 \ufb01 \uff41 \u24d0");
  // Full case mappings beyond Latin / Greek / Cyrillic: Cherokee Ꭰ -> ꭰ, Georgian Mtavruli Ა -> ა,
  // Deseret 𐐀 -> 𐐨, titlecase ǅ -> ǆ, capital sharp s ẞ -> ß.
  EXPECT_EQ(detail::clean_text("\u13a0 \u1c90 \U00010400 \u01c5 \u1e9e"), "\uab70 \u10d0 \U00010428 \u01c6 \u00df");
  // White_Space is what collapses: U+0085 and U+2028 do; U+001C (a space to Python), U+200B
  // (zero-width space) and U+180E (Mongolian vowel separator) do not.
  EXPECT_EQ(detail::clean_text("a\u0085b\u2028c"), "a b c");
  EXPECT_EQ(detail::clean_text("a\x1c\u200b\u180eb"), "a\x1c\u200b\u180eb");
}

TEST(ClipTokenizer, PreTokenizePattern) {
  using V = std::vector<std::string>;
  // Contractions, then a greedy punctuation run that swallows the apostrophe ("!'" then "s").
  EXPECT_EQ(detail::pre_tokenize("it's!'s 'x they're"), (V{"it", "'s", "!'", "s", "'", "x", "they", "'re"}));
  // Numbers one digit at a time; letters in runs.
  EXPECT_EQ(detail::pre_tokenize("x9 2024 3.5"), (V{"x", "9", "2", "0", "2", "4", "3", ".", "5"}));
  EXPECT_EQ(detail::pre_tokenize("<|startoftext|>a<|endoftext|>"), (V{"<|startoftext|>", "a", "<|endoftext|>"}));
  // Non-ASCII letters group with ASCII ones; an emoji is punctuation; CJK is a letter.
  EXPECT_EQ(detail::pre_tokenize("caf\u00e9\U0001F642\u732b\u72ac \u043c\u0438\u0440"),
            (V{"caf\u00e9", "\U0001F642", "\u732b\u72ac", "\u043c\u0438\u0440"}));
  // A combining mark is not a letter: the word breaks there (encoding composes e + U+0301 first).
  EXPECT_EQ(detail::pre_tokenize("e\u0301t"), (V{"e", "\u0301", "t"}));
  // Letters and numbers of any script (Ethiopic, Adlam, mathematical bold, superscript two); a
  // zero-width joiner and U+001C are punctuation.
  EXPECT_EQ(detail::pre_tokenize("\u12a0\U0001E922\U0001D400\u00b2\u200d\x1cx"),
            (V{"\u12a0\U0001E922\U0001D400", "\u00b2", "\u200d\x1c", "x"}));
}

// ---- Encoding ----------------------------------------------------------------------------------

TEST(ClipTokenizer, LowerCasingAndWhitespaceCleanUp) {
  Mini mini;
  auto tok = mini.make();
  // "a cat": a</w> = 'a' + 223 = 320; "cat" -> c, at</w> (see RanksNotGreedy).
  EXPECT_EQ(tok.encode_ids("  A \t CAT\n\n"), (Ids{320, 66, 516}));
  EXPECT_EQ(tok.tokenize("  A \t CAT\n\n"), (std::vector<std::string>{"a</w>", "c", "at</w>"}));
  EXPECT_EQ(tok.encode_ids(""), Ids{});
}

TEST(ClipTokenizer, Contractions) {
  Mini mini;
  auto tok = mini.make();
  // "it's they're" -> it | 's | they | 're
  //   it   : i t</w> -> (i, t</w>) rank 7 -> it</w> 519
  //   's   : ' s</w> -> rank 6 -> 's</w> 518
  //   they : t h e y</w> -> (t, h) rank 10 -> th e y</w>; "th e" has no rank -> 522, 68, 'y'+223 = 344
  //   're  : ' r e</w> -> (' r) rank 8 -> 'r e</w> -> rank 9 -> 're</w> 521
  EXPECT_EQ(tok.encode_ids("It's THEY'RE"), (Ids{519, 518, 522, 68, 344, 521}));
}

TEST(ClipTokenizer, PunctuationRuns) {
  Mini mini;
  auto tok = mini.make();
  // wow | !!! | ... | a | , | b
  //   wow : w o w</w>, no merge applies -> 86, 78, 342
  //   !!! : ! ! !</w>: "! !" has no rank, (! !</w>) rank 13 -> ! !!</w> -> 0, 525
  //   ... : 13, 13, '.'+223 = 269
  EXPECT_EQ(tok.encode_ids("wow!!! ...a,b"), (Ids{86, 78, 342, 0, 525, 13, 13, 269, 320, 267, 321}));
}

TEST(ClipTokenizer, NumbersSplitPerDigit) {
  Mini mini;
  auto tok = mini.make();
  // x | 9 | 2 | 0 | 2 | 4 | 3 | . | 5, each a single symbol + </w>: c + 223.
  EXPECT_EQ(tok.encode_ids("x9 2024 3.5"), (Ids{343, 280, 273, 271, 273, 275, 274, 269, 276}));
}

TEST(ClipTokenizer, NonAsciiLetters) {
  Mini mini;
  auto tok = mini.make();
  // "Café" -> "café" = c a f C3 A9 -> symbols c a f Ã ©</w>;
  //   (c a) rank 5 -> ca f Ã ©</w>; (Ã ©</w>) rank 14 -> ca f Ã©</w> -> 517, 69, 526
  EXPECT_EQ(tok.encode_ids("Caf\u00c9"), (Ids{517, 69, 526}));
  // "ÜBER" -> "über" = C3 BC b e r -> Ã ¼ b e r</w>; (e r</w>) rank 0 -> Ã ¼ b er</w>
  //   Ã (0xC3) = 106 + (0xC3 - 0xAE) = 127; ¼ (0xBC) = 106 + 14 = 120; b = 65; er</w> = 512
  EXPECT_EQ(tok.encode_ids("\u00dcBER"), (Ids{127, 120, 65, 512}));
  // "МИР" -> "мир" = D0 BC D0 B8 D1 80, one pre-token, no merges:
  //   D0 -> 140, BC -> 120, D0 -> 140, B8 -> 116, D1 -> 141, 80 (non-printable: 221 + 1) + </w> -> 478
  EXPECT_EQ(tok.encode_ids("\u041c\u0418\u0420"), (Ids{140, 120, 140, 116, 141, 478}));
  // "猫 cat": 猫 U+732B = E7 8C AB -> E7 = 163, 8C = 221 + 13 = 234, AB = 94 + 10 = 104 -> </w> 360
  EXPECT_EQ(tok.encode_ids("\u732b cat"), (Ids{163, 234, 360, 66, 516}));
  // Two ideographs are one pre-token by default, two with split_cjk_ideographs:
  //   犬 U+72AC = E7 8A AC -> 163, 232, AC (0xAC = 105) + </w> = 361
  EXPECT_EQ(tok.encode_ids("\u732b\u72ac"), (Ids{163, 234, 104, 163, 232, 361}));
  TokenizerConfig split;
  split.split_cjk_ideographs = true;
  EXPECT_EQ(mini.make(split).encode_ids("\u732b\u72ac"), (Ids{163, 234, 360, 163, 232, 361}));
}

TEST(ClipTokenizer, DecomposedTextEncodesAsComposed) {
  Mini mini;
  auto tok = mini.make();
  EXPECT_EQ(tok.encode_ids("Cafe\u0301"), (Ids{517, 69, 526}));  // as "Café" in NonAsciiLetters
}

TEST(ClipTokenizer, MergesAppliedByRankNotGreedily) {
  Mini mini;
  auto tok = mini.make();
  // cat: c a t</w>. Left to right would merge (c a) first and give ca t</w> (517, 339); by rank,
  // (a t</w>) rank 4 beats (c a) rank 5: c at</w>, and (c at</w>) has no rank -> 66, 516.
  EXPECT_EQ(tok.encode_ids("cat"), (Ids{66, 516}));
  // lower: l o w e r</w> -> rank 0 (e r</w>): l o w er</w> -> rank 1: lo w er</w>
  //        -> rank 2: low er</w> -> rank 3: lower</w> 515
  EXPECT_EQ(tok.encode_ids("lower"), (Ids{515}));
  // the: t h e</w> -> rank 10: th e</w> -> rank 11: the</w> 523
  EXPECT_EQ(tok.encode_ids("the"), (Ids{523}));
  // banana: b a n a n a</w>; (a n) rank 12 merges both occurrences: b an an a</w>
  EXPECT_EQ(tok.encode_ids("banana"), (Ids{65, 524, 524, 320}));
  // The cache gives the same answer the second time.
  EXPECT_EQ(tok.encode_ids("lower cat lower"), (Ids{515, 66, 516, 515}));
}

TEST(ClipTokenizer, UnknownCharactersFallBackToBytes) {
  Mini mini;
  auto tok = mini.make();
  // 🙂 U+1F642 = F0 9F 99 82 (not a letter: one punctuation pre-token):
  //   F0 = 106 + 66 = 172, 9F = 221 + 32 = 253, 99 = 221 + 26 = 247, 82 = 221 + 3 = 224 (+</w>: 480)
  EXPECT_EQ(tok.encode_ids("\U0001F642"), (Ids{172, 253, 247, 480}));
  // A control byte is punctuation too: 0x01 -> 188 + 1 + 256 = 445.
  EXPECT_EQ(tok.encode_ids("\x01"), (Ids{445}));
  // A symbol missing from vocab.json becomes the unk token (<|endoftext|>).
  auto vocab = mini_vocab();
  vocab.erase("z</w>");
  Mini holes(vocab);
  EXPECT_EQ(holes.make().encode_ids("az z"), (Ids{64, kEos, kEos}));
  EXPECT_EQ(error_of([&] { tok.encode_ids("a\xff"); }), "tokenizer: invalid UTF-8 in text at byte 1");
}

TEST(ClipTokenizer, SpecialTokensInText) {
  Mini mini;
  auto tok = mini.make();
  // Split out of the raw text first (case-sensitive), so no </w> and no merging across them.
  EXPECT_EQ(tok.encode_ids("a<|endoftext|>b"), (Ids{320, kEos, 321}));
  // Other casings are text: lower-cased, one pre-token of the pattern, which the byte-level step
  // splits into "<|", the name and "|>" (words of their own, no special id).
  EXPECT_EQ(tok.tokenize("x <|STARTOFTEXT|>"),
            (std::vector<std::string>{"x</w>", "<", "|</w>", "s", "t", "a", "r", "t", "o", "f", "t", "e", "x",
                                      "t</w>", "|", "></w>"}));
  // SDXL's tokenizer_2: "!" is its pad token, hence a special token: "cat!" ends in "!" = 0, not
  // "!</w>" = 256 as with SD1.5's tokenizer.
  EXPECT_EQ(tok.encode_ids("cat!"), (Ids{66, 516, 256}));
  EXPECT_EQ(mini.make(short_config(77, "!")).encode_ids("cat!"), (Ids{66, 516, 0}));
}

TEST(ClipTokenizer, TruncationKeepsEosLast) {
  Mini mini;
  auto tok = mini.make(short_config(8));
  auto out = tok.encode("a a a a a a a a a a");  // 10 tokens, room for 6
  EXPECT_EQ(out.input_ids, (Ids{kBos, 320, 320, 320, 320, 320, 320, kEos}));
  EXPECT_EQ(out.attention_mask, (Ids(8, 1)));
  EXPECT_EQ(tok.encode("a a a a a a").input_ids, (Ids{kBos, 320, 320, 320, 320, 320, 320, kEos}));

  auto full = mini.make();  // SD1.5: 77
  std::string text;
  for (int i = 0; i < 100; ++i) text += "a ";
  auto long_out = full.encode(text);
  ASSERT_EQ(long_out.input_ids.size(), 77u);
  EXPECT_EQ(long_out.input_ids.front(), kBos);
  EXPECT_EQ(long_out.input_ids.back(), kEos);
  EXPECT_EQ(long_out.input_ids[75], 320);
  EXPECT_EQ(long_out.attention_mask, (Ids(77, 1)));
}

TEST(ClipTokenizer, PaddingWithEosOrExclamationAndMask) {
  Mini mini;
  auto sd15 = mini.make(short_config(8));
  auto a = sd15.encode("a cat");
  EXPECT_EQ(a.input_ids, (Ids{kBos, 320, 66, 516, kEos, kEos, kEos, kEos}));
  EXPECT_EQ(a.attention_mask, (Ids{1, 1, 1, 1, 1, 0, 0, 0}));
  auto sdxl2 = mini.make(short_config(8, "!"));
  auto b = sdxl2.encode("a cat");
  EXPECT_EQ(b.input_ids, (Ids{kBos, 320, 66, 516, kEos, 0, 0, 0}));
  EXPECT_EQ(b.attention_mask, (Ids{1, 1, 1, 1, 1, 0, 0, 0}));
  EXPECT_EQ(sdxl2.pad_id(), 0);
  EXPECT_EQ(sd15.pad_id(), kEos);
  EXPECT_EQ(sd15.encode("").input_ids, (Ids{kBos, kEos, kEos, kEos, kEos, kEos, kEos, kEos}));
}

TEST(ClipTokenizer, FolderConfigs) {
  Mini mini;
  auto folder = mini.vocab.parent_path();
  // No config files: SD1.5 defaults.
  auto plain = ClipTokenizer::from_folder(folder);
  EXPECT_EQ(plain.config().max_length, 77);
  EXPECT_EQ(plain.bos_id(), kBos);
  EXPECT_EQ(plain.eos_id(), kEos);
  EXPECT_EQ(plain.pad_id(), kEos);
  // SDXL tokenizer_2 style: special_tokens_map.json's pad_token wins over tokenizer_config.json's.
  dedpo::test::write_file(folder / "tokenizer_config.json",
                          R"({"model_max_length": 8, "pad_token": "<|endoftext|>",
                              "bos_token": {"content": "<|startoftext|>", "lstrip": false, "__type": "AddedToken"}})");
  dedpo::test::write_file(folder / "special_tokens_map.json",
                          R"({"pad_token": {"content": "!", "lstrip": false, "normalized": false}})");
  auto tok = ClipTokenizer::from_folder(folder);
  EXPECT_EQ(tok.config().max_length, 8);
  EXPECT_EQ(tok.config().pad_token, "!");
  EXPECT_EQ(tok.encode("a cat").input_ids, (Ids{kBos, 320, 66, 516, kEos, 0, 0, 0}));

  dedpo::test::write_file(folder / "tokenizer_config.json", R"({"model_max_length": 1e30})");
  EXPECT_EQ(error_of([&] { ClipTokenizer::from_folder(folder); }),
            "tokenizer config '" + (folder / "tokenizer_config.json").string() +
                "': 'model_max_length' must be an integer in [2, 1048576], got 1e+30");
  dedpo::test::write_file(folder / "tokenizer_config.json", R"({"pad_token": 3})");
  EXPECT_EQ(error_of([&] { ClipTokenizer::from_folder(folder); }),
            "tokenizer config '" + (folder / "tokenizer_config.json").string() +
                "': 'pad_token' must be a string or an object with a string 'content'");
}

TEST(ClipTokenizer, BatchTensor) {
  Mini mini;
  auto tok = mini.make(short_config(8));
  auto batch = tok.encode_batch({"a cat", "It's"});
  ASSERT_EQ(batch.input_ids.sizes(), (std::vector<int64_t>{2, 8}));
  ASSERT_EQ(batch.input_ids.scalar_type(), at::kLong);
  ASSERT_EQ(batch.attention_mask.scalar_type(), at::kLong);
  auto expected = at::tensor(std::vector<int64_t>{kBos, 320, 66, 516, kEos, kEos, kEos, kEos,  //
                                                  kBos, 519, 518, kEos, kEos, kEos, kEos, kEos})
                      .view({2, 8});
  auto mask = at::tensor(std::vector<int64_t>{1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0}).view({2, 8});
  EXPECT_TRUE(at::equal(batch.input_ids, expected)) << batch.input_ids;
  EXPECT_TRUE(at::equal(batch.attention_mask, mask)) << batch.attention_mask;
  EXPECT_EQ(mini.make().encode_batch({"x"}).input_ids.sizes(), (std::vector<int64_t>{1, 77}));
}

TEST(ClipTokenizer, DecodeRoundTrip) {
  Mini mini;
  auto tok = mini.make();
  EXPECT_EQ(tok.decode(tok.encode("The  LOWER cat").input_ids), "the lower cat");
  // Each pre-token ends in </w>, which decodes to a space.
  EXPECT_EQ(tok.decode(tok.encode("Caf\u00e9, it's 2024!").input_ids), "caf\u00e9 , it 's 2 0 2 4 !");
  EXPECT_EQ(tok.decode(tok.encode("\u041c\u0438\u0440 \u732b\U0001F642").input_ids),
            "\u043c\u0438\u0440 \u732b \U0001F642");
  EXPECT_EQ(tok.decode({kBos, 523, kEos, kEos}, /*skip_special_tokens=*/false),
            "<|startoftext|> the <|endoftext|> <|endoftext|>");
  EXPECT_EQ(tok.decode({127}), "\ufffd");  // a lone C3 byte
  EXPECT_EQ(error_of([&] { tok.decode({9999}); }), "tokenizer: id 9999 is not in the vocabulary");
}

// ---- Errors ------------------------------------------------------------------------------------

TEST(ClipTokenizer, ErrorMissingFiles) {
  Mini mini;
  auto nowhere = mini.dir / "nowhere.json";
  EXPECT_EQ(error_of([&] { ClipTokenizer(nowhere, mini.merges); }),
            "tokenizer: cannot open vocabulary '" + nowhere.string() + "'");
  auto no_merges = mini.dir / "none.txt";
  EXPECT_EQ(error_of([&] { ClipTokenizer(mini.vocab, no_merges); }),
            "tokenizer: cannot open merges file '" + no_merges.string() + "'");
  auto empty = mini.dir / "empty";
  std::filesystem::create_directories(empty);
  EXPECT_EQ(error_of([&] { ClipTokenizer::from_folder(empty); }),
            "tokenizer: cannot open vocabulary '" + (empty / "vocab.json").string() + "'");
}

TEST(ClipTokenizer, ErrorMalformedVocab) {
  Mini mini;
  dedpo::test::write_file(mini.vocab, "{\"a\": 1,,}");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer vocabulary '" + mini.vocab.string() +
                "': malformed JSON: [json.exception.parse_error.101] parse error at line 1, column 9: syntax error "
                "while parsing object key - unexpected ','; expected string literal");
  dedpo::test::write_file(mini.vocab, "[1, 2]");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer vocabulary '" + mini.vocab.string() + "': expected a JSON object of token -> id");
  dedpo::test::write_file(mini.vocab, R"({"a": "x"})");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer vocabulary '" + mini.vocab.string() +
                "': key 'a' must map to a non-negative integer id, got \"x\"");
}

TEST(ClipTokenizer, ErrorMalformedMerges) {
  Mini mini;
  dedpo::test::write_file(mini.merges, "#version: 0.2\ne r</w>\nl o w\n");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer merges " + mini.merges.string() +
                ":3: malformed merge 'l o w' (expected two symbols separated by a space)");
  dedpo::test::write_file(mini.merges, "#version: 0.2\ne r</w>\n\nl o\n");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer merges " + mini.merges.string() +
                ":3: malformed merge '' (expected two symbols separated by a space)");
  dedpo::test::write_file(mini.merges, "e r</w>\nl o\n");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer merges " + mini.merges.string() + ":1: expected the '#version: ...' header, got 'e r</w>'");
  // CRLF line ends and a missing final newline are fine.
  dedpo::test::write_file(mini.merges, "#version: 0.2\r\ne r</w>\r\nl o");
  EXPECT_EQ(mini.make().encode_ids("ler"), (Ids{75, 512}));  // l er</w>
}

TEST(ClipTokenizer, EveryMergeOfMergesTxtIsUsed) {
  // 48894 filler merges, then "d o</w>": transformers 4 stopped before it, transformers 5 uses it.
  auto vocab = mini_vocab();
  std::string merges = "#version: 0.2\n";
  for (int i = 0; i < 48894; ++i) {
    merges += "q" + std::to_string(i) + " z\n";
    vocab["q" + std::to_string(i)] = 1000 + 2 * i;
    vocab["q" + std::to_string(i) + "z"] = 1001 + 2 * i;
  }
  merges += "d o</w>\n";
  vocab["do</w>"] = 999;
  Mini mini(vocab, merges);
  EXPECT_EQ(mini.make().encode_ids("do"), (Ids{999}));
}

TEST(ClipTokenizer, ErrorMergeNotInVocab) {
  Mini mini;
  dedpo::test::write_file(mini.merges, "#version: 0.2\ne r</w>\nq z\n");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer merges " + mini.merges.string() + ":3: the merge 'q z' gives 'qz', which is not in the vocabulary '" +
                mini.vocab.string() + "'");
  dedpo::test::write_file(mini.merges, "#version: 0.2\ne r</w>\nqz z\n");
  EXPECT_EQ(error_of([&] { mini.make(); }),
            "tokenizer merges " + mini.merges.string() + ":3: the merge 'qz z' has 'qz', which is not in the vocabulary '" +
                mini.vocab.string() + "'");
}

TEST(ClipTokenizer, ErrorMissingSpecialTokens) {
  auto vocab = mini_vocab();
  vocab.erase("<|startoftext|>");
  Mini no_bos(vocab);
  EXPECT_EQ(error_of([&] { no_bos.make(); }),
            "tokenizer vocabulary '" + no_bos.vocab.string() +
                "': the bos_token '<|startoftext|>' is not in the vocabulary");
  Mini mini;
  EXPECT_EQ(error_of([&] { mini.make(short_config(77, "[PAD]")); }),
            "tokenizer vocabulary '" + mini.vocab.string() + "': the pad_token '[PAD]' is not in the vocabulary");
  EXPECT_EQ(error_of([&] { mini.make(short_config(1)); }),
            "tokenizer: max_length must be at least 2 (BOS and EOS), got 1");
}

// ---- tokenizer.json ----------------------------------------------------------------------------

// The miniature tokenizer as transformers 5's CLIPTokenizer.save_pretrained writes it.
nlohmann::json mini_tokenizer_json() {
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& m : kMerges) merges.push_back(m);  // "first second", the older form
  auto added = [](int64_t id, const char* content) {
    return nlohmann::json{{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
                          {"rstrip", false},    {"normalized", false}, {"special", true}};
  };
  auto json = nlohmann::json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"},
        {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
         "behavior": "Removed", "invert": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
    "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 528], "cls": ["<|startoftext|>", 527],
                       "trim_offsets": false, "add_prefix_space": false},
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "",
              "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false}})");
  json["added_tokens"] = {added(kBos, "<|startoftext|>"), added(kEos, "<|endoftext|>")};
  json["model"]["vocab"] = mini_vocab();
  json["model"]["merges"] = merges;
  return json;
}

struct MiniJson {
  dedpo::test::TempDir dir;
  std::filesystem::path file = dir / "tokenizer/tokenizer.json";
  explicit MiniJson(const nlohmann::json& json = mini_tokenizer_json()) { write(json); }
  void write(const nlohmann::json& json) const { dedpo::test::write_file(file, json.dump()); }
  ClipTokenizer make() const { return ClipTokenizer::from_tokenizer_json(file); }
  // The error of loading the file with `key` (a JSON pointer) set to `value`.
  std::string error_with(const std::string& key, const nlohmann::json& value) const {
    auto json = mini_tokenizer_json();
    json[nlohmann::json::json_pointer(key)] = value;
    write(json);
    return error_of([&] { make(); });
  }
  std::string prefix() const { return "tokenizer file '" + file.string() + "': key "; }
};

TEST(ClipTokenizerJson, SameIdsAsVocabAndMerges) {
  Mini files;
  MiniJson json;
  const auto from_files = files.make(), from_json = json.make();
  for (const char* text : {"It's THEY'RE", "wow!!! ...a,b", "lower cat banana", "Caf\u00c9 \u732b\u72ac",
                           "<|startoftext|>the<|endoftext|>", "Cafe\u0301"}) {
    EXPECT_EQ(from_json.encode(text).input_ids, from_files.encode(text).input_ids) << text;
  }
  // Merges as ["first", "second"] pairs, the form of current tokenizers releases.
  auto pairs = mini_tokenizer_json();
  for (auto& merge : pairs["model"]["merges"]) {
    const auto text = merge.get<std::string>();
    merge = nlohmann::json::array({text.substr(0, text.find(' ')), text.substr(text.find(' ') + 1)});
  }
  json.write(pairs);
  EXPECT_EQ(json.make().encode_ids("lower cat"), (Ids{515, 66, 516}));
}

TEST(ClipTokenizerJson, AddedTokensAreSplitOutOfTheRawText) {
  auto json = mini_tokenizer_json();
  json["added_tokens"].push_back({{"id", 514}, {"content", "low"}, {"normalized", false}, {"special", true}});
  MiniJson mini(json);
  // "low" (exact case) is its own id 514 even inside a word; "LOW" is lower-cased and goes through
  // the BPE: l o w</w> -> lo w</w> (513, 342).
  EXPECT_EQ(mini.make().encode_ids("alowa LOW"), (Ids{320, 514, 320, 513, 342}));
}

TEST(ClipTokenizerJson, FolderPrefersTokenizerJson) {
  MiniJson mini;
  const auto folder = mini.file.parent_path();
  dedpo::test::write_file(folder / "tokenizer_config.json", R"({"model_max_length": 6, "pad_token": "!"})");
  auto tok = ClipTokenizer::from_folder(folder);  // no vocab.json / merges.txt there
  EXPECT_EQ(tok.encode("a cat").input_ids, (Ids{kBos, 320, 66, 516, kEos, 0}));
}

TEST(ClipTokenizerJson, ErrorsNameFileKeyAndExpectation) {
  MiniJson mini;
  const auto p = mini.prefix();
  EXPECT_EQ(mini.error_with("/model/type", "WordPiece"), p + "'model.type' must be \"BPE\", got \"WordPiece\"");
  EXPECT_EQ(mini.error_with("/model", 3), p + "'model' must be an object, got 3");
  EXPECT_EQ(mini.error_with("/model/end_of_word_suffix", nullptr),
            p + "'model.end_of_word_suffix' must be \"</w>\" (CLIP's BPE), got null");
  EXPECT_EQ(mini.error_with("/model/continuing_subword_prefix", "##"),
            p + "'model.continuing_subword_prefix' must be \"\" (the only value dedpo supports) or absent, got \"##\"");
  EXPECT_EQ(mini.error_with("/model/dropout", 0.1),
            p + "'model.dropout' must be null (the only value dedpo supports) or absent, got 0.1");
  EXPECT_EQ(mini.error_with("/model/byte_fallback", true),
            p + "'model.byte_fallback' must be false (the only value dedpo supports) or absent, got true");
  EXPECT_EQ(mini.error_with("/model/fuse_unk", true),
            p + "'model.fuse_unk' must be false (the only value dedpo supports) or absent, got true");
  EXPECT_EQ(mini.error_with("/model/unk_token", "[UNK]"),
            p + "'model.unk_token' must be the unk_token of the tokenizer config (\"<|endoftext|>\"), got \"[UNK]\"");
  EXPECT_EQ(mini.error_with("/model/vocab", nlohmann::json::array()),
            p + "'model.vocab': expected a JSON object of token -> id");
  EXPECT_EQ(mini.error_with("/model/vocab/a", -1),
            p + "'model.vocab': key 'a' must map to a non-negative integer id, got -1");
  EXPECT_EQ(mini.error_with("/model/merges", nullptr), p + "'model.merges' must be an array of merges, got null");
  const std::string merge_form = "\"first second\" (two symbols separated by a space) or [\"first\", \"second\"]";
  EXPECT_EQ(mini.error_with("/model/merges/2", "lo w x"), p + "'model.merges[2]' must be " + merge_form + ", got \"lo w x\"");
  EXPECT_EQ(mini.error_with("/model/merges/2", {"lo", "w", "x"}),
            p + "'model.merges[2]' must be " + merge_form + ", got [\"lo\",\"w\",\"x\"]");
  EXPECT_EQ(mini.error_with("/model/merges/2", "q z"),
            p + "'model.merges[2]': the merge 'q z' gives 'qz', which is not in the vocabulary model.vocab");
  EXPECT_EQ(mini.error_with("/model/merges/2", {"lo", "wz"}),
            p + "'model.merges[2]': the merge 'lo wz' has 'wz', which is not in the vocabulary model.vocab");
  EXPECT_EQ(mini.error_with("/added_tokens/1/id", 7),
            p + "'added_tokens[1].id' must be the id of \"<|endoftext|>\" in model.vocab, got 7");
  EXPECT_EQ(mini.error_with("/added_tokens/0/content", ""), p + "'added_tokens[0].content' must be a non-empty string, got \"\"");
  EXPECT_EQ(mini.error_with("/added_tokens/0/normalized", true),
            p + "'added_tokens[0].normalized' must be false (the only value dedpo supports) or absent, got true");
  EXPECT_EQ(mini.error_with("/added_tokens/0/lstrip", true),
            p + "'added_tokens[0].lstrip' must be false (the only value dedpo supports) or absent, got true");
  EXPECT_EQ(mini.error_with("/normalizer/normalizers/0/type", "NFKC"),
            p + "'normalizer' must be CLIP's Sequence [NFC, Replace(\\s+ -> \" \"), Lowercase] (the only one dedpo "
                "implements), got {\"normalizers\":[{\"type\":\"NFKC\"},{\"content\":\" \",\"pattern\":{\"Regex\":\"\\\\s+\"},"
                "\"type\":\"Replace\"},{\"type\":\"Lowercase\"}],\"type\":\"Sequence\"}");
  EXPECT_EQ(mini.error_with("/normalizer", nullptr),
            p + "'normalizer' must be CLIP's Sequence [NFC, Replace(\\s+ -> \" \"), Lowercase] (the only one dedpo "
                "implements), got null");
  EXPECT_EQ(mini.error_with("/pre_tokenizer/type", "ByteLevel"), p + "'pre_tokenizer.type' must be \"Sequence\", got \"ByteLevel\"");
  EXPECT_EQ(mini.error_with("/pre_tokenizer/pretokenizers/0/pattern/Regex", "\\w+"),
            p + "'pre_tokenizer.pretokenizers[0].pattern' must be {\"Regex\": \"<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|"
                "'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+\"} (CLIP's), got {\"Regex\":\"\\\\w+\"}");
  EXPECT_EQ(mini.error_with("/pre_tokenizer/pretokenizers/0/invert", false),
            p + "'pre_tokenizer.pretokenizers[0].invert' must be true, got false");
  EXPECT_EQ(mini.error_with("/pre_tokenizer/pretokenizers/0/behavior", "Isolated"),
            p + "'pre_tokenizer.pretokenizers[0].behavior' must be \"Removed\", got \"Isolated\"");
  EXPECT_EQ(mini.error_with("/pre_tokenizer/pretokenizers/1/add_prefix_space", true),
            p + "'pre_tokenizer.pretokenizers[1].add_prefix_space' must be false (the only value dedpo supports) or "
                "absent, got true");
  EXPECT_EQ(mini.error_with("/pre_tokenizer/pretokenizers/1", nlohmann::json::object()),
            p + "'pre_tokenizer.pretokenizers[1].type' must be \"ByteLevel\", got null");
  EXPECT_EQ(mini.error_with("/post_processor/type", "TemplateProcessing"),
            p + "'post_processor.type' must be \"RobertaProcessing\", got \"TemplateProcessing\"");
  EXPECT_EQ(mini.error_with("/post_processor/cls", {"<|startoftext|>", 1}),
            p + "'post_processor.cls' must be [\"<|startoftext|>\", its id] (the bos_token of the tokenizer config), "
                "got [\"<|startoftext|>\",1]");
  EXPECT_EQ(mini.error_with("/decoder/type", "WordPiece"), p + "'decoder.type' must be \"ByteLevel\", got \"WordPiece\"");

  mini.write(nlohmann::json::array());
  EXPECT_EQ(error_of([&] { mini.make(); }), "tokenizer file '" + mini.file.string() + "': expected a JSON object");
  dedpo::test::write_file(mini.file, "{\"model\": ");
  EXPECT_EQ(error_of([&] { mini.make(); }).rfind("tokenizer file '" + mini.file.string() + "': malformed JSON: ", 0), 0u);
  std::filesystem::remove(mini.file);
  EXPECT_EQ(error_of([&] { mini.make(); }), "tokenizer: cannot open tokenizer file '" + mini.file.string() + "'");
}

}  // namespace
