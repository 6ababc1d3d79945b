#pragma once
// Data order: uniform without replacement per epoch over a pool of indices, and the pairs of
// each preference micro-batch ([train] batches: one pool, or a labelled and an all-pairs stream).
#include <cstdint>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

#include "dedpo/host/settings.hpp"
#include "dedpo/loss.hpp"

namespace dedpo {

class Sampler {
 public:
  Sampler() = default;
  Sampler(at::Tensor pool, std::uint64_t seed);

  std::int64_t pool_size() const { return pool_.defined() ? pool_.size(0) : 0; }
  at::Tensor next(std::int64_t count);  // [count] indices of the pool's items

  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  at::Tensor pool_;
  at::Generator generator_;
  at::Tensor order_;
  std::int64_t position_ = 0;
  std::int64_t epoch_ = 0;
};

// The pairs of each preference micro-batch of batch_size pairs:
//   pooled:     drawn from the loss's pool (its labelled pairs or all pairs);
//   two_stream: labelled_batch_size pairs from the labelled pairs, then the others from all
//               pairs, each stream with its own epochs (docs/losses.md §3).
class PairBatches {
 public:
  PairBatches() = default;
  // `is_labelled` [N] bool; `seed` the run's (each stream derives its own generator from it).
  PairBatches(const at::Tensor& is_labelled, PairPool pool, const TrainSettings& settings,
              std::uint64_t seed);

  at::Tensor next();  // [batch_size] pair indices, the labelled stream's first
  // The labelled stream's share of each batch (PairTerms::labelled_stream_size); 0 when pooled.
  std::int64_t labelled_stream_size() const { return labelled_batch_size_; }

  // Pooled batches keep the one-sampler checkpoint layout ("sampler"); two-stream batches add
  // "labelled_sampler".
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  Sampler pairs_;     // pooled: the loss's pool; two-stream: all pairs
  Sampler labelled_;  // two-stream: the labelled pairs
  std::int64_t batch_size_ = 0;
  std::int64_t labelled_batch_size_ = 0;
};

}  // namespace dedpo
