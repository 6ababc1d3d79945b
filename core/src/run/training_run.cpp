#include "run/training_run.hpp"

#include <chrono>
#include <iostream>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "dedpo/autocast.hpp"
#include "dedpo/error_message.hpp"
#include "dedpo/files.hpp"
#include "dedpo/host/accelerator.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/assemble.hpp"
#include "dedpo/host/trainer.hpp"
#include "run/caches.hpp"
#include "run/checkpoint.hpp"
#include "run/init.hpp"
#include "run/inputs.hpp"
#include "run/labelled_split.hpp"
#include "run/progress.hpp"
#include "run/run_folder.hpp"
#include "run/samples.hpp"
#include "run/services.hpp"
#include "train/trainer.hpp"

namespace dedpo {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

ComputePath run_compute_path(const Experiment& experiment) {
  return compute_path(experiment.run.device, experiment.train.precision == Precision::bf16);
}

// The stage of a data-parallel run that rank 0 does before the others (Collectives::first_done).
constexpr const char* kPreparingTheData = "preparing the run's data";

// What the trainer trains on; it must outlive the trainer, which points into it.
struct TrainingData {
  std::optional<PairDataset> pairs;
  std::optional<SampleDataset> samples;
  at::Tensor is_labelled, annotator_prob;  // preference objective
  at::Tensor condition;                    // the encoded prompts
  json report = json::object();  // results.json "data"
};

// A fresh start in a run folder: what a previous attempt of this same run left (killed before
// its first checkpoint) is forgotten; a finished run or a run of another configuration is never
// overwritten.
void start_afresh(const Experiment& experiment, const fs::path& run_dir, PluginRegistry& registry) {
  std::error_code error;
  if (fs::exists(run_dir / kResultsFile, error)) {
    throw Error(run_dir.string() + ": holds a finished run; refusing to overwrite it (give a new "
                "run folder)");
  }
  if (fs::exists(run_dir / kConfigFile, error) &&
      read_file(run_dir / kConfigFile) != experiment.resolved_toml) {
    throw Error(run_dir.string() + ": holds a run of another configuration (its " + kConfigFile +
                " differs); refusing to overwrite it (give a new run folder)");
  }
  fs::remove_all(run_dir / kCheckpointDir, error);
  fs::remove(run_dir / kMetricsFile, error);
  fs::remove_all(run_dir / kTensorBoardDir, error);
  fs::remove_all(run_dir / kSamplesDir, error);
  write_file_atomic(run_dir / kConfigFile, experiment.resolved_toml);
  write_run_inputs(run_dir, run_inputs_key(experiment, registry));
}

// The annotator's probabilities for the pairs, when the loss needs them.
at::Tensor annotator_probabilities(const Experiment& experiment, Assembly& parts,
                                   const PairDataset& pairs, const at::Tensor& is_labelled,
                                   RunServices& services, const InitialWeights& init,
                                   RunLog& log, Collectives* collectives) {
  if (!parts.loss->needs_annotator()) return {};
  if (!parts.annotator) {
    throw Error("the loss '" + experiment.loss->plugin +
                "' needs an annotator, but the experiment has no [annotator] table");
  }
  const fs::path annotator_cache = cache_dir(experiment) / "annotator";
  fs::create_directories(annotator_cache);
  AnnotatorContext context{pairs,    is_labelled,         *parts.backbone,
                           services, experiment.run.seed, annotator_cache,
                           experiment.run.device};
  return annotate_cached(experiment, *parts.annotator, context, init, log, collectives);
}

// Loads the data for the objective: for preferences, ties, the labelled split (split.csv, which
// only the rank that writes the run folder writes) and the annotations. In a data-parallel run
// rank 0 loads the data first (filling the dataset's caches) while the others wait in
// execute_run; the annotation is a collective of every rank.
void load_training_data(const Experiment& experiment, Assembly& parts, TrainingData& data,
                        RunServices& services, const InitialWeights& init, const fs::path& run_dir,
                        bool writes_run_folder, RunLog& log, Collectives* collectives) {
  const auto data_ready = [&] {
    if (collectives != nullptr) collectives->first_done(kPreparingTheData);
  };
  DatasetContext data_context{*parts.backbone, cache_dir(experiment) / "data",
                              experiment.run.seed};
  const fs::path prompt_cache = cache_dir(experiment) / "prompts";
  const TrainSettings& settings = experiment.train;
  if (settings.objective == Objective::denoising) {
    data.samples = parts.dataset->samples(data_context);
    data_ready();
    log.line(fmt::format("{} samples (denoising objective)", data.samples->size()));
    data.condition = encode_prompts_cached(*parts.backbone, data.samples->prompts, prompt_cache);
    return;
  }
  data.pairs = parts.dataset->pairs(data_context);
  PairDataset& pairs = *data.pairs;
  if (writes_run_folder) record_data_fingerprint(run_dir, pairs.fingerprint);
  const TrainingSplit split = split_for_training(pairs, settings, experiment.run.seed);
  data.is_labelled = split.is_labelled;
  if (writes_run_folder) write_split_file(run_dir / kSplitFile, pairs, data.is_labelled);
  data_ready();
  log_data_report(pairs, data.is_labelled, split.ties, settings, log, data.report);
  data.annotator_prob =
      annotator_probabilities(experiment, parts, pairs, data.is_labelled, services, init, log,
                              collectives);
  data.condition = encode_prompts_cached(*parts.backbone, pairs.prompts, prompt_cache);
}

void set_objective(const Experiment& experiment, Assembly& parts, Trainer& trainer,
                   const TrainingData& data, RunLog& log) {
  if (!data.pairs) {
    trainer.set_denoising(*data.samples, data.condition);
    return;
  }
  trainer.set_preference(*parts.loss, *data.pairs, data.is_labelled, data.annotator_prob,
                         data.condition);
  const TrainSettings& settings = experiment.train;
  if (settings.batches == BatchComposition::two_stream) {
    log.line(fmt::format("batches: two-stream, {} labelled pairs + {} from all pairs",
                         settings.labelled_batch_size,
                         settings.batch_size - settings.labelled_batch_size));
  }
}

// The run's wall time over all its sessions: the time recorded in the checkpoint it resumed from
// plus this session's.
class RunClock {
 public:
  void add_earlier_sessions(double seconds) { earlier_ = seconds; }
  double seconds() const {
    return earlier_ +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  }

