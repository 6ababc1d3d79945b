// sft: supervised fine-tuning on the preferred image of each human-labelled pair, i.e. the
// denoising loss z * e_theta(A) + (1 - z) * e_theta(B) averaged over labelled pairs. No reference.
#include <ATen/ATen.h>

#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"drop\" = the pair contributes zero (no preferred image), \"soft\" = "
     "train on both images with weight 1/2."},
};

class SftLoss final : public dedpo::Loss {
 public:
  explicit SftLoss(const dedpo::Options& options) : ties_(dedpo::tie_mode(options)) {}

  dedpo::PairPool pool() const override { return dedpo::PairPool::labelled; }
  bool needs_annotator() const override { return false; }
  bool needs_reference() const override { return false; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "sft", *this);
    at::ScalarType dtype = dedpo::compute_dtype(terms.model_err_a);
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, dtype);
    at::Tensor preferred = labels.target * terms.model_err_a.to(dtype) +
                           (1.0 - labels.target) * terms.model_err_b.to(dtype);
    at::Tensor loss = dedpo::labelled_mean(preferred, labels.use, terms);
    dedpo::Figures diagnostics = dedpo::preference_diagnostics(terms, at::Tensor());
    diagnostics.emplace_back("preferred_err_mean", loss.detach().item<double>());
    return {loss, std::move(diagnostics)};
  }

 private:
  dedpo::TieMode ties_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<SftLoss>(
    "sft", "1.0.0", "Denoising loss on the preferred image of each human-labelled pair.",
    kOptions))
