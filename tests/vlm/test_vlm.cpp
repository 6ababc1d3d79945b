// The `vlm` annotator against a chat-completions server run by the test on 127.0.0.1, over http
// and over https with certificates made by the test: log-prob and text answers, both image
// orders, retries (5xx, dropped connections, timeouts), errors (4xx, garbage, unclear answers,
// certificates), the API key, keep-alive, proxies, the journal that makes annotation resumable,
// concurrency.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core/detail/base64.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "dedpo/annotator.hpp"
#include "dedpo/image.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/services.hpp"
#include "no_services.hpp"
#include "test_support.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;
using nlohmann::json;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::Not;

// ---------------------------------------------------------------------------------------------
// The server

// Which image a data URL shows: the test's images (test_image()) encode their pair in red and
// green, their side in blue.
struct ImageId {
  std::int64_t pair;
  bool is_a;
};

ImageId identify(const std::string& url) {
  const std::string prefix = "base64,";
  const std::string encoded = url.substr(url.find(prefix) + prefix.size());
  std::string bytes(beast::detail::base64::decoded_size(encoded.size()), '\0');
  bytes.resize(beast::detail::base64::decode(bytes.data(), encoded.data(), encoded.size()).first);
  at::Tensor image = dedpo::decode_image(bytes, "request image");
  const at::Tensor pixel = image[0][0].to(at::kLong);
  return {pixel[0].item<std::int64_t>() + 256 * pixel[1].item<std::int64_t>(),
          pixel[2].item<std::int64_t>() == 0};
}

struct Question {
  std::string target;
  std::string authorization;
  json body;
  ImageId first, second;  // the images in the order shown
  std::string text;       // the question's text
};

struct Reply {
  enum Kind { answer, hang, drop } kind = answer;
  int status = 200;
  std::string body;
  bool chunked = false;  // sent without a Content-Length: its size shows only as it arrives
};

Reply http_reply(int status, std::string body) { return {Reply::answer, status, std::move(body)}; }
Reply no_answer() { return {Reply::hang, 0, ""}; }
Reply dropped_connection() { return {Reply::drop, 0, ""}; }

// Answers with the given text and, when `p_first` is set, log-probabilities that put 90% of the
// mass on the answer tokens "A" / "B" (P(A) = p_first) and 10% on another token.
Reply chat_reply(const std::string& text, std::optional<double> p_first = std::nullopt) {
  json choice = {{"index", 0},
                 {"message", {{"role", "assistant"}, {"content", text}}},
                 {"finish_reason", "length"}};
  if (p_first) {
    const std::map<std::string, double> logprobs = {{"A", std::log(0.9 * *p_first)},
                                                    {"B", std::log(0.9 * (1 - *p_first))},
                                                    {"Sure", std::log(0.1)}};
    json top = json::array();
    for (const auto& [token, logprob] : logprobs) {
      top.push_back({{"token", token}, {"logprob", logprob}});
    }
    choice["logprobs"] = {
        {"content",
         json::array({{{"token", text}, {"logprob", logprobs.at(text)}, {"top_logprobs", top}}})}};
  } else {
    choice["logprobs"] = nullptr;
  }
  return http_reply(
      200, json{{"id", "chatcmpl-1"}, {"object", "chat.completion"}, {"choices", {choice}}}.dump());
}

// The number of the request (1, 2, ...) and what it asked.
using Script = std::function<Reply(int number, const Question& question)>;

// Certificates made for this test process with OpenSSL: a CA, a certificate for 127.0.0.1 signed
// by it, and an unrelated CA that signed nothing here.
struct TestPki {
  dedpo::test::TempDir dir;
  fs::path ca = dir / "ca.pem";
  fs::path other_ca = dir / "other_ca.pem";
  fs::path server_certificate = dir / "server.pem";
  fs::path server_key = dir / "server.key";
};

using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using Certificate = std::unique_ptr<X509, decltype(&X509_free)>;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what + " failed");
}

Key new_key() {
  Key key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  check(key != nullptr, "EVP_EC_gen");
  return key;
}

