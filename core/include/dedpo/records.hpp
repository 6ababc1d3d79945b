#pragma once
// Line-oriented tables for plugins that read data files: JSONL (one JSON object per line) and
// CSV (RFC 4180: a header row naming the columns, fields quoted with "..." and "" inside quotes,
// quoted fields may span lines; like JSON, it must be UTF-8 text). Each record keeps the line it starts on, so errors can name it;
// a line that cannot be parsed becomes a record with `error` set instead of stopping the read,
// so callers that skip bad input can count it. A plugin using it links
// nlohmann_json::nlohmann_json itself (the records hold JSON).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"

namespace dedpo {

struct Record {
  std::int64_t line = 0;  // 1-based line of the file where the record starts
  nlohmann::json fields;  // an object; CSV cells are strings ("" for an empty cell)
  std::string error;      // non-empty: the line could not be parsed, `fields` is empty
};

enum class RecordFormat { jsonl, csv };

// From the file's extension: .jsonl, .ndjson -> JSONL; .csv -> CSV.
RecordFormat record_format_of(const std::filesystem::path& file);

// Every record of `file`; blank lines are skipped. Throws only when the file cannot be read (or
// a CSV file has no header row, or one that is not UTF-8); bad lines come back as records with
// `error` set.
std::vector<Record> read_records(const std::filesystem::path& file, RecordFormat format);

// A CSV field as written: quoted (with "" for ") when it holds a comma, quote or line break.
std::string csv_field(const std::string& text);

}  // namespace dedpo
