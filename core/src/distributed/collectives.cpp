// The collectives of a data-parallel run on c10d: TCPStore rendezvous, Gloo or NCCL process group.
#include <algorithm>
#include <exception>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "dedpo/error.hpp"
#include "dedpo/error_message.hpp"
#include "dedpo/host/distributed.hpp"
#include "distributed/backends.hpp"

namespace dedpo {

namespace {

// How long a rank whose collective failed waits for the others to report their failure (at most;
// the collective timeout when shorter). The ranks still alive fail within moments of each other
// (a connection closed, the same timeout), so the ranks that stay silent died or hang.
constexpr std::chrono::milliseconds kAnswerWait{5000};
constexpr std::chrono::milliseconds kPollInterval{20};

std::vector<std::uint8_t> to_bytes(const std::string& text) { return {text.begin(), text.end()}; }
std::string from_bytes(const std::vector<std::uint8_t>& bytes) {
  return {bytes.begin(), bytes.end()};
}

std::string progress_key(int rank) { return "dedpo/progress/" + std::to_string(rank); }

// The process group for tensors on `device`.
c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                               const WorldPlacement& placement,
                                               std::chrono::milliseconds timeout, c10::Device device) {
  if (device.is_cpu()) return make_gloo_backend(store, placement.rank, placement.world_size, timeout);
  if (device.is_cuda()) {
#ifdef DEDPO_WITH_NCCL
    return make_nccl_backend(store, placement.rank, placement.world_size, timeout, device);
#else
    throw Error("data-parallel runs on " + device.str() + " need NCCL, which this build lacks: "
                "its LibTorch is not a CUDA build");
#endif
  }
  throw Error("data-parallel runs have no process group for " + device.str() +
              " (Gloo for the CPU, NCCL for CUDA)");
}

}  // namespace

struct Collectives::Group {
  WorldPlacement placement;
  c10::Device device = c10::Device(c10::kCPU);  // where the reduced tensors live
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  std::int64_t unions = 0;  // sorted_union calls so far: each has its own store keys
  std::int64_t shared = 0;  // from_first calls so far
  // Where this rank is: the collectives it entered (every rank makes the same calls, so the
  // numbers agree across ranks), the one it is in, and the training step (0: before training).
  std::int64_t entered = 0;
  std::string collective;
  std::int64_t step = 0;
  std::int64_t failures = 0;  // failure exchanges so far: each has its own store keys

  void enter(std::string name) {
    ++entered;
    collective = std::move(name);
  }

  std::string position() const {
    std::string text = fmt::format("collective #{} ({}", entered, collective);
    if (step > 0) text += fmt::format(", step {}", step);
    return text + ")";
  }

  // Waits for `work`; a failure (a rank gone, the timeout) becomes fail()'s Error.
  void finish(const c10::intrusive_ptr<c10d::Work>& work) {
    try {
      work->wait();
    } catch (const std::exception& failure) {
      fail(failure);
    }
  }

  // An Error saying which collective failed where and, found through the TCPStore, which ranks
  // did not come to it.
  [[noreturn]] void fail(const std::exception& failure, const std::string& hint = "") {
    throw Error(fmt::format("{} failed on rank {} of {}: {}; {}{}", position(), placement.rank,
                            placement.world_size, missing_ranks(), error_message(failure), hint));
  }

