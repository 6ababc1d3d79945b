#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "dedpo/error.hpp"
#include "dedpo/safetensors.hpp"

namespace {

namespace st = dedpo::safetensors;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class TempDir {
 public:
  TempDir() {
    std::random_device device;
    path_ = std::filesystem::temp_directory_path() / ("dedpo-sd-test-" + std::to_string(device()) + std::to_string(device()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Writes an 8-byte little-endian length (default: the header's size), the header and `data` bytes.
std::filesystem::path write_raw(const TempDir& dir, const std::string& header, std::size_t data_bytes,
                                std::optional<uint64_t> length = std::nullopt) {
  const auto path = dir / "file.safetensors";
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = length.value_or(header.size());
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << std::string(data_bytes, '\0');
  return path;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const dedpo::Error& e) {
    return e.what();
  }
  return "<no dedpo::Error>";
}

std::string open_error(const std::filesystem::path& path) {
  return error_of([&] { st::File file(path); });
}

TEST(Safetensors, RoundTripKeepsDtypesShapesValuesAndMetadata) {
  TempDir dir;
  std::map<std::string, at::Tensor> tensors{
      {"a.f32", at::randn({2, 3})},
      {"b.f16", at::randn({4}).to(at::kHalf)},
      {"c.bf16", at::randn({1, 2, 2}).to(at::kBFloat16)},
      {"d.i64", at::arange(5, at::kLong)},
      {"e.bool", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)},
      {"f.scalar", at::scalar_tensor(2.5)},
      {"g.empty", at::empty({0, 3})},
      {"h.noncontiguous", at::randn({3, 4}).t()},
  };
  const auto path = dir / "x.safetensors";
  st::save(path, tensors, {{"format", "pt"}});
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1) << "temporary file left behind";
  st::File file(path);
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(file.info("b.f16").dtype, "F16");
  auto loaded = st::load(path);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [key, tensor] : tensors) {
    EXPECT_EQ(loaded.at(key).scalar_type(), tensor.scalar_type()) << key;
    EXPECT_TRUE(at::equal(loaded.at(key), tensor)) << key;
  }
  // Header padded so that the data section starts 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  EXPECT_EQ(len[0] % 8, 0);
}

TEST(Safetensors, SaveReplacesAnExistingFile) {
  TempDir dir;
  const auto path = dir / "x.safetensors";
  st::save(path, std::map<std::string, at::Tensor>{{"a", at::ones({2})}});
  st::save(path, std::map<std::string, at::Tensor>{{"b", at::zeros({3})}});
  auto loaded = st::load(path);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_TRUE(loaded.count("b"));
}

TEST(Safetensors, SaveRejectsDuplicateKeys) {
  TempDir dir;
  const auto path = dir / "x.safetensors";
  EXPECT_EQ(error_of([&] { st::save(path, std::vector<std::pair<std::string, at::Tensor>>{{"a", at::ones({1})}, {"a", at::ones({1})}}); }),
            "safetensors file '" + path.string() + "': duplicate tensor key 'a'");
}

TEST(Safetensors, TruncatedBeforeHeaderLength) {
  TempDir dir;
  const auto path = dir / "short.safetensors";
  std::ofstream(path) << "abc";
  EXPECT_EQ(open_error(path),
            "safetensors file '" + path.string() + "': truncated file: 3 bytes, less than the 8-byte header length");
}

TEST(Safetensors, HeaderLengthBeyondFile) {
  TempDir dir;
  const auto path = write_raw(dir, "{}", 0, 1000);
  EXPECT_EQ(open_error(path),
            "safetensors file '" + path.string() + "': header length 1000 goes beyond the end of the file (10 bytes)");
}

TEST(Safetensors, MalformedHeader) {
  TempDir dir;
  auto path = write_raw(dir, "{\"a\": ", 0);
  EXPECT_THAT(open_error(path), StartsWith("safetensors file '" + path.string() + "': malformed header: "));
  path = write_raw(dir, "[1, 2]", 0);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() + "': malformed header: not a JSON object");
  path = write_raw(dir, R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() + "': malformed header: tensor 'w' has no string 'dtype'");
  path = write_raw(dir, R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() +
                                  "': malformed header: tensor 'w' has no 'data_offsets' [begin, end] of two non-negative integers");
  path = write_raw(dir, R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() +
                                  "': malformed header: tensor 'w' has a shape entry that is not a non-negative integer");
  path = write_raw(dir, R"({"__metadata__": {"n": 1}})", 0);
  EXPECT_EQ(open_error(path),
            "safetensors file '" + path.string() + "': malformed header: __metadata__ value 'n' is not a string");
}

TEST(Safetensors, UnknownDtype) {
  TempDir dir;
  const auto path = write_raw(dir, R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", 2);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() + "': tensor 'w' has unknown dtype 'F8_E4M3'");
}

TEST(Safetensors, BadOffsets) {
  TempDir dir;
  auto path = write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() + "': tensor 'w' has bad data_offsets [8, 0]: begin after end");
  path = write_raw(dir, R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 8]}})", 8);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() +
                                  "': tensor 'w' has bad data_offsets [0, 8]: 8 bytes, but dtype F32 with shape [2, 3] needs 24");
  path = write_raw(dir,
                   R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                   12);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() +
                                  "': tensor 'b' has bad data_offsets [4, 12]: they overlap tensor 'a' [0, 8]");
}

