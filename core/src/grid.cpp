// Grids of runs (child processes, a few at a time) and their reports (CSV, Markdown, SVG).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "dedpo/runner.hpp"
#include "dedpo/trainer.hpp"
#include "dedpo/files.hpp"

extern char** environ;

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Expansion

struct GridRun {
  std::string name;                  // folder name
  std::vector<Override> overrides;   // case overrides, then product values
};

std::string literal(const toml::node& node) {
  std::ostringstream text;
  node.visit([&](const auto& value) {
    if constexpr (toml::is_string<decltype(value)>) {
      text << toml::value<std::string>(value.get());
    } else {
      text << value;
    }
  });
  return text.str();
}

// Folder-friendly text of a value: strings without quotes, odd characters replaced.
std::string sanitise(std::string_view text) {
  std::string out;
  for (char c : text) {
    bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_' ||
              c == '+';
    out += ok ? c : '_';
  }
  return out.empty() ? "_" : out;
}

std::string display_value(const toml::node& node) {
  if (const auto* s = node.as_string()) return s->get();
  if (const auto* d = node.as_floating_point()) return fmt::format("{}", d->get());  // 0.05, not 0.05000000000000000277
  return literal(node);
}

void flatten(const toml::table& table, const std::string& prefix,
             std::vector<std::pair<std::string, const toml::node*>>& out) {
  for (const auto& [key, node] : table) {
    std::string name = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const toml::table* nested = node.as_table()) {
      flatten(*nested, name, out);
    } else {
      out.emplace_back(name, &node);
    }
  }
}

std::vector<GridRun> expand_grid(const std::string& grid_toml) {
  toml::table grid;
  try {
    grid = toml::parse(grid_toml);
  } catch (const toml::parse_error& error) {
    throw Error(std::string("[grid]: ") + std::string(error.description()));
  }
  struct Case {
    std::string name;
    std::vector<Override> overrides;
  };
  std::vector<Case> cases;
  if (const toml::node* node = grid.get("cases")) {
    const toml::array* array = node->as_array();
    if (array == nullptr || !array->is_array_of_tables()) {
      throw Error("[grid] cases: expected [[grid.cases]] tables");
    }
    std::set<std::string> names;
    for (const toml::node& item : *array) {
      const toml::table& table = *item.as_table();
      const toml::node* name = table.get("name");
      if (name == nullptr || !name->is_string()) {
        throw Error("[[grid.cases]]: every case needs name = \"...\"");
      }
      Case c{name->as_string()->get(), {}};
      if (!names.insert(c.name).second) throw Error("[[grid.cases]]: duplicate case '" + c.name + "'");
      std::vector<std::pair<std::string, const toml::node*>> values;
      flatten(table, "", values);
      for (const auto& [key, value] : values) {
        if (key != "name") c.overrides.push_back({key, literal(*value)});
      }
      cases.push_back(std::move(c));
    }
  }
  if (cases.empty()) cases.push_back({"", {}});

  grid.erase("cases");
  std::vector<std::pair<std::string, const toml::node*>> axes;
  flatten(grid, "", axes);
  std::vector<std::pair<std::string, std::vector<const toml::node*>>> product;
  for (const auto& [key, node] : axes) {
    const toml::array* array = node->as_array();
    if (array == nullptr || array->empty()) {
      throw Error("[grid] " + key + ": expected a non-empty array of values");
    }
    std::vector<const toml::node*> values;
    for (const toml::node& value : *array) values.push_back(&value);
    product.emplace_back(key, std::move(values));
  }

  std::vector<GridRun> runs;
  for (const Case& c : cases) {
    std::vector<std::size_t> index(product.size(), 0);
    while (true) {
      GridRun run{sanitise(c.name.empty() ? "run" : c.name), c.overrides};
      std::string settings;
      for (std::size_t k = 0; k < product.size(); ++k) {
        const toml::node& value = *product[k].second[index[k]];
        run.overrides.push_back({product[k].first, literal(value)});
        settings += (settings.empty() ? "" : "__") + product[k].first + "=" +
                    sanitise(display_value(value));
      }
      if (!settings.empty()) run.name = (c.name.empty() ? "" : run.name + "__") + settings;
      runs.push_back(std::move(run));
      std::size_t k = product.size();
      while (k > 0) {
        if (++index[k - 1] < product[k - 1].second.size()) break;
        index[k - 1] = 0;
        --k;
      }
      if (k == 0) break;
    }
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------
// Child processes

std::string last_lines(const fs::path& file, std::size_t count) {
  std::error_code error;
  if (!fs::exists(file, error)) return {};
  std::ifstream in(file);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > count) lines.pop_front();
  }
  std::string out;
  for (const auto& l : lines) out += "    " + l + "\n";
  return out;
}

