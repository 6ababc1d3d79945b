#pragma once
// A small synthetic preference world for the loss tests: a linear "model" whose denoising errors
// are e_theta(A) = e_ref(A) + x_A . theta, so the DPO logit is h = -(beta/2)(x_A - x_B) . theta and
// losses and gradients w.r.t. theta can be compared exactly and by Monte Carlo.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "dedpo/cross_fit.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/host/registry.hpp"

namespace loss_test {

inline dedpo::PluginRegistry& registry() {
  static dedpo::PluginRegistry instance = [] {
    dedpo::PluginRegistry r;
    r.load_default_locations();
    return r;
  }();
  return instance;
}

inline std::shared_ptr<dedpo::Loss> make_loss(const std::string& name,
                                              const std::string& options = {}) {
  return registry().create<dedpo::Loss>(name, options);
}

constexpr double kBeta = 5000.0;

struct World {
  std::int64_t n = 0, d = 0;
  std::vector<double> xa, xb;      // [n * d]
  std::vector<double> ref_a, ref_b;
  std::vector<double> z;           // true human label of every pair (0, 1 or 0.5)
  std::vector<double> g;           // annotator probability
  std::vector<double> theta;       // the parameter at which losses are evaluated
};

struct WorldSpec {
  std::int64_t n = 120;
  std::int64_t d = 4;
  double tie_fraction = 0.1;
  double annotator_bias = 1.5;   // added to the annotator's logit: a biased annotator
  double annotator_noise = 1.0;  // std of noise on its logit
  double annotator_slope = 1.0;  // multiplies the true logit
  double common_direction = 0.0; // > 0 gives every pair's x_A - x_B a shared component
  std::uint64_t seed = 1;
};

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline World make_world(const WorldSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  World w;
  w.n = spec.n;
  w.d = spec.d;
  const double scale = 5e-4;
  std::vector<double> theta_true(spec.d), common(spec.d);
  for (auto& v : theta_true) v = normal(rng);
  for (auto& v : common) v = normal(rng);
  w.theta.resize(spec.d);
  for (std::int64_t k = 0; k < spec.d; ++k) w.theta[k] = 0.6 * theta_true[k] + 0.5 * normal(rng);
  for (std::int64_t i = 0; i < spec.n; ++i) {
    double h_true = 0;
    for (std::int64_t k = 0; k < spec.d; ++k) {
      double a = scale * normal(rng), b = scale * normal(rng);
      b -= scale * spec.common_direction * common[k];
      w.xa.push_back(a);
      w.xb.push_back(b);
      h_true += -0.5 * kBeta * (a - b) * theta_true[k];
    }
    w.ref_a.push_back(0.05 + 0.01 * uniform(rng));
    w.ref_b.push_back(0.05 + 0.01 * uniform(rng));
    double z = uniform(rng) < sigmoid(h_true) ? 1.0 : 0.0;
    if (uniform(rng) < spec.tie_fraction) z = 0.5;
    w.z.push_back(z);
    w.g.push_back(sigmoid(spec.annotator_slope * h_true + spec.annotator_bias +
                          spec.annotator_noise * normal(rng)));
  }
  return w;
}

inline at::Tensor dvec(const std::vector<double>& v) {
  return at::tensor(at::ArrayRef<double>(v), at::TensorOptions().dtype(at::kDouble));
}

inline at::Tensor bool_mask(const std::vector<bool>& values) {
  std::vector<std::uint8_t> bytes(values.begin(), values.end());
  return at::tensor(at::ArrayRef<std::uint8_t>(bytes)).to(at::kBool);
}

// The batch `idx` of world `w` with errors computed from `theta` (a [d] tensor, possibly requiring
// grad). `labelled[i]` says whether dataset pair i has a human label. A two-stream batch
// (labelled_stream_size > 0) is its labelled stream's pairs, then its all-pairs stream's.
inline dedpo::PairTerms make_terms(const World& w, const at::Tensor& theta,
                                   const std::vector<std::int64_t>& idx,
                                   const std::vector<bool>& labelled, dedpo::PairPool drawn_from,
                                   std::int64_t labelled_stream_size = 0) {
  const auto b = static_cast<std::int64_t>(idx.size());
  std::vector<double> xa, xb, ra, rb, z, g;
  std::vector<std::uint8_t> lab;
  for (std::int64_t i : idx) {
    for (std::int64_t k = 0; k < w.d; ++k) {
      xa.push_back(w.xa[i * w.d + k]);
      xb.push_back(w.xb[i * w.d + k]);
    }
    ra.push_back(w.ref_a[i]);
    rb.push_back(w.ref_b[i]);
    z.push_back(labelled[i] ? w.z[i] : std::numeric_limits<double>::quiet_NaN());
    g.push_back(w.g[i]);
    lab.push_back(labelled[i] ? 1 : 0);
  }
  at::Tensor ref_a = dvec(ra), ref_b = dvec(rb);
  dedpo::PairTerms t;
  t.model_err_a = ref_a + at::matmul(dvec(xa).view({b, w.d}), theta);
  t.model_err_b = ref_b + at::matmul(dvec(xb).view({b, w.d}), theta);
  t.ref_err_a = ref_a;
  t.ref_err_b = ref_b;
  t.human_label = dvec(z);
  t.is_labelled = at::tensor(at::ArrayRef<std::uint8_t>(lab)).to(at::kBool);
  t.annotator_prob = dvec(g);
  t.n_labelled = std::count(labelled.begin(), labelled.end(), true);
  t.n_unlabelled = w.n - t.n_labelled;
  t.drawn_from = drawn_from;
  t.labelled_stream_size = labelled_stream_size;
  // The run's cross-fitting order of the labelled pairs: random, fixed for a labelled set.
  at::Tensor keys = dedpo::fold_keys(bool_mask(labelled), std::hash<std::vector<bool>>{}(labelled));
  t.fold_key = keys.index_select(0, at::tensor(at::ArrayRef<std::int64_t>(idx)));
  return t;
}

struct Eval {
  double loss = 0;
  std::vector<double> grad;  // d loss / d theta
  dedpo::LossResult result;
};

inline Eval evaluate(dedpo::Loss& loss, const World& w, const std::vector<double>& theta_values,
                     const std::vector<std::int64_t>& idx, const std::vector<bool>& labelled,
                     dedpo::PairPool drawn_from, std::int64_t labelled_stream_size = 0) {
  at::Tensor theta = dvec(theta_values).requires_grad_(true);
  Eval e;
  e.result = loss.compute(make_terms(w, theta, idx, labelled, drawn_from, labelled_stream_size));
  // One batch is one optimiser step on one process: its running statistics enter the state now,
  // and the step's figures (lambda_estimate) join the batch's.
  const dedpo::Figures step_end = loss.end_step(loss.step_statistics());
  e.result.diagnostics.insert(e.result.diagnostics.end(), step_end.begin(), step_end.end());
  e.loss = e.result.loss.item<double>();
  e.result.loss.backward();
  at::Tensor grad = theta.grad();
  for (std::int64_t k = 0; k < w.d; ++k) e.grad.push_back(grad[k].item<double>());
  return e;
}

inline std::vector<std::int64_t> range(std::int64_t n) {
  std::vector<std::int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

inline std::vector<bool> all_labelled(const World& w) { return std::vector<bool>(w.n, true); }

inline std::vector<bool> random_labelled(std::int64_t n, std::int64_t n_labelled, std::mt19937_64& rng) {
  std::vector<std::int64_t> order = range(n);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<bool> lab(n, false);
  for (std::int64_t i = 0; i < n_labelled; ++i) lab[order[i]] = true;
  return lab;
}

inline std::vector<std::int64_t> random_batch(std::int64_t n, std::int64_t b, std::mt19937_64& rng) {
  std::vector<std::int64_t> order = range(n);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(b);
  return order;
}

// Indices of the labelled pairs.
inline std::vector<std::int64_t> labelled_indices(const std::vector<bool>& labelled) {
  std::vector<std::int64_t> v;
  for (std::size_t i = 0; i < labelled.size(); ++i) {
    if (labelled[i]) v.push_back(static_cast<std::int64_t>(i));
  }
  return v;
}

// A two-stream batch: `from_labelled` pairs drawn uniformly from the labelled pairs, then
// `from_all` from all pairs (each stream without replacement, independently).
inline std::vector<std::int64_t> random_two_stream_batch(const std::vector<bool>& labelled,
                                                         std::int64_t from_labelled,
                                                         std::int64_t from_all,
                                                         std::mt19937_64& rng) {
  std::vector<std::int64_t> batch = labelled_indices(labelled);
  std::shuffle(batch.begin(), batch.end(), rng);
  batch.resize(from_labelled);
  const std::vector<std::int64_t> rest =
      random_batch(static_cast<std::int64_t>(labelled.size()), from_all, rng);
  batch.insert(batch.end(), rest.begin(), rest.end());
  return batch;
}

// Running mean and standard error of a vector quantity: [loss, grad...].
struct Moments {
  std::vector<double> sum, sum_sq;
  double count = 0;
  void add(const std::vector<double>& v) {
    if (sum.empty()) sum.assign(v.size(), 0), sum_sq.assign(v.size(), 0);
    for (std::size_t k = 0; k < v.size(); ++k) sum[k] += v[k], sum_sq[k] += v[k] * v[k];
    count += 1;
  }
  double mean(std::size_t k) const { return sum[k] / count; }
  double variance(std::size_t k) const {
    double m = mean(k);
    return (sum_sq[k] - count * m * m) / (count - 1);
  }
  double std_error(std::size_t k) const { return std::sqrt(variance(k) / count); }
  double total_variance() const {
    double s = 0;
    for (std::size_t k = 0; k < sum.size(); ++k) s += variance(k);
    return s;
  }
};

inline std::vector<double> loss_and_grad(const Eval& e) {
  std::vector<double> v{e.loss};
  v.insert(v.end(), e.grad.begin(), e.grad.end());
  return v;
}

inline double diagnostic(const dedpo::LossResult& r, const std::string& name) {
  for (const auto& [key, value] : r.diagnostics) {
    if (key == name) return value;
  }
  ADD_FAILURE() << "no diagnostic named " << name;
  return std::nan("");
}

}  // namespace loss_test
