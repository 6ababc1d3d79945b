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
                           AnnotatorContext& context, const InitialWeights& init, RunLog& log) {
  const PluginSlot& slot = *experiment.annotator;
  const PairDataset& data = context.data;
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
  std::error_code error;
  if (fs::exists(file, error)) {
    at::Tensor prob;
    torch::load(prob, file.string());
    if (prob.dim() == 1 && prob.size(0) == data.size()) {
      log.line("annotations: cached " + file.string());
      return prob;
    }
  }
  log.line("annotations: running annotator '" + slot.plugin + "'");
  at::Tensor prob = checked_annotations(annotator.annotate(context), slot, data);
  fs::create_directories(folder);
  fs::path temp = temp_path_for(file);
  torch::save(prob, temp.string());
  commit_file(temp, file);
  return prob;
}

}  // namespace dedpo
