#pragma once
// Child processes of the dedpo program: a grid's runs, a data-parallel run's local workers.
#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace dedpo {

// Starts the program `args[0]` with `args`, its stdout and stderr appended to `output` (or this
// process's own when `output` is empty), its environment this process's plus `environment`
// ("NAME=value" entries, which replace variables of the same name). The child dies with its
// parent (PR_SET_PDEATHSIG), so no child goes on writing after its parent is gone.
pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& output,
            const std::vector<std::string>& environment = {});

}  // namespace dedpo
