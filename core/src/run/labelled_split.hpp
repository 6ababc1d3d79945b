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

// Removes the pairs whose human label is a tie (0.5) from every per-pair field.
void drop_tied_pairs(PairDataset& data);

// split.csv: one row per pair (its index in the data, id, prompt, whether it is labelled for
// this run, and the human label training may see: empty for unlabelled pairs).
void write_split_file(const std::filesystem::path& file, const PairDataset& data,
                      const at::Tensor& is_labelled);

// What loading the data did (pairs, labelled, ties, the dataset's own counts such as skipped
// lines) goes to the log, into `report` (results.json "data"), and to stderr when input was
// skipped or dropped, so nothing is dropped silently.
void log_data_report(const PairDataset& pairs, const at::Tensor& is_labelled, std::int64_t ties,
                     const TrainSettings& settings, RunLog& log, nlohmann::json& report);

}  // namespace dedpo
