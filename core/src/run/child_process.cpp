#include "run/child_process.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "dedpo/error.hpp"

extern char** environ;

namespace dedpo {

pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& output,
            const std::vector<std::string>& environment) {
  // Everything the child needs is built here: between fork and exec only async-signal-safe calls.
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
  for (char** variable = environ; *variable != nullptr; ++variable) {
    const std::string_view inherited(*variable);
    const std::string_view name = inherited.substr(0, inherited.find('='));
    bool replaced = false;
    for (const std::string& entry : environment) {
      replaced = replaced || std::string_view(entry).substr(0, entry.find('=')) == name;
    }
    if (!replaced) envp.push_back(*variable);
  }
  envp.push_back(nullptr);
  const std::string exec_failed = "dedpo: cannot start " + args[0] + "\n";
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("cannot start " + args[0] + ": " + std::strerror(errno));
  if (pid == 0) {
    // The parent may have died before the prctl: then the child is an orphan already.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(127);
    if (!output.empty()) {
      const int fd = ::open(output.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(fd, 2) < 0) ::_exit(127);
      ::close(fd);
    }
    ::execve(argv[0], argv.data(), envp.data());
    [[maybe_unused]] auto written = ::write(2, exec_failed.data(), exec_failed.size());
    ::_exit(127);
  }
  return pid;
}

}  // namespace dedpo
