#pragma once
// JSON POSTs to a model server (vLLM, llama.cpp's server, a hosted API) through libcurl: http and
// https with the server's certificate always verified (against the system's CA store or a PEM
// bundle), proxies from the environment (http_proxy, https_proxy, no_proxy), HTTP/2 where a TLS
// server offers it, connections kept alive between the requests of one session. One deadline
// covers a whole exchange.
#include <chrono>
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dedpo::vlm {

// A validated "http[s]://host[:port][/path]".
struct ServerUrl {
  std::string root;  // the URL without trailing slashes; requests go to root + "/<endpoint>"
  bool tls = false;  // https
};

// Throws dedpo::Error saying what is wrong: another scheme, no host, a bad port, credentials
// (they would be shown in messages; the key belongs in api_key_env), a query or fragment.
ServerUrl parse_server_url(const std::string& url);

// Chat answers are small; a bigger body is a misbehaving server, not an answer.
constexpr std::size_t kMaxResponseBytes = std::size_t{16} << 20;

// A response body as libcurl hands it over, piece by piece, refused past `limit` bytes (another
// limit than kMaxResponseBytes lets the fuzzer reach it with small inputs).
class ResponseBody {
 public:
  explicit ResponseBody(std::size_t limit = kMaxResponseBytes) : limit_(limit) {}
  // False, and the piece dropped, when it would take the body past the limit.
  bool append(std::string_view piece);
  bool too_large() const { return too_large_; }
  // The body so far; the object is empty again.
  std::string take();

 private:
  std::size_t limit_;
  std::string text_;
  bool too_large_ = false;
};

struct ClientSettings {
  std::string ca_file;  // PEM bundle the server's certificate must chain to; "": the system's
  std::chrono::milliseconds timeout{0};          // the whole exchange
  std::chrono::milliseconds connect_timeout{0};  // TCP and TLS handshake; capped by `timeout`
  std::string authorization;                     // "Authorization" header value; "": none
};

// How far an exchange got.
enum class Stage { connecting, sending, waiting };

// What libcurl reported when an exchange ended.
struct Transfer {
  int code = 0;        // CURLcode; 0: a complete response
  std::string detail;  // libcurl's explanation of `code`
  long status = 0;     // the response's HTTP status
  Stage stage = Stage::connecting;
  bool body_too_large = false;
};

struct HttpResponse {
  int status = 0;
  std::string body;
};

// The request got no usable HTTP response. transient(): a timeout, a failed or dropped
// connection, worth another attempt; otherwise retrying cannot help (a certificate that does not
// verify, a host that does not resolve, an oversized body).
class TransportError : public std::runtime_error {
 public:
  TransportError(const std::string& message, bool transient)
      : std::runtime_error(message), transient_(transient) {}
  bool transient() const { return transient_; }

 private:
  bool transient_;
};

// The response of a complete exchange; throws TransportError for any other outcome.
HttpResponse conclude(const Transfer& transfer, std::string body, const ClientSettings& settings);

// A libcurl easy handle: the requests of one session reuse its connection while the server
// keeps it open. Not thread-safe: one session per worker thread.
class HttpSession {
 public:
  explicit HttpSession(ClientSettings settings);
  ~HttpSession();
  HttpSession(const HttpSession&) = delete;
  HttpSession& operator=(const HttpSession&) = delete;

  // POSTs a JSON `body` to `url`. Any HTTP status is a response; throws TransportError otherwise.
  HttpResponse post_json(const std::string& url, const std::string& body);

 private:
  struct Handle;
  std::unique_ptr<Handle> handle_;
};

}  // namespace dedpo::vlm
