#pragma once
// c10d's Gloo process group, built here alone (gloo_backend.cpp is the one file that includes
// ProcessGroupGloo.hpp: docs/distributed.md says why).
#include <chrono>

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace dedpo {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout);

}  // namespace dedpo
