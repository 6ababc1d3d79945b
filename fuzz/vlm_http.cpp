// The vlm annotator's two readers of server-side text: an HTTP/1.1 response as the server sends
// it, through the client's own parser (body limit included), and the server URL of its options.
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/error.hpp>

#include <cstdint>
#include <string>

#include "dedpo/error.hpp"
#include "http_client.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  dedpo::vlm::ResponseParser parser;
  dedpo::vlm::limit_response(parser);
  parser.eager(true);
  boost::beast::error_code failure;
  std::size_t used = 0;
  while (used < size && !parser.is_done() && !failure) {
    const std::size_t n = parser.put(boost::asio::buffer(data + used, size - used), failure);
    if (failure == boost::beast::http::error::need_more) failure = {};
    if (n == 0 && !failure) break;  // the parser wants more than the input holds
    used += n;
  }
  // End of the connection, as a read does it (put_eof's precondition: some bytes arrived).
  if (!failure && !parser.is_done() && parser.got_some()) parser.put_eof(failure);
  if (!failure && parser.is_done()) {
    const auto& response = parser.get();
    if (response.body().size() > size) abort();  // a body is never made of more than the input
    (void)response.result_int();
  }
  try {
    dedpo::vlm::parse_http_url(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const dedpo::Error&) {
  }
  return 0;
}
