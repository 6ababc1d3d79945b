// Real preference data: the `pairs_manifest` dataset on generated PNG files (formats, crops,
// every bad-input case with its message, the latent cache and its concurrent filling), the
// `file` annotator, and `dedpo run` end to end on a tiny SD folder (dedpo_make_tiny_sd).
#include <sys/stat.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/image.hpp"
#include "dedpo/host/registry.hpp"
#include "no_services.hpp"
#include "test_support.hpp"

namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using dedpo::test::write_file;
using json = nlohmann::json;

fs::path scratch() {
  static const dedpo::test::TempDir dir;
  return dir.path();
}

fs::path tiny_sd() {
  const fs::path folder = scratch() / "tiny-sd";
  if (!fs::exists(folder / "model_index.json")) {
    const std::string command =
        std::string("\"") + DEDPO_MAKE_TINY_SD + "\" \"" + folder.string() + "\" > /dev/null";
    if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  }
  return folder;
}

dedpo::PluginRegistry& registry() {
  static dedpo::PluginRegistry* r = [] {
    auto* reg = new dedpo::PluginRegistry();
    reg->load_default_locations();
    return reg;
  }();
  return *r;
}

std::shared_ptr<dedpo::Backbone> backbone() {
  auto b = registry().create<dedpo::Backbone>(
      "sd15", "path = \"" + tiny_sd().string() + "\"\nresolution = 16\nsample_steps = 2\n");
  dedpo::BackboneContext context;
  context.cache_dir = scratch() / "backbone-cache";
  context.seed = 1;
  b->prepare(context);
  return b;
}

// A random RGB image [height, width, 3], written as PNG.
at::Tensor write_image(const fs::path& file, std::int64_t height, std::int64_t width,
                       std::uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor image = at::randint(0, 256, {height, width, 3}, g, at::kLong).to(at::kByte);
  dedpo::write_png(file, image);
  return image;
}

// A folder with images a1..a4, b1..b4 of assorted shapes.
struct Images {
  fs::path dir;
  explicit Images(const std::string& name) : dir(scratch() / name) {
    const std::int64_t shapes[4][2] = {{20, 32}, {32, 20}, {16, 16}, {40, 40}};
    for (int i = 0; i < 4; ++i) {
      write_image(dir / ("a" + std::to_string(i + 1) + ".png"), shapes[i][0], shapes[i][1], 10 + i);
      write_image(dir / ("b" + std::to_string(i + 1) + ".png"), shapes[i][1], shapes[i][0], 20 + i);
    }
  }
  fs::path manifest(const std::string& name, const std::string& text) const {
    write_file(dir / name, text);
    return dir / name;
  }
};

struct Loaded {
  dedpo::PairDataset data;
  std::map<std::string, std::int64_t> counts;
};

Loaded load(const fs::path& manifest, const std::string& options = "",
            const fs::path& cache = scratch() / "data-cache", std::uint64_t seed = 1,
            dedpo::Backbone* with = nullptr) {
  std::shared_ptr<dedpo::Backbone> own;
  if (with == nullptr) {
    own = backbone();
    with = own.get();
  }
  auto dataset = registry().create<dedpo::Dataset>(
      "pairs_manifest", "manifest = \"" + manifest.string() + "\"\n" + options);
  dedpo::DatasetContext context{*with, cache, seed};
  Loaded loaded{dataset->pairs(context), {}};
  for (const auto& [name, count] : loaded.data.counts) loaded.counts[name] = count;
  return loaded;
}

std::string load_error(const fs::path& manifest, const std::string& options = "") {
  try {
    load(manifest, options);
  } catch (const std::exception& error) {
    return error.what();
  }
  return "(no error)";
}

const char* kGoodLines =
    R"({"prompt": "a cat", "image_a": "a1.png", "image_b": "b1.png", "label": 1, "id": "p1"})"
    "\n"
    R"({"prompt": "a dog", "image_a": "a2.png", "image_b": "b2.png", "label": 0, "id": "p2", "metadata": {"source": "x"}})"
    "\n";

