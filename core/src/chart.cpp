#include "dedpo/host/chart.hpp"

#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <functional>
#include <memory>

#include <fmt/format.h>

#include "dedpo/error.hpp"
#include "dedpo/files.hpp"

namespace dedpo::chart {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFont = "DejaVu Sans";  // Debian's fonts-dejavu-core
constexpr double kTextSize = 13, kTitleSize = 16, kNoteSize = 11;
constexpr double kPngScale = 2;  // PNG pixels per chart unit: sharp on high-density screens
// A y more than this many interquartile ranges beyond the quartiles is an outlier (clip_outliers).
constexpr double kOutlierFence = 10;

struct Colour {
  double r, g, b;
};
constexpr Colour rgb(unsigned hex) {
  return {((hex >> 16) & 0xff) / 255.0, ((hex >> 8) & 0xff) / 255.0, (hex & 0xff) / 255.0};
}
// Matplotlib's "tab10": ten colours that stay apart on screen and paper.
constexpr Colour kPalette[] = {rgb(0x1f77b4), rgb(0xff7f0e), rgb(0x2ca02c), rgb(0xd62728),
                               rgb(0x9467bd), rgb(0x8c564b), rgb(0xe377c2), rgb(0x7f7f7f),
                               rgb(0xbcbd22), rgb(0x17becf)};
constexpr Colour kBlack = rgb(0x000000), kGrid = rgb(0xe6e6e6), kMuted = rgb(0x555555),
                 kHighlight = rgb(0xd62728), kHighlightRow = rgb(0xfbe3e3), kWhite = rgb(0xffffff);

struct CairoFree {
  void operator()(cairo_t* context) const { cairo_destroy(context); }
  void operator()(cairo_surface_t* surface) const { cairo_surface_destroy(surface); }
};
using Context = std::unique_ptr<cairo_t, CairoFree>;
using Surface = std::unique_ptr<cairo_surface_t, CairoFree>;

void check(cairo_status_t status, const char* what) {
  if (status != CAIRO_STATUS_SUCCESS) {
    throw Error(std::string("chart: ") + what + ": " + cairo_status_to_string(status));
  }
}

void set_colour(cairo_t* cr, Colour c, double alpha = 1.0) {
  cairo_set_source_rgba(cr, c.r, c.g, c.b, alpha);
}

void set_font(cairo_t* cr, double size, bool bold = false) {
  cairo_select_font_face(cr, kFont, CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

double text_width(cairo_t* cr, const std::string& text) {
  cairo_text_extents_t extents;
  cairo_text_extents(cr, text.c_str(), &extents);
  return extents.x_advance;
}

enum class Align { left, centre, right };

// Draws `text` with its vertical middle at y.
void draw_text(cairo_t* cr, const std::string& text, double x, double y,
               Align align = Align::left) {
  cairo_font_extents_t font;
  cairo_font_extents(cr, &font);
  const double width = text_width(cr, text);
  const double left = align == Align::left ? x : align == Align::centre ? x - width / 2 : x - width;
  cairo_move_to(cr, left, y + (font.ascent - font.descent) / 2);
  cairo_show_text(cr, text.c_str());
}

void draw_rotated_text(cairo_t* cr, const std::string& text, double x, double y) {
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, -M_PI / 2);
  draw_text(cr, text, 0, 0, Align::centre);
  cairo_restore(cr);
}

// A context for measuring text before the size of the chart is known.
class Measure {
 public:
  Measure()
      : surface_(cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1)),
        context_(cairo_create(surface_.get())) {}
  double width(const std::string& text, double size, bool bold = false) {
    set_font(context_.get(), size, bold);
    return text_width(context_.get(), text);
  }

 private:
  Surface surface_;
  Context context_;
};

cairo_status_t append_bytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

// The one drawing routine of a chart, run once on an SVG surface and once on a PNG surface.
std::vector<fs::path> render(double width, double height, const std::function<void(cairo_t*)>& draw,
                             const fs::path& stem) {
  auto paint = [&](cairo_surface_t* surface, double scale) {
    Context cr(cairo_create(surface));
    cairo_scale(cr.get(), scale, scale);
    set_colour(cr.get(), kWhite);
    cairo_paint(cr.get());
    draw(cr.get());
    check(cairo_status(cr.get()), "drawing");
  };
  std::string svg;
  {
    Surface surface(cairo_svg_surface_create_for_stream(append_bytes, &svg, width, height));
    cairo_svg_surface_set_document_unit(surface.get(), CAIRO_SVG_UNIT_PX);
    paint(surface.get(), 1.0);
    cairo_surface_finish(surface.get());
    check(cairo_surface_status(surface.get()), "SVG surface");
  }
  std::string png;
  {
    Surface surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24,
                                               static_cast<int>(std::ceil(width * kPngScale)),
                                               static_cast<int>(std::ceil(height * kPngScale))));
    check(cairo_surface_status(surface.get()), "PNG surface");
    paint(surface.get(), kPngScale);
    check(cairo_surface_write_to_png_stream(surface.get(), append_bytes, &png), "PNG encoding");
  }
  const fs::path svg_file = fs::path(stem).concat(".svg"), png_file = fs::path(stem).concat(".png");
  write_file_atomic(svg_file, svg);
  write_file_atomic(png_file, png);
  return {svg_file, png_file};
}

