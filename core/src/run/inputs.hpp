#pragma once
// What a run's result depends on beyond the values in its config.toml: the [init] weights (the
// [init] experiment's own inputs, or the digest of its weights file), the versions of the plugins
// it uses and, once loaded, its data's fingerprint. Recorded in the run folder (kInputsFile); a
// grid reuses a run only when the key it would get now equals the recorded one.
#include <filesystem>
#include <string>

#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"

namespace dedpo {

// The staleness key of a run of `experiment` (digest of config, [init] and plugin versions).
std::string run_inputs_key(const Experiment& experiment, PluginRegistry& registry);

// kInputsFile of a fresh run; the data fingerprint is added by record_data_fingerprint.
void write_run_inputs(const std::filesystem::path& run_dir, const std::string& key);
// The recorded key; empty when the folder has none (no run started there, or an older dedpo).
std::string read_run_inputs_key(const std::filesystem::path& run_dir);
// Records the fingerprint of the data a run trains on; a resumed run whose data now gives
// another fingerprint is refused (Error), so one run never mixes two data sets.
void record_data_fingerprint(const std::filesystem::path& run_dir, const std::string& fingerprint);

}  // namespace dedpo
