// The chart module: both files from one drawing, valid PNG and SVG, and the charts' refusals.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "chart_files.hpp"
#include "dedpo/error.hpp"
#include "dedpo/host/chart.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using namespace dedpo;
using testing::HasSubstr;

namespace {

chart::LineChart sweep_chart() {
  chart::LineChart chart;
  chart.title = "reward against the labelled fraction";
  chart.x_label = "labelled fraction";
  chart.y_label = "reward";
  chart.x_scale = chart::Scale::log;
  chart.note = "Line: mean; band: 95% interval.";
  chart.reference = 0.2;
  chart.reference_label = "reference";
  const std::vector<double> x = {0.05, 0.1, 0.25, 0.5, 1.0};
  chart.series.push_back({"dpo",
                          x,
                          {0.1, 0.2, 0.3, 0.33, 0.35},
                          {0.05, 0.15, 0.25, 0.3, 0.31},
                          {0.15, 0.25, 0.35, 0.36, 0.39}});
  // A diverged mean at 5%: left off the axis instead of flattening the other lines.
  chart.series.push_back({"dedpo", x, {-4e8, 0.3, NAN, 0.34, 0.36}, {}, {}});
  chart.clip_outliers = true;
  return chart;
}

template <class Chart>
std::string error_of(const Chart& chart, const fs::path& stem) {
  try {
    chart::write_chart(chart, stem);
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Chart, LineChartIsWrittenAsPngAndSvg) {
  test::TempDir dir;
  const auto files = chart::write_chart(sweep_chart(), dir / "reward");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], dir / "reward.svg");
  EXPECT_EQ(files[1], dir / "reward.png");
  test::expect_svg(files[0]);
  const test::PngSize size =
      test::expect_png(files[1], 6);  // background, text, grid, 2 lines, bands
  EXPECT_GT(size.width, 1000u);       // drawn at twice the SVG's scale
  EXPECT_GT(size.height, 700u);
}

TEST(Chart, DotIntervalChartIsWrittenAsPngAndSvgWithARowPerItem) {
  test::TempDir dir;
  chart::DotIntervalChart chart;
  chart.title = "reward by method";
  chart.value_label = "reward";
  chart.reference = 0.205;
  chart.reference_label = "reference";
  chart.rows = {{"sft-25h", 0.28, 0.26, 0.30, false},
                {"dpo-25h (baseline)", 0.30, 0.27, 0.33, true},
                {"dpo-100h", 0.35, 0.33, 0.37, false},
                {"dedpo", NAN, NAN, NAN, false}};
  const auto files = chart::write_chart(chart, dir / "reward");
  test::expect_svg(files[0]);
  const test::PngSize four_rows = test::expect_png(files[1], 5);
  // The highlighted row (the baseline) is drawn in red; no other mark is.
  auto red_pixels = [](const fs::path& png) {
    const at::Tensor image = read_image(png).to(at::kInt);
    return ((image.select(2, 0) == 0xd6) & (image.select(2, 1) == 0x27) &
            (image.select(2, 2) == 0x28)).sum().item<std::int64_t>();
  };
  EXPECT_GT(red_pixels(files[1]), 100);
  chart.rows[1].highlighted = false;
  EXPECT_EQ(red_pixels(chart::write_chart(chart, dir / "plain")[1]), 0);
  chart.rows[1].highlighted = true;
  // Each row takes its own height: rows can never be drawn over each other.
  chart.rows.push_back({"one more", 0.31, 0.3, 0.32, false});
  const test::PngSize five_rows = test::expect_png(chart::write_chart(chart, dir / "more")[1]);
  EXPECT_GT(five_rows.height, four_rows.height);
  EXPECT_EQ(five_rows.width, four_rows.width);
}

TEST(Chart, RefusesWhatItCannotDraw) {
  test::TempDir dir;
  chart::LineChart empty;
  empty.title = "nothing";
  empty.series.push_back({"all diverged", {1, 2}, {NAN, NAN}, {}, {}});
  EXPECT_THAT(error_of(empty, dir / "empty"), HasSubstr("chart 'nothing': nothing to draw"));
  chart::LineChart log_axis = sweep_chart();
  log_axis.series[0].x[0] = 0;
  EXPECT_THAT(error_of(log_axis, dir / "log"),
              HasSubstr("a logarithmic x axis needs x > 0 (series 'dpo' has 0)"));
  chart::LineChart ragged = sweep_chart();
  ragged.series[0].low.pop_back();
  EXPECT_THAT(error_of(ragged, dir / "ragged"),
              HasSubstr("x, y, low and high of different lengths"));
  EXPECT_FALSE(fs::exists(dir / "ragged.png"));
  chart::DotIntervalChart no_rows;
  no_rows.title = "none";
  EXPECT_THAT(error_of(no_rows, dir / "none"), HasSubstr("chart 'none': nothing to draw"));
}

// Series with equal points (every method at a labelled fraction of 1) are drawn side by side.
TEST(Chart, DodgedSeriesWithEqualPointsStayVisible) {
  test::TempDir dir;
  chart::LineChart chart;
  chart.title = "equal";
  chart.series = {{"first", {0.1, 0.5, 1.0}, {1, 2, 3}, {}, {}},
                  {"second", {0.1, 0.5, 1.0}, {1, 2, 3}, {}, {}}};
  // Pixels of the first series' colour (matplotlib's blue): its line, dots and legend entry.
  auto first_colour_pixels = [&](const std::string& name) {
    const at::Tensor image = read_image(chart::write_chart(chart, dir / name)[1]).to(at::kInt);
    const at::Tensor blue = (image.select(2, 0) == 0x1f) & (image.select(2, 1) == 0x77) &
                            (image.select(2, 2) == 0xb4);
    return blue.sum().item<std::int64_t>();
  };
  const std::int64_t covered = first_colour_pixels("covered");
  chart.dodge = true;
  const std::int64_t dodged = first_colour_pixels("dodged");
  EXPECT_GT(dodged, 2 * covered) << "covered " << covered << ", dodged " << dodged;
}
