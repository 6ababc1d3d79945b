#pragma once
// The answers already received, one JSON line each, appended as they arrive so that a restarted
// annotation asks only for what is missing. A crash can leave the last line torn (no newline):
// opening drops it (that answer is asked again); any other unreadable line is an error.
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace dedpo::vlm {

struct JournalEntry {
  std::int64_t pair = 0;
  bool swapped = false;           // B was shown first
  std::optional<double> p_first;  // empty: the answer was unclear
  std::string via;                // "logprobs" or "text"
  std::string answer;             // the reply's text
};

class AnswerJournal {
 public:
  // Opens or creates `file`; a new file starts with `header` (one JSON object line, for people
  // reading the file). `pair_count` bounds the pair indices a valid entry may hold.
  AnswerJournal(std::filesystem::path file, const std::string& header, std::int64_t pair_count);
  ~AnswerJournal();
  AnswerJournal(const AnswerJournal&) = delete;
  AnswerJournal& operator=(const AnswerJournal&) = delete;

  // The entries found when the journal was opened, in file order.
  const std::vector<JournalEntry>& recorded() const { return recorded_; }
  const std::filesystem::path& file() const { return file_; }

  // Appends one line; callable from several threads.
  void append(const JournalEntry& entry);

 private:
  void write_line(const std::string& line);

  std::filesystem::path file_;
  int fd_ = -1;
  std::mutex mutex_;
  std::vector<JournalEntry> recorded_;
};

}  // namespace dedpo::vlm
