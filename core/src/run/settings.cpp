// The core-owned experiment tables: their schemas and every rule on their values.
#include "dedpo/host/settings.hpp"

#include <algorithm>
#include <initializer_list>
#include <sstream>
#include <utility>

#include <fmt/format.h>
#include <torch/cuda.h>

#include "dedpo/loss.hpp"
#include "dedpo/option_choice.hpp"

namespace dedpo {
namespace {

using T = OptionType;

const OptionSpec kRunOptions[] = {
    {"name", T::string, "\"experiment\"", "Run name; the run folder is <output>/<name>-<n>."},
    {"seed", T::integer, "0", "Seed of everything random in the run (data split, noise, init)."},
    {"output", T::string, "\"runs\"",
     "Folder that receives run folders, relative to the experiment file."},
    {"threads", T::integer, "0", "LibTorch intra-op threads; 0 = one per core."},
    {"device", T::string, "\"auto\"",
     "\"auto\" (CUDA when the machine has it, else the CPU), \"cpu\", \"cuda\" or \"cuda:N\"."},
    {"deterministic", T::boolean, "false",
     "Deterministic kernels only (cuDNN without autotuning, cuBLAS with a fixed workspace): the same "
     "seed on the same GPU gives the same weights; an op without a deterministic kernel fails."},
    {"tf32", T::boolean, "false",
     "TF32 tensor cores for float32 matmuls and convolutions on CUDA (faster, ~3 significant digits)."},
};

const OptionSpec kTrainOptions[] = {
    {"objective", T::string, "\"preference\"",
     "\"preference\": pairs and the [loss] plugin; \"denoising\": single samples, plain "
     "diffusion loss (trains a reference model)."},
    {"steps", T::integer, "1000", "Optimiser steps."},
    {"batch_size", T::integer, "64", "Pairs (or samples) per optimiser micro-batch."},
    {"grad_accum", T::integer, "1", "Micro-batches accumulated per optimiser step."},
    {"batches", T::string, "\"pooled\"",
     "How a preference micro-batch is drawn: \"pooled\" (batch_size pairs from the loss's pool) "
     "or \"two_stream\" (labelled_batch_size pairs from the labelled pairs, the rest from all "
     "pairs: a loss's labelled mean gets a fixed share of every batch instead of the N/n_l-weighted "
     "labelled pairs a pooled batch happens to hold; docs/losses.md). Only for a loss that takes "
     "two-stream batches; any other is refused when the experiment loads."},
    {"labelled_batch_size", T::integer, "0",
     "batches = \"two_stream\": pairs of each micro-batch drawn from the labelled pairs, in "
     "[1, batch_size); the other batch_size - labelled_batch_size come from all pairs. 0 = half "
     "of batch_size, rounded up."},
    {"labelled_fraction", T::real, "1.0",
     "Fraction of the data's human labels training may use; the rest are unlabelled."},
    {"split", T::string, "\"random\"",
     "How the labelled subset is drawn: \"random\" (uniform over labelled pairs) or "
     "\"by_prompt\" (stratified: each prompt gets its share of labels, rounded). Written to the "
     "run folder's split.csv."},
    {"ties", T::string, "\"keep\"",
     "Labelled pairs whose human label is a tie (0.5): \"keep\" them as 0.5 or \"drop\" them "
     "after the split (unlabelled pairs stay, whatever their hidden label); the count is logged "
     "and in results.json."},
    {"optimizer", T::string, "\"adamw\"", "\"adamw\" or \"adafactor\"."},
    {"lr", T::real, "1e-4", "Peak learning rate."},
    {"weight_decay", T::real, "0.0", "Decoupled weight decay."},
    {"adam_beta1", T::real, "0.9", "AdamW first-moment decay."},
    {"adam_beta2", T::real, "0.999", "AdamW second-moment decay."},
    {"adam_eps", T::real, "1e-8", "AdamW epsilon."},
    {"warmup_steps", T::integer, "0", "Linear learning-rate warm-up steps."},
    {"schedule", T::string, "\"constant\"",
     "Learning rate after warm-up: \"constant\", \"linear\" or \"cosine\" decay to 0."},
    {"max_grad_norm", T::real, "0.0", "Clip the global gradient norm to this; 0 = off."},
    {"precision", T::string, "\"fp32\"", "\"fp32\" or \"bf16\" (autocast)."},
    {"weights_dtype", T::string, "\"float32\"",
     "Storage of the trainable weights: \"float32\", or \"bfloat16\" (half their memory and their "
     "gradients'; the optimiser keeps float32 master copies; needs precision = \"bf16\")."},
    {"ema_decay", T::real, "0.0", "Exponential moving average of the weights; 0 = off."},
    {"checkpoint_every", T::integer, "0", "Checkpoint every N steps; 0 = only at the end."},
    {"log_every", T::integer, "10", "Write metrics.jsonl every N steps; 0 = every step."},
};

const OptionSpec kEvalOptions[] = {
    {"seed", T::integer, "1234",
     "Evaluation seed: the same for every run, so runs are compared on the same noise."},
    {"every", T::integer, "0", "Also evaluate every N steps; 0 = only after training."},
};

const OptionSpec kInitOptions[] = {
    {"experiment", T::string, "\"\"",
     "Experiment file whose final weights initialise the backbone (and its reference); run "
     "once and cached by its resolved configuration."},
    {"weights", T::string, "\"\"", "Weights file that initialises the backbone."},
};

const OptionSpec kLogOptions[] = {
    {"tensorboard", T::boolean, "false",
     "Also write what metrics.jsonl holds as TensorBoard scalars, in <run folder>/tensorboard "
     "(`tensorboard --logdir <output>` shows the runs side by side)."},
};

const OptionSpec kReportOptions[] = {
    {"baseline", T::string, "\"\"",
     "A method line of the grid (a case name, e.g. \"dpo-25h\"): summary.md compares every method "
     "with it seed by seed (paired t-test) and the plots mark it; \"\" = no comparison."},
    {"primary", T::string, "\"\"",
     "The metric (a figure's name, e.g. \"reward\") shown first in summary.md and used for the "
     "paired comparisons; \"\" = the first figure the runs report."},
};

const OptionSpec kLauncherOptions[] = {
    {"partition", T::string, "\"\"",
     "Slurm partition of the grid's tasks (sbatch --partition); \"\" = the cluster's default."},
    {"time", T::string, "\"\"",
     "Time limit of each run (sbatch --time, e.g. \"04:00:00\" or \"1-00:00:00\"); \"\" = the "
     "partition's default."},
    {"processes", T::integer, "1",
     "Processes (data-parallel ranks) of each run, one Slurm task each (sbatch --ntasks); more "
     "than 1 starts the run as a job step (srun dedpo run) whose tasks are its ranks."},
    {"nodes", T::integer, "1",
     "Nodes of each run (sbatch --nodes); processes must be a multiple of it "
     "(--ntasks-per-node = processes / nodes)."},
    {"gpus_per_task", T::integer, "0",
     "GPUs of each process (sbatch --gpus-per-task): 0 or 1, since a dedpo process uses one "
     "device; for 8 GPUs per run set processes = 8."},
    {"cpus_per_task", T::integer, "0",
     "CPUs of each process (sbatch --cpus-per-task); 0 = the cluster's default."},
    {"memory", T::string, "\"\"",
     "Memory of each run on each of its nodes (sbatch --mem, e.g. \"64G\"); \"\" = the "
     "cluster's default."},
    {"sbatch", T::string, "\"\"",
     "More #SBATCH lines, one sbatch option per line (e.g. \"--account=lab\\n--qos=high\")."},
    {"setup", T::string, "\"\"",
     "Shell commands each task runs before its run (e.g. \"module load cuda/13.0\"); a failing "
     "command fails the task."},
};

std::int64_t positive(const Options& options, std::string_view name) {
  const std::int64_t value = options.integer(name);
  if (value <= 0) options.fail(name, "expected a positive integer, got " + std::to_string(value));
  return value;
}

std::int64_t non_negative(const Options& options, std::string_view name) {
  const std::int64_t value = options.integer(name);
  if (value < 0) {
    options.fail(name, "expected a non-negative integer, got " + std::to_string(value));
  }
  return value;
}

// The real option's value when `accepts` it, else the error names `range`.
template <class Accepts>
double real_in(const Options& options, std::string_view name, const char* range,
               Accepts accepts) {
  const double value = options.real(name);
  if (!accepts(value)) {
    options.fail(name, fmt::format("expected a number in {}, got {}", range, value));
  }
  return value;
}

std::string cuda_devices_text(int cuda_devices) {
  if (cuda_devices == 0) return "this machine has no CUDA device (LibTorch sees none)";
  if (cuda_devices == 1) return "this machine has one CUDA device, cuda:0";
  return "this machine has " + std::to_string(cuda_devices) + " CUDA devices, cuda:0 to cuda:" +
         std::to_string(cuda_devices - 1);
}

// [train] batches and labelled_batch_size, after objective and batch_size.
void read_batch_composition(const Options& train, TrainSettings& s) {
  s.batches = read_choice<BatchComposition>(
      train, "batches",
      {{"pooled", BatchComposition::pooled}, {"two_stream", BatchComposition::two_stream}});
  const std::int64_t labelled = non_negative(train, "labelled_batch_size");
  if (s.batches == BatchComposition::pooled) {
    if (labelled != 0) {
      train.fail("labelled_batch_size",
                 "applies to batches = \"two_stream\" only (batches is \"pooled\"), got " +
                     std::to_string(labelled));
    }
    return;
  }
  if (s.objective != Objective::preference) {
    train.fail("batches", "\"two_stream\" draws pairs: it needs objective = \"preference\"");
  }
  if (s.batch_size < 2) {
    train.fail("batches", "\"two_stream\" needs batch_size >= 2 (a pair for each stream), got " +
                              std::to_string(s.batch_size));
  }
  s.labelled_batch_size = labelled == 0 ? (s.batch_size + 1) / 2 : labelled;
  if (s.labelled_batch_size >= s.batch_size) {
    train.fail("labelled_batch_size",
               fmt::format("expected an integer in [1, batch_size) = [1, {}) so that both streams "
                           "draw pairs, got {}",
                           s.batch_size, labelled));
  }
}

}  // namespace

DeviceRequest parse_device(std::string_view text) {
  if (text == "auto") return {DeviceRequest::Kind::automatic, 0};
  if (text == "cpu") return {DeviceRequest::Kind::cpu, 0};
  if (text == "cuda") return {DeviceRequest::Kind::cuda, 0};
  if (text.starts_with("cuda:") && text.size() > 5 && text.size() <= 8 &&
      std::all_of(text.begin() + 5, text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return {DeviceRequest::Kind::cuda, std::stoi(std::string(text.substr(5))), true};
  }
  throw Error("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", got \"" + std::string(text) +
              "\"");
}

c10::Device resolve_device(const DeviceRequest& request, int cuda_devices) {
  switch (request.kind) {
    case DeviceRequest::Kind::automatic:
      return cuda_devices > 0 ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
    case DeviceRequest::Kind::cpu:
      return c10::Device(c10::kCPU);
    case DeviceRequest::Kind::cuda:
      if (request.index >= cuda_devices) {
        throw Error("asked for cuda:" + std::to_string(request.index) + ", but " +
                    cuda_devices_text(cuda_devices) + "; use \"auto\" or \"cpu\"");
      }
      return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(request.index));
  }
  throw Error("unknown device request");
}

c10::Device data_parallel_device(const DeviceRequest& request, int local_rank, int cuda_devices) {
  const c10::Device device = resolve_device(request, cuda_devices);
  if (!device.is_cuda()) return device;
  if (request.index_given) {
    throw Error("\"cuda:" + std::to_string(request.index) +
                "\" puts every rank on one GPU, but a data-parallel run puts each rank on its own, "
                "cuda:LOCAL_RANK; use \"cuda\" or \"auto\"");
  }
  if (cuda_devices == 1) return c10::Device(c10::kCUDA, 0);
  if (local_rank >= cuda_devices) {
    throw Error("the rank with LOCAL_RANK " + std::to_string(local_rank) +
                " has no GPU of its own (cuda:LOCAL_RANK): " + cuda_devices_text(cuda_devices) +
                "; start at most one rank per GPU on a node");
  }
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

int available_cuda_devices() {
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
}

RunSettings read_run_settings(const Options& run, int cuda_devices) {
  RunSettings settings;
  settings.name = run.string("name");
  // A name, not a path: the run folder <output>/<name>-<n> must stay inside run.output.
  if (settings.name.empty() || settings.name == "." || settings.name == ".." ||
      settings.name.find('/') != std::string::npos) {
    run.fail("name", "expected a name without '/' (not empty, '.' or '..'), got '" +
                         settings.name + "'; run.output chooses the folder");
  }
  settings.seed = static_cast<std::uint64_t>(run.integer("seed"));
  settings.output = run.string("output");
  const std::int64_t threads = non_negative(run, "threads");
  settings.threads = static_cast<int>(threads);
  try {
    settings.device_request = parse_device(run.string("device"));
    settings.device = resolve_device(settings.device_request, cuda_devices);
  } catch (const Error& error) {
    run.fail("device", error.what());
  }
  settings.deterministic = run.boolean("deterministic");
  settings.tf32 = run.boolean("tf32");
  return settings;
}

TrainSettings read_train_settings(const Options& train) {
  TrainSettings s;
  s.objective = read_choice<Objective>(
      train, "objective",
      {{"preference", Objective::preference}, {"denoising", Objective::denoising}});
  s.steps = positive(train, "steps");
  s.batch_size = positive(train, "batch_size");
  s.grad_accum = positive(train, "grad_accum");
  read_batch_composition(train, s);
  s.labelled_fraction = real_in(train, "labelled_fraction", "(0, 1]",
                                [](double v) { return v > 0.0 && v <= 1.0; });
  s.split = read_choice<LabelSplit>(
      train, "split", {{"random", LabelSplit::random}, {"by_prompt", LabelSplit::by_prompt}});
  s.ties = read_choice<TiePolicy>(train, "ties",
                                  {{"keep", TiePolicy::keep}, {"drop", TiePolicy::drop}});
  s.optimizer = read_choice<OptimizerKind>(
      train, "optimizer", {{"adamw", OptimizerKind::adamw}, {"adafactor", OptimizerKind::adafactor}});
  s.lr = real_in(train, "lr", "(0, inf)", [](double v) { return v > 0.0; });
  s.weight_decay = real_in(train, "weight_decay", "[0, inf)", [](double v) { return v >= 0.0; });
  auto unit = [](double v) { return v >= 0.0 && v < 1.0; };
  s.adam_beta1 = real_in(train, "adam_beta1", "[0, 1)", unit);
  s.adam_beta2 = real_in(train, "adam_beta2", "[0, 1)", unit);
  s.adam_eps = real_in(train, "adam_eps", "(0, inf)", [](double v) { return v > 0.0; });
  s.warmup_steps = non_negative(train, "warmup_steps");
  s.schedule = read_choice<LrSchedule>(train, "schedule",
                                       {{"constant", LrSchedule::constant},
                                        {"linear", LrSchedule::linear},
                                        {"cosine", LrSchedule::cosine}});
  s.max_grad_norm = real_in(train, "max_grad_norm", "[0, inf) (0 = off)",
                            [](double v) { return v >= 0.0; });
  s.precision = read_choice<Precision>(train, "precision",
                                       {{"fp32", Precision::fp32}, {"bf16", Precision::bf16}});
  s.ema_decay = real_in(train, "ema_decay", "[0, 1) (0 = off)", unit);
  s.weights_dtype = read_choice<WeightsDtype>(
      train, "weights_dtype", {{"float32", WeightsDtype::float32}, {"bfloat16", WeightsDtype::bfloat16}});
  if (s.weights_dtype == WeightsDtype::bfloat16 && s.precision != Precision::bf16) {
    train.fail("weights_dtype", "\"bfloat16\" needs precision = \"bf16\" (the model then computes under autocast)");
  }
  if (s.weights_dtype == WeightsDtype::bfloat16 && s.ema_decay > 0.0) {
    train.fail("weights_dtype", "\"bfloat16\" with ema_decay > 0 is not supported: the average would be kept "
                                "in the weights' 8-bit mantissa; use weights_dtype = \"float32\" with EMA");
  }
  s.checkpoint_every = non_negative(train, "checkpoint_every");
  s.log_every = std::max<std::int64_t>(1, non_negative(train, "log_every"));
  return s;
}

EvalSettings read_eval_settings(const Options& eval) {
  return {static_cast<std::uint64_t>(eval.integer("seed")), non_negative(eval, "every")};
}

InitSettings read_init_settings(const Options& init) {
  InitSettings settings{init.string("experiment"), init.string("weights")};
  if (!settings.experiment.empty() && !settings.weights.empty()) {
    init.fail("weights", "give either [init] experiment or [init] weights, not both");
  }
  return settings;
}

LogSettings read_log_settings(const Options& log) { return {log.boolean("tensorboard")}; }

ReportSettings read_report_settings(const Options& report) {
  return {report.string("baseline"), report.string("primary")};
}

LauncherSettings read_launcher_settings(const Options& launcher) {
  LauncherSettings s;
  // One line each: they are written into #SBATCH lines of the batch script.
  for (const char* key : {"partition", "time", "memory"}) {
    const std::string& value = launcher.string(key);
    if (value.find_first_of("\n\r") != std::string::npos) {
      launcher.fail(key, "expected one line, got a line break");
    }
  }
  s.partition = launcher.string("partition");
  s.time = launcher.string("time");
  s.memory = launcher.string("memory");
  s.processes = positive(launcher, "processes");
  s.nodes = positive(launcher, "nodes");
  if (s.processes % s.nodes != 0) {
    launcher.fail("processes", fmt::format("expected a multiple of nodes = {} (as many processes "
                                           "on every node), got {}",
                                           s.nodes, s.processes));
  }
  s.gpus_per_task = non_negative(launcher, "gpus_per_task");
  // A dedpo process trains on one device ([run] device): more GPUs per task would sit idle.
  if (s.gpus_per_task > 1) {
    launcher.fail("gpus_per_task",
                  fmt::format("expected 0 or 1 (a dedpo process uses one GPU), got {}; for {} GPUs "
                              "per run use processes = {} with gpus_per_task = 1",
                              s.gpus_per_task, s.gpus_per_task, s.gpus_per_task));
  }
  s.cpus_per_task = non_negative(launcher, "cpus_per_task");
  std::istringstream lines(launcher.string("sbatch"));
  std::string line;
  while (std::getline(lines, line)) {
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    line = line.substr(first, line.find_last_not_of(" \t\r") + 1 - first);
    if (!line.starts_with('-')) {
      launcher.fail("sbatch", "expected one sbatch option per line (\"--account=lab\"), got '" +
                                  line + "'");
    }
    s.sbatch_options.push_back(line);
  }
  s.setup = launcher.string("setup");
  return s;
}

void check_batches_suit_loss(const TrainSettings& train, const Loss& loss,
                             std::string_view loss_name) {
  if (train.batches != BatchComposition::two_stream || loss.takes_two_stream_batches()) return;
  const std::string why =
      loss.pool() == PairPool::labelled
          ? "it trains on the labelled pairs only, so there is no all-pairs term for a second "
            "stream"
          : "it does not say how to weigh a labelled and an all-pairs stream "
            "(Loss::takes_two_stream_batches)";
  const std::string loss_text =
      loss_name.empty() ? std::string("the loss") : fmt::format("loss '{}'", loss_name);
  throw Error(fmt::format("[train] batches = \"two_stream\": {} does not take two-stream "
                          "batches ({}); use batches = \"pooled\"",
                          loss_text, why));
}

const char* to_string(LabelSplit split) {
  return split == LabelSplit::by_prompt ? "by_prompt" : "random";
}

std::span<const OptionSpec> run_options_schema() { return kRunOptions; }
std::span<const OptionSpec> train_options_schema() { return kTrainOptions; }
std::span<const OptionSpec> eval_options_schema() { return kEvalOptions; }
std::span<const OptionSpec> init_options_schema() { return kInitOptions; }
std::span<const OptionSpec> log_options_schema() { return kLogOptions; }
std::span<const OptionSpec> report_options_schema() { return kReportOptions; }
std::span<const OptionSpec> launcher_options_schema() { return kLauncherOptions; }

}  // namespace dedpo
