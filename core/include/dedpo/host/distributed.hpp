#pragma once
// Data-parallel runs (docs/distributed.md): where this process stands in the run, read once from
// the launcher's environment (torchrun's or Slurm's variables), and the collectives the trainer
// needs, on a c10d process group (Gloo on the CPU, NCCL on CUDA) met through c10d's TCPStore.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace dedpo {

// Where the launcher put this process. One process alone (no launcher variables) has rank 0 in a
// world of 1 and needs no rendezvous.
struct WorldPlacement {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        // the rank among this node's processes (its CUDA device on GPUs)
  std::string master_addr;   // rank 0's host, where the TCPStore listens (world_size > 1)
  int master_port = 0;
  std::string launcher;      // "single", "torchrun" (RANK, ...) or "slurm" (SLURM_PROCID, ...)

  bool distributed() const { return world_size > 1; }
};

// The environment's value of a variable, or nothing when it is unset.
using EnvironmentLookup = std::function<std::optional<std::string>(const std::string& name)>;

// torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT when RANK is set; else Slurm's
// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID with MASTER_ADDR (default: the first host of
// SLURM_JOB_NODELIST) and MASTER_PORT (default kDefaultMasterPort) when SLURM_PROCID is set; else
// one process alone. Error naming the variable and what was expected for a missing, malformed or
// inconsistent value.
WorldPlacement read_world_placement(const EnvironmentLookup& environment);
WorldPlacement read_world_placement();  // from this process's environment

inline constexpr int kDefaultMasterPort = 29500;  // torchrun's default

// Gradients are all-reduced in flattened buckets of about this size (PyTorch DDP's default
// bucket_cap_mb): one collective per bucket instead of one per parameter.
inline constexpr std::int64_t kGradientBucketBytes = 25 * 1024 * 1024;

// The first host of a Slurm node list: "gpu[07-09,12],cpu1" -> "gpu07". Error when malformed.
std::string first_slurm_host(const std::string& node_list);

// A TCP port free on this host now (the kernel's pick), for a launcher's rendezvous.
int free_local_port();

// The collectives of a data-parallel run, on one c10d process group. Every call is a collective:
// every rank makes the same calls in the same order, with tensors of the same shapes.
//
// A collective that fails on a rank (a rank gone, the timeout) throws an Error naming the ranks
// that did not come: the failing ranks report to each other through the TCPStore within a few
// seconds, the silent ones died or hang, and their last begin_step() tells how far they got; an
// unreachable store means rank 0, its host, failed (docs/distributed.md). The group is unusable
// after a failure.
class Collectives {
 public:
  // Meets the other ranks at the placement's TCPStore and builds the process group of `device`,
  // where the tensors it reduces live: Gloo for the CPU, NCCL for a CUDA device (this rank's own,
  // cuda:LOCAL_RANK; a CUDA build of LibTorch only). `timeout` bounds the rendezvous and every
  // collective: a rank that dies or hangs ends the others' collectives with an Error on Gloo, and
  // ends the waiting processes on NCCL (its watchdog: docs/distributed.md), instead of a wait forever.
  Collectives(const WorldPlacement& placement, std::chrono::milliseconds timeout,
              c10::Device device = c10::Device(c10::kCPU));
  ~Collectives();
  Collectives(const Collectives&) = delete;
  Collectives& operator=(const Collectives&) = delete;

  int rank() const;
  int world_size() const;
  c10::Device device() const;

  // Records in the TCPStore that this rank begins training step `step` (counted from 1, as in
  // metrics.jsonl): one store write per step, read only when a collective fails. Not a collective.
  void begin_step(std::int64_t step);
  // Every rank's tensors (on device()) take rank 0's values (in place).
  void broadcast_from_first(const std::vector<at::Tensor>& tensors);
  // The element-wise sums over the ranks of `values` (each rank gives as many).
  std::vector<double> sum(const std::vector<double>& values);
  // `tensor` (contiguous, the same shape and dtype on every rank) becomes its element-wise sum
  // over the ranks.
  void sum_in_place(const at::Tensor& tensor);
  // The same, started: returns at once with a function that waits for the sum (an Error when a
  // rank failed). Call the waits in the order the sums were started.
  std::function<void()> start_sum_in_place(const at::Tensor& tensor,
                                           const char* collective = "all-reduce");
  // The union over the ranks of their `names`, sorted (through the TCPStore: names are few).
  std::vector<std::string> sorted_union(const std::vector<std::string>& names);
  // Rank 0's `value` on every rank (through the TCPStore).
  std::string from_first(const std::string& value);
  // Work rank 0 does before the others (filling the caches they then read): rank 0 calls
  // first_done(stage) after it, the others wait_for_first(stage) before theirs.
  void first_done(const std::string& stage);
  void wait_for_first(const std::string& stage);

 private:
  struct Group;
  std::unique_ptr<Group> group_;
};

}  // namespace dedpo
