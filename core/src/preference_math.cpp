// Shared mathematics of the preference losses; see dedpo/preference_math.hpp and docs/losses.md.
#include "dedpo/preference_math.hpp"

#include <cmath>
#include <string>

#include <ATen/ATen.h>

#include "dedpo/error.hpp"

namespace dedpo {

namespace {

std::string in_quotes(std::string_view text) { return "\"" + std::string(text) + "\""; }

std::string number(double value) { return to_string(OptionValue(value)); }

// Detached copy on the CPU in float64, for diagnostics and running statistics.
at::Tensor host(const at::Tensor& t) {
  return t.detach().to(at::kCPU, at::kDouble).contiguous();
}

}  // namespace

// ---- options ---------------------------------------------------------------------------------

TieMode tie_mode(const Options& options, std::string_view name) {
  const std::string& value = string_choice(options, name, {"soft", "drop"});
  return value == "soft" ? TieMode::soft : TieMode::drop;
}

double real_in_range(const Options& options, std::string_view name, double lo, double hi,
                     bool hi_open) {
  double value = options.real(name);
  bool ok = std::isfinite(value) && value >= lo && (hi_open ? value < hi : value <= hi);
  if (!ok) {
    options.fail(name, "expected a number in [" + number(lo) + ", " + number(hi) +
                           (hi_open ? ")" : "]") + ", got " + number(value));
  }
  return value;
}

double positive_real(const Options& options, std::string_view name) {
  double value = options.real(name);
  if (!(std::isfinite(value) && value > 0)) {
    options.fail(name, "expected a finite number > 0, got " + number(value));
  }
  return value;
}

const std::string& string_choice(const Options& options, std::string_view name,
                                 std::initializer_list<std::string_view> choices) {
  const std::string& value = options.string(name);
  std::string list;
  for (std::string_view choice : choices) {
    if (value == choice) return value;
    list += (list.empty() ? "" : " or ") + in_quotes(choice);
  }
  options.fail(name, "expected " + list + ", got " + in_quotes(value));
}

// ---- per-pair mathematics --------------------------------------------------------------------

at::ScalarType compute_dtype(const at::Tensor& like) {
  return like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor dpo_logit(const PairTerms& terms, double beta) {
  const std::pair<const at::Tensor*, const char*> needed[] = {
      {&terms.model_err_a, "model_err_a"},
      {&terms.model_err_b, "model_err_b"},
      {&terms.ref_err_a, "ref_err_a"},
      {&terms.ref_err_b, "ref_err_b"}};
  for (const auto& [tensor, name] : needed) {
    if (!tensor->defined()) {
      throw Error(std::string("dpo_logit: PairTerms::") + name +
                  " is undefined (the loss needs the reference model's errors)");
    }
  }
  at::ScalarType dtype = compute_dtype(terms.model_err_a);
  at::Tensor model_a = terms.model_err_a.to(dtype);
  at::Tensor model_b = terms.model_err_b.to(dtype);
  at::Tensor ref_a = terms.ref_err_a.to(dtype);
  at::Tensor ref_b = terms.ref_err_b.to(dtype);
  return ((model_a - ref_a) - (model_b - ref_b)) * (-0.5 * beta);
}

at::Tensor bce_with_logits(const at::Tensor& h, const at::Tensor& target) {
  // p * softplus(-h) + (1 - p) * softplus(h): both softplus terms are finite for finite h and
  // their derivatives are sigmoids, so neither value nor gradient overflows.
  at::Tensor p = target.to(h.scalar_type());
  return p * at::softplus(-h) + (1.0 - p) * at::softplus(h);
}

LabelView label_view(const PairTerms& terms, TieMode ties, at::ScalarType dtype) {
  LabelView view;
  view.labelled = terms.is_labelled.to(at::kBool);
  view.unlabelled = view.labelled.logical_not();
  at::Tensor z = terms.human_label.to(dtype);
  view.target = at::where(view.labelled, z, at::full_like(z, 0.5));
  view.tie = view.labelled.logical_and(view.target == 0.5);
  view.use = ties == TieMode::soft ? view.labelled : view.labelled.logical_and(view.tie.logical_not());
  return view;
}

at::Tensor annotator_target(const PairTerms& terms, bool hard, at::ScalarType dtype) {
  if (!terms.annotator_prob.defined()) {
    throw Error("PairTerms::annotator_prob is undefined: this loss needs an annotator "
                "([annotator] in the experiment)");
  }
  at::Tensor g = terms.annotator_prob.to(dtype);
  bool bad = (g.isnan().logical_or(g < 0).logical_or(g > 1)).any().item<bool>();
  if (bad) {
    throw Error("PairTerms::annotator_prob holds values outside [0, 1] (or NaN); the annotator "
                "must give P(A preferred)");
  }
  return hard ? (g > 0.5).to(dtype) : g;
}

// ---- pool-weighted batch means ---------------------------------------------------------------

at::Tensor masked_sum(const at::Tensor& values, const at::Tensor& mask) {
  return at::where(mask, values, at::zeros_like(values)).sum();
}

at::Tensor labelled_mean(const at::Tensor& values, const at::Tensor& mask,
                         const PairTerms& terms) {
  if (const std::int64_t stream = terms.labelled_stream_size; stream > 0) {
    return masked_sum(values.slice(0, 0, stream), mask.slice(0, 0, stream)) /
           static_cast<double>(stream);
  }
  const double batch = static_cast<double>(values.size(0));
  at::Tensor sum = masked_sum(values, mask);
  if (terms.drawn_from == PairPool::labelled) return sum / batch;
  if (terms.n_labelled <= 0) {
    throw Error("labelled_mean: the batch was drawn from all pairs but the training set has "
                "no labelled pair (PairTerms::n_labelled = " +
                std::to_string(terms.n_labelled) + ")");
  }
  const double total = static_cast<double>(terms.n_labelled + terms.n_unlabelled);
  return sum * (total / (static_cast<double>(terms.n_labelled) * batch));
}

at::Tensor all_mean(const at::Tensor& values, const at::Tensor& mask, const PairTerms& terms,
                    std::string_view loss_name) {
  if (terms.drawn_from == PairPool::labelled && terms.n_unlabelled > 0) {
    throw Error(std::string(loss_name) +
                ": a mean over all pairs cannot be estimated from a batch drawn from the "
                "labelled pairs only (the training set has " +
                std::to_string(terms.n_unlabelled) +
                " unlabelled pairs); draw this loss's batches from PairPool::all");
  }
  if (const std::int64_t stream = terms.labelled_stream_size; stream > 0) {
    const std::int64_t batch = values.size(0);
    return masked_sum(values.slice(0, stream, batch), mask.slice(0, stream, batch)) /
           static_cast<double>(batch - stream);
  }
  return masked_sum(values, mask) / static_cast<double>(values.size(0));
}

at::Tensor all_mean_by_stream(const at::Tensor& values, const at::Tensor& mask,
                              const PairTerms& terms, std::string_view loss_name) {
  if (terms.labelled_stream_size == 0) return all_mean(values, mask, terms, loss_name);
  const at::Tensor labelled = terms.is_labelled.to(at::kBool);
  const double share = static_cast<double>(terms.n_labelled) /
                       static_cast<double>(terms.n_labelled + terms.n_unlabelled);
  return labelled_mean(values, mask.logical_and(labelled), terms) * share +
         all_mean(values, mask.logical_and(labelled.logical_not()), terms, loss_name);
}

// ---- checks and diagnostics ------------------------------------------------------------------

void check_terms(const PairTerms& terms, std::string_view loss_name, const Loss& loss) {
  const bool needs_reference = loss.needs_reference();
  const bool needs_annotator = loss.needs_annotator();
  const std::string name(loss_name);
  auto require = [&](const at::Tensor& t, const char* field, std::int64_t batch) {
    if (!t.defined()) throw Error(name + ": PairTerms::" + field + " is undefined");
    if (t.dim() != 1 || (batch >= 0 && t.size(0) != batch)) {
      throw Error(name + ": PairTerms::" + field + " must have shape [B] = [" +
                  std::to_string(batch) + "], got " + std::to_string(t.dim()) +
                  " dimension(s) of size " + (t.dim() > 0 ? std::to_string(t.size(0)) : "-"));
    }
  };
  require(terms.model_err_a, "model_err_a", -1);
  const std::int64_t batch = terms.model_err_a.size(0);
  if (batch == 0) throw Error(name + ": empty batch");
  require(terms.model_err_b, "model_err_b", batch);
  require(terms.human_label, "human_label", batch);
  require(terms.is_labelled, "is_labelled", batch);
  if (needs_reference) {
    require(terms.ref_err_a, "ref_err_a", batch);
    require(terms.ref_err_b, "ref_err_b", batch);
  }
  if (needs_annotator) require(terms.annotator_prob, "annotator_prob", batch);
  if (terms.n_labelled < 0 || terms.n_unlabelled < 0) {
    throw Error(name + ": negative pool sizes in PairTerms (n_labelled = " +
                std::to_string(terms.n_labelled) +
                ", n_unlabelled = " + std::to_string(terms.n_unlabelled) + ")");
  }
  at::Tensor labelled = terms.is_labelled.to(at::kBool);
  if (const std::int64_t stream = terms.labelled_stream_size; stream != 0) {
    if (!loss.takes_two_stream_batches()) {
      throw Error(name + ": given a two-stream batch (PairTerms::labelled_stream_size = " +
                  std::to_string(stream) + "), which this loss does not take");
    }
    if (stream < 0 || stream >= batch || terms.drawn_from != PairPool::all) {
      throw Error(name + ": a two-stream batch needs 0 < labelled_stream_size < B = " +
                  std::to_string(batch) + " and drawn_from = all, got labelled_stream_size = " +
                  std::to_string(stream));
    }
    if (!labelled.slice(0, 0, stream).all().item<bool>()) {
      throw Error(name + ": the labelled stream of a two-stream batch holds an unlabelled pair");
    }
  }
  at::Tensor z = terms.human_label.to(at::kFloat);
  bool bad = labelled.logical_and(z.isnan().logical_or(z < 0).logical_or(z > 1)).any().item<bool>();
  if (bad) {
    throw Error(name + ": a labelled pair has a human label outside [0, 1] (or NaN)");
  }
}

Figures preference_diagnostics(const PairTerms& terms, const at::Tensor& h) {
  Figures out;
  at::Tensor labelled = terms.is_labelled.detach().to(at::kCPU, at::kBool).contiguous();
  at::Tensor z = host(terms.human_label);
  const std::int64_t batch = labelled.size(0);
  const bool* lab = labelled.data_ptr<bool>();
  const double* zs = z.data_ptr<double>();
  std::int64_t n_labelled = 0, n_ties = 0;
  for (std::int64_t i = 0; i < batch; ++i) {
    if (!lab[i]) continue;
    ++n_labelled;
    if (zs[i] == 0.5) ++n_ties;
  }
  out.emplace_back("pairs", static_cast<double>(batch));
  out.emplace_back("labelled_pairs", static_cast<double>(n_labelled));
  out.emplace_back("unlabelled_pairs", static_cast<double>(batch - n_labelled));
  out.emplace_back("tie_pairs", static_cast<double>(n_ties));

  if (h.defined()) {
    at::Tensor hs = host(h);
    const double* hv = hs.data_ptr<double>();
    double sum = 0;
    std::int64_t agree = 0, decided = 0;
    for (std::int64_t i = 0; i < batch; ++i) {
      sum += hv[i];
      if (!lab[i] || zs[i] == 0.5) continue;
      ++decided;
      if ((zs[i] > 0.5 && hv[i] > 0) || (zs[i] < 0.5 && hv[i] < 0)) ++agree;
    }
    out.emplace_back("logit_mean", sum / static_cast<double>(batch));
    if (decided > 0) {
      out.emplace_back("implicit_accuracy",
                       static_cast<double>(agree) / static_cast<double>(decided));
    }
  }
  if (terms.model_err_a.defined() && terms.model_err_b.defined()) {
    at::Tensor model_diff = host(terms.model_err_a) - host(terms.model_err_b);
    out.emplace_back("model_diff_mean", model_diff.mean().item<double>());
    if (terms.ref_err_a.defined() && terms.ref_err_b.defined()) {
      at::Tensor ref_diff = host(terms.ref_err_a) - host(terms.ref_err_b);
      out.emplace_back("ref_diff_mean", ref_diff.mean().item<double>());
      out.emplace_back("reward_margin_mean", (ref_diff - model_diff).mean().item<double>());
    }
  }
  return out;
}

}  // namespace dedpo
