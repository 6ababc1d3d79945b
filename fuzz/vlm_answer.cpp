// The JSON body of a chat-completions answer, read as P(first image preferred) for a question
// that accepts A/1 and B/2 and asks for log-probabilities.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "chat_protocol.hpp"
#include "dedpo/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const dedpo::vlm::Question question{
      "model", "{prompt} {first} {second}", {"A", "1"}, {"B", "2"}, 1, 5};
  try {
    const dedpo::vlm::Answer answer = dedpo::vlm::read_chat_response(
        question, std::string_view(reinterpret_cast<const char*>(data), size));
    // A probability, or nothing: never NaN or out of [0, 1].
    if (answer.p_first && !(*answer.p_first >= 0.0 && *answer.p_first <= 1.0)) abort();
  } catch (const dedpo::Error&) {
  }
  return 0;
}
