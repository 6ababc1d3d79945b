#pragma once
// Pieces of the trainer that are useful on their own (and unit-tested): the learning-rate
// schedule, the Adafactor optimiser and the names of the files in a run folder. The trainer
// itself lives in core/src/train/ (the step loop and its parts) and core/src/run/ (run folders,
// checkpoints, caches, the run/resume/eval drivers).
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

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

// Adafactor (Shazeer & Stern 2018) without relative step sizes and without parameter scaling:
// the given lr is the step size. Second moments are factored over the last two dimensions of
// parameters with ≥ 2 dimensions (row and column means), kept whole for the others; decay
// β̂₂ₜ = 1 − t^decay_rate; updates are clipped to RMS ≤ clip_threshold; decoupled weight decay.
class Adafactor {
 public:
  struct Options {
    double eps1 = 1e-30;          // added to the squared gradient
    double clip_threshold = 1.0;  // update RMS clip
    double decay_rate = -0.8;
    double weight_decay = 0.0;
  };
  Adafactor(std::vector<at::Tensor> params, Options options);

  void step(double lr);  // parameters with an undefined grad are left alone
  std::int64_t steps() const { return step_; }

  // Every state tensor in a fixed order (row, col or full second moment per parameter), for
  // checkpoints; set_state takes the same list back.
  std::vector<at::Tensor> state() const;
  void set_state(std::int64_t steps, const std::vector<at::Tensor>& state);

 private:
  std::vector<at::Tensor> params_;
  Options options_;
  std::vector<at::Tensor> row_, col_, full_;
  std::int64_t step_ = 0;
};

}  // namespace dedpo
