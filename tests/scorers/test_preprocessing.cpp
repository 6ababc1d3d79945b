// CLIP's image preprocessing against hand-computed expectations.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "dedpo/error.hpp"
#include "dedpo/scorers/image_processor.hpp"
#include "test_support.hpp"

namespace {

using namespace dedpo::scorers;

using Size = std::pair<std::int64_t, std::int64_t>;

TEST(ClipPreprocessing, ShortestSideBecomesTheTargetAndTheLongSideIsTruncated) {
  // 224 * 640 / 480 = 298.67 -> 298, as transformers' int().
  EXPECT_EQ(resized_size(480, 640, 224), Size(224, 298));
  EXPECT_EQ(resized_size(640, 480, 224), Size(298, 224));
  EXPECT_EQ(resized_size(100, 100, 224), Size(224, 224));
  EXPECT_EQ(resized_size(30, 31, 32), Size(32, 33));  // 33.07
}

TEST(ClipPreprocessing, ResizeKeepsAnImageOfTheTargetSize) {
  const at::Tensor image = at::randint(0, 256, {32, 40, 3}, at::kByte);
  const at::Tensor resized = resize_shortest_edge(image, 32);
  EXPECT_TRUE(at::equal(resized, image.permute({2, 0, 1}).to(at::kFloat)));
}

TEST(ClipPreprocessing, ResizeKeepsAConstantImageConstant) {
  const at::Tensor image = at::full({64, 48, 3}, 100, at::kByte);
  const at::Tensor resized = resize_shortest_edge(image, 32);
  EXPECT_EQ(resized.sizes(), (at::IntArrayRef{3, 42, 32}));  // 32 * 64 / 48 = 42.67
  EXPECT_TRUE(at::equal(resized, at::full({3, 42, 32}, 100.0)));
}

TEST(ClipPreprocessing, AntialiasedDownscaleOfARampIsTheRampAtThePixelCentres) {
  // A horizontal ramp 10·x, 16 -> 8 pixels: output pixel j is centred on input x = 2j + 0.5 and the
  // antialiased bicubic kernel (support ±4 input pixels) is symmetric and sums to 1, so where it is
  // not cut by the border (j = 2..5) it returns the ramp there: 20j + 5.
  const at::Tensor ramp = (at::arange(16, at::kLong) * 10).view({1, 16, 1}).expand({16, 16, 3}).to(at::kByte);
  const at::Tensor resized = resize_shortest_edge(ramp.contiguous(), 8);
  ASSERT_EQ(resized.sizes(), (at::IntArrayRef{3, 8, 8}));
  for (int j = 2; j <= 5; ++j) {
    EXPECT_EQ(resized[0][4][j].item<double>(), 20.0 * j + 5) << "column " << j;
  }
  // Values are whole numbers in [0, 255], as PIL's uint8 output.
  EXPECT_TRUE(at::equal(resized, resized.round().clamp(0, 255)));
}

TEST(ClipPreprocessing, CenterCropTakesTheMiddleWindow) {
  const at::Tensor image = at::arange(5 * 7, at::kFloat).view({1, 5, 7});
  const at::Tensor crop = center_crop(image, 3, 3);
  // top = (5 - 3) / 2 = 1, left = (7 - 3) / 2 = 2.
  const at::Tensor expected = at::tensor({9.f, 10.f, 11.f, 16.f, 17.f, 18.f, 23.f, 24.f, 25.f}).view({1, 3, 3});
  EXPECT_TRUE(at::equal(crop, expected));
  // Odd remainder: top = (6 - 3) / 2 = 1 (floor).
  const at::Tensor tall = at::arange(6, at::kFloat).view({1, 6, 1});
  EXPECT_TRUE(at::equal(center_crop(tall, 3, 1), at::tensor({1.f, 2.f, 3.f}).view({1, 3, 1})));
}

TEST(ClipPreprocessing, CenterCropPadsASmallImageWithZeros) {
  // 3 rows into 4: one zero row, on top (transformers puts ceil(pad / 2) before the image).
  const at::Tensor image = at::ones({1, 3, 2});
  const at::Tensor crop = center_crop(image, 4, 2);
  EXPECT_TRUE(at::equal(crop, at::tensor({0.f, 0.f, 1.f, 1.f, 1.f, 1.f, 1.f, 1.f}).view({1, 4, 2})));
}

TEST(ClipPreprocessing, NormalisesWithClipMeanAndStd) {
  const at::Tensor image = at::full({40, 60, 3}, 128, at::kByte);
  const ClipImageProcessorConfig config = ClipImageProcessorConfig::for_image_size(32);
  const at::Tensor pixels = preprocess_image(image, config);
  ASSERT_EQ(pixels.sizes(), (at::IntArrayRef{3, 32, 32}));
  const double mean[] = {0.48145466, 0.4578275, 0.40821073}, std[] = {0.26862954, 0.26130258, 0.27577711};
  for (int c = 0; c < 3; ++c) {
    const double expected = (128.0 / 255.0 - mean[c]) / std[c];
    EXPECT_NEAR(pixels[c].min().item<double>(), expected, 1e-6);
    EXPECT_NEAR(pixels[c].max().item<double>(), expected, 1e-6);
  }
}

TEST(ClipPreprocessing, RejectsAnImageThatIsNotUint8Rgb) {
  EXPECT_THROW(resize_shortest_edge(at::zeros({8, 8, 3}), 4), dedpo::Error);
  EXPECT_THROW(resize_shortest_edge(at::zeros({8, 8, 4}, at::kByte), 4), dedpo::Error);
}

TEST(ClipPreprocessing, ReadsPreprocessorConfigInBothSpellings) {
  dedpo::test::TempDir dir;
  dedpo::test::write_file(dir / "a.json", R"({"size": {"shortest_edge": 336}, "crop_size": {"height": 320, "width": 300},
                                              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})");
  const auto a = ClipImageProcessorConfig::from_file(dir / "a.json");
  EXPECT_EQ(a.shortest_edge, 336);
  EXPECT_EQ(a.crop_height, 320);
  EXPECT_EQ(a.crop_width, 300);
  EXPECT_EQ(a.image_std[1], 0.25);
  dedpo::test::write_file(dir / "b.json", R"({"size": 224, "crop_size": 224})");
  const auto b = ClipImageProcessorConfig::from_file(dir / "b.json");
  EXPECT_EQ(b.shortest_edge, 224);
  EXPECT_EQ(b.crop_width, 224);
  EXPECT_EQ(b.image_mean[0], 0.48145466);
  dedpo::test::write_file(dir / "bad.json", R"({"size": )");
  try {
    ClipImageProcessorConfig::from_file(dir / "bad.json");
    FAIL() << "no error";
  } catch (const dedpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
  }
}