// ---- axes ------------------------------------------------------------------------------------

struct Range {
  double lo = INFINITY, hi = -INFINITY;
  void add(double v) {
    if (std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  bool empty() const { return !(lo <= hi); }
  bool contains(double v) const { return v >= lo && v <= hi; }
};

// Values beyond kOutlierFence interquartile ranges from the quartiles lie outside the returned
// range; an unbounded range when there are too few values or no spread to tell.
Range outlier_fences(std::vector<double> values) {
  std::erase_if(values, [](double v) { return !std::isfinite(v); });
  if (values.size() < 4) return {-INFINITY, INFINITY};
  std::sort(values.begin(), values.end());
  auto quantile = [&](double q) {
    const double position = q * static_cast<double>(values.size() - 1);
    const std::size_t below = static_cast<std::size_t>(std::floor(position));
    const std::size_t above = std::min(below + 1, values.size() - 1);
    return values[below] +
           (position - static_cast<double>(below)) * (values[above] - values[below]);
  };
  const double q1 = quantile(0.25), q3 = quantile(0.75), spread = q3 - q1;
  if (!(spread > 0)) return {-INFINITY, INFINITY};
  return {q1 - kOutlierFence * spread, q3 + kOutlierFence * spread};
}

std::string tick_label(double value, double step) {
  if (value == 0) return "0";
  const double magnitude = std::abs(value);
  if (magnitude >= 1e5 || magnitude < 1e-3 || step < 1e-4) return fmt::format("{:g}", value);
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return fmt::format("{:.{}f}", value, decimals);
}

struct Axis {
  Scale scale = Scale::linear;
  double lo = 0, hi = 1;              // data values at the two ends
  double pixel_lo = 0, pixel_hi = 1;  // where they are drawn
  std::vector<double> ticks;
  std::vector<std::string> labels;

  double position(double value) const {
    const double t = scale == Scale::log
                         ? (std::log10(value) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
                         : (value - lo) / (hi - lo);
    // Far beyond the frame (a diverged value) only the direction matters; cairo's fixed-point
    // coordinates would overflow.
    return pixel_lo + std::clamp(t, -10.0, 11.0) * (pixel_hi - pixel_lo);
  }
};

// An axis over `data`, padded by `padding` of its span on each side so that no mark sits on the
// frame; linear ticks at 1, 2, 5 × 10^k, log ticks at 1, 2, 5 (or every digit) per decade.
Axis make_axis(Range data, Scale scale, double padding) {
  Axis axis;
  axis.scale = scale;
  if (data.empty()) data = {0, 1};
  if (scale == Scale::log) {
    double lo = std::log10(data.lo), hi = std::log10(data.hi);
    if (hi - lo < 1e-12) {
      lo -= 0.1;
      hi += 0.1;
    }
    const double pad = (hi - lo) * padding;
    axis.lo = std::pow(10.0, lo - pad);
    axis.hi = std::pow(10.0, hi + pad);
    for (const std::vector<double>& mantissas :
         {std::vector<double>{1, 2, 5}, std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8, 9}}) {
      axis.ticks.clear();
      for (int decade = static_cast<int>(std::floor(lo - pad)); decade <= std::ceil(hi + pad);
           ++decade) {
        for (double m : mantissas) {
          const double tick = m * std::pow(10.0, decade);
          if (tick >= axis.lo && tick <= axis.hi) axis.ticks.push_back(tick);
        }
      }
      if (axis.ticks.size() >= 3) break;
    }
    for (double tick : axis.ticks) axis.labels.push_back(fmt::format("{:g}", tick));
    return axis;
  }
  double span = data.hi - data.lo;
  if (!(span > 0)) {
    span = std::abs(data.lo) > 0 ? std::abs(data.lo) * 0.1 : 1.0;
    data = {data.lo - span / 2, data.hi + span / 2};
  }
  const double lo = data.lo - span * padding, hi = data.hi + span * padding;
  const double raw = (hi - lo) / 5;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  axis.lo = lo;
  axis.hi = hi;
  for (double tick = std::ceil(lo / step - 1e-9) * step; tick <= hi + step * 1e-9; tick += step) {
    const double clean = std::abs(tick) < step * 1e-9 ? 0.0 : tick;
    axis.ticks.push_back(clean);
    axis.labels.push_back(tick_label(clean, step));
  }
  return axis;
}

struct Frame {
  double left, top, width, height;
  double right() const { return left + width; }
  double bottom() const { return top + height; }
};

void clip_to(cairo_t* cr, const Frame& frame) {
  cairo_rectangle(cr, frame.left, frame.top, frame.width, frame.height);
  cairo_clip(cr);
}

// Grid lines, frame, tick marks and tick labels of the x axis (below) and, when given, the y axis.
void draw_axes(cairo_t* cr, const Frame& frame, const Axis& x, const Axis* y) {
  cairo_set_line_width(cr, 1);
  set_colour(cr, kGrid);
  for (double tick : x.ticks) {
    cairo_move_to(cr, x.position(tick), frame.top);
    cairo_line_to(cr, x.position(tick), frame.bottom());
  }
  if (y) {
    for (double tick : y->ticks) {
      cairo_move_to(cr, frame.left, y->position(tick));
      cairo_line_to(cr, frame.right(), y->position(tick));
    }
  }
  cairo_stroke(cr);
  set_colour(cr, kBlack);
  cairo_rectangle(cr, frame.left, frame.top, frame.width, frame.height);
  cairo_stroke(cr);
  set_font(cr, kTextSize);
  for (std::size_t i = 0; i < x.ticks.size(); ++i) {
    const double px = x.position(x.ticks[i]);
    cairo_move_to(cr, px, frame.bottom());
    cairo_line_to(cr, px, frame.bottom() + 5);
    cairo_stroke(cr);
    draw_text(cr, x.labels[i], px, frame.bottom() + 16, Align::centre);
  }
  if (!y) return;
  for (std::size_t i = 0; i < y->ticks.size(); ++i) {
    const double py = y->position(y->ticks[i]);
    cairo_move_to(cr, frame.left - 5, py);
    cairo_line_to(cr, frame.left, py);
    cairo_stroke(cr);
    draw_text(cr, y->labels[i], frame.left - 8, py, Align::right);
  }
}

void draw_title(cairo_t* cr, const std::string& title, double centre) {
  set_colour(cr, kBlack);
  set_font(cr, kTitleSize, true);
  draw_text(cr, title, centre, 22, Align::centre);
}

void draw_notes(cairo_t* cr, const std::vector<std::string>& notes, double left, double top) {
  set_colour(cr, kMuted);
  set_font(cr, kNoteSize);
  for (std::size_t i = 0; i < notes.size(); ++i) {
    draw_text(cr, notes[i], left, top + 16.0 * static_cast<double>(i));
  }
}

void draw_dot(cairo_t* cr, double x, double y, double radius, Colour colour) {
  cairo_new_sub_path(cr);
  cairo_arc(cr, x, y, radius, 0, 2 * M_PI);
  set_colour(cr, colour);
  cairo_fill_preserve(cr);
  set_colour(cr, kWhite);
  cairo_set_line_width(cr, 1);
  cairo_stroke(cr);
}

enum class Direction { horizontal, vertical };

// An interval bar from (x0, y0) to (x1, y1) with short caps.
void draw_bar(cairo_t* cr, double x0, double y0, double x1, double y1, Direction direction,
              Colour colour) {
  set_colour(cr, colour);
  cairo_set_line_width(cr, 1.6);
  cairo_move_to(cr, x0, y0);
  cairo_line_to(cr, x1, y1);
  const bool vertical = direction == Direction::vertical;
  for (const auto& [x, y] : {std::pair{x0, y0}, std::pair{x1, y1}}) {
    cairo_move_to(cr, vertical ? x - 4 : x, vertical ? y : y - 4);
    cairo_line_to(cr, vertical ? x + 4 : x, vertical ? y : y + 4);
  }
  cairo_stroke(cr);
}

// A small triangle at (x, y) pointing left (-1) or right (+1): a value beyond the axis.
void draw_off_axis_arrow(cairo_t* cr, double x, double y, int direction, Colour colour) {
  set_colour(cr, colour);
  cairo_move_to(cr, x + direction * 7.0, y);
  cairo_line_to(cr, x, y - 5);
  cairo_line_to(cr, x, y + 5);
  cairo_close_path(cr);
  cairo_fill(cr);
}

std::string value_text(double value) { return fmt::format("{:.4g}", value); }

constexpr double kReferenceDashes[] = {5, 4};

// A dashed reference line across the frame at `position`: x when vertical, else y.
void draw_reference(cairo_t* cr, const Frame& frame, double position, Direction direction) {
  cairo_set_dash(cr, kReferenceDashes, 2, 0);
  set_colour(cr, kMuted);
  cairo_set_line_width(cr, 1.5);
  const bool vertical = direction == Direction::vertical;
  cairo_move_to(cr, vertical ? position : frame.left, vertical ? frame.top : position);
  cairo_line_to(cr, vertical ? position : frame.right(), vertical ? frame.bottom() : position);
  cairo_stroke(cr);
  cairo_set_dash(cr, nullptr, 0, 0);
}

// ---- line charts -----------------------------------------------------------------------------

constexpr double kPlotWidth = 640, kPlotHeight = 380, kLegendRow = 20;
constexpr std::size_t kMaxMarkers = 60;  // longer series (run curves) are drawn as lines only
constexpr double kSeriesDashes[] = {7, 4};
constexpr double kDodge = 3;  // pixels between neighbouring series (LineChart::dodge)

void check_series(const LineChart& chart) {
  bool any = false;
  for (const Series& s : chart.series) {
    if (s.x.size() != s.y.size() || (!s.low.empty() && s.low.size() != s.y.size()) ||
        s.low.size() != s.high.size()) {
      throw Error("chart '" + chart.title + "': series '" + s.label +
                  "' has x, y, low and high of different lengths");
    }
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (chart.x_scale == Scale::log && s.x[i] <= 0) {
        throw Error("chart '" + chart.title + "': a logarithmic x axis needs x > 0 (series '" +
                    s.label + "' has " + value_text(s.x[i]) + ")");
      }
      any = any || (std::isfinite(s.x[i]) && std::isfinite(s.y[i]));
    }
  }
  if (!any) throw Error("chart '" + chart.title + "': nothing to draw (no finite point)");
}

// `shift`: pixels to the side (LineChart::dodge).
void draw_series(cairo_t* cr, const Series& series, const Axis& x, const Axis& y, Colour colour,
                 std::size_t index, double shift) {
  const std::size_t n = series.x.size();
  auto px = [&](std::size_t i) { return x.position(series.x[i]) + shift; };
  auto finite = [&](std::size_t i) {
    return std::isfinite(series.x[i]) && std::isfinite(series.y[i]);
  };
  auto banded = [&](std::size_t i) {
    return finite(i) && !series.low.empty() && std::isfinite(series.low[i]) &&
           std::isfinite(series.high[i]);
  };
  // Bands over runs of consecutive points with an interval; an error bar for a point alone.
  for (std::size_t start = 0; start < n;) {
    if (!banded(start)) {
      ++start;
      continue;
    }
    std::size_t end = start;
    while (end + 1 < n && banded(end + 1)) ++end;
    if (end == start) {
      draw_bar(cr, px(start), y.position(series.low[start]), px(start),
               y.position(series.high[start]), Direction::vertical, colour);
    } else {
      cairo_move_to(cr, px(start), y.position(series.high[start]));
      for (std::size_t i = start + 1; i <= end; ++i)
        cairo_line_to(cr, px(i), y.position(series.high[i]));
      for (std::size_t i = end + 1; i-- > start;)
        cairo_line_to(cr, px(i), y.position(series.low[i]));
      cairo_close_path(cr);
      set_colour(cr, colour, 0.15);
      cairo_fill(cr);
    }
    start = end + 1;
  }
  // Series beyond the palette's ten colours are told apart by dashes.
  cairo_set_dash(cr, kSeriesDashes, index >= std::size(kPalette) ? 2 : 0, 0);
  set_colour(cr, colour);
  cairo_set_line_width(cr, 2);
  bool drawing = false;
  for (std::size_t i = 0; i < n; ++i) {
    if (!finite(i)) {
      drawing = false;
      continue;
    }
    (drawing ? cairo_line_to : cairo_move_to)(cr, px(i), y.position(series.y[i]));
    drawing = true;
  }
  cairo_stroke(cr);
  cairo_set_dash(cr, nullptr, 0, 0);
  if (n > kMaxMarkers) return;
  for (std::size_t i = 0; i < n; ++i) {
    if (finite(i)) draw_dot(cr, px(i), y.position(series.y[i]), 3.5, colour);
  }
}

}  // namespace

