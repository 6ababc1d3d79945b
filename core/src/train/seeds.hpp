#pragma once
// Seeds of a run's random streams: each stream gets its own generator derived from the run's
// seed, so adding a draw to one stream never shifts another.
#include <cstdint>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>

namespace dedpo {

enum class RandomStream : std::uint64_t {
  noise = 1,
  data_order = 2,  // the batches' pairs (with two-stream batches: the all-pairs stream)
  label_split = 3,
  folds = 4,
  labelled_order = 5,  // two-stream batches: the labelled stream
};

// splitmix64's output for the `index`-th step from `seed` (index >= 1).
inline std::uint64_t splitmix64(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ULL * index;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline std::uint64_t derive_seed(std::uint64_t seed, RandomStream stream) {
  return splitmix64(seed, static_cast<std::uint64_t>(stream) + 1);
}

// The seed of the `part`-th part of a stream drawn in independent parts: the noise of the run's
// `part`-th micro-batch, whichever rank draws it (docs/distributed.md).
inline std::uint64_t derive_seed(std::uint64_t seed, RandomStream stream, std::uint64_t part) {
  return splitmix64(derive_seed(seed, stream), part + 1);
}

inline at::Generator make_generator(std::uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

}  // namespace dedpo
