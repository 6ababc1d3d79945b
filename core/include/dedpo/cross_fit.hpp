#pragma once
// Cross-fitting (cross-prediction-powered inference, Zrnic & Candès 2024; docs/losses.md §4):
// whatever learns from the human labels must not score a labelled pair with a model that saw
// that pair's label, or DeDPO's correction on the labelled pairs is no longer unbiased.
#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

namespace dedpo {

// [N] int64: each labelled pair's place in a random order of the labelled pairs (seeded), -1 for
// unlabelled pairs. `key % K` deals the labelled pairs into K random folds whose sizes differ by
// at most one: fold k holds the ceil((n_l - k) / K) pairs with key % K == k.
at::Tensor fold_keys(const at::Tensor& is_labelled, std::uint64_t seed);

// The number of labelled pairs in fold `fold` of `folds` when keys are dealt as above.
std::int64_t fold_size(std::int64_t n_labelled, std::int64_t folds, std::int64_t fold);

// Scores for every pair from a model that learns from labels. `fit_and_score(train)` fits on the
// pairs where the [N] bool mask `train` is true (labelled pairs only) and returns [N] scores.
// It is called once per fold, without that fold:
//   a labelled pair of fold k gets the score of the model fitted without fold k;
//   an unlabelled pair gets the average of the K models' scores, weighted by fold size (the
//   weighting that keeps DeDPO with soft targets exactly unbiased over random labelled sets).
// folds = 1: one model fitted on all labelled pairs scores every pair: no cross-fitting, its
// scores on the labelled pairs have seen their labels (biased; for comparison only).
// Throws dedpo::Error when folds < 1 or there are fewer labelled pairs than folds.
at::Tensor cross_fit(const at::Tensor& is_labelled, std::int64_t folds, std::uint64_t seed,
                     const std::function<at::Tensor(const at::Tensor& train)>& fit_and_score);

}  // namespace dedpo
