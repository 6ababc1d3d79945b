// Exact identities between the preference losses and their written-out formulas.
#include <cmath>
#include <random>

#include <gmock/gmock.h>

#include "dedpo/error.hpp"
#include "loss_helpers.hpp"

using namespace loss_test;
using dedpo::PairPool;

namespace {

double log1pexp(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

// Per-pair DPO logit of the world at its theta, in plain double arithmetic.
std::vector<double> logits(const World& w, double beta = kBeta) {
  std::vector<double> h;
  for (std::int64_t i = 0; i < w.n; ++i) {
    double d = 0;
    for (std::int64_t k = 0; k < w.d; ++k) d += (w.xa[i * w.d + k] - w.xb[i * w.d + k]) * w.theta[k];
    h.push_back(-0.5 * beta * d);
  }
  return h;
}

void expect_same(const Eval& a, const Eval& b, double tol = 1e-10) {
  EXPECT_NEAR(a.loss, b.loss, tol * (1 + std::abs(b.loss)));
  ASSERT_EQ(a.grad.size(), b.grad.size());
  for (std::size_t k = 0; k < a.grad.size(); ++k) {
    EXPECT_NEAR(a.grad[k], b.grad[k], tol * (1 + std::abs(b.grad[k]))) << "component " << k;
  }
}

}  // namespace

TEST(LossIdentities, DpoEqualsDiffusionDpoFormula) {
  WorldSpec spec;
  spec.tie_fraction = 0;
  World w = make_world(spec);
  auto dpo = make_loss("dpo", "beta = 5000.0");
  Eval e = evaluate(*dpo, w, w.theta, range(w.n), all_labelled(w), PairPool::labelled);

  // Diffusion-DPO: model_diff = e_theta(w) - e_theta(l), ref_diff = e_ref(w) - e_ref(l),
  // loss = -logsigmoid(-0.5 * beta * (model_diff - ref_diff)).
  double sum = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    double ma = w.ref_a[i], mb = w.ref_b[i];
    for (std::int64_t k = 0; k < w.d; ++k) {
      ma += w.xa[i * w.d + k] * w.theta[k];
      mb += w.xb[i * w.d + k] * w.theta[k];
    }
    const bool a_wins = w.z[i] == 1.0;
    double model_diff = a_wins ? ma - mb : mb - ma;
    double ref_diff = a_wins ? w.ref_a[i] - w.ref_b[i] : w.ref_b[i] - w.ref_a[i];
    double inside = -0.5 * kBeta * (model_diff - ref_diff);
    sum += log1pexp(-inside);  // -logsigmoid(inside)
  }
  EXPECT_NEAR(e.loss, sum / static_cast<double>(w.n), 1e-12 * sum);
  EXPECT_GT(e.loss, 0.1);  // a non-trivial value
}

TEST(LossIdentities, DedpoWithExactAnnotatorEqualsFullyLabelledDpo) {
  World w = make_world({});
  w.g = w.z;  // the annotator gives the true label on every pair (ties as 0.5)
  std::mt19937_64 rng(7);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  auto dedpo = make_loss("dedpo", "lambda = 1.0\nties = \"soft\"");
  auto dpo = make_loss("dpo", "ties = \"soft\"");
  // Dataset level: all pairs in one pooled batch vs DPO with every label known.
  expect_same(evaluate(*dedpo, w, w.theta, range(w.n), labelled, PairPool::all),
              evaluate(*dpo, w, w.theta, range(w.n), all_labelled(w), PairPool::labelled));
  // And batch by batch.
  for (int rep = 0; rep < 3; ++rep) {
    auto batch = random_batch(w.n, 16, rng);
    expect_same(evaluate(*dedpo, w, w.theta, batch, labelled, PairPool::all),
                evaluate(*dpo, w, w.theta, batch, all_labelled(w), PairPool::labelled));
  }
}

