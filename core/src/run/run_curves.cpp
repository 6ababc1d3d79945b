// `dedpo plot RUN_DIR`: the training curves of a run, from its metrics.jsonl, as charts in
// RUN_DIR/plots/.
#include <algorithm>
#include <cmath>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dedpo/host/chart.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "dedpo/records.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

// A chart per curve: its file name, title, and the metrics.jsonl keys drawn in it (the trainer's
// line and the losses' diagnostics). Curves whose keys the run never logged are not drawn.
struct Curve {
  const char* file;
  const char* title;
  std::vector<const char*> keys;
};
const Curve kCurves[] = {
    {"loss", "loss", {"loss"}},
    {"implicit_accuracy", "implicit accuracy", {"implicit_accuracy"}},
    {"lambda", "λ (DeDPO's correction weight)", {"lambda", "lambda_estimate"}},
    {"grad_norm", "gradient norm", {"grad_norm"}},
    {"lr", "learning rate", {"lr"}},
};

// A number from a metrics.jsonl line; null (how JSON writes NaN: a diverged step) is NaN.
double number_at(const Record& record, const char* key, const fs::path& file) {
  const nlohmann::json& value = record.fields.at(key);
  if (value.is_null()) return NAN;
  if (!value.is_number()) {
    throw Error(fmt::format("{}:{}: '{}' is {}, expected a number", file.string(), record.line, key,
                            value.dump()));
  }
  return value.get<double>();
}

}  // namespace

std::vector<fs::path> plot_run_curves(const fs::path& run_dir) {
  const fs::path file = run_dir / kMetricsFile;
  std::error_code error;
  if (!fs::is_regular_file(file, error)) {
    throw Error(run_dir.string() + ": no " + kMetricsFile +
                " (not a run folder, or a run that has logged no step yet)");
  }
  std::map<std::string, chart::Series> by_key;
  for (const Record& record : read_records(file, RecordFormat::jsonl)) {
    if (!record.error.empty()) {
      throw Error(fmt::format("{}:{}: {}", file.string(), record.line, record.error));
    }
    if (!record.fields.contains("step") || !record.fields["step"].is_number_integer()) {
      throw Error(fmt::format("{}:{}: expected \"step\": <integer>", file.string(), record.line));
    }
    const double step = record.fields["step"].get<double>();
    for (const Curve& curve : kCurves) {
      for (const char* key : curve.keys) {
        if (!record.fields.contains(key)) continue;
        chart::Series& s = by_key[key];
        s.label = key;
        s.x.push_back(step);
        s.y.push_back(number_at(record, key, file));
      }
    }
  }
  fs::create_directories(run_dir / "plots");
  std::vector<fs::path> files;
  for (const Curve& curve : kCurves) {
    chart::LineChart chart;
    chart.title = curve.title;
    chart.x_label = "step";
    chart.y_label = curve.title;
    for (const char* key : curve.keys) {
      const auto it = by_key.find(key);
      if (it == by_key.end()) continue;
      const bool finite = std::any_of(it->second.y.begin(), it->second.y.end(),
                                      [](double v) { return std::isfinite(v); });
      if (finite) chart.series.push_back(it->second);
    }
    if (chart.series.empty()) continue;
    for (const fs::path& written : chart::write_chart(chart, run_dir / "plots" / curve.file)) {
      files.push_back(written);
    }
  }
  if (files.empty()) {
    throw Error(file.string() + ": holds none of loss, implicit_accuracy, lambda, grad_norm, lr");
  }
  return files;
}

}  // namespace dedpo
