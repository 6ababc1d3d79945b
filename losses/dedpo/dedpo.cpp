// dedpo: debiased DPO, the prediction-powered (doubly robust) estimator of the fully-labelled
// Diffusion-DPO loss with PPI++ power tuning (docs/losses.md):
//   L_lambda = lambda * mean_all BCE(G, g) + mean_labelled [BCE(G, z) - lambda * BCE(G, g)],
// unbiased for mean_all BCE(G, z) for any annotator g and any lambda that does not depend on the
// current batch. lambda = 1 is the paper's DeDPO, lambda = 0 labelled-only DPO, "auto" estimates
// the variance-minimising lambda* = <s_z, s_g> / <s_g, s_g> (Cov/Var of the per-pair gradients)
// from running moments of the scores s_z = sigmoid(h) - z, s_g = sigmoid(h) - g on the labelled
// pairs of previous batches.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/error.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/plugin.hpp"
#include "dedpo/preference_math.hpp"

namespace {

const dedpo::OptionSpec kOptions[] = {
    {"beta", dedpo::OptionType::real, "5000.0",
     "Inverse temperature of the logit h = -(beta/2)[(e_theta(A)-e_ref(A)) - (e_theta(B)-e_ref(B))] "
     "(convention with the explicit 1/2; 5000 for SD1.5 and SDXL). > 0."},
    {"lambda", dedpo::OptionType::real_or_string, "1.0",
     "Power tuning: a number in [0, 1] (1 = DeDPO of the paper, 0 = labelled-only DPO) or \"auto\" "
     "(variance-minimising, estimated online from previous batches; unbiased either way)."},
    {"lambda_warmup", dedpo::OptionType::integer, "256",
     "lambda = \"auto\": labelled pairs to observe before the estimate replaces lambda = 1. >= 1."},
    {"lambda_decay", dedpo::OptionType::real, "0.99",
     "lambda = \"auto\": per-batch exponential forgetting of the running moments; 1 keeps "
     "cumulative moments. In (0, 1]."},
    {"lambda_moments", dedpo::OptionType::string, "\"raw\"",
     "lambda = \"auto\": \"raw\" = E[s_z s_g] / E[s_g^2] (right when per-pair gradient directions "
     "average out, as in high dimension, and for the per-step variance of pooled minibatches); "
     "\"central\" = Cov(s_z, s_g) / Var(s_g) (right when all pairs share one gradient "
     "direction). See docs/losses.md."},
    {"pseudo_labels", dedpo::OptionType::string, "\"soft\"",
     "Annotator target: \"soft\" = its probability g, \"hard\" = 1[g > 0.5] (unbiased either way)."},
    {"ties", dedpo::OptionType::string, "\"drop\"",
     "Human ties (z = 0.5): \"soft\" = target 0.5, \"drop\" = the tie's human term is zero (the "
     "estimate stays unbiased for DPO with ties dropped)."},
};

// Layout of state(): format version, labelled pairs seen, then the decayed moments.
enum StateSlot : std::size_t { kVersion, kSeen, kWeight, kSumZ, kSumG, kSumZG, kSumGG, kSumZZ, kSlots };
constexpr double kStateVersion = 1.0;

class DedpoLoss final : public dedpo::Loss {
 public:
  explicit DedpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        warmup_(options.integer("lambda_warmup")),
        decay_(options.real("lambda_decay")),
        raw_moments_(dedpo::string_choice(options, "lambda_moments", {"central", "raw"}) == "raw"),
        hard_(dedpo::string_choice(options, "pseudo_labels", {"soft", "hard"}) == "hard"),
        ties_(dedpo::tie_mode(options)),
        state_(kSlots, 0.0) {
    state_[kVersion] = kStateVersion;
    if (options.is_string("lambda")) {
      const std::string& value = options.string("lambda");
      if (value != "auto") {
        options.fail("lambda", "expected a number in [0, 1] or \"auto\", got \"" + value + "\"");
      }
      auto_ = true;
    } else {
      lambda_ = options.real("lambda");
      if (!(lambda_ >= 0.0 && lambda_ <= 1.0)) {
        options.fail("lambda", "expected a number in [0, 1] or \"auto\", got " +
                                   dedpo::to_string(dedpo::OptionValue(lambda_)));
      }
    }
    if (warmup_ < 1) {
      options.fail("lambda_warmup", "expected an integer >= 1, got " + std::to_string(warmup_));
    }
    if (!(decay_ > 0.0 && decay_ <= 1.0)) {
      options.fail("lambda_decay", "expected a number in (0, 1], got " +
                                       dedpo::to_string(dedpo::OptionValue(decay_)));
    }
  }

  dedpo::PairPool pool() const override { return dedpo::PairPool::all; }
  bool needs_annotator() const override { return true; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "dedpo", *this);
    // lambda comes from previous batches only: the estimate of this batch stays unbiased.
    const double estimate = lambda_estimate();
    const bool warm = state_[kSeen] >= static_cast<double>(warmup_) && !std::isnan(estimate);
    const double lambda = auto_ ? (warm ? estimate : 1.0) : lambda_;

    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    const at::ScalarType dtype = h.scalar_type();
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, dtype);
    at::Tensor g = dedpo::annotator_target(terms, hard_, dtype);
    at::Tensor loss_g = dedpo::bce_with_logits(h, g);
    at::Tensor loss_z = at::where(labels.use, dedpo::bce_with_logits(h, labels.target),
                                  at::zeros_like(h));

