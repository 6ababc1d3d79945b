// Grid reports: results.csv, summary.md (mean ± 95% interval over seeds per method, in the grid
// file's order; paired comparisons with the [report] baseline) and one chart per metric, as PNG
// and SVG: dot-and-interval rows for a grid at one labelled fraction per method, lines with
// interval bands over the labelled fraction for a label-budget sweep.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <optional>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "dedpo/files.hpp"
#include "dedpo/host/chart.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/statistics.hpp"
#include "dedpo/host/trainer.hpp"
#include "dedpo/records.hpp"
#include "grid/grid_index.hpp"
#include "run/inputs.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A metric's reference figure is named <metric>_ref (toy_reward, the scorers): drawn as the
// reference line of the metric's chart.
constexpr const char* kReferenceSuffix = "_ref";

struct Row {
  std::string run, loss, annotator;
  double fraction = NAN;
  std::int64_t seed = 0;
  std::map<std::string, double> metrics;
  std::string method;  // the run without its seed
  std::string line;    // the run without seed and labelled fraction
};

std::string number(double value) {
  return std::isfinite(value) ? fmt::format("{:.6g}", value) : std::string();
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
  std::vector<Row> rows;                      // finished runs, in the grid file's order
  std::vector<std::string> metric_names;      // in order of first appearance
  std::map<std::string, std::string> titles;  // metric -> summary column title, when declared
  std::size_t unfinished = 0;
  std::vector<std::string> stale;  // finished, but from other inputs than the grid's now: left out

  std::string title(const std::string& metric) const {
    const auto it = titles.find(metric);
    return it != titles.end() ? it->second : metric;
  }
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
  const auto labels = index.runs.find(row.run);
  row.method = labels != index.runs.end() ? labels->second.method : row.run;
  row.line = labels != index.runs.end() ? labels->second.line : row.run;
  return row;
}

