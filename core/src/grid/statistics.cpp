#include "dedpo/host/statistics.hpp"

#include <limits>
#include <string>
#include <vector>

#include "dedpo/error.hpp"

namespace dedpo {

namespace {

// The continued fraction of I_x(a, b) (Abramowitz & Stegun 26.5.8),
//   I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) · 1 / (1 + d1 / (1 + d2 / (1 + ...))),
//   d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),
//   d_{2m}   = m (b - m) x / ((a + 2m - 1)(a + 2m)),
// evaluated front to back by the modified Lentz method. It converges fast for
// x < (a + 1) / (a + b + 2); the caller uses the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) beyond.
double incomplete_beta_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300, tolerance = 1e-15;
  constexpr int max_terms = 10000;
  double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);  // after the first term, d1
  if (std::abs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double value = d;
  for (int m = 1; m <= max_terms; ++m) {
    const double two_m = 2.0 * m;
    for (const double term : {m * (b - m) * x / ((a + two_m - 1.0) * (a + two_m)),
                              -(a + m) * (a + b + m) * x / ((a + two_m) * (a + two_m + 1.0))}) {
      d = 1.0 + term * d;
      if (std::abs(d) < tiny) d = tiny;
      c = 1.0 + term / c;
      if (std::abs(c) < tiny) c = tiny;
      d = 1.0 / d;
      value *= c * d;
    }
    if (std::abs(c * d - 1.0) < tolerance) return value;
  }
  throw Error("incomplete beta function: no convergence for a = " + std::to_string(a) +
              ", b = " + std::to_string(b) + ", x = " + std::to_string(x));
}

// n, mean and standard error of the mean of the finite values.
struct Moments {
  std::size_t n = 0;
  double mean = NAN, standard_error = NAN;
};

Moments finite_moments(std::span<const double> values) {
  Moments moments;
  double sum = 0;
  for (double v : values) {
    if (std::isfinite(v)) {
      sum += v;
      ++moments.n;
    }
  }
  if (moments.n == 0) return moments;
  const double n = static_cast<double>(moments.n);
  moments.mean = sum / n;
  if (moments.n >= 2) {
    double squares = 0;
    for (double v : values) {
      if (std::isfinite(v)) squares += (v - moments.mean) * (v - moments.mean);
    }
    moments.standard_error = std::sqrt(squares / (n - 1.0) / n);
  }
  return moments;
}

}  // namespace

double regularized_incomplete_beta(double a, double b, double x) {
  if (!(a > 0) || !(b > 0) || !(x >= 0 && x <= 1)) {
    throw Error("incomplete beta function: needs a, b > 0 and x in [0, 1]");
  }
  if (x == 0 || x == 1) return x;
  const double log_front =
      a * std::log(x) + b * std::log1p(-x) - (std::lgamma(a) + std::lgamma(b) - std::lgamma(a + b));
  if (x < (a + 1.0) / (a + b + 2.0)) {
    return std::exp(log_front) * incomplete_beta_fraction(a, b, x) / a;
  }
  return 1.0 - std::exp(log_front) * incomplete_beta_fraction(b, a, 1.0 - x) / b;
}

double student_t_cdf(double t, double df) {
  if (!(df > 0)) throw Error("Student t distribution: needs df > 0");
  if (std::isnan(t)) return NAN;
  if (std::isinf(t)) return t > 0 ? 1.0 : 0.0;
  // P(|T| > |t|) = I_{df / (df + t²)}(df / 2, 1 / 2).
  const double both_tails = regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
  return t > 0 ? 1.0 - both_tails / 2.0 : both_tails / 2.0;
}

double student_t_quantile(double p, double df) {
  if (!(p > 0 && p < 1)) throw Error("Student t quantile: needs p in (0, 1)");
  if (p < 0.5) return -student_t_quantile(1.0 - p, df);
  // The cdf is increasing: bracket the quantile, then bisect to the last representable digit.
  double low = 0.0, high = 1.0;
  while (student_t_cdf(high, df) < p) {
    low = high;
    high *= 2.0;
  }
  for (int i = 0; i < 200 && high - low > 4 * std::numeric_limits<double>::epsilon() * high; ++i) {
    const double middle = 0.5 * (low + high);
    (student_t_cdf(middle, df) < p ? low : high) = middle;
  }
  return 0.5 * (low + high);
}

MeanInterval mean_interval(std::span<const double> values) {
  const Moments moments = finite_moments(values);
  MeanInterval result;
  result.n = moments.n;
  result.diverged = values.size() - moments.n;
  result.mean = moments.mean;
  if (moments.n >= 2) {
    result.half_width =
        student_t_quantile(0.975, static_cast<double>(moments.n) - 1.0) * moments.standard_error;
  }
  return result;
}

PairedComparison paired_comparison(const ValuesBySeed& method, const ValuesBySeed& baseline) {
  PairedComparison result;
  ValuesBySeed all_seeds = method;
  all_seeds.insert(baseline.begin(), baseline.end());
  result.seeds = all_seeds.size();
  std::vector<double> differences;
  for (const auto& [seed, value] : method) {
    const auto other = baseline.find(seed);
    if (other != baseline.end()) differences.push_back(value - other->second);  // NaN if either is
  }
  const Moments moments = finite_moments(differences);
  result.pairs = moments.n;
  result.mean_difference = moments.mean;
  if (moments.n < 2) return result;
  const double df = static_cast<double>(moments.n) - 1.0;
  const double half_width = student_t_quantile(0.975, df) * moments.standard_error;
  result.low = moments.mean - half_width;
  result.high = moments.mean + half_width;
  if (moments.standard_error == 0) {  // every pair differs by the same amount: t is 0/0 or infinite
    result.p_value = moments.mean == 0 ? 1.0 : 0.0;
    return result;
  }
  const double t = moments.mean / moments.standard_error;
  result.p_value = regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t));
  return result;
}

}  // namespace dedpo
