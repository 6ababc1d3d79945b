// Monte Carlo checks: unbiasedness of DeDPO (loss and gradient) over random labelled subsets and
// random pooled or two-stream batches, the bias of naive pseudo-labelling, rDPO under known flip
// noise, the variance reduction of lambda = "auto" and of two-stream batches, and the
// cross-fitting that keeps a learned annotator and lambda = "auto" from using the labels they
// correct with.
#include <cmath>
#include <random>

#include "dedpo/cross_fit.hpp"

#include "loss_helpers.hpp"

using namespace loss_test;
using dedpo::PairPool;

namespace {

// |mean - target| <= z * standard error, for the loss and every gradient component.
void expect_within_band(const Moments& m, const std::vector<double>& target, double z,
                        const std::string& what) {
  for (std::size_t k = 0; k < target.size(); ++k) {
    EXPECT_LE(std::abs(m.mean(k) - target[k]), z * m.std_error(k))
        << what << ", component " << k << ": mean " << m.mean(k) << ", target " << target[k]
        << ", standard error " << m.std_error(k);
    EXPECT_GT(m.std_error(k), 0.0) << what;  // the draws really varied
  }
}

// A loss plugin and its options.
struct LossCase {
  const char* name;
  const char* options;
};

}  // namespace

TEST(LossMonteCarlo, DedpoIsUnbiasedOverLabelledSubsetsAndNaiveIsNot) {
  World w = make_world({});  // annotator biased towards A, 10% ties (dropped)
  const std::int64_t n_labelled = 30;
  std::vector<double> target =
      loss_and_grad(evaluate(*make_loss("dpo"), w, w.theta, range(w.n), all_labelled(w),
                             PairPool::labelled));
  auto dedpo = make_loss("dedpo", "lambda = 1.0");
  auto dedpo_half = make_loss("dedpo", "lambda = 0.5\npseudo_labels = \"hard\"");
  auto naive = make_loss("naive_ssl_dpo");
  Moments m_dedpo, m_half, m_naive;
  std::mt19937_64 rng(2024);
  for (int rep = 0; rep < 1000; ++rep) {
    std::vector<bool> labelled = random_labelled(w.n, n_labelled, rng);
    m_dedpo.add(loss_and_grad(evaluate(*dedpo, w, w.theta, range(w.n), labelled, PairPool::all)));
    m_half.add(loss_and_grad(evaluate(*dedpo_half, w, w.theta, range(w.n), labelled, PairPool::all)));
    m_naive.add(loss_and_grad(evaluate(*naive, w, w.theta, range(w.n), labelled, PairPool::all)));
  }
  expect_within_band(m_dedpo, target, 4.0, "dedpo lambda=1");
  expect_within_band(m_half, target, 4.0, "dedpo lambda=0.5 hard");
  // The pseudo-labelling baseline inherits the annotator's bias: far outside its band.
  EXPECT_GT(std::abs(m_naive.mean(0) - target[0]), 8.0 * m_naive.std_error(0))
      << "naive mean " << m_naive.mean(0) << ", target " << target[0];
  double worst = 0;
  for (std::size_t k = 1; k < target.size(); ++k) {
    worst = std::max(worst, std::abs(m_naive.mean(k) - target[k]) / m_naive.std_error(k));
  }
  EXPECT_GT(worst, 8.0) << "naive gradient should be biased";
}

namespace {

// A learnable annotator that over-fits, as a model trained on few labels does: each pair gets
// 0.1 + 0.8 z of its nearest neighbour (in x_A - x_B) among the pairs it may learn from, so a
// pair it learnt from is its own neighbour and gets (almost) its own label.
at::Tensor nearest_neighbour_annotator(const World& w, const at::Tensor& train) {
  at::Tensor learn = train.to(at::kBool).contiguous();
  const bool* may_learn = learn.data_ptr<bool>();
  std::vector<double> g(static_cast<std::size_t>(w.n));
  for (std::int64_t i = 0; i < w.n; ++i) {
    double best = INFINITY;
    for (std::int64_t j = 0; j < w.n; ++j) {
      if (!may_learn[j]) continue;
      double distance = 0;
      for (std::int64_t k = 0; k < w.d; ++k) {
        const double di = w.xa[i * w.d + k] - w.xb[i * w.d + k];
        const double dj = w.xa[j * w.d + k] - w.xb[j * w.d + k];
        distance += (di - dj) * (di - dj);
      }
      if (distance < best) {
        best = distance;
        g[static_cast<std::size_t>(i)] = 0.1 + 0.8 * w.z[static_cast<std::size_t>(j)];
      }
    }
  }
  return dvec(g);
}

World with_annotator(const World& w, const at::Tensor& g) {
  World out = w;
  at::Tensor values = g.to(at::kDouble).contiguous();
  out.g.assign(values.data_ptr<double>(), values.data_ptr<double>() + w.n);
  return out;
}

}  // namespace