// A certificate for `key` named `name`, signed by `issuer` (self-signed when null), a CA or a
// server certificate for 127.0.0.1.
Certificate issue(const std::string& name, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key) {
  static long serial = 1;
  Certificate certificate(X509_new(), X509_free);
  X509* cert = certificate.get();
  check(X509_set_version(cert, 2) == 1, "X509_set_version");
  check(ASN1_INTEGER_set(X509_get_serialNumber(cert), serial++) == 1, "ASN1_INTEGER_set");
  check(X509_gmtime_adj(X509_getm_notBefore(cert), -3600) != nullptr, "X509_gmtime_adj");
  check(X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600) != nullptr, "X509_gmtime_adj");
  check(X509_set_pubkey(cert, key) == 1, "X509_set_pubkey");
  X509_NAME* subject = X509_get_subject_name(cert);
  check(X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>(name.c_str()), -1, -1,
                                   0) == 1,
        "X509_NAME_add_entry_by_txt");
  check(X509_set_issuer_name(cert, issuer ? X509_get_subject_name(issuer) : subject) == 1,
        "X509_set_issuer_name");
  const std::vector<std::pair<int, const char*>> extensions =
      issuer
          ? std::vector<std::pair<int, const char*>>{{NID_basic_constraints, "critical,CA:FALSE"},
                                                     {NID_key_usage, "critical,digitalSignature"},
                                                     {NID_ext_key_usage, "serverAuth"},
                                                     {NID_subject_alt_name, "IP:127.0.0.1"}}
          : std::vector<std::pair<int, const char*>>{{NID_basic_constraints, "critical,CA:TRUE"},
                                                     {NID_key_usage, "critical,keyCertSign"},
                                                     {NID_subject_key_identifier, "hash"}};
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer ? issuer : cert, cert, nullptr, nullptr, 0);
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, &context, nid, value);
    check(extension != nullptr, "X509V3_EXT_conf_nid");
    check(X509_add_ext(cert, extension, -1) == 1, "X509_add_ext");
    X509_EXTENSION_free(extension);
  }
  check(X509_sign(cert, issuer_key ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return certificate;
}

void write_pem(const fs::path& file, X509* certificate, EVP_PKEY* key = nullptr) {
  std::unique_ptr<FILE, decltype(&std::fclose)> out(std::fopen(file.c_str(), "w"), std::fclose);
  check(out != nullptr, "fopen");
  check(certificate
            ? PEM_write_X509(out.get(), certificate) == 1
            : PEM_write_PrivateKey(out.get(), key, nullptr, nullptr, 0, nullptr, nullptr) == 1,
        "PEM_write");
}

const TestPki& test_pki() {
  static const std::unique_ptr<TestPki> pki = [] {
    auto made = std::make_unique<TestPki>();
    const Key ca_key = new_key(), other_key = new_key(), server_key = new_key();
    const Certificate ca = issue("dedpo test CA", ca_key.get(), nullptr, nullptr);
    write_pem(made->ca, ca.get());
    write_pem(made->other_ca, issue("dedpo unrelated CA", other_key.get(), nullptr, nullptr).get());
    write_pem(made->server_certificate,
              issue("127.0.0.1", server_key.get(), ca.get(), ca_key.get()).get());
    write_pem(made->server_key, nullptr, server_key.get());
    return made;
  }();
  return *pki;
}

enum class Scheme { http, https };

// A chat-completions server on 127.0.0.1, over http or https (test_pki()'s certificate), one
// thread per connection, replying as `script` says. Connections are kept alive until the client
// closes them, a reply drops them, or the server goes away.
class ChatServer {
 public:
  ChatServer(Scheme scheme, Script script)
      : script_(std::move(script)),
        acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    if (scheme == Scheme::https) {
      tls_.emplace(asio::ssl::context::tls_server);
      tls_->use_certificate_chain_file(test_pki().server_certificate.string());
      tls_->use_private_key_file(test_pki().server_key.string(), asio::ssl::context::pem);
      SSL_CTX_set_alpn_select_cb(tls_->native_handle(), &ChatServer::choose_protocol, this);
    }
    accept_thread_ = std::thread([this] { accept_loop(); });
  }

  ~ChatServer() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      // Wakes the threads reading from idle kept-alive connections.
      for (int socket : open_sockets_) ::shutdown(socket, SHUT_RDWR);
    }
    stop_.notify_all();
    // Wakes the blocking accept with a connection of our own.
    asio::io_context io;
    tcp::socket wake(io);
    beast::error_code ignored;
    wake.connect(acceptor_.local_endpoint(), ignored);
    accept_thread_.join();
    for (std::thread& connection : connections_) connection.join();
  }

  std::string base_url() const {
    return (tls_ ? "https" : "http") + std::string("://127.0.0.1:") +
           std::to_string(acceptor_.local_endpoint().port()) + "/v1";
  }
  bool is_https() const { return tls_.has_value(); }
  int requests() const { return requests_; }
  int connections() const { return connections_accepted_; }
  int max_in_flight() const { return max_in_flight_; }
  std::vector<Question> questions() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return questions_;
  }
  // The application protocols (ALPN) the last TLS client offered, e.g. "h2", "http/1.1".
  std::vector<std::string> protocols_offered() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return protocols_offered_;
  }
  // Replies take at least this long (overlapping requests for the concurrency test).
  void set_delay(std::chrono::milliseconds delay) { delay_ = delay; }

 private:
  // Records the client's ALPN offer and picks HTTP/1.1: this server speaks nothing else.
  static int choose_protocol(SSL*, const unsigned char** chosen, unsigned char* chosen_size,
                             const unsigned char* offer, unsigned int offer_size, void* self) {
    auto& server = *static_cast<ChatServer*>(self);
    std::lock_guard<std::mutex> lock(server.mutex_);
    server.protocols_offered_.clear();
    int result = SSL_TLSEXT_ERR_NOACK;
    for (unsigned int at = 0; at < offer_size && at + 1 + offer[at] <= offer_size;
         at += 1 + offer[at]) {
      const std::string protocol(reinterpret_cast<const char*>(offer + at + 1), offer[at]);
      server.protocols_offered_.push_back(protocol);
      if (protocol == "http/1.1") {
        *chosen = offer + at + 1;
        *chosen_size = offer[at];
        result = SSL_TLSEXT_ERR_OK;
      }
    }
    return result;
  }

  void accept_loop() {
    for (;;) {
      tcp::socket socket(io_);
      beast::error_code error;
      acceptor_.accept(socket, error);
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      if (error) continue;
      ++connections_accepted_;
      open_sockets_.insert(socket.native_handle());
      connections_.emplace_back([this, s = std::move(socket)]() mutable { serve(std::move(s)); });
    }
  }

  void serve(tcp::socket socket) {
    if (!tls_) {
      serve_requests(socket);
    } else {
      asio::ssl::stream<tcp::socket&> stream(socket, *tls_);
      beast::error_code error;
      stream.handshake(asio::ssl::stream_base::server, error);
      if (!error) serve_requests(stream);  // else e.g. a client that does not trust the CA
    }
    std::lock_guard<std::mutex> lock(mutex_);
    open_sockets_.erase(socket.native_handle());
  }

  template <typename Stream>
  void serve_requests(Stream& stream) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> request;
      beast::error_code error;
      http::read(stream, buffer, request, error);
      if (error) return;  // the client closed the connection
      const int number = ++requests_;
      const int in_flight = ++in_flight_;
      for (int seen = max_in_flight_;
           in_flight > seen && !max_in_flight_.compare_exchange_weak(seen, in_flight);) {
      }
      Question question;
      question.target = std::string(request.target());
      question.authorization = std::string(request[http::field::authorization]);
      question.body = json::parse(request.body());
      const json& content = question.body["messages"][0]["content"];
      question.first = identify(content[0]["image_url"]["url"].get<std::string>());
      question.second = identify(content[1]["image_url"]["url"].get<std::string>());
      question.text = content[2]["text"].get<std::string>();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        questions_.push_back(question);
      }
      const Reply reply = script_(number, question);
      std::unique_lock<std::mutex> lock(mutex_);
      // A hanging server answers nothing until the test is over.
      stop_.wait_for(lock,
                     reply.kind == Reply::hang ? std::chrono::milliseconds(10000) : delay_.load(),
                     [&] { return stopping_; });
      lock.unlock();
      --in_flight_;
      if (reply.kind != Reply::answer) return;  // dropped, or hung: the connection is closed
      http::response<http::string_body> response{static_cast<http::status>(reply.status), 11};
      response.set(http::field::content_type, "application/json");
      response.keep_alive(request.keep_alive());
      response.body() = reply.body;
      if (reply.chunked) {
        response.chunked(true);
      } else {
        response.prepare_payload();
      }
      http::write(stream, response, error);
      if (error || !request.keep_alive()) return;
    }
  }

  Script script_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::optional<asio::ssl::context> tls_;
  std::thread accept_thread_;
  std::vector<std::thread> connections_;
  mutable std::mutex mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::set<int> open_sockets_;
  std::vector<Question> questions_;
  std::vector<std::string> protocols_offered_;
  std::atomic<int> requests_{0}, in_flight_{0}, max_in_flight_{0}, connections_accepted_{0};
  std::atomic<std::chrono::milliseconds> delay_{std::chrono::milliseconds(0)};
};