TEST(PairsManifest, ReadsJsonlWithLabelsIdsSizesAndFiles) {
  Images images("jsonl");
  fs::path manifest = images.manifest(
      "pairs.jsonl", std::string(kGoodLines) +
                         "\n"  // a blank line is no record
                         R"({"prompt": "a cat", "image_a": "a3.png", "image_b": "b3.png", "label": null})"
                         "\n");
  Loaded loaded = load(manifest);
  const dedpo::PairDataset& data = loaded.data;
  ASSERT_EQ(data.size(), 3);
  EXPECT_EQ(data.a.sizes(), (std::vector<std::int64_t>{3, 4, 8, 8}));
  EXPECT_EQ(data.prompts, (std::vector<std::string>{"a cat", "a dog"}));
  EXPECT_EQ(data.prompt_index[2].item<std::int64_t>(), 0);
  EXPECT_EQ(data.human_label[0].item<float>(), 1.0f);
  EXPECT_EQ(data.human_label[1].item<float>(), 0.0f);
  EXPECT_TRUE(std::isnan(data.human_label[2].item<float>()));
  // The id defaults to the line number (line 4: after the blank line).
  EXPECT_EQ(data.ids, (std::vector<std::string>{"p1", "p2", "4"}));
  EXPECT_EQ(data.a_files[1], fs::absolute(images.dir / "a2.png"));
  EXPECT_EQ(data.b_files[2], fs::absolute(images.dir / "b3.png"));
  // a1 is 20x32: resized to 16x25, center crop left = round(9 / 2) = 4 (half to even).
  EXPECT_TRUE(at::equal(data.a_info[0], at::tensor({20.0f, 32.0f, 0.0f, 4.0f})));
  // b1 is 32x20: resized to 25x16, crop top 4.
  EXPECT_TRUE(at::equal(data.b_info[0], at::tensor({32.0f, 20.0f, 4.0f, 0.0f})));
  EXPECT_TRUE(at::equal(data.a_info[2], at::tensor({16.0f, 16.0f, 0.0f, 0.0f})));
  EXPECT_THAT(data.fingerprint, HasSubstr("pairs_manifest-"));
}

TEST(PairsManifest, CenterCropOfAWideImageEncodesLikeTheCropItself) {
  Images images("crop");
  // 16x48 needs no resize (short side = 16); the center crop is columns 16..31.
  at::Tensor wide = write_image(images.dir / "wide.png", 16, 48, 5);
  dedpo::write_png(images.dir / "middle.png", wide.slice(1, 16, 32).contiguous());
  fs::path manifest = images.manifest(
      "pairs.jsonl", R"({"prompt": "p", "image_a": "wide.png", "image_b": "middle.png"})" "\n");
  Loaded loaded = load(manifest);
  EXPECT_TRUE(at::allclose(loaded.data.a, loaded.data.b, 1e-5, 1e-5));
  EXPECT_TRUE(at::equal(loaded.data.a_info[0], at::tensor({16.0f, 48.0f, 0.0f, 16.0f})));
}

TEST(PairsManifest, ReadsCsvWithMappedColumnsLikePickAPic) {
  Images images("csv");
  fs::path manifest = images.manifest(
      "pairs.csv",
      "caption,jpg_0,jpg_1,label_0\n"
      "\"a cat, sitting\",a1.png,b1.png,1\n"
      "\"say \"\"hi\"\"\",a2.png,b2.png,0.5\n"
      "plain,a3.png,b3.png,\n");
  Loaded loaded = load(manifest,
                       "prompt_key = \"caption\"\nimage_a_key = \"jpg_0\"\nimage_b_key = \"jpg_1\"\n"
                       "label_key = \"label_0\"\n");
  const dedpo::PairDataset& data = loaded.data;
  ASSERT_EQ(data.size(), 3);
  EXPECT_EQ(data.prompts,
            (std::vector<std::string>{"a cat, sitting", "say \"hi\"", "plain"}));
  EXPECT_EQ(data.human_label[0].item<float>(), 1.0f);
  EXPECT_EQ(data.human_label[1].item<float>(), 0.5f);
  EXPECT_TRUE(std::isnan(data.human_label[2].item<float>()));
  EXPECT_EQ(data.ids, (std::vector<std::string>{"2", "3", "4"}));
}

TEST(PairsManifest, RandomCropAndFlipAreDrawnPerSeedAndRecorded) {
  Images images("random");
  fs::path manifest = images.manifest("pairs.jsonl", kGoodLines);
  const std::string options = "crop = \"random\"\nflip = true\n";
  Loaded first = load(manifest, options, scratch() / "random-cache", 1);
  Loaded again = load(manifest, options, scratch() / "random-cache", 1);
  EXPECT_TRUE(at::equal(first.data.a_info, again.data.a_info));
  EXPECT_TRUE(at::equal(first.data.a, again.data.a));
  EXPECT_EQ(again.counts["images_encoded"], 0);
  // a1 (20x32 -> 16x25): the crop's left edge lies in [0, 9].
  for (std::uint64_t seed = 2; seed < 6; ++seed) {
    Loaded other = load(manifest, options, scratch() / "random-cache", seed);
    float left = other.data.a_info[0][3].item<float>();
    EXPECT_GE(left, 0.0f);
    EXPECT_LE(left, 9.0f);
  }
  std::set<float> lefts;
  for (std::uint64_t seed = 1; seed < 9; ++seed) {
    lefts.insert(load(manifest, options, scratch() / "random-cache", seed).data.a_info[0][3].item<float>());
  }
  EXPECT_GT(lefts.size(), 1u) << "the crop should vary with the seed";
}

