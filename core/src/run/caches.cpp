#include "run/caches.hpp"

#include <map>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/serialize.h>

#include "dedpo/digest.hpp"
#include "dedpo/files.hpp"
#include "dedpo/safetensors.hpp"
#include "option_table.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

at::Tensor checked_annotations(const at::Tensor& annotations, const PluginSlot& slot,
                               const PairDataset& data) {
  at::Tensor prob = annotations.detach().to(at::kFloat).contiguous();
  if (prob.dim() != 1 || prob.size(0) != data.size()) {
    throw Error("annotator '" + slot.plugin + "' returned a tensor of shape " +
                fmt::format("{}", fmt::join(prob.sizes(), "x")) + ", expected [" +
                std::to_string(data.size()) + "]");
  }
  return prob;
}

// Pairs [begin, end) of `data` as a data set of their own: a rank's shard to annotate. Its
// fingerprint names the range, so what an annotator keys on the data is the shard's.
PairDataset pair_range(const PairDataset& data, std::int64_t begin, std::int64_t end) {
  const auto rows = [&](const at::Tensor& t) { return t.defined() ? t.narrow(0, begin, end - begin) : t; };
  const auto entries = [&](const auto& list) {
    return list.empty() ? list : std::decay_t<decltype(list)>(list.begin() + begin, list.begin() + end);
  };
  PairDataset shard;
  shard.prompts = data.prompts;
  shard.prompt_index = rows(data.prompt_index);
  shard.a = rows(data.a);
  shard.b = rows(data.b);
  shard.human_label = rows(data.human_label);
  shard.a_info = rows(data.a_info);
  shard.b_info = rows(data.b_info);
  shard.a_files = entries(data.a_files);
  shard.b_files = entries(data.b_files);
  shard.ids = entries(data.ids);
  if (!data.fingerprint.empty()) {
    shard.fingerprint = data.fingerprint + fmt::format("\npairs [{}, {})", begin, end);
  }
  return shard;
}

// The cached annotations of `data`, or an undefined tensor when the file is missing or holds
// another number of pairs.
at::Tensor read_cached_annotations(const fs::path& file, const PairDataset& data) {
  std::error_code error;
  if (!fs::exists(file, error)) return {};
  at::Tensor prob;
  torch::load(prob, file.string());
  if (prob.dim() != 1 || prob.size(0) != data.size()) return {};
  return prob;
}

}  // namespace

