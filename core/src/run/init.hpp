#pragma once
// [init]: the backbone's initial weights, from a weights file or from the trained weights of
// another experiment (run once into the output folder's cache, then reused).
#include <filesystem>
#include <string>

#include "dedpo/host/experiment.hpp"
#include "run/run_folder.hpp"

namespace dedpo {

struct InitialWeights {
  std::filesystem::path file;  // empty: the backbone's own
  std::string key;             // identifies them in cache keys
};

InitialWeights resolve_init(const Experiment& experiment, PluginRegistry& registry, RunLog& log);

}  // namespace dedpo