  // Every rank whose collective fails says so in the store and waits a short, bounded time for
  // the others to say the same: the ranks that stay silent are the failed ones, and their last
  // recorded step tells how far they got. Rank 0 hosts the store: when it is unreachable, rank 0
  // is the one that failed.
  std::string missing_ranks() {
    const int world = placement.world_size;
    const std::chrono::milliseconds wait = std::min(timeout, kAnswerWait);
    const std::string prefix = fmt::format("dedpo/failure/{}/", failures++);
    const auto answer_key = [&](int rank) { return prefix + std::to_string(rank); };
    const std::string answers = prefix + "answers", read = prefix + "read";
    const auto poll_until = [](std::chrono::steady_clock::time_point deadline, const auto& done) {
      while (!done() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(kPollInterval);
      }
    };
    try {
      const auto start = std::chrono::steady_clock::now();
      store->set(answer_key(placement.rank), to_bytes(position()));
      store->add(answers, 1);
      poll_until(start + wait, [&] { return store->add(answers, 0) >= world; });
      std::vector<std::string> silent, elsewhere;
      for (int rank = 0; rank < world; ++rank) {
        if (rank == placement.rank) continue;
        if (store->check({answer_key(rank)})) {
          // A rank that failed at another collective (one step ahead when a peer died mid-way).
          const std::string its = from_bytes(store->get(answer_key(rank)));
          if (its != position()) {
            elsewhere.push_back(fmt::format("rank {} failed at {}", rank, its));
          }
          continue;
        }
        const std::string progress =
            store->check({progress_key(rank)})
                ? "it last " + from_bytes(store->get(progress_key(rank)))
                : "it began no training step";
        silent.push_back(fmt::format("rank {} of {} did not answer within {:g} s (it died or "
                                     "hangs; {})",
                                     rank, world, static_cast<double>(wait.count()) / 1000,
                                     progress));
      }
      store->add(read, 1);
      // The store goes when rank 0 ends: it stays until the ranks that answered have read it.
      if (placement.rank == 0) {
        poll_until(std::chrono::steady_clock::now() + wait,
                   [&] { return store->add(read, 0) >= store->add(answers, 0); });
      }
      std::vector<std::string> parts = silent;
      if (parts.empty()) parts.push_back("every rank answered (none died or hangs)");
      parts.insert(parts.end(), elsewhere.begin(), elsewhere.end());
      std::string text = parts.front();
      for (std::size_t k = 1; k < parts.size(); ++k) text += "; " + parts[k];
      return text;
    } catch (const std::exception& failure) {
      return store_unreachable(failure);
    }
  }

  std::string store_unreachable(const std::exception& failure) const {
    return fmt::format("the TCPStore on rank 0 ({}:{}) is unreachable ({}): rank 0 failed",
                       placement.master_addr, placement.master_port, error_message(failure));
  }
};

Collectives::Collectives(const WorldPlacement& placement, std::chrono::milliseconds timeout,
                         c10::Device device)
    : group_(std::make_unique<Group>()) {
  group_->placement = placement;
  group_->device = device;
  group_->timeout = timeout;
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(placement.master_port);
  options.isServer = placement.rank == 0;
  options.numWorkers = static_cast<std::size_t>(placement.world_size);
  options.timeout = timeout;
  const std::string where = placement.master_addr + ":" + std::to_string(placement.master_port);
  try {
    group_->store = c10::make_intrusive<c10d::TCPStore>(placement.master_addr, options);
    group_->backend = make_backend(group_->store, placement, timeout, device);
  } catch (const Error&) {
    throw;  // ours: no process group for the device
  } catch (const std::exception& failure) {
    throw Error("rank " + std::to_string(placement.rank) + " of " +
                std::to_string(placement.world_size) + " could not meet the others at " + where +
                " (MASTER_ADDR:MASTER_PORT) within " + std::to_string(timeout.count()) +
                " ms: " + failure.what());
  }
}

Collectives::~Collectives() = default;

int Collectives::rank() const { return group_->placement.rank; }
int Collectives::world_size() const { return group_->placement.world_size; }
c10::Device Collectives::device() const { return group_->device; }

void Collectives::begin_step(std::int64_t step) {
  group_->step = step;
  try {
    // A write the store does not answer: cheap enough once per step.
    const std::string progress = fmt::format("began step {} after collective #{}", step,
                                             group_->entered);
    group_->store->set(progress_key(rank()), to_bytes(progress));
  } catch (const std::exception& failure) {
    throw Error(fmt::format("rank {} of {} could not record step {}: {}", rank(), world_size(),
                            step, group_->store_unreachable(failure)));
  }
}

