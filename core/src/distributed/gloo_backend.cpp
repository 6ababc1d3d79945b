// ProcessGroupGloo.hpp includes Gloo's headers, which the PyTorch wheel does not ship: Debian's
// libgloo-dev (an older Gloo than the one compiled into libtorch_cpu.so) supplies them, for their
// declarations only. This file therefore calls only what libtorch_cpu.so defines (the Options and
// process group constructors, createDefaultDevice) and instantiates nothing of Gloo's own (no
// GlooStore, no algorithm): the code that touches Gloo's classes is all libtorch's.
#include "distributed/backends.hpp"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

namespace dedpo {

c10::intrusive_ptr<c10d::Backend> make_gloo_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // The host's address as its hostname resolves (or GLOO_SOCKET_IFNAME's interface).
  options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

}  // namespace dedpo
