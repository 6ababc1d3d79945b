// What the vlm annotator's HTTP client does itself around libcurl (whose own parsers are fuzzed
// upstream): the server URL of its options, the response body kept within its limit as libcurl
// hands it over, and the outcome made of what libcurl reported. The input, NUL-separated:
//   URL \0 OUTCOME \0 BODY
// OUTCOME: byte 0 the CURLcode, 1-2 the HTTP status (big-endian), 3 the stage, 4 flags (1: libcurl
// saw the body limit, 2: the body limit is byte 5 instead of 16 MiB, for inputs to reach it), 6
// the size of the pieces BODY is handed over in; then libcurl's message.
#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "dedpo/error.hpp"
#include "fuzz_support.hpp"
#include "http_client.hpp"

namespace {

using namespace dedpo::vlm;

// An accepted URL keeps its text, minus trailing slashes, and reads the same again.
void check_url(std::string_view text) {
  const std::string url(text);
  ServerUrl parsed;
  try {
    parsed = parse_server_url(url);
  } catch (const dedpo::Error&) {
    return;
  }
  if (parsed.root.empty() || parsed.root.back() == '/' || url.rfind(parsed.root, 0) != 0) abort();
  if (url.find_first_not_of('/', parsed.root.size()) != std::string::npos) abort();
  if (parsed.tls != (url.rfind("https://", 0) == 0)) abort();
  const ServerUrl again = parse_server_url(parsed.root + "/");
  if (again.root != parsed.root || again.tls != parsed.tls) abort();
}

std::uint8_t byte_at(std::string_view bytes, std::size_t i) {
  return i < bytes.size() ? static_cast<std::uint8_t>(bytes[i]) : 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::vector<std::string_view> parts = dedpo::fuzz::split_input(data, size, 3);
  check_url(parts[0]);

  const std::string_view outcome = parts[1];
  const std::string_view body = parts[2];
  const std::uint8_t flags = byte_at(outcome, 4);
  const std::size_t piece_size = 1 + byte_at(outcome, 6);

  // The body as libcurl's write callback hands it over: kept whole up to the limit, then refused
  // for good.
  const std::size_t limit = (flags & 2) ? byte_at(outcome, 5) : kMaxResponseBytes;
  ResponseBody kept(limit);
  std::size_t accepted = 0;
  for (std::size_t at = 0; at < body.size(); at += piece_size) {
    const std::string_view piece = body.substr(at, piece_size);
    const bool fits = !kept.too_large() && accepted + piece.size() <= limit;
    if (kept.append(piece) != fits || kept.too_large() == fits) abort();
    if (fits) accepted += piece.size();
  }
  const bool too_large = kept.too_large();
  std::string text = kept.take();
  if (kept.too_large() || !kept.take().empty()) abort();  // take() empties it
  if (text != body.substr(0, accepted)) abort();

  Transfer transfer;
  transfer.code = byte_at(outcome, 0) % CURL_LAST;
  transfer.status = byte_at(outcome, 1) * 256 + byte_at(outcome, 2);
  transfer.stage = static_cast<Stage>(byte_at(outcome, 3) % 3);
  transfer.body_too_large = too_large || (flags & 1);
  transfer.detail = std::string(outcome.substr(std::min<std::size_t>(outcome.size(), 7)));
  ClientSettings settings;
  settings.ca_file = "ca.pem";
  settings.timeout = std::chrono::milliseconds(1500);
  settings.connect_timeout = std::chrono::milliseconds(400);
  const std::size_t body_size = text.size();
  try {
    const HttpResponse response = conclude(transfer, std::move(text), settings);
    // Only a complete exchange with a status is a response, and it is the body as received.
    if (transfer.code != CURLE_OK || transfer.body_too_large) abort();
    if (response.status != transfer.status || response.body.size() != body_size) abort();
  } catch (const TransportError& error) {
    if (std::string_view(error.what()).empty()) abort();
    // Certificates and oversized bodies are never worth another attempt; timeouts always are.
    if (error.transient() &&
        (transfer.body_too_large || transfer.code == CURLE_PEER_FAILED_VERIFICATION)) {
      abort();
    }
    if (transfer.code == CURLE_OPERATION_TIMEDOUT && !transfer.body_too_large &&
        !error.transient()) {
      abort();
    }
  }
  return 0;
}
