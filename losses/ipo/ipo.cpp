// ipo: identity preference optimisation (Azar et al. 2023) on the beta-scaled Diffusion-DPO logit h:
//   z (h - 1/(2 t))^2 + (1 - z) (h + 1/(2 t))^2,   t = logit_tau,
// i.e. a squared loss pulling h to +1/(2 t) when A is preferred and -1/(2 t) when B is. Since
// h = beta r with r the implicit log-ratio, this is Azar et al.'s IPO in r with tau = beta t, the
// loss multiplied by beta^2: the option is named for the logit it acts on (docs/losses.md).
#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Scale of the logit h = -(beta/2)[(e_theta(A)-e_ref(A)) - (e_theta(B)-e_ref(B))]. > 0."},
    {"logit_tau", dedpo::OptionType::real, "0.1",
     "IPO's tau applied to the beta-scaled logit h: the target logit is +-1/(2 logit_tau) (Azar "
     "et al.'s IPO in h / beta with tau = beta * logit_tau, loss times beta^2). > 0."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = pull h towards 0, \"drop\" = the pair contributes zero."},
};

class IpoLoss final : public dedpo::Loss {
 public:
  explicit IpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        logit_tau_(dedpo::positive_real(options, "logit_tau")),
        ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::labelled; }
  bool needs_annotator() const override { return false; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "ipo", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, h.scalar_type());
    const double margin = 1.0 / (2.0 * logit_tau_);
    at::Tensor per_pair = labels.target * (h - margin).square() +
                          (1.0 - labels.target) * (h + margin).square();
    at::Tensor loss = dedpo::labelled_mean(per_pair, labels.use, terms);
    return {loss, dedpo::preference_diagnostics(terms, h)};
  }

 private:
  double beta_;
  double logit_tau_;
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<IpoLoss>(
    "ipo", "2.0.0", "IPO on the beta-scaled logit: squared loss pulling h to +-1/(2 logit_tau).",
    kOptions))
