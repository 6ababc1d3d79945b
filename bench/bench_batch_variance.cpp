// dedpo_bench_batch_variance [EXPERIMENT.toml] [--draws N] [--fractions F,F,...]
//                            [--labelled-batch B,B,...] [--set K=V]...
//
// Prints the gradient variance of DeDPO's batch estimators at equal batch size: pooled batches
// (batch_size pairs from all pairs, the labelled correction weighted N/n_l) against two-stream
// batches (B_l pairs from the labelled pairs + batch_size - B_l from all pairs), at several
// labelled fractions. Default: the scarce-label toy world (experiments/toy/scarce_common.toml)
// with [loss] dedpo, beta 5, lambda 1, at the reference weights its [init] trains. A figure, not a
// timed test.
//
// Every pair's errors come from one timestep/noise draw, fixed for the whole program, so the
// variance measured is the batch draw's alone (the same pairs, the same noise, different
// batches). With those errors the parameter gradient of any batch's loss is
//   sum over its slots of dL/dh_slot * grad h_slot,
// and grad h of every pair is computed once. Both estimators are unbiased for the full-batch
// gradient g_full of the same dataset-level L_lambda (docs/losses.md §3); the table gives
// tr Cov = E|g - E g|^2 (about the draws' mean) and E|g - g_full|^2 (about the exact value).
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/autograd.h>

#include "dedpo/cross_fit.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/assemble.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "run/init.hpp"
#include "run/labelled_split.hpp"
#include "run/run_folder.hpp"
#include "run/services.hpp"
#include "train/sampler.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;
using namespace dedpo;

namespace {

template <class T>
std::vector<T> comma_list(const std::string& text) {
  std::vector<T> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::istringstream number(item);
    T value{};
    if (!(number >> value)) throw Error("expected a comma-separated list of numbers, got '" + text + "'");
    values.push_back(value);
  }
  return values;
}

// Every pair's errors at one noise draw and the parameter gradient of its DPO logit direction:
// grad_diff row i = grad (e_theta(A_i) - e_theta(B_i)).
struct PairGradients {
  at::Tensor model_a, model_b, ref_a, ref_b;  // [N]
  at::Tensor grad_diff;                       // [N, P] float32
};

PairGradients pair_gradients(Backbone& backbone, const PairDataset& pairs,
                             const at::Tensor& condition, std::uint64_t seed) {
  std::vector<at::Tensor> params = trainable_parameters(backbone);
  std::int64_t size = 0;
  for (const at::Tensor& p : params) size += p.numel();
  const std::int64_t n = pairs.size();
  PairGradients out;
  out.grad_diff = at::empty({n, size}, at::kFloat);
  std::vector<double> ma(n), mb(n), ra(n), rb(n);
  at::Generator noise = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (std::int64_t i = 0; i < n; ++i) {
    PairBatch batch{pairs.a.slice(0, i, i + 1), pairs.b.slice(0, i, i + 1),
                    condition.index_select(0, pairs.prompt_index.slice(0, i, i + 1))};
    if (pairs.a_info.defined()) batch.a_info = pairs.a_info.slice(0, i, i + 1);
    if (pairs.b_info.defined()) batch.b_info = pairs.b_info.slice(0, i, i + 1);
    DenoisingErrors e = backbone.denoising_errors(batch, noise, /*with_reference=*/true);
    at::Tensor diff = (e.model_a - e.model_b).sum();
    std::vector<at::Tensor> grads = torch::autograd::grad({diff}, params, {}, std::nullopt,
                                                          /*create_graph=*/false,
                                                          /*allow_unused=*/true);
    std::vector<at::Tensor> flat;
    for (std::size_t k = 0; k < grads.size(); ++k) {
      // A parameter this pair does not reach (another prompt's embedding) has no gradient.
      flat.push_back(grads[k].defined() ? grads[k].reshape({-1}).to(at::kFloat)
                                        : at::zeros({params[k].numel()}, at::kFloat));
    }
    out.grad_diff[i].copy_(at::cat(flat));
    ma[i] = e.model_a.item<double>();
    mb[i] = e.model_b.item<double>();
    ra[i] = e.ref_a.item<double>();
    rb[i] = e.ref_b.item<double>();
  }
  auto tensor = [](const std::vector<double>& v) {
    return at::tensor(at::ArrayRef<double>(v), at::kDouble).to(at::kFloat);
  };
  out.model_a = tensor(ma);
  out.model_b = tensor(mb);
  out.ref_a = tensor(ra);
  out.ref_b = tensor(rb);
  return out;
}