// The model's true preference for pair i: P(A preferred) = (i + 1) / (n + 1), reported without
// position bias through log-probabilities.
double true_preference(std::int64_t pair, std::int64_t n) {
  return static_cast<double>(pair + 1) / static_cast<double>(n + 1);
}

Script judge_fairly(std::int64_t n) {
  return [n](int, const Question& q) {
    const double p_a = true_preference(q.first.pair, n);
    const double p_first = q.first.is_a ? p_a : 1 - p_a;
    return chat_reply(p_first >= 0.5 ? "A" : "B", p_first);
  };
}

// ---------------------------------------------------------------------------------------------
// The annotator's surroundings

// Backbone "samples" are rows (pair, side); decoded, they are the test's 4x4 images.
at::Tensor test_image(std::int64_t pair, bool is_a) {
  at::Tensor image = at::zeros({4, 4, 3}, at::kByte);
  image.select(2, 0).fill_(pair % 256);
  image.select(2, 1).fill_(pair / 256);
  image.select(2, 2).fill_(is_a ? 0 : 200);
  return image;
}

class ImageBackbone final : public dedpo::Backbone {
 public:
  void prepare(const dedpo::BackboneContext&) override {}
  torch::nn::Module& model() override { return model_; }
  at::Tensor encode_prompts(const std::vector<std::string>&) override { return {}; }
  dedpo::DenoisingErrors denoising_errors(const dedpo::PairBatch&, at::Generator&, bool) override {
    return {};
  }
  at::Tensor denoising_loss(const at::Tensor&, const at::Tensor&, at::Generator&) override {
    return {};
  }
  at::Tensor sample(const at::Tensor&, at::Generator&, bool) override { return {}; }
  void save_weights(const fs::path&) const override {}

  at::Tensor decode_samples(const at::Tensor& samples) const override {
    ++decode_calls;
    std::vector<at::Tensor> images;
    for (std::int64_t i = 0; i < samples.size(0); ++i) {
      images.push_back(
          test_image(samples[i][0].item<std::int64_t>(), samples[i][1].item<std::int64_t>() == 0));
    }
    return at::stack(images);
  }

  mutable int decode_calls = 0;

 private:
  torch::nn::Module model_;
};

using dedpo::test::NoServices;

class VlmAnnotatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The servers are local: a proxy from the machine's environment is not asked for them.
    ::setenv("no_proxy", "127.0.0.1", 1);
    ASSERT_TRUE(registry_.load_library(DEDPO_VLM_PLUGIN))
        << (registry_.problems().empty() ? "" : registry_.problems().front().message);
  }

  // n pairs, prompt i % 3; A of pair i is test_image(i, true), B test_image(i, false), read from
  // PNG files when `with_files`.
  dedpo::PairDataset make_data(std::int64_t n, bool with_files = true) {
    dedpo::PairDataset data;
    data.prompts = {"a red fox", "a blue car", "a green tree"};
    data.prompt_index = at::arange(n, at::kLong).remainder(3);
    data.a = at::stack({at::arange(n, at::kFloat), at::zeros({n}, at::kFloat)}, 1);
    data.b = at::stack({at::arange(n, at::kFloat), at::ones({n}, at::kFloat)}, 1);
    data.human_label = at::full({n}, NAN, at::kFloat);
    data.fingerprint = "vlm-test-" + std::to_string(n);
    if (with_files) {
      for (std::int64_t i = 0; i < n; ++i) {
        data.a_files.push_back(dir_ / "images" / ("a" + std::to_string(i) + ".png"));
        data.b_files.push_back(dir_ / "images" / ("b" + std::to_string(i) + ".png"));
        dedpo::write_png(data.a_files.back(), test_image(i, true));
        dedpo::write_png(data.b_files.back(), test_image(i, false));
      }
    }
    return data;
  }

  // Test-sized timeouts and back-off unless `options` (TOML lines) set them; an https server's
  // CA unless they name another.
  std::shared_ptr<dedpo::Annotator> make(const ChatServer& server,
                                         const std::string& options = "") {
    std::string toml =
        options + "\nmodel = \"test-vl\"\nbase_url = \"" + server.base_url() + "\"\n";
    std::vector<std::string> defaults = {"timeout = 0.2", "retries = 2", "backoff = 0.005"};
    if (server.is_https()) defaults.push_back("ca_file = \"" + test_pki().ca.string() + "\"");
    for (const std::string& setting : defaults) {
      const std::string key = setting.substr(0, setting.find(' '));
      if (("\n" + options).find("\n" + key + " =") == std::string::npos) toml += setting + "\n";
    }
    return registry_.create<dedpo::Annotator>("vlm", toml);
  }

  std::vector<float> annotate(dedpo::Annotator& annotator, const dedpo::PairDataset& data) {
    const at::Tensor labelled = at::zeros({data.size()}, at::kBool);
    dedpo::AnnotatorContext context{data, labelled, backbone_, services_, 1, dir_ / "cache"};
    at::Tensor prob = annotator.annotate(context);
    EXPECT_EQ(prob.scalar_type(), at::kFloat);
    return {prob.data_ptr<float>(), prob.data_ptr<float>() + prob.numel()};
  }

  // The message of the error annotate() throws; "" when it does not throw.
  std::string annotate_error(dedpo::Annotator& annotator, const dedpo::PairDataset& data) {
    try {
      annotate(annotator, data);
    } catch (const dedpo::Error& error) {
      return error.what();
    }
    return "";
  }

  fs::path journal_file() const {
    for (const auto& entry : fs::directory_iterator(dir_ / "cache")) {
      if (entry.path().extension() == ".jsonl") return entry.path();
    }
    return {};
  }

  dedpo::test::TempDir dir_;
  dedpo::PluginRegistry registry_;
  ImageBackbone backbone_;
  NoServices services_;
};

void expect_true_preferences(const std::vector<float>& prob) {
  const auto n = static_cast<std::int64_t>(prob.size());
  for (std::int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(prob[static_cast<std::size_t>(i)], true_preference(i, n), 1e-5) << "pair " << i;
  }
}

// The tests that hold for any server run against one over http and one over https.
class VlmOverHttpAndHttps : public VlmAnnotatorTest, public ::testing::WithParamInterface<Scheme> {
 protected:
  Scheme scheme() const { return GetParam(); }
};

INSTANTIATE_TEST_SUITE_P(, VlmOverHttpAndHttps, ::testing::Values(Scheme::http, Scheme::https),
                         [](const ::testing::TestParamInfo<Scheme>& info) {
                           return info.param == Scheme::https ? "https" : "http";
                         });

// ---------------------------------------------------------------------------------------------
// Answers

TEST_P(VlmOverHttpAndHttps, LogprobsBecomeASoftmaxOverTheAnswerTokens) {
  ChatServer server(scheme(), judge_fairly(4));
  auto annotator = make(server, "both_orders = false");
  expect_true_preferences(annotate(*annotator, make_data(4)));

  std::vector<Question> questions = server.questions();
  ASSERT_EQ(questions.size(), 4u);
  for (const Question& q : questions) {
    EXPECT_EQ(q.target, "/v1/chat/completions");
    EXPECT_EQ(q.body["model"], "test-vl");
    EXPECT_EQ(q.body["max_tokens"], 1);
    EXPECT_EQ(q.body["temperature"], 0);
    EXPECT_EQ(q.body["logprobs"], true);
    EXPECT_EQ(q.body["top_logprobs"], 5);
    EXPECT_TRUE(q.first.is_a);
    EXPECT_FALSE(q.second.is_a);
    EXPECT_EQ(q.first.pair, q.second.pair);
    const char* prompts[] = {"a red fox", "a blue car", "a green tree"};
    EXPECT_THAT(q.text, HasSubstr(std::string("\"") + prompts[q.first.pair % 3] + "\""));
    EXPECT_THAT(q.text, HasSubstr("Answer A for the first image or B for the second"));
  }
}

TEST_P(VlmOverHttpAndHttps, BothOrdersCancelAPositionBias) {
  // A model that always picks the image shown first knows nothing: ĝ = 0.5.
  ChatServer server(scheme(), [](int, const Question&) { return chat_reply("A"); });
  auto annotator = make(server, "top_logprobs = 0");
  for (float p : annotate(*annotator, make_data(3))) EXPECT_FLOAT_EQ(p, 0.5f);

  std::map<std::int64_t, std::vector<bool>> first_is_a;  // per pair, in the order asked
  for (const Question& q : server.questions()) {
    EXPECT_EQ(q.first.pair, q.second.pair);
    EXPECT_NE(q.first.is_a, q.second.is_a);
    first_is_a[q.first.pair].push_back(q.first.is_a);
  }
  ASSERT_EQ(first_is_a.size(), 3u);
  for (const auto& [pair, orders] : first_is_a) {
    EXPECT_EQ(orders.size(), 2u) << "pair " << pair;
    EXPECT_EQ(std::count(orders.begin(), orders.end(), true), 1) << "pair " << pair;
  }

  // Asked once each, the same model's bias goes straight into ĝ.
  ChatServer biased(scheme(), [](int, const Question&) { return chat_reply("A"); });
  auto once = make(biased, "top_logprobs = 0\nboth_orders = false\nquestion = \"{prompt}?\"");
  for (float p : annotate(*once, make_data(3))) EXPECT_FLOAT_EQ(p, 1.0f);
  // Both orders with an unbiased model recover its preference exactly.
  ChatServer fair(scheme(), judge_fairly(5));
  expect_true_preferences(annotate(*make(fair, "max_tokens = 2"), make_data(5)));
}

