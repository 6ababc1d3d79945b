#include "dedpo/cross_fit.hpp"

#include <string>

#include <ATen/ATen.h>

#include "dedpo/error.hpp"
#include "train/seeds.hpp"

namespace dedpo {

at::Tensor fold_keys(const at::Tensor& is_labelled, std::uint64_t seed) {
  at::Tensor labelled = is_labelled.to(at::kCPU, at::kBool);
  at::Tensor rows = at::nonzero(labelled).flatten();
  at::Generator generator = make_generator(derive_seed(seed, RandomStream::folds));
  at::Tensor order = at::randperm(rows.size(0), generator, at::kLong);
  at::Tensor keys = at::full({labelled.size(0)}, -1, at::kLong);
  keys.index_copy_(0, rows, order);
  return keys;
}

std::int64_t fold_size(std::int64_t n_labelled, std::int64_t folds, std::int64_t fold) {
  return n_labelled > fold ? (n_labelled - fold + folds - 1) / folds : 0;
}

at::Tensor cross_fit(const at::Tensor& is_labelled, std::int64_t folds, std::uint64_t seed,
                     const std::function<at::Tensor(const at::Tensor& train)>& fit_and_score) {
  at::Tensor labelled = is_labelled.to(at::kCPU, at::kBool);
  const std::int64_t n_labelled = labelled.sum().item<std::int64_t>();
  if (folds < 1) throw Error("cross-fitting needs at least 1 fold, got " + std::to_string(folds));
  if (n_labelled < folds) {
    throw Error("cross-fitting into " + std::to_string(folds) + " folds needs at least " +
                std::to_string(folds) + " labelled pairs, got " + std::to_string(n_labelled));
  }
  if (folds == 1) return fit_and_score(labelled).to(at::kCPU, at::kFloat);
  at::Tensor fold = at::remainder(fold_keys(labelled, seed), folds);
  at::Tensor scores = at::zeros({labelled.size(0)}, at::kDouble);
  at::Tensor unlabelled = labelled.logical_not();
  for (std::int64_t k = 0; k < folds; ++k) {
    at::Tensor held_out = labelled.logical_and(fold == k);
    at::Tensor fitted = fit_and_score(labelled.logical_and(held_out.logical_not()))
                            .to(at::kCPU, at::kDouble);
    if (fitted.dim() != 1 || fitted.size(0) != labelled.size(0)) {
      throw Error("cross-fitting: the model of fold " + std::to_string(k) + " returned " +
                  std::to_string(fitted.numel()) + " scores in " + std::to_string(fitted.dim()) +
                  " dimensions, expected [" + std::to_string(labelled.size(0)) + "]");
    }
    const double weight = static_cast<double>(fold_size(n_labelled, folds, k)) /
                          static_cast<double>(n_labelled);
    scores = at::where(held_out, fitted, scores);
    scores = at::where(unlabelled, scores + weight * fitted, scores);
  }
  return scores.to(at::kFloat);
}

}  // namespace dedpo