// An empty tensor whose other sizes multiply past 2^63 passed the byte count (0) and then threw
// LibTorch's own "Stride calculation overflowed" from get(). Found by fuzz/safetensors_header.
TEST(Safetensors, EmptyTensorWithOverflowingSizes) {
  TempDir dir;
  const auto path = write_raw(
      dir, R"({"w": {"dtype": "F32", "shape": [0, 4294967296, 4294967296], "data_offsets": [0, 0]}})", 0);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() +
                                  "': malformed header: tensor 'w' has a shape too large");
  const auto fine = write_raw(dir, R"({"w": {"dtype": "F32", "shape": [0, 65536], "data_offsets": [0, 0]}})", 0);
  EXPECT_EQ(st::File(fine).get("w").sizes(), (std::vector<int64_t>{0, 65536}));
}

TEST(Safetensors, TruncatedData) {
  TempDir dir;
  const auto path = write_raw(dir, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 10);
  EXPECT_EQ(open_error(path), "safetensors file '" + path.string() +
                                  "': truncated file: tensor 'w' ends at byte 16 of the data section, which holds 10 bytes");
}

TEST(Safetensors, MissingFileAndKey) {
  TempDir dir;
  EXPECT_THAT(open_error(dir / "nope.safetensors"), HasSubstr("nope.safetensors': cannot open: "));
  const auto path = dir / "x.safetensors";
  st::save(path, std::map<std::string, at::Tensor>{{"a", at::ones({1})}});
  st::File file(path);
  EXPECT_EQ(error_of([&] { file.get("b"); }), "safetensors file '" + path.string() + "': no tensor 'b'");
}

struct Inner : torch::nn::Module {
  Inner() { fc = register_module("fc", torch::nn::Linear(3, 2)); }
  torch::nn::Linear fc{nullptr};
};
struct Outer : torch::nn::Module {
  Outer() {
    inner = register_module("inner", std::make_shared<Inner>());
    scale = register_parameter("scale", at::ones({2}));
    count = register_buffer("count", at::zeros({1}, at::kLong));
  }
  std::shared_ptr<Inner> inner;
  at::Tensor scale, count;
};