TEST(LossMonteCarlo, CrossFittingKeepsDedpoUnbiasedWithALearnedAnnotator) {
  World w = make_world({});
  const std::vector<double> target = loss_and_grad(evaluate(
      *make_loss("dpo"), w, w.theta, range(w.n), all_labelled(w), PairPool::labelled));
  auto dedpo = make_loss("dedpo", "lambda = 1.0");
  Moments fitted_on_all, cross_fitted;
  std::mt19937_64 rng(2025);
  for (int rep = 0; rep < 1000; ++rep) {
    std::vector<bool> labelled = random_labelled(w.n, 30, rng);
    at::Tensor mask = bool_mask(labelled);
    auto fit = [&](const at::Tensor& train) { return nearest_neighbour_annotator(w, train); };
    for (auto [folds, moments] : {std::pair{1, &fitted_on_all}, std::pair{5, &cross_fitted}}) {
      World annotated = with_annotator(w, dedpo::cross_fit(mask, folds, rep, fit));
      moments->add(loss_and_grad(
          evaluate(*dedpo, annotated, w.theta, range(w.n), labelled, PairPool::all)));
    }
  }
  expect_within_band(cross_fitted, target, 4.0, "dedpo, cross-fitted annotator (5 folds)");
  // Trained on the labels it is corrected with, the annotator cancels the correction on the
  // labelled pairs: far outside the band.
  double worst = 0;
  for (std::size_t k = 0; k < target.size(); ++k) {
    worst = std::max(worst, std::abs(fitted_on_all.mean(k) - target[k]) / fitted_on_all.std_error(k));
  }
  EXPECT_GT(worst, 8.0) << "dedpo with an annotator fitted on all labelled pairs should be biased";
  std::printf("[cross-fitting] largest bias in standard errors: fitted on all %.1f\n", worst);
}

TEST(LossMonteCarlo, AutoLambdaIsUnbiasedOverLabelledSubsets) {
  // lambda = "auto" estimated from every labelled pair (as its moments would be after an epoch)
  // correlates with the correction it weights; cross-fitted over folds it does not.
  // Few labels make the O(1 / n_l) bias of an in-sample lambda visible: estimated from the same
  // 6 labelled pairs it is ~10 standard errors off after 4000 subsets (measured); cross-fitted
  // it is within the band.
  WorldSpec spec;
  spec.annotator_bias = 0.5;
  spec.annotator_noise = 2.0;
  spec.annotator_slope = 0.7;
  spec.tie_fraction = 0;
  World w = make_world(spec);
  const std::vector<double> target = loss_and_grad(evaluate(
      *make_loss("dpo"), w, w.theta, range(w.n), all_labelled(w), PairPool::labelled));
  Moments m_auto;
  double lambda_sum = 0;
  std::mt19937_64 rng(77);
  const int draws = 4000;
  for (int rep = 0; rep < draws; ++rep) {
    std::vector<bool> labelled = random_labelled(w.n, 6, rng);
    auto automatic =
        make_loss("dedpo", "lambda = \"auto\"\nlambda_warmup = 1\nlambda_decay = 1.0");
    evaluate(*automatic, w, w.theta, range(w.n), labelled, PairPool::all);  // the moments
    Eval e = evaluate(*automatic, w, w.theta, range(w.n), labelled, PairPool::all);
    lambda_sum += diagnostic(e.result, "lambda");
    m_auto.add(loss_and_grad(e));
  }
  expect_within_band(m_auto, target, 4.0, "dedpo lambda=auto");
  EXPECT_GT(lambda_sum / draws, 0.05);  // the estimate really was in use, not lambda = 0 or 1
  EXPECT_LT(lambda_sum / draws, 0.95);
}

