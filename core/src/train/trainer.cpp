#include "train/trainer.hpp"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/autocast.hpp"
#include "dedpo/cross_fit.hpp"
#include "dedpo/error.hpp"
#include "dedpo/host/trainer.hpp"
#include "train/seeds.hpp"

namespace dedpo {

std::vector<at::Tensor> trainable_parameters(Backbone& backbone) {
  std::vector<at::Tensor> params;
  for (const at::Tensor& p : backbone.model().parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  return params;
}

namespace {

// The trainable parameters (rank 0's values on every rank), stored in `dtype` from here on.
std::vector<at::Tensor> checked_trainable_parameters(Backbone& backbone, WeightsDtype dtype,
                                                     Collectives* collectives) {
  std::vector<at::Tensor> params = trainable_parameters(backbone);
  if (params.empty()) throw Error("the backbone's model has no trainable parameters");
  if (collectives != nullptr) collectives->broadcast_from_first(params);
  if (dtype == WeightsDtype::bfloat16) {
    at::NoGradGuard no_grad;
    for (at::Tensor& p : params) p.set_data(p.detach().to(at::kBFloat16));
  }
  return params;
}

}  // namespace

Trainer::Trainer(Backbone& backbone, const TrainSettings& settings, c10::Device device,
                 std::uint64_t seed, std::int64_t total_steps, Collectives* collectives)
    : backbone_(backbone),
      settings_(settings),
      device_(device),
      total_steps_(total_steps),
      seed_(seed),
      collectives_(collectives),
      rank_(collectives != nullptr ? collectives->rank() : 0),
      world_size_(collectives != nullptr ? collectives->world_size() : 1),
      noise_(make_generator(derive_seed(seed, RandomStream::noise))),
      params_(checked_trainable_parameters(backbone, settings.weights_dtype, collectives)),
      masters_(params_),
      optimizer_(make_optimizer(masters_.masters(), settings_)),
      ema_(params_, settings_.ema_decay) {
  // On the float32 masters: where they are the weights themselves their hooks fire in the
  // backward pass and the buckets start during it; bfloat16 weights' masters get their gradients
  // after it (gradients_to_masters), so their buckets all start in finish().
  if (collectives_ != nullptr) {
    reducer_ = std::make_unique<GradientReducer>(*collectives_, masters_.masters(), kGradientBucketBytes);
  }
}

void FigureSums::add(const Figures& more) {
  for (const auto& [name, value] : more) {
    auto it = std::find_if(sums.begin(), sums.end(),
                           [&key = name](const auto& entry) { return entry.first == key; });
    if (it == sums.end()) {
      sums.emplace_back(name, value);
      counts.push_back(1.0);
    } else {
      it->second += value;
      counts[static_cast<std::size_t>(it - sums.begin())] += 1.0;
    }
  }
}

void FigureSums::reduce_over(Collectives& collectives) {
  // Every rank's figure names (a rank's micro-batches may lack one), in name order.
  std::vector<std::string> names;
  for (const auto& [name, value] : sums) names.push_back(name);
  const std::vector<std::string> all_names = collectives.sorted_union(names);
  std::vector<double> values(2 * all_names.size(), 0.0);  // sums, then counts
  for (std::size_t k = 0; k < sums.size(); ++k) {
    const auto at = std::lower_bound(all_names.begin(), all_names.end(), sums[k].first) - all_names.begin();
    values[static_cast<std::size_t>(at)] = sums[k].second;
    values[all_names.size() + static_cast<std::size_t>(at)] = counts[k];
  }
  values = collectives.sum(values);
  sums.clear();
  counts.clear();
  for (std::size_t k = 0; k < all_names.size(); ++k) {
    sums.emplace_back(all_names[k], values[k]);
    counts.push_back(values[all_names.size() + k]);
  }
}

Figures FigureSums::means() const {
  Figures out = sums;
  for (std::size_t k = 0; k < out.size(); ++k) out[k].second /= counts[k];
  return out;
}

at::Tensor Trainer::to_device(const at::Tensor& host) const {
  if (host.device() == device_) return host;
  // Pinned (page-locked) memory lets the copy run asynchronously on the device's stream; the
  // caching host allocator keeps the block until that copy is done.
  return device_.is_cuda() ? host.pin_memory().to(device_, /*non_blocking=*/true) : host.to(device_);
}

void Trainer::set_preference(Loss& loss, const PairDataset& data, const at::Tensor& is_labelled,
                             const at::Tensor& annotator_prob, at::Tensor condition) {
  loss_ = &loss;
  pairs_ = &data;
  is_labelled_ = is_labelled.to(at::kCPU, at::kBool);
  annotator_prob_ = annotator_prob.defined() ? annotator_prob.to(at::kCPU) : annotator_prob;
  n_labelled_ = is_labelled_.sum().item<std::int64_t>();
  fold_key_ = fold_keys(is_labelled_, seed_);
  n_unlabelled_ = data.size() - n_labelled_;
  at::Tensor label = data.human_label.to(at::kFloat);
  visible_label_ = at::where(is_labelled_, label, at::full_like(label, NAN));
  condition_ = condition.to(at::kCPU);
  check_batches_suit_loss(settings_, loss, "");
  pair_batches_ = PairBatches(is_labelled_, loss.pool(), settings_, seed_);
}

void Trainer::set_denoising(const SampleDataset& data, at::Tensor condition) {
  samples_ = &data;
  if (data.size() == 0) throw Error("the dataset has no samples");
  condition_ = condition.to(at::kCPU);
  samples_order_ =
      Sampler(at::arange(data.size(), at::kLong), derive_seed(seed_, RandomStream::data_order));
}

StepReport Trainer::step() {
  StepReport report;
  // Where this rank is, for the others to tell should it die or hang in this step.
  if (collectives_ != nullptr) collectives_->begin_step(step_ + 1);
  report.lr = scheduled_lr(settings_.lr, settings_.warmup_steps, total_steps_, settings_.schedule,
                           step_);
  for (at::Tensor& p : params_) {
    if (p.grad().defined()) p.mutable_grad().reset();
  }
  const auto micro_batches = static_cast<double>(settings_.grad_accum);
  double loss_sum = 0.0;
  FigureSums diagnostics;
  for (std::int64_t micro = 0; micro < settings_.grad_accum; ++micro) {
    // The noise of the run's `part`-th micro-batch, on whichever rank draws it: the same
    // draws as one process accumulating world_size times as many micro-batches.
    const std::int64_t part = (step_ * settings_.grad_accum + micro) * world_size_ + rank_;
    noise_ = make_generator(derive_seed(seed_, RandomStream::noise, static_cast<std::uint64_t>(part)));
    at::Tensor loss;
    {
      AutocastRegion autocast(device_.type(), settings_.precision == Precision::bf16);
      loss = pairs_ != nullptr ? preference_loss(diagnostics) : denoising_loss();
    }
    loss = loss.to(at::kFloat);
    loss_sum += loss.item<double>();
    if (reducer_ && micro == settings_.grad_accum - 1) reducer_->arm();
    if (loss.requires_grad()) (loss / micro_batches).backward();
  }
  masters_.gradients_to_masters();
  // The loss's running statistics of this step (Loss::step_statistics), summed over the ranks
  // with the loss in one all-reduce.
  std::vector<double> sums{loss_sum};
  if (pairs_ != nullptr) {
    const std::vector<double> statistics = loss_->step_statistics();
    sums.insert(sums.end(), statistics.begin(), statistics.end());
  }
  if (collectives_ != nullptr) {
    // Before clipping and the guard: every rank clips and decides on the same gradients and loss.
    reducer_->finish();
    report.overlapped_buckets = reducer_->overlapped_buckets();
    report.gradient_buckets = reducer_->buckets();
    sums = collectives_->sum(sums);
    diagnostics.reduce_over(*collectives_);
  }
  report.diagnostics = diagnostics.means();
  report.loss = sums.front() / (micro_batches * world_size_);
  clip_or_skip(report);
  if (pairs_ != nullptr) {
    if (report.skipped) {
      loss_->load_state(loss_->state());  // a skipped step changes nothing: its statistics go
    } else {
      const Figures end = loss_->end_step(std::vector<double>(sums.begin() + 1, sums.end()));
      report.diagnostics.insert(report.diagnostics.end(), end.begin(), end.end());
    }
  }
  ++step_;
  return report;
}

// The NaN/inf guard (a non-finite step changes nothing and is counted), else clipping to
// max_grad_norm, the optimiser step and the EMA update.
void Trainer::clip_or_skip(StepReport& report) {
  const std::vector<at::Tensor>& masters = masters_.masters();
  report.grad_norm = gradient_norm(masters);
  if (!std::isfinite(report.loss) || !std::isfinite(report.grad_norm)) {
    report.skipped = true;
    ++skipped_;
    for (const at::Tensor& p : masters) {
      if (p.grad().defined()) p.mutable_grad().reset();
    }
    return;
  }
  // Clipping divides the gradients inside the optimiser's own pass over them.
  optimizer_->step(report.lr, clipping_divisor(report.grad_norm, settings_.max_grad_norm));
  masters_.masters_to_weights();
  ema_.update();
}

template <class Draw>
at::Tensor Trainer::rank_share(Draw draw) {
  at::Tensor share;
  for (int r = 0; r < world_size_; ++r) {
    at::Tensor part = draw();
    if (r == rank_) share = part;
  }
  return share;
}

at::Tensor Trainer::preference_loss(FigureSums& diagnostics) {
  at::Tensor index = rank_share([this] { return pair_batches_.next(); });
  PairBatch batch;
  batch.a = to_device(pairs_->a.index_select(0, index));
  batch.b = to_device(pairs_->b.index_select(0, index));
  batch.condition = to_device(condition_.index_select(0, pairs_->prompt_index.index_select(0, index)));
  if (pairs_->a_info.defined()) batch.a_info = to_device(pairs_->a_info.index_select(0, index));
  if (pairs_->b_info.defined()) batch.b_info = to_device(pairs_->b_info.index_select(0, index));
  DenoisingErrors errors = backbone_.denoising_errors(batch, noise_, loss_->needs_reference());
  PairTerms terms;
  terms.model_err_a = errors.model_a;
  terms.model_err_b = errors.model_b;
  terms.ref_err_a = errors.ref_a;
  terms.ref_err_b = errors.ref_b;
  terms.human_label = to_device(visible_label_.index_select(0, index));
  terms.is_labelled = to_device(is_labelled_.index_select(0, index));
  if (annotator_prob_.defined()) terms.annotator_prob = to_device(annotator_prob_.index_select(0, index));
  terms.n_labelled = n_labelled_;
  terms.n_unlabelled = n_unlabelled_;
  terms.drawn_from = loss_->pool();
  terms.labelled_stream_size = pair_batches_.labelled_stream_size();
  terms.fold_key = to_device(fold_key_.index_select(0, index));
  LossResult result = loss_->compute(terms);
  diagnostics.add(result.diagnostics);
  return result.loss;
}

at::Tensor Trainer::denoising_loss() {
  at::Tensor index = rank_share([this] { return samples_order_.next(settings_.batch_size); });
  at::Tensor samples = to_device(samples_->samples.index_select(0, index));
  at::Tensor condition = to_device(condition_.index_select(0, samples_->prompt_index.index_select(0, index)));
  return backbone_.denoising_loss(samples, condition, noise_).mean();
}

}  // namespace dedpo
