#pragma once
// What runs of one output folder share on disk: encoded prompts and annotations.
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/data.hpp"
#include "dedpo/host/distributed.hpp"
#include "dedpo/host/experiment.hpp"
#include "run/init.hpp"
#include "run/run_folder.hpp"

namespace dedpo {

// [P, ...] rows of backbone.encode_prompts(prompts). When `folder` is given and the backbone
// names its encoders (encoder_fingerprint()), each row is read from or written to
// <folder>/<encoder digest>/<prompt digest>.safetensors: text encoding is paid once per prompt
// across the runs of a grid. Writers hold the folder's lock, so parallel runs encode once.
at::Tensor encode_prompts_cached(Backbone& backbone, const std::vector<std::string>& prompts,
                                 const std::filesystem::path& folder);

// The annotator's [N] probabilities for `data`, cached per (annotator and options, data,
// backbone and options, initial weights, seed, and the labelled set when the annotator uses it).
// A collective with `collectives` (a data-parallel run; every rank calls it): rank 0 decides
// whether the cache holds them; if not, a shardable annotator runs on every rank on a contiguous
// shard of the pairs and the shards are gathered, any other runs on rank 0 alone; rank 0 writes
// the cache and every rank returns all N.
at::Tensor annotate_cached(const Experiment& experiment, Annotator& annotator,
                           AnnotatorContext& context, const InitialWeights& init, RunLog& log,
                           Collectives* collectives);

}  // namespace dedpo
