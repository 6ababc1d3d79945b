#include "run/services.hpp"

#include "dedpo/host/assemble.hpp"
#include "run/caches.hpp"
#include "run/run_folder.hpp"
#include "train/trainer.hpp"

namespace dedpo {

RunServices::RunServices(const Experiment& experiment, const PluginRegistry& registry,
                         BackboneContext context)
    : experiment_(experiment), registry_(registry), context_(std::move(context)) {}

std::shared_ptr<Backbone> RunServices::fresh_backbone() {
  return make_backbone(experiment_, registry_, context_);
}

std::shared_ptr<Loss> RunServices::make_loss(const std::string& name, const Options& options) {
  Options complete = registry_.complete_options(PluginKind::loss, name, options,
                                                "loss '" + name + "' (made by the annotator)");
  return registry_.create<Loss>(name, complete);
}

const Options& RunServices::experiment_loss_options() const {
  return experiment_.loss ? experiment_.loss->options : no_loss_options_;
}

void RunServices::train(Backbone& backbone, Loss& loss, const PairDataset& data,
                        const at::Tensor& is_labelled, const at::Tensor& annotator_prob,
                        std::int64_t steps, std::uint64_t seed) {
  if (loss.needs_annotator() && !annotator_prob.defined()) {
    throw Error("services.train: the loss needs annotator probabilities, none were given");
  }
  // Two-stream batches are the experiment's loss's; a plugin's own training (e.g. self_train's
  // DPO on the labelled pairs) draws pooled batches when its loss takes no other.
  TrainSettings settings = experiment_.train;
  if (!loss.takes_two_stream_batches()) {
    settings.batches = BatchComposition::pooled;
    settings.labelled_batch_size = 0;
  }
  Trainer trainer(backbone, settings, context_.device, seed, steps);
  trainer.set_preference(loss, data, is_labelled, annotator_prob,
                         encode_prompts_cached(backbone, data.prompts, cache_dir(experiment_) / "prompts"));
  while (trainer.step_index() < steps) trainer.step();
}

}  // namespace dedpo
