// hinge: SLiC-style hinge on the Diffusion-DPO logit h:
//   z max(0, delta - h) + (1 - z) max(0, delta + h).
#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Scale of the logit h = -(beta/2)[(e_theta(A)-e_ref(A)) - (e_theta(B)-e_ref(B))]. > 0."},
    {"margin", dedpo::OptionType::real, "1.0",
     "Hinge margin delta: no loss once the preferred side leads by h >= delta. > 0."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = half of each side's hinge (keeps |h| <= delta), \"drop\" = "
     "the pair contributes zero."},
};

class HingeLoss final : public dedpo::Loss {
 public:
  explicit HingeLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        margin_(dedpo::positive_real(options, "margin")),
        ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::labelled; }
  bool needs_annotator() const override { return false; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "hinge", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, h.scalar_type());
    at::Tensor per_pair = labels.target * at::relu(margin_ - h) +
                          (1.0 - labels.target) * at::relu(h + margin_);
    at::Tensor loss = dedpo::labelled_mean(per_pair, labels.use, terms);
    return {loss, dedpo::preference_diagnostics(terms, h)};
  }

 private:
  double beta_;
  double margin_;
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<HingeLoss>(
    "hinge", "1.0.0", "SLiC-style hinge loss on the DPO logit.", kOptions))
