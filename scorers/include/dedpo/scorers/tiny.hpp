#pragma once
// Tiny random-weight scorer folders for tests and smoke runs (dedpo_make_tiny_clip): a
// transformers-layout CLIPModel (hidden 32, 2 + 2 layers, 32×32 images, 8×8 patches, embeddings
// of 16) with a byte-level CLIP tokenizer and a preprocessor_config.json (shortest edge 32, crop
// 32), plus an aesthetic head in the LAION layout (16 → 1024 → 128 → 64 → 16 → 1).
#include <cstdint>
#include <filesystem>

namespace dedpo::scorers {

// Writes config.json, model.safetensors, vocab.json, merges.txt, tokenizer_config.json,
// special_tokens_map.json, preprocessor_config.json and aesthetic_head.safetensors into `folder`.
void write_tiny_clip_folder(const std::filesystem::path& folder, std::uint64_t seed = 0);

}  // namespace dedpo::scorers
