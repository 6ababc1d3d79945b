#pragma once
// Checkpoints, the one owner of their format: checkpoint/step-<N>.pt (the trainer's whole state)
// and checkpoint/latest naming the newest, written atomically; the newest two are kept.
#include <filesystem>

#include "dedpo/backbone.hpp"
#include "train/trainer.hpp"

namespace dedpo {

// The newest checkpoint of a run folder; empty when there is none.
std::filesystem::path latest_checkpoint(const std::filesystem::path& run_dir);
// checkpoint/step-<N>.pt for the trainer's current step.
std::filesystem::path checkpoint_file(const std::filesystem::path& run_dir, const Trainer& trainer);

void save_checkpoint(const std::filesystem::path& run_dir, const Trainer& trainer);
void load_checkpoint(const std::filesystem::path& file, Trainer& trainer);

// The trained model of a run's final checkpoint into `backbone` (prepared as the run had it):
// exact for every backbone (LoRA adapters included) and, with EMA, the averaged weights the run
// evaluated and saved.
void load_trained_model(const std::filesystem::path& run_dir, Backbone& backbone);

}  // namespace dedpo
