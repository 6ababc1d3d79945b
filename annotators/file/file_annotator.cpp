// file: an annotator that reads ĝ(y) = P(A preferred) from a CSV or JSONL file, so labels made
// elsewhere (a reward model, a VLM judge, a crowd) plug into DeDPO unchanged.
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "dedpo/annotator.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/records.hpp"

namespace dedpo::file_annotator {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using T = OptionType;

const OptionSpec kOptions[] = {
    {"path", T::string, nullptr,
     "CSV (.csv) or JSONL (.jsonl) file with one row per pair: its id (or index) and g in [0, 1]. "
     "A relative path is relative to the working directory."},
    {"match", T::string, "\"id\"",
     "\"id\": rows name pairs by the data's pair ids (pairs_manifest: the manifest's id, or its "
     "line number); \"pair\": by 0-based pair index in the data."},
    {"id_key", T::string, "\"id\"", "Key (CSV column) of the pair id or index."},
    {"value_key", T::string, "\"g\"", "Key of ĝ, the probability that A is preferred."},
};

constexpr std::size_t kListedMissing = 5;

class FileAnnotator : public Annotator {
 public:
  explicit FileAnnotator(const Options& options)
      : path_(options.string("path")), by_index_(options.string("match") == "pair"),
        id_key_(options.string("id_key")), value_key_(options.string("value_key")) {
    if (path_.empty()) options.fail("path", "expected the path of a .csv or .jsonl file");
    try {
      format_ = record_format_of(path_);
    } catch (const Error& error) {
      options.fail("path", error.what());
    }
    const std::string& match = options.string("match");
    if (match != "id" && match != "pair") {
      options.fail("match", "expected \"id\" or \"pair\", got \"" + match + "\"");
    }
  }

  // Reading the file is as cheap as reading a cache, and an edited file must take effect.
  bool cacheable() const override { return false; }

  at::Tensor annotate(AnnotatorContext& context) override {
    const PairDataset& data = context.data;
    const std::int64_t n = data.size();
    std::map<std::string, std::int64_t> row_of_id;
    if (by_index_ && !data.ids.empty()) {
      // Ids are there because positions may not be the source's: skipped lines or dropped ties
      // shift them, and values would silently land on the wrong pairs.
      throw Error(path_.string() + ": match = \"pair\" names pairs by position, but this data "
                                   "set names its pairs by id (skipped or dropped pairs shift "
                                   "positions); use match = \"id\"");
    }
    if (!by_index_) {
      if (data.ids.empty()) {
        throw Error(path_.string() + ": match = \"id\", but the data set gives its pairs no ids "
                                     "(use match = \"pair\" to name pairs by index)");
      }
      for (std::int64_t i = 0; i < n; ++i) row_of_id.emplace(data.ids[static_cast<std::size_t>(i)], i);
    }
    std::vector<float> values(static_cast<std::size_t>(n), NAN);
    std::vector<std::int64_t> line_of(static_cast<std::size_t>(n), 0);
    for (const Record& record : read_records(path_, format_)) {
      const std::string where = path_.string() + ":" + std::to_string(record.line) + ": ";
      if (!record.error.empty()) throw Error(where + record.error);
      const std::int64_t pair = by_index_ ? pair_index(record, where, n) : -1;
      std::int64_t row = pair;
      if (!by_index_) {
        auto it = row_of_id.find(id_text(record, where));
        if (it == row_of_id.end()) continue;  // a file may cover more pairs than the data holds
        row = it->second;
      }
      auto slot = static_cast<std::size_t>(row);
      if (line_of[slot] != 0) {
        throw Error(where + "a second value for pair " + describe(data, row) + " (first on line " +
                    std::to_string(line_of[slot]) + ")");
      }
      values[slot] = probability(record, where);
      line_of[slot] = record.line;
    }
    std::vector<std::string> missing;
    std::int64_t missing_count = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      if (line_of[static_cast<std::size_t>(i)] != 0) continue;
      ++missing_count;
      if (missing.size() < kListedMissing) missing.push_back(describe(data, i));
    }
    if (missing_count > 0) {
      std::string list;
      for (const std::string& item : missing) list += (list.empty() ? "" : ", ") + item;
      throw Error(path_.string() + ": no value for " + std::to_string(missing_count) + " of " +
                  std::to_string(n) + " pairs, e.g. " + list +
                  (missing_count > static_cast<std::int64_t>(missing.size()) ? ", ..." : ""));
    }
    return at::tensor(values, at::kFloat);
  }

 private:
  std::string describe(const PairDataset& data, std::int64_t row) const {
    return by_index_ ? std::to_string(row) : "'" + data.ids[static_cast<std::size_t>(row)] + "'";
  }

  const json& field(const Record& record, const std::string& where, const std::string& key) const {
    if (!record.fields.contains(key)) throw Error(where + "missing key '" + key + "'");
    return record.fields.at(key);
  }

  std::string id_text(const Record& record, const std::string& where) const {
    const json& value = field(record, where, id_key_);
    if (value.is_string() && !value.get<std::string>().empty()) return value.get<std::string>();
    if (value.is_number_integer()) return value.dump();
    throw Error(where + "key '" + id_key_ + "': expected a pair id (a non-empty string or an "
                        "integer), got " + value.dump());
  }

  std::int64_t pair_index(const Record& record, const std::string& where, std::int64_t n) const {
    const json& value = field(record, where, id_key_);
    std::int64_t index = -1;
    if (value.is_number_integer()) {
      index = value.get<std::int64_t>();
    } else if (value.is_string()) {
      const std::string text = value.get<std::string>();
      std::size_t used = 0;
      try {
        index = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != text.size() || text.empty()) index = -1;
    }
    if (index < 0 || index >= n) {
      throw Error(where + "key '" + id_key_ + "': expected a pair index in [0, " +
                  std::to_string(n - 1) + "], got " + value.dump());
    }
    return index;
  }

  float probability(const Record& record, const std::string& where) const {
    const json& value = field(record, where, value_key_);
    double g = NAN;
    if (value.is_number()) {
      g = value.get<double>();
    } else if (value.is_string()) {
      const std::string text = value.get<std::string>();
      std::size_t used = 0;
      try {
        g = std::stod(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != text.size() || text.empty()) g = NAN;
    }
    if (!(g >= 0.0 && g <= 1.0)) {
      throw Error(where + "key '" + value_key_ + "': expected a probability in [0, 1], got " +
                  value.dump());
    }
    return static_cast<float>(g);
  }

  fs::path path_;
  RecordFormat format_ = RecordFormat::csv;
  bool by_index_;
  std::string id_key_, value_key_;
};

}  // namespace
}  // namespace dedpo::file_annotator

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::file_annotator::FileAnnotator>(
    "file", "1.0.0",
    "Reads ĝ = P(A preferred) for every pair from a CSV or JSONL file (labels made elsewhere).",
    dedpo::file_annotator::kOptions))
