#pragma once
// Checkpoints, the one owner of their format: checkpoint/step-<N>.pt (the trainer's whole state)
// and checkpoint/latest naming the newest, written atomically; the newest two are kept.
#include <filesystem>
#include <string>
#include <vector>

#include "dedpo/backbone.hpp"
#include "train/trainer.hpp"

namespace dedpo {

// The newest checkpoint of a run folder; empty when there is none.
std::filesystem::path latest_checkpoint(const std::filesystem::path& run_dir);
// checkpoint/step-<N>.pt for the trainer's current step.
std::filesystem::path checkpoint_file(const std::filesystem::path& run_dir, const Trainer& trainer);

// `wall_time_s`: the run's time so far, over all its sessions.
void save_checkpoint(const std::filesystem::path& run_dir, const Trainer& trainer,
                     double wall_time_s);

// Loads `file` into `trainer`; returns the run's time up to it. Throws when it does not load.
double load_checkpoint(const std::filesystem::path& file, Trainer& trainer);

struct ResumedCheckpoint {
  std::filesystem::path file;         // empty: there is no checkpoint, start from step 0
  double wall_time_s = 0;             // the run's time up to that checkpoint
  std::vector<std::string> skipped;   // "<file>: <why>" of newer checkpoints that did not load
};
// Loads into `trainer` the newest checkpoint that loads: the one `latest` names, else the older
// ones, newest first, and makes `latest` name the one loaded. Throws, naming each and why, when
// checkpoints exist but none loads. For the rank that writes the run folder alone.
ResumedCheckpoint resume_checkpoint(const std::filesystem::path& run_dir, Trainer& trainer);

// The trained model of a run's final checkpoint into `backbone` (prepared as the run had it):
// exact for every backbone (LoRA adapters included) and, with EMA, the averaged weights the run
// evaluated and saved.
void load_trained_model(const std::filesystem::path& run_dir, Backbone& backbone);

}  // namespace dedpo
