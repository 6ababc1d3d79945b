// Gradients against finite differences, stability at huge logits in float32 and bfloat16, option
// errors and the running state of lambda = "auto".
#include <cmath>
#include <random>

#include "dedpo/error.hpp"
#include "dedpo/host/registry.hpp"
#include "loss_helpers.hpp"

using namespace loss_test;
using dedpo::PairPool;

namespace {

struct Named {
  const char* name;
  const char* options;
};

const Named kAllLosses[] = {
    {"dpo", ""},
    {"dpo", "ties = \"soft\""},
    {"sft", "ties = \"soft\""},
    {"cdpo", "epsilon = 0.2"},
    {"rdpo", "epsilon = 0.2"},
    {"ipo", "logit_tau = 0.5"},
    {"hinge", "margin = 1.5"},
    {"naive_ssl_dpo", "confidence_threshold = 0.6"},
    {"dedpo", "lambda = 1.0"},
    {"dedpo", "lambda = 0.35\nties = \"soft\""},
    {"dedpo", "lambda = \"auto\"\nlambda_warmup = 10"},
};

std::string error_of(const std::string& name, const std::string& options) {
  try {
    make_loss(name, options);
  } catch (const dedpo::Error& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace

TEST(LossNumerics, GradientsMatchFiniteDifferences) {
  World w = make_world({});
  std::mt19937_64 rng(3);
  std::vector<bool> labelled = random_labelled(w.n, 50, rng);
  std::vector<std::int64_t> batch = random_batch(w.n, 32, rng);
  for (const Named& c : kAllLosses) {
    SCOPED_TRACE(std::string(c.name) + " " + c.options);
    auto loss = make_loss(c.name, c.options);
    const PairPool pool = loss->pool();
    const std::vector<bool>& lab = pool == PairPool::all ? labelled : all_labelled(w);
    // Warm up running statistics, then freeze them: every evaluation below starts from `state`.
    for (int rep = 0; rep < 3; ++rep) evaluate(*loss, w, w.theta, random_batch(w.n, 32, rng), lab, pool);
    const std::vector<double> state = loss->state();
    loss->load_state(state);
    Eval e = evaluate(*loss, w, w.theta, batch, lab, pool);
    double norm = 0;
    for (std::int64_t k = 0; k < w.d; ++k) {
      const double step = 1e-6;
      std::vector<double> plus = w.theta, minus = w.theta;
      plus[k] += step;
      minus[k] -= step;
      loss->load_state(state);
      double f_plus = evaluate(*loss, w, plus, batch, lab, pool).loss;
      loss->load_state(state);
      double f_minus = evaluate(*loss, w, minus, batch, lab, pool).loss;
      double fd = (f_plus - f_minus) / (2 * step);
      EXPECT_NEAR(e.grad[k], fd, 1e-6 * (1 + std::abs(fd))) << "component " << k;
      norm += std::abs(e.grad[k]);
    }
    EXPECT_GT(norm, 1e-8);  // a real gradient
  }
}

TEST(LossNumerics, FiniteAtHugeLogitsInFloat32AndBfloat16) {
  // h = -(beta/2)(e_A - e_B) with e_ref equal on both sides: |h| from 0 to 1e6.
  const std::vector<double> h = {-1e6, -3e5, -1e3, -30, -1, 0, 1, 30, 1e3, 3e5, 1e6, 7.5e5};
  const std::vector<double> z = {1, 0, 1, 0.5, 0, 1, 0.5, 0, 1, 0, 1, 0};
  const std::vector<std::uint8_t> lab = {1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0};
  const std::vector<double> g = {0.9, 0.1, 0.99, 0.5, 0.2, 1.0, 0.0, 0.7, 0.3, 0.6, 0.05, 0.8};
  const auto b = static_cast<std::int64_t>(h.size());
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (const Named& c : kAllLosses) {
      SCOPED_TRACE(std::string(c.name) + " " + c.options + " " + c10::toString(dtype));
      auto loss = make_loss(c.name, c.options);
      at::TensorOptions opt = at::TensorOptions().dtype(dtype);
      std::vector<double> delta;
      for (double v : h) delta.push_back(-2.0 * v / kBeta);
      at::Tensor err_a = (dvec(delta) + 0.05).to(dtype).requires_grad_(true);
      at::Tensor err_b = at::full({b}, 0.05, opt).requires_grad_(true);
      dedpo::PairTerms t;
      t.model_err_a = err_a;
      t.model_err_b = err_b;
      t.ref_err_a = at::full({b}, 0.05, opt);
      t.ref_err_b = at::full({b}, 0.05, opt);
      at::Tensor is_lab = at::tensor(at::ArrayRef<std::uint8_t>(lab)).to(at::kBool);
      t.human_label = at::where(is_lab, dvec(z), at::full({b}, NAN, at::kDouble)).to(dtype);
      t.is_labelled = is_lab;
      t.annotator_prob = dvec(g).to(dtype);
      t.n_labelled = 8;
      t.n_unlabelled = 4;
      t.drawn_from = loss->pool();
      if (t.drawn_from == PairPool::labelled) {
        t.is_labelled = at::ones({b}, at::kBool);
        t.human_label = dvec(z).to(dtype);
      }
      t.fold_key = dedpo::fold_keys(t.is_labelled, 1);
      for (int rep = 0; rep < 2; ++rep) {  // the second pass runs with warmed-up statistics
        if (err_a.grad().defined()) err_a.grad().zero_(), err_b.grad().zero_();
        dedpo::LossResult r = loss->compute(t);
        ASSERT_TRUE(std::isfinite(r.loss.item<double>())) << r.loss.item<double>();
        for (const auto& [name, value] : r.diagnostics) {
          EXPECT_TRUE(std::isfinite(value)) << name;
        }
        r.loss.backward();
        for (const at::Tensor& grad : {err_a.grad(), err_b.grad()}) {
          ASSERT_TRUE(grad.defined());
          EXPECT_EQ(grad.scalar_type(), dtype);
          EXPECT_TRUE(grad.isfinite().all().item<bool>()) << grad;
          EXPECT_GT(grad.abs().sum().item<double>(), 0.0);
        }
      }
    }
  }
}

TEST(LossNumerics, BceWithLogitsMatchesDpoLossAtExtremes) {
  // For z = 1 the per-pair loss is softplus(-h): ~|h| for h << 0, ~0 for h >> 0, in float32.
  auto dpo = make_loss("dpo");
  dedpo::PairTerms t;
  t.model_err_a = at::tensor({400.05f, 0.05f}, at::kFloat);  // h = -1e6, then h = 0
  t.model_err_b = at::tensor({0.05f, 0.05f}, at::kFloat);
  t.ref_err_a = at::full({2}, 0.05f, at::kFloat);
  t.ref_err_b = at::full({2}, 0.05f, at::kFloat);
  t.human_label = at::ones({2}, at::kFloat);
  t.is_labelled = at::ones({2}, at::kBool);
  double value = dpo->compute(t).loss.item<double>();
  EXPECT_NEAR(value, (1e6 + std::log(2.0)) / 2, 1e6 * 1e-6);
}

TEST(LossOptions, SpecificErrors) {
  std::string e = error_of("dedpo", "lambda = 1.5");
  EXPECT_NE(e.find("option 'lambda': expected a number in [0, 1] or \"auto\", got 1.5"),
            std::string::npos) << e;
  e = error_of("dedpo", "lambda = \"sometimes\"");
  EXPECT_NE(e.find("option 'lambda': expected a number in [0, 1] or \"auto\", got \"sometimes\""),
            std::string::npos) << e;
  e = error_of("dedpo", "lamda = 0.5");
  EXPECT_NE(e.find("unknown option 'lamda'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'lambda'"), std::string::npos) << e;
  e = error_of("dpo", "beta = -3.0");
  EXPECT_NE(e.find("option 'beta': expected a finite number > 0, got -3.0"), std::string::npos) << e;
  e = error_of("dpo", "beta = \"large\"");
  EXPECT_NE(e.find("option 'beta' expects a number"), std::string::npos) << e;
  e = error_of("cdpo", "epsilon = 0.5");
  EXPECT_NE(e.find("option 'epsilon': expected a number in [0.0, 0.5), got 0.5"), std::string::npos) << e;
  e = error_of("rdpo", "epsilon = -0.1");
  EXPECT_NE(e.find("option 'epsilon': expected a number in [0.0, 0.5)"), std::string::npos) << e;
  e = error_of("dpo", "ties = \"maybe\"");
  EXPECT_NE(e.find("option 'ties': expected \"soft\" or \"drop\", got \"maybe\""), std::string::npos) << e;
  e = error_of("naive_ssl_dpo", "confidence_threshold = 0.3");
  EXPECT_NE(e.find("option 'confidence_threshold': expected a number in [0.5, 1.0]"), std::string::npos) << e;
  e = error_of("naive_ssl_dpo", "pseudo_labels = \"fuzzy\"");
  EXPECT_NE(e.find("expected \"soft\" or \"hard\", got \"fuzzy\""), std::string::npos) << e;
  e = error_of("dedpo", "lambda_decay = 0.0");
  EXPECT_NE(e.find("option 'lambda_decay': expected a number in (0, 1]"), std::string::npos) << e;
  e = error_of("dedpo", "lambda_warmup = 0");
  EXPECT_NE(e.find("option 'lambda_warmup': expected an integer >= 1"), std::string::npos) << e;
  e = error_of("dedpo", "lambda_moments = \"median\"");
  EXPECT_NE(e.find("expected \"central\" or \"raw\", got \"median\""), std::string::npos) << e;
  e = error_of("ipo", "logit_tau = 0");
  EXPECT_NE(e.find("option 'logit_tau': expected a finite number > 0"), std::string::npos) << e;
  EXPECT_EQ(error_of("dedpo", "lambda = \"auto\""), "(no error)");
  EXPECT_EQ(error_of("dedpo", "lambda = 0"), "(no error)");  // an integer is a number
}

TEST(LossOptions, EverySchemaEntryIsDocumented) {
  for (const char* name :
       {"dpo", "sft", "cdpo", "rdpo", "ipo", "hinge", "naive_ssl_dpo", "dedpo"}) {
    const dedpo::PluginEntry& entry = registry().find(dedpo::PluginKind::loss, name);
    EXPECT_GT(std::string(entry.descriptor->description).size(), 10u) << name;
    EXPECT_GT(entry.descriptor->option_count, 0u) << name;
    bool has_ties = false;
    for (std::size_t i = 0; i < entry.descriptor->option_count; ++i) {
      const dedpo::OptionSpec& spec = entry.descriptor->options[i];
      EXPECT_NE(spec.default_value, nullptr) << name << "." << spec.name;
      EXPECT_GT(std::string(spec.help).size(), 10u) << name << "." << spec.name;
      has_ties = has_ties || std::string(spec.name) == "ties";
    }
    EXPECT_TRUE(has_ties) << name;
    EXPECT_NO_THROW(make_loss(name)) << name;  // the defaults are valid
  }
}

TEST(LossState, AutoLambdaResumesBitIdentically) {
  WorldSpec spec;
  spec.annotator_noise = 2.0;
  World w = make_world(spec);
  std::mt19937_64 rng(17);
  std::vector<bool> labelled = random_labelled(w.n, 40, rng);
  const std::string options = "lambda = \"auto\"\nlambda_warmup = 16\nlambda_decay = 0.9";
  auto first = make_loss("dedpo", options);
  for (int rep = 0; rep < 6; ++rep) {
    evaluate(*first, w, w.theta, random_batch(w.n, 24, rng), labelled, PairPool::all);
  }
  const std::vector<double> saved = first->state();
  std::vector<std::vector<std::int64_t>> batches;
  for (int rep = 0; rep < 5; ++rep) batches.push_back(random_batch(w.n, 24, rng));

  std::vector<double> losses, lambdas, grads;
  double previous_estimate = std::nan("");
  for (const auto& batch : batches) {
    Eval e = evaluate(*first, w, w.theta, batch, labelled, PairPool::all);
    losses.push_back(e.loss);
    lambdas.push_back(diagnostic(e.result, "lambda"));
    grads.insert(grads.end(), e.grad.begin(), e.grad.end());
    // lambda of this batch is the estimate left by the previous batches only.
    if (!std::isnan(previous_estimate)) EXPECT_EQ(lambdas.back(), previous_estimate);
    previous_estimate = diagnostic(e.result, "lambda_estimate");
  }
  bool varied = false;
  for (double l : lambdas) varied = varied || (l != 1.0 && l != lambdas.front());
  EXPECT_TRUE(varied) << "auto lambda should move after warm-up";

  auto resumed = make_loss("dedpo", options);
  resumed->load_state(saved);
  for (std::size_t i = 0; i < batches.size(); ++i) {
    Eval e = evaluate(*resumed, w, w.theta, batches[i], labelled, PairPool::all);
    EXPECT_EQ(e.loss, losses[i]) << "batch " << i;
    EXPECT_EQ(diagnostic(e.result, "lambda"), lambdas[i]) << "batch " << i;
    for (std::int64_t k = 0; k < w.d; ++k) EXPECT_EQ(e.grad[k], grads[i * w.d + k]);
  }
  EXPECT_EQ(resumed->state(), first->state());

  // A fresh loss (no state) behaves differently: the state really matters.
  auto fresh = make_loss("dedpo", options);
  EXPECT_NE(evaluate(*fresh, w, w.theta, batches[0], labelled, PairPool::all).loss, losses[0]);

  EXPECT_THROW(resumed->load_state({1.0, 2.0}), dedpo::Error);
  auto dpo = make_loss("dpo");
  EXPECT_TRUE(dpo->state().empty());
  EXPECT_THROW(dpo->load_state({1.0}), dedpo::Error);
}

// The moments of lambda = "auto" move once per optimiser step: two micro-batches of one step see
// the same lambda, and their statistics summed (as the trainer sums them over the ranks of a
// data-parallel run) give the state of one process that accumulated both. A step the NaN guard
// skips (load_state(state())) leaves the state as it was.
TEST(LossState, AutoLambdaMovesOncePerStepWithTheStatisticsOfEveryRank) {
  WorldSpec spec;
  spec.annotator_noise = 2.0;
  World w = make_world(spec);
  std::mt19937_64 rng(23);
  std::vector<bool> labelled = random_labelled(w.n, 40, rng);
  const std::string options = "lambda = \"auto\"\nlambda_warmup = 8\nlambda_decay = 0.9";
  auto one = make_loss("dedpo", options);
  for (int rep = 0; rep < 4; ++rep) {
    evaluate(*one, w, w.theta, random_batch(w.n, 24, rng), labelled, PairPool::all);
  }
  const std::vector<double> before = one->state();
  const std::vector<std::int64_t> first = random_batch(w.n, 24, rng),
                                  second = random_batch(w.n, 24, rng);
  const auto lambda_of = [&](dedpo::Loss& loss, const std::vector<std::int64_t>& batch) {
    at::Tensor theta = dvec(w.theta);
    return diagnostic(loss.compute(make_terms(w, theta, batch, labelled, PairPool::all)), "lambda");
  };

  // One process, one step of two micro-batches.
  const double lambda_first = lambda_of(*one, first);
  EXPECT_EQ(lambda_of(*one, second), lambda_first) << "lambda moved within a step";
  EXPECT_EQ(one->state(), before) << "the state moved before the step ended";
  const std::vector<double> both = one->step_statistics();
  const dedpo::Figures figures = one->end_step(both);

  // Two ranks, one micro-batch each, their statistics summed.
  auto rank0 = make_loss("dedpo", options), rank1 = make_loss("dedpo", options);
  rank0->load_state(before);
  rank1->load_state(before);
  EXPECT_EQ(lambda_of(*rank0, first), lambda_first);
  EXPECT_EQ(lambda_of(*rank1, second), lambda_first);
  std::vector<double> summed = rank0->step_statistics();
  const std::vector<double> other = rank1->step_statistics();
  ASSERT_EQ(summed.size(), other.size());
  for (std::size_t i = 0; i < summed.size(); ++i) summed[i] += other[i];
  EXPECT_EQ(summed, both);  // micro-batch totals added: b0 + b1 either way
  EXPECT_EQ(rank0->end_step(summed), figures);
  EXPECT_EQ(rank1->end_step(summed), figures);
  EXPECT_EQ(rank0->state(), one->state());
  EXPECT_EQ(rank1->state(), one->state());
  EXPECT_NE(one->state(), before);
  ASSERT_EQ(figures.size(), 1u);
  EXPECT_EQ(figures[0].first, "lambda_estimate");

  // A skipped step: its statistics are dropped, the next step starts from the same state.
  const std::vector<double> kept = one->state();
  lambda_of(*one, first);
  one->load_state(one->state());
  EXPECT_EQ(one->step_statistics(), std::vector<double>(both.size(), 0.0));
  EXPECT_EQ(one->state(), kept);

  EXPECT_THROW(one->end_step({1.0}), dedpo::Error);
  auto dpo = make_loss("dpo");
  EXPECT_TRUE(dpo->step_statistics().empty());
  EXPECT_TRUE(dpo->end_step({}).empty());
  EXPECT_THROW(dpo->end_step({1.0}), dedpo::Error);
}

TEST(LossState, WarmupUsesLambdaOne) {
  World w = make_world({});
  std::mt19937_64 rng(21);
  std::vector<bool> labelled = random_labelled(w.n, 40, rng);
  auto loss = make_loss("dedpo", "lambda = \"auto\"\nlambda_warmup = 30");
  double seen = 0;
  bool left_warmup = false;
  for (int rep = 0; rep < 12; ++rep) {
    auto batch = random_batch(w.n, 24, rng);
    Eval e = evaluate(*loss, w, w.theta, batch, labelled, PairPool::all);
    if (seen < 30) {
      EXPECT_EQ(diagnostic(e.result, "lambda"), 1.0) << "labelled pairs seen: " << seen;
    } else {
      left_warmup = true;
    }
    seen += diagnostic(e.result, "labelled_pairs");
  }
  EXPECT_TRUE(left_warmup);
}