at::Tensor encode_prompts_cached(Backbone& backbone, const std::vector<std::string>& prompts,
                                 const fs::path& folder) {
  at::NoGradGuard no_grad;
  const std::string encoder = folder.empty() ? std::string() : backbone.encoder_fingerprint();
  if (encoder.empty()) return backbone.encode_prompts(prompts);
  const fs::path dir = folder / digest(encoder);
  auto file_of = [&](const std::string& prompt) {
    return dir / (digest("prompt\n" + prompt) + ".safetensors");
  };
  std::vector<at::Tensor> rows(prompts.size());
  auto read_cached = [&](std::vector<std::size_t> wanted) {
    std::vector<std::size_t> missing;
    for (std::size_t i : wanted) {
      std::error_code error;
      fs::path file = file_of(prompts[i]);
      if (fs::exists(file, error)) {
        rows[i] = safetensors::File(file).get("condition");
      } else {
        missing.push_back(i);
      }
    }
    return missing;
  };
  std::vector<std::size_t> all(prompts.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<std::size_t> missing = read_cached(all);
  if (!missing.empty()) {
    fs::create_directories(dir);
    FileLock lock(dir / ".lock");
    missing = read_cached(missing);  // another run may have written them meanwhile
    std::vector<std::string> texts;
    for (std::size_t i : missing) texts.push_back(prompts[i]);
    if (!texts.empty()) {
      at::Tensor encoded = backbone.encode_prompts(texts).to(at::kCPU);
      for (std::size_t k = 0; k < missing.size(); ++k) {
        at::Tensor row = encoded[static_cast<std::int64_t>(k)].contiguous();
        safetensors::save(file_of(texts[k]), std::map<std::string, at::Tensor>{{"condition", row}},
                          {{"prompt", texts[k]}});
        rows[missing[k]] = row;
      }
    }
  }
  return at::stack(rows);
}

at::Tensor annotate_cached(const Experiment& experiment, Annotator& annotator,
                           AnnotatorContext& context, const InitialWeights& init, RunLog& log,
                           Collectives* collectives) {
  const PluginSlot& slot = *experiment.annotator;
  const PairDataset& data = context.data;
  // Not cacheable means as cheap as reading a cache: every rank runs it itself.
  if (!annotator.cacheable()) {
    log.line("annotations: running annotator '" + slot.plugin + "' (not cached)");
    return checked_annotations(annotator.annotate(context), slot, data);
  }
  std::string key = fmt::format(
      "annotator={}\n{}\ndata={}\nbackbone={}\n{}\ninit={}\nseed={}\n", slot.plugin,
      detail::options_to_toml(slot.options), data.fingerprint, experiment.backbone->plugin,
      detail::options_to_toml(experiment.backbone->options), init.key, experiment.run.seed);
  // An annotator that learns from the labels trains with the run's [train] settings
  // (services.train), so those are part of what it computed.
  if (annotator.uses_labels()) {
    key += "labelled=" + tensor_digest(context.is_labelled) + "\ntrain=" + experiment.train_toml;
  }
  fs::path folder = cache_dir(experiment) / "annotations";
  fs::path file = folder / (digest(key) + ".pt");
  const int rank = collectives != nullptr ? collectives->rank() : 0;
  const int world_size = collectives != nullptr ? collectives->world_size() : 1;
  at::Tensor cached = read_cached_annotations(file, data);
  // Rank 0's finding holds for every rank (another run may write the file meanwhile).
  const bool use_cache =
      collectives != nullptr ? collectives->from_first(cached.defined() ? "1" : "0") == "1"
                             : cached.defined();
  if (use_cache) {
    if (!cached.defined()) cached = read_cached_annotations(file, data);
    if (!cached.defined()) {
      throw Error(fmt::format("rank {} of {} cannot read the annotations rank 0 read from {}", rank,
                              world_size, file.string()));
    }
    log.line("annotations: cached " + file.string());
    return cached;
  }
  const std::int64_t n = data.size();
  at::Tensor prob;
  if (world_size > 1 && annotator.shardable()) {
    // Contiguous shards; a pair's probability depends on that pair alone, so the shards make the
    // same N values (up to how the annotator's batches group the pairs).
    const std::int64_t begin = n * rank / world_size, end = n * (rank + 1) / world_size;
    log.line(fmt::format("annotations: running annotator '{}' on pairs [{}, {}) of {} (rank {} of "
                         "{}; the ranks annotate disjoint shards)",
                         slot.plugin, begin, end, n, rank, world_size));
    const PairDataset shard = pair_range(data, begin, end);
    const at::Tensor shard_labelled = context.is_labelled.narrow(0, begin, end - begin);
    AnnotatorContext shard_context{shard,        shard_labelled,     context.backbone,
                                   context.services, context.seed, context.cache_dir,
                                   context.device, begin,        n};
    const at::Tensor part = checked_annotations(annotator.annotate(shard_context), slot, shard);
    prob = at::zeros({n}, at::kFloat);
    prob.narrow(0, begin, end - begin).copy_(part);
  } else if (rank == 0) {
    log.line("annotations: running annotator '" + slot.plugin + "'" +
             (world_size > 1 ? " on rank 0 for every rank (it is not shardable)" : ""));
    prob = checked_annotations(annotator.annotate(context), slot, data);
  } else {
    log.line("annotations: waiting for rank 0's (annotator '" + slot.plugin + "' is not shardable)");
    prob = at::zeros({n}, at::kFloat);
  }
  // Every rank's zeros outside its part: the sum is each pair's one value, exactly.
  if (collectives != nullptr) collectives->sum_in_place(prob);
  if (rank == 0) {
    fs::create_directories(folder);
    fs::path temp = temp_path_for(file);
    torch::save(prob, temp.string());
    commit_file(temp, file);
  }
  return prob;
}

}  // namespace dedpo
