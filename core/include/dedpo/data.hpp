#pragma once
// Data in backbone space (toy: points; Stable Diffusion: VAE latents) with named sides: never a
// winner/loser order hidden in tensor layout.
#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dedpo {

struct PairDataset {
  std::vector<std::string> prompts;  // distinct prompt texts
  at::Tensor prompt_index;           // [N] int64 into `prompts`
  at::Tensor a;                      // [N, ...] first candidate
  at::Tensor b;                      // [N, ...] second candidate
  at::Tensor human_label;            // [N] float z (1 = A preferred, 0 = B, 0.5 = tie); NaN = none
  std::string fingerprint;           // identifies the content; keys annotation caches

  // Optional per-sample side information the backbone defines, [N, K] float; passed on in
  // PairBatch. Image data: original height, width, crop top, crop left (SDXL micro-conditioning).
  at::Tensor a_info, b_info;
  // Optional source files of A and B (data read from images): annotators and metrics that judge
  // pixels read these rather than decoding backbone space. Empty, or N entries each.
  std::vector<std::filesystem::path> a_files, b_files;
  // Optional pair ids from the source (empty, or N entries): the split file names pairs by them
  // and annotators that read labels made elsewhere match on them.
  std::vector<std::string> ids;
  // What loading did, as named counts (e.g. lines skipped per reason, images encoded or read
  // from a cache): the trainer writes them to the run's log and results.json.
  std::vector<std::pair<std::string, std::int64_t>> counts;

  std::int64_t size() const { return a.defined() ? a.size(0) : 0; }
};

// Single samples, for the plain denoising objective that trains a reference model.
struct SampleDataset {
  std::vector<std::string> prompts;
  at::Tensor prompt_index;  // [N] int64
  at::Tensor samples;       // [N, ...]

  std::int64_t size() const { return samples.defined() ? samples.size(0) : 0; }
};

}  // namespace dedpo