TEST(LossMonteCarlo, PooledBatchesAreUnbiasedForTheDatasetLevelFormula) {
  World w = make_world({});
  std::mt19937_64 rng(99);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  for (LossCase c : {LossCase{"dedpo", "lambda = 1.0"}, LossCase{"dedpo", "lambda = 0.4"},
                     LossCase{"dpo", ""}, LossCase{"naive_ssl_dpo", ""}}) {
    auto loss = make_loss(c.name, c.options);
    // Dataset-level value: every pair in one batch drawn from all pairs.
    std::vector<double> target =
        loss_and_grad(evaluate(*loss, w, w.theta, range(w.n), labelled, PairPool::all));
    if (std::string(c.name) == "dpo") {
      // ... which for dpo is the plain mean over the labelled pairs.
      std::vector<double> direct = loss_and_grad(evaluate(
          *loss, w, w.theta, labelled_indices(labelled), labelled, PairPool::labelled));
      for (std::size_t k = 0; k < target.size(); ++k) EXPECT_NEAR(direct[k], target[k], 1e-12);
    }
    // One epoch (every pair exactly once, batches of 20) averages to the dataset value exactly.
    Moments epoch;
    std::vector<std::int64_t> order = range(w.n);
    std::shuffle(order.begin(), order.end(), rng);
    for (std::int64_t start = 0; start < w.n; start += 20) {
      std::vector<std::int64_t> batch(order.begin() + start, order.begin() + start + 20);
      epoch.add(loss_and_grad(evaluate(*loss, w, w.theta, batch, labelled, PairPool::all)));
    }
    for (std::size_t k = 0; k < target.size(); ++k) {
      EXPECT_NEAR(epoch.mean(k), target[k], 1e-10 * (1 + std::abs(target[k]))) << c.name;
    }
    // Independent uniform batches of 12: unbiased within the Monte Carlo band.
    Moments random;
    for (int rep = 0; rep < 800; ++rep) {
      random.add(loss_and_grad(
          evaluate(*loss, w, w.theta, random_batch(w.n, 12, rng), labelled, PairPool::all)));
    }
    expect_within_band(random, target, 4.0, std::string(c.name) + " " + c.options);
  }
}

TEST(LossMonteCarlo, TwoStreamBatchesAreUnbiasedForTheDatasetLevelFormula) {
  // A two-stream batch estimates the same dataset-level L_lambda as a pooled one: its all-pairs
  // stream the all-pairs mean, its labelled stream the labelled mean (docs/losses.md §3).
  World w = make_world({});
  std::mt19937_64 rng(98);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  for (LossCase c : {LossCase{"dedpo", "lambda = 1.0"}, LossCase{"dedpo", "lambda = 0.4"},
                     LossCase{"naive_ssl_dpo", ""}}) {
    SCOPED_TRACE(std::string(c.name) + " " + c.options);
    auto loss = make_loss(c.name, c.options);
    std::vector<double> target =
        loss_and_grad(evaluate(*loss, w, w.theta, range(w.n), labelled, PairPool::all));
    // One epoch of each stream (6 batches of 5 labelled + 20 from all pairs) averages to the
    // dataset value exactly.
    std::vector<std::int64_t> labelled_order = labelled_indices(labelled), all_order = range(w.n);
    std::shuffle(labelled_order.begin(), labelled_order.end(), rng);
    std::shuffle(all_order.begin(), all_order.end(), rng);
    Moments epoch;
    for (std::int64_t b = 0; b < 6; ++b) {
      std::vector<std::int64_t> batch(labelled_order.begin() + 5 * b, labelled_order.begin() + 5 * b + 5);
      batch.insert(batch.end(), all_order.begin() + 20 * b, all_order.begin() + 20 * b + 20);
      epoch.add(loss_and_grad(evaluate(*loss, w, w.theta, batch, labelled, PairPool::all, 5)));
    }
    for (std::size_t k = 0; k < target.size(); ++k) {
      EXPECT_NEAR(epoch.mean(k), target[k], 1e-10 * (1 + std::abs(target[k]))) << "component " << k;
    }
    // Independent batches of 4 labelled + 8 from all pairs: within the Monte Carlo band.
    Moments random;
    for (int rep = 0; rep < 800; ++rep) {
      random.add(loss_and_grad(evaluate(*loss, w, w.theta,
                                        random_two_stream_batch(labelled, 4, 8, rng), labelled,
                                        PairPool::all, 4)));
    }
    expect_within_band(random, target, 4.0, "two-stream batches");
  }
}

