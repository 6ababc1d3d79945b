// Grid reports: results.csv, summary.md (mean ± 95% interval over seeds per method) and one SVG
// plot per metric over the labelled fraction.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "dedpo/files.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "dedpo/records.hpp"
#include "grid/grid_index.hpp"
#include "run/inputs.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

double student_t975(std::size_t df) {
  static const double table[] = {0,      12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365,
                                 2.306,  2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
                                 2.120,  2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069,
                                 2.064,  2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df == 0) return NAN;
  if (df <= 30) return table[df];
  if (df <= 40) return 2.021;
  if (df <= 60) return 2.000;
  if (df <= 120) return 1.980;
  return 1.960;
}

struct Row {
  std::string run, loss, annotator;
  double fraction = NAN;
  std::int64_t seed = 0;
  std::map<std::string, double> metrics;
  std::string method;  // the run without its seed
  std::string line;    // the run without seed and labelled fraction
};

struct Stat {
  double mean = NAN, half_width = NAN;
  std::size_t n = 0;
};

Stat stat(const std::vector<double>& values) {
  Stat s;
  std::vector<double> finite;
  for (double v : values) {
    if (std::isfinite(v)) finite.push_back(v);
  }
  s.n = finite.size();
  if (s.n == 0) return s;
  double sum = 0;
  for (double v : finite) sum += v;
  s.mean = sum / static_cast<double>(s.n);
  if (s.n >= 2) {
    double ss = 0;
    for (double v : finite) ss += (v - s.mean) * (v - s.mean);
    double sd = std::sqrt(ss / static_cast<double>(s.n - 1));
    s.half_width = student_t975(s.n - 1) * sd / std::sqrt(static_cast<double>(s.n));
  }
  return s;
}

std::string number(double value) {
  return std::isfinite(value) ? fmt::format("{:.6g}", value) : std::string();
}

// Ticks at 1, 2, 5 × 10^k covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target = 5) {
  double span = hi - lo;
  if (!(span > 0)) span = std::abs(lo) > 0 ? std::abs(lo) : 1.0;
  double raw = span / target;
  double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// One plot line per method line: mean ± half-width over seeds at each labelled fraction.
struct PlotPoint {
  double x, y, h;
};
struct PlotData {
  std::map<std::string, std::vector<PlotPoint>> lines;
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
};

PlotData plot_data(const std::string& metric, const std::vector<Row>& rows) {
  // line -> fraction -> values
  std::map<std::string, std::map<double, std::vector<double>>> series;
  for (const Row& row : rows) {
    auto it = row.metrics.find(metric);
    if (it == row.metrics.end() || !std::isfinite(row.fraction)) continue;
    series[row.line][row.fraction].push_back(it->second);
  }
  PlotData data;
  for (const auto& [line, by_fraction] : series) {
    for (const auto& [fraction, values] : by_fraction) {
      Stat s = stat(values);
      if (s.n == 0) continue;
      double h = std::isfinite(s.half_width) ? s.half_width : 0.0;
      data.lines[line].push_back({fraction, s.mean, h});
      data.x_lo = std::min(data.x_lo, fraction);
      data.x_hi = std::max(data.x_hi, fraction);
      data.y_lo = std::min(data.y_lo, s.mean - h);
      data.y_hi = std::max(data.y_hi, s.mean + h);
    }
  }
  return data;
}

