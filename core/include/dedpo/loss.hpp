#pragma once
// Preference losses see per-pair scalars, never images: the denoising errors of the trainable and
// the frozen reference model on both sides of each pair, and the labels.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dedpo/figures.hpp"
#include "dedpo/plugin.hpp"

namespace dedpo {

// The pool the trainer draws a loss's batches from, uniformly without replacement per epoch.
enum class PairPool : std::uint32_t {
  labelled,  // only pairs with a human label
  all,       // labelled and unlabelled pairs alike
};

// One batch of B pairs y = (A, B). Both images of a pair share one timestep and one noise draw.
struct PairTerms {
  at::Tensor model_err_a;      // [B] mean squared noise-prediction error of the trainable model on A
  at::Tensor model_err_b;      // [B] ... on B
  at::Tensor ref_err_a;        // [B] frozen reference on A (undefined if !needs_reference())
  at::Tensor ref_err_b;        // [B] frozen reference on B
  at::Tensor human_label;      // [B] float z: 1 = A preferred, 0 = B preferred, 0.5 = tie; NaN where unlabelled
  at::Tensor is_labelled;      // [B] bool
  at::Tensor annotator_prob;   // [B] float ĝ = P(A preferred) by the annotator; undefined if none ran
  std::int64_t n_labelled = 0;    // labelled pairs in the whole training set
  std::int64_t n_unlabelled = 0;  // unlabelled pairs in the whole training set
  PairPool drawn_from = PairPool::labelled;
  // Two-stream batches ([train] batches = "two_stream", docs/losses.md §3): the first
  // labelled_stream_size pairs were drawn from the labelled pairs, the other
  // B - labelled_stream_size from all pairs (drawn_from = all). 0: the whole batch was drawn
  // from drawn_from. dedpo::labelled_mean and dedpo::all_mean read each mean from its stream.
  std::int64_t labelled_stream_size = 0;
  // [B] int64: a labelled pair's place in a random order of the run's labelled pairs, fixed for
  // the run (dedpo/cross_fit.hpp fold_keys), -1 for an unlabelled pair. `fold_key % K` is the
  // pair's fold when a loss cross-fits an estimate over K folds (dedpo's lambda = "auto" must
  // not use the labels it corrects with). Undefined when the caller gives none.
  at::Tensor fold_key;
};

struct LossResult {
  at::Tensor loss;  // scalar, differentiable
  // Named figures for metrics.jsonl (implicit accuracy, mean logit, λ in use, ...).
  Figures diagnostics;
};

class Loss : public Plugin {
 public:
  static constexpr PluginKind kind = PluginKind::loss;

  virtual PairPool pool() const = 0;
  virtual bool needs_annotator() const = 0;
  virtual bool needs_reference() const { return true; }
  // Whether the loss takes two-stream batches (PairTerms::labelled_stream_size > 0): a loss says
  // so when it weighs each stream right (its batch means through dedpo::labelled_mean and
  // dedpo::all_mean); the trainer refuses [train] batches = "two_stream" for the others.
  virtual bool takes_two_stream_batches() const { return false; }
  // Not const: a loss may keep running statistics (e.g. DeDPO's λ = auto).
  virtual LossResult compute(const PairTerms& terms) = 0;

  // Running state that a checkpoint must carry for a resumed run to be bit-identical.
  virtual std::vector<double> state() const { return {}; }
  virtual void load_state(const std::vector<double>& state);

  // Running statistics (DeDPO's lambda = "auto" moments) enter the running state once per
  // optimiser step, never within one: compute() gathers a step's contributions, the trainer reads
  // them with step_statistics() after the step's last micro-batch, sums them over the ranks of a
  // data-parallel run, and hands the sums to end_step(). So every rank's state takes in the whole
  // global batch, and W ranks train exactly as one process accumulating W times the
  // micro-batches. Every rank's vector has the same size. end_step returns figures of the updated
  // state (e.g. the estimate the next step will use), the same on every rank. A step that the
  // NaN/inf guard skips changes nothing: the trainer calls load_state(state()) instead, which
  // must drop the statistics gathered since the last end_step.
  virtual std::vector<double> step_statistics() const { return {}; }
  virtual Figures end_step(const std::vector<double>& summed_statistics);
};

}  // namespace dedpo