TEST(LossMonteCarlo, TwoStreamDedpoIsUnbiasedForTheFullyLabelledObjective) {
  // Over random labelled subsets and random two-stream batches, DeDPO's mean is the fully
  // labelled DPO loss and gradient: fixed lambda, hard pseudo-labels, and lambda = "auto"
  // (cross-fitted; its moments from a pass over the subset, as after an epoch).
  WorldSpec spec;
  spec.annotator_bias = 0.5;
  spec.annotator_noise = 2.0;
  spec.annotator_slope = 0.7;
  World w = make_world(spec);  // 10% ties, dropped by every loss here
  const std::vector<double> target = loss_and_grad(evaluate(
      *make_loss("dpo"), w, w.theta, range(w.n), all_labelled(w), PairPool::labelled));
  auto one = make_loss("dedpo", "lambda = 1.0");
  auto half_hard = make_loss("dedpo", "lambda = 0.5\npseudo_labels = \"hard\"");
  Moments m_one, m_half, m_auto;
  double lambda_sum = 0;
  std::mt19937_64 rng(4242);
  const int draws = 3000;
  for (int rep = 0; rep < draws; ++rep) {
    std::vector<bool> labelled = random_labelled(w.n, 12, rng);
    std::vector<std::int64_t> batch = random_two_stream_batch(labelled, 4, 12, rng);
    m_one.add(loss_and_grad(evaluate(*one, w, w.theta, batch, labelled, PairPool::all, 4)));
    m_half.add(loss_and_grad(evaluate(*half_hard, w, w.theta, batch, labelled, PairPool::all, 4)));
    auto automatic = make_loss("dedpo", "lambda = \"auto\"\nlambda_warmup = 1\nlambda_decay = 1.0");
    evaluate(*automatic, w, w.theta, range(w.n), labelled, PairPool::all);  // the moments
    Eval e = evaluate(*automatic, w, w.theta, batch, labelled, PairPool::all, 4);
    lambda_sum += diagnostic(e.result, "lambda");
    m_auto.add(loss_and_grad(e));
  }
  expect_within_band(m_one, target, 4.0, "two-stream dedpo lambda=1");
  expect_within_band(m_half, target, 4.0, "two-stream dedpo lambda=0.5 hard");
  expect_within_band(m_auto, target, 4.0, "two-stream dedpo lambda=auto");
  EXPECT_GT(lambda_sum / draws, 0.05);  // the estimate was in use, not lambda = 0 or 1
  EXPECT_LT(lambda_sum / draws, 0.95);
}

TEST(LossMonteCarlo, TwoStreamBatchesHaveLessGradientVarianceAtFewLabels) {
  // 5% of 400 pairs labelled, batches of 40: a pooled batch holds 2 labelled pairs on average
  // (a random number) weighted by N/n_l = 20; a two-stream batch always 20, weighted 1/20.
  WorldSpec spec;
  spec.n = 400;
  World w = make_world(spec);
  std::mt19937_64 rng(5);
  std::vector<bool> labelled = random_labelled(w.n, 20, rng);
  auto dedpo = make_loss("dedpo", "lambda = 1.0");
  Moments pooled, two_stream;
  for (int rep = 0; rep < 600; ++rep) {
    pooled.add(evaluate(*dedpo, w, w.theta, random_batch(w.n, 40, rng), labelled, PairPool::all).grad);
    two_stream.add(evaluate(*dedpo, w, w.theta, random_two_stream_batch(labelled, 20, 20, rng),
                            labelled, PairPool::all, 20)
                       .grad);
  }
  EXPECT_LT(two_stream.total_variance(), 0.5 * pooled.total_variance());
  std::printf("[two-stream] gradient variance at 5%% labels: pooled %.4g, two-stream %.4g\n",
              pooled.total_variance(), two_stream.total_variance());
}

TEST(LossMonteCarlo, RdpoIsUnbiasedUnderKnownFlipNoise) {
  WorldSpec spec;
  spec.tie_fraction = 0;
  World w = make_world(spec);
  const double eps = 0.2;
  std::vector<double> clean = loss_and_grad(
      evaluate(*make_loss("dpo"), w, w.theta, range(w.n), all_labelled(w), PairPool::labelled));
  auto rdpo = make_loss("rdpo", "epsilon = 0.2");
  auto dpo = make_loss("dpo");
  Moments m_rdpo, m_dpo;
  std::mt19937_64 rng(5);
  std::bernoulli_distribution flip(eps);
  for (int rep = 0; rep < 1000; ++rep) {
    World noisy = w;
    for (double& z : noisy.z) {
      if (flip(rng)) z = 1 - z;
    }
    m_rdpo.add(loss_and_grad(
        evaluate(*rdpo, noisy, w.theta, range(w.n), all_labelled(w), PairPool::labelled)));
    m_dpo.add(loss_and_grad(
        evaluate(*dpo, noisy, w.theta, range(w.n), all_labelled(w), PairPool::labelled)));
  }
  expect_within_band(m_rdpo, clean, 4.0, "rdpo");
  // Plain DPO on the noisy labels shrinks its gradient towards zero by (1 - 2 eps).
  double worst = 0;
  for (std::size_t k = 0; k < clean.size(); ++k) {
    worst = std::max(worst, std::abs(m_dpo.mean(k) - clean[k]) / m_dpo.std_error(k));
  }
  EXPECT_GT(worst, 8.0) << "plain dpo on noisy labels should be biased";
}

