#pragma once
// What the core offers plugins that need more than their own inputs (e.g. the self-training
// annotator trains a model of its own).
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/options.hpp"

namespace dedpo {

class ExperimentServices {
 public:
  virtual ~ExperimentServices() = default;

  // A new backbone built from the experiment's [backbone] table and prepared like the main one
  // (same initial weights), independent of it.
  virtual std::shared_ptr<Backbone> fresh_backbone() = 0;

  // A loss plugin by name, validated like an experiment's [loss] table; `options` names only
  // the values to set, the others take the plugin's defaults.
  virtual std::shared_ptr<Loss> make_loss(const std::string& name, const Options& options) = 0;

  // The options of the experiment's own [loss] (validated, defaults filled; empty when it has
  // none), for plugins whose model must match the loss (self_train's beta).
  virtual const Options& experiment_loss_options() const = 0;

  // Trains `backbone` for `steps` optimiser steps with the experiment's [train] settings (no
  // checkpoints, no metrics file); batches are pooled unless [train] asks for two-stream batches
  // and `loss` takes them. `annotator_prob` may be undefined when `loss` needs none.
  virtual void train(Backbone& backbone, Loss& loss, const PairDataset& data,
                     const at::Tensor& is_labelled, const at::Tensor& annotator_prob,
                     std::int64_t steps, std::uint64_t seed) = 0;
};

}  // namespace dedpo