std::vector<fs::path> write_chart(const LineChart& chart, const fs::path& stem) {
  check_series(chart);
  // The y axis: every finite value, or with clip_outliers those within the fences.
  std::vector<double> all_y;
  for (const Series& s : chart.series) all_y.insert(all_y.end(), s.y.begin(), s.y.end());
  const Range fences = chart.clip_outliers ? outlier_fences(all_y) : Range{-INFINITY, INFINITY};
  Range x_data, y_data;
  std::vector<std::string> off_axis;
  for (const Series& s : chart.series) {
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x_data.add(s.x[i]);
      if (!fences.contains(s.y[i])) {
        off_axis.push_back(fmt::format("{} at {:g} ({})", s.label, s.x[i], value_text(s.y[i])));
        continue;
      }
      y_data.add(s.y[i]);
      if (!s.low.empty()) {
        y_data.add(std::max(s.low[i], fences.lo));
        y_data.add(std::min(s.high[i], fences.hi));
      }
    }
  }
  if (chart.reference) y_data.add(*chart.reference);
  std::vector<std::string> notes;
  if (!chart.note.empty()) notes.push_back(chart.note);
  if (!off_axis.empty()) {
    std::string text = "Off the axis: " + off_axis.front();
    for (std::size_t i = 1; i < std::min<std::size_t>(off_axis.size(), 3); ++i)
      text += "; " + off_axis[i];
    if (off_axis.size() > 3) text += fmt::format("; and {} more", off_axis.size() - 3);
    notes.push_back(text);
  }

  Axis x = make_axis(x_data, chart.x_scale, 0.04);
  Axis y = make_axis(y_data, Scale::linear, 0.05);
  // The legend: every series when there are several, and the reference line.
  const std::string reference_text =
      chart.reference ? fmt::format("{} {}", chart.reference_label, value_text(*chart.reference))
                      : "";
  const std::size_t legend_series = chart.series.size() > 1 ? chart.series.size() : 0;
  const std::size_t legend_rows = legend_series + (chart.reference ? 1 : 0);
  Measure measure;
  double tick_width = 0, legend_width = measure.width(reference_text, kTextSize);
  for (const std::string& label : y.labels)
    tick_width = std::max(tick_width, measure.width(label, kTextSize));
  for (const Series& s : chart.series)
    legend_width = std::max(legend_width, measure.width(s.label, kTextSize));
  const double legend_height = kLegendRow * static_cast<double>(legend_rows);
  const Frame frame{30 + tick_width + 12, 44, kPlotWidth, std::max(kPlotHeight, legend_height)};
  const double width = frame.right() + (legend_rows > 0 ? legend_width + 70 : 24);
  const double height = frame.bottom() + 52 + 16.0 * static_cast<double>(notes.size());
  x.pixel_lo = frame.left;
  x.pixel_hi = frame.right();
  y.pixel_lo = frame.bottom();
  y.pixel_hi = frame.top;

  auto draw = [&](cairo_t* cr) {
    draw_title(cr, chart.title, frame.left + frame.width / 2);
    draw_axes(cr, frame, x, &y);
    set_font(cr, kTextSize);
    draw_text(cr, chart.x_label, frame.left + frame.width / 2, frame.bottom() + 36, Align::centre);
    draw_rotated_text(cr, chart.y_label, 12, frame.top + frame.height / 2);
    if (chart.reference)
      draw_reference(cr, frame, y.position(*chart.reference), Direction::horizontal);
    cairo_save(cr);
    clip_to(cr, frame);
    for (std::size_t k = 0; k < chart.series.size(); ++k) {
      const double shift =
          chart.dodge ? kDodge * (static_cast<double>(k) - (chart.series.size() - 1) / 2.0) : 0.0;
      draw_series(cr, chart.series[k], x, y, kPalette[k % std::size(kPalette)], k, shift);
    }
    cairo_restore(cr);
    const double left = frame.right() + 16;
    auto legend_row = [&](std::size_t k) {
      return frame.top + 10 + kLegendRow * static_cast<double>(k);
    };
    auto legend_label = [&](const std::string& label, double row) {
      set_colour(cr, kBlack);
      set_font(cr, kTextSize);
      draw_text(cr, label, left + 38, row);
    };
    for (std::size_t k = 0; k < legend_series; ++k) {
      const Colour colour = kPalette[k % std::size(kPalette)];
      const double row = legend_row(k);
      if (!chart.series[k].low.empty()) {
        set_colour(cr, colour, 0.15);
        cairo_rectangle(cr, left, row - 6, 30, 12);
        cairo_fill(cr);
      }
      cairo_set_dash(cr, kSeriesDashes, k >= std::size(kPalette) ? 2 : 0, 0);
      set_colour(cr, colour);
      cairo_set_line_width(cr, 2);
      cairo_move_to(cr, left, row);
      cairo_line_to(cr, left + 30, row);
      cairo_stroke(cr);
      cairo_set_dash(cr, nullptr, 0, 0);
      draw_dot(cr, left + 15, row, 3.5, colour);
      legend_label(chart.series[k].label, row);
    }
    if (chart.reference) {
      const double row = legend_row(legend_series);
      draw_reference(cr, {left, row, 30, 0}, row, Direction::horizontal);
      legend_label(reference_text, row);
    }
    draw_notes(cr, notes, frame.left, frame.bottom() + 58);
  };
  return render(width, height, draw, stem);
}