// The parameter gradient of `loss` on the batch `index` (the labelled stream's
// `labelled_stream_size` pairs first), [P] double.
at::Tensor batch_gradient(Loss& loss, const PairGradients& pairs, const at::Tensor& index,
                          std::int64_t labelled_stream_size, const at::Tensor& is_labelled,
                          const at::Tensor& visible_label, const at::Tensor& annotator_prob,
                          const at::Tensor& fold_key, std::int64_t n_labelled) {
  at::Tensor model_a = pairs.model_a.index_select(0, index).requires_grad_(true);
  at::Tensor model_b = pairs.model_b.index_select(0, index).requires_grad_(true);
  PairTerms terms;
  terms.model_err_a = model_a;
  terms.model_err_b = model_b;
  terms.ref_err_a = pairs.ref_a.index_select(0, index);
  terms.ref_err_b = pairs.ref_b.index_select(0, index);
  terms.human_label = visible_label.index_select(0, index);
  terms.is_labelled = is_labelled.index_select(0, index);
  terms.annotator_prob = annotator_prob.index_select(0, index);
  terms.fold_key = fold_key.index_select(0, index);
  terms.n_labelled = n_labelled;
  terms.n_unlabelled = is_labelled.size(0) - n_labelled;
  terms.drawn_from = PairPool::all;
  terms.labelled_stream_size = labelled_stream_size;
  LossResult result = loss.compute(terms);
  auto grads = torch::autograd::grad({result.loss}, {model_a, model_b});
  // A loss of the DPO logit: d/de(A) = -d/de(B) for every slot.
  if (!at::allclose(grads[0], -grads[1], 1e-5, 1e-8)) {
    throw Error("the loss depends on the errors other than through the DPO logit; this "
                "benchmark needs one that does not");
  }
  return at::matmul(grads[0].to(at::kFloat), pairs.grad_diff.index_select(0, index)).to(at::kDouble);
}

struct Spread {
  double trace_cov = 0;   // E|g - mean g|^2
  double mse_exact = 0;   // E|g - g_full|^2: tr Cov again, when the estimator is unbiased
};

}  // namespace

