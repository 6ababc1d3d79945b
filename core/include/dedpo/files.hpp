#pragma once
// Atomic file writes (readers see the old file or the whole new one) and whole-file reads, for
// the core and for plugins.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "dedpo/error.hpp"

namespace dedpo {

// A temporary name beside `file`, unique per process.
inline std::filesystem::path temp_path_for(const std::filesystem::path& file) {
  return file.parent_path() /
         ("." + file.filename().string() + ".tmp." + std::to_string(::getpid()));
}

// Removes from `folder` (not below it) the temporary files of temp_path_for that a killed process
// left behind: only that name pattern, and only when its process is gone. Returns their names.
inline std::vector<std::string> remove_abandoned_temp_files(const std::filesystem::path& folder) {
  constexpr std::string_view kMarker = ".tmp.";
  std::vector<std::string> removed;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(folder, error)) {
    const std::string name = entry.path().filename().string();
    const std::size_t marker = name.rfind(kMarker);
    if (name.front() != '.' || marker == std::string::npos || marker < 2) continue;
    const std::string pid_text = name.substr(marker + kMarker.size());
    if (pid_text.empty() || pid_text.size() > 9 ||
        !std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    const bool alive = pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH;
    std::error_code remove_error;
    if (!alive && entry.is_regular_file(remove_error) &&
        std::filesystem::remove(entry.path(), remove_error)) {
      removed.push_back(name);
    }
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

// Flushes a written file to disk so that a rename after it cannot expose a partial file.
inline void sync_file(const std::filesystem::path& file) {
  int fd = ::open(file.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Moves `temp` over `file` atomically (same folder), after flushing it.
inline void commit_file(const std::filesystem::path& temp, const std::filesystem::path& file) {
  sync_file(temp);
  std::error_code error;
  std::filesystem::rename(temp, file, error);
  if (error) {
    std::filesystem::remove(temp, error);
    throw Error(file.string() + ": cannot write: rename failed");
  }
}

// Writes `text` to `file` atomically: readers see the old file or the whole new one.
inline void write_file_atomic(const std::filesystem::path& file, std::string_view text) {
  std::filesystem::path temp = temp_path_for(file);
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(temp.string() + ": cannot open for writing");
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) throw Error(temp.string() + ": write failed");
  }
  commit_file(temp, file);
}

inline std::string read_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(file.string() + ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// An exclusive advisory lock (flock) on `file`, created when missing, held for the object's
// lifetime: serialises processes that fill the same cache entry (runs of a grid).
class FileLock {
 public:
  explicit FileLock(const std::filesystem::path& file) {
    fd_ = ::open(file.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(file.string() + ": cannot open lock file");
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) {
        ::close(fd_);
        throw Error(file.string() + ": cannot lock");
      }
    }
  }
  ~FileLock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace dedpo
