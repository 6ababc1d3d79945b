#pragma once
// Prompt sets for metrics: one prompt per non-empty line, or a JSON list of strings (a ".json" file,
// as the HPDv2 benchmark's style files anime.json, concept-art.json, paintings.json, photo.json).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace dedpo::scorers {

struct PromptSet {
  std::string name;  // the file's stem: "anime" for anime.json
  std::vector<std::string> prompts;
};

// Reads a prompts file; keeps the first `max_prompts` (0 = all). dedpo::Error names the file (and
// the line or entry) when it cannot be read, is malformed, holds text that is not UTF-8, or is empty.
PromptSet read_prompt_set(const std::filesystem::path& file, std::int64_t max_prompts = 0);

// "a.txt, b.json" -> {"a.txt", "b.json"}: a comma-separated list, blanks trimmed.
std::vector<std::filesystem::path> split_path_list(const std::string& list);

}  // namespace dedpo::scorers