// ---- dot-and-interval charts -----------------------------------------------------------------

std::vector<fs::path> write_chart(const DotIntervalChart& chart, const fs::path& stem) {
  constexpr double kRowHeight = 28, kDotPlotWidth = 480;
  std::vector<double> values;
  for (const IntervalRow& row : chart.rows) values.push_back(row.value);
  if (std::none_of(values.begin(), values.end(), [](double v) { return std::isfinite(v); })) {
    throw Error("chart '" + chart.title + "': nothing to draw (no finite value)");
  }
  const Range fences = outlier_fences(values);
  Range data;
  for (const IntervalRow& row : chart.rows) {
    if (!std::isfinite(row.value) || !fences.contains(row.value)) continue;
    data.add(row.value);
    data.add(std::max(row.low, fences.lo));
    data.add(std::min(row.high, fences.hi));
  }
  if (chart.reference) data.add(*chart.reference);
  Axis axis = make_axis(data, Scale::linear, 0.05);

  auto row_text = [](const IntervalRow& row) {
    if (!std::isfinite(row.value)) return std::string("no finite value");
    if (!std::isfinite(row.low) || !std::isfinite(row.high)) return value_text(row.value);
    return fmt::format("{}  [{}, {}]", value_text(row.value), value_text(row.low),
                       value_text(row.high));
  };
  Measure measure;
  double label_width = 0, text_width_right = 0;
  for (const IntervalRow& row : chart.rows) {
    label_width = std::max(label_width, measure.width(row.label, kTextSize, row.highlighted));
    text_width_right = std::max(text_width_right, measure.width(row_text(row), kTextSize));
  }
  const double top = chart.reference ? 62 : 44;
  const Frame frame{label_width + 24, top, kDotPlotWidth,
                    kRowHeight * static_cast<double>(chart.rows.size()) + 8};
  const std::vector<std::string> notes =
      chart.note.empty() ? std::vector<std::string>{} : std::vector<std::string>{chart.note};
  const double width = frame.right() + text_width_right + 30;
  const double height = frame.bottom() + 52 + 16.0 * static_cast<double>(notes.size());
  axis.pixel_lo = frame.left;
  axis.pixel_hi = frame.right();
  auto row_centre = [&](std::size_t i) {
    return frame.top + 4 + kRowHeight * (static_cast<double>(i) + 0.5);
  };

  auto draw = [&](cairo_t* cr) {
    for (std::size_t i = 0; i < chart.rows.size(); ++i) {
      if (!chart.rows[i].highlighted) continue;
      set_colour(cr, kHighlightRow);
      cairo_rectangle(cr, 4, row_centre(i) - kRowHeight / 2, width - 8, kRowHeight);
      cairo_fill(cr);
    }
    draw_title(cr, chart.title, frame.left + frame.width / 2);
    draw_axes(cr, frame, axis, nullptr);
    set_font(cr, kTextSize);
    draw_text(cr, chart.value_label, frame.left + frame.width / 2, frame.bottom() + 36,
              Align::centre);
    if (chart.reference) {
      const double px = axis.position(*chart.reference);
      draw_reference(cr, frame, px, Direction::vertical);
      set_font(cr, kNoteSize);
      draw_text(cr, fmt::format("{} {}", chart.reference_label, value_text(*chart.reference)), px,
                frame.top - 10, Align::centre);
    }
    for (std::size_t i = 0; i < chart.rows.size(); ++i) {
      const IntervalRow& row = chart.rows[i];
      const double cy = row_centre(i);
      const Colour colour = row.highlighted ? kHighlight : kPalette[0];
      set_colour(cr, kBlack);
      set_font(cr, kTextSize, row.highlighted);
      draw_text(cr, row.label, frame.left - 10, cy, Align::right);
      set_font(cr, kTextSize);
      set_colour(cr, kMuted);
      draw_text(cr, row_text(row), frame.right() + 12, cy);
      if (!std::isfinite(row.value)) continue;
      if (!fences.contains(row.value) || !(row.value >= axis.lo && row.value <= axis.hi)) {
        const bool below = row.value < axis.lo;
        draw_off_axis_arrow(cr, below ? frame.left + 2 : frame.right() - 2, cy, below ? -1 : 1,
                            colour);
        continue;
      }
      if (std::isfinite(row.low) && std::isfinite(row.high)) {
        const double lo = std::max(row.low, axis.lo), hi = std::min(row.high, axis.hi);
        draw_bar(cr, axis.position(lo), cy, axis.position(hi), cy, Direction::horizontal, colour);
        if (row.low < axis.lo) draw_off_axis_arrow(cr, frame.left + 2, cy, -1, colour);
        if (row.high > axis.hi) draw_off_axis_arrow(cr, frame.right() - 2, cy, 1, colour);
      }
      draw_dot(cr, axis.position(row.value), cy, row.highlighted ? 5.5 : 4.5, colour);
    }
    draw_notes(cr, notes, frame.left, frame.bottom() + 58);
  };
  return render(width, height, draw, stem);
}