// ---------------------------------------------------------------------------------------------
// Bad input: every case names the manifest line; with on_error = "skip" it is skipped and counted

struct BadCase {
  const char* name;
  const char* line;      // the manifest's third line (the first two are good)
  const char* message;   // expected in the error, after "<manifest>:3: "
  const char* counter;   // with on_error = "skip"
};

void PrintTo(const BadCase& c, std::ostream* out) { *out << c.name; }

class BadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadInput, FailsNamingTheLineOrIsSkippedAndCounted) {
  const BadCase& c = GetParam();
  Images images(std::string("bad-") + c.name);
  write_file(images.dir / "corrupt.png", "this is not a PNG file");
  fs::path manifest = images.manifest("pairs.jsonl", std::string(kGoodLines) + c.line + "\n");
  std::string error = load_error(manifest);
  EXPECT_THAT(error, HasSubstr(manifest.string() + ":3: " + c.message));
  Loaded loaded = load(manifest, "on_error = \"skip\"\n");
  EXPECT_EQ(loaded.data.size(), 2);
  EXPECT_EQ(loaded.counts[std::string("skipped_") + c.counter], 1);
}

INSTANTIATE_TEST_SUITE_P(
    PairsManifest, BadInput,
    ::testing::Values(
        BadCase{"malformed", R"({"prompt": "x", "image_a": )", "malformed JSON", "malformed_line"},
        BadCase{"not_object", R"(["x", "a3.png", "b3.png"])", "expected a JSON object",
                "malformed_line"},
        BadCase{"missing_key", R"({"prompt": "x", "image_a": "a3.png"})",
                "missing key 'image_b'", "missing_key"},
        BadCase{"empty_prompt", R"({"prompt": "", "image_a": "a3.png", "image_b": "b3.png"})",
                "key 'prompt': expected a non-empty string, got \"\"", "missing_key"},
        BadCase{"bad_label", R"({"prompt": "x", "image_a": "a3.png", "image_b": "b3.png", "label": 2})",
                "key 'label': expected 1, 0, 0.5 or null (no label), got 2", "bad_label"},
        BadCase{"text_label", R"({"prompt": "x", "image_a": "a3.png", "image_b": "b3.png", "label": "yes"})",
                "key 'label': expected 1, 0, 0.5 or null (no label), got \"yes\"", "bad_label"},
        BadCase{"missing_image", R"({"prompt": "x", "image_a": "nope.png", "image_b": "b3.png"})",
                "key 'image_a': image file not found: ", "missing_image"},
        BadCase{"corrupt_image", R"({"prompt": "x", "image_a": "a3.png", "image_b": "corrupt.png"})",
                "key 'image_b': ", "corrupt_image"},
        BadCase{"duplicate_pair", R"({"prompt": "a cat", "image_a": "b1.png", "image_b": "a1.png"})",
                "duplicate pair: the same prompt and images as line 1", "duplicate_pair"},
        BadCase{"duplicate_id", R"({"prompt": "x", "image_a": "a3.png", "image_b": "b3.png", "id": "p1"})",
                "key 'id': duplicate id 'p1' (first on line 1)", "duplicate_id"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(PairsManifest, CorruptImageErrorSaysItCannotBeDecoded) {
  Images images("corrupt-message");
  write_file(images.dir / "corrupt.png", "this is not a PNG file");
  fs::path manifest = images.manifest(
      "pairs.jsonl", R"({"prompt": "x", "image_a": "a1.png", "image_b": "corrupt.png"})" "\n");
  EXPECT_THAT(load_error(manifest), HasSubstr("corrupt.png: cannot decode image"));
}

// A folder or a FIFO where an image should be is named as what it is, not "not found".
TEST(PairsManifest, FolderOrFifoGivenAsAnImageIsNamedAsSuch) {
  Images images("not-files");
  fs::create_directories(images.dir / "folder.png");
  ASSERT_EQ(::mkfifo((images.dir / "pipe.png").c_str(), 0644), 0);
  fs::path manifest = images.manifest(
      "pairs.jsonl", R"({"prompt": "x", "image_a": "folder.png", "image_b": "b1.png"})" "\n");
  EXPECT_THAT(load_error(manifest), HasSubstr(":1: key 'image_a': a folder, not an image file: "));
  manifest = images.manifest(
      "pairs.jsonl", R"({"prompt": "x", "image_a": "a1.png", "image_b": "pipe.png"})" "\n");
  EXPECT_THAT(load_error(manifest), HasSubstr(":1: key 'image_b': a FIFO (named pipe), not an image file: "));
  EXPECT_THAT(load_error(manifest), Not(HasSubstr("not found")));
}

TEST(PairsManifest, CsvLineWithWrongFieldCountNamesTheLine) {
  Images images("csv-bad");
  fs::path manifest = images.manifest("pairs.csv",
                                      "prompt,image_a,image_b,label\n"
                                      "a cat,a1.png,b1.png,1\n"
                                      "a dog,a2.png,b2.png\n");
  EXPECT_THAT(load_error(manifest),
              HasSubstr(manifest.string() + ":3: expected 4 fields (as the header), got 3"));
  Loaded loaded = load(manifest, "on_error = \"skip\"\n");
  EXPECT_EQ(loaded.data.size(), 1);
  EXPECT_EQ(loaded.counts["skipped_malformed_line"], 1);
}

TEST(PairsManifest, BadOptionsAndFilesAreNamed) {
  Images images("options");
  fs::path manifest = images.manifest("pairs.jsonl", kGoodLines);
  EXPECT_THAT(load_error(manifest, "crop = \"middle\"\n"),
              HasSubstr("option 'crop': expected \"center\" or \"random\", got \"middle\""));
  EXPECT_THAT(load_error(manifest, "on_error = \"ignore\"\n"), HasSubstr("option 'on_error'"));
  EXPECT_THAT(load_error(images.dir / "pairs.txt"), HasSubstr("unknown table format '.txt'"));
  EXPECT_THAT(load_error(images.dir / "absent.jsonl"), HasSubstr("absent.jsonl: file not found"));
}

// ---------------------------------------------------------------------------------------------
// The latent cache

TEST(PairsManifest, SecondLoadReadsEveryImageFromTheCacheWithoutRewritingIt) {
  Images images("cache");
  fs::path manifest = images.manifest("pairs.jsonl", kGoodLines);
  const fs::path cache = scratch() / "cache-reuse";
  Loaded first = load(manifest, "", cache);
  EXPECT_EQ(first.counts["images_encoded"], 4);
  EXPECT_EQ(first.counts["images_from_cache"], 0);
  std::map<fs::path, fs::file_time_type> written;
  for (const auto& entry : fs::recursive_directory_iterator(cache / "latents")) {
    if (entry.path().extension() == ".safetensors") written[entry.path()] = entry.last_write_time();
  }
  EXPECT_EQ(written.size(), 4u);
  Loaded second = load(manifest, "", cache);
  EXPECT_EQ(second.counts["images_encoded"], 0);
  EXPECT_EQ(second.counts["images_from_cache"], 4);
  EXPECT_TRUE(at::equal(first.data.a, second.data.a));
  EXPECT_TRUE(at::equal(first.data.b_info, second.data.b_info));
  EXPECT_EQ(first.data.fingerprint, second.data.fingerprint);
  for (const auto& [file, time] : written) EXPECT_EQ(fs::last_write_time(file), time) << file;
  // Another crop is another variant: encoded anew, under the same content.
  Loaded flipped = load(manifest, "crop = \"random\"\n", cache);
  EXPECT_EQ(flipped.counts["images_encoded"], 4);
}

// A cache entry cut short (a killed write, a full disk) is encoded again with a warning that
// names the cache file, also with on_error = "fail"; the data come out as from a whole cache.
TEST(PairsManifest, TruncatedCacheEntryIsEncodedAgainWithAWarning) {
  Images images("cache-cut");
  fs::path manifest = images.manifest("pairs.jsonl", kGoodLines);
  const fs::path cache = scratch() / "cache-cut";
  Loaded first = load(manifest, "", cache);
  fs::path entry;
  for (const auto& file : fs::recursive_directory_iterator(cache / "latents")) {
    if (file.path().extension() == ".safetensors") entry = file.path();
  }
  ASSERT_FALSE(entry.empty());
  fs::resize_file(entry, fs::file_size(entry) / 2);
  testing::internal::CaptureStderr();
  Loaded again = load(manifest, "", cache);
  const std::string warnings = testing::internal::GetCapturedStderr();
  EXPECT_THAT(warnings, HasSubstr("the latent cache entry " + entry.string() + " does not load"));
  EXPECT_EQ(again.counts["images_encoded"], 1);
  EXPECT_EQ(again.counts["images_from_cache"], 3);
  EXPECT_TRUE(at::equal(first.data.a, again.data.a));
  EXPECT_TRUE(at::equal(first.data.b, again.data.b));
}

TEST(PairsManifest, TheSameImageInManyPairsIsEncodedOnce) {
  Images images("shared");
  fs::path manifest = images.manifest(
      "pairs.jsonl",
      R"({"prompt": "p", "image_a": "a1.png", "image_b": "b1.png"})" "\n"
      R"({"prompt": "q", "image_a": "a1.png", "image_b": "b1.png"})" "\n");
  Loaded loaded = load(manifest, "", scratch() / "shared-cache");
  EXPECT_EQ(loaded.counts["images_encoded"], 2);
  EXPECT_EQ(loaded.counts["images_from_cache"], 2);
}

TEST(PairsManifest, TwoLoadersFillingOneCacheAtOnceEncodeEachImageOnce) {
  Images images("concurrent");
  fs::path manifest = images.manifest("pairs.jsonl", kGoodLines);
  const fs::path cache = scratch() / "concurrent-cache";
  auto first_backbone = backbone();
  auto second_backbone = backbone();
  Loaded first, second;
  std::thread one([&] { first = load(manifest, "encode_batch = 1\n", cache, 1, first_backbone.get()); });
  std::thread two([&] { second = load(manifest, "encode_batch = 1\n", cache, 1, second_backbone.get()); });
  one.join();
  two.join();
  EXPECT_EQ(first.counts["images_encoded"] + second.counts["images_encoded"], 4);
  EXPECT_EQ(first.counts["images_from_cache"] + second.counts["images_from_cache"], 4);
  EXPECT_TRUE(at::equal(first.data.a, second.data.a));
  EXPECT_TRUE(at::equal(first.data.b, second.data.b));
}

// ---------------------------------------------------------------------------------------------
// The `file` annotator

using dedpo::test::NoServices;

class FileAnnotator : public ::testing::Test {
 protected:
  FileAnnotator() {
    data_.ids = {"p1", "p2", "p3"};
    data_.a = at::zeros({3, 2});
    data_.human_label = at::full({3}, NAN);
    is_labelled_ = at::zeros({3}, at::kBool);
  }
  at::Tensor annotate(const std::string& name, const std::string& text,
                      const std::string& options = "") {
    fs::path file = scratch() / "annotator" / name;
    write_file(file, text);
    auto annotator = registry().create<dedpo::Annotator>(
        "file", "path = \"" + file.string() + "\"\n" + options);
    EXPECT_FALSE(annotator->cacheable());
    dedpo::AnnotatorContext context{data_, is_labelled_, *backbone_, services_, 0};
    return annotator->annotate(context);
  }
  std::string error(const std::string& name, const std::string& text,
                    const std::string& options = "") {
    try {
      annotate(name, text, options);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "(no error)";
  }
  dedpo::PairDataset data_;
  at::Tensor is_labelled_;
  std::shared_ptr<dedpo::Backbone> backbone_ = backbone();
  NoServices services_;
};

TEST_F(FileAnnotator, ReadsValuesByIdFromCsvAndJsonl) {
  at::Tensor from_csv = annotate("g.csv", "id,g\np3,0.25\np1,1\np2,0\nunused,0.5\n");
  EXPECT_TRUE(at::equal(from_csv, at::tensor({1.0f, 0.0f, 0.25f})));
  at::Tensor from_jsonl = annotate(
      "g.jsonl", R"({"id": "p2", "g": 0.5})" "\n" R"({"id": "p1", "g": 0.75})" "\n"
                 R"({"id": "p3", "g": 0})" "\n");
  EXPECT_TRUE(at::equal(from_jsonl, at::tensor({0.75f, 0.5f, 0.0f})));
}

TEST_F(FileAnnotator, ReadsValuesByPairIndexWithMappedKeys) {
  // Positions are refused where the data names its pairs: skips and dropped ties shift them.
  EXPECT_THAT(error("index.csv", "row,score\n2,0.1\n0,0.2\n1,0.3\n",
                    "match = \"pair\"\nid_key = \"row\"\nvalue_key = \"score\"\n"),
              HasSubstr("names pairs by position, but this data set names its pairs by id"));
  data_.ids.clear();
  at::Tensor values =
      annotate("index.csv", "row,score\n2,0.1\n0,0.2\n1,0.3\n",
               "match = \"pair\"\nid_key = \"row\"\nvalue_key = \"score\"\n");
  EXPECT_TRUE(at::allclose(values, at::tensor({0.2f, 0.3f, 0.1f})));
  EXPECT_THAT(error("range.csv", "pair,g\n0,1\n3,1\n", "match = \"pair\"\nid_key = \"pair\"\n"),
              HasSubstr("range.csv:3: key 'pair': expected a pair index in [0, 2], got \"3\""));
}

TEST_F(FileAnnotator, BadRowsNameTheLineAndMissingPairsAreListed) {
  EXPECT_THAT(error("range.csv", "id,g\np1,1\np2,1.5\np3,0\n"),
              HasSubstr("range.csv:3: key 'g': expected a probability in [0, 1], got \"1.5\""));
  EXPECT_THAT(error("text.jsonl", R"({"id": "p1", "g": "high"})" "\n"),
              HasSubstr("text.jsonl:1: key 'g': expected a probability in [0, 1], got \"high\""));
  EXPECT_THAT(error("nokey.csv", "id,value\np1,1\n"), HasSubstr("nokey.csv:2: missing key 'g'"));
  EXPECT_THAT(error("twice.csv", "id,g\np1,1\np2,0\np1,0\np3,1\n"),
              HasSubstr("twice.csv:4: a second value for pair 'p1' (first on line 2)"));
  EXPECT_THAT(error("broken.jsonl", R"({"id": "p1", "g": 1)" "\n"),
              HasSubstr("broken.jsonl:1: malformed JSON"));
  EXPECT_THAT(error("partial.csv", "id,g\np2,1\n"),
              HasSubstr("partial.csv: no value for 2 of 3 pairs, e.g. 'p1', 'p3'"));
}

// A CSV file in another encoding (here Latin-1's é): its cells cannot become JSON strings. Found by
// fuzz/records.cpp; the value's error message used to throw nlohmann's own "invalid UTF-8 byte".
TEST_F(FileAnnotator, CsvThatIsNotUtf8NamesTheLineAndColumn) {
  EXPECT_THAT(error("latin1.csv", "id,g\np1,\xe9\n"),
              HasSubstr("latin1.csv:2: column 'g' is not valid UTF-8 text"));
  EXPECT_THAT(error("header.csv", "id,caf\xe9\np1,1\n"),
              HasSubstr("header.csv:1: the header row is not valid UTF-8 text"));
}

// A number beyond a double is nlohmann's out_of_range, not a parse_error: it ended the process
// (std::terminate) instead of naming the line. Found by fuzz/records.
TEST_F(FileAnnotator, JsonlNumberBeyondADoubleNamesTheLine) {
  EXPECT_THAT(error("huge.jsonl", R"({"id": "p1", "g": 1e999})" "\n"),
              HasSubstr("huge.jsonl:1: malformed JSON"));
}

// ---------------------------------------------------------------------------------------------
// `dedpo run` end to end: sd15 + pairs_manifest + dedpo loss + file annotator

std::vector<std::vector<std::string>> read_csv_rows(const fs::path& file) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(dedpo::test::read_file(file));
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> cells(1);
    for (char c : line) {
      if (c == ',') {
        cells.emplace_back();
      } else {
        cells.back() += c;
      }
    }
    rows.push_back(cells);
  }
  return rows;
}

class EndToEnd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = scratch() / "e2e";
    // 12 pairs over 3 prompts (4 each): pair 11 is a tie, pair 5 has no label.
    std::string manifest, annotations = "id,g\n";
    for (int i = 0; i < 12; ++i) {
      const std::string a = "img/a" + std::to_string(i) + ".png";
      const std::string b = "img/b" + std::to_string(i) + ".png";
      write_image(dir_ / a, 16 + 4 * (i % 3), 24, 100 + i);
      write_image(dir_ / b, 24, 16 + 2 * (i % 4), 200 + i);
      json line = {{"id", "pair" + std::to_string(i)},
                   {"prompt", "prompt " + std::to_string(i % 3)},
                   {"image_a", a},
                   {"image_b", b}};
      if (i == 11) line["label"] = 0.5;
      else if (i != 5) line["label"] = i % 2;
      manifest += line.dump() + "\n";
      annotations += "pair" + std::to_string(i) + "," + std::to_string(0.1 + 0.05 * i) + "\n";
    }
    write_file(dir_ / "pairs.jsonl", manifest);
    write_file(dir_ / "g.csv", annotations);
  }

  static fs::path experiment(const std::string& name, const std::string& train) {
    fs::path file = dir_ / (name + ".toml");
    write_file(file, "[run]\nname = \"" + name + "\"\nseed = 3\nthreads = 1\noutput = \"" +
                         (dir_ / "runs").string() + "\"\n"
                         "[backbone]\nplugin = \"sd15\"\npath = \"" + tiny_sd().string() +
                         "\"\nresolution = 16\nsample_steps = 2\n"
                         "[data]\nplugin = \"pairs_manifest\"\nmanifest = \"" +
                         (dir_ / "pairs.jsonl").string() + "\"\n"
                         "[annotator]\nplugin = \"file\"\npath = \"" + (dir_ / "g.csv").string() +
                         "\"\n"
                         "[loss]\nplugin = \"dedpo\"\nbeta = 100.0\n"
                         "[train]\nbatch_size = 2\nlr = 1e-4\nlog_every = 1\n" + train);
    return file;
  }

  static fs::path run(const fs::path& experiment_file) {
    dedpo::test::CommandResult result =
        dedpo::test::run_dedpo("run '" + experiment_file.string() + "'");
    EXPECT_EQ(result.exit_code, 0) << result.output;
    const std::string name = experiment_file.stem().string();
    fs::path newest;
    for (int n = 1; fs::exists(dir_ / "runs" / (name + "-" + std::to_string(n))); ++n) {
      newest = dir_ / "runs" / (name + "-" + std::to_string(n));
    }
    return newest;
  }

  static json results(const fs::path& run_dir) {
    return json::parse(dedpo::test::read_file(run_dir / "results.json"));
  }

  static inline fs::path dir_;
};

