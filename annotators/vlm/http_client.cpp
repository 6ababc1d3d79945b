#include "http_client.hpp"

#include <curl/curl.h>
#include <dlfcn.h>

#include <algorithm>
#include <vector>

#include "dedpo/error.hpp"

namespace dedpo::vlm {
namespace {

// libcurl's process-wide state, made once (curl_global_init is thread-safe from libcurl 7.84 on,
// and counts its calls). libcurl is pinned in memory and never cleaned up: the plugin, and with
// it the libcurl it brought in, is unloaded when its registry goes, while a resolver thread of
// libcurl's may still be waiting on a slow name server; that thread must not wake up in unmapped
// code.
void start_libcurl() {
  static const CURLcode started = [] {
    Dl_info library{};
    if (dladdr(reinterpret_cast<void*>(&curl_easy_init), &library) && library.dli_fname) {
      dlopen(library.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    }
    return curl_global_init(CURL_GLOBAL_DEFAULT);
  }();
  if (started != CURLE_OK) {
    throw Error(std::string("libcurl cannot start: ") + curl_easy_strerror(started));
  }
}

template <typename Value>
void set(CURL* curl, CURLoption option, Value value) {
  if (const CURLcode code = curl_easy_setopt(curl, option, value); code != CURLE_OK) {
    throw Error(std::string("this libcurl refuses an option the vlm annotator needs: ") +
                curl_easy_strerror(code));
  }
}

std::size_t keep_body(char* data, std::size_t size, std::size_t count, void* body) {
  const std::size_t bytes = size * count;
  return static_cast<ResponseBody*>(body)->append({data, bytes}) ? bytes : 0;  // 0 stops curl
}

// Called once the connection is made (or reused), before the request goes out.
int mark_connected(void* stage, char*, char*, int, int) {
  *static_cast<Stage*>(stage) = Stage::sending;
  return CURL_PREREQFUNC_OK;
}

const char* describe(Stage stage) {
  switch (stage) {
    case Stage::connecting:
      return "connecting";
    case Stage::sending:
      return "sending the request";
    case Stage::waiting:
      break;
  }
  return "waiting for the response";
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex_digit(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

ServerUrl parse_server_url(const std::string& url) {
  const auto fail = [&](const std::string& why) {
    throw Error("'" + url + "': " + why + " (expected http[s]://host[:port][/path])");
  };
  ServerUrl parsed;
  std::size_t scheme_end = 0;
  if (url.rfind("https://", 0) == 0) {
    parsed.tls = true;
    scheme_end = 8;
  } else if (url.rfind("http://", 0) == 0) {
    scheme_end = 7;
  } else {
    fail("not an http:// or https:// URL");
  }
  for (const char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) fail("a space or control character");
    if (c == '?' || c == '#') {
      fail("a query or fragment (requests go to <base_url>/chat/completions)");
    }
  }
  const std::size_t slash = url.find('/', scheme_end);
  const std::string authority =
      url.substr(scheme_end, slash == std::string::npos ? slash : slash - scheme_end);
  if (authority.find('@') != std::string::npos) {
    fail(
        "credentials in the URL (they would be shown in messages; name the environment variable "
        "holding the key in api_key_env)");
  }
  std::string host = authority;
  std::string port;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {  // an IPv6 literal
    const std::size_t close = authority.find(']');
    if (close == std::string::npos) fail("an unclosed IPv6 address");
    host = authority.substr(1, close - 1);
    if (!std::all_of(host.begin(), host.end(),
                     [](char c) { return is_hex_digit(c) || c == ':' || c == '.'; })) {
      fail("an IPv6 address with other characters than hex digits, ':' and '.'");
    }
    const std::string after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') fail("text after the IPv6 address");
    has_port = !after.empty();
    port = has_port ? after.substr(1) : "";
  } else if (const std::size_t colon = authority.find(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
    has_port = true;
  }
  if (host.empty()) fail("no host");
  if (authority.front() != '[' && host.find_first_of("[]") != std::string::npos) {
    fail("brackets outside an IPv6 address");
  }
  if (has_port) {
    const bool digits =
        !port.empty() && port.size() <= 5 && std::all_of(port.begin(), port.end(), is_digit);
    if (!digits || std::stol(port) < 1 || std::stol(port) > 65535) {
      fail("port '" + port + "' is not a number from 1 to 65535");
    }
  }
  parsed.root = url;
  while (parsed.root.back() == '/') parsed.root.pop_back();
  return parsed;
}

bool ResponseBody::append(std::string_view piece) {
  if (too_large_ || piece.size() > limit_ - text_.size()) {
    too_large_ = true;
    return false;
  }
  text_.append(piece);
  return true;
}

std::string ResponseBody::take() {
  std::string text = std::move(text_);
  text_.clear();
  too_large_ = false;
  return text;
}

HttpResponse conclude(const Transfer& transfer, std::string body, const ClientSettings& settings) {
  if (transfer.body_too_large || transfer.code == CURLE_FILESIZE_EXCEEDED) {
    throw TransportError("the response body is over " + std::to_string(kMaxResponseBytes >> 20) +
                             " MiB, far more than a chat completion",
                         false);
  }
  const std::string stage = describe(transfer.stage);
  switch (transfer.code) {
    case CURLE_OK:
      if (transfer.status < 100 || transfer.status > 999) {
        throw TransportError("the reply has no HTTP status", true);
      }
      return {static_cast<int>(transfer.status), std::move(body)};
    case CURLE_OPERATION_TIMEDOUT: {
      const std::chrono::milliseconds limit =
          transfer.stage == Stage::connecting ? std::min(settings.connect_timeout, settings.timeout)
                                              : settings.timeout;
      throw TransportError(
          "timed out after " + std::to_string(limit.count()) + " ms while " + stage, true);
    }
    // The server went away, is not there yet, or garbled the exchange: worth another attempt.
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      throw TransportError("connection failed while " + stage + ": " + transfer.detail, true);
    // A certificate that does not verify now will not verify in a second either.
    case CURLE_PEER_FAILED_VERIFICATION:
      throw TransportError(
          "certificate verification failed: " + transfer.detail +
              " (the server's certificate is checked against " +
              (settings.ca_file.empty() ? std::string("the system's CA store; a server with a "
                                                      "private CA needs its CA's PEM bundle in "
                                                      "ca_file")
                                        : "ca_file '" + settings.ca_file + "'") +
              ")",
          false);
    default:  // no such host, an unusable CA bundle, a protocol libcurl was built without, ...
      throw TransportError("request failed while " + stage + ": " + transfer.detail, false);
  }
}

struct HttpSession::Handle {
  CURL* curl = nullptr;
  curl_slist* headers = nullptr;
  ClientSettings settings;
  ResponseBody body;
  Stage stage = Stage::connecting;
  char error[CURL_ERROR_SIZE] = {};

  ~Handle() {
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
  }
};

HttpSession::HttpSession(ClientSettings settings) : handle_(std::make_unique<Handle>()) {
  start_libcurl();
  Handle& h = *handle_;
  h.settings = std::move(settings);
  h.curl = curl_easy_init();
  if (!h.curl) throw Error("libcurl cannot make a handle");
  // "Expect:" turns off curl's wait for a "100 Continue" before sending a body over 1 KiB.
  std::vector<std::string> headers = {"Content-Type: application/json", "Expect:"};
  if (!h.settings.authorization.empty()) {
    headers.push_back("Authorization: " + h.settings.authorization);
  }
  for (const std::string& header : headers) {
    curl_slist* longer = curl_slist_append(h.headers, header.c_str());
    if (!longer) throw Error("libcurl cannot hold the request headers");
    h.headers = longer;
  }
  const auto milliseconds = [](std::chrono::milliseconds duration) {
    return static_cast<long>(duration.count());
  };
  CURL* curl = h.curl;
  set(curl, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: the workers are threads
  set(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  set(curl, CURLOPT_USERAGENT, "dedpo-vlm");
  set(curl, CURLOPT_HTTPHEADER, h.headers);
  set(curl, CURLOPT_POST, 1L);
  set(curl, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  set(curl, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2));
  set(curl, CURLOPT_SSL_VERIFYPEER, 1L);
  set(curl, CURLOPT_SSL_VERIFYHOST, 2L);
  if (!h.settings.ca_file.empty()) {
    // The bundle alone: without clearing CAPATH the system's CAs would be trusted as well.
    set(curl, CURLOPT_CAINFO, h.settings.ca_file.c_str());
    set(curl, CURLOPT_CAPATH, static_cast<const char*>(nullptr));
  }
  set(curl, CURLOPT_TIMEOUT_MS, milliseconds(h.settings.timeout));
  set(curl, CURLOPT_CONNECTTIMEOUT_MS,
      milliseconds(std::min(h.settings.connect_timeout, h.settings.timeout)));
  set(curl, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(kMaxResponseBytes));
  set(curl, CURLOPT_WRITEFUNCTION, keep_body);
  set(curl, CURLOPT_WRITEDATA, static_cast<void*>(&h.body));
  set(curl, CURLOPT_PREREQFUNCTION, mark_connected);
  set(curl, CURLOPT_PREREQDATA, static_cast<void*>(&h.stage));
  set(curl, CURLOPT_ERRORBUFFER, h.error);
  // No CURLOPT_PROXY: libcurl then takes http_proxy, https_proxy and no_proxy from the
  // environment for each request.
}

HttpSession::~HttpSession() = default;

HttpResponse HttpSession::post_json(const std::string& url, const std::string& body) {
  Handle& h = *handle_;
  h.stage = Stage::connecting;
  h.error[0] = '\0';
  set(h.curl, CURLOPT_URL, url.c_str());
  set(h.curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  set(h.curl, CURLOPT_POSTFIELDS, body.data());
  const CURLcode code = curl_easy_perform(h.curl);
  Transfer transfer;
  transfer.code = code;
  transfer.detail = h.error[0] ? h.error : curl_easy_strerror(code);
  curl_easy_getinfo(h.curl, CURLINFO_RESPONSE_CODE, &transfer.status);
  curl_off_t sent = 0;
  curl_easy_getinfo(h.curl, CURLINFO_SIZE_UPLOAD_T, &sent);
  transfer.stage = h.stage == Stage::sending && sent >= static_cast<curl_off_t>(body.size())
                       ? Stage::waiting
                       : h.stage;
  transfer.body_too_large = h.body.too_large();
  return conclude(transfer, h.body.take(), h.settings);
}

}  // namespace dedpo::vlm
