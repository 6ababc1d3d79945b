#include "answer_journal.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"
#include "dedpo/files.hpp"

namespace dedpo::vlm {
namespace {

using nlohmann::json;

// Empty when the line is not an entry (the header); throws on anything unreadable.
std::optional<JournalEntry> parse_entry(const std::string& line, std::int64_t pair_count) {
  json value = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded() || !value.is_object()) throw Error("not a JSON object");
  if (!value.contains("pair")) return std::nullopt;
  JournalEntry entry;
  try {
    entry.pair = value.at("pair").get<std::int64_t>();
    entry.swapped = value.at("order").get<std::string>() == "ba";
    if (!value.at("p_first").is_null()) entry.p_first = value.at("p_first").get<double>();
    entry.via = value.at("via").get<std::string>();
    entry.answer = value.at("answer").get<std::string>();
  } catch (const json::exception& error) {
    throw Error(std::string("not a journal entry: ") + error.what());
  }
  if (entry.pair < 0 || entry.pair >= pair_count) {
    throw Error("pair " + std::to_string(entry.pair) + " is out of range");
  }
  return entry;
}

}  // namespace

AnswerJournal::AnswerJournal(std::filesystem::path file, const std::string& header,
                             std::int64_t pair_count)
    : file_(std::move(file)) {
  std::string text;
  if (std::filesystem::exists(file_)) text = read_file(file_);
  // Every append ends with a newline: text after the last one is a write a crash cut short.
  const std::size_t last_newline = text.rfind('\n');
  const std::size_t complete = last_newline == std::string::npos ? 0 : last_newline + 1;
  std::size_t line_start = 0;
  for (std::int64_t line_number = 1; line_start < complete; ++line_number) {
    const std::size_t end = text.find('\n', line_start);
    const std::string line = text.substr(line_start, end - line_start);
    line_start = end + 1;
    if (line.empty()) continue;
    try {
      if (std::optional<JournalEntry> entry = parse_entry(line, pair_count)) {
        recorded_.push_back(std::move(*entry));
      }
    } catch (const Error& error) {
      throw Error(file_.string() + " line " + std::to_string(line_number) + ": " + error.what() +
                  " (the journal is damaged: remove that line, or the file to ask again)");
    }
  }
  std::error_code error;
  if (complete < text.size()) std::filesystem::resize_file(file_, complete, error);
  if (error) throw Error(file_.string() + ": cannot drop its torn last line: " + error.message());
  fd_ = ::open(file_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(file_.string() + ": cannot open for appending: " + std::strerror(errno));
  if (complete == 0) {
    try {
      write_line(header);
    } catch (...) {
      ::close(fd_);
      throw;
    }
  }
}

AnswerJournal::~AnswerJournal() {
  if (fd_ >= 0) ::close(fd_);
}

void AnswerJournal::append(const JournalEntry& entry) {
  json line = {{"pair", entry.pair},
               {"order", entry.swapped ? "ba" : "ab"},
               {"p_first", entry.p_first ? json(*entry.p_first) : json(nullptr)},
               {"via", entry.via},
               {"answer", entry.answer}};
  std::lock_guard<std::mutex> lock(mutex_);
  write_line(line.dump(-1, ' ', false, json::error_handler_t::replace));
}

void AnswerJournal::write_line(const std::string& line) {
  const std::string text = line + "\n";
  std::size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + written, text.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(file_.string() + ": cannot append: " + std::strerror(errno));
    written += static_cast<std::size_t>(n);
  }
}

}  // namespace dedpo::vlm
