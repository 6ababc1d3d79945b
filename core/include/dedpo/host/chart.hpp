#pragma once
// Charts drawn with cairo: each chart is drawn by one routine onto an SVG surface and a PNG
// surface, so <stem>.svg and <stem>.png show the same picture. Two kinds: line charts (series over
// a numeric x, each point optionally with an interval drawn as a shaded band) and dot-and-interval
// charts (one row per item: a dot at its value and a bar over its interval). Image sheets put PNG
// files in rows and columns with labels and captions (PNG only). The module knows numbers, labels
// and image files only, nothing of grids or runs.
#include <cmath>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace dedpo::chart {

enum class Scale { linear, log };

struct Series {
  std::string label;
  std::vector<double> x, y;  // non-finite y: a gap
  // Empty, or one per point: the interval [low, high] around y, drawn as a shaded band (an error
  // bar where a point has no finite neighbour to make a band with).
  std::vector<double> low, high;
};

struct LineChart {
  std::string title, x_label, y_label;
  Scale x_scale = Scale::linear;  // log: every x must be positive
  std::vector<Series> series;     // in legend order
  // Keeps the y axis on the bulk of the values: a y far beyond the others (a diverged method,
  // 10^8 against 0.3) is left off the axis and named in a note, instead of flattening every other
  // series. Off for run curves, whose early values are rightly far from the late ones.
  bool clip_outliers = false;
  // Draws each series a few pixels to the side of the previous one, so that series with equal
  // points (every method at a labelled fraction of 1) stay visible instead of covering each other.
  bool dodge = false;
  std::optional<double> reference;  // a dashed horizontal line at this y, labelled
  std::string reference_label;
  std::string note;  // a line under the chart (what the bands are)
};

struct IntervalRow {
  std::string label;
  double value = NAN;            // NaN: no value to draw (said in the row's text)
  double low = NAN, high = NAN;  // NaN: no interval
  bool highlighted = false;      // drawn apart (bold label, own colour, shaded row): a baseline
};

struct DotIntervalChart {
  std::string title, value_label;
  std::vector<IntervalRow> rows;    // top to bottom
  std::optional<double> reference;  // a dashed vertical line at this value, labelled
  std::string reference_label;
  std::string note;  // a line under the chart (what the dot and the bar are)
};

struct SheetCell {
  std::filesystem::path png;          // empty: no image, a blank cell with its caption
  std::vector<std::string> caption;   // lines under the image
};

struct ImageSheet {
  std::string title;
  std::vector<std::string> row_labels;                  // at the left, one per row
  std::vector<std::vector<std::string>> column_labels;  // on top: lines per column
  std::vector<std::vector<SheetCell>> cells;            // [row][column]
};

// Where a cell's image lies in the sheet's pixels: each image pixel is a scale × scale square.
struct SheetPlace {
  int x = 0, y = 0, width = 0, height = 0, scale = 1;
};

// Draws the sheet into `file` (PNG, written atomically): each image pixel for pixel, enlarged by a
// whole factor when the images are small (nearest neighbour: a pixel stays one colour). Returns
// the place of each cell's image, [row][column] (width 0 for a cell without one). Error naming the
// file when an image cannot be read.
std::vector<std::vector<SheetPlace>> write_image_sheet(const ImageSheet& sheet,
                                                       const std::filesystem::path& file);

// Draws the chart into <stem>.svg and <stem>.png (written atomically; stem has no extension) and
// returns the two paths. Error when the chart has nothing to draw or a log axis meets x <= 0.
std::vector<std::filesystem::path> write_chart(const LineChart& chart,
                                               const std::filesystem::path& stem);
std::vector<std::filesystem::path> write_chart(const DotIntervalChart& chart,
                                               const std::filesystem::path& stem);

}  // namespace dedpo::chart
