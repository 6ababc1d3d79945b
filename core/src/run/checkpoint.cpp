#include "run/checkpoint.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/module.h>
#include <torch/serialize/archive.h>

#include "dedpo/error_message.hpp"
#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

constexpr const char* kLatestFile = "latest";
constexpr const char* kModel = "model";
// The run's wall time up to the checkpoint, over all its sessions; beside the trainer's state.
constexpr const char* kWallTime = "wall_time_s";

std::string checkpoint_name(std::int64_t step) { return fmt::format("step-{:08d}.pt", step); }

// The checkpoint files of `folder` older than `name`, oldest first.
std::vector<std::string> checkpoints_before(const fs::path& folder, const std::string& name) {
  std::vector<std::string> older;
  for (const auto& entry : fs::directory_iterator(folder)) {
    std::string file = entry.path().filename().string();
    if (file.starts_with("step-") && file.ends_with(".pt") && file < name) older.push_back(file);
  }
  std::sort(older.begin(), older.end());
  return older;
}

// Keeps the newest two checkpoints of `folder`, the newest being `newest`.
void remove_old_checkpoints(const fs::path& folder, const std::string& newest) {
  const std::vector<std::string> old = checkpoints_before(folder, newest);
  for (std::size_t i = 0; i + 1 < old.size(); ++i) fs::remove(folder / old[i]);
}

// The checkpoint `latest` names, then the older ones of the folder, newest first.
std::vector<std::string> resume_candidates(const fs::path& folder, const std::string& latest) {
  std::vector<std::string> candidates = checkpoints_before(folder, latest);
  candidates.push_back(latest);
  std::reverse(candidates.begin(), candidates.end());
  return candidates;
}

// The name `latest` holds; empty when the pointer is missing (no checkpoint was completed).
std::string latest_name(const fs::path& run_dir) {
  fs::path pointer = run_dir / kCheckpointDir / kLatestFile;
  std::error_code error;
  if (!fs::exists(pointer, error)) return {};
  std::string name = read_file(pointer);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.empty() || fs::path(name).filename() != name) {
    throw Error(pointer.string() + ": names no checkpoint file ('" + name + "')");
  }
  return name;
}

}  // namespace

void Trainer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("step", c10::IValue(step_));
  archive.write("skipped", c10::IValue(skipped_));
  archive.write("world_size", c10::IValue(static_cast<std::int64_t>(world_size_)));
  torch::serialize::OutputArchive model;
  backbone_.model().save(model);
  archive.write(kModel, model);
  masters_.save(archive);
  torch::serialize::OutputArchive optimizer;
  optimizer_->save(optimizer);
  archive.write("optimizer", optimizer);
  ema_.save(archive);
  if (pairs_ != nullptr) {
    pair_batches_.save(archive);
  } else {
    torch::serialize::OutputArchive sampler;
    samples_order_.save(sampler);
    archive.write("sampler", sampler);
  }
  std::vector<double> loss_state = loss_ != nullptr ? loss_->state() : std::vector<double>{};
  archive.write("loss_state",
                at::tensor(at::ArrayRef<double>(loss_state), at::kDouble).reshape({-1}), true);
}

void Trainer::load(torch::serialize::InputArchive& archive) {
  c10::IValue value;
  archive.read("step", value);
  step_ = value.toInt();
  archive.read("skipped", value);
  skipped_ = value.toInt();
  // The global batch and each rank's share of the data depend on the number of processes.
  const std::int64_t saved_world = archive.try_read("world_size", value) ? value.toInt() : 1;
  if (saved_world != world_size_) {
    throw Error(fmt::format("written by a run on {} process(es); resume it on {} (dedpo run --nproc "
                            "{} --resume), not on {}: the global batch and each rank's share of the "
                            "data depend on the number of processes",
                            saved_world, saved_world, saved_world, world_size_));
  }
  torch::serialize::InputArchive model;
  archive.read(kModel, model);
  backbone_.model().load(model);
  masters_.load(archive);
  torch::serialize::InputArchive optimizer;
  archive.read("optimizer", optimizer);
  optimizer_->load(optimizer);
  ema_.load(archive);
  if (pairs_ != nullptr) {
    pair_batches_.load(archive);
  } else {
    torch::serialize::InputArchive sampler;
    archive.read("sampler", sampler);
    samples_order_.load(sampler);
  }
  at::Tensor loss_state;
  archive.read("loss_state", loss_state, true);
  if (loss_ != nullptr) {
    loss_state = loss_state.contiguous().to(at::kDouble);
    const double* data = loss_state.data_ptr<double>();
    loss_->load_state(std::vector<double>(data, data + loss_state.numel()));
  }
}

