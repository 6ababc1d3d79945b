#include "run/labelled_split.hpp"

#include <cmath>
#include <iostream>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "dedpo/digest.hpp"
#include "dedpo/files.hpp"
#include "dedpo/records.hpp"
#include "train/seeds.hpp"

namespace dedpo {
namespace fs = std::filesystem;

// The labelled subset: round(fraction · available) of the pairs that carry a human label, drawn
// uniformly, or stratified by prompt: candidates shuffled, grouped by prompt (prompts in random
// order), and every (1/fraction)-th taken (systematic sampling), so each prompt gets
// ⌊fraction · n_p⌋ or ⌈fraction · n_p⌉ labels.
at::Tensor choose_labelled(const PairDataset& data, double fraction, std::uint64_t seed,
                           LabelSplit split) {
  at::Tensor has_label = at::logical_not(at::isnan(data.human_label.to(at::kFloat)));
  at::Tensor candidates = at::nonzero(has_label).flatten();
  std::int64_t available = candidates.size(0);
  auto count = static_cast<std::int64_t>(std::llround(fraction * static_cast<double>(available)));
  at::Generator generator = make_generator(derive_seed(seed, RandomStream::label_split));
  at::Tensor permutation = at::randperm(available, generator, at::kLong);
  at::Tensor chosen;
  if (split == LabelSplit::by_prompt) {
    at::Tensor shuffled = candidates.index_select(0, permutation);
    auto n_prompts = static_cast<std::int64_t>(data.prompts.size());
    at::Tensor prompt_rank = at::randperm(n_prompts, generator, at::kLong)
                                 .index_select(0, data.prompt_index.index_select(0, shuffled));
    at::Tensor grouped =
        shuffled.index_select(0, std::get<1>(at::sort(prompt_rank, c10::optional<bool>(true), 0)));
    at::Tensor k = at::arange(available, at::kDouble);
    at::Tensor taken = at::floor((k + 1) * fraction + 0.5) > at::floor(k * fraction + 0.5);
    chosen = grouped.masked_select(taken);
  } else {
    chosen = candidates.index_select(0, permutation.slice(0, 0, count));
  }
  at::Tensor mask = at::zeros({data.size()}, at::kBool);
  mask.index_fill_(0, chosen, true);
  return mask;
}

std::int64_t drop_labelled_ties(PairDataset& data, at::Tensor& is_labelled) {
  // Only labels training may see decide: an unlabelled pair stays whatever its hidden label.
  at::Tensor keep = at::logical_not(is_labelled.to(at::kBool).logical_and(
      data.human_label.to(at::kFloat) == 0.5f));
  const std::int64_t dropped = data.size() - keep.sum().item<std::int64_t>();
  if (dropped == 0) return 0;
  // Positions shift once pairs are dropped: data without ids gets its original positions as ids,
  // so the split file and id-matched annotations keep naming the same pairs.
  if (data.ids.empty()) {
    for (std::int64_t i = 0; i < data.size(); ++i) data.ids.push_back(std::to_string(i));
  }
  at::Tensor index = at::nonzero(keep).flatten();
  data.prompt_index = data.prompt_index.index_select(0, index);
  data.a = data.a.index_select(0, index);
  data.b = data.b.index_select(0, index);
  data.human_label = data.human_label.index_select(0, index);
  if (data.a_info.defined()) data.a_info = data.a_info.index_select(0, index);
  if (data.b_info.defined()) data.b_info = data.b_info.index_select(0, index);
  auto select = [&](auto& items) {
    if (items.empty()) return;
    std::remove_reference_t<decltype(items)> kept;
    const std::int64_t* rows = index.data_ptr<std::int64_t>();
    for (std::int64_t i = 0; i < index.size(0); ++i) {
      kept.push_back(items[static_cast<std::size_t>(rows[i])]);
    }
    items = std::move(kept);
  };
  select(data.a_files);
  select(data.b_files);
  select(data.ids);
  is_labelled = is_labelled.index_select(0, index);
  // The content now depends on the split: annotation caches must tell them apart.
  data.fingerprint += "|labelled ties dropped=" + tensor_digest(index);
  return dropped;
}

TrainingSplit split_for_training(PairDataset& data, const TrainSettings& settings,
                                 std::uint64_t seed) {
  TrainingSplit split;
  split.is_labelled = choose_labelled(data, settings.labelled_fraction, seed, settings.split);
  split.ties = settings.ties == TiePolicy::drop
                   ? drop_labelled_ties(data, split.is_labelled)
                   : split.is_labelled.logical_and(data.human_label.to(at::kFloat) == 0.5f)
                         .sum()
                         .item<std::int64_t>();
  return split;
}

void write_split_file(const fs::path& file, const PairDataset& data, const at::Tensor& is_labelled) {
  std::string text = "pair,id,prompt,labelled,label\n";
  at::Tensor labelled = is_labelled.to(at::kBool).contiguous();
  at::Tensor label = data.human_label.to(at::kFloat).contiguous();
  at::Tensor prompt = data.prompt_index.to(at::kLong).contiguous();
  for (std::int64_t i = 0; i < data.size(); ++i) {
    const bool is = labelled.data_ptr<bool>()[i];
    const auto prompt_row = static_cast<std::size_t>(prompt.data_ptr<std::int64_t>()[i]);
    const std::string id = data.ids.empty() ? std::string() : data.ids[static_cast<std::size_t>(i)];
    text += fmt::format("{},{},{},{},{}\n", i, csv_field(id), csv_field(data.prompts.at(prompt_row)),
                        is ? 1 : 0, is ? fmt::format("{:g}", label.data_ptr<float>()[i]) : "");
  }
  write_file_atomic(file, text);
}

void log_data_report(const PairDataset& pairs, const at::Tensor& is_labelled, std::int64_t ties,
                     const TrainSettings& settings, RunLog& log, nlohmann::json& report) {
  const std::int64_t labelled = is_labelled.sum().item<std::int64_t>();
  const bool drop_ties = settings.ties == TiePolicy::drop;
  report = {{"pairs", pairs.size()},
            {"labelled", labelled},
            {drop_ties ? "labelled_ties_dropped" : "labelled_ties_kept", ties}};
  std::string counts;
  bool skipped = drop_ties && ties > 0;
  for (const auto& [name, count] : pairs.counts) {
    report[name] = count;
    counts += fmt::format(", {} {}", name, count);
    skipped = skipped || (name.starts_with("skipped_") && count > 0);
  }
  std::string summary = fmt::format("data: {} pairs, {} labelled ({} split), {} labelled ties {}{}",
                                    pairs.size(), labelled,
                                    to_string(settings.split), ties,
                                    drop_ties ? "dropped" : "kept as 0.5", counts);
  log.line(summary);
  if (skipped) std::cerr << summary << "\n";
}

}  // namespace dedpo