TEST_F(EndToEnd, TrainsWritesTheSplitAndReusesTheCachesOnTheNextRun) {
  fs::path file = experiment("train", "steps = 2\nlabelled_fraction = 0.5\n");
  fs::path first = run(file);
  json data = results(first).at("data");
  EXPECT_EQ(data.at("pairs"), 12);
  EXPECT_EQ(data.at("labelled"), 6);  // round(0.5 · 11 labelled pairs)
  EXPECT_EQ(data.at("images_encoded"), 24);
  EXPECT_EQ(results(first).at("steps"), 2);
  EXPECT_EQ(results(first).at("annotator"), "file");

  auto rows = read_csv_rows(first / "split.csv");
  ASSERT_EQ(rows.size(), 13u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"pair", "id", "prompt", "labelled", "label"}));
  int labelled = 0;
  for (std::size_t r = 1; r < rows.size(); ++r) {
    EXPECT_EQ(rows[r][1], "pair" + std::to_string(r - 1));
    if (rows[r][3] == "1") {
      ++labelled;
      EXPECT_FALSE(rows[r][4].empty());
      EXPECT_NE(rows[r][1], "pair5") << "pair 5 has no human label";
    } else {
      EXPECT_EQ(rows[r][4], "") << "an unlabelled pair's label must not be visible";
    }
  }
  EXPECT_EQ(labelled, 6);
  const int tie_labelled = rows[12][3] == "1" ? 1 : 0;  // pair 11 is the tie
  EXPECT_EQ(data.at("labelled_ties_kept"), tie_labelled);
  std::string log = dedpo::test::read_file(first / "log.txt");
  EXPECT_THAT(log, HasSubstr("data: 12 pairs, 6 labelled (random split), " +
                             std::to_string(tie_labelled) + " labelled ties kept as 0.5"));
  EXPECT_THAT(log, HasSubstr("images_encoded 24"));

  std::map<fs::path, fs::file_time_type> entries;
  auto count_entries = [&](const fs::path& folder) {
    std::size_t count = 0;
    for (const auto& entry : fs::recursive_directory_iterator(folder)) {
      if (entry.path().extension() != ".safetensors") continue;
      entries[entry.path()] = entry.last_write_time();
      ++count;
    }
    return count;
  };
  EXPECT_EQ(count_entries(dir_ / "runs" / ".cache" / "data" / "latents"), 24u);
  EXPECT_EQ(count_entries(dir_ / "runs" / ".cache" / "prompts"), 3u);

  fs::path second = run(file);
  ASSERT_NE(second, first);
  json again = results(second).at("data");
  EXPECT_EQ(again.at("images_encoded"), 0);
  EXPECT_EQ(again.at("images_from_cache"), 24);
  EXPECT_EQ(dedpo::test::read_file(first / "split.csv"), dedpo::test::read_file(second / "split.csv"));
  for (const auto& [path, time] : entries) EXPECT_EQ(fs::last_write_time(path), time) << path;
}

