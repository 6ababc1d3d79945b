// The collectives of a data-parallel run on c10d: TCPStore rendezvous, Gloo or NCCL process group.
#include <algorithm>
#include <exception>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "dedpo/error.hpp"
#include "dedpo/host/distributed.hpp"
#include "distributed/backends.hpp"

namespace dedpo {

namespace {

// Gradients are all-reduced in flattened buckets of about this size (PyTorch DDP's default
// bucket_cap_mb): one collective per bucket instead of one per parameter.
constexpr std::int64_t kBucketBytes = 25 * 1024 * 1024;

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

  // Waits for `work`; a failure (a rank gone, the timeout) becomes an Error saying which
  // collective failed where.
  void finish(const c10::intrusive_ptr<c10d::Work>& work, const char* collective) const {
    try {
      work->wait();
    } catch (const std::exception& failure) {
      throw Error(std::string(collective) + " failed on rank " + std::to_string(placement.rank) +
                  " of " + std::to_string(placement.world_size) + ": " + failure.what());
    }
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

void Collectives::broadcast_from_first(const std::vector<at::Tensor>& tensors) {
  at::NoGradGuard no_grad;
  for (const at::Tensor& tensor : tensors) {
    std::vector<at::Tensor> one{tensor.detach()};
    group_->finish(group_->backend->broadcast(one), "broadcast");
  }
}

void Collectives::average_gradients(const std::vector<at::Tensor>& parameters) {
  at::NoGradGuard no_grad;
  // Buckets of one dtype and device, each filled up to kBucketBytes in parameter order (the same
  // on every rank).
  std::map<std::pair<at::ScalarType, std::string>, std::vector<std::vector<at::Tensor>>> buckets;
  std::map<std::pair<at::ScalarType, std::string>, std::int64_t> filled;
  // A gradient no rank has stays undefined (the optimiser skips its parameter, as on one rank);
  // one that only some ranks have counts as zeros on the others.
  std::vector<double> has_gradient;
  for (const at::Tensor& parameter : parameters) has_gradient.push_back(parameter.grad().defined());
  const std::vector<double> ranks_with_gradient = sum(has_gradient);
  for (std::size_t k = 0; k < parameters.size(); ++k) {
    const at::Tensor& parameter = parameters[k];
    if (ranks_with_gradient[k] == 0.0) continue;
    if (!parameter.grad().defined()) parameter.mutable_grad() = at::zeros_like(parameter);
    const at::Tensor& grad = parameter.grad();
    const auto key = std::make_pair(grad.scalar_type(), grad.device().str());
    std::vector<std::vector<at::Tensor>>& list = buckets[key];
    const std::int64_t bytes = grad.numel() * static_cast<std::int64_t>(grad.element_size());
    if (list.empty() || filled[key] + bytes > kBucketBytes) {
      list.emplace_back();
      filled[key] = 0;
    }
    list.back().push_back(grad);
    filled[key] += bytes;
  }
  const double share = 1.0 / world_size();
  for (auto& [key, list] : buckets) {
    for (const std::vector<at::Tensor>& bucket : list) {
      std::vector<at::Tensor> flat;
      for (const at::Tensor& grad : bucket) flat.push_back(grad.reshape({-1}));
      std::vector<at::Tensor> joined{at::cat(flat)};
      group_->finish(group_->backend->allreduce(joined), "gradient all-reduce");
      joined[0].mul_(share);
      std::int64_t offset = 0;
      for (const at::Tensor& grad : bucket) {
        grad.copy_(joined[0].narrow(0, offset, grad.numel()).view_as(grad));
        offset += grad.numel();
      }
    }
  }
}

std::vector<double> Collectives::sum(const std::vector<double>& values) {
  // On the group's device (NCCL reduces CUDA tensors only); back on the host after the wait,
  // which orders the copy after the all-reduce.
  std::vector<at::Tensor> tensor{
      at::tensor(at::ArrayRef<double>(values), at::TensorOptions().dtype(at::kDouble)).to(device())};
  group_->finish(group_->backend->allreduce(tensor), "all-reduce");
  const at::Tensor on_host = tensor[0].cpu();
  const double* summed = on_host.data_ptr<double>();
  return std::vector<double>(summed, summed + values.size());
}

std::vector<std::string> Collectives::sorted_union(const std::vector<std::string>& names) {
  const auto key = [](std::int64_t call, int rank) {
    return "dedpo/union/" + std::to_string(call) + "/" + std::to_string(rank);
  };
  const std::int64_t call = group_->unions++;
  std::string joined;
  for (const std::string& name : names) joined += name + "\n";
  c10d::Store& store = *group_->store;
  store.set(key(call, rank()), std::vector<std::uint8_t>(joined.begin(), joined.end()));
  std::vector<std::string> all;
  for (int r = 0; r < world_size(); ++r) {
    const std::vector<std::uint8_t> value = store.get(key(call, r));  // waits for rank r's
    std::istringstream lines(std::string(value.begin(), value.end()));
    for (std::string name; std::getline(lines, name);) all.push_back(name);
  }
  // Every rank has read the keys of call - 2: it set its call - 1 key after reading them.
  if (call >= 2) store.deleteKey(key(call - 2, rank()));
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return all;
}

std::string Collectives::from_first(const std::string& value) {
  const std::string key = "dedpo/shared/" + std::to_string(group_->shared++);
  if (rank() == 0) {
    group_->store->set(key, std::vector<std::uint8_t>(value.begin(), value.end()));
    return value;
  }
  const std::vector<std::uint8_t> first = group_->store->get(key);
  return std::string(first.begin(), first.end());
}

void Collectives::first_done(const std::string& stage) {
  if (rank() == 0) group_->store->set("dedpo/done/" + stage, std::vector<std::uint8_t>{1});
}

void Collectives::wait_for_first(const std::string& stage) {
  if (rank() == 0) return;
  try {
    group_->store->wait({"dedpo/done/" + stage}, group_->timeout);
  } catch (const std::exception& failure) {
    throw Error("rank " + std::to_string(rank()) + " waited " +
                std::to_string(group_->timeout.count()) + " ms for rank 0 to finish " + stage +
                " (raise the collective timeout if rank 0 is still working): " + failure.what());
  }
}

}  // namespace dedpo
