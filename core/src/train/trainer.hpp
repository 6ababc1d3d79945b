#pragma once
// The step loop: one optimiser step at a time on the preference or the denoising objective,
// with gradient accumulation, the NaN/inf guard, clipping, the schedule and EMA.
#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/figures.hpp"
#include "dedpo/host/distributed.hpp"
#include "dedpo/host/settings.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/host/gradient_reducer.hpp"
#include "dedpo/host/optimizer.hpp"
#include "train/ema.hpp"
#include "train/master_weights.hpp"
#include "train/sampler.hpp"

namespace dedpo {

struct StepReport {
  double loss = 0.0;
  double grad_norm = 0.0;
  double lr = 0.0;
  bool skipped = false;  // non-finite loss or gradient: no update
  Figures diagnostics;   // the loss's, averaged over micro-batches
  // Data parallel: gradient buckets whose all-reduce started during the backward pass, of all.
  std::size_t overlapped_buckets = 0, gradient_buckets = 0;
};

// The figures of a step's micro-batches: each averaged over the micro-batches that gave it (a
// micro-batch without labelled pairs has no implicit_accuracy; it must not count as 0).
struct FigureSums {
  Figures sums;
  std::vector<double> counts;  // micro-batches that gave each figure
  void add(const Figures& more);
  Figures means() const;
  // Every rank's sums and counts added up (the same figures, in name order, on every rank).
  void reduce_over(Collectives& collectives);
};

class Trainer {
 public:
  // Batches go to `device` (the backbone's, from BackboneContext::device); the data stays on the
  // host, each batch is gathered there and copied over from pinned memory. With `collectives`
  // (a data-parallel run; null for one process) the trainable weights start as rank 0's, each
  // rank trains on its share of every global micro-batch and the gradients, loss and figures
  // are averaged over the ranks (docs/distributed.md).
  Trainer(Backbone& backbone, const TrainSettings& settings, c10::Device device, std::uint64_t seed,
          std::int64_t total_steps, Collectives* collectives = nullptr);

  // Preference objective. `is_labelled` [N] bool; `annotator_prob` [N] or undefined;
  // `condition` [P, ...] the encoded prompts of `data`.
  void set_preference(Loss& loss, const PairDataset& data, const at::Tensor& is_labelled,
                      const at::Tensor& annotator_prob, at::Tensor condition);
  void set_denoising(const SampleDataset& data, at::Tensor condition);

  StepReport step();

  std::int64_t step_index() const { return step_; }
  std::int64_t skipped() const { return skipped_; }
  int world_size() const { return world_size_; }
  Ema& ema() { return ema_; }
  // After the last step: bfloat16 weights take their float32 masters' values and dtype.
  void finish_weights() { masters_.weights_become_masters(); }

  // The trainer's part of a checkpoint; defined in run/checkpoint.cpp, the format's one owner.
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  at::Tensor preference_loss(FigureSums& diagnostics);
  at::Tensor denoising_loss();
  // This rank's share of the next global micro-batch: every rank draws all `world_size` parts of
  // it from the same streams (`draw` gives one part) and keeps the part of its rank.
  template <class Draw>
  at::Tensor rank_share(Draw draw);
  void clip_or_skip(StepReport& report);
  at::Tensor to_device(const at::Tensor& host) const;

  Backbone& backbone_;
  TrainSettings settings_;
  c10::Device device_;
  std::int64_t total_steps_;
  std::uint64_t seed_;
  Collectives* collectives_;
  // Averages the masters' gradients over the ranks (data parallel; null for one process),
  // during the backward pass where the weights are their own float32 masters.
  std::unique_ptr<GradientReducer> reducer_;
  int rank_ = 0, world_size_ = 1;
  at::Generator noise_;  // reseeded for each micro-batch (derive_seed's parts)
  std::vector<at::Tensor> params_;  // the model's, in weights_dtype
  MasterWeights masters_;           // what the optimiser updates (params_ themselves in float32)
  std::unique_ptr<Optimizer> optimizer_;
  Ema ema_;
  Sampler samples_order_;     // denoising objective
  PairBatches pair_batches_;  // preference objective

  Loss* loss_ = nullptr;
  const PairDataset* pairs_ = nullptr;
  const SampleDataset* samples_ = nullptr;
  at::Tensor condition_, is_labelled_, visible_label_, annotator_prob_, fold_key_;
  std::int64_t n_labelled_ = 0, n_unlabelled_ = 0;

  std::int64_t step_ = 0;
  std::int64_t skipped_ = 0;
};

// The pairs (or samples) of one optimiser step over all ranks.
inline std::int64_t global_batch_size(const TrainSettings& settings, int world_size) {
  return settings.batch_size * settings.grad_accum * world_size;
}

// The model's trainable parameters, in model() order (what the optimiser and EMA hold).
std::vector<at::Tensor> trainable_parameters(Backbone& backbone);

}  // namespace dedpo
