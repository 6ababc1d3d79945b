#pragma once
// The experiment's services for annotators: fresh backbones, losses, training without files.
#include "dedpo/host/experiment.hpp"
#include "dedpo/services.hpp"

namespace dedpo {

class RunServices final : public ExperimentServices {
 public:
  RunServices(const Experiment& experiment, const PluginRegistry& registry,
              BackboneContext context);

  std::shared_ptr<Backbone> fresh_backbone() override;
  std::shared_ptr<Loss> make_loss(const std::string& name, const Options& options) override;
  const Options& experiment_loss_options() const override;
  void train(Backbone& backbone, Loss& loss, const PairDataset& data,
             const at::Tensor& is_labelled, const at::Tensor& annotator_prob, std::int64_t steps,
             std::uint64_t seed) override;

 private:
  const Experiment& experiment_;
  const PluginRegistry& registry_;
  BackboneContext context_;
  Options no_loss_options_;
};

}  // namespace dedpo
