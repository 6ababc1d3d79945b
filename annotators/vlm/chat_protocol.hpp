#pragma once
// The OpenAI chat-completions exchange that asks which of two images is better: the request
// body, and the answer read back as P(first image preferred).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dedpo::vlm {

struct Question {
  std::string model;
  std::string prompt_template;              // placeholders {prompt}, {first}, {second}
  std::vector<std::string> first_answers;   // tokens that mean "the first image", e.g. A, 1
  std::vector<std::string> second_answers;  // e.g. B, 2
  std::int64_t max_tokens = 1;
  std::int64_t top_logprobs = 0;  // 0: do not ask for log-probabilities
};

// The placeholders of `prompt_template` that are not {prompt}, {first} or {second}.
std::vector<std::string> unknown_placeholders(const std::string& prompt_template);

// `image` data URLs ("data:image/png;base64,..."), the first image shown first.
std::string chat_request(const Question& question, const std::string& prompt,
                         const std::string& first_image, const std::string& second_image);

struct Answer {
  std::string text;               // the reply's text as the server sent it
  std::optional<double> p_first;  // P(first image preferred); empty: the answer is unclear
  std::string via;                // "logprobs", "text", or "" when unclear
};

// Reads a 2xx response body. Throws dedpo::Error when it is not a chat completion.
Answer read_chat_response(const Question& question, std::string_view body);

// "data:<mime>;base64,<bytes in base64>".
std::string data_url(std::string_view mime, std::string_view bytes);

}  // namespace dedpo::vlm
