#pragma once
// A minimal HTTP/1.1 client for JSON POSTs to a local model server (vLLM, llama.cpp's server):
// plain http only, one connection per request, one deadline for the whole exchange.
#include <chrono>
#include <stdexcept>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

namespace dedpo::vlm {

// "http://host[:port][/path]"; `path` has no trailing slash.
struct HttpUrl {
  std::string host;
  std::string port;
  std::string path;
};

// Throws dedpo::Error for anything else (https says why it is not supported).
HttpUrl parse_http_url(const std::string& url);

struct HttpResponse {
  int status = 0;
  std::string body;
};

using ResponseParser = boost::beast::http::response_parser<boost::beast::http::string_body>;
// The parser post_json reads a server's response with (it refuses bodies over 16 MiB); fuzz/
// feeds it bytes directly.
void limit_response(ResponseParser& parser);

// The request got no HTTP response: it timed out, or the connection failed or was dropped.
class TransportError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class HttpClient {
 public:
  // Resolves the host once, so that a slow name server cannot escape the request deadline.
  explicit HttpClient(HttpUrl url);

  // POSTs a JSON `body` to url.path + `path`; the connection, the request and the response must
  // all be done within `timeout`. Any HTTP status is a response; throws TransportError otherwise.
  HttpResponse post_json(const std::string& path, const std::string& body,
                         const std::string& authorization, std::chrono::milliseconds timeout) const;

 private:
  HttpUrl url_;
  boost::asio::ip::tcp::resolver::results_type addresses_;
};

}  // namespace dedpo::vlm
