// dpo: Diffusion-DPO (Wallace et al. 2023) on human-labelled pairs, written as classification:
//   L = mean over labelled pairs of BCE(sigmoid(h), z),  h = -(beta/2)[(e_theta(A) - e_ref(A)) -
//   (e_theta(B) - e_ref(B))].  With z = 1 this is -logsigmoid(-0.5 beta (model_diff - ref_diff)).
#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Inverse temperature of the logit h = -(beta/2)[(e_theta(A)-e_ref(A)) - (e_theta(B)-e_ref(B))] "
     "(convention with the explicit 1/2; 5000 for SD1.5 and SDXL). > 0."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = BCE against 0.5, \"drop\" = the pair contributes zero."},
};

class DpoLoss final : public dedpo::Loss {
 public:
  explicit DpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")), ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::labelled; }
  bool needs_annotator() const override { return false; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "dpo", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, h.scalar_type());
    at::Tensor loss = dedpo::labelled_mean(dedpo::bce_with_logits(h, labels.target), labels.use, terms);
    return {loss, dedpo::preference_diagnostics(terms, h)};
  }

 private:
  double beta_;
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<DpoLoss>("dpo", "1.0.0",
                                              "Diffusion-DPO on human-labelled pairs.", kOptions))