TEST_F(EndToEnd, StratifiedSplitGivesEachPromptItsShareAndLabelledTiesCanBeDropped) {
  // Seeds until one labels the tie (pair 11): then it is dropped; unlabelled it would stay.
  for (int seed = 1; seed < 20; ++seed) {
    fs::path file =
        experiment("stratified", "steps = 1\nlabelled_fraction = 0.5\nsplit = \"by_prompt\"\n"
                                 "ties = \"drop\"\n");
    std::string text = dedpo::test::read_file(file);
    text.replace(text.find("seed = 3"), 8, "seed = " + std::to_string(seed));
    write_file(file, text);
    fs::path run_dir = run(file);
    json data = results(run_dir).at("data");
    auto rows = read_csv_rows(run_dir / "split.csv");
    bool tie_present = false;
    std::map<std::string, int> per_prompt;
    for (std::size_t r = 1; r < rows.size(); ++r) {
      tie_present = tie_present || rows[r][1] == "pair11";
      if (rows[r][3] == "1") ++per_prompt[rows[r][2]];
    }
    if (tie_present) {
      // The tie stayed: it is unlabelled, whatever its hidden label.
      EXPECT_EQ(data.at("pairs"), 12);
      EXPECT_EQ(data.at("labelled_ties_dropped"), 0);
      continue;
    }
    EXPECT_EQ(data.at("pairs"), 11);
    EXPECT_EQ(data.at("labelled_ties_dropped"), 1);
    // Labelled candidates per prompt (prompt i % 3): 4, 4 and 3 (pair 5 has no label); half of
    // each, rounded either way, was labelled, and prompt 2's tie was one of them (now dropped).
    EXPECT_EQ(per_prompt["prompt 0"], 2);
    EXPECT_EQ(per_prompt["prompt 1"], 2);
    EXPECT_LE(per_prompt["prompt 2"], 1);
    const int labelled = 4 + per_prompt["prompt 2"];
    EXPECT_EQ(data.at("labelled"), labelled);
    EXPECT_THAT(dedpo::test::read_file(run_dir / "log.txt"),
                HasSubstr("data: 11 pairs, " + std::to_string(labelled) +
                          " labelled (by_prompt split), 1 labelled ties dropped"));
    return;
  }
  ADD_FAILURE() << "no seed in 1..19 labelled the tie";
}

