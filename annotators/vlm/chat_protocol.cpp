#include "chat_protocol.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "dedpo/error.hpp"

namespace dedpo::vlm {
namespace {

using nlohmann::json;

std::string lower(std::string_view text) {
  std::string result(text);
  for (char& c : result) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return result;
}

bool is_alnum(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

// Which side a word names: 1 first, 2 second, 0 neither. Case-insensitive.
int side_of(const Question& question, std::string_view word) {
  const std::string key = lower(word);
  for (const std::string& answer : question.first_answers) {
    if (lower(answer) == key) return 1;
  }
  for (const std::string& answer : question.second_answers) {
    if (lower(answer) == key) return 2;
  }
  return 0;
}

std::string_view trimmed(std::string_view text) {
  const char* space = " \t\r\n";
  const std::size_t begin = text.find_first_not_of(space);
  if (begin == std::string_view::npos) return {};
  return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

// The reply's first word, past leading punctuation: "A", "**B**.", "(2)" name a side; "Image A"
// does not (its first word is "Image").
std::string_view first_word(std::string_view text) {
  std::size_t begin = 0;
  while (begin < text.size() && !is_alnum(text[begin])) ++begin;
  std::size_t end = begin;
  while (end < text.size() && is_alnum(text[end])) ++end;
  return text.substr(begin, end - begin);
}

// Softmax restricted to the answer tokens among the first position's candidates; empty when
// no candidate names a side. Tokens are told apart by their exact text (" A" and "A" are two
// tokens of one answer).
std::optional<double> p_first_from_logprobs(const Question& question, const json& choice) {
  const json* logprobs = choice.contains("logprobs") ? &choice["logprobs"] : nullptr;
  if (!logprobs || !logprobs->is_object() || !logprobs->contains("content")) return std::nullopt;
  const json& content = (*logprobs)["content"];
  if (!content.is_array() || content.empty()) return std::nullopt;
  const json& position = content[0];
  std::map<std::string, double> candidates;
  auto add = [&](const json& entry) {
    if (entry.is_object() && entry.contains("token") && entry["token"].is_string() &&
        entry.contains("logprob") && entry["logprob"].is_number()) {
      candidates.emplace(entry["token"].get<std::string>(), entry["logprob"].get<double>());
    }
  };
  if (position.contains("top_logprobs") && position["top_logprobs"].is_array()) {
    for (const json& entry : position["top_logprobs"]) add(entry);
  }
  add(position);  // the chosen token, in case the server left it out of top_logprobs
  double mass[3] = {0, 0, 0};
  for (const auto& [token, logprob] : candidates) {
    // A log-probability is at most 0; a larger or non-finite one is no probability (exp(777) is
    // infinite and would make the answer NaN), so it is left out like a missing token.
    if (std::isfinite(logprob) && logprob <= 0.0) {
      mass[side_of(question, trimmed(token))] += std::exp(logprob);
    }
  }
  if (!(mass[1] + mass[2] > 0)) return std::nullopt;
  return mass[1] / (mass[1] + mass[2]);
}

}  // namespace

std::vector<std::string> unknown_placeholders(const std::string& prompt_template) {
  std::vector<std::string> unknown;
  std::size_t open = prompt_template.find('{');
  while (open != std::string::npos) {
    const std::size_t close = prompt_template.find('}', open);
    if (close == std::string::npos) {
      unknown.push_back(prompt_template.substr(open));
      break;
    }
    std::string name = prompt_template.substr(open + 1, close - open - 1);
    if (name != "prompt" && name != "first" && name != "second")
      unknown.push_back("{" + name + "}");
    open = prompt_template.find('{', close);
  }
  return unknown;
}

std::string chat_request(const Question& question, const std::string& prompt,
                         const std::string& first_image, const std::string& second_image) {
  std::string text;
  const std::string& pattern = question.prompt_template;
  for (std::size_t i = 0; i < pattern.size();) {
    auto replaces = [&](std::string_view placeholder, const std::string& value) {
      if (pattern.compare(i, placeholder.size(), placeholder) != 0) return false;
      text += value;
      i += placeholder.size();
      return true;
    };
    if (replaces("{prompt}", prompt) || replaces("{first}", question.first_answers.front()) ||
        replaces("{second}", question.second_answers.front())) {
      continue;
    }
    text += pattern[i++];
  }
  json content = json::array();
  for (const std::string* image : {&first_image, &second_image}) {
    content.push_back({{"type", "image_url"}, {"image_url", {{"url", *image}}}});
  }
  content.push_back({{"type", "text"}, {"text", text}});
  json request = {{"model", question.model},
                  {"messages", json::array({{{"role", "user"}, {"content", content}}})},
                  {"max_tokens", question.max_tokens},
                  {"temperature", 0}};
  if (question.top_logprobs > 0) {
    request["logprobs"] = true;
    request["top_logprobs"] = question.top_logprobs;
  }
  return request.dump();
}

Answer read_chat_response(const Question& question, std::string_view body) {
  json response = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (response.is_discarded()) throw Error("the response is not JSON");
  if (!response.is_object() || !response.contains("choices") || !response["choices"].is_array() ||
      response["choices"].empty() || !response["choices"][0].is_object()) {
    throw Error("the response has no choices[0]");
  }
  const json& choice = response["choices"][0];
  if (!choice.contains("message") || !choice["message"].is_object()) {
    throw Error("the response has no choices[0].message");
  }
  const json& message = choice["message"];
  Answer answer;
  if (message.contains("content") && !message["content"].is_null()) {
    if (!message["content"].is_string()) throw Error("choices[0].message.content is not text");
    answer.text = message["content"].get<std::string>();
  }
  if (std::optional<double> p = p_first_from_logprobs(question, choice)) {
    answer.p_first = p;
    answer.via = "logprobs";
    return answer;
  }
  switch (side_of(question, first_word(answer.text))) {
    case 1:
      answer.p_first = 1.0;
      answer.via = "text";
      break;
    case 2:
      answer.p_first = 0.0;
      answer.via = "text";
      break;
    default:
      break;
  }
  return answer;
}

std::string data_url(std::string_view mime, std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string url = "data:" + std::string(mime) + ";base64,";
  url.reserve(url.size() + (bytes.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < bytes.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
    std::uint32_t group = 0;
    for (std::size_t k = 0; k < 3; ++k) {
      group = (group << 8) | (k < n ? static_cast<unsigned char>(bytes[i + k]) : 0u);
    }
    for (std::size_t k = 0; k < 4; ++k) {
      url += k <= n ? kAlphabet[(group >> (18 - 6 * k)) & 63] : '=';
    }
  }
  return url;
}

}  // namespace dedpo::vlm