    at::Tensor correction = dedpo::labelled_mean(loss_z - lambda * loss_g, labels.labelled, terms);
    at::Tensor loss = correction;
    at::Tensor pseudo;
    if (lambda != 0.0 || terms.drawn_from == dedpo::PairPool::all) {
      pseudo = dedpo::all_mean(loss_g, at::ones_like(labels.labelled), terms, "dedpo");
      loss = lambda * pseudo + correction;
    }

    dedpo::Figures diagnostics = dedpo::preference_diagnostics(terms, h);
    diagnostics.emplace_back("lambda", lambda);
    {
      at::NoGradGuard no_grad;
      at::Tensor labelled_z = dedpo::labelled_mean(loss_z, labels.labelled, terms);
      at::Tensor labelled_g = dedpo::labelled_mean(loss_g, labels.labelled, terms);
      diagnostics.emplace_back("labelled_loss", labelled_z.item<double>());
      diagnostics.emplace_back("rectifier", (labelled_z - labelled_g).item<double>());
      diagnostics.emplace_back("correction", correction.detach().item<double>());
      if (pseudo.defined()) diagnostics.emplace_back("pseudo_loss", pseudo.detach().item<double>());
      update_moments(h, labels, g, diagnostics);
    }
    const double next = lambda_estimate();
    if (!std::isnan(next)) diagnostics.emplace_back("lambda_estimate", next);
    return {loss, std::move(diagnostics)};
  }

  std::vector<double> state() const override { return state_; }

  void load_state(const std::vector<double>& state) override {
    if (state.size() != kSlots || state[kVersion] != kStateVersion) {
      throw dedpo::Error("dedpo: cannot restore running state: expected " +
                         std::to_string(kSlots) + " values of format " +
                         std::to_string(static_cast<int>(kStateVersion)) + ", got " +
                         std::to_string(state.size()) + " values" +
                         (state.empty() ? std::string()
                                        : " of format " + std::to_string(state[kVersion])));
    }
    state_ = state;
  }

 private:
  // clip(C / V, 0, 1) from the running moments; NaN when undefined (no data or V = 0).
  double lambda_estimate() const {
    const double w = state_[kWeight];
    if (!(w > 0.0)) return std::nan("");
    const double mean_z = state_[kSumZ] / w, mean_g = state_[kSumG] / w;
    double cov = state_[kSumZG] / w, var = state_[kSumGG] / w;
    if (!raw_moments_) {
      cov -= mean_z * mean_g;
      var -= mean_g * mean_g;
    }
    if (!(var > 1e-12 * std::max(state_[kSumGG] / w, 1e-300))) return std::nan("");
    return std::clamp(cov / var, 0.0, 1.0);
  }

  // Scores on this batch's labelled pairs: s_z = sigmoid(h) - z (zero for a dropped tie, whose
  // human term is zero), s_g = sigmoid(h) - g; the per-pair gradients are these times grad h.
  void update_moments(const at::Tensor& h, const dedpo::LabelView& labels, const at::Tensor& g,
                      dedpo::Figures& diagnostics) {
    at::Tensor p = at::sigmoid(h.detach()).to(at::kCPU, at::kDouble);
    at::Tensor s_z = at::where(labels.use.to(at::kCPU), p - labels.target.to(at::kCPU, at::kDouble),
                               at::zeros_like(p));
    at::Tensor s_g = p - g.detach().to(at::kCPU, at::kDouble);
    at::Tensor labelled = labels.labelled.to(at::kCPU).contiguous();
    s_z = s_z.contiguous();
    s_g = s_g.contiguous();
    const bool* lab = labelled.data_ptr<bool>();
    const double* a = s_z.data_ptr<double>();
    const double* b = s_g.data_ptr<double>();
    double n = 0, sa = 0, sb = 0, sab = 0, sbb = 0, saa = 0;
    for (std::int64_t i = 0; i < p.size(0); ++i) {
      if (!lab[i]) continue;
      n += 1;
      sa += a[i];
      sb += b[i];
      sab += a[i] * b[i];
      sbb += b[i] * b[i];
      saa += a[i] * a[i];
    }
    if (n > 0) {
      diagnostics.emplace_back("annotator_score_corr",
                               n > 1 ? correlation(n, sa, sb, sab, saa, sbb) : std::nan(""));
      if (std::isnan(diagnostics.back().second)) diagnostics.pop_back();
    }
    state_[kSeen] += n;
    const double slots[] = {n, sa, sb, sab, sbb, saa};
    const StateSlot targets[] = {kWeight, kSumZ, kSumG, kSumZG, kSumGG, kSumZZ};
    for (std::size_t k = 0; k < std::size(slots); ++k) {
      state_[targets[k]] = decay_ * state_[targets[k]] + slots[k];
    }
  }

  static double correlation(double n, double sa, double sb, double sab, double saa, double sbb) {
    const double cov = sab / n - (sa / n) * (sb / n);
    const double va = saa / n - (sa / n) * (sa / n), vb = sbb / n - (sb / n) * (sb / n);
    if (!(va > 0 && vb > 0)) return std::nan("");
    return cov / std::sqrt(va * vb);
  }

  double beta_;
  bool auto_ = false;
  double lambda_ = 1.0;
  std::int64_t warmup_;
  double decay_;
  bool raw_moments_;
  bool hard_;
  dedpo::TieMode ties_;
  std::vector<double> state_;
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<DedpoLoss>(
    "dedpo", "1.0.0",
    "Debiased DPO: unbiased semi-supervised Diffusion-DPO with an annotator (PPI++ lambda).",
    kOptions))