TEST(LoadInto, FillsParametersAndBuffersCastingFloatsWithAWarning) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  const at::Tensor weight = at::randn({2, 3}).to(at::kHalf);
  st::save(path, std::map<std::string, at::Tensor>{{"inner.fc.weight", weight},
                                                   {"inner.fc.bias", at::full({2}, 0.5)},
                                                   {"scale", at::full({2}, 3.0, at::kDouble)},
                                                   {"count", at::full({1}, 7, at::kLong)},
                                                   {"text_model.embeddings.position_ids", at::arange(4)}});
  Outer model;
  testing::internal::CaptureStderr();
  st::load_into(model, path, {"text_model.embeddings.position_ids"});
  EXPECT_EQ(testing::internal::GetCapturedStderr(),
            "warning: safetensors file '" + path.string() +
                "': converted to the model's dtype: F16 to F32 (1 tensor), F64 to F32 (1 tensor)\n");
  EXPECT_EQ(model.inner->fc->weight.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(model.inner->fc->weight, weight.to(at::kFloat)));
  EXPECT_TRUE(at::equal(model.inner->fc->bias, at::full({2}, 0.5)));
  EXPECT_TRUE(at::equal(model.scale, at::full({2}, 3.0)));
  EXPECT_EQ(model.count.item<int64_t>(), 7);
}

TEST(LoadInto, RefusesAnyOtherDtypeChangeAndNonFiniteValues) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  std::map<std::string, at::Tensor> tensors{{"inner.fc.weight", at::zeros({2, 3})},
                                            {"inner.fc.bias", at::zeros({2})},
                                            {"scale", at::ones({2}, at::kInt)},
                                            {"count", at::zeros({1}, at::kLong)}};
  st::save(path, tensors);
  Outer model;
  EXPECT_EQ(error_of([&] { st::load_into(model, path); }),
            "safetensors file '" + path.string() + "': tensor 'scale' is stored as I32, but the model's is F32; "
            "only floating-point dtypes convert into each other");
  tensors["scale"] = at::ones({2});
  tensors["count"] = at::zeros({1}, at::kInt);  // integer to another integer: refused as well
  st::save(path, tensors);
  EXPECT_THAT(error_of([&] { st::load_into(model, path); }),
              testing::HasSubstr("tensor 'count' is stored as I32, but the model's is I64"));
  tensors["count"] = at::zeros({1}, at::kLong);
  tensors["inner.fc.weight"] = at::tensor({1.0, std::nan(""), INFINITY, 2.0, -INFINITY, 0.0}).reshape({2, 3});
  st::save(path, tensors);
  EXPECT_EQ(error_of([&] { st::load_into(model, path); }),
            "safetensors file '" + path.string() + "': tensor 'inner.fc.weight' holds 3 non-finite values "
            "(NaN or infinity) of 6; the weights are damaged");
  st::load_into(model, path, {}, st::FiniteCheck::skip);
  EXPECT_TRUE(std::isnan(model.inner->fc->weight[0][1].item<float>()));
}

TEST(LoadInto, ReportsMissingAndUnexpectedKeysTogether) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  st::save(path, std::map<std::string, at::Tensor>{{"inner.fc.weight", at::zeros({2, 3})},
                                                   {"inner.fc.bias", at::zeros({2})},
                                                   {"extra.a", at::zeros({1})},
                                                   {"extra.b", at::zeros({1})}});
  Outer model;
  EXPECT_EQ(error_of([&] { st::load_into(model, path); }),
            "safetensors file '" + path.string() +
                "' does not match the model: missing keys (2): count, scale; unexpected keys (2): extra.a, extra.b");
}

TEST(LoadInto, ReportsShapeMismatch) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  st::save(path, std::map<std::string, at::Tensor>{{"inner.fc.weight", at::zeros({3, 2})},
                                                   {"inner.fc.bias", at::zeros({2})},
                                                   {"scale", at::zeros({2})},
                                                   {"count", at::zeros({1}, at::kLong)}});
  Outer model;
  EXPECT_EQ(error_of([&] { st::load_into(model, path); }),
            "safetensors file '" + path.string() + "': tensor 'inner.fc.weight' has shape [3, 2], but the model expects [2, 3]");
}

}  // namespace
