#pragma once
// The statistics of grid reports: Student's t distribution, a mean over seeds with its interval,
// and the paired comparison of two methods seed by seed (paired t-test).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>

namespace dedpo {

// I_x(a, b), the regularized incomplete beta function, for a, b > 0 and x in [0, 1].
double regularized_incomplete_beta(double a, double b, double x);

// P(T <= t) for Student's t distribution with `df` > 0 degrees of freedom.
double student_t_cdf(double t, double df);
// The t with P(T <= t) = p, for p in (0, 1).
double student_t_quantile(double p, double df);

// The mean of the finite values and the half-width of its 95% interval (Student t, n - 1 degrees
// of freedom). Non-finite values (diverged runs) are counted apart, never averaged.
struct MeanInterval {
  double mean = NAN;         // NaN without a finite value
  double half_width = NAN;   // NaN below two finite values
  std::size_t n = 0;         // finite values
  std::size_t diverged = 0;  // non-finite values, left out
};
MeanInterval mean_interval(std::span<const double> values);

// method − baseline, seed by seed. A seed is a pair when both sides have a finite value for it;
// seeds that diverged or are missing on either side are left out and counted.
struct PairedComparison {
  std::size_t pairs = 0;  // seeds used
  std::size_t seeds = 0;  // seeds of either side
  double mean_difference = NAN;
  double low = NAN, high = NAN;  // 95% interval of the mean difference (Student t, pairs − 1 df)
  double p_value = NAN;          // two-sided paired t-test of mean difference 0; NaN below 2 pairs
};
using ValuesBySeed = std::map<std::int64_t, double>;
PairedComparison paired_comparison(const ValuesBySeed& method, const ValuesBySeed& baseline);

}  // namespace dedpo
