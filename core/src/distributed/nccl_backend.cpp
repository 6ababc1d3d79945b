// c10d's NCCL process group, for CUDA runs; compiled only against a CUDA build of LibTorch, with
// USE_C10D_NCCL and the nccl.h of the NCCL that torch pins (core/CMakeLists.txt). Like
// gloo_backend.cpp, it only calls what libtorch_cuda.so defines: the constructors and the eager
// connection.
#include "distributed/backends.hpp"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

namespace dedpo {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout,
                                                    c10::Device device) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  // NCCL's collectives return before they run; the group's watchdog thread ends the process when
  // one runs longer than this (docs/distributed.md, "Timeouts and failures").
  options->timeout = timeout;
  auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
  group->setBoundDeviceId(device);
  group->eagerConnectSingleDevice(device);
  return group;
}

}  // namespace dedpo
