// `self_train`: a backbone-agnostic synthetic annotator. It trains a fresh copy of the backbone
// with a preference loss (DPO by default) on the human-labelled pairs only, then labels every
// pair with that model's own implicit preference:
//
//   h(y) = -(beta/2) [ (e_theta(A) - e_ref(A)) - (e_theta(B) - e_ref(B)) ],   g(y) = sigmoid(h/T)
//
// averaged over n_draws timestep/noise draws (one draw shared by A and B, as in training).
// Cross-fitted (dedpo/cross_fit.hpp): one model per fold of the labelled pairs, trained without
// that fold, scores the fold's pairs; unlabelled pairs get the fold-size-weighted average.
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/annotator.hpp"
#include "dedpo/cross_fit.hpp"
#include "dedpo/plugin.hpp"

namespace dedpo {
namespace {

using T = OptionType;

const OptionSpec kSelfTrainOptions[] = {
    {"loss", T::string, "\"dpo\"", "Loss plugin that trains the annotator's model."},
    {"beta", T::real_or_string, "\"loss\"",
     "beta of the implicit-reward logit h, also passed to the loss that trains the model; "
     "\"loss\" = the beta of the experiment's [loss]."},
    {"steps", T::integer, "300", "Optimiser steps on the labelled pairs ([train] settings)."},
    {"folds", T::integer, "5",
     "Cross-fitting folds K: a labelled pair is scored by the model trained without its fold, an "
     "unlabelled pair by the average of the K models (K trainings). 1 = one model trained on all "
     "labelled pairs scores them too: it has seen their labels and biases DeDPO."},
    {"n_draws", T::integer, "16", "Timestep/noise draws averaged per pair for h."},
    {"batch_size", T::integer, "2048", "Pairs per scoring batch."},
    {"temperature", T::real, "1.0", "g = sigmoid(h / temperature): > 1 softens, < 1 sharpens."},
};

class SelfTrainAnnotator : public Annotator {
 public:
  explicit SelfTrainAnnotator(const Options& options) : options_(options) {
    if (options.integer("steps") < 0) options.fail("steps", "must be non-negative");
    if (options.integer("folds") < 1) options.fail("folds", "must be at least 1");
    if (options.integer("n_draws") < 1) options.fail("n_draws", "must be at least 1");
    if (options.integer("batch_size") < 1) options.fail("batch_size", "must be at least 1");
    if (!(options.real("temperature") > 0)) options.fail("temperature", "must be positive");
    if (options.is_string("beta") && options.string("beta") != "loss") {
      options.fail("beta", "expected a number or \"loss\", got \"" + options.string("beta") + "\"");
    }
  }

  bool uses_labels() const override { return true; }

  at::Tensor annotate(AnnotatorContext& context) override {
    const std::int64_t n_labelled = context.is_labelled.sum().item<std::int64_t>();
    if (n_labelled == 0) {
      throw Error("annotator 'self_train' needs human-labelled pairs to train on, but none are "
                  "labelled (raise [train] labelled_fraction)");
    }
    const std::int64_t folds = options_.integer("folds");
    if (n_labelled < folds) {
      options_.fail("folds", std::to_string(folds) + " folds need at least as many labelled "
                                 "pairs, got " + std::to_string(n_labelled));
    }
    return cross_fit(context.is_labelled, folds, context.seed,
                     [&](const at::Tensor& train) { return train_and_score(context, train); });
  }

 private:
  // A fresh model trained on the pairs of `train`, then its sigmoid(h / T) on every pair.
  at::Tensor train_and_score(AnnotatorContext& context, const at::Tensor& train) const {
    const PairDataset& data = context.data;
    const std::int64_t n = data.size();
    const double beta = implicit_beta(context.services);
    Options loss_options;
    loss_options.set("beta", beta);

    std::shared_ptr<Backbone> backbone = context.services.fresh_backbone();
    std::shared_ptr<Loss> loss = context.services.make_loss(options_.string("loss"), loss_options);
    context.services.train(*backbone, *loss, data, train, at::Tensor(), options_.integer("steps"),
                           context.seed);

    at::NoGradGuard no_grad;
    at::Tensor prompts = backbone->encode_prompts(data.prompts);
    at::Tensor condition = prompts.index_select(0, data.prompt_index.to(prompts.device()));
    at::Generator gen = at::detail::createCPUGenerator(context.seed ^ 0x5E1F7A11ull);
    const std::int64_t batch = options_.integer("batch_size");
    const std::int64_t draws = options_.integer("n_draws");
    at::Tensor h = at::zeros({n}, at::TensorOptions().dtype(at::kDouble));
    for (std::int64_t draw = 0; draw < draws; ++draw) {
      for (std::int64_t start = 0; start < n; start += batch) {
        const std::int64_t end = std::min(n, start + batch);
        PairBatch pairs{data.a.slice(0, start, end), data.b.slice(0, start, end),
                        condition.slice(0, start, end)};
        if (data.a_info.defined()) pairs.a_info = data.a_info.slice(0, start, end);
        if (data.b_info.defined()) pairs.b_info = data.b_info.slice(0, start, end);
        DenoisingErrors e = backbone->denoising_errors(pairs, gen, /*with_reference=*/true);
        at::Tensor logit =
            -(beta / 2) * ((e.model_a - e.ref_a) - (e.model_b - e.ref_b));
        h.slice(0, start, end) += logit.detach().to(at::kCPU, at::kDouble);
      }
    }
    h /= static_cast<double>(draws);
    return at::sigmoid(h / options_.real("temperature")).to(at::kFloat);
  }

  double implicit_beta(const ExperimentServices& services) const {
    if (!options_.is_string("beta")) return options_.real("beta");
    const Options& loss = services.experiment_loss_options();
    if (!loss.contains("beta")) {
      options_.fail("beta", "\"loss\" takes the beta of the experiment's [loss], which has none; "
                            "give a number");
    }
    return loss.real("beta");
  }

  Options options_;
};

}  // namespace
}  // namespace dedpo

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::SelfTrainAnnotator>(
    "self_train", "1.1.0",
    "Backbone-agnostic annotator: models trained with DPO on the labelled pairs (cross-fitted "
    "over folds) label every pair with their implicit preference sigmoid(h).",
    dedpo::kSelfTrainOptions))
