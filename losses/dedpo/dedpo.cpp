// dedpo: debiased DPO, the prediction-powered (doubly robust) estimator of the fully-labelled
// Diffusion-DPO loss with PPI++ power tuning (docs/losses.md):
//   L_lambda = lambda * mean_all BCE(G, g) + mean_labelled [BCE(G, z) - lambda * BCE(G, g)],
// unbiased for mean_all BCE(G, z) for any annotator g and any lambda that does not depend on the
// current batch. lambda = 1 is the paper's DeDPO, lambda = 0 labelled-only DPO, "auto" estimates
// the variance-minimising lambda* = <s_z, s_g> / <s_g, s_g> (Cov/Var of the per-pair gradients)
// from running moments of the scores s_z = sigmoid(h) - z, s_g = sigmoid(h) - g on the labelled
// pairs of previous optimiser steps, cross-fitted: a labelled pair of fold k (PairTerms::fold_key % K)
// gets the lambda_k estimated from the other folds only, an unlabelled pair the fold-size
// weighted average, so no pair's lambda has seen its label. With two-stream batches ([train]
// batches) the labelled mean comes from the labelled stream and the all-pairs mean from the
// all-pairs stream: the same L_lambda, estimated without the N/n_l weight of pooled batches.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "dedpo/cross_fit.hpp"
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
     "(variance-minimising, estimated online from previous steps and cross-fitted over "
     "lambda_folds folds of the labelled pairs; unbiased either way)."},
    {"lambda_folds", dedpo::OptionType::integer, "5",
     "lambda = \"auto\": folds K of the labelled pairs; a labelled pair's lambda is estimated on "
     "the other K - 1 folds only. >= 2."},
    {"lambda_warmup", dedpo::OptionType::integer, "256",
     "lambda = \"auto\": labelled pairs to observe before the estimate replaces lambda = 1. >= 1."},
    {"lambda_decay", dedpo::OptionType::real, "0.99",
     "lambda = \"auto\": per-step exponential forgetting of the running moments (an optimiser "
     "step's micro-batches, on every rank, count as one batch); 1 keeps cumulative moments. In "
     "(0, 1]."},
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

// Layout of state(): format version, folds, labelled pairs seen, then per fold the decayed
// moments (kMoments values each). step_statistics() has the same layout without the version and
// the folds: the step's labelled pairs, then per fold the step's sums.
constexpr std::size_t kVersion = 0, kFolds = 1, kSeen = 2, kHeader = 3;
constexpr std::size_t kStepOffset = kSeen;  // state_[kStepOffset + i] takes step statistic i
constexpr std::size_t kWeight = 0, kSumZ = 1, kSumG = 2, kSumZG = 3, kSumGG = 4, kSumZZ = 5,
                      kMoments = 6;
constexpr double kStateVersion = 2.0;