fs::path latest_checkpoint(const fs::path& run_dir) {
  const std::string name = latest_name(run_dir);
  if (name.empty()) return {};
  fs::path file = run_dir / kCheckpointDir / name;
  std::error_code error;
  if (!fs::exists(file, error)) {
    throw Error((run_dir / kCheckpointDir / kLatestFile).string() + ": names " + name +
                ", which does not exist");
  }
  return file;
}

fs::path checkpoint_file(const fs::path& run_dir, const Trainer& trainer) {
  return run_dir / kCheckpointDir / checkpoint_name(trainer.step_index());
}

void save_checkpoint(const fs::path& run_dir, const Trainer& trainer, double wall_time_s) {
  fs::path folder = run_dir / kCheckpointDir;
  fs::create_directories(folder);
  const std::string name = checkpoint_name(trainer.step_index());
  fs::path file = folder / name;
  fs::path temp = temp_path_for(file);
  {
    torch::serialize::OutputArchive archive;
    trainer.save(archive);
    archive.write(kWallTime, c10::IValue(wall_time_s));
    archive.save_to(temp.string());
  }
  commit_file(temp, file);
  write_file_atomic(folder / kLatestFile, name + "\n");
  remove_old_checkpoints(folder, name);
}

double load_checkpoint(const fs::path& file, Trainer& trainer) {
  // The whole file is read and checked before any of it reaches the trainer.
  torch::serialize::InputArchive archive;
  archive.load_from(file.string());
  trainer.load(archive);
  c10::IValue wall_time;
  return archive.try_read(kWallTime, wall_time) ? wall_time.toDouble() : 0.0;
}

ResumedCheckpoint resume_checkpoint(const fs::path& run_dir, Trainer& trainer) {
  ResumedCheckpoint resumed;
  const std::string latest = latest_name(run_dir);
  if (latest.empty()) return resumed;
  const fs::path folder = run_dir / kCheckpointDir;
  for (const std::string& name : resume_candidates(folder, latest)) {
    const fs::path file = folder / name;
    std::error_code error;
    if (!fs::exists(file, error)) {
      resumed.skipped.push_back(name + ": does not exist");
      continue;
    }
    try {
      resumed.wall_time_s = load_checkpoint(file, trainer);
    } catch (const std::exception& failure) {
      resumed.skipped.push_back(name + ": " + error_message(failure));
      continue;
    }
    resumed.file = file;
    // `latest` names what the run continues from, so a checkpoint that did not load is never
    // taken for the run's final one; training overwrites it when it reaches that step again.
    if (name != latest) write_file_atomic(folder / kLatestFile, name + "\n");
    return resumed;
  }
  std::string reasons;
  for (const std::string& skipped : resumed.skipped) reasons += "; " + skipped;
  throw Error(folder.string() + ": no checkpoint loads" + reasons +
              " (start the run afresh with `dedpo run`)");
}

void load_trained_model(const fs::path& run_dir, Backbone& backbone) {
  const fs::path checkpoint = latest_checkpoint(run_dir);
  if (checkpoint.empty()) {
    throw Error(run_dir.string() + ": no final checkpoint in " + kCheckpointDir);
  }
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(checkpoint.string());
  } catch (const std::exception& error) {
    throw Error(checkpoint.string() + ": the run's final checkpoint does not load: " +
                error_message(error));
  }
  torch::serialize::InputArchive model;
  archive.read(kModel, model);
  if (MasterWeights::saved_in(archive)) {
    // The run stored its trainable weights in bfloat16: load them as such, then take the masters.
    at::NoGradGuard no_grad;
    for (at::Tensor& p : trainable_parameters(backbone)) p.set_data(p.detach().to(at::kBFloat16));
  }
  backbone.model().load(model);
  MasterWeights::restore_masters(archive, trainable_parameters(backbone));
  Ema::restore_averages(archive, trainable_parameters(backbone), checkpoint.string());
}

}  // namespace dedpo
