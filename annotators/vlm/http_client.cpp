#include "http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include "dedpo/error.hpp"

namespace dedpo::vlm {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Chat answers are small; a bigger body is a misbehaving server, not an answer.
constexpr std::uint64_t kMaxResponseBytes = 16u << 20;

}  // namespace

HttpUrl parse_http_url(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind("https://", 0) == 0) {
    throw Error("'" + url +
                "': https is not supported (the vlm annotator speaks plain http to a "
                "local server; reach a remote one through an SSH tunnel or a local proxy)");
  }
  if (url.rfind(scheme, 0) != 0) {
    throw Error("'" + url + "': expected an http://host[:port][/path] URL");
  }
  std::string rest = url.substr(scheme.size());
  HttpUrl parsed;
  const std::size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  parsed.path = slash == std::string::npos ? "" : rest.substr(slash);
  while (!parsed.path.empty() && parsed.path.back() == '/') parsed.path.pop_back();
  const std::size_t colon = authority.rfind(':');
  if (colon != std::string::npos && authority.find(']', colon) == std::string::npos) {
    parsed.port = authority.substr(colon + 1);
    authority.resize(colon);
  } else {
    parsed.port = "80";
  }
  if (authority.size() > 1 && authority.front() == '[' && authority.back() == ']') {
    authority = authority.substr(1, authority.size() - 2);  // IPv6 literal
  }
  const bool port_is_number = !parsed.port.empty() && parsed.port.size() <= 5 &&
                              parsed.port.find_first_not_of("0123456789") == std::string::npos;
  if (authority.empty() || !port_is_number) {
    throw Error("'" + url + "': expected an http://host[:port][/path] URL");
  }
  parsed.host = authority;
  return parsed;
}

void limit_response(ResponseParser& parser) { parser.body_limit(kMaxResponseBytes); }

HttpClient::HttpClient(HttpUrl url) : url_(std::move(url)) {
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::error_code failure;
  addresses_ = resolver.resolve(url_.host, url_.port, failure);
  if (failure) {
    throw Error("cannot resolve host '" + url_.host + "': " + failure.message());
  }
}

HttpResponse HttpClient::post_json(const std::string& path, const std::string& body,
                                   const std::string& authorization,
                                   std::chrono::milliseconds timeout) const {
  http::request<http::string_body> request{http::verb::post, url_.path + path, 11};
  const bool ipv6 = url_.host.find(':') != std::string::npos;
  request.set(http::field::host, (ipv6 ? "[" + url_.host + "]" : url_.host) + ":" + url_.port);
  request.set(http::field::content_type, "application/json");
  request.set(http::field::user_agent, "dedpo-vlm");
  if (!authorization.empty()) request.set(http::field::authorization, authorization);
  request.body() = body;
  request.prepare_payload();

  asio::io_context io;
  beast::tcp_stream stream(io);
  beast::flat_buffer buffer;
  ResponseParser parser;
  limit_response(parser);
  beast::error_code failure;
  const char* stage = "connecting";
  // One deadline for connect, write and read: tcp_stream applies it to every pending operation.
  stream.expires_after(timeout);
  stream.async_connect(addresses_, [&](beast::error_code error, const tcp::endpoint&) {
    if (error) {
      failure = error;
      return;
    }
    stage = "sending the request";
    http::async_write(stream, request, [&](beast::error_code error, std::size_t) {
      if (error) {
        failure = error;
        return;
      }
      stage = "waiting for the response";
      http::async_read(stream, buffer, parser,
                       [&](beast::error_code error, std::size_t) { failure = error; });
    });
  });
  io.run();
  if (failure == beast::error::timeout) {
    throw TransportError("timed out after " + std::to_string(timeout.count()) + " ms while " +
                         stage);
  }
  if (failure) {
    throw TransportError("connection failed while " + std::string(stage) + ": " +
                         failure.message());
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  return {static_cast<int>(parser.get().result_int()), std::move(parser.get().body())};
}

}  // namespace dedpo::vlm
