#pragma once
// The core's own experiment tables ([run], [train], [eval], [init], [log], [report], [launcher]) as typed
// settings. Each is read and checked once, when the experiment loads (core/src/run/settings.cpp owns every
// rule), so the run never compares strings or checks a range again.
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <c10/core/Device.h>

#include "dedpo/options.hpp"

namespace dedpo {

class Loss;

// The tables' schemas (shown by `dedpo plugins show run|train|eval|init|log|report|launcher`).
std::span<const OptionSpec> run_options_schema();
std::span<const OptionSpec> train_options_schema();
std::span<const OptionSpec> eval_options_schema();
std::span<const OptionSpec> init_options_schema();
std::span<const OptionSpec> log_options_schema();
std::span<const OptionSpec> report_options_schema();
std::span<const OptionSpec> launcher_options_schema();

// [run] device as written: "auto" (CUDA when this machine has it, else the CPU), "cpu", "cuda"
// (the first CUDA device) or "cuda:N".
struct DeviceRequest {
  enum class Kind { automatic, cpu, cuda };
  Kind kind = Kind::automatic;
  int index = 0;             // for cuda
  bool index_given = false;  // "cuda:N" rather than "cuda"
};
// Error naming the accepted forms when `text` is none of them.
DeviceRequest parse_device(std::string_view text);
// The device a request gets on a machine with `cuda_devices` CUDA devices; an Error that names
// the device asked for and what the machine has when it cannot be had.
c10::Device resolve_device(const DeviceRequest& request, int cuda_devices);
// The device of a data-parallel rank (docs/distributed.md): the request's, except that CUDA
// ("cuda", or "auto" on a machine with GPUs) is the rank's own GPU, cuda:`local_rank` (LOCAL_RANK),
// or cuda:0 where the process sees a single GPU (its launcher gave each rank one, as Slurm's
// --gpus-per-task does). An Error for "cuda:N" (one GPU for every rank) and for a local rank past
// the GPUs the process sees.
c10::Device data_parallel_device(const DeviceRequest& request, int local_rank, int cuda_devices);
// The CUDA devices LibTorch sees here (0 without CUDA).
int available_cuda_devices();

struct RunSettings {
  std::string name;               // run folders are <output>/<name>-<n>
  std::uint64_t seed = 0;
  std::filesystem::path output;   // absolute
  int threads = 0;                // LibTorch intra-op threads; 0 = one per core
  c10::Device device = c10::Device(c10::kCPU);  // resolved on this machine
  DeviceRequest device_request;                 // as written (a data-parallel rank's device)
  bool deterministic = false;     // deterministic kernels only (dedpo/host/accelerator.hpp)
  bool tf32 = false;              // TF32 tensor cores for float32 matmuls and convolutions on CUDA
};

enum class Objective { preference, denoising };
enum class OptimizerKind { adamw, adafactor };
enum class LrSchedule { constant, linear, cosine };
enum class Precision { fp32, bf16 };
enum class WeightsDtype { float32, bfloat16 };
enum class LabelSplit { random, by_prompt };
enum class TiePolicy { keep, drop };
// How a preference micro-batch is drawn (docs/losses.md §3): `pooled` = batch_size pairs from the
// loss's pool; `two_stream` = labelled_batch_size pairs from the labelled pairs, then the rest of
// batch_size from all pairs, each stream through its own pool.
enum class BatchComposition { pooled, two_stream };

struct TrainSettings {
  Objective objective = Objective::preference;
  std::int64_t steps = 1;
  std::int64_t batch_size = 1;
  std::int64_t grad_accum = 1;
  BatchComposition batches = BatchComposition::pooled;
  std::int64_t labelled_batch_size = 0;  // two_stream: the labelled stream's pairs; 0 when pooled
  double labelled_fraction = 1.0;  // in (0, 1]
  LabelSplit split = LabelSplit::random;
  TiePolicy ties = TiePolicy::keep;
  OptimizerKind optimizer = OptimizerKind::adamw;
  double lr = 1e-4;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  std::int64_t warmup_steps = 0;
  LrSchedule schedule = LrSchedule::constant;
  double max_grad_norm = 0.0;  // 0 = no clipping
  Precision precision = Precision::fp32;
  WeightsDtype weights_dtype = WeightsDtype::float32;  // bfloat16: float32 masters in the optimiser
  double ema_decay = 0.0;      // 0 = no EMA
  std::int64_t checkpoint_every = 0;  // 0 = only at the end
  std::int64_t log_every = 1;
};

struct EvalSettings {
  std::uint64_t seed = 0;
  std::int64_t every = 0;  // 0 = only after training
};

// Where the backbone's initial weights come from; both empty = the backbone's own.
struct InitSettings {
  std::filesystem::path experiment;  // absolute: an experiment whose trained weights are used
  std::filesystem::path weights;     // absolute: a weights file
};

// How a run reports, beside metrics.jsonl (which every run writes).
struct LogSettings {
  bool tensorboard = false;  // TensorBoard event files in <run>/tensorboard
};

// [report]: how a grid's report (summary.md, plots) presents its runs. Not part of a run's
// configuration: changing it makes no run stale. Names are checked against the grid when it
// starts (baseline) and against the runs' figures when the report is written (primary).
struct ReportSettings {
  std::string baseline;  // a method line of the grid ("dpo-25h"); empty = no paired comparisons
  std::string primary;   // the metric shown first and compared; empty = the first the runs report
};

// [launcher]: the resources of each run of a grid submitted to Slurm (`dedpo grid --launcher
// slurm`, docs/distributed.md). Not part of a run's configuration: changing it makes no run stale.
struct LauncherSettings {
  std::string partition;  // empty: the cluster's default
  std::string time;       // Slurm's time format; empty: the partition's default
  std::int64_t processes = 1;  // data-parallel ranks of each run, one Slurm task each
  std::int64_t nodes = 1;      // processes is a multiple of it
  std::int64_t gpus_per_task = 0;  // per process: 0 or 1
  std::int64_t cpus_per_task = 0;  // per process; 0: the cluster's default
  std::string memory;              // empty: the cluster's default
  std::vector<std::string> sbatch_options;  // more #SBATCH lines, each one option ("--qos=high")
  std::string setup;                        // shell commands run before each run
};

// Each throws Options::fail's "<where>: option '<name>': <problem>" for a bad value.
RunSettings read_run_settings(const Options& run, int cuda_devices);
TrainSettings read_train_settings(const Options& train);
EvalSettings read_eval_settings(const Options& eval);
InitSettings read_init_settings(const Options& init);
LogSettings read_log_settings(const Options& log);
ReportSettings read_report_settings(const Options& report);
LauncherSettings read_launcher_settings(const Options& launcher);

// Throws Error when [train] batches = "two_stream" and `loss` (named `loss_name`, or "the loss"
// when empty) does not take two-stream batches (Loss::takes_two_stream_batches), saying why and
// what to use instead.
void check_batches_suit_loss(const TrainSettings& train, const Loss& loss,
                             std::string_view loss_name);

// The option's spelling, for logs.
const char* to_string(LabelSplit split);

}  // namespace dedpo