void Collectives::broadcast_from_first(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;
  group_->enter("broadcast");
  for (const at::Tensor& tensor : tensors) {
    std::vector<at::Tensor> one{tensor.detach()};
    group_->finish(group_->backend->broadcast(one));
  }
}

std::vector<double> Collectives::sum(const std::vector<double>& values) {
  // On the group's device (NCCL reduces CUDA tensors only); back on the host after the wait,
  // which orders the copy after the all-reduce.
  std::vector<at::Tensor> tensor{
      at::tensor(at::ArrayRef<double>(values), at::TensorOptions().dtype(at::kDouble)).to(device())};
  group_->enter("all-reduce");
  group_->finish(group_->backend->allreduce(tensor));
  const at::Tensor on_host = tensor[0].cpu();
  const double* summed = on_host.data_ptr<double>();
  return std::vector<double>(summed, summed + values.size());
}

void Collectives::sum_in_place(const at::Tensor& tensor) {
  // On the group's device (NCCL reduces CUDA tensors only), then back where it was.
  const at::Tensor on_device = tensor.to(device());
  start_sum_in_place(on_device)();
  if (!on_device.is_same(tensor)) tensor.copy_(on_device);
}

std::function<void()> Collectives::start_sum_in_place(const at::Tensor& tensor,
                                                      const char* collective) {
  std::vector<at::Tensor> one{tensor};
  group_->enter(collective);
  c10::intrusive_ptr<c10d::Work> work = group_->backend->allreduce(one);
  return [group = group_.get(), work] { group->finish(work); };
}

std::vector<std::string> Collectives::sorted_union(const std::vector<std::string>& names) {
  const auto key = [](std::int64_t call, int rank) {
    return "dedpo/union/" + std::to_string(call) + "/" + std::to_string(rank);
  };
  const std::int64_t call = group_->unions++;
  group_->enter("union of names");
  std::string joined;
  for (const std::string& name : names) joined += name + "\n";
  c10d::Store& store = *group_->store;
  std::vector<std::string> all;
  try {
    store.set(key(call, rank()), to_bytes(joined));
    for (int r = 0; r < world_size(); ++r) {
      // Waits for rank r's, up to the collective timeout.
      std::istringstream lines(from_bytes(store.get(key(call, r))));
      for (std::string name; std::getline(lines, name);) all.push_back(name);
    }
    // Every rank has read the keys of call - 2: it set its call - 1 key after reading them.
    if (call >= 2) store.deleteKey(key(call - 2, rank()));
  } catch (const std::exception& failure) {
    group_->fail(failure);
  }
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return all;
}

std::string Collectives::from_first(const std::string& value) {
  const std::string key = "dedpo/shared/" + std::to_string(group_->shared++);
  group_->enter("value from rank 0");
  try {
    if (rank() == 0) {
      group_->store->set(key, to_bytes(value));
      return value;
    }
    return from_bytes(group_->store->get(key));
  } catch (const std::exception& failure) {
    group_->fail(failure);
  }
}

void Collectives::first_done(const std::string& stage) {
  if (rank() == 0) group_->store->set("dedpo/done/" + stage, to_bytes("1"));
}

void Collectives::wait_for_first(const std::string& stage) {
  group_->enter("waiting while rank 0 is " + stage);
  if (rank() == 0) return;
  try {
    group_->store->wait({"dedpo/done/" + stage}, group_->timeout);
  } catch (const std::exception& failure) {
    group_->fail(failure, fmt::format(". Rank {} waited {} ms for rank 0 to finish {}: raise the "
                                      "collective timeout if rank 0 is still working",
                                      rank(), group_->timeout.count(), stage));
  }
}

}  // namespace dedpo