// Data parallel on a tiny SD model (docs/distributed.md): DeDPO with lambda = "auto" on 2 ranks
// of 2 pairs against one process accumulating 2 micro-batches of 2. The same micro-batches with
// the same noise run through the same UNet shapes, the gradients are averaged exactly (halving),
// and the lambda = auto moments are summed over the ranks: the weights file is byte-identical.
TEST_F(EndToEnd, TwoRanksOnTinySdReachTheWeightsOfOneProcessAccumulatingTheirMicroBatches) {
  const fs::path file = experiment("parallel", "steps = 3\nlabelled_fraction = 0.5\n");
  std::string text = dedpo::test::read_file(file);
  const std::string beta = "beta = 100.0\n";
  text.replace(text.find(beta), beta.size(), beta + "lambda = \"auto\"\nlambda_warmup = 2\n");
  write_file(file, text);
  const fs::path two = dir_ / "runs" / "parallel-two", one = dir_ / "runs" / "parallel-one";
  // On the CPU wherever the test runs (two ranks cannot share one GPU under NCCL).
  const std::string cpu = " --set run.device='\"cpu\"'";
  const auto parallel = dedpo::test::run_dedpo("run --nproc 2 '" + file.string() + "' --run-dir '" +
                                               two.string() + "'" + cpu);
  ASSERT_EQ(parallel.exit_code, 0) << parallel.output;
  const auto alone = dedpo::test::run_dedpo("run '" + file.string() + "' --set train.grad_accum=2 " +
                                            "--no-progress --run-dir '" + one.string() + "'" + cpu);
  ASSERT_EQ(alone.exit_code, 0) << alone.output;
  EXPECT_EQ(results(two).at("world_size"), 2);
  EXPECT_EQ(results(one).at("global_batch_size"), 4);
  EXPECT_EQ(results(two).at("global_batch_size"), 4);
  const std::string weights = dedpo::test::read_file(two / "weights.pt");
  ASSERT_FALSE(weights.empty());
  EXPECT_TRUE(weights == dedpo::test::read_file(one / "weights.pt")) << "the weights differ";
  // The same steps were logged: loss, gradient norm and lambda (which left lambda = 1).
  std::vector<json> logged[2];
  for (int k = 0; k < 2; ++k) {
    std::istringstream lines(dedpo::test::read_file((k == 0 ? one : two) / "metrics.jsonl"));
    for (std::string line; std::getline(lines, line);) {
      json record = json::parse(line);
      if (record.contains("grad_norm")) logged[k].push_back(record);
    }
  }
  ASSERT_EQ(logged[0].size(), 3u);
  ASSERT_EQ(logged[1].size(), 3u);
  bool estimated = false;
  for (std::size_t step = 0; step < 3; ++step) {
    for (const char* figure : {"loss", "grad_norm", "lambda"}) {
      EXPECT_EQ(logged[0][step].at(figure), logged[1][step].at(figure)) << figure << " at step " << step;
    }
    EXPECT_GT(logged[1][step].at("grad_norm").get<double>(), 0.0);
    estimated = estimated || logged[1][step].at("lambda").get<double>() != 1.0;
  }
  EXPECT_TRUE(estimated) << "lambda = auto never left its warm-up";
}

