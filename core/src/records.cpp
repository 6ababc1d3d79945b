// The readers of dedpo/records.hpp: JSONL and RFC 4180 CSV, record by record.
#include "dedpo/records.hpp"

#include "dedpo/files.hpp"

namespace dedpo {

RecordFormat record_format_of(const std::filesystem::path& file) {
  const std::string extension = file.extension().string();
  if (extension == ".jsonl" || extension == ".ndjson") return RecordFormat::jsonl;
  if (extension == ".csv") return RecordFormat::csv;
  throw Error(file.string() + ": unknown table format '" + extension +
              "' (expected a .jsonl, .ndjson or .csv file)");
}

namespace {

std::vector<Record> parse_jsonl(const std::string& text) {
  std::vector<Record> records;
  std::int64_t line_number = 0;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    Record record;
    record.line = line_number;
    try {
      record.fields = nlohmann::json::parse(line);
      if (!record.fields.is_object()) {
        record.fields = nlohmann::json();
        record.error = "expected a JSON object {...}";
      }
    } catch (const nlohmann::json::parse_error& error) {
      record.error = std::string("malformed JSON: ") + error.what();
    }
    records.push_back(std::move(record));
  }
  return records;
}

// One CSV row from `text` at `position` (advanced past the row). False when the row has an
// unterminated quote; `lines` counts the line breaks the row consumed.
bool parse_csv_row(const std::string& text, std::size_t& position,
                          std::vector<std::string>& cells, std::int64_t& lines) {
  cells.assign(1, std::string());
  bool quoted = false;
  while (position < text.size()) {
    char c = text[position++];
    if (quoted) {
      if (c == '"') {
        if (position < text.size() && text[position] == '"') {
          cells.back() += '"';
          ++position;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++lines;
        cells.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      cells.emplace_back();
    } else if (c == '\n') {
      ++lines;
      break;
    } else if (c != '\r') {
      cells.back() += c;
    }
  }
  return !quoted;
}

std::vector<Record> parse_csv(const std::string& text, const std::string& name) {
  std::vector<Record> records;
  std::size_t position = 0;
  std::int64_t line = 1;
  std::vector<std::string> header, cells;
  // The header: the first non-blank row.
  while (position < text.size() && header.empty()) {
    std::int64_t consumed = 0;
    if (!parse_csv_row(text, position, cells, consumed)) {
      throw Error(name + ":" + std::to_string(line) + ": unterminated quote in the header row");
    }
    if (!(cells.size() == 1 && cells[0].empty())) header = cells;
    line += consumed;
  }
  if (header.empty()) throw Error(name + ": no header row (expected column names)");
  while (position < text.size()) {
    Record record;
    record.line = line;
    std::int64_t consumed = 0;
    bool complete = parse_csv_row(text, position, cells, consumed);
    line += consumed;
    if (cells.size() == 1 && cells[0].empty() && complete) continue;  // a blank line
    if (!complete) {
      record.error = "unterminated quoted field";
    } else if (cells.size() != header.size()) {
      record.error = "expected " + std::to_string(header.size()) + " fields (as the header), got " +
                     std::to_string(cells.size());
    } else {
      record.fields = nlohmann::json::object();
      for (std::size_t i = 0; i < header.size(); ++i) record.fields[header[i]] = cells[i];
    }
    records.push_back(std::move(record));
  }
  return records;
}

}  // namespace

std::vector<Record> read_records(const std::filesystem::path& file, RecordFormat format) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(file, error)) throw Error(file.string() + ": file not found");
  std::string text = read_file(file);
  if (text.starts_with("\xEF\xBB\xBF")) text.erase(0, 3);  // a UTF-8 byte-order mark
  return format == RecordFormat::jsonl ? parse_jsonl(text)
                                       : parse_csv(text, file.string());
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

}  // namespace dedpo
