#include "train/sampler.hpp"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>

#include "dedpo/error.hpp"
#include "train/seeds.hpp"

namespace dedpo {

Sampler::Sampler(at::Tensor pool, std::uint64_t seed)
    : pool_(std::move(pool)), generator_(make_generator(seed)) {}

at::Tensor Sampler::next(std::int64_t count) {
  if (pool_size() == 0) throw Error("the training pool is empty: no pairs to draw batches from");
  std::vector<at::Tensor> parts;
  while (count > 0) {
    if (!order_.defined() || position_ >= order_.size(0)) {
      order_ = pool_.index_select(0, at::randperm(pool_size(), generator_, at::kLong));
      position_ = 0;
      ++epoch_;
    }
    std::int64_t take = std::min(count, order_.size(0) - position_);
    parts.push_back(order_.slice(0, position_, position_ + take));
    position_ += take;
    count -= take;
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts);
}

void Sampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("generator", generator_.get_state(), true);
  archive.write("order", order_.defined() ? order_ : at::empty({0}, at::kLong), true);
  archive.write("has_order", c10::IValue(order_.defined()));
  archive.write("position", c10::IValue(position_));
  archive.write("epoch", c10::IValue(epoch_));
}

void Sampler::load(torch::serialize::InputArchive& archive) {
  at::Tensor state, order;
  c10::IValue value;
  archive.read("generator", state, true);
  generator_.set_state(state);
  archive.read("order", order, true);
  archive.read("has_order", value);
  order_ = value.toBool() ? order : at::Tensor();
  archive.read("position", value);
  position_ = value.toInt();
  archive.read("epoch", value);
  epoch_ = value.toInt();
}

}  // namespace dedpo

namespace dedpo {

PairBatches::PairBatches(const at::Tensor& is_labelled, PairPool pool,
                         const TrainSettings& settings, std::uint64_t seed)
    : batch_size_(settings.batch_size),
      labelled_batch_size_(settings.batches == BatchComposition::two_stream
                               ? settings.labelled_batch_size
                               : 0) {
  const at::Tensor labelled = at::nonzero(is_labelled.to(at::kCPU, at::kBool)).flatten();
  const at::Tensor all = at::arange(is_labelled.size(0), at::kLong);
  const std::uint64_t order_seed = derive_seed(seed, RandomStream::data_order);
  if (labelled_batch_size_ == 0) {
    const at::Tensor& own = pool == PairPool::labelled ? labelled : all;
    if (own.size(0) == 0) {
      throw Error(pool == PairPool::labelled
                      ? "the loss trains on labelled pairs, but none is labelled (check [train] "
                        "labelled_fraction and the data's human labels)"
                      : "the dataset has no pairs");
    }
    pairs_ = Sampler(own, order_seed);
    return;
  }
  if (pool != PairPool::all) {
    throw Error("two-stream batches need a loss that draws from all pairs (PairPool::all)");
  }
  if (labelled.size(0) == 0) {
    throw Error("[train] batches = \"two_stream\" draws a labelled stream, but no pair is "
                "labelled (check [train] labelled_fraction and the data's human labels)");
  }
  pairs_ = Sampler(all, order_seed);
  labelled_ = Sampler(labelled, derive_seed(seed, RandomStream::labelled_order));
}

at::Tensor PairBatches::next() {
  if (labelled_batch_size_ == 0) return pairs_.next(batch_size_);
  at::Tensor labelled = labelled_.next(labelled_batch_size_);
  return at::cat({labelled, pairs_.next(batch_size_ - labelled_batch_size_)});
}

void PairBatches::save(torch::serialize::OutputArchive& archive) const {
  torch::serialize::OutputArchive pairs;
  pairs_.save(pairs);
  archive.write("sampler", pairs);
  if (labelled_batch_size_ == 0) return;
  torch::serialize::OutputArchive labelled;
  labelled_.save(labelled);
  archive.write("labelled_sampler", labelled);
}

void PairBatches::load(torch::serialize::InputArchive& archive) {
  torch::serialize::InputArchive pairs;
  archive.read("sampler", pairs);
  pairs_.load(pairs);
  if (labelled_batch_size_ == 0) return;
  torch::serialize::InputArchive labelled;
  if (!archive.try_read("labelled_sampler", labelled)) {
    throw Error("the checkpoint has no labelled-stream sampler: it was written by a run with "
                "pooled batches, this one draws two-stream batches");
  }
  labelled_.load(labelled);
}

}  // namespace dedpo