TEST_P(VlmOverHttpAndHttps, TextAnswersAreReadWithoutLogprobs) {
  const std::map<std::int64_t, std::string> answers = {
      {0, "A"}, {1, " b."}, {2, "**2**"}, {3, "1) The first image"}};
  ChatServer server(scheme(),
                    [&](int, const Question& q) { return chat_reply(answers.at(q.first.pair)); });
  auto annotator = make(server, "top_logprobs = 0\nboth_orders = false");
  EXPECT_EQ(annotate(*annotator, make_data(4)), (std::vector<float>{1, 0, 0, 1}));
  for (const Question& q : server.questions()) EXPECT_FALSE(q.body.contains("logprobs"));
}

TEST_P(VlmOverHttpAndHttps, LogprobsWithoutAnswerTokensFallBackToTheText) {
  ChatServer server(scheme(), [](int, const Question&) {
    Reply reply = chat_reply("B", 0.9);
    json body = json::parse(reply.body);
    body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] =
        json::array({{{"token", "Sure"}, {"logprob", -0.5}}});
    body["choices"][0]["logprobs"]["content"][0]["token"] = "Sure";
    reply.body = body.dump();
    return reply;
  });
  auto annotator = make(server, "both_orders = false");
  EXPECT_EQ(annotate(*annotator, make_data(2)), (std::vector<float>{0, 0}));
}

TEST_P(VlmOverHttpAndHttps, AnUnclearAnswerIsAnErrorNamingThePairAndTheAnswer) {
  ChatServer server(scheme(), [](int, const Question& q) {
    return chat_reply(q.first.pair == 2 ? "Image A" : "A");
  });
  auto annotator = make(server, "top_logprobs = 0\nboth_orders = false\nconcurrency = 1");
  const std::string error = annotate_error(*annotator, make_data(4));
  EXPECT_THAT(error, HasSubstr("pair 2 (prompt 'a green tree'"));
  EXPECT_THAT(error, HasSubstr("a2.png"));
  EXPECT_THAT(error, HasSubstr("'Image A' names neither image"));
  EXPECT_THAT(error, HasSubstr("unclear = 0.5"));

  // The answer is journaled: asked again, the run fails at once without a request.
  ChatServer again(scheme(), [](int, const Question&) { return chat_reply("A"); });
  const std::string repeated =
      annotate_error(*make(again, "top_logprobs = 0\nboth_orders = false"), make_data(4));
  EXPECT_THAT(repeated, HasSubstr("'Image A' names neither image"));
  EXPECT_THAT(repeated, HasSubstr("recorded in"));
  EXPECT_EQ(again.requests(), 0);
}

TEST_P(VlmOverHttpAndHttps, UnclearAnswersGetTheConfiguredValueAndAreNotAskedAgain) {
  ChatServer server(scheme(), [](int, const Question& q) {
    if (q.first.pair == 1) return chat_reply("Both are fine");
    if (q.first.pair == 2) return http_reply(400, R"({"error": "image too small"})");
    return chat_reply("A");
  });
  const std::string options = "top_logprobs = 0\nboth_orders = false\nunclear = 0.25";
  EXPECT_EQ(annotate(*make(server, options), make_data(3)), (std::vector<float>{1, 0.25, 0.25}));
  // Unclear answers are journaled (p_first null); refused requests are not, so they are asked
  // again next time.
  EXPECT_EQ(annotate(*make(server, options), make_data(3)), (std::vector<float>{1, 0.25, 0.25}));
  EXPECT_EQ(server.requests(), 4);
  EXPECT_THAT(dedpo::test::read_file(journal_file()),
              HasSubstr(R"("answer":"Both are fine","order":"ab","p_first":null)"));
}

// ---------------------------------------------------------------------------------------------
// Failures of the server

TEST_P(VlmOverHttpAndHttps, ServerErrorsAreRetried) {
  const Script fair = judge_fairly(3);
  ChatServer server(scheme(), [&](int number, const Question& q) {
    if (number == 1) return http_reply(500, "internal error");
    if (number == 2) return http_reply(503, "loading model");
    return fair(number, q);
  });
  auto annotator = make(server, "concurrency = 1");
  expect_true_preferences(annotate(*annotator, make_data(3)));
  EXPECT_EQ(server.requests(), 6 + 2);
}

TEST_P(VlmOverHttpAndHttps, DroppedConnectionsAreRetried) {
  const Script fair = judge_fairly(2);
  ChatServer server(scheme(), [&](int number, const Question& q) {
    return number <= 2 ? dropped_connection() : fair(number, q);
  });
  // One worker: were a kept-alive connection dropped, libcurl would itself resend the request
  // once on a fresh one (a server may close an idle connection), and the count would vary.
  expect_true_preferences(annotate(*make(server, "concurrency = 1"), make_data(2)));
  EXPECT_EQ(server.requests(), 4 + 2);
}

TEST_P(VlmOverHttpAndHttps, ATimedOutRequestIsRetried) {
  const Script fair = judge_fairly(2);
  ChatServer server(scheme(), [&](int number, const Question& q) {
    return number == 1 ? no_answer() : fair(number, q);
  });
  expect_true_preferences(annotate(*make(server, "timeout = 0.1"), make_data(2)));
  EXPECT_EQ(server.requests(), 4 + 1);
}

TEST_P(VlmOverHttpAndHttps, AServerThatNeverAnswersFailsAfterTheRetriesWithPairAndUrl) {
  ChatServer server(scheme(), [](int, const Question&) { return no_answer(); });
  auto annotator = make(server, "timeout = 0.1\nretries = 1\nboth_orders = false");
  const auto start = std::chrono::steady_clock::now();
  const std::string error = annotate_error(*annotator, make_data(1));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_THAT(error, HasSubstr("pair 0 (prompt 'a red fox'"));
  EXPECT_THAT(error, HasSubstr("POST " + server.base_url() + "/chat/completions"));
  EXPECT_THAT(error, HasSubstr("no answer after 2 attempt(s)"));
  EXPECT_THAT(error, HasSubstr("timed out after 100 ms while waiting for the response"));
  EXPECT_EQ(server.requests(), 2);
}