// ---- image sheets ----------------------------------------------------------------------------

namespace {

// Small images are enlarged until their longer side reaches this many pixels.
constexpr int kSheetMinImageSide = 128;
constexpr double kSheetText = 12, kSheetLine = 16, kSheetGap = 10;

// `text` cut to `width` with an ellipsis at the end.
std::string fitted(Measure& measure, const std::string& text, double width) {
  if (measure.width(text, kSheetText) <= width) return text;
  std::string cut = text;
  while (!cut.empty() && measure.width(cut + "…", kSheetText) > width) {
    // One UTF-8 code point off: its continuation bytes, then its first byte.
    while (!cut.empty() && (static_cast<unsigned char>(cut.back()) & 0xC0) == 0x80) cut.pop_back();
    if (!cut.empty()) cut.pop_back();
  }
  return cut + "…";
}

}  // namespace

std::vector<std::vector<SheetPlace>> write_image_sheet(const ImageSheet& sheet,
                                                       const fs::path& file) {
  const std::size_t rows = sheet.cells.size();
  const std::size_t columns = sheet.column_labels.size();
  if (rows == 0 || columns == 0) throw Error("image sheet '" + sheet.title + "': nothing to draw");
  std::vector<std::vector<Surface>> images(rows);
  int image_width = 0, image_height = 0;
  std::size_t caption_lines = 0, label_lines = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    for (const SheetCell& cell : sheet.cells[r]) {
      caption_lines = std::max(caption_lines, cell.caption.size());
      if (cell.png.empty()) {
        images[r].emplace_back();
        continue;
      }
      Surface image(cairo_image_surface_create_from_png(cell.png.c_str()));
      if (cairo_surface_status(image.get()) != CAIRO_STATUS_SUCCESS) {
        throw Error(cell.png.string() + ": cannot read as PNG (" +
                    cairo_status_to_string(cairo_surface_status(image.get())) + ")");
      }
      image_width = std::max(image_width, cairo_image_surface_get_width(image.get()));
      image_height = std::max(image_height, cairo_image_surface_get_height(image.get()));
      images[r].push_back(std::move(image));
    }
  }
  for (const auto& lines : sheet.column_labels) label_lines = std::max(label_lines, lines.size());
  const int longer = std::max(image_width, image_height);
  const int scale = longer > 0 ? std::max(1, (kSheetMinImageSide + longer - 1) / longer) : 1;

  Measure measure;
  double row_label_width = 0, column_width = image_width * scale;
  for (const std::string& label : sheet.row_labels) {
    row_label_width = std::max(row_label_width, measure.width(label, kSheetText, true));
  }
  for (const auto& row : sheet.cells) {
    for (const SheetCell& cell : row) {
      for (const std::string& line : cell.caption) {
        column_width = std::max(column_width, measure.width(line, kSheetText));
      }
    }
  }
  // Whole pixels, so that every image starts on a pixel and is copied exactly.
  const int column_step = static_cast<int>(std::ceil(column_width + kSheetGap));
  const int left = static_cast<int>(std::ceil(row_label_width + 2 * kSheetGap));
  const int top = static_cast<int>(std::ceil(40 + kSheetLine * static_cast<double>(label_lines)));
  const int row_step = static_cast<int>(
      std::ceil(image_height * scale + kSheetLine * static_cast<double>(caption_lines) + 2 * kSheetGap));
  const int width = left + column_step * static_cast<int>(columns) + static_cast<int>(kSheetGap);
  const int height = top + row_step * static_cast<int>(rows);

  std::vector<std::vector<SheetPlace>> places(rows);
  Surface surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, width, height));
  check(cairo_surface_status(surface.get()), "sheet surface");
  Context context(cairo_create(surface.get()));
  cairo_t* cr = context.get();
  set_colour(cr, kWhite);
  cairo_paint(cr);
  set_colour(cr, kBlack);
  set_font(cr, kTitleSize, true);
  draw_text(cr, sheet.title, kSheetGap, 18);
  set_font(cr, kSheetText);
  for (std::size_t c = 0; c < columns; ++c) {
    const double x = left + column_step * static_cast<double>(c);
    const auto& lines = sheet.column_labels[c];
    for (std::size_t l = 0; l < lines.size(); ++l) {
      draw_text(cr, fitted(measure, lines[l], column_step - kSheetGap), x,
                40 + kSheetLine * (static_cast<double>(l) + 0.5) - 6);
    }
  }
  for (std::size_t r = 0; r < rows; ++r) {
    const int y = top + row_step * static_cast<int>(r);
    set_colour(cr, kBlack);
    set_font(cr, kSheetText, true);
    if (r < sheet.row_labels.size()) {
      draw_text(cr, sheet.row_labels[r], kSheetGap, y + image_height * scale / 2.0);
    }
    set_font(cr, kSheetText);
    for (std::size_t c = 0; c < columns && c < sheet.cells[r].size(); ++c) {
      const int x = left + column_step * static_cast<int>(c);
      SheetPlace place{x, y, 0, 0, scale};
      if (cairo_surface_t* image = images[r][c].get()) {
        place.width = cairo_image_surface_get_width(image) * scale;
        place.height = cairo_image_surface_get_height(image) * scale;
        cairo_save(cr);
        cairo_translate(cr, x, y);
        cairo_scale(cr, scale, scale);
        cairo_set_source_surface(cr, image, 0, 0);
        cairo_pattern_set_filter(cairo_get_source(cr), CAIRO_FILTER_NEAREST);
        cairo_rectangle(cr, 0, 0, cairo_image_surface_get_width(image),
                        cairo_image_surface_get_height(image));
        cairo_fill(cr);
        cairo_restore(cr);
      }
      set_colour(cr, kMuted);
      const auto& caption = sheet.cells[r][c].caption;
      for (std::size_t l = 0; l < caption.size(); ++l) {
        draw_text(cr, caption[l], x, y + image_height * scale + kSheetLine * (static_cast<double>(l) + 0.5) + 2);
      }
      places[r].push_back(place);
    }
  }
  check(cairo_status(cr), "drawing the sheet");
  std::string png;
  check(cairo_surface_write_to_png_stream(surface.get(), append_bytes, &png), "PNG encoding");
  write_file_atomic(file, png);
  return places;
}

}  // namespace dedpo::chart
