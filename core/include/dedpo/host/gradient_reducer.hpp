#pragma once
// How a data-parallel run averages its gradients over the ranks, overlapped with the backward pass
// where it can be, as PyTorch DDP's reducer does: the C++ frontend has no DistributedDataParallel,
// so this is ours, on a Collectives process group (core/src/distributed/gradient_reducer.cpp).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dedpo/host/distributed.hpp"

namespace dedpo {

// The parameters are grouped into flattened buckets of about `bucket_bytes`, in reverse order
// (the backward pass produces the last layers' gradients first). A post-accumulate-grad hook on
// each parameter marks it ready; during an armed backward pass a bucket whose parameters are all
// ready is flattened and its all-reduce started at once, while the backward pass goes on.
// Buckets start strictly in order, so every rank issues the same collectives in the same order.
// Each bucket carries one presence flag per parameter, summed with the gradients: a gradient
// only some ranks have counts as zeros on the others, one no rank has stays undefined (the
// optimiser skips it, as on one process). Parameters outside the autograd graph (float32 masters
// of bfloat16 weights) never fire their hooks: their buckets all start in finish(), after the
// backward pass, with the same arithmetic.
class GradientReducer {
 public:
  // `parameters`: float32 leaf tensors on one device, the same list on every rank.
  GradientReducer(Collectives& collectives, std::vector<at::Tensor> parameters,
                  std::int64_t bucket_bytes);
  ~GradientReducer();  // removes the hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // The next backward pass is the step's last: its buckets are all-reduced as they fill.
  void arm();
  // After the step's backward passes: starts the buckets the backward pass did not (in order),
  // waits for every bucket and leaves each gradient the mean over the ranks; then the reducer is
  // ready for the next step (unarmed).
  void finish();
  // Buckets of the last finish() whose all-reduce started during the backward pass.
  std::size_t overlapped_buckets() const { return overlapped_; }
  std::size_t buckets() const { return buckets_.size(); }

  // The hooks' entry: parameter `index` has its gradient for this backward pass.
  void parameter_ready(std::size_t index);

 private:
  struct Bucket {
    std::vector<std::size_t> members;  // parameter indices
    std::int64_t numel = 0;            // their elements, without the presence flags
    std::size_t ready = 0;             // members ready in the armed backward pass
    at::Tensor flat;                   // gradients, then presence flags
    std::function<void()> wait;        // set once started
  };
  void start(Bucket& bucket);

  Collectives& collectives_;
  std::vector<at::Tensor> parameters_;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_;  // parameter index -> bucket
  std::size_t next_ = 0;                // the next bucket to start
  std::size_t overlapped_ = 0;
  bool armed_ = false;
};

}  // namespace dedpo
