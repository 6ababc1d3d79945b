#include "dedpo/scorers/prompts.hpp"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dedpo/error.hpp"

namespace dedpo::scorers {

namespace {

bool valid_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    const auto lead = static_cast<unsigned char>(text[i]);
    std::size_t continuation = 0;
    if (lead >= 0x80) {
      if ((lead >> 5) == 0x6) continuation = 1;
      else if ((lead >> 4) == 0xE) continuation = 2;
      else if ((lead >> 3) == 0x1E) continuation = 3;
      else return false;
    }
    for (std::size_t k = 1; k <= continuation; ++k) {
      if (i + k >= text.size() || (static_cast<unsigned char>(text[i + k]) >> 6) != 0x2) return false;
    }
    i += continuation + 1;
  }
  return true;
}

std::string trimmed(const std::string& text) {
  const auto begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return {};
  return text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1);
}

}  // namespace

PromptSet read_prompt_set(const std::filesystem::path& file, std::int64_t max_prompts) {
  const std::string origin = "prompts file '" + file.string() + "'";
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Error(origin + ": cannot open");
  PromptSet set;
  set.name = file.stem().string();
  if (file.extension() == ".json") {
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error(origin + ": malformed JSON: " + e.what());
    }
    if (!json.is_array()) throw Error(origin + ": expected a JSON list of prompt strings");
    for (std::size_t i = 0; i < json.size(); ++i) {
      if (!json[i].is_string()) throw Error(fmt::format("{}: entry {} is not a string", origin, i));
      set.prompts.push_back(json[i].get<std::string>());
    }
  } else {
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (!valid_utf8(line)) throw Error(fmt::format("{} line {}: not valid UTF-8", origin, number));
      std::string prompt = trimmed(line);
      if (!prompt.empty()) set.prompts.push_back(std::move(prompt));
    }
    if (in.bad()) throw Error(origin + ": read error");
  }
  if (set.prompts.empty()) throw Error(origin + ": no prompts");
  if (max_prompts > 0 && static_cast<std::int64_t>(set.prompts.size()) > max_prompts) {
    set.prompts.resize(static_cast<std::size_t>(max_prompts));
  }
  return set;
}

std::vector<std::filesystem::path> split_path_list(const std::string& list) {
  std::vector<std::filesystem::path> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::string path = trimmed(item);
    if (!path.empty()) out.emplace_back(std::move(path));
  }
  return out;
}

}  // namespace dedpo::scorers