GridRuns read_runs(const fs::path& grid_dir, const GridIndex& index) {
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(grid_dir)) {
    if (entry.is_directory() && !entry.path().filename().string().starts_with(".")) {
      dirs.push_back(entry.path());
    }
  }
  // The grid file's order; folders it does not list (gathered by hand) after, by name.
  std::map<std::string, std::size_t> position;
  for (std::size_t i = 0; i < index.order.size(); ++i) position.emplace(index.order[i], i);
  auto rank = [&](const fs::path& dir) {
    const auto it = position.find(dir.filename().string());
    return std::pair(it != position.end() ? it->second : index.order.size(),
                     dir.filename().string());
  };
  std::sort(dirs.begin(), dirs.end(),
            [&](const fs::path& a, const fs::path& b) { return rank(a) < rank(b); });
  GridRuns runs;
  std::error_code error;
  for (const fs::path& dir : dirs) {
    if (!fs::exists(dir / kConfigFile, error) && !fs::exists(dir / kResultsFile, error)) continue;
    if (!fs::exists(dir / kResultsFile, error)) {
      ++runs.unfinished;
      continue;
    }
    const auto expected = index.runs.find(dir.filename().string());
    if (expected != index.runs.end() && !expected->second.inputs.empty() &&
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

// A summary row: the finished runs of one method (its seeds).
struct Method {
  std::string name, line;
  std::vector<const Row*> runs;

  const Row& first() const { return *runs.front(); }
  // The metric of each run that reports it (non-finite when it diverged).
  ValuesBySeed by_seed(const std::string& metric) const {
    ValuesBySeed values;
    for (const Row* row : runs) {
      const auto it = row->metrics.find(metric);
      if (it != row->metrics.end()) values[row->seed] = it->second;
    }
    return values;
  }
  MeanInterval statistic(const std::string& metric) const {
    std::vector<double> values;
    for (const auto& [seed, value] : by_seed(metric)) values.push_back(value);
    return mean_interval(values);
  }
};

// Methods in order of their first run, which is the grid file's order.
std::vector<Method> group_methods(const GridRuns& runs) {
  std::vector<Method> methods;
  for (const Row& row : runs.rows) {
    auto it = std::find_if(methods.begin(), methods.end(),
                           [&](const Method& m) { return m.name == row.method; });
    if (it == methods.end()) {
      methods.push_back({row.method, row.line, {}});
      it = methods.end() - 1;
    }
    it->runs.push_back(&row);
  }
  return methods;
}

// The summary's columns: the primary metric first, the others in the runs' order; figures with
// one value in every run (the reference model's) are shown once below the table instead.
struct Columns {
  std::string primary;
  std::vector<std::string> table;
  std::vector<std::pair<std::string, double>> constant;
};

Columns plan_columns(const GridRuns& runs, std::size_t method_count, const ReportSettings& report,
                     const fs::path& grid_dir) {
  Columns columns;
  if (!report.primary.empty() && !runs.metric_names.empty() &&
      std::find(runs.metric_names.begin(), runs.metric_names.end(), report.primary) ==
          runs.metric_names.end()) {
    throw Error(fmt::format(
        "{}: [report] primary = \"{}\": no figure of the grid's runs has that "
        "name (known: {})",
        (grid_dir / kGridIndexFile).string(), report.primary, fmt::join(runs.metric_names, ", ")));
  }
  auto constant_value = [&](const std::string& metric) -> std::optional<double> {
    if (method_count < 2) return std::nullopt;  // one row: every column would be "constant"
    const double first =
        runs.rows.front().metrics.contains(metric) ? runs.rows.front().metrics.at(metric) : NAN;
    for (const Row& row : runs.rows) {
      const auto it = row.metrics.find(metric);
      if (it == row.metrics.end() || !std::isfinite(it->second) ||
          std::abs(it->second - first) > 1e-12 * std::max(1.0, std::abs(first))) {
        return std::nullopt;
      }
    }
    return first;
  };
  for (const std::string& metric : runs.metric_names) {
    if (metric == report.primary) continue;
    if (const auto value = constant_value(metric)) {
      columns.constant.emplace_back(metric, *value);
    } else {
      columns.table.push_back(metric);
    }
  }
  columns.primary = report.primary;
  if (columns.primary.empty() && !columns.table.empty()) columns.primary = columns.table.front();
  if (!report.primary.empty()) columns.table.insert(columns.table.begin(), report.primary);
  return columns;
}

std::string mean_and_interval(const Method& method, const std::string& metric) {
  const MeanInterval s = method.statistic(metric);
  std::string cell = s.n == 0 ? std::string("-")
                     : std::isfinite(s.half_width)
                         ? fmt::format("{:.4g} ± {:.2g}", s.mean, s.half_width)
                         : fmt::format("{:.4g}", s.mean);
  // A diverged run (non-finite figure) is left out of the mean, and the cell says so.
  if (s.diverged > 0) {
    cell += fmt::format(" (n = {} of {}, {} diverged)", s.n, s.n + s.diverged, s.diverged);
  }
  return cell;
}

// summary.md's table: one row per method, mean ± 95% CI over its seeds.
std::string summary_table(const GridRuns& runs, const std::vector<Method>& methods,
                          const Columns& columns) {
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header = {"method", "loss", "annotator", "fraction", "n"};
  for (const auto& name : columns.table) header.push_back(runs.title(name));
  cells.push_back(header);
  for (const Method& method : methods) {
    std::vector<std::string> line = {
        method.name, method.first().loss,
        method.first().annotator.empty() ? "-" : method.first().annotator,
        number(method.first().fraction), std::to_string(method.runs.size())};
    for (const auto& name : columns.table) line.push_back(mean_and_interval(method, name));
    cells.push_back(line);
  }
  std::string text = table_text(cells);
  if (!columns.constant.empty()) {
    std::vector<std::string> values;
    for (const auto& [name, value] : columns.constant) {
      values.push_back(fmt::format("{} = {}", runs.title(name), number(value)));
    }
    text += fmt::format(
        "\nThe same in every run (such as the reference model's figures), so "
        "not in the table: {}.\n",
        fmt::join(values, ", "));
  }
  return text;
}

// Runs gathered by hand may have no labelled fraction (NaN): the same as another without one.
bool same_fraction(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

// Does the grid vary the labelled fraction within a method line (a label-budget sweep)?
bool is_sweep(const std::vector<Method>& methods) {
  std::map<std::string, double> fraction_of_line;
  for (const Method& method : methods) {
    const auto [it, added] = fraction_of_line.emplace(method.line, method.first().fraction);
    if (!added && !same_fraction(it->second, method.first().fraction)) return true;
  }
  return false;
}

// The baseline's method that `method` is compared with: the baseline line's only method, or, in
// a sweep, its method at the same labelled fraction. Null when there is none.
const Method* baseline_for(const Method& method, const std::vector<Method>& methods,
                           const std::string& baseline) {
  std::vector<const Method*> candidates;
  for (const Method& m : methods) {
    if (m.line == baseline) candidates.push_back(&m);
  }
  if (candidates.size() == 1) return candidates.front();
  for (const Method* m : candidates) {
    if (same_fraction(m->first().fraction, method.first().fraction)) return m;
  }
  return nullptr;
}

std::string significance_marker(double p) {
  if (!std::isfinite(p)) return "";
  return p < 0.001 ? "***" : p < 0.01 ? "**" : p < 0.05 ? "*" : "n.s.";
}

// summary.md's paired comparisons of every method with the baseline on the primary metric.
std::string paired_section(const GridRuns& runs, const std::vector<Method>& methods,
                           const std::string& baseline, const std::string& metric) {
  const std::string title = runs.title(metric);
  std::string text = fmt::format("\n## Paired comparison with {} ({})\n\n", baseline, title);
  const bool sweep = is_sweep(methods);
  std::vector<std::vector<std::string>> cells = {
      {"method", "difference", "95% interval", "p", "", "pairs"}};
  for (const Method& method : methods) {
    const Method* base = baseline_for(method, methods, baseline);
    if (base == &method) {
      cells.push_back({method.name, "(baseline)", "", "", "", ""});
      continue;
    }
    if (base == nullptr) {
      cells.push_back({method.name, "-", "", "", "", "no baseline run at this fraction"});
      continue;
    }
    const PairedComparison c = paired_comparison(method.by_seed(metric), base->by_seed(metric));
    std::string pairs = fmt::format("{} of {}", c.pairs, c.seeds);
    if (c.pairs < c.seeds) pairs += fmt::format(" ({} diverged or missing)", c.seeds - c.pairs);
    const std::string p = !std::isfinite(c.p_value) ? "-"
                          : c.p_value < 0.001       ? "< 0.001"
                                                    : fmt::format("{:.2g}", c.p_value);
    cells.push_back(
        {method.name,
         std::isfinite(c.mean_difference) ? fmt::format("{:+.3g}", c.mean_difference) : "-",
         std::isfinite(c.low) ? fmt::format("[{:+.3g}, {:+.3g}]", c.low, c.high) : "-", p,
         significance_marker(c.p_value), pairs});
  }
  text += table_text(cells);
  text += fmt::format(
      "\nDifference: the method's {0} minus {1}'s on the same seed{2}, averaged over the seeds "
      "where both have a finite value; seeds that diverged or are missing on either side are left "
      "out (pairs: used of all). 95% interval: Student t with pairs − 1 degrees of freedom. p: "
      "two-sided paired t-test of a zero mean difference. * p < 0.05, ** p < 0.01, *** p < 0.001, "
      "n.s. not significant; no correction for multiple comparisons.\n",
      title, baseline, sweep ? " and labelled fraction" : "");
  return text;
}

// One chart per metric of the table; returns the sentence that lists them.
std::string write_charts(const fs::path& grid_dir, const GridRuns& runs,
                         const std::vector<Method>& methods, const Columns& columns,
                         const std::string& baseline) {
  auto reference_of = [&](const std::string& metric) -> std::optional<double> {
    for (const auto& [name, value] : columns.constant) {
      if (name == metric + kReferenceSuffix) return value;
    }
    return std::nullopt;
  };
  const bool sweep = is_sweep(methods);
  std::vector<std::string> files;
  for (const std::string& metric : columns.table) {
    const std::string title = runs.title(metric);
    const fs::path stem = grid_dir / file_name_safe(metric);
    std::vector<MeanInterval> statistics;
    for (const Method& method : methods) statistics.push_back(method.statistic(metric));
    if (std::none_of(statistics.begin(), statistics.end(),
                     [](const MeanInterval& s) { return s.n > 0; })) {
      continue;
    }
    if (sweep) {
      chart::LineChart chart;
      chart.title = title + " against the labelled fraction";
      chart.x_label = "labelled fraction";
      chart.y_label = title;
      chart.clip_outliers = true;
      chart.dodge = true;
      chart.note = "Line: mean over seeds; band: its 95% interval (Student t).";
      if (const auto reference = reference_of(metric)) {
        chart.reference = *reference;
        chart.reference_label = "reference";
      }
      std::vector<std::string> lines;  // one series per method line, in the grid's order
      double lowest = INFINITY, highest = 0;
      for (std::size_t i = 0; i < methods.size(); ++i) {
        const Method& method = methods[i];
        auto line = std::find(lines.begin(), lines.end(), method.line);
        if (line == lines.end()) {
          lines.push_back(method.line);
          chart.series.push_back(
              {method.line == baseline ? method.line + " (baseline)" : method.line});
          line = lines.end() - 1;
        }
        chart::Series& series = chart.series[static_cast<std::size_t>(line - lines.begin())];
        const MeanInterval& s = statistics[i];
        series.x.push_back(method.first().fraction);
        series.y.push_back(s.mean);
        series.low.push_back(s.mean - s.half_width);
        series.high.push_back(s.mean + s.half_width);
        lowest = std::min(lowest, method.first().fraction);
        highest = std::max(highest, method.first().fraction);
      }
      // Fractions such as 0.05 ... 1 crowd at the left of a linear axis.
      chart.x_scale = highest >= 8 * lowest ? chart::Scale::log : chart::Scale::linear;
      chart::write_chart(chart, stem);
    } else {
      chart::DotIntervalChart chart;
      chart.title = title + " by method";
      chart.value_label = title;
      chart.note = "Dot: mean over seeds; bar: its 95% interval (Student t).";
      if (const auto reference = reference_of(metric)) {
        chart.reference = *reference;
        chart.reference_label = "reference";
      }
      for (std::size_t i = 0; i < methods.size(); ++i) {
        const MeanInterval& s = statistics[i];
        const bool is_baseline = methods[i].line == baseline;
        chart.rows.push_back({is_baseline ? methods[i].name + " (baseline)" : methods[i].name,
                              s.mean, s.mean - s.half_width, s.mean + s.half_width, is_baseline});
      }
      chart::write_chart(chart, stem);
    }
    files.push_back(stem.filename().string() + ".png");
  }
  if (files.empty()) return {};
  return fmt::format("\nPlots ({}; each also as .svg): {}\n",
                     sweep
                         ? "each metric against the labelled fraction, one line with its interval "
                           "band per method"
                         : "each metric as a dot-and-interval chart, one row per method in the "
                           "grid's order",
                     fmt::join(files, ", "));
}

// ---- sample sheets ----

// An image of a run's final evaluation, as its samples.jsonl line has it.
struct SavedSample {
  fs::path file;
  std::string set, prompt;
  std::int64_t prompt_index = 0, image_index = 0, draw = 0;
  std::vector<std::string> caption;  // "<figure> <score>" per score
  std::uint64_t seed = 0;

  auto column() const { return std::tuple(prompt_index, image_index, draw); }
};

struct RunSamples {
  std::vector<SavedSample> trained, reference;
};

RunSamples read_final_samples(const fs::path& run_dir) {
  RunSamples samples;
  const fs::path folder = run_dir / kSamplesDir / kFinalSamples;
  const fs::path index = folder / kSamplesIndexFile;
  std::error_code error;
  if (!fs::is_regular_file(index, error)) return samples;
  for (const Record& record : read_records(index, RecordFormat::jsonl)) {
    if (!record.error.empty()) {
      throw Error(fmt::format("{}:{}: {}", index.string(), record.line, record.error));
    }
    try {
      const json& fields = record.fields;
      SavedSample sample{folder / fields.at("file").get<std::string>(),
                         fields.at("set").get<std::string>(),
                         fields.at("prompt").get<std::string>(),
                         fields.at("prompt_index").get<std::int64_t>(),
                         fields.at("image_index").get<std::int64_t>(),
                         fields.at("draw").get<std::int64_t>(),
                         {},
                         fields.at("seed").get<std::uint64_t>()};
      for (const auto& [figure, score] : fields.at("scores").items()) {
        sample.caption.push_back(figure + " " + number(score.get<double>()));
      }
      (fields.at("model") == "reference" ? samples.reference : samples.trained).push_back(sample);
    } catch (const json::exception& e) {
      throw Error(fmt::format("{}:{}: {}", index.string(), record.line, e.what()));
    }
  }
  return samples;
}

// One sample sheet per prompt set (samples_<set>.png, and samples_<set>.json: where each image
// lies in it): the reference model's final samples, then each method's first run's, in the
// grid's order; columns are the prompts and images, the same noise in every row. Returns the
// sentence that lists them.
std::string write_sample_sheets(const fs::path& grid_dir, const std::vector<Method>& methods) {
  std::vector<std::string> row_labels;
  std::vector<std::vector<SavedSample>> rows;
  std::vector<SavedSample> reference;  // the same in every run: same model, same noise
  for (const Method& method : methods) {
    RunSamples samples = read_final_samples(grid_dir / method.first().run);
    if (samples.trained.empty()) continue;
    if (reference.empty()) reference = std::move(samples.reference);
    rows.push_back(std::move(samples.trained));
    row_labels.push_back(method.name + " (" + method.first().run + ")");
  }
  if (rows.empty()) return {};
  const bool has_reference = !reference.empty();
  if (has_reference) {
    rows.insert(rows.begin(), std::move(reference));
    row_labels.insert(row_labels.begin(), "reference");
  }

  std::vector<std::string> sets;
  for (const auto& row : rows) {
    for (const SavedSample& sample : row) {
      if (std::find(sets.begin(), sets.end(), sample.set) == sets.end()) sets.push_back(sample.set);
    }
  }
  std::vector<std::string> files;
  for (const std::string& set : sets) {
    // Columns: every (prompt, image, draw) of the set that some row has, in that order.
    std::map<std::tuple<std::int64_t, std::int64_t, std::int64_t>, const SavedSample*> columns;
    for (const auto& row : rows) {
      for (const SavedSample& sample : row) {
        if (sample.set == set) columns.emplace(sample.column(), &sample);
      }
    }
    chart::ImageSheet sheet;
    sheet.title = fmt::format("Samples: {} (final evaluation, [eval] seed {})", set,
                              columns.begin()->second->seed);
    sheet.row_labels = row_labels;
    json layout = {{"rows", row_labels}, {"columns", json::array()}, {"cells", json::array()}};
    for (const auto& [key, sample] : columns) {
      const auto [prompt_index, image_index, draw] = key;
      sheet.column_labels.push_back(
          {sample->prompt, draw > 0 ? fmt::format("image {} (draw {})", image_index, draw)
                                    : fmt::format("image {}", image_index)});
      layout["columns"].push_back({{"prompt", sample->prompt},
                                   {"prompt_index", prompt_index},
                                   {"image_index", image_index},
                                   {"draw", draw}});
    }
    for (const auto& row : rows) {
      std::vector<chart::SheetCell> cells;
      // Not a structured binding: clang 14 (the fuzz build's) cannot capture one in a lambda.
      for (const auto& column : columns) {
        const auto& key = column.first;
        const auto found = std::find_if(row.begin(), row.end(), [&](const SavedSample& s) {
          return s.set == set && s.column() == key;
        });
        cells.push_back(found == row.end() ? chart::SheetCell{{}, {"(no sample)"}}
                                                   : chart::SheetCell{found->file, found->caption});
      }
      sheet.cells.push_back(std::move(cells));
    }
    const std::string name = "samples_" + file_name_safe(set);
    const auto places = chart::write_image_sheet(sheet, grid_dir / (name + ".png"));
    for (std::size_t r = 0; r < places.size(); ++r) {
      json cells = json::array();
      for (std::size_t c = 0; c < places[r].size(); ++c) {
        const chart::SheetPlace& place = places[r][c];
        const fs::path& source = sheet.cells[r][c].png;
        cells.push_back({{"file", source.empty() ? json(nullptr) : json(fs::relative(source, grid_dir).string())},
                         {"x", place.x}, {"y", place.y}, {"width", place.width},
                         {"height", place.height}, {"scale", place.scale}});
      }
      layout["cells"].push_back(cells);
    }
    write_file_atomic(grid_dir / (name + ".json"), layout.dump(2) + "\n");
    files.push_back(name + ".png");
  }
  return fmt::format(
      "\nSample sheets (the final evaluation's images; rows: {}each method's first run in the "
      "grid's order; columns: the prompts and their images, the same noise in every row; captions: "
      "each image's scores): {}\n",
      has_reference ? "the reference model, then " : "", fmt::join(files, ", "));
}

// Each finished run's training curves in its plots/ folder, drawn as `dedpo plot` draws them
// (runs gathered without their metrics.jsonl have none).
std::string write_run_curves(const fs::path& grid_dir, const GridRuns& runs) {
  std::size_t drawn = 0;
  std::error_code error;
  for (const Row& row : runs.rows) {
    if (!fs::is_regular_file(grid_dir / row.run / kMetricsFile, error)) continue;
    try {
      plot_run_curves(grid_dir / row.run);
      ++drawn;
    } catch (const std::exception& e) {
      std::cerr << fmt::format("report: no curves for {}: {}\n", row.run, e.what());
    }
  }
  if (drawn == 0) return {};
  return fmt::format("\nRun curves (loss, implicit accuracy, λ, gradient norm, learning rate as "
                     "logged): <run>/plots/*.png for {} runs\n",
                     drawn);
}

}  // namespace

std::string write_report(const fs::path& grid_dir) {
  std::error_code error;
  if (!fs::is_directory(grid_dir, error)) throw Error(grid_dir.string() + ": not a folder");
  const GridIndex index = read_grid_index(grid_dir);
  const GridRuns runs = read_runs(grid_dir, index);
  write_results_csv(grid_dir / "results.csv", runs);
  const std::vector<Method> methods = group_methods(runs);
  const Columns columns = plan_columns(runs, methods.size(), index.report, grid_dir);
  const std::string& baseline = index.report.baseline;
  // The launcher checked it when the grid started; grid.json may have been edited since.
  check_report_baseline(index, (grid_dir / kGridIndexFile).string());

  std::string summary = fmt::format("# Grid {}\n\n", grid_dir.filename().string());
  summary += fmt::format("{} finished runs", runs.rows.size());
  if (runs.unfinished > 0) summary += fmt::format(", {} unfinished", runs.unfinished);
  summary +=
      "; mean ± 95% confidence interval (Student t) over seeds, n = seeds; runs whose "
      "figure is not finite (diverged) are counted in their cell, not averaged.\n\n";
  summary += summary_table(runs, methods, columns);
  if (!baseline.empty() && !columns.primary.empty()) {
    const bool finished = std::any_of(methods.begin(), methods.end(),
                                      [&](const Method& m) { return m.line == baseline; });
    summary += finished
                   ? paired_section(runs, methods, baseline, columns.primary)
                   : fmt::format("\nNo paired comparison: the baseline {} has no finished run.\n",
                                 baseline);
  }
  if (!runs.stale.empty()) {
    summary += fmt::format(
        "\nLeft out, stale (their config, [init] weights or plugins differ from the grid's now; "
        "remove them to run them again): {}\n",
        fmt::join(runs.stale, ", "));
  }
  summary += write_charts(grid_dir, runs, methods, columns, baseline);
  summary += write_sample_sheets(grid_dir, methods);
  summary += write_run_curves(grid_dir, runs);
  write_file_atomic(grid_dir / "summary.md", summary);
  return summary;
}

}  // namespace dedpo
