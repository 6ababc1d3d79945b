#pragma once
// Data order: uniform without replacement per epoch over a pool of indices.
#include <cstdint>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/serialize/archive.h>

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

}  // namespace dedpo
