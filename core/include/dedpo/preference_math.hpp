#pragma once
// Shared mathematics of the preference losses (docs/losses.md): the Diffusion-DPO logit, a
// numerically safe binary cross-entropy on logits, label/tie handling, the pool-weighted batch
// means that keep batch estimates unbiased for the dataset-level formulas, and the common
// diagnostics. Out-of-tree loss plugins link dedpo::core and reuse these.
//
// Conventions
//   h = -(beta / 2) * [(e_theta(A) - e_ref(A)) - (e_theta(B) - e_ref(B))]   (beta = 5000 for SD1.5
//   and SDXL, the explicit 1/2 included), G_theta = sigmoid(h) = P_theta(A preferred).
//   All per-pair arithmetic runs in float32 (float64 when the inputs are float64); bfloat16 and
//   float16 inputs are cast up, and gradients flow back through the cast.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dedpo/loss.hpp"
#include "dedpo/options.hpp"

namespace dedpo {

// ---- options shared by the preference losses ------------------------------------------------

enum class TieMode : std::uint32_t {
  soft,  // a tie (z = 0.5) is a soft target 0.5
  drop,  // a tie contributes nothing (zero, with the denominators unchanged)
};

// Reads option `name` ("soft" | "drop"); fails with a specific message otherwise.
TieMode tie_mode(const Options& options, std::string_view name = "ties");

// Reads a real option and fails unless lo <= value <= hi (or lo <= value < hi when
// `hi_open`). Returns the value.
double real_in_range(const Options& options, std::string_view name, double lo, double hi,
                     bool hi_open = false);

// Reads a real option and fails unless it is finite and > 0 (e.g. beta).
double positive_real(const Options& options, std::string_view name);

// Fails unless the option's string value is one of `choices`. Returns the value.
const std::string& string_choice(const Options& options, std::string_view name,
                                 std::initializer_list<std::string_view> choices);

// ---- per-pair mathematics --------------------------------------------------------------------

// float64 stays float64; every other floating type computes in float32.
at::ScalarType compute_dtype(const at::Tensor& like);

// The Diffusion-DPO logit h (see above), [B], in the compute dtype. Requires the four error
// tensors (throws dedpo::Error naming the missing one).
at::Tensor dpo_logit(const PairTerms& terms, double beta);

// Per-element binary cross-entropy of sigmoid(h) against target p, written as
//   p * softplus(-h) + (1 - p) * softplus(h)   (= softplus(h) - p * h),
// finite in value and gradient (d/dh = sigmoid(h) - p) for any finite h, and valid (linear in
// p) for targets outside [0, 1] as used by rdpo. h and p are broadcast; p may be a scalar.
at::Tensor bce_with_logits(const at::Tensor& h, const at::Tensor& target);

// The labels of a batch, cleaned for arithmetic.
struct LabelView {
  at::Tensor target;      // [B] compute dtype: z where labelled, 0.5 elsewhere (never NaN)
  at::Tensor use;         // [B] bool: labelled and kept (ties included only with TieMode::soft)
  at::Tensor labelled;    // [B] bool: has a human label
  at::Tensor tie;         // [B] bool: labelled with z == 0.5
  at::Tensor unlabelled;  // [B] bool
};
LabelView label_view(const PairTerms& terms, TieMode ties, at::ScalarType dtype);

// The annotator's P(A preferred) as a target, [B], compute dtype; "hard" rounds to 1[g > 0.5].
// Throws dedpo::Error when the annotator did not run or gives values outside [0, 1].
at::Tensor annotator_target(const PairTerms& terms, bool hard, at::ScalarType dtype);

// ---- pool-weighted batch means (docs/losses.md, "Batch composition") -------------------------

// Unbiased batch estimate of (1 / n_l) * sum over the labelled pairs of the training set of
// `values`, counting only the batch pairs where `mask` is true (others contribute zero, even if
// their value is NaN):
//   drawn_from == labelled:  (1 / B) * sum_{i in batch, mask} values_i
//   drawn_from == all:       (N / n_l) * (1 / B) * sum_{i in batch, mask} values_i,  N = n_l + n_u
//   two-stream batch:        (1 / B_l) * sum_{i in the labelled stream, mask} values_i
//                            (B_l = labelled_stream_size; the all-pairs stream is not used)
// Returns a differentiable scalar.
at::Tensor labelled_mean(const at::Tensor& values, const at::Tensor& mask,
                         const PairTerms& terms);

// Unbiased batch estimate of (1 / N) * sum over all pairs of `values` (masked as above):
// (1 / B) * sum_{i in batch, mask} values_i; for a two-stream batch the same over the all-pairs
// stream only, (1 / (B - B_l)) * sum_{i in it, mask} values_i. Throws when the batch was drawn
// from the labelled pool while unlabelled pairs exist (an all-pairs mean cannot be estimated
// from it).
at::Tensor all_mean(const at::Tensor& values, const at::Tensor& mask, const PairTerms& terms,
                    std::string_view loss_name);

// The same all-pairs mean, (1 / N) * sum over all pairs of `values` (masked), with the labelled
// pairs' share taken from the labelled stream of a two-stream batch:
//   (n_l / N) * labelled_mean(values on labelled pairs) + all_mean(values on unlabelled pairs);
// for a batch from one pool it is all_mean. For a loss whose all-pairs mean treats labelled and
// unlabelled pairs differently (naive_ssl_dpo), so that the labelled stream is not wasted.
at::Tensor all_mean_by_stream(const at::Tensor& values, const at::Tensor& mask,
                              const PairTerms& terms, std::string_view loss_name);

// Sum of `values` where `mask` (zero elsewhere, NaN-safe), as a scalar tensor.
at::Tensor masked_sum(const at::Tensor& values, const at::Tensor& mask);

// ---- checks and diagnostics ------------------------------------------------------------------

// Throws dedpo::Error "<loss_name>: ..." when the batch is empty or inconsistent (shapes, missing
// reference/annotator tensors that `loss` says it needs, pool sizes, a two-stream batch that
// `loss` does not take or whose labelled stream is not labelled pairs).
void check_terms(const PairTerms& terms, std::string_view loss_name, const Loss& loss);

// Common figures for metrics.jsonl:
//   pairs, labelled_pairs, unlabelled_pairs, tie_pairs   counts in this batch
//   logit_mean                                            mean h over the batch
//   implicit_accuracy   fraction of labelled non-tie pairs with sign(h) agreeing with z (h = 0
//                       counts as wrong); absent when the batch has none
//   model_diff_mean     mean of e_theta(A) - e_theta(B);  ref_diff_mean: same for the reference
//   reward_margin_mean  mean of (e_ref(A)-e_theta(A)) - (e_ref(B)-e_theta(B)) = 2h/beta
// `h` may be undefined (losses without a logit, e.g. sft).
Figures preference_diagnostics(const PairTerms& terms, const at::Tensor& h);

}  // namespace dedpo