class DedpoLoss final : public dedpo::Loss {
 public:
  explicit DedpoLoss(const dedpo::Options& options)
      : beta_(dedpo::positive_real(options, "beta")),
        warmup_(options.integer("lambda_warmup")),
        decay_(options.real("lambda_decay")),
        raw_moments_(dedpo::string_choice(options, "lambda_moments", {"central", "raw"}) == "raw"),
        hard_(dedpo::string_choice(options, "pseudo_labels", {"soft", "hard"}) == "hard"),
        ties_(dedpo::tie_mode(options)),
        folds_(options.integer("lambda_folds")) {
    if (folds_ < 2) {
      options.fail("lambda_folds", "expected an integer >= 2, got " + std::to_string(folds_));
    }
    state_.assign(kHeader + kMoments * static_cast<std::size_t>(folds_), 0.0);
    state_[kVersion] = kStateVersion;
    state_[kFolds] = static_cast<double>(folds_);
    step_.assign(state_.size() - kStepOffset, 0.0);
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
  // Its two means come through labelled_mean and all_mean, which read a two-stream batch's
  // labelled and all-pairs streams: the same L_lambda, with the correction's share fixed.
  bool takes_two_stream_batches() const override { return true; }

  dedpo::LossResult compute(const dedpo::PairTerms& terms) override {
    dedpo::check_terms(terms, "dedpo", *this);
    at::Tensor h = dedpo::dpo_logit(terms, beta_);
    const at::ScalarType dtype = h.scalar_type();
    dedpo::LabelView labels = dedpo::label_view(terms, ties_, dtype);
    // lambda comes from previous steps only, and a labelled pair's from the other folds only:
    // the estimate of this batch stays unbiased.
    at::Tensor fold =
        auto_ || terms.fold_key.defined() ? pair_folds(terms, labels.labelled) : at::Tensor();
    const std::vector<double> fold_lambda = auto_ ? lambdas_in_use() : std::vector<double>();
    const double lambda = auto_ ? unlabelled_lambda(fold_lambda, terms.n_labelled) : lambda_;
    at::Tensor pair_lambda = at::full_like(h, lambda);
    if (auto_) {
      at::Tensor by_fold = at::tensor(fold_lambda, at::TensorOptions().dtype(dtype)).to(h.device());
      pair_lambda = at::where(labels.labelled, by_fold.index_select(0, fold.clamp_min(0)), pair_lambda);
    }

    at::Tensor g = dedpo::annotator_target(terms, hard_, dtype);
    at::Tensor loss_g = dedpo::bce_with_logits(h, g);
    at::Tensor loss_z = at::where(labels.use, dedpo::bce_with_logits(h, labels.target),
                                  at::zeros_like(h));

    at::Tensor correction =
        dedpo::labelled_mean(loss_z - pair_lambda * loss_g, labels.labelled, terms);
    at::Tensor loss = correction;
    at::Tensor pseudo;
    if (pair_lambda.ne(0).any().item<bool>() || terms.drawn_from == dedpo::PairPool::all) {
      at::Tensor everywhere = at::ones_like(labels.labelled);
      pseudo = dedpo::all_mean(loss_g, everywhere, terms, "dedpo");
      loss = dedpo::all_mean(pair_lambda * loss_g, everywhere, terms, "dedpo") + correction;
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
      gather_moments(h, labels, g, fold, diagnostics);
    }
    n_labelled_ = terms.n_labelled;
    return {loss, std::move(diagnostics)};
  }

  std::vector<double> step_statistics() const override { return step_; }

  // The step's sums (over its micro-batches and ranks) join the decayed moments; the estimate
  // they give is the lambda of the next step.
  dedpo::Figures end_step(const std::vector<double>& summed) override {
    if (summed.size() != step_.size()) {
      throw dedpo::Error("dedpo: end_step expects " + std::to_string(step_.size()) +
                         " step statistics, got " + std::to_string(summed.size()));
    }
    state_[kSeen] += summed[kSeen - kStepOffset];
    for (std::size_t i = kHeader - kStepOffset; i < summed.size(); ++i) {
      state_[kStepOffset + i] = decay_ * state_[kStepOffset + i] + summed[i];
    }
    std::fill(step_.begin(), step_.end(), 0.0);
    const double next =
        auto_ ? unlabelled_lambda(lambdas_in_use(), n_labelled_) : estimate_without(-1);
    if (std::isnan(next)) return {};
    return {{"lambda_estimate", next}};
  }

  std::vector<double> state() const override { return state_; }

  void load_state(const std::vector<double>& state) override {
    if (state.size() != state_.size() || state[kVersion] != kStateVersion ||
        state[kFolds] != state_[kFolds]) {
      throw dedpo::Error(
          "dedpo: cannot restore running state: expected " + std::to_string(state_.size()) +
          " values of format " + std::to_string(static_cast<int>(kStateVersion)) + " with " +
          std::to_string(folds_) + " lambda folds, got " + std::to_string(state.size()) +
          " values" +
          (state.size() > kFolds ? " of format " + std::to_string(state[kVersion]) + " with " +
                                       std::to_string(state[kFolds]) + " folds"
                                 : std::string()));
    }
    state_ = state;
    std::fill(step_.begin(), step_.end(), 0.0);
  }

 private:
  double moment(std::int64_t fold, std::size_t m) const {
    return state_[kHeader + kMoments * static_cast<std::size_t>(fold) + m];
  }

  // [B] int64: each labelled pair's fold (fold_key % K), -1 for unlabelled pairs.
  at::Tensor pair_folds(const dedpo::PairTerms& terms, const at::Tensor& labelled) const {
    const at::Tensor& key = terms.fold_key;
    if (!key.defined() || key.dim() != 1 || key.size(0) != labelled.size(0)) {
      throw dedpo::Error("dedpo: PairTerms::fold_key (the labelled pairs' cross-fitting order, "
                         "needed by lambda = \"auto\") must have shape [B], got " +
                         (key.defined() ? std::to_string(key.numel()) + " values"
                                        : std::string("none")));
    }
    at::Tensor k = key.to(labelled.device(), at::kLong);
    if (k.masked_select(labelled).lt(0).any().item<bool>()) {
      throw dedpo::Error("dedpo: a labelled pair has a negative PairTerms::fold_key");
    }
    return at::where(labelled, at::remainder(k, folds_), at::full_like(k, -1));
  }

  // clip(C / V, 0, 1) from the running moments of every fold but `except` (-1: all folds); NaN
  // when undefined (no data or V = 0).
  double estimate_without(std::int64_t except) const {
    double sums[kMoments] = {};
    for (std::int64_t j = 0; j < folds_; ++j) {
      if (j == except) continue;
      for (std::size_t m = 0; m < kMoments; ++m) sums[m] += moment(j, m);
    }
    const double w = sums[kWeight];
    if (!(w > 0.0)) return std::nan("");
    const double mean_z = sums[kSumZ] / w, mean_g = sums[kSumG] / w;
    double cov = sums[kSumZG] / w, var = sums[kSumGG] / w;
    if (!raw_moments_) {
      cov -= mean_z * mean_g;
      var -= mean_g * mean_g;
    }
    if (!(var > 1e-12 * std::max(sums[kSumGG] / w, 1e-300))) return std::nan("");
    return std::clamp(cov / var, 0.0, 1.0);
  }

  // The folds' lambdas for this batch: 1 (the paper's estimator) during warm-up and where a
  // fold's estimate is undefined.
  std::vector<double> lambdas_in_use() const {
    std::vector<double> lambdas(static_cast<std::size_t>(folds_));
    for (std::int64_t k = 0; k < folds_; ++k) lambdas[static_cast<std::size_t>(k)] = estimate_without(k);
    const bool warm = state_[kSeen] >= static_cast<double>(warmup_);
    for (double& lambda : lambdas) {
      if (!warm || std::isnan(lambda)) lambda = 1.0;
    }
    return lambdas;
  }

  // An unlabelled pair's lambda: the folds' average weighted by fold size, the weighting under
  // which the all-pairs term and the labelled correction cancel in expectation (docs/losses.md).
  double unlabelled_lambda(const std::vector<double>& fold_lambda, std::int64_t n_labelled) const {
    if (fold_lambda.empty()) return lambda_;
    // sum_k n_k lambda_k / n_l: exactly 1 when every fold's lambda is 1.
    double weighted = 0, total = 0;
    for (std::int64_t k = 0; k < folds_; ++k) {
      const auto size = static_cast<double>(
          n_labelled > 0 ? dedpo::fold_size(n_labelled, folds_, k) : 1);
      weighted += size * fold_lambda[static_cast<std::size_t>(k)];
      total += size;
    }
    return weighted / total;
  }

  // Scores on this batch's labelled pairs: s_z = sigmoid(h) - z (zero for a dropped tie, whose
  // human term is zero), s_g = sigmoid(h) - g; the per-pair gradients are these times grad h.
  // Each pair's scores go to its fold's sums of the step (fold 0 when the batch has no fold keys,
  // which only a fixed lambda allows; its lambda_estimate pools the folds).
  void gather_moments(const at::Tensor& h, const dedpo::LabelView& labels, const at::Tensor& g,
                      const at::Tensor& fold, dedpo::Figures& diagnostics) {
    at::Tensor p = at::sigmoid(h.detach()).to(at::kCPU, at::kDouble);
    at::Tensor s_z = at::where(labels.use.to(at::kCPU), p - labels.target.to(at::kCPU, at::kDouble),
                               at::zeros_like(p));
    at::Tensor s_g = p - g.detach().to(at::kCPU, at::kDouble);
    at::Tensor labelled = labels.labelled.to(at::kCPU).contiguous();
    at::Tensor folds = fold.defined() ? fold.to(at::kCPU, at::kLong).contiguous()
                                      : at::zeros({p.size(0)}, at::kLong);
    s_z = s_z.contiguous();
    s_g = s_g.contiguous();
    const bool* lab = labelled.data_ptr<bool>();
    const std::int64_t* pair_fold = folds.data_ptr<std::int64_t>();
    const double* a = s_z.data_ptr<double>();
    const double* b = s_g.data_ptr<double>();
    // This batch's sums, added to the step's as a whole: a step's sums are then the same sum of
    // micro-batch totals whether its micro-batches ran on one rank or were summed over ranks.
    std::vector<double> batch(step_.size(), 0.0);
    double n = 0, sa = 0, sb = 0, sab = 0, sbb = 0, saa = 0;
    for (std::int64_t i = 0; i < p.size(0); ++i) {
      if (!lab[i]) continue;
      const double values[kMoments] = {1.0, a[i], b[i], a[i] * b[i], b[i] * b[i], a[i] * a[i]};
      for (std::size_t m = 0; m < kMoments; ++m) {
        batch[kHeader - kStepOffset + kMoments * static_cast<std::size_t>(pair_fold[i]) + m] +=
            values[m];
      }
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
    batch[kSeen - kStepOffset] = n;
    for (std::size_t i = 0; i < step_.size(); ++i) step_[i] += batch[i];
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
  std::int64_t folds_;
  std::vector<double> state_;
  std::vector<double> step_;         // this step's sums so far (step_statistics())
  std::int64_t n_labelled_ = 0;      // the training set's labelled pairs, for the next lambda
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(dedpo::describe<DedpoLoss>(
    "dedpo", "1.1.0",
    "Debiased DPO: unbiased semi-supervised Diffusion-DPO with an annotator (PPI++ lambda).",
    kOptions))
