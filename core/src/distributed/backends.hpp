#pragma once
// c10d's process groups, each built in a file of its own that alone includes its header:
// gloo_backend.cpp (ProcessGroupGloo.hpp, with Debian's Gloo headers: docs/distributed.md says why)
// and, in a CUDA build of LibTorch (DEDPO_WITH_NCCL), nccl_backend.cpp (ProcessGroupNCCL.hpp).
#include <chrono>

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace dedpo {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout);

#ifdef DEDPO_WITH_NCCL
// The group of the ranks' CUDA devices, `device` being this rank's; its communicator is made here
// (not at the first collective), so a rank that never comes fails the rendezvous.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout,
                                                    c10::Device device);
#endif

}  // namespace dedpo