// Widens the ranges to hold a single value, a margin and whole ticks; returns the ticks.
std::pair<std::vector<double>, std::vector<double>> fit_axes(PlotData& d) {
  if (d.x_hi - d.x_lo < 1e-12) { d.x_lo -= 0.05; d.x_hi += 0.05; }
  if (d.y_hi - d.y_lo < 1e-12) {
    double pad = std::max(1e-3, std::abs(d.y_lo) * 0.05);
    d.y_lo -= pad;
    d.y_hi += pad;
  }
  double y_pad = (d.y_hi - d.y_lo) * 0.05;
  d.y_lo -= y_pad;
  d.y_hi += y_pad;
  std::vector<double> x_ticks = nice_ticks(d.x_lo, d.x_hi), y_ticks = nice_ticks(d.y_lo, d.y_hi);
  if (!x_ticks.empty()) { d.x_lo = std::min(d.x_lo, x_ticks.front()); d.x_hi = std::max(d.x_hi, x_ticks.back()); }
  if (!y_ticks.empty()) { d.y_lo = std::min(d.y_lo, y_ticks.front()); d.y_hi = std::max(d.y_hi, y_ticks.back()); }
  return {x_ticks, y_ticks};
}

std::string svg_plot(const std::string& metric, const std::vector<Row>& rows) {
  PlotData d = plot_data(metric, rows);
  if (d.lines.empty()) return {};
  const auto [x_ticks, y_ticks] = fit_axes(d);
  const double width = 760, height = 440, left = 70, right = 230, top = 40, bottom = 60;
  const double pw = width - left - right, ph = height - top - bottom;
  auto sx = [&](double x) { return left + (x - d.x_lo) / (d.x_hi - d.x_lo) * pw; };
  auto sy = [&](double y) { return top + (1.0 - (y - d.y_lo) / (d.y_hi - d.y_lo)) * ph; };
  static const char* colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{3} vs labelled "
      "fraction</text>\n",
      width, height, left + pw / 2, xml_escape(metric));
  for (double t : x_ticks) {
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"#e5e5e5\"/>\n"
        "<line x1=\"{0:.1f}\" y1=\"{2:.1f}\" x2=\"{0:.1f}\" y2=\"{3:.1f}\" stroke=\"black\"/>\n"
        "<text x=\"{0:.1f}\" y=\"{4:.1f}\" text-anchor=\"middle\">{5:g}</text>\n",
        sx(t), top, top + ph, top + ph + 5, top + ph + 18, t);
  }
  for (double t : y_ticks) {
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"#e5e5e5\"/>\n"
        "<line x1=\"{3:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{1:.1f}\" stroke=\"black\"/>\n"
        "<text x=\"{4:.1f}\" y=\"{5:.1f}\" text-anchor=\"end\">{6:g}</text>\n",
        left, sy(t), left + pw, left - 5, left - 8, sy(t) + 4, t);
  }
  svg += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n"
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">labelled fraction</text>\n"
      "<text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
      left, top, pw, ph, left + pw / 2, height - 18, top + ph / 2, xml_escape(metric));
  std::size_t k = 0;
  for (const auto& [line, pts] : d.lines) {
    const char* colour = colours[k % std::size(colours)];
    std::string path;
    for (const PlotPoint& p : pts) path += fmt::format("{:.1f},{:.1f} ", sx(p.x), sy(p.y));
    svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       path, colour);
    for (const PlotPoint& p : pts) {
      if (p.h > 0) {
        svg += fmt::format(
            "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" stroke=\"{3}\"/>\n",
            sx(p.x), sy(p.y - p.h), sy(p.y + p.h), colour);
      }
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>\n", sx(p.x),
                         sy(p.y), colour);
    }
    double ly = top + 10 + 20.0 * static_cast<double>(k);
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" stroke=\"{3}\" "
        "stroke-width=\"2\"/>\n<text x=\"{4:.1f}\" y=\"{5:.1f}\">{6}</text>\n",
        left + pw + 15, ly, left + pw + 40, colour, left + pw + 46, ly + 4, xml_escape(line));
    ++k;
  }
  svg += "</svg>\n";
  return svg;
}