TEST(LossIdentities, DedpoWithEveryPairLabelledEqualsDpo) {
  World w = make_world({});  // biased annotator
  std::mt19937_64 rng(8);
  auto dpo = make_loss("dpo");
  for (const char* lambda : {"1.0", "0.3", "\"auto\""}) {
    auto dedpo = make_loss("dedpo", std::string("lambda = ") + lambda + "\nlambda_warmup = 1");
    for (int rep = 0; rep < 3; ++rep) {
      auto batch = random_batch(w.n, 16, rng);
      expect_same(evaluate(*dedpo, w, w.theta, batch, all_labelled(w), PairPool::all),
                  evaluate(*dpo, w, w.theta, batch, all_labelled(w), PairPool::labelled));
    }
  }
}

TEST(LossIdentities, DedpoLambdaZeroEqualsLabelledOnlyDpo) {
  World w = make_world({});
  std::mt19937_64 rng(9);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  auto dedpo = make_loss("dedpo", "lambda = 0.0");
  auto dpo = make_loss("dpo");
  // Dataset level: DeDPO over all pairs with lambda = 0 is DPO over the labelled pairs only.
  expect_same(evaluate(*dedpo, w, w.theta, range(w.n), labelled, PairPool::all),
              evaluate(*dpo, w, w.theta, labelled_indices(labelled), labelled, PairPool::labelled));
  // Pooled batch: both reweight the labelled pairs of the batch by N / n_l.
  for (int rep = 0; rep < 3; ++rep) {
    auto batch = random_batch(w.n, 20, rng);
    expect_same(evaluate(*dedpo, w, w.theta, batch, labelled, PairPool::all),
                evaluate(*dpo, w, w.theta, batch, labelled, PairPool::all));
  }
  // lambda = 0 needs no unlabelled pair, so a batch of the labelled pool is fine too.
  auto lab = labelled_indices(labelled);
  std::vector<std::int64_t> batch(lab.begin(), lab.begin() + 10);
  expect_same(evaluate(*dedpo, w, w.theta, batch, labelled, PairPool::labelled),
              evaluate(*dpo, w, w.theta, batch, labelled, PairPool::labelled));
}

TEST(LossIdentities, DedpoRefusesLabelledPoolWhenUnlabelledPairsExist) {
  World w = make_world({});
  std::mt19937_64 rng(10);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  auto dedpo = make_loss("dedpo");
  EXPECT_EQ(dedpo->pool(), PairPool::all);
  EXPECT_TRUE(dedpo->needs_annotator());
  auto lab = labelled_indices(labelled);
  try {
    evaluate(*dedpo, w, w.theta, lab, labelled, PairPool::labelled);
    FAIL() << "expected an error";
  } catch (const dedpo::Error& error) {
    EXPECT_NE(std::string(error.what()).find("PairPool::all"), std::string::npos) << error.what();
  }
}

TEST(LossIdentities, PoolsAndNeeds) {
  for (const char* name : {"dpo", "sft", "cdpo", "rdpo", "ipo", "hinge"}) {
    auto loss = make_loss(name);
    EXPECT_EQ(loss->pool(), PairPool::labelled) << name;
    EXPECT_FALSE(loss->needs_annotator()) << name;
    EXPECT_EQ(loss->needs_reference(), std::string(name) != "sft") << name;
    EXPECT_FALSE(loss->takes_two_stream_batches()) << name;
  }
  for (const char* name : {"dedpo", "naive_ssl_dpo"}) {
    auto loss = make_loss(name);
    EXPECT_EQ(loss->pool(), PairPool::all) << name;
    EXPECT_TRUE(loss->needs_annotator()) << name;
    EXPECT_TRUE(loss->takes_two_stream_batches()) << name;
  }
}

TEST(LossIdentities, TwoStreamBatchesAreCheckedAndRefusedByLossesThatDoNotTakeThem) {
  World w = make_world({});
  std::mt19937_64 rng(12);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  std::vector<std::int64_t> batch = random_two_stream_batch(labelled, 4, 8, rng);
  auto error_of = [&](dedpo::Loss& loss, std::vector<std::int64_t> idx, std::int64_t stream) {
    try {
      evaluate(loss, w, w.theta, idx, labelled, PairPool::all, stream);
    } catch (const dedpo::Error& error) {
      return std::string(error.what());
    }
    return std::string("(no error)");
  };
  auto dpo = make_loss("dpo");
  EXPECT_EQ(error_of(*dpo, batch, 4),
            "dpo: given a two-stream batch (PairTerms::labelled_stream_size = 4), which this loss "
            "does not take");
  auto dedpo = make_loss("dedpo");
  EXPECT_EQ(error_of(*dedpo, batch, 4), "(no error)");
  EXPECT_THAT(error_of(*dedpo, batch, 12),
              ::testing::HasSubstr("a two-stream batch needs 0 < labelled_stream_size < B = 12"));
  std::vector<std::int64_t> unlabelled_first = batch;
  for (std::int64_t i = 0; i < w.n; ++i) {
    if (!labelled[i]) unlabelled_first[0] = i;
  }
  EXPECT_EQ(error_of(*dedpo, unlabelled_first, 4),
            "dedpo: the labelled stream of a two-stream batch holds an unlabelled pair");
}