namespace {

struct VarianceRun {
  double auto_var, one_var, zero_var, mean_lambda;
};

// Gradient variance of dedpo with lambda = auto (warmed up on the previous draws, as in training),
// 1 and 0, evaluated on the same draws. `subsets`: each draw is a fresh labelled subset with the
// full batch (the PPI view); otherwise the labelled subset is fixed and each draw is a pooled
// minibatch (the per-step SGD view).
VarianceRun variance_run(const World& w, bool subsets, const std::string& moments) {
  auto automatic = make_loss("dedpo", "lambda = \"auto\"\nlambda_warmup = 64\nlambda_decay = 1.0\n"
                                      "lambda_moments = \"" + moments + "\"");
  auto one = make_loss("dedpo", "lambda = 1.0");
  auto zero = make_loss("dedpo", "lambda = 0.0");
  std::mt19937_64 rng(31);
  std::vector<bool> fixed = random_labelled(w.n, 40, rng);
  Moments m_auto, m_one, m_zero;
  double lambda_sum = 0;
  const int warmup = 40, draws = 700;
  for (int rep = 0; rep < warmup + draws; ++rep) {
    std::vector<bool> labelled = subsets ? random_labelled(w.n, 40, rng) : fixed;
    std::vector<std::int64_t> batch = subsets ? range(w.n) : random_batch(w.n, 24, rng);
    Eval a = evaluate(*automatic, w, w.theta, batch, labelled, PairPool::all);
    if (rep < warmup) continue;
    lambda_sum += diagnostic(a.result, "lambda");
    m_auto.add(a.grad);
    m_one.add(evaluate(*one, w, w.theta, batch, labelled, PairPool::all).grad);
    m_zero.add(evaluate(*zero, w, w.theta, batch, labelled, PairPool::all).grad);
  }
  return {m_auto.total_variance(), m_one.total_variance(), m_zero.total_variance(),
          lambda_sum / draws};
}

}  // namespace

TEST(LossMonteCarlo, AutoLambdaReducesGradientVariance) {
  // The annotator correlates with the human labels but is noisy: neither trusting it fully
  // (lambda = 1) nor ignoring it (lambda = 0) is best.
  WorldSpec spec;
  spec.n = 200;
  spec.annotator_bias = 0.5;
  spec.annotator_noise = 2.0;
  spec.annotator_slope = 0.7;
  World w = make_world(spec);
  for (bool subsets : {true, false}) {
    VarianceRun r = variance_run(w, subsets, "raw");
    SCOPED_TRACE(subsets ? "random labelled subsets" : "pooled minibatches");
    EXPECT_LE(r.auto_var, r.one_var) << "lambda ~ " << r.mean_lambda;
    EXPECT_LE(r.auto_var, r.zero_var) << "lambda ~ " << r.mean_lambda;
    EXPECT_GT(r.mean_lambda, 0.05);
    EXPECT_LT(r.mean_lambda, 0.95);
    std::printf("[variance] %s: auto %.4g (lambda %.3f), lambda=1 %.4g, lambda=0 %.4g\n",
                subsets ? "subsets" : "minibatches", r.auto_var, r.mean_lambda, r.one_var,
                r.zero_var);
  }
}

TEST(LossMonteCarlo, CentralMomentsFitASharedGradientDirection) {
  // Every pair's x_A - x_B shares one dominant direction (a nearly one-dimensional model): the
  // PPI++ Cov/Var form is the right estimate there.
  WorldSpec spec;
  spec.n = 200;
  spec.annotator_bias = 0.5;
  spec.annotator_noise = 2.0;
  spec.annotator_slope = 0.7;
  spec.common_direction = 3.0;
  World w = make_world(spec);
  VarianceRun r = variance_run(w, true, "central");
  EXPECT_LE(r.auto_var, r.one_var) << "lambda ~ " << r.mean_lambda;
  EXPECT_LE(r.auto_var, r.zero_var) << "lambda ~ " << r.mean_lambda;
  std::printf("[variance] central, shared direction: auto %.4g (lambda %.3f), lambda=1 %.4g, "
              "lambda=0 %.4g\n",
              r.auto_var, r.mean_lambda, r.one_var, r.zero_var);
}
