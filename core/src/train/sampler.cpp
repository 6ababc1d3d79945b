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