 private:
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  double earlier_ = 0;
};

// Continues from the newest checkpoint that loads, after removing what killed writes left.
// The rank that writes the run folder chooses the checkpoint (rewriting `latest` when it falls
// back to an older one) and tidies the folder; the other ranks load exactly the file it chose:
// they never read `latest` while it may be rewritten, nor pick another file of their own.
void resume_from_checkpoint(const fs::path& run_dir, Trainer& trainer, RunClock& clock,
                            Collectives* collectives, bool writes_run_folder, RunLog& log) {
  ResumedCheckpoint resumed;
  if (writes_run_folder) {
    for (const fs::path& folder : {run_dir, run_dir / kCheckpointDir}) {
      for (const std::string& name : remove_abandoned_temp_files(folder)) {
        log.line("removed " + (folder / name).string() + " (left by an interrupted write)");
      }
    }
    resumed = resume_checkpoint(run_dir, trainer);
  }
  if (collectives != nullptr) {
    const std::string chosen = collectives->from_first(resumed.file.filename().string());
    if (!writes_run_folder && !chosen.empty()) {
      resumed.file = run_dir / kCheckpointDir / chosen;
      try {
        resumed.wall_time_s = load_checkpoint(resumed.file, trainer);
      } catch (const std::exception& failure) {
        throw Error(fmt::format("rank {} of {}: {}, from which rank 0 resumes, does not load "
                                "here: {}",
                                collectives->rank(), collectives->world_size(),
                                resumed.file.string(), error_message(failure)));
      }
    }
  }
  for (const std::string& skipped : resumed.skipped) {
    const std::string warning = fmt::format("skipped checkpoint {}; resuming from {}", skipped,
                                            resumed.file.filename().string());
    log.line(warning);
    std::cerr << "warning: " << (run_dir / kCheckpointDir).string() << ": " << warning << "\n";
  }
  if (!resumed.file.empty()) {
    clock.add_earlier_sessions(resumed.wall_time_s);
    log.line(fmt::format("loaded {} (step {}, {:.1f} s of earlier sessions)",
                         resumed.file.filename().string(), trainer.step_index(),
                         resumed.wall_time_s));
  } else {
    log.line("no checkpoint: starting from step 0");
  }
  if (!writes_run_folder) return;
  truncate_metrics(run_dir / kMetricsFile, trainer.step_index());
  for (const std::string& name : remove_samples_after(run_dir, trainer.step_index())) {
    log.line(fmt::format("removed {}/{}/ (left by the interrupted session)", kSamplesDir, name));
  }
}

// The evaluation at `step`: the metrics' figures; the images they scored saved in
// samples/<evaluation>/ and, with [log] tensorboard, put in the event file at `step`.
Figures evaluate_and_keep_samples(const Experiment& experiment, Assembly& parts,
                                  const PairDataset* pairs, const fs::path& run_dir,
                                  const std::string& evaluation, std::int64_t step,
                                  MetricsLog& metrics) {
  EvaluationSamples samples;
  Figures figures = evaluate_metrics(parts.metrics, *parts.backbone, pairs, experiment.eval.seed,
                                     experiment.run.device, &samples);
  samples.write(run_dir, evaluation, step, experiment.eval.seed);
  metrics.images(step, samples.tensorboard_images());
  return figures;
}

// The steps left: metrics.jsonl lines, evaluations and checkpoints on their schedules. False
// when RunControl::stop_after_steps stopped it first.
// `metrics` is null on the ranks that do not write the run folder: they neither log metrics,
// evaluate nor save checkpoints.
bool train_steps(const Experiment& experiment, Assembly& parts, Trainer& trainer,
                 const PairDataset* eval_pairs, const RunControl& control, const RunClock& clock,
                 const fs::path& run_dir, MetricsLog* metrics, RunLog& log) {
  const TrainSettings& settings = experiment.train;
  const std::int64_t eval_every = experiment.eval.every;
  std::int64_t session_steps = 0;
  ProgressBar progress(control.progress_bar, trainer.step_index(), settings.steps);
  while (trainer.step_index() < settings.steps) {
    if (control.stop_after_steps > 0 && session_steps >= control.stop_after_steps) return false;
    StepReport report = trainer.step();
    if (session_steps == 0 && report.gradient_buckets > 0) {
      log.line(fmt::format("data parallel: gradients all-reduced in {} buckets of up to {} MiB; in "
                           "the first step {} started during the backward pass",
                           report.gradient_buckets, kGradientBucketBytes >> 20,
                           report.overlapped_buckets));
    }
    ++session_steps;
    const std::int64_t step = trainer.step_index();
    const bool last = step == settings.steps;
    const bool evaluate = eval_every > 0 && step % eval_every == 0 && !last && metrics != nullptr;
    if (metrics != nullptr && (step % settings.log_every == 0 || evaluate || last || report.skipped)) {
      json line = {{"step", step},          {"loss", report.loss},
                   {"lr", report.lr},       {"grad_norm", report.grad_norm},
                   {"skipped", trainer.skipped()}, {"skipped_step", report.skipped}};
      for (const auto& [name, value] : report.diagnostics) line[name] = value;
      if (evaluate) {
        // bfloat16 weights compute under autocast, as in the training steps.
        AutocastRegion autocast(experiment.run.device.type(),
                                experiment.train.weights_dtype == WeightsDtype::bfloat16);
        Figures values = trainer.ema().with_averages([&] {
          return evaluate_and_keep_samples(experiment, parts, eval_pairs, run_dir,
                                           evaluation_name(step), step, *metrics);
        });
        for (const auto& [name, value] : values) line["eval/" + name] = value;
      }
      metrics->write(line);
    }
    if (report.skipped) {
      log.line(fmt::format("step {}: non-finite loss or gradient (loss {}, grad norm {}); "
                           "step skipped",
                           step, report.loss, report.grad_norm));
    }
    if (metrics != nullptr && settings.checkpoint_every > 0 && step % settings.checkpoint_every == 0 &&
        !last) {
      save_checkpoint(run_dir, trainer, clock.seconds());
    }
    progress.update(step, report.loss);
    if (control.after_step) control.after_step(step);
  }
  return true;
}

// The end of a run: last checkpoint, final weights (the EMA when kept), the final evaluation
// and results.json, whose presence marks the run finished.
void finish_run(const Experiment& experiment, Assembly& parts, Trainer& trainer,
                const TrainingData& data, const RunClock& clock, MetricsLog& metrics,
                RunLog& log, RunResult& result) {
  const fs::path& run_dir = result.run_dir;
  const fs::path last_checkpoint = latest_checkpoint(run_dir);
  if (last_checkpoint.empty() || last_checkpoint != checkpoint_file(run_dir, trainer)) {
    save_checkpoint(run_dir, trainer, clock.seconds());
  }
  trainer.ema().copy_averages_into_params();
  trainer.finish_weights();
  parts.backbone->save_weights(run_dir / kWeightsFile);
  result.metrics = evaluate_and_keep_samples(experiment, parts, data.pairs ? &*data.pairs : nullptr,
                                             run_dir, kFinalSamples, trainer.step_index(), metrics);
  const double wall = clock.seconds();
  json final_line = {{"step", trainer.step_index()}, {"skipped", trainer.skipped()}};
  for (const auto& [name, value] : result.metrics) final_line["eval/" + name] = value;
  metrics.write(final_line);

  const bool used_annotator = parts.loss && parts.loss->needs_annotator() && experiment.annotator;
  const MemoryPeaks peaks = memory_peaks(experiment.run.device);
  json results = {{"metrics", figures_json(result.metrics)},
                  {"device", experiment.run.device.str()},
                  {"compute", run_compute_path(experiment).description},
                  {"allocator", describe(current_allocator_policy())},
                  {"peak_rss_bytes", peaks.host_bytes},
                  {"peak_device_memory_bytes", peaks.device_bytes ? json(*peaks.device_bytes) : json(nullptr)},
                  {"steps", trainer.step_index()},
                  {"world_size", trainer.world_size()},
                  {"global_batch_size", global_batch_size(experiment.train, trainer.world_size())},
                  {"skipped_steps", trainer.skipped()},
                  {"wall_time_s", wall},
                  {"data", data.report},
                  {"titles", figure_titles(parts.metrics, result.metrics)},
                  // The annotator the loss actually used ("" when none): reports name it.
                  {"annotator", used_annotator ? experiment.annotator->plugin : std::string()},
                  {"finished", true}};
  write_file_atomic(run_dir / kResultsFile, results.dump(2) + "\n");
  result.finished = true;
  std::string summary = fmt::format("finished: {} steps, {} skipped (non-finite), {:.1f} s, peak host "
                                    "memory {:.0f} MiB",
                                    trainer.step_index(), trainer.skipped(), wall,
                                    static_cast<double>(peaks.host_bytes) / (1 << 20));
  if (peaks.device_bytes) {
    summary += fmt::format(", peak {} memory {:.0f} MiB (caching allocator)", experiment.run.device.str(),
                           static_cast<double>(*peaks.device_bytes) / (1 << 20));
  }
  for (const auto& [name, value] : result.metrics) {
    summary += fmt::format(", {} = {:.6g}", name, value);
  }
  log.line(summary);
}

// The experiment as this data-parallel rank runs it: on its own device (cuda:LOCAL_RANK on GPUs),
// made the current one so that nothing of this process lands on another rank's GPU.
Experiment on_rank_device(const Experiment& experiment, const WorldPlacement& world) {
  Experiment placed = experiment;
  try {
    placed.run.device = data_parallel_device(experiment.run.device_request, world.local_rank,
                                             available_cuda_devices());
  } catch (const Error& error) {
    const std::string file = experiment.file.empty() ? "" : experiment.file.string() + " ";
    throw Error(file + "[run]: option 'device': " + error.what());
  }
  if (placed.run.device.is_cuda()) at::accelerator::setDeviceIndex(placed.run.device.index());
  return placed;
}

}  // namespace

