#include "run/checkpoint.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/module.h>
#include <torch/serialize/archive.h>

#include "dedpo/files.hpp"
#include "dedpo/host/trainer.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

constexpr const char* kLatestFile = "latest";
constexpr const char* kModel = "model";

std::string checkpoint_name(std::int64_t step) { return fmt::format("step-{:08d}.pt", step); }

// Keeps the newest two checkpoints of `folder`, the newest being `newest`.
void remove_old_checkpoints(const fs::path& folder, const std::string& newest) {
  std::vector<fs::path> old;
  for (const auto& entry : fs::directory_iterator(folder)) {
    std::string name = entry.path().filename().string();
    if (name.starts_with("step-") && name.ends_with(".pt") && name < newest) {
      old.push_back(entry.path());
    }
  }
  std::sort(old.begin(), old.end());
  for (std::size_t i = 0; i + 1 < old.size(); ++i) fs::remove(old[i]);
}

}  // namespace

void Trainer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("step", c10::IValue(step_));
  archive.write("skipped", c10::IValue(skipped_));
  torch::serialize::OutputArchive model;
  backbone_.model().save(model);
  archive.write(kModel, model);
  masters_.save(archive);
  torch::serialize::OutputArchive optimizer;
  optimizer_->save(optimizer);
  archive.write("optimizer", optimizer);
  ema_.save(archive);
  archive.write("noise_generator", noise_.get_state(), true);
  torch::serialize::OutputArchive sampler;
  sampler_.save(sampler);
  archive.write("sampler", sampler);
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
  torch::serialize::InputArchive model;
  archive.read(kModel, model);
  backbone_.model().load(model);
  masters_.load(archive);
  torch::serialize::InputArchive optimizer;
  archive.read("optimizer", optimizer);
  optimizer_->load(optimizer);
  ema_.load(archive);
  at::Tensor state;
  archive.read("noise_generator", state, true);
  noise_.set_state(state);
  torch::serialize::InputArchive sampler;
  archive.read("sampler", sampler);
  sampler_.load(sampler);
  at::Tensor loss_state;
  archive.read("loss_state", loss_state, true);
  if (loss_ != nullptr) {
    loss_state = loss_state.contiguous().to(at::kDouble);
    const double* data = loss_state.data_ptr<double>();
    loss_->load_state(std::vector<double>(data, data + loss_state.numel()));
  }
}

fs::path latest_checkpoint(const fs::path& run_dir) {
  fs::path pointer = run_dir / kCheckpointDir / kLatestFile;
  std::error_code error;
  if (!fs::exists(pointer, error)) return {};
  std::string name = read_file(pointer);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  fs::path file = run_dir / kCheckpointDir / name;
  if (name.empty() || !fs::exists(file, error)) {
    throw Error(pointer.string() + ": names a checkpoint that does not exist");
  }
  return file;
}

fs::path checkpoint_file(const fs::path& run_dir, const Trainer& trainer) {
  return run_dir / kCheckpointDir / checkpoint_name(trainer.step_index());
}

void save_checkpoint(const fs::path& run_dir, const Trainer& trainer) {
  fs::path folder = run_dir / kCheckpointDir;
  fs::create_directories(folder);
  const std::string name = checkpoint_name(trainer.step_index());
  fs::path file = folder / name;
  fs::path temp = temp_path_for(file);
  {
    torch::serialize::OutputArchive archive;
    trainer.save(archive);
    archive.save_to(temp.string());
  }
  commit_file(temp, file);
  write_file_atomic(folder / kLatestFile, name + "\n");
  remove_old_checkpoints(folder, name);
}

void load_checkpoint(const fs::path& file, Trainer& trainer) {
  torch::serialize::InputArchive archive;
  archive.load_from(file.string());
  trainer.load(archive);
}

void load_trained_model(const fs::path& run_dir, Backbone& backbone) {
  const fs::path checkpoint = latest_checkpoint(run_dir);
  if (checkpoint.empty()) {
    throw Error(run_dir.string() + ": no final checkpoint in " + kCheckpointDir);
  }
  torch::serialize::InputArchive archive;
  archive.load_from(checkpoint.string());
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
