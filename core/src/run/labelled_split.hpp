#pragma once
// Which pairs training may see the human label of, ties, and the split.csv audit file.
#include <cstdint>
#include <filesystem>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "dedpo/data.hpp"
#include "dedpo/host/settings.hpp"
#include "run/run_folder.hpp"

namespace dedpo {

// [N] bool: round(fraction · available) of the pairs that carry a human label (see the .cpp).
at::Tensor choose_labelled(const PairDataset& data, double fraction, std::uint64_t seed,
                           LabelSplit split);

// Removes the labelled pairs whose human label is a tie (0.5) from every per-pair field and from
// `is_labelled`; unlabelled pairs stay, whatever their hidden label. Returns how many it dropped.
std::int64_t drop_labelled_ties(PairDataset& data, at::Tensor& is_labelled);

// The run's split of `data` under [train] (labelled_fraction, split, ties): the labelled pairs,
// then with ties = "drop" the labelled ties removed. Training and `dedpo eval` share this rule.
struct TrainingSplit {
  at::Tensor is_labelled;  // [N] bool, N after dropping
  std::int64_t ties = 0;   // labelled ties, dropped or kept
};
TrainingSplit split_for_training(PairDataset& data, const TrainSettings& settings,
                                 std::uint64_t seed);

// split.csv: one row per pair (its index in the data, id, prompt, whether it is labelled for
// this run, and the human label training may see: empty for unlabelled pairs).
void write_split_file(const std::filesystem::path& file, const PairDataset& data,
                      const at::Tensor& is_labelled);

// What loading the data did (pairs, labelled, labelled ties, the dataset's own counts such as skipped
// lines) goes to the log, into `report` (results.json "data"), and to stderr when input was
// skipped or dropped, so nothing is dropped silently.
void log_data_report(const PairDataset& pairs, const at::Tensor& is_labelled, std::int64_t ties,
                     const TrainSettings& settings, RunLog& log, nlohmann::json& report);

}  // namespace dedpo