int main(int argc, char** argv) try {
  apply_allocator_policy();
  fs::path file = fs::path(DEDPO_SOURCE_DIR) / "experiments/toy/scarce_common.toml";
  std::int64_t draws = 1000;
  std::vector<double> fractions = {0.05, 0.10, 0.25};
  std::vector<std::int64_t> labelled_batches = {16, 32, 64, 96};
  std::vector<Override> overrides = {{"loss.plugin", "\"dedpo\""}, {"loss.beta", "5.0"}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(arg + " expects a value");
      return argv[++i];
    };
    if (arg == "--draws") {
      draws = std::stoll(value());
    } else if (arg == "--fractions") {
      fractions = comma_list<double>(value());
    } else if (arg == "--labelled-batch") {
      labelled_batches = comma_list<std::int64_t>(value());
    } else if (arg == "--set") {
      overrides.push_back(parse_override(value()));
    } else if (arg == "--help" || arg == "-h") {
      std::cout << "usage: dedpo_bench_batch_variance [EXPERIMENT.toml] [--draws N] "
                   "[--fractions F,F,...] [--labelled-batch B,B,...] [--set K=V]...\n";
      return 0;
    } else {
      file = arg;
    }
  }
  const auto start = std::chrono::steady_clock::now();
  PluginRegistry registry;
  registry.load_default_locations();
  Experiment experiment = load_experiment(file, overrides, registry);
  if (!experiment.loss || !experiment.annotator) {
    throw Error(file.string() + ": the benchmark needs a [loss] and an [annotator]");
  }
  RunLog log;
  const InitialWeights init = resolve_init(experiment, registry, log);
  Assembly parts = assemble(experiment, registry, init.file);
  Backbone& backbone = *parts.backbone;
  const std::uint64_t seed = experiment.run.seed;
  DatasetContext data_context{backbone, cache_dir(experiment) / "data", seed};
  const PairDataset pairs = parts.dataset->pairs(data_context);
  const at::Tensor condition = backbone.encode_prompts(pairs.prompts).to(at::kCPU);
  const PairGradients gradients = pair_gradients(backbone, pairs, condition, seed ^ 0xBA7C4ull);
  const std::int64_t n = pairs.size();
  const std::int64_t batch_size = experiment.train.batch_size;
  RunServices services(experiment, registry, parts.backbone_context);

  std::cout << fmt::format(
      "experiment {} (loss {}, annotator {}), {} pairs, {} parameters, batch_size {}, {} draws "
      "per estimator; errors at one fixed noise draw per pair\n",
      file.string(), experiment.loss->plugin, experiment.annotator->plugin, n,
      gradients.grad_diff.size(1), batch_size, draws);
  std::cout << "| labelled | n_l | batches | tr Cov | E|g - g_full|^2 | vs pooled | |g_full|^2 |\n"
               "|---|---|---|---|---|---|---|\n";
  for (double fraction : fractions) {
    const at::Tensor is_labelled =
        choose_labelled(pairs, fraction, seed, experiment.train.split).to(at::kBool);
    const std::int64_t n_labelled = is_labelled.sum().item<std::int64_t>();
    const at::Tensor label = pairs.human_label.to(at::kFloat);
    const at::Tensor visible_label = at::where(is_labelled, label, at::full_like(label, NAN));
    const at::Tensor fold_key = fold_keys(is_labelled, seed);
    AnnotatorContext annotator_context{pairs,    is_labelled, backbone,
                                       services, seed,        cache_dir(experiment) / "annotator",
                                       experiment.run.device};
    const at::Tensor annotator_prob = parts.annotator->annotate(annotator_context).to(at::kFloat);
    auto gradient_of = [&](const at::Tensor& index, std::int64_t stream) {
      return batch_gradient(*parts.loss, gradients, index, stream, is_labelled, visible_label,
                            annotator_prob, fold_key, n_labelled);
    };
    const at::Tensor full = gradient_of(at::arange(n, at::kLong), 0);
    const double full_sq = full.pow(2).sum().item<double>();

    auto spread_of = [&](const TrainSettings& settings) {
      PairBatches batches(is_labelled, PairPool::all, settings, seed);
      at::Tensor sum = at::zeros_like(full);
      double sum_sq = 0, mse = 0;
      for (std::int64_t draw = 0; draw < draws; ++draw) {
        at::Tensor g = gradient_of(batches.next(), batches.labelled_stream_size());
        sum += g;
        sum_sq += g.pow(2).sum().item<double>();
        mse += (g - full).pow(2).sum().item<double>();
      }
      const double count = static_cast<double>(draws);
      at::Tensor mean = sum / count;
      Spread spread;
      spread.trace_cov = (sum_sq - count * mean.pow(2).sum().item<double>()) / (count - 1);
      spread.mse_exact = mse / count;
      return spread;
    };
    TrainSettings pooled = experiment.train;
    pooled.batches = BatchComposition::pooled;
    pooled.labelled_batch_size = 0;
    const Spread base = spread_of(pooled);
    std::cout << fmt::format("| {:.0f}% | {} | pooled {} | {:.4g} | {:.4g} | 1 | {:.4g} |\n",
                             100 * fraction, n_labelled, batch_size, base.trace_cov,
                             base.mse_exact, full_sq);
    for (std::int64_t labelled : labelled_batches) {
      if (labelled < 1 || labelled >= batch_size) continue;
      TrainSettings two_stream = pooled;
      two_stream.batches = BatchComposition::two_stream;
      two_stream.labelled_batch_size = labelled;
      const Spread s = spread_of(two_stream);
      std::cout << fmt::format("| {:.0f}% | {} | two-stream {} + {} | {:.4g} | {:.4g} | {:.3f} | |\n",
                               100 * fraction, n_labelled, labelled, batch_size - labelled,
                               s.trace_cov, s.mse_exact, s.mse_exact / base.mse_exact);
    }
  }
  std::cout << fmt::format("({:.0f} s)\n",
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                               .count());
  return 0;
} catch (const std::exception& error) {
  std::cerr << "dedpo_bench_batch_variance: " << error.what() << "\n";
  return 1;
}
