// naive_ssl_dpo: pseudo-labelling baseline. Every pair of the training set counts as labelled:
// human pairs with z, unlabelled pairs with the annotator's label (soft g or hard 1[g > 0.5]),
// optionally only where the annotator is confident. L = mean over all pairs of BCE(sigmoid(h), .).
// Biased whenever the annotator is (docs/losses.md); dedpo is the unbiased counterpart.
#include <algorithm>

#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Inverse temperature of the DPO logit h (convention with the explicit 1/2). > 0."},
    {"pseudo_labels", dedpo::OptionType::string, "\"soft\"",
     "Target on unlabelled pairs: \"soft\" = the annotator's probability g, \"hard\" = 1[g > 0.5]."},
    {"confidence_threshold", dedpo::OptionType::real, "0.5",
     "Unlabelled pairs with max(g, 1 - g) below this contribute zero. In [0.5, 1]; 0.5 keeps all."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = target 0.5, \"drop\" = the pair contributes zero."},
};

class NaiveSslDpoLoss final : public dedpo::Loss {
 public:
  explicit NaiveSslDpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        hard_(dedpo::string_choice(options, "pseudo_labels", {"soft", "hard"}) == "hard"),
        threshold_(dedpo::real_in_range(options, "confidence_threshold", 0.5, 1.0)),
        ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::all; }
  bool needs_annotator() const override { return true; }
  // The human share of its all-pairs mean comes from the labelled stream (all_mean_by_stream).
  bool takes_two_stream_batches() const override { return true; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "naive_ssl_dpo", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    const at::ScalarType dtype = h.scalar_type();
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, dtype);
    at::Tensor g = dedpo::annotator_target(terms, false, dtype);
    at::Tensor confident = at::maximum(g, 1.0 - g) >= threshold_;
    at::Tensor pseudo = hard_ ? (g > 0.5).to(dtype) : g;
    at::Tensor target = at::where(labels.labelled, labels.target, pseudo);
    at::Tensor use = labels.use.logical_or(labels.unlabelled.logical_and(confident));
    at::Tensor loss = dedpo::all_mean_by_stream(dedpo::bce_with_logits(h, target), use, terms,
                                                "naive_ssl_dpo");

    dedpo::Figures diagnostics = dedpo::preference_diagnostics(terms, h);
    diagnostics.emplace_back(
        "pseudo_labelled_pairs",
        labels.unlabelled.logical_and(confident).sum().item<double>());
    return {loss, std::move(diagnostics)};
  }

 private:
  double beta_;
  bool hard_;
  double threshold_;
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<NaiveSslDpoLoss>(
    "naive_ssl_dpo", "1.0.0",
    "Pseudo-labelling baseline: DPO on human labels plus annotator labels for unlabelled pairs.",
    kOptions))