TEST(LossIdentities, TwoStreamMeansReadEachStream) {
  // dedpo with lambda = 1 on a two-stream batch is, written out, the all-pairs stream's mean of
  // L(G, g) plus the labelled stream's mean of L(G, z) - L(G, g).
  World w = make_world({});
  std::mt19937_64 rng(13);
  std::vector<bool> labelled = random_labelled(w.n, 30, rng);
  std::vector<std::int64_t> batch = random_two_stream_batch(labelled, 5, 9, rng);
  const std::vector<double> h = logits(w);
  auto bce = [&](std::int64_t i, double p) { return p * log1pexp(-h[i]) + (1 - p) * log1pexp(h[i]); };
  double correction = 0, pseudo = 0;
  for (std::size_t k = 0; k < batch.size(); ++k) {
    const std::int64_t i = batch[k];
    if (k < 5) {
      const double human = w.z[i] == 0.5 ? 0.0 : bce(i, w.z[i]);  // ties dropped
      correction += (human - bce(i, w.g[i])) / 5;
    } else {
      pseudo += bce(i, w.g[i]) / 9;
    }
  }
  auto dedpo = make_loss("dedpo", "lambda = 1.0");
  EXPECT_NEAR(evaluate(*dedpo, w, w.theta, batch, labelled, PairPool::all, 5).loss,
              pseudo + correction, 1e-10 * (1 + std::abs(pseudo + correction)));
  // naive_ssl_dpo: n_l/N times the labelled stream's mean of L(G, z), plus the all-pairs
  // stream's unlabelled pairs' L(G, g) over its size.
  double human_share = 0, unlabelled_share = 0;
  for (std::size_t k = 0; k < batch.size(); ++k) {
    const std::int64_t i = batch[k];
    if (k < 5) {
      human_share += (w.z[i] == 0.5 ? 0.0 : bce(i, w.z[i])) / 5 * (30.0 / w.n);
    } else if (!labelled[i]) {
      unlabelled_share += bce(i, w.g[i]) / 9;
    }
  }
  auto naive = make_loss("naive_ssl_dpo");
  EXPECT_NEAR(evaluate(*naive, w, w.theta, batch, labelled, PairPool::all, 5).loss,
              human_share + unlabelled_share, 1e-10 * (1 + human_share + unlabelled_share));
}

TEST(LossIdentities, CdpoWithZeroEpsilonIsDpoAndOtherwiseLabelSmoothing) {
  World w = make_world({});
  auto dpo = make_loss("dpo");
  expect_same(evaluate(*make_loss("cdpo", "epsilon = 0.0"), w, w.theta, range(w.n), all_labelled(w),
                       PairPool::labelled),
              evaluate(*dpo, w, w.theta, range(w.n), all_labelled(w), PairPool::labelled));
  const double eps = 0.2;
  Eval e = evaluate(*make_loss("cdpo", "epsilon = 0.2"), w, w.theta, range(w.n), all_labelled(w),
                    PairPool::labelled);
  std::vector<double> h = logits(w);
  double sum = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    if (w.z[i] == 0.5) continue;  // ties dropped by default
    double s = w.z[i] == 1.0 ? h[i] : -h[i];
    sum += (1 - eps) * log1pexp(-s) + eps * log1pexp(s);
  }
  EXPECT_NEAR(e.loss, sum / static_cast<double>(w.n), 1e-12);
}