std::string table_text(const std::vector<std::vector<std::string>>& cells) {
  std::vector<std::size_t> widths;
  auto length = [](const std::string& s) {  // UTF-8 code points (± is two bytes)
    std::size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  };
  for (const auto& row : cells) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], length(row[i]));
  }
  std::string out;
  for (std::size_t r = 0; r < cells.size(); ++r) {
    out += "|";
    for (std::size_t i = 0; i < widths.size(); ++i) {
      std::string cell = i < cells[r].size() ? cells[r][i] : "";
      out += " " + cell + std::string(widths[i] - length(cell), ' ') + " |";
    }
    out += "\n";
    if (r == 0) {
      out += "|";
      for (std::size_t w : widths) out += std::string(w + 2, '-') + "|";
      out += "\n";
    }
  }
  return out;
}

// What the run folders of a grid hold.
struct GridRuns {
  std::vector<Row> rows;                   // finished runs, by folder name
  std::vector<std::string> metric_names;   // in order of first appearance
  std::map<std::string, std::string> titles;  // metric -> summary column title, when declared
  std::size_t unfinished = 0;
  std::vector<std::string> stale;  // finished, but from other inputs than the grid's now: left out
};

// One finished run: its config.toml and results.json. Runs missing from the grid's index
// (gathered by hand) are each a method and a line of their own.
Row read_row(const fs::path& dir, const GridIndex& index, GridRuns& runs) {
  Row row;
  row.run = dir.filename().string();
  toml::table config = toml::parse_file((dir / kConfigFile).string());
  row.loss = config["loss"]["plugin"].value_or(std::string());
  row.annotator = config["annotator"]["plugin"].value_or(std::string());
  row.fraction = config["train"]["labelled_fraction"].value_or(NAN);
  row.seed = config["run"]["seed"].value_or(std::int64_t{0});
  json results = json::parse(read_file(dir / kResultsFile));
  // A configured annotator that the loss did not use (dpo, sft) is not part of the method.
  if (results.contains("annotator")) row.annotator = results["annotator"].get<std::string>();
  for (auto& [name, value] : results.at("metrics").items()) {
    row.metrics[name] = value.is_number() ? value.get<double>() : NAN;
    if (std::find(runs.metric_names.begin(), runs.metric_names.end(), name) ==
        runs.metric_names.end()) {
      runs.metric_names.push_back(name);
    }
  }
  const json titles = results.value("titles", json::object());
  for (const auto& [name, title] : titles.items()) runs.titles[name] = title.get<std::string>();
  const auto labels = index.find(row.run);
  row.method = labels != index.end() ? labels->second.method : row.run;
  row.line = labels != index.end() ? labels->second.line : row.run;
  return row;
}

