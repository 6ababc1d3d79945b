// rdpo: robust DPO (Chowdhury et al. 2024) for labels flipped with known probability eps:
//   [(1 - eps) l(h, z) - eps l(h, 1 - z)] / (1 - 2 eps),  l(h, p) = BCE(sigmoid(h), p),
// whose expectation over the flips is the clean loss. BCE is linear in its target, so this equals
// BCE(sigmoid(h), (z - eps) / (1 - 2 eps)), computed with the stable softplus form.
#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Inverse temperature of the DPO logit h (convention with the explicit 1/2). > 0."},
    {"epsilon", dedpo::OptionType::real, "0.1",
     "Known probability that a human label is flipped. In [0, 0.5); 0 is plain dpo."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = target 0.5 (unchanged by the correction), \"drop\" = the "
     "pair contributes zero."},
};

class RdpoLoss final : public dedpo::Loss {
 public:
  explicit RdpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        epsilon_(dedpo::real_in_range(options, "epsilon", 0.0, 0.5, true)),
        ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::labelled; }
  bool needs_annotator() const override { return false; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "rdpo", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, h.scalar_type());
    at::Tensor target = (labels.target - epsilon_) / (1.0 - 2.0 * epsilon_);
    at::Tensor loss = dedpo::labelled_mean(dedpo::bce_with_logits(h, target), labels.use, terms);
    return {loss, dedpo::preference_diagnostics(terms, h)};
  }

 private:
  double beta_;
  double epsilon_;
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<RdpoLoss>(
    "rdpo", "1.0.0", "Robust DPO: unbiased under human labels flipped with known rate epsilon.",
    kOptions))
