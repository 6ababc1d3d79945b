// cdpo: conservative DPO (label smoothing). BCE(sigmoid(h), eps + (1 - 2 eps) z): with z = 1 this
// is -(1 - eps) logsigmoid(h) - eps logsigmoid(-h). Labelled pairs only.
#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Inverse temperature of the DPO logit h (convention with the explicit 1/2). > 0."},
    {"epsilon", dedpo::OptionType::real, "0.1",
     "Label smoothing: the target becomes eps + (1 - 2 eps) z. In [0, 0.5); 0 is plain dpo."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = target 0.5, \"drop\" = the pair contributes zero."},
};

class CdpoLoss final : public dedpo::Loss {
 public:
  explicit CdpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        epsilon_(dedpo::real_in_range(options, "epsilon", 0.0, 0.5, true)),
        ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::labelled; }
  bool needs_annotator() const override { return false; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "cdpo", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, h.scalar_type());
    at::Tensor target = labels.target * (1.0 - 2.0 * epsilon_) + epsilon_;
    at::Tensor loss = dedpo::labelled_mean(dedpo::bce_with_logits(h, target), labels.use, terms);
    return {loss, dedpo::preference_diagnostics(terms, h)};
  }

 private:
  double beta_;
  double epsilon_;
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<CdpoLoss>(
    "cdpo", "1.0.0", "Conservative DPO: label-smoothed Diffusion-DPO on human-labelled pairs.",
    kOptions))