// IPO's option says which tau it is: on the beta-scaled logit h = beta r it is Azar et al.'s IPO in
// the implicit log-ratio r with tau = beta * logit_tau, the loss multiplied by beta^2.
TEST(LossIdentities, IpoLogitTauIsAzarsTauTimesBeta) {
  World w = make_world({});
  std::vector<double> h = logits(w);
  const double logit_tau = 1e-4, azar_tau = kBeta * logit_tau;
  double azar = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    if (w.z[i] == 0.5) continue;
    const double r = (w.z[i] == 1.0 ? h[i] : -h[i]) / kBeta;  // implicit log-ratio of the winner
    azar += (r - 1 / (2 * azar_tau)) * (r - 1 / (2 * azar_tau));
  }
  const double ipo = evaluate(*make_loss("ipo", "logit_tau = 1e-4"), w, w.theta, range(w.n),
                              all_labelled(w), PairPool::labelled)
                         .loss;
  EXPECT_NEAR(ipo, kBeta * kBeta * azar / static_cast<double>(w.n), 1e-9 * ipo);
  // The old name, which read as Azar's tau, is refused rather than silently reinterpreted.
  EXPECT_THROW(make_loss("ipo", "tau = 0.1"), dedpo::Error);
}

TEST(LossIdentities, RdpoIpoHingeSftFormulas) {
  World w = make_world({});
  std::vector<double> h = logits(w);
  const double n = static_cast<double>(w.n);
  auto run = [&](const char* name, const char* options) {
    return evaluate(*make_loss(name, options), w, w.theta, range(w.n), all_labelled(w),
                    PairPool::labelled)
        .loss;
  };
  double rdpo = 0, ipo = 0, hinge = 0, sft = 0;
  const double eps = 0.15, tau = 0.25, margin = 2.0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    double ma = w.ref_a[i], mb = w.ref_b[i];
    for (std::int64_t k = 0; k < w.d; ++k) {
      ma += w.xa[i * w.d + k] * w.theta[k];
      mb += w.xb[i * w.d + k] * w.theta[k];
    }
    if (w.z[i] == 0.5) continue;
    double s = w.z[i] == 1.0 ? h[i] : -h[i];  // logit of the observed winner
    rdpo += ((1 - eps) * log1pexp(-s) - eps * log1pexp(s)) / (1 - 2 * eps);
    ipo += (s - 1 / (2 * tau)) * (s - 1 / (2 * tau));
    hinge += std::max(0.0, margin - s);
    sft += w.z[i] == 1.0 ? ma : mb;
  }
  EXPECT_NEAR(run("rdpo", "epsilon = 0.15"), rdpo / n, 1e-12);
  EXPECT_NEAR(run("ipo", "logit_tau = 0.25"), ipo / n, 1e-10);
  EXPECT_NEAR(run("hinge", "margin = 2.0"), hinge / n, 1e-12);
  EXPECT_NEAR(run("sft", ""), sft / n, 1e-14);
  EXPECT_GT(hinge, 0.0);
}

TEST(LossIdentities, TiesSoftVersusDrop) {
  World w = make_world({});
  std::vector<double> h = logits(w);
  double decided = 0, ties = 0;
  int n_ties = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    if (w.z[i] == 0.5) {
      ties += 0.5 * log1pexp(-h[i]) + 0.5 * log1pexp(h[i]);
      ++n_ties;
    } else {
      decided += log1pexp(w.z[i] == 1.0 ? -h[i] : h[i]);
    }
  }
  ASSERT_GT(n_ties, 3);
  const double n = static_cast<double>(w.n);
  Eval drop = evaluate(*make_loss("dpo", "ties = \"drop\""), w, w.theta, range(w.n),
                       all_labelled(w), PairPool::labelled);
  Eval soft = evaluate(*make_loss("dpo", "ties = \"soft\""), w, w.theta, range(w.n),
                       all_labelled(w), PairPool::labelled);
  EXPECT_NEAR(drop.loss, decided / n, 1e-12);
  EXPECT_NEAR(soft.loss, (decided + ties) / n, 1e-12);
  EXPECT_EQ(diagnostic(soft.result, "tie_pairs"), n_ties);

  // sft: a dropped tie contributes nothing, a soft one half of each side's error.
  double sft_drop = 0, sft_soft = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    double ma = w.ref_a[i], mb = w.ref_b[i];
    for (std::int64_t k = 0; k < w.d; ++k) {
      ma += w.xa[i * w.d + k] * w.theta[k];
      mb += w.xb[i * w.d + k] * w.theta[k];
    }
    double v = w.z[i] * ma + (1 - w.z[i]) * mb;
    sft_soft += v;
    if (w.z[i] != 0.5) sft_drop += v;
  }
  EXPECT_NEAR(evaluate(*make_loss("sft", "ties = \"drop\""), w, w.theta, range(w.n),
                       all_labelled(w), PairPool::labelled).loss,
              sft_drop / n, 1e-14);
  EXPECT_NEAR(evaluate(*make_loss("sft", "ties = \"soft\""), w, w.theta, range(w.n),
                       all_labelled(w), PairPool::labelled).loss,
              sft_soft / n, 1e-14);
}

