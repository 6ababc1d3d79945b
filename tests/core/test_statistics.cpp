// The statistics of grid reports against independent values: mpmath 1.3 at 30 digits
// (betainc(a, b, 0, x, regularized=True), and the t distribution built on it) and the printed
// t tables.
#include <cmath>

#include <gtest/gtest.h>

#include "dedpo/error.hpp"
#include "dedpo/host/statistics.hpp"

using namespace dedpo;

TEST(Statistics, RegularizedIncompleteBetaMatchesMpmath) {
  struct Case {
    double a, b, x, expected;
  };
  const Case cases[] = {
      {0.5, 0.5, 0.3, 0.36901011956554538}, {2, 3, 0.4, 0.52480000000000004},
      {4.5, 0.5, 0.9, 0.34343639613791357}, {10, 20, 0.2, 0.049263517304212517},
      {50, 0.5, 0.98, 0.15624350786681793}, {1, 1, 0.7, 0.69999999999999996},
      {0.5, 5, 0.01, 0.2428418908984375},
  };
  for (const Case& c : cases) {
    EXPECT_NEAR(regularized_incomplete_beta(c.a, c.b, c.x), c.expected, 1e-13)
        << "a " << c.a << " b " << c.b << " x " << c.x;
  }
  EXPECT_EQ(regularized_incomplete_beta(2, 3, 0), 0);
  EXPECT_EQ(regularized_incomplete_beta(2, 3, 1), 1);
  EXPECT_THROW(regularized_incomplete_beta(0, 1, 0.5), Error);
  EXPECT_THROW(regularized_incomplete_beta(1, 1, 1.5), Error);
}

TEST(Statistics, StudentTDistributionMatchesMpmathAndTheTables) {
  struct Case {
    double t, df, cdf;
  };
  const Case cases[] = {{2.0, 3, 0.93033701572057841},   {-1.5, 7, 0.088649243494985017},
                        {0.3, 1, 0.59277357907774234},   {4.0, 9, 0.99844478584480707},
                        {1.0, 100, 0.84013792210793832}, {12.706, 1, 0.97499959882093341}};
  for (const Case& c : cases) {
    EXPECT_NEAR(student_t_cdf(c.t, c.df), c.cdf, 1e-13) << "t " << c.t << " df " << c.df;
  }
  EXPECT_EQ(student_t_cdf(0, 5), 0.5);
  // Two-sided 95% critical values: mpmath to 1e-9, and the printed tables' three decimals.
  struct Quantile {
    double df, mpmath, table;
  };
  const Quantile quantiles[] = {{1, 12.706204736174705, 12.706}, {2, 4.3026527297494639, 4.303},
                                {4, 2.7764451051977944, 2.776},  {9, 2.2621571627982055, 2.262},
                                {30, 2.0422724563012383, 2.042}, {120, 1.9799304050824408, 1.980}};
  for (const Quantile& q : quantiles) {
    EXPECT_NEAR(student_t_quantile(0.975, q.df), q.mpmath, 1e-9) << "df " << q.df;
    EXPECT_NEAR(student_t_quantile(0.975, q.df), q.table, 5e-4) << "df " << q.df;
    EXPECT_NEAR(student_t_quantile(0.025, q.df), -q.mpmath, 1e-9) << "df " << q.df;
  }
}

TEST(Statistics, MeanIntervalCountsDivergedValuesApart) {
  const double values[] = {1.0, NAN, 3.0, INFINITY, 2.0};
  const MeanInterval s = mean_interval(values);
  EXPECT_EQ(s.n, 3u);
  EXPECT_EQ(s.diverged, 2u);
  EXPECT_DOUBLE_EQ(s.mean, 2.0);
  EXPECT_NEAR(s.half_width, 4.3026527297494639 * 1.0 / std::sqrt(3.0), 1e-12);  // sd 1
  const double one[] = {5.0};
  EXPECT_TRUE(std::isnan(mean_interval(one).half_width));
}

TEST(Statistics, PairedTTestMatchesMpmath) {
  const double method[] = {0.31, 0.42, 0.28, 0.39, 0.35, 0.30, 0.44, 0.37};
  const double baseline[] = {0.25, 0.40, 0.30, 0.33, 0.29, 0.27, 0.36, 0.35};
  ValuesBySeed m, b;
  for (int seed = 0; seed < 8; ++seed) {
    m[seed + 1] = method[seed];
    b[seed + 1] = baseline[seed];
  }
  const PairedComparison c = paired_comparison(m, b);
  EXPECT_EQ(c.pairs, 8u);
  EXPECT_EQ(c.seeds, 8u);
  // mpmath: mean 0.03875, t = 3.3968505239397438 on 7 df.
  EXPECT_NEAR(c.mean_difference, 0.03875, 1e-12);
  EXPECT_NEAR(c.p_value, 0.01149166779262817, 1e-12);
  EXPECT_NEAR(c.low, 0.011775251154429123, 1e-12);
  EXPECT_NEAR(c.high, 0.065724748845570877, 1e-12);
  // The test is two-sided: swapping the sides changes the sign, not p.
  const PairedComparison swapped = paired_comparison(b, m);
  EXPECT_NEAR(swapped.mean_difference, -0.03875, 1e-12);
  EXPECT_NEAR(swapped.p_value, c.p_value, 1e-14);
}

TEST(Statistics, SeedsDivergedOrMissingOnEitherSideAreLeftOutAndCounted) {
  // Seed 2 diverged in the method, seed 4 in the baseline, seed 5 only has a baseline run and
  // seed 6 only a method run: seeds 1 and 3 are the pairs, out of 6 seeds.
  const ValuesBySeed method = {{1, 1.0}, {2, NAN}, {3, 2.0}, {4, 5.0}, {6, 9.0}};
  const ValuesBySeed baseline = {{1, 0.5}, {2, 0.4}, {3, 1.0}, {4, INFINITY}, {5, 7.0}};
  const PairedComparison c = paired_comparison(method, baseline);
  EXPECT_EQ(c.pairs, 2u);
  EXPECT_EQ(c.seeds, 6u);
  EXPECT_DOUBLE_EQ(c.mean_difference, 0.75);  // (0.5 + 1.0) / 2
  // Differences 0.5 and 1.0: t = 0.75 / 0.25 = 3 on 1 df; p = 1 - 2 atan(3) / pi.
  EXPECT_NEAR(c.p_value, 1.0 - 2.0 * std::atan(3.0) / M_PI, 1e-12);

  const PairedComparison one = paired_comparison({{1, 1.0}}, {{1, 0.0}});
  EXPECT_EQ(one.pairs, 1u);
  EXPECT_DOUBLE_EQ(one.mean_difference, 1.0);
  EXPECT_TRUE(std::isnan(one.p_value));
  EXPECT_TRUE(std::isnan(one.low));
  // Every pair differs by the same amount: no spread, the difference is certain.
  const PairedComparison same = paired_comparison({{1, 2.0}, {2, 3.0}}, {{1, 1.0}, {2, 2.0}});
  EXPECT_EQ(same.p_value, 0.0);
  EXPECT_EQ(same.low, 1.0);
}