Figures evaluate_metrics(std::vector<std::shared_ptr<Metric>>& metrics, Backbone& backbone,
                         const PairDataset* pairs, std::uint64_t seed, c10::Device device,
                         SampleSink* samples) {
  Figures out;
  at::NoGradGuard no_grad;
  for (auto& metric : metrics) {
    MetricContext context{backbone, pairs, seed, device, samples};
    for (auto& entry : metric->evaluate(context)) out.push_back(std::move(entry));
  }
  return out;
}

json figure_titles(const std::vector<std::shared_ptr<Metric>>& metrics, const Figures& figures) {
  json titles = json::object();
  for (const auto& metric : metrics) {
    for (const auto& [name, value] : figures) {
      const std::string title = metric->title(name);
      if (title != name) titles[name] = title;
    }
  }
  return titles;
}

RunResult execute_run(const Experiment& given, PluginRegistry& registry, const RunControl& control,
                      RunStart start) {
  RunClock clock;
  const WorldPlacement& world = control.world;
  const Experiment experiment = world.distributed() ? on_rank_device(given, world) : given;
  std::unique_ptr<Collectives> collectives;
  if (world.distributed()) {
    collectives = std::make_unique<Collectives>(world, control.collective_timeout, experiment.run.device);
  }
  // Rank 0 alone writes the run folder; the others learn which folder it is from rank 0.
  const bool writes_run_folder = world.rank == 0;
  fs::path run_dir;
  std::optional<RunFolderLock> lock;
  if (writes_run_folder) {
    run_dir = make_run_dir(experiment, control);
    lock.emplace(run_dir);
    if (start == RunStart::fresh) start_afresh(experiment, run_dir, registry);
  }
  if (collectives) run_dir = collectives->from_first(run_dir.string());
  RunLog log(run_dir / (writes_run_folder ? std::string(kLogFile)
                                          : fmt::format("log-rank{}.txt", world.rank)));
  try {
    log.line((start == RunStart::resume ? "resuming " : "starting ") + run_dir.string());
    if (collectives) {
      log.line(fmt::format("data parallel: rank {} of {} ({} launch) on {} (LOCAL_RANK {}, {}); "
                           "global batch {} = {} ranks x batch_size {} x grad_accum {}",
                           world.rank, world.world_size, world.launcher,
                           experiment.run.device.str(), world.local_rank,
                           experiment.run.device.is_cuda() ? "NCCL" : "Gloo",
                           global_batch_size(experiment.train, world.world_size), world.world_size,
                           experiment.train.batch_size, experiment.train.grad_accum));
    }
    const ComputePath compute = run_compute_path(experiment);
    log.line("compute: " + compute.description + "; allocator: " + describe(current_allocator_policy()));
    if (!compute.warning.empty() && writes_run_folder) {
      log.line("warning: " + compute.warning);
      std::cerr << "dedpo: warning: " << compute.warning << "\n";
    }
    // Rank 0 prepares first (an [init] run, the data and its caches); the others then find them
    // in the caches. Annotation is shared by all ranks (load_training_data).
    if (collectives) collectives->wait_for_first(kPreparingTheData);
    const InitialWeights init = resolve_init(experiment, registry, log);
    Assembly parts = assemble(experiment, registry, init.file);
    RunServices services(experiment, registry, parts.backbone_context);
    TrainingData data;
    load_training_data(experiment, parts, data, services, init, run_dir, writes_run_folder, log,
                       collectives.get());
    Trainer trainer(*parts.backbone, experiment.train, experiment.run.device, experiment.run.seed,
                    experiment.train.steps, collectives.get());
    set_objective(experiment, parts, trainer, data, log);
    if (start == RunStart::resume) {
      resume_from_checkpoint(run_dir, trainer, clock, collectives.get(), writes_run_folder, log);
    }

    std::optional<MetricsLog> metrics;
    if (writes_run_folder) metrics.emplace(run_dir, experiment.log, trainer.step_index() + 1);
    RunResult result;
    result.run_dir = run_dir;
    const PairDataset* eval_pairs = data.pairs ? &*data.pairs : nullptr;
    const bool completed = train_steps(experiment, parts, trainer, eval_pairs, control, clock,
                                       run_dir, metrics ? &*metrics : nullptr, log);
    result.steps_done = trainer.step_index();
    result.skipped_steps = trainer.skipped();
    if (!completed) {
      log.line(fmt::format("stopped after step {} (as if killed)", trainer.step_index()));
      return result;
    }
    if (!writes_run_folder) {
      log.line(fmt::format("finished: {} steps; rank 0 saves the weights and results", trainer.step_index()));
      return result;
    }
    finish_run(experiment, parts, trainer, data, clock, *metrics, log, result);
    return result;
  } catch (const std::exception& error) {
    const std::string message = error_message(error);
    log.line("error: " + message);
    // A fresh exception made here: the caught one may live in a plugin library (its vtable and
    // message) that is unloaded when the caller's registry goes away before the catch.
    throw Error(message);
  }
}

}  // namespace dedpo