TEST_P(VlmOverHttpAndHttps, NoServerListeningFailsAfterTheRetries) {
  std::shared_ptr<dedpo::Annotator> annotator;
  {
    ChatServer gone(scheme(), [](int, const Question&) { return chat_reply("A"); });
    annotator = make(gone, "retries = 1\nbackoff = 0.001");
  }
  const std::string error = annotate_error(*annotator, make_data(1));
  EXPECT_THAT(error, HasSubstr("no answer after 2 attempt(s); last: connection failed while "
                               "connecting"));
}

TEST_P(VlmOverHttpAndHttps, GarbageIsAnErrorWithTheBodyAndIsNotRetried) {
  ChatServer server(scheme(), [](int, const Question&) {
    return http_reply(200, "<html>proxy says hello</html>");
  });
  const std::string error = annotate_error(*make(server, "concurrency = 1"), make_data(2));
  EXPECT_THAT(error, HasSubstr("HTTP 200: the response is not JSON: <html>proxy says hello"));
  EXPECT_THAT(error, HasSubstr("/v1/chat/completions"));
  EXPECT_EQ(server.requests(), 1);

  ChatServer no_choices(scheme(), [](int, const Question&) {
    return http_reply(200, R"({"object": "error", "message": "oops"})");
  });
  EXPECT_THAT(annotate_error(*make(no_choices), make_data(2)),
              HasSubstr("the response has no choices[0]: {\"object\""));
}

TEST_P(VlmOverHttpAndHttps, ARefusedRequestIsAnErrorAndIsNotRetried) {
  ChatServer server(scheme(), [](int, const Question&) {
    return http_reply(400, R"({"error": "The model `test-vl` does not exist."})");
  });
  const std::string error = annotate_error(*make(server, "concurrency = 1"), make_data(3));
  EXPECT_THAT(error, HasSubstr("pair 0 (prompt 'a red fox'"));
  EXPECT_THAT(error, HasSubstr("HTTP 400: {\"error\": \"The model `test-vl` does not exist.\"}"));
  EXPECT_EQ(server.requests(), 1);
}

// ---------------------------------------------------------------------------------------------
// The journal

TEST_P(VlmOverHttpAndHttps, ARestartedAnnotationAsksOnlyTheMissingQuestions) {
  // The first server refuses pair 4: the run fails after the questions before it.
  const Script fair = judge_fairly(6);
  ChatServer failing(scheme(), [&](int number, const Question& q) {
    return q.first.pair == 4 ? http_reply(400, "no") : fair(number, q);
  });
  EXPECT_THAT(annotate_error(*make(failing, "concurrency = 1"), make_data(6)), HasSubstr("pair 4"));
  EXPECT_EQ(failing.requests(), 9);  // pairs 0-3 in both orders, then pair 4

  // Another server (a new address) for the same model: only the 4 missing questions.
  ChatServer healthy(scheme(), fair);
  expect_true_preferences(annotate(*make(healthy), make_data(6)));
  EXPECT_EQ(healthy.requests(), 4);
  for (const Question& q : healthy.questions()) EXPECT_GE(q.first.pair, 4);
  ChatServer unused(scheme(), fair);
  expect_true_preferences(annotate(*make(unused), make_data(6)));
  EXPECT_EQ(unused.requests(), 0);

  // Another question is another journal.
  ChatServer reworded(scheme(), fair);
  expect_true_preferences(
      annotate(*make(reworded, "question = \"{prompt}: {first} or {second}?\""), make_data(6)));
  EXPECT_EQ(reworded.requests(), 12);
}

TEST_P(VlmOverHttpAndHttps, DataWithoutAFingerprintIsKeyedByItsContent) {
  ChatServer server(scheme(), judge_fairly(2));
  dedpo::PairDataset data = make_data(2, /*with_files=*/false);
  data.fingerprint.clear();
  annotate(*make(server, "both_orders = false"), data);
  annotate(*make(server, "both_orders = false"), data);
  EXPECT_EQ(server.requests(), 2);
  data.prompts[1] = "a yellow car";
  annotate(*make(server, "both_orders = false"), data);
  EXPECT_EQ(server.requests(), 4);
}

TEST_P(VlmOverHttpAndHttps, ATornLastLineIsDroppedAndItsQuestionAskedAgain) {
  ChatServer server(scheme(), judge_fairly(3));
  annotate(*make(server, "both_orders = false"), make_data(3));
  const fs::path journal = journal_file();
  std::string text = dedpo::test::read_file(journal);
  // A crash in the middle of the last append.
  text.resize(text.size() - 10);
  dedpo::test::write_file(journal, text);

  ChatServer again(scheme(), judge_fairly(3));
  expect_true_preferences(annotate(*make(again, "both_orders = false"), make_data(3)));
  EXPECT_EQ(again.requests(), 1);
  text = dedpo::test::read_file(journal);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1 + 3);  // the header and 3 answers
  EXPECT_EQ(text.back(), '\n');
}

TEST_P(VlmOverHttpAndHttps, ADamagedLineInsideTheJournalIsAnError) {
  ChatServer server(scheme(), judge_fairly(3));
  annotate(*make(server, "both_orders = false"), make_data(3));
  const fs::path journal = journal_file();
  std::string text = dedpo::test::read_file(journal);
  text.insert(text.find('\n') + 1, "{\"pair\": 1, \"order\": \n");
  dedpo::test::write_file(journal, text);
  const std::string error = annotate_error(*make(server, "both_orders = false"), make_data(3));
  EXPECT_THAT(error, HasSubstr(journal.string() + " line 2: not a JSON object"));
  EXPECT_THAT(error, HasSubstr("the journal is damaged"));
}