TEST(LossIdentities, NaiveSslDpoTargets) {
  World w = make_world({});
  std::mt19937_64 rng(11);
  std::vector<bool> labelled = random_labelled(w.n, 40, rng);
  std::vector<double> h = logits(w);
  const double n = static_cast<double>(w.n);
  double soft = 0, hard = 0, confident = 0;
  int kept = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    auto bce = [&](double p) { return p * log1pexp(-h[i]) + (1 - p) * log1pexp(h[i]); };
    if (labelled[i]) {
      if (w.z[i] == 0.5) continue;
      soft += bce(w.z[i]);
      hard += bce(w.z[i]);
      confident += bce(w.z[i]);
    } else {
      soft += bce(w.g[i]);
      hard += bce(w.g[i] > 0.5 ? 1.0 : 0.0);
      if (std::max(w.g[i], 1 - w.g[i]) >= 0.8) confident += bce(w.g[i]), ++kept;
    }
  }
  ASSERT_GT(kept, 5);
  ASSERT_LT(kept, 75);
  auto run = [&](const char* options) {
    return evaluate(*make_loss("naive_ssl_dpo", options), w, w.theta, range(w.n), labelled,
                    PairPool::all);
  };
  EXPECT_NEAR(run("").loss, soft / n, 1e-12);
  EXPECT_NEAR(run("pseudo_labels = \"hard\"").loss, hard / n, 1e-12);
  Eval c = run("confidence_threshold = 0.8");
  EXPECT_NEAR(c.loss, confident / n, 1e-12);
  EXPECT_EQ(diagnostic(c.result, "pseudo_labelled_pairs"), kept);
}

TEST(LossIdentities, Diagnostics) {
  World w = make_world({});
  std::mt19937_64 rng(12);
  std::vector<bool> labelled = random_labelled(w.n, 40, rng);
  std::vector<double> h = logits(w);
  int agree = 0, decided = 0;
  double hsum = 0;
  for (std::int64_t i = 0; i < w.n; ++i) {
    hsum += h[i];
    if (!labelled[i] || w.z[i] == 0.5) continue;
    ++decided;
    if ((w.z[i] == 1.0) == (h[i] > 0)) ++agree;
  }
  auto dedpo = make_loss("dedpo", "lambda = 0.7");
  Eval e = evaluate(*dedpo, w, w.theta, range(w.n), labelled, PairPool::all);
  EXPECT_NEAR(diagnostic(e.result, "implicit_accuracy"), double(agree) / decided, 1e-15);
  EXPECT_NEAR(diagnostic(e.result, "logit_mean"), hsum / w.n, 1e-9);
  EXPECT_EQ(diagnostic(e.result, "labelled_pairs"), 40);
  EXPECT_EQ(diagnostic(e.result, "unlabelled_pairs"), w.n - 40);
  EXPECT_EQ(diagnostic(e.result, "lambda"), 0.7);
  // loss = lambda * pseudo_loss + correction
  EXPECT_NEAR(e.loss,
              0.7 * diagnostic(e.result, "pseudo_loss") + diagnostic(e.result, "correction"),
              1e-12);
  EXPECT_NEAR(diagnostic(e.result, "reward_margin_mean"),
              2 * diagnostic(e.result, "logit_mean") / kBeta, 1e-12);
}