GridRuns read_runs(const fs::path& grid_dir) {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(grid_dir)) {
    if (entry.is_directory() && !entry.path().filename().string().starts_with(".")) {
      dirs.push_back(entry.path());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  const GridIndex index = read_grid_index(grid_dir);
  GridRuns runs;
  std::error_code error;
  for (const fs::path& dir : dirs) {
    if (!fs::exists(dir / kConfigFile, error) && !fs::exists(dir / kResultsFile, error)) continue;
    if (!fs::exists(dir / kResultsFile, error)) {
      ++runs.unfinished;
      continue;
    }
    const auto expected = index.find(dir.filename().string());
    if (expected != index.end() && !expected->second.inputs.empty() &&
        read_run_inputs_key(dir) != expected->second.inputs) {
      runs.stale.push_back(dir.filename().string());
      continue;
    }
    try {
      runs.rows.push_back(read_row(dir, index, runs));
    } catch (const std::exception& e) {
      std::cerr << fmt::format("report: skipping {}: {}\n", dir.string(), e.what());
    }
  }
  return runs;
}

// results.csv: one row per run, the core's columns then one per metric.
void write_results_csv(const fs::path& file, const GridRuns& runs) {
  std::string csv = "run,loss,annotator,labelled_fraction,seed";
  for (const auto& name : runs.metric_names) csv += "," + csv_field(name);
  csv += "\n";
  for (const Row& row : runs.rows) {
    csv += fmt::format("{},{},{},{},{}", csv_field(row.run), csv_field(row.loss),
                       csv_field(row.annotator), number(row.fraction), row.seed);
    for (const auto& name : runs.metric_names) {
      auto it = row.metrics.find(name);
      csv += "," + (it == row.metrics.end() ? std::string() : number(it->second));
    }
    csv += "\n";
  }
  write_file_atomic(file, csv);
}

std::string mean_and_interval(const std::vector<const Row*>& members, const std::string& metric) {
  std::vector<double> values;
  for (const Row* row : members) {
    auto it = row->metrics.find(metric);
    if (it != row->metrics.end()) values.push_back(it->second);
  }
  Stat s = stat(values);
  std::string cell = s.n == 0                        ? std::string("-")
                     : std::isfinite(s.half_width) ? fmt::format("{:.4g} ± {:.2g}", s.mean, s.half_width)
                                                   : fmt::format("{:.4g}", s.mean);
  // A diverged run (non-finite figure) is left out of the mean, and the cell says so.
  const std::size_t diverged = values.size() - s.n;
  if (diverged > 0) {
    cell += fmt::format(" (n = {} of {}, {} diverged)", s.n, values.size(), diverged);
  }
  return cell;
}

// summary.md's table: one row per method, mean ± 95% CI over its seeds.
std::vector<std::vector<std::string>> summary_cells(const GridRuns& runs) {
  std::vector<std::string> methods;
  for (const Row& row : runs.rows) {
    if (std::find(methods.begin(), methods.end(), row.method) == methods.end()) {
      methods.push_back(row.method);
    }
  }
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header = {"method", "loss", "annotator", "fraction", "n"};
  for (const auto& name : runs.metric_names) {
    const auto title = runs.titles.find(name);
    header.push_back(title != runs.titles.end() ? title->second : name);
  }
  cells.push_back(header);
  for (const std::string& method : methods) {
    std::vector<const Row*> members;
    for (const Row& row : runs.rows) {
      if (row.method == method) members.push_back(&row);
    }
    std::vector<std::string> line = {method, members[0]->loss,
                                     members[0]->annotator.empty() ? "-" : members[0]->annotator,
                                     number(members[0]->fraction), std::to_string(members.size())};
    for (const auto& name : runs.metric_names) line.push_back(mean_and_interval(members, name));
    cells.push_back(line);
  }
  return cells;
}

}  // namespace

std::string write_report(const fs::path& grid_dir) {
  std::error_code error;
  if (!fs::is_directory(grid_dir, error)) throw Error(grid_dir.string() + ": not a folder");
  const GridRuns runs = read_runs(grid_dir);
  write_results_csv(grid_dir / "results.csv", runs);
  std::string summary = fmt::format("# Grid {}\n\n", grid_dir.filename().string());
  summary += fmt::format("{} finished runs", runs.rows.size());
  if (runs.unfinished > 0) summary += fmt::format(", {} unfinished", runs.unfinished);
  summary += "; mean ± 95% confidence interval (Student t) over seeds, n = seeds; runs whose "
             "figure is not finite (diverged) are counted in their cell, not averaged.\n\n";
  summary += table_text(summary_cells(runs));
  if (!runs.stale.empty()) {
    summary += fmt::format(
        "\nLeft out, stale (their config, [init] weights or plugins differ from the grid's now; "
        "remove them to run them again): {}\n",
        fmt::join(runs.stale, ", "));
  }

  // Plots: one per metric, one line per method without its labelled fraction.
  std::vector<std::string> plots;
  for (const auto& name : runs.metric_names) {
    std::string svg = svg_plot(name, runs.rows);
    if (svg.empty()) continue;
    std::string file = file_name_safe(name) + ".svg";
    write_file_atomic(grid_dir / file, svg);
    plots.push_back(file);
  }
  if (!plots.empty()) {
    summary += "\nPlots:";
    for (const auto& p : plots) summary += " " + p;
    summary += "\n";
  }
  write_file_atomic(grid_dir / "summary.md", summary);
  return summary;
}

}  // namespace dedpo