// ---------------------------------------------------------------------------------------------
// Throughput, images, options

TEST_P(VlmOverHttpAndHttps, NoMoreRequestsInFlightThanTheConcurrencyLimit) {
  ChatServer server(scheme(), judge_fairly(12));
  server.set_delay(std::chrono::milliseconds(30));
  expect_true_preferences(annotate(*make(server, "concurrency = 3"), make_data(12)));
  EXPECT_EQ(server.requests(), 24);
  EXPECT_EQ(server.max_in_flight(), 3);
  EXPECT_LE(server.connections(), 3);  // one kept-alive connection per worker
}

TEST_P(VlmOverHttpAndHttps, AWorkerKeepsItsConnectionAlive) {
  ChatServer server(scheme(), judge_fairly(5));
  expect_true_preferences(annotate(*make(server, "concurrency = 1"), make_data(5)));
  EXPECT_EQ(server.requests(), 10);
  EXPECT_EQ(server.connections(), 1);
  // A server error does not cost the connection; a dropped one is replaced.
  const Script fair = judge_fairly(2);
  ChatServer flaky(scheme(), [&](int number, const Question& q) {
    if (number == 1) return http_reply(503, "busy");
    if (number == 3) return dropped_connection();
    return fair(number, q);
  });
  expect_true_preferences(annotate(*make(flaky, "concurrency = 1"), make_data(2)));
  EXPECT_EQ(flaky.requests(), 4 + 2);
  EXPECT_EQ(flaky.connections(), 2);
}

TEST_P(VlmOverHttpAndHttps, AnOversizedBodyIsAnErrorAndIsNotRetried) {
  for (const bool chunked : {false, true}) {
    ChatServer server(scheme(), [&](int, const Question&) {
      Reply reply = http_reply(200, std::string((16u << 20) + 1, ' '));
      reply.chunked = chunked;
      return reply;
    });
    const std::string error =
        annotate_error(*make(server, "timeout = 5\nboth_orders = false"), make_data(1));
    EXPECT_THAT(error, HasSubstr("the response body is over 16 MiB")) << "chunked: " << chunked;
    EXPECT_EQ(server.requests(), 1) << "chunked: " << chunked;
  }
}

TEST_P(VlmOverHttpAndHttps, ManyPairsAtFullSpeed) {
  const std::int64_t n = 300;
  ChatServer server(scheme(), judge_fairly(n));
  auto annotator = make(server, "concurrency = 8");
  const dedpo::PairDataset data = make_data(n, /*with_files=*/false);
  const auto start = std::chrono::steady_clock::now();
  expect_true_preferences(annotate(*annotator, data));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(server.requests(), 2 * n);
  RecordProperty("requests_per_second", std::to_string(2 * n / seconds));
  std::cout << "vlm test server: " << 2 * n / seconds << " requests/s\n";
}

TEST_P(VlmOverHttpAndHttps, ImagesAreDecodedFromBackboneSpaceWhenTheDataHasNoFiles) {
  ChatServer server(scheme(), judge_fairly(10));
  expect_true_preferences(
      annotate(*make(server, "decode_batch = 4"), make_data(10, /*with_files=*/false)));
  EXPECT_EQ(backbone_.decode_calls, 2 * 3);  // A and B sides, 3 batches of at most 4 pairs
}

TEST_P(VlmOverHttpAndHttps, TheApiKeyIsSentAsABearerTokenAndWrittenNowhere) {
  const std::string key = "sk-dedpo-test-4f9c2e";
  ::setenv("DEDPO_TEST_VLM_KEY", key.c_str(), 1);
  const std::string options = "api_key_env = \"DEDPO_TEST_VLM_KEY\"";
  ChatServer server(scheme(), judge_fairly(2));
  ::testing::internal::CaptureStderr();
  annotate(*make(server, options), make_data(2));
  // A proxy that echoes the request back in its error.
  ChatServer echo(scheme(), [](int, const Question& q) {
    return http_reply(400, "bad request with header Authorization: " + q.authorization);
  });
  const std::string error = annotate_error(*make(echo, options), make_data(3));
  const std::string log = ::testing::internal::GetCapturedStderr();
  for (const Question& q : server.questions()) EXPECT_EQ(q.authorization, "Bearer " + key);
  EXPECT_THAT(error, HasSubstr("Authorization: Bearer <api key>"));
  EXPECT_THAT(error, Not(HasSubstr(key)));
  EXPECT_THAT(log, HasSubstr("vlm: 4 requests"));
  EXPECT_THAT(log, Not(HasSubstr(key)));
  int files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir_.path())) {
    if (!entry.is_regular_file()) continue;
    ++files;
    EXPECT_THAT(dedpo::test::read_file(entry.path()), Not(HasSubstr(key))) << entry.path();
  }
  EXPECT_GE(files, 2);  // the journal and its lock at least
  ::unsetenv("DEDPO_TEST_VLM_KEY");
  EXPECT_THAT(annotate_error(*make(server, "api_key_env = \"DEDPO_TEST_VLM_KEY\""), make_data(2)),
              HasSubstr("'DEDPO_TEST_VLM_KEY', which is not set"));
}

// ---------------------------------------------------------------------------------------------
// TLS, HTTP/2, proxies

