#pragma once
// Pieces of the trainer that are useful on their own (and unit-tested): the learning-rate
// schedule and the names of the files in a run folder (the optimisers: dedpo/host/optimizer.hpp).
// The trainer itself lives in core/src/train/ (the step loop and its parts) and core/src/run/ (run
// folders, checkpoints, caches, the run/resume/eval drivers).
#include <cstdint>
#include <string>

#include "dedpo/host/settings.hpp"

namespace dedpo {

// Files of a run folder.
inline constexpr const char* kConfigFile = "config.toml";
inline constexpr const char* kLogFile = "log.txt";
inline constexpr const char* kMetricsFile = "metrics.jsonl";
inline constexpr const char* kResultsFile = "results.json";  // written last: its presence = finished
inline constexpr const char* kWeightsFile = "weights.pt";     // Backbone::save_weights
inline constexpr const char* kCheckpointDir = "checkpoint";   // step-<N>.pt and `latest`
inline constexpr const char* kSplitFile = "split.csv";        // labelled split of the pairs
inline constexpr const char* kTensorBoardDir = "tensorboard";  // with [log] tensorboard: events
// The images evaluations scored: samples/<evaluation>/ (run/samples.hpp, docs/training.md).
inline constexpr const char* kSamplesDir = "samples";
inline constexpr const char* kFinalSamples = "final";           // the final evaluation's folder
inline constexpr const char* kSamplesIndexFile = "samples.jsonl";  // in each evaluation's folder
// Written when dedpo creates a run folder: only folders carrying it are ever written into again.
inline constexpr const char* kRunMarkerFile = ".dedpo-run";
// Locked (flock) by the process that writes the folder; holds that process's pid.
inline constexpr const char* kRunLockFile = ".dedpo-lock";
// What the run's result depends on (run/inputs.hpp): a grid compares it to find stale runs.
inline constexpr const char* kInputsFile = "inputs.json";

// Learning rate of optimiser step `step` (0-based) of `total`: linear warm-up over
// `warmup_steps` (step 0 gets lr/warmup), then constant, or linear or cosine decay to 0 at
// `total`.
double scheduled_lr(double peak_lr, std::int64_t warmup_steps, std::int64_t total_steps,
                    LrSchedule schedule, std::int64_t step);

}  // namespace dedpo
