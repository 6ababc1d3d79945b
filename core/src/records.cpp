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

// Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF). JSON
// text must be UTF-8, so CSV cells, which become JSON strings, are held to it too.
bool is_utf8(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    std::size_t length = 1;
    unsigned char low = 0x80, high = 0xBF;  // the range of the second byte
    if (byte < 0x80) {
      ++i;
      continue;
    } else if (byte >= 0xC2 && byte <= 0xDF) {
      length = 2;
    } else if (byte >= 0xE0 && byte <= 0xEF) {
      length = 3;
      if (byte == 0xE0) low = 0xA0;
      if (byte == 0xED) high = 0x9F;
    } else if (byte >= 0xF0 && byte <= 0xF4) {
      length = 4;
      if (byte == 0xF0) low = 0x90;
      if (byte == 0xF4) high = 0x8F;
    } else {
      return false;
    }
    if (text.size() - i < length) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if (next < (k == 1 ? low : 0x80) || next > (k == 1 ? high : 0xBF)) return false;
    }
    i += length;
  }
  return true;
}

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
    } catch (const nlohmann::json::exception& error) {  // also out_of_range: 1e999
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
    for (const std::string& cell : header) {
      if (!is_utf8(cell)) {
        throw Error(name + ":" + std::to_string(line) + ": the header row is not valid UTF-8 text");
      }
    }
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
      for (std::size_t i = 0; i < header.size(); ++i) {
        if (!is_utf8(cells[i])) {
          record.fields = nlohmann::json();
          record.error = "column '" + header[i] + "' is not valid UTF-8 text";
          break;
        }
        record.fields[header[i]] = cells[i];
      }
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