TEST_F(VlmAnnotatorTest, AServerCertificateFromAnotherCaFailsClearlyAndIsNotRetried) {
  ChatServer server(Scheme::https, judge_fairly(1));
  const std::string other_ca = test_pki().other_ca.string();
  const std::string error = annotate_error(
      *make(server, "both_orders = false\nca_file = \"" + other_ca + "\""), make_data(1));
  EXPECT_THAT(error, HasSubstr("POST " + server.base_url() + "/chat/completions: "));
  EXPECT_THAT(error, HasSubstr("certificate verification failed"));
  EXPECT_THAT(error, HasSubstr("checked against ca_file '" + other_ca + "'"));
  EXPECT_EQ(server.requests(), 0);
  EXPECT_EQ(server.connections(), 1);  // retries = 2, but none was made

  // The system's CA store does not know the test's CA either.
  EXPECT_THAT(annotate_error(*make(server, "ca_file = \"\""), make_data(1)),
              HasSubstr("checked against the system's CA store"));
  EXPECT_EQ(server.requests(), 0);
}

TEST_F(VlmAnnotatorTest, AnHttpsClientOffersHttp2) {
  ChatServer server(Scheme::https, judge_fairly(1));
  expect_true_preferences(annotate(*make(server), make_data(1)));
  // The server picked HTTP/1.1; one that speaks HTTP/2 would have been answered in it.
  EXPECT_THAT(server.protocols_offered(), Contains("h2"));
  EXPECT_THAT(server.protocols_offered(), Contains("http/1.1"));
}

TEST_F(VlmAnnotatorTest, AHandshakeThatNeverCompletesFailsAtTheConnectTimeout) {
  // Connections complete in the kernel's backlog; no TLS server ever answers them.
  asio::io_context io;
  tcp::acceptor silent(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  auto annotator = registry_.create<dedpo::Annotator>(
      "vlm", "model = \"m\"\nbase_url = \"https://127.0.0.1:" +
                 std::to_string(silent.local_endpoint().port()) + "/v1\"\nca_file = \"" +
                 test_pki().ca.string() + "\"\ntimeout = 30\nconnect_timeout = 0.1\nretries = 0");
  const auto start = std::chrono::steady_clock::now();
  const std::string error = annotate_error(*annotator, make_data(1));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_THAT(error, HasSubstr("no answer after 1 attempt(s); last: timed out after 100 ms while "
                               "connecting"));
}

TEST_F(VlmAnnotatorTest, ProxiesComeFromTheEnvironment) {
  // The test's server is the proxy: it gets the request in absolute form, for the named host.
  ChatServer proxy(Scheme::http, judge_fairly(1));
  const std::string proxy_url = proxy.base_url().substr(0, proxy.base_url().rfind('/'));
  ::setenv("http_proxy", proxy_url.c_str(), 1);
  ::unsetenv("no_proxy");
  auto annotator = registry_.create<dedpo::Annotator>(
      "vlm", "model = \"m\"\nbase_url = \"http://judge.invalid:8000/v1\"\nretries = 0");
  const std::vector<float> prob = annotate(*annotator, make_data(1));
  ::unsetenv("http_proxy");
  expect_true_preferences(prob);
  ASSERT_EQ(proxy.questions().size(), 2u);
  EXPECT_EQ(proxy.questions()[0].target, "http://judge.invalid:8000/v1/chat/completions");
}

TEST_F(VlmAnnotatorTest, OptionsAreCheckedWhenTheAnnotatorIsMade) {
  auto error_of = [&](const std::string& options) -> std::string {
    try {
      registry_.create<dedpo::Annotator>("vlm", "model = \"m\"\n" + options);
    } catch (const dedpo::Error& error) {
      return error.what();
    }
    return "";
  };
  EXPECT_EQ(error_of("base_url = \"https://api.example.com/v1\""), "");
  EXPECT_THAT(error_of("base_url = \"127.0.0.1:8000\""),
              HasSubstr("option 'base_url': '127.0.0.1:8000': not an http:// or https:// URL"));
  EXPECT_THAT(error_of("base_url = \"http://127.0.0.1:80000/v1\""),
              HasSubstr("port '80000' is not a number from 1 to 65535"));
  EXPECT_THAT(error_of("base_url = \"https://user:key@api.example.com/v1\""),
              HasSubstr("credentials in the URL"));
  EXPECT_THAT(error_of("base_url = \"https://api.example.com/v1?key=1\""),
              HasSubstr("a query or fragment"));
  EXPECT_EQ(error_of("base_url = \"https://[::1]:8443/v1\""), "");
  EXPECT_THAT(error_of("base_url = \"https://[::1/v1\""), HasSubstr("unclosed IPv6 address"));
  const std::string https = "base_url = \"https://judge.example.com/v1\"\n";
  EXPECT_EQ(error_of(https + "ca_file = \"" + test_pki().ca.string() + "\""), "");
  EXPECT_THAT(error_of(https + "ca_file = \"/no/such/ca.pem\""),
              HasSubstr("option 'ca_file': /no/such/ca.pem: cannot open"));
  EXPECT_THAT(error_of(https + "ca_file = \"" + test_pki().server_key.string() + "\""),
              HasSubstr("option 'ca_file': '" + test_pki().server_key.string() +
                        "' holds no PEM certificate"));
  EXPECT_THAT(error_of("ca_file = \"" + test_pki().ca.string() + "\""),
              HasSubstr("option 'ca_file': base_url 'http://127.0.0.1:8000/v1' is plain http"));
  EXPECT_THAT(error_of("connect_timeout = 0"), HasSubstr("option 'connect_timeout'"));
  EXPECT_THAT(error_of("unclear = \"maybe\""), HasSubstr("expected \"error\" or a number"));
  EXPECT_THAT(error_of("unclear = 1.5"), HasSubstr("expected \"error\" or a number"));
  EXPECT_THAT(error_of("question = \"{promt}\""), HasSubstr("unknown placeholder {promt}"));
  EXPECT_THAT(error_of("second_answers = \"a\""), HasSubstr("'a' also means the first image"));
  EXPECT_THAT(error_of("concurrency = 0"), HasSubstr("concurrency"));
  EXPECT_EQ(error_of("unclear = 0.5\nbase_url = \"http://localhost:8000/v1/\""), "");
}

}  // namespace