// Each of these once either escaped as a JSON library exception (terminating the program) or loaded
// and made infinite pixels / an image too big to allocate; found by fuzz/image_processor_config.
TEST(ClipPreprocessing, RefusesAPreprocessorConfigThatCannotPreprocess) {
  dedpo::test::TempDir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"image_mean": [0.5, "x", 0.5]})", "'image_mean' must be a list of 3 numbers"},
      {R"({"image_std": [0.5, 0.5]})", "'image_std' must be a list of 3 numbers"},
      {R"({"image_std": [0, 0.5, 0.5]})", "'image_std' must hold numbers >= 1e-6"},
      {R"({"image_mean": [1e999, 0, 0]})", "malformed JSON"},
      {R"({"size": 100000})", "'size' must be an integer in [1, 8192]"},
      {R"({"crop_size": {"height": 0, "width": 4}})", "'crop_size' must be an integer in [1, 8192]"},
      {R"({"crop_size": 77777777777777777777.7})", "'crop_size' must be an integer in [1, 8192]"},
      {R"({"crop_size": 18446744073709551615})", "'crop_size' must be an integer in [1, 8192]"},
      {R"({"crop_size": {"height": 8}})", "'crop_size' has no 'width'"},
      {R"({"size": {"shortest_edge": "224"}})", "'size' must be an integer in [1, 8192]"},
  };
  for (const auto& [json, expected] : cases) {
    dedpo::test::write_file(dir / "preprocessor_config.json", json);
    try {
      ClipImageProcessorConfig::from_file(dir / "preprocessor_config.json");
      ADD_FAILURE() << json << ": no error";
    } catch (const dedpo::Error& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << json << " -> " << e.what();
      EXPECT_NE(std::string(e.what()).find("preprocessor_config.json"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
