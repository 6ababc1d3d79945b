#pragma once
// Checks of the chart files dedpo writes (dedpo/host/chart.hpp): a PNG that decodes to a picture
// with more than a background, an SVG that parses as XML with an <svg> root of a size.
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <boost/property_tree/ptree.hpp>
#include <boost/property_tree/xml_parser.hpp>
#include <gtest/gtest.h>

#include "dedpo/image.hpp"
#include "test_support.hpp"

namespace dedpo::test {

struct PngSize {
  std::uint32_t width = 0, height = 0;
};

// The PNG signature, the size from its IHDR chunk, and a decoded picture of that size in which
// at least `min_colours` colours appear (a chart, not a blank page).
inline PngSize expect_png(const std::filesystem::path& file, std::size_t min_colours = 3) {
  PngSize size;
  const std::string bytes = read_file(file);
  EXPECT_GT(bytes.size(), 33u) << file;
  if (bytes.size() <= 33) return size;
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << file;
  EXPECT_EQ(bytes.substr(12, 4), "IHDR") << file;
  auto big_endian = [&](std::size_t at) {
    std::uint32_t value = 0;
    for (std::size_t i = 0; i < 4; ++i)
      value = (value << 8) | static_cast<unsigned char>(bytes[at + i]);
    return value;
  };
  size = {big_endian(16), big_endian(20)};
  const at::Tensor image = read_image(file);  // [H, W, 3] uint8
  EXPECT_EQ(image.size(0), size.height) << file;
  EXPECT_EQ(image.size(1), size.width) << file;
  const at::Tensor pixels = image.reshape({-1, 3}).to(at::kInt);
  const at::Tensor packed =
      pixels.select(1, 0) * 65536 + pixels.select(1, 1) * 256 + pixels.select(1, 2);
  EXPECT_GE(std::get<0>(at::_unique(packed)).numel(), static_cast<std::int64_t>(min_colours))
      << file;
  return size;
}

// Parses as XML; the root is <svg> with a width and a height, and it draws something.
inline void expect_svg(const std::filesystem::path& file) {
  namespace pt = boost::property_tree;
  pt::ptree tree;
  std::istringstream text(read_file(file));
  try {
    pt::read_xml(text, tree);
  } catch (const pt::xml_parser_error& error) {
    ADD_FAILURE() << file << ": not XML: " << error.what();
    return;
  }
  const auto root = tree.get_child_optional("svg");
  ASSERT_TRUE(root) << file << ": no <svg> root";
  EXPECT_TRUE(root->get_optional<std::string>("<xmlattr>.width")) << file;
  EXPECT_TRUE(root->get_optional<std::string>("<xmlattr>.height")) << file;
  std::size_t drawn = 0;
  for (const auto& [name, child] : *root) drawn += name == "g" || name == "path" || name == "rect";
  EXPECT_GT(drawn, 0u) << file << ": draws nothing";
}

}  // namespace dedpo::test