pid_t spawn(const std::vector<std::string>& args, const fs::path& output) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, output.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int status = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (status != 0) {
    throw Error("cannot start " + args[0] + ": " + std::strerror(status));
  }
  return pid;
}

// ---------------------------------------------------------------------------------------------
// Report

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

// The folder name without the `key=value` parts of the given keys: parts are joined by "__",
// the first being the case name unless it holds a '='.
std::string drop_settings(const std::string& name, std::initializer_list<std::string_view> keys) {
  std::vector<std::string> parts;
  for (std::size_t start = 0;;) {
    std::size_t end = name.find("__", start);
    parts.push_back(name.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 2;
  }
  std::string kept;
  for (const std::string& part : parts) {
    bool drop = std::any_of(keys.begin(), keys.end(), [&](std::string_view key) {
      return part.starts_with(std::string(key) + "=");
    });
    if (!drop) kept += (kept.empty() ? "" : "__") + part;
  }
  return kept.empty() ? "all" : kept;
}

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

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// summary.md titles the image metrics with the paper's column names ("pickscore_ref" -> "PS (ref)");
// results.csv keeps the figures' own names.
std::string column_title(const std::string& metric) {
  static const std::map<std::string, std::string> titles = {
      {"pickscore", "PS"}, {"hpsv2_avg", "HPSv2 Avg"}, {"aesthetic", "AS"}, {"clip_score", "CLIP"}};
  const bool reference = metric.ends_with("_ref");
  const auto found = titles.find(reference ? metric.substr(0, metric.size() - 4) : metric);
  if (found == titles.end()) return metric;
  return reference ? found->second + " (ref)" : found->second;
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

std::string svg_plot(const std::string& metric, const std::vector<Row>& rows) {
  // line -> fraction -> values
  std::map<std::string, std::map<double, std::vector<double>>> series;
  for (const Row& row : rows) {
    auto it = row.metrics.find(metric);
    if (it == row.metrics.end() || !std::isfinite(row.fraction)) continue;
    series[row.line][row.fraction].push_back(it->second);
  }
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  struct Point { double x, y, h; };
  std::map<std::string, std::vector<Point>> points;
  for (const auto& [line, by_fraction] : series) {
    for (const auto& [fraction, values] : by_fraction) {
      Stat s = stat(values);
      if (s.n == 0) continue;
      double h = std::isfinite(s.half_width) ? s.half_width : 0.0;
      points[line].push_back({fraction, s.mean, h});
      x_lo = std::min(x_lo, fraction);
      x_hi = std::max(x_hi, fraction);
      y_lo = std::min(y_lo, s.mean - h);
      y_hi = std::max(y_hi, s.mean + h);
    }
  }
  if (points.empty()) return {};
  if (x_hi - x_lo < 1e-12) { x_lo -= 0.05; x_hi += 0.05; }
  if (y_hi - y_lo < 1e-12) {
    double pad = std::max(1e-3, std::abs(y_lo) * 0.05);
    y_lo -= pad;
    y_hi += pad;
  }
  double y_pad = (y_hi - y_lo) * 0.05;
  y_lo -= y_pad;
  y_hi += y_pad;
  std::vector<double> x_ticks = nice_ticks(x_lo, x_hi), y_ticks = nice_ticks(y_lo, y_hi);
  if (!x_ticks.empty()) { x_lo = std::min(x_lo, x_ticks.front()); x_hi = std::max(x_hi, x_ticks.back()); }
  if (!y_ticks.empty()) { y_lo = std::min(y_lo, y_ticks.front()); y_hi = std::max(y_hi, y_ticks.back()); }

  const double width = 760, height = 440, left = 70, right = 230, top = 40, bottom = 60;
  const double pw = width - left - right, ph = height - top - bottom;
  auto sx = [&](double x) { return left + (x - x_lo) / (x_hi - x_lo) * pw; };
  auto sy = [&](double y) { return top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * ph; };
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
  for (const auto& [line, pts] : points) {
    const char* colour = colours[k % std::size(colours)];
    std::string path;
    for (const Point& p : pts) path += fmt::format("{:.1f},{:.1f} ", sx(p.x), sy(p.y));
    svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       path, colour);
    for (const Point& p : pts) {
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

}  // namespace

int run_grid(const fs::path& file, std::span<const Override> overrides, const GridControl& control,
             PluginRegistry& registry) {
  Experiment experiment = load_experiment(file, overrides, registry);
  if (experiment.grid_toml.empty()) throw Error(file.string() + ": has no [grid] table");
  std::vector<GridRun> runs = expand_grid(experiment.grid_toml);
  fs::path grid_dir = fs::path(experiment.run.string("output")) / (experiment.name() + "-grid");
  fs::create_directories(grid_dir);
  if (control.program.empty()) throw Error("run_grid: no program to run the cases with");
  fs::path experiment_file = experiment.file.empty() ? fs::absolute(file) : experiment.file;

  struct Job {
    const GridRun* run;
    fs::path dir;
    std::vector<std::string> args;
  };
  std::deque<Job> queue;
  std::size_t skipped = 0;
  int stale = 0;
  for (const GridRun& run : runs) {
    fs::path dir = grid_dir / run.name;
    std::error_code error;
    // A run made from another configuration (the file was edited since) is never reused.
    if (fs::exists(dir / kConfigFile, error)) {
      std::vector<Override> all(overrides.begin(), overrides.end());
      all.insert(all.end(), run.overrides.begin(), run.overrides.end());
      if (read_file(dir / kConfigFile) != load_experiment(file, all, registry).resolved_toml) {
        std::cerr << fmt::format(
            "stale run {}: its config.toml differs from what the experiment now resolves to; "
            "remove the folder (or change run.name) to run it again\n",
            dir.string());
        ++stale;
        continue;
      }
    }
    if (fs::exists(dir / kResultsFile, error)) {
      ++skipped;
      continue;
    }
    Job job{&run, dir, {control.program.string(), "run"}};
    bool resume = fs::exists(dir / kConfigFile, error) &&
                  fs::exists(dir / kCheckpointDir / "latest", error);
    if (resume) {
      job.args.insert(job.args.end(), {"--resume", dir.string()});
    } else {
      job.args.push_back(experiment_file.string());
      for (const Override& o : overrides) job.args.insert(job.args.end(), {"--set", o.key + "=" + o.value});
      for (const Override& o : run.overrides) job.args.insert(job.args.end(), {"--set", o.key + "=" + o.value});
      job.args.insert(job.args.end(), {"--run-dir", dir.string()});
    }
    job.args.push_back("--no-progress");
    queue.push_back(std::move(job));
  }
  std::cerr << fmt::format("grid {}: {} runs, {} already finished, {} to run ({} at once)\n",
                           grid_dir.string(), runs.size(), skipped, queue.size(),
                           std::max(1, control.jobs));

  std::map<pid_t, std::pair<Job, std::chrono::steady_clock::time_point>> running;
  int failures = stale;
  std::size_t done = 0, total = queue.size();
  while (!queue.empty() || !running.empty()) {
    while (!queue.empty() && static_cast<int>(running.size()) < std::max(1, control.jobs)) {
      Job job = std::move(queue.front());
      queue.pop_front();
      fs::create_directories(job.dir);
      try {
        pid_t pid = spawn(job.args, job.dir / "stdout.txt");
        running.emplace(pid, std::make_pair(std::move(job), std::chrono::steady_clock::now()));
      } catch (const Error& error) {
        ++failures;
        ++done;
        std::cerr << fmt::format("[{}/{}] FAILED {}: {}\n", done, total, job.run->name, error.what());
      }
    }
    if (running.empty()) continue;
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("waitpid: ") + std::strerror(errno));
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    auto [job, started] = std::move(it->second);
    running.erase(it);
    ++done;
    int code = WIFEXITED(status) ? WEXITSTATUS(status)
                                 : (WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::error_code error;
    if (code == 0 && fs::exists(job.dir / kResultsFile, error)) {
      std::cerr << fmt::format("[{}/{}] done {} ({:.1f} s)\n", done, total, job.run->name, seconds);
    } else {
      ++failures;
      std::cerr << fmt::format("[{}/{}] FAILED {} (exit code {}); last lines of {}:\n{}", done,
                               total, job.run->name, code, (job.dir / "stdout.txt").string(),
                               last_lines(job.dir / "stdout.txt", 10));
    }
  }
  std::string summary = write_report(grid_dir);
  std::cout << summary;
  if (failures > 0) {
    std::cout << fmt::format("\n{} of {} runs failed (see their stdout.txt and log.txt)\n",
                             failures, runs.size());
  }
  return failures;
}

std::string write_report(const fs::path& grid_dir) {
  std::error_code error;
  if (!fs::is_directory(grid_dir, error)) throw Error(grid_dir.string() + ": not a folder");
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(grid_dir)) {
    if (entry.is_directory() && !entry.path().filename().string().starts_with(".")) {
      dirs.push_back(entry.path());
    }
  }
  std::sort(dirs.begin(), dirs.end());
  std::vector<Row> rows;
  std::vector<std::string> metric_names;
  std::size_t unfinished = 0;
  for (const fs::path& dir : dirs) {
    if (!fs::exists(dir / kConfigFile, error) && !fs::exists(dir / kResultsFile, error)) continue;
    if (!fs::exists(dir / kResultsFile, error)) {
      ++unfinished;
      continue;
    }
    Row row;
    row.run = dir.filename().string();
    try {
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
        if (std::find(metric_names.begin(), metric_names.end(), name) == metric_names.end()) {
          metric_names.push_back(name);
        }
      }
    } catch (const std::exception& e) {
      std::cerr << fmt::format("report: skipping {}: {}\n", dir.string(), e.what());
      continue;
    }
    row.method = drop_settings(row.run, {"run.seed"});
    row.line = drop_settings(row.run, {"run.seed", "train.labelled_fraction"});
    rows.push_back(std::move(row));
  }

  // results.csv
  std::string csv = "run,loss,annotator,labeled_fraction,seed";
  for (const auto& name : metric_names) csv += "," + csv_field(name);
  csv += "\n";
  for (const Row& row : rows) {
    csv += fmt::format("{},{},{},{},{}", csv_field(row.run), csv_field(row.loss),
                       csv_field(row.annotator), number(row.fraction), row.seed);
    for (const auto& name : metric_names) {
      auto it = row.metrics.find(name);
      csv += "," + (it == row.metrics.end() ? std::string() : number(it->second));
    }
    csv += "\n";
  }
  write_file_atomic(grid_dir / "results.csv", csv);

  // summary.md: one row per method (the run without its seed), mean ± 95% CI over seeds.
  std::vector<std::string> methods;
  for (const Row& row : rows) {
    if (std::find(methods.begin(), methods.end(), row.method) == methods.end()) {
      methods.push_back(row.method);
    }
  }
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> header = {"method", "loss", "annotator", "fraction", "n"};
  for (const auto& name : metric_names) header.push_back(column_title(name));
  cells.push_back(header);
  for (const std::string& method : methods) {
    std::vector<const Row*> members;
    for (const Row& row : rows) {
      if (row.method == method) members.push_back(&row);
    }
    std::vector<std::string> line = {method, members[0]->loss,
                                     members[0]->annotator.empty() ? "-" : members[0]->annotator,
                                     number(members[0]->fraction), std::to_string(members.size())};
    for (const auto& name : metric_names) {
      std::vector<double> values;
      for (const Row* row : members) {
        auto it = row->metrics.find(name);
        if (it != row->metrics.end()) values.push_back(it->second);
      }
      Stat s = stat(values);
      if (s.n == 0) {
        line.push_back("-");
      } else if (std::isfinite(s.half_width)) {
        line.push_back(fmt::format("{:.4g} ± {:.2g}", s.mean, s.half_width));
      } else {
        line.push_back(fmt::format("{:.4g}", s.mean));
      }
    }
    cells.push_back(line);
  }
  std::string summary = fmt::format("# Grid {}\n\n", grid_dir.filename().string());
  summary += fmt::format("{} finished runs", rows.size());
  if (unfinished > 0) summary += fmt::format(", {} unfinished", unfinished);
  summary += "; mean ± 95% confidence interval (Student t) over seeds, n = seeds.\n\n";
  summary += table_text(cells);

  // Plots: one per metric, one line per method without its labelled fraction.
  std::vector<std::string> plots;
  for (const auto& name : metric_names) {
    std::string svg = svg_plot(name, rows);
    if (svg.empty()) continue;
    std::string file = sanitise(name) + ".svg";
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