TEST_F(EndToEnd, SkippedLinesReachTheTerminalLogAndResults) {
  write_file(dir_ / "skip.jsonl",
             dedpo::test::read_file(dir_ / "pairs.jsonl") +
                 R"({"id": "extra", "prompt": "prompt 0", "image_a": "img/missing.png", "image_b": "img/b0.png", "label": 1})" "\n");
  // The usual experiment, on the manifest with one bad line, skipped.
  fs::path file = experiment("skip", "steps = 1\n");
  std::string text = dedpo::test::read_file(file);
  std::string manifest_line = "manifest = \"" + (dir_ / "pairs.jsonl").string() + "\"";
  text.replace(text.find(manifest_line), manifest_line.size(),
               "manifest = \"" + (dir_ / "skip.jsonl").string() + "\"\non_error = \"skip\"");
  write_file(file, text);
  dedpo::test::CommandResult result = dedpo::test::run_dedpo("run '" + file.string() + "'");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("skip.jsonl:13: key 'image_a': image file not found"));
  EXPECT_THAT(result.output, HasSubstr("skipped_missing_image 1"));
  fs::path run_dir = dir_ / "runs" / "skip-1";
  EXPECT_EQ(results(run_dir).at("data").at("skipped_missing_image"), 1);
  EXPECT_THAT(dedpo::test::read_file(run_dir / "log.txt"), HasSubstr("skipped_missing_image 1"));
}

}  // namespace
