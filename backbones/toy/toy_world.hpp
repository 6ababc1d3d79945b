#pragma once
// The toy world: K prompts, a mixture of Gaussians in R^d per prompt, a known true reward per
// prompt and a spurious feature that is not part of it. Deterministic from its configuration;
// header-only (ATen ops only) so the tests can rebuild the very same world. See docs/toy_world.md.
//
//   data:      x | c  ~  sum_m (1/M) N(mu_{c,m}, sigma^2 I),  mu_{c,m} ~ N(0, spread^2 I)
//   reward:    r_c(x) = exp(-|x - g_c|^2 / (2 l^2))                       (preferred region)
//                     + w_q * logsumexp_m(-|x - mu_{c,m}|^2 / (2 sigma^2))  (quality: on-manifold)
//              g_c = mu_{c, m*_c}, one preferred mode per prompt
//   spurious:  s(x) = u . x, a fixed random unit direction (brightness / length analogue)
//   humans:    P(A > B) = sigmoid((r_c(A) - r_c(B)) / tau_h)   (Bradley-Terry oracle)
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "dedpo/error.hpp"

namespace dedpo::toy {

struct WorldConfig {
  std::uint64_t world_seed = 0;
  std::int64_t dim = 2;
  std::int64_t n_prompts = 4;
  std::int64_t n_modes = 3;
  double mode_spread = 1.0;       // std of the mode centres
  double mode_std = 0.15;         // std of each mode
  double preference_width = 0.5;  // l: width of the preferred region
  double quality_weight = 0.1;    // w_q
};

inline at::Generator make_generator(std::uint64_t seed) {
  return at::detail::createCPUGenerator(seed);
}

// An independent seed per use of the run's seed (splitmix64), one `salt` per plugin.
inline std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t salt) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (salt + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class World {
 public:
  explicit World(const WorldConfig& config) : config_(config) {
    if (config.dim < 1) throw Error("toy world: dim must be at least 1");
    if (config.n_prompts < 1) throw Error("toy world: n_prompts must be at least 1");
    if (config.n_modes < 1) throw Error("toy world: n_modes must be at least 1");
    if (!(config.mode_std > 0) || !(config.mode_spread > 0) || !(config.preference_width > 0)) {
      throw Error("toy world: mode_std, mode_spread and preference_width must be positive");
    }
    const std::int64_t K = config.n_prompts, M = config.n_modes, d = config.dim;
    at::Generator gen = make_generator(config.world_seed * 0x9E3779B97F4A7C15ull + 17);
    auto f32 = at::TensorOptions().dtype(at::kFloat);
    // Mode centres, redrawn per prompt until they are separated by at least 6 sigma (so the
    // modes are distinct "kinds of image"); gives up after a few tries on crowded settings.
    means_ = at::empty({K, M, d}, f32);
    for (std::int64_t c = 0; c < K; ++c) {
      at::Tensor best;
      double best_gap = -1;
      for (int attempt = 0; attempt < 64; ++attempt) {
        at::Tensor mu = at::randn({M, d}, gen, f32) * config.mode_spread;
        double gap = M > 1 ? min_pairwise_distance(mu) : 1e9;
        if (gap > best_gap) best_gap = gap, best = mu;
        if (gap >= 6 * config.mode_std) break;
      }
      means_[c].copy_(best);
    }
    preferred_mode_ = at::randint(M, {K}, gen, at::TensorOptions().dtype(at::kLong));
    goal_ = means_.index({at::arange(K, at::kLong), preferred_mode_});  // [K, d]
    at::Tensor u = at::randn({d}, gen, f32);
    spurious_direction_ = u / u.norm();
    for (std::int64_t c = 0; c < K; ++c) prompts_.push_back("prompt " + std::to_string(c));
  }

  const WorldConfig& config() const { return config_; }
  std::int64_t dim() const { return config_.dim; }
  std::int64_t n_prompts() const { return config_.n_prompts; }
  const std::vector<std::string>& prompts() const { return prompts_; }
  const at::Tensor& means() const { return means_; }                    // [K, M, d]
  const at::Tensor& preferred_mode() const { return preferred_mode_; }  // [K] int64
  const at::Tensor& goal() const { return goal_; }                      // [K, d]
  const at::Tensor& spurious_direction() const { return spurious_direction_; }  // [d]

  // Index of a prompt text, or -1.
  std::int64_t find_prompt(const std::string& text) const {
    for (std::size_t i = 0; i < prompts_.size(); ++i) {
      if (prompts_[i] == text) return static_cast<std::int64_t>(i);
    }
    return -1;
  }

  // [N, d] draws from the base distribution of each row's prompt.
  at::Tensor sample(const at::Tensor& prompt_index, at::Generator& gen) const {
    const std::int64_t N = prompt_index.size(0);
    at::Tensor mode = at::randint(config_.n_modes, {N}, gen, at::TensorOptions().dtype(at::kLong));
    at::Tensor centre = means_.index({prompt_index.to(at::kLong), mode});
    return centre + config_.mode_std * at::randn({N, config_.dim}, gen, centre.options());
  }

  // [N] quality term: log of the (unnormalised) mixture density in units of sigma.
  at::Tensor quality(const at::Tensor& x, const at::Tensor& prompt_index) const {
    at::Tensor mu = means_.index_select(0, prompt_index.to(at::kLong));  // [N, M, d]
    at::Tensor sq = (x.unsqueeze(1) - mu).pow(2).sum(-1);                 // [N, M]
    return at::logsumexp(-sq / (2 * config_.mode_std * config_.mode_std), 1);
  }

  // [N] true reward r_c(x).
  at::Tensor reward(const at::Tensor& x, const at::Tensor& prompt_index) const {
    at::Tensor g = goal_.index_select(0, prompt_index.to(at::kLong));
    double l = config_.preference_width;
    at::Tensor preference = at::exp(-(x - g).pow(2).sum(-1) / (2 * l * l));
    return preference + config_.quality_weight * quality(x, prompt_index);
  }

  // [N] spurious feature s(x): visible to annotators, absent from the true reward.
  at::Tensor spurious(const at::Tensor& x) const { return at::matmul(x, spurious_direction_); }

  // [N] Bradley-Terry probability that A is preferred.
  at::Tensor oracle_probability(const at::Tensor& a, const at::Tensor& b,
                                const at::Tensor& prompt_index, double temperature) const {
    return at::sigmoid((reward(a, prompt_index) - reward(b, prompt_index)) / temperature);
  }

 private:
  static double min_pairwise_distance(const at::Tensor& mu) {
    at::Tensor dist = at::cdist(mu, mu);
    dist = dist + at::eye(mu.size(0), mu.options()) * 1e9;
    return dist.min().item<double>();
  }

  WorldConfig config_;
  at::Tensor means_, preferred_mode_, goal_, spurious_direction_;
  std::vector<std::string> prompts_;
};

}  // namespace dedpo::toy
