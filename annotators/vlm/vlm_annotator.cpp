// `vlm`: a vision-language model judges each pair. Both images and the prompt go to an
// OpenAI-compatible chat-completions server (vLLM, llama.cpp's server, a hosted API; http or
// https); the answer's log-probabilities over the answer tokens, or else its text, become
// ĝ = P(A preferred).
// Answers are journaled as they arrive, so a restarted annotation asks only for the rest.
// docs/annotators.md describes the options and how to serve a model.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string_view>
#include <thread>

#include "answer_journal.hpp"
#include "chat_protocol.hpp"
#include "dedpo/annotator.hpp"
#include "dedpo/digest.hpp"
#include "dedpo/files.hpp"
#include "dedpo/image.hpp"
#include "dedpo/plugin.hpp"
#include "http_client.hpp"

namespace dedpo {
namespace {

namespace fs = std::filesystem;
using vlm::AnswerJournal;
using vlm::JournalEntry;
using T = OptionType;

const char* const kDefaultQuestion =
    "\"Both images were generated from the prompt: \\\"{prompt}\\\"\\nWhich image is better, "
    "judging how faithfully it follows the prompt and its visual quality? Answer {first} for "
    "the first image or {second} for the second image, with that single character only.\"";

const OptionSpec kVlmOptions[] = {
    {"base_url", T::string, "\"http://127.0.0.1:8000/v1\"",
     "OpenAI-compatible API root, http:// or https://; requests go to "
     "<base_url>/chat/completions. Proxies come from http_proxy, https_proxy and no_proxy."},
    {"ca_file", T::string, "\"\"",
     "PEM bundle of the CA certificates an https server's certificate must chain to; empty: the "
     "system's CA store. The certificate is always verified."},
    {"model", T::string, nullptr, "Model name the server serves (vLLM: its --served-model-name)."},
    {"api_key_env", T::string, "\"\"",
     "Environment variable holding a bearer token for the server (sent as \"Authorization: "
     "Bearer\", never logged or stored); empty: none sent."},
    {"question", T::string, kDefaultQuestion,
     "Text sent after the two images; {prompt}, {first} and {second} (the first answer of "
     "first_answers / second_answers) are replaced."},
    {"first_answers", T::string, "\"A,1\"",
     "Comma-separated answers (tokens) that mean the first image; case-insensitive."},
    {"second_answers", T::string, "\"B,2\"", "Comma-separated answers that mean the second image."},
    {"top_logprobs", T::integer, "5",
     "Log-probabilities asked for the answer's first token (ĝ = softmax over the answer tokens "
     "among them); 0: do not ask, read the text only."},
    {"max_tokens", T::integer, "1", "Longest answer, in tokens."},
    {"both_orders", T::boolean, "true",
     "Ask each pair twice, A first then B first, and average: cancels the model's preference for "
     "a position. Doubles the requests."},
    {"unclear", T::real_or_string, "\"error\"",
     "\"error\", or ĝ in [0, 1] given to a question whose answer names neither image or whose "
     "request the server refused (4xx) or answered with something that is not a chat "
     "completion; such questions are counted and reported."},
    {"concurrency", T::integer, "4", "Requests in flight at once."},
    {"timeout", T::real, "120.0", "Seconds one request may take, connection included."},
    {"connect_timeout", T::real, "10.0",
     "Seconds to connect (TCP and TLS handshake) before the attempt counts as failed; at most "
     "timeout."},
    {"retries", T::integer, "4",
     "Further attempts after a timeout, a dropped connection, HTTP 5xx, 408 or 429."},
    {"backoff", T::real, "1.0",
     "Seconds before the first retry; doubled for each further one (with jitter)."},
    {"decode_batch", T::integer, "16",
     "Pairs whose images are decoded from backbone space at once (data without image files)."},
};

std::vector<std::string> split_answers(const Options& options, const char* name) {
  std::vector<std::string> answers;
  std::stringstream text(options.string(name));
  for (std::string item; std::getline(text, item, ',');) {
    const std::size_t begin = item.find_first_not_of(" \t");
    if (begin == std::string::npos) continue;
    answers.push_back(item.substr(begin, item.find_last_not_of(" \t") - begin + 1));
  }
  if (answers.empty()) options.fail(name, "expected at least one answer");
  return answers;
}

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

// Identifies data whose dataset gave no fingerprint: its prompts, files and tensors.
std::string content_digest(const PairDataset& data) {
  Digest digest;
  for (const std::string& prompt : data.prompts) digest.add(prompt + "\n");
  for (const auto* files : {&data.a_files, &data.b_files}) {
    for (const fs::path& file : *files) digest.add(file.string() + "\n");
  }
  for (const at::Tensor* tensor : {&data.prompt_index, &data.a, &data.b}) digest.add(*tensor);
  return "content:" + digest.hex();
}

std::string excerpt(std::string_view text, std::size_t limit = 300) {
  if (text.size() <= limit) return std::string(text);
  return std::string(text.substr(0, limit)) + "...";
}

std::string mime_of(const fs::path& file) {
  const std::string extension = lower(file.extension().string());
  if (extension == ".png") return "image/png";
  if (extension == ".jpg" || extension == ".jpeg") return "image/jpeg";
  if (extension == ".webp") return "image/webp";
  return "";
}

std::chrono::milliseconds milliseconds_of(const Options& options, const char* name) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(options.real(name) * 1000)));
}

// One question: a pair shown in one order.
struct Request {
  std::int64_t pair;
  bool swapped;
  std::string body;
};

// Requests from the thread that prepares images to the workers that send them, bounded so that
// encoded images do not pile up in memory.
class RequestQueue {
 public:
  explicit RequestQueue(std::size_t capacity) : capacity_(capacity) {}

  bool push(Request request) {
    std::unique_lock<std::mutex> lock(mutex_);
    space_.wait(lock, [&] { return queue_.size() < capacity_ || closed_; });
    if (closed_) return false;
    queue_.push_back(std::move(request));
    ready_.notify_one();
    return true;
  }
  // Empty once the queue is closed and drained, or aborted.
  std::optional<Request> pop() {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return !queue_.empty() || closed_; });
    if (queue_.empty()) return std::nullopt;
    Request request = std::move(queue_.front());
    queue_.pop_front();
    space_.notify_one();
    return request;
  }
  // No more requests: workers finish the queued ones.
  void close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    ready_.notify_all();
    space_.notify_all();
  }
  // Stop: the queued requests are dropped.
  void abort() {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.clear();
    closed_ = true;
    ready_.notify_all();
    space_.notify_all();
  }

 private:
  std::size_t capacity_;
  std::mutex mutex_;
  std::condition_variable ready_, space_;
  std::deque<Request> queue_;
  bool closed_ = false;
};

// What became of one question.
struct Outcome {
  bool done = false;
  std::optional<double> p_first;  // empty: unclear or refused
  std::string problem;            // why there is no answer; "" for an answer
};

class VlmAnnotator : public Annotator {
 public:
  explicit VlmAnnotator(const Options& options) : options_(options) {
    try {
      url_ = vlm::parse_server_url(options.string("base_url"));
    } catch (const Error& error) {
      options.fail("base_url", error.what());
    }
    question_.model = options.string("model");
    question_.prompt_template = options.string("question");
    question_.first_answers = split_answers(options, "first_answers");
    question_.second_answers = split_answers(options, "second_answers");
    question_.max_tokens = options.integer("max_tokens");
    question_.top_logprobs = options.integer("top_logprobs");
    for (const std::string& first : question_.first_answers) {
      for (const std::string& second : question_.second_answers) {
        if (lower(first) == lower(second)) {
          options.fail("second_answers", "'" + second + "' also means the first image");
        }
      }
    }
    std::vector<std::string> unknown = vlm::unknown_placeholders(question_.prompt_template);
    if (!unknown.empty()) {
      options.fail("question", "unknown placeholder " + unknown.front() +
                                   " (known: {prompt}, {first}, {second})");
    }
    if (question_.max_tokens < 1) options.fail("max_tokens", "must be at least 1");
    if (question_.top_logprobs < 0 || question_.top_logprobs > 20) {
      options.fail("top_logprobs", "expected 0 to 20");
    }
    if (options.is_string("unclear")) {
      if (options.string("unclear") != "error") {
        options.fail("unclear", "expected \"error\" or a number in [0, 1]");
      }
    } else {
      unclear_value_ = options.real("unclear");
      if (!(*unclear_value_ >= 0 && *unclear_value_ <= 1)) {
        options.fail("unclear", "expected \"error\" or a number in [0, 1]");
      }
    }
    if (options.integer("concurrency") < 1) options.fail("concurrency", "must be at least 1");
    if (!(options.real("timeout") > 0)) options.fail("timeout", "must be positive");
    if (!(options.real("connect_timeout") > 0)) options.fail("connect_timeout", "must be positive");
    if (const std::string& ca_file = options.string("ca_file"); !ca_file.empty()) {
      if (!url_.tls) {
        options.fail("ca_file", "base_url '" + url_.root +
                                    "' is plain http: there is no certificate to verify");
      }
      std::string bundle;
      try {
        bundle = read_file(ca_file);
      } catch (const Error& error) {
        options.fail("ca_file", error.what());
      }
      if (bundle.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
        options.fail("ca_file", "'" + ca_file +
                                    "' holds no PEM certificate (expected a bundle of "
                                    "-----BEGIN CERTIFICATE----- blocks)");
      }
    }
    if (options.integer("retries") < 0) options.fail("retries", "must be non-negative");
    if (!(options.real("backoff") >= 0)) options.fail("backoff", "must be non-negative");
    if (options.integer("decode_batch") < 1) options.fail("decode_batch", "must be at least 1");
  }

  at::Tensor annotate(AnnotatorContext& context) override;
  // Its pace is the server's, not the rank's, and its journal of answers is keyed by the whole
  // data set (runs of a grid share it): in a data-parallel run rank 0 asks for every pair.
  bool shardable() const override { return false; }

 private:
  struct Run;

  std::string unclear_message(const std::string& answer) const {
    return "the answer '" + excerpt(answer, 80) +
           "' names neither image (first: " + options_.string("first_answers") +
           "; second: " + options_.string("second_answers") +
           "); set unclear = 0.5 (or another ĝ) to accept such answers";
  }

  Options options_;
  vlm::ServerUrl url_;
  vlm::Question question_;
  std::optional<double> unclear_value_;  // empty: unclear answers are an error
};

// State of one annotate() call shared by the preparing thread and the workers.
struct VlmAnnotator::Run {
  const VlmAnnotator& self;
  const PairDataset& data;
  AnswerJournal& journal;
  vlm::ClientSettings http;          // for the workers' sessions
  std::string url;                   // <base_url>/chat/completions
  std::string api_key;               // "" or the token, kept out of every message
  std::vector<Outcome> outcomes[2];  // [swapped][pair]
  RequestQueue queue;
  std::atomic<std::int64_t> sent{0}, retried{0}, unclear{0}, refused{0};

  std::mutex failure_mutex;
  std::condition_variable stopping;
  std::string failure;  // the first error; non-empty stops the run

  Run(const VlmAnnotator& annotator, const PairDataset& pairs, AnswerJournal& answers)
      : self(annotator),
        data(pairs),
        journal(answers),
        url(annotator.url_.root + "/chat/completions"),
        queue(2 * static_cast<std::size_t>(annotator.options_.integer("concurrency"))) {
    outcomes[0].resize(static_cast<std::size_t>(pairs.size()));
    outcomes[1].resize(static_cast<std::size_t>(pairs.size()));
    http.ca_file = annotator.options_.string("ca_file");
    http.timeout = milliseconds_of(annotator.options_, "timeout");
    http.connect_timeout = milliseconds_of(annotator.options_, "connect_timeout");
  }

  // The start of a server's body for a message, the API key blanked out: a proxy that echoes
  // the request back must not put the key into an error.
  std::string shown(std::string text) const {
    if (!api_key.empty()) {
      for (std::size_t at = text.find(api_key); at != std::string::npos;
           at = text.find(api_key, at)) {
        text.replace(at, api_key.size(), "<api key>");
      }
    }
    return excerpt(text);
  }

  bool stopped() {
    std::lock_guard<std::mutex> lock(failure_mutex);
    return !failure.empty();
  }

  void fail(const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure.empty()) return;
      failure = message;
    }
    stopping.notify_all();
    queue.abort();
  }

  // Waits `delay` unless the run stops first; false when it stopped.
  bool back_off(std::chrono::duration<double> delay) {
    std::unique_lock<std::mutex> lock(failure_mutex);
    return !stopping.wait_for(lock, delay, [&] { return !failure.empty(); });
  }

  std::string describe(std::int64_t pair, bool swapped) const {
    std::string text = "pair " + std::to_string(pair);
    const std::string& prompt =
        data.prompts.at(static_cast<std::size_t>(data.prompt_index[pair].item<std::int64_t>()));
    text += " (prompt '" + excerpt(prompt, 60) + "'";
    if (!data.a_files.empty()) {
      text += ", A " + data.a_files[static_cast<std::size_t>(pair)].string() + ", B " +
              data.b_files[static_cast<std::size_t>(pair)].string();
    }
    text += swapped ? ", B shown first)" : ", A shown first)";
    return text;
  }

  // Sends one request through `session` until it is answered, refused or out of attempts.
  void ask(const Request& request, vlm::HttpSession& session) {
    const std::int64_t retries = self.options_.integer("retries");
    const std::string where =
        "vlm annotator: " + describe(request.pair, request.swapped) + ": POST " + url + ": ";
    thread_local std::mt19937 jitter_source{std::random_device{}()};
    std::string problem;
    for (std::int64_t attempt = 0;; ++attempt) {
      try {
        ++sent;
        vlm::HttpResponse response = session.post_json(url, request.body);
        const int status = response.status;
        if (status >= 200 && status < 300) {
          try {
            record(request, vlm::read_chat_response(self.question_, response.body), where);
          } catch (const Error& error) {
            refuse(request, where + "HTTP " + std::to_string(status) + ": " + error.what() + ": " +
                                shown(response.body));
          }
          return;
        }
        problem = "HTTP " + std::to_string(status) + ": " + shown(response.body);
        if (status < 500 && status != 408 && status != 429) {
          refuse(request, where + problem);
          return;
        }
      } catch (const vlm::TransportError& error) {
        problem = error.what();
        if (!error.transient()) {
          fail(where + problem);
          return;
        }
      }
      if (attempt == retries) {
        fail(where + "no answer after " + std::to_string(attempt + 1) +
             " attempt(s); last: " + problem);
        return;
      }
      ++retried;
      const double jitter = std::uniform_real_distribution<double>(0.5, 1.0)(jitter_source);
      const double delay = self.options_.real("backoff") * std::ldexp(1.0, attempt) * jitter;
      if (!back_off(std::chrono::duration<double>(delay))) return;
    }
  }

  void record(const Request& request, const vlm::Answer& answer, const std::string& where) {
    journal.append({request.pair, request.swapped, answer.p_first, answer.via, answer.text});
    Outcome& outcome = outcomes[request.swapped][static_cast<std::size_t>(request.pair)];
    outcome.done = true;
    outcome.p_first = answer.p_first;
    if (answer.p_first) return;
    ++unclear;
    outcome.problem = where + "unclear answer '" + excerpt(answer.text, 80) + "'";
    if (!self.unclear_value_) fail(where + self.unclear_message(answer.text));
  }

  void refuse(const Request& request, const std::string& problem) {
    ++refused;
    if (!self.unclear_value_) {
      fail(problem);
      return;
    }
    Outcome& outcome = outcomes[request.swapped][static_cast<std::size_t>(request.pair)];
    outcome.done = true;
    outcome.problem = problem;
  }

  // One session per worker: its requests reuse one connection (HTTP keep-alive).
  void work() {
    try {
      vlm::HttpSession session(http);
      while (std::optional<Request> request = queue.pop()) ask(*request, session);
    } catch (const std::exception& error) {  // e.g. the journal's disk is full
      fail(std::string("vlm annotator: ") + error.what());
    }
  }
};

// Images of one side of `pairs` as data URLs: the source files as they are when the data has
// them (PNG, JPEG, WebP; other formats re-encoded as PNG), else the backbone's decoded samples.
std::vector<std::string> image_urls(const PairDataset& data, Backbone& backbone,
                                    const std::vector<std::int64_t>& pairs, bool side_a) {
  std::vector<std::string> urls;
  const std::vector<fs::path>& files = side_a ? data.a_files : data.b_files;
  if (!files.empty()) {
    for (std::int64_t pair : pairs) {
      const fs::path& file = files[static_cast<std::size_t>(pair)];
      const std::string mime = mime_of(file);
      urls.push_back(mime.empty() ? vlm::data_url("image/png", encode_png(read_image(file)))
                                  : vlm::data_url(mime, read_file(file)));
    }
    return urls;
  }
  const at::Tensor& samples = side_a ? data.a : data.b;
  at::Tensor rows = at::tensor(pairs, at::kLong).to(samples.device());
  at::Tensor images;
  {
    at::NoGradGuard no_grad;
    images = backbone.decode_samples(samples.index_select(0, rows)).to(at::kCPU);
  }
  for (std::int64_t i = 0; i < images.size(0); ++i) {
    urls.push_back(vlm::data_url("image/png", encode_png(images[i])));
  }
  return urls;
}

at::Tensor VlmAnnotator::annotate(AnnotatorContext& context) {
  const PairDataset& data = context.data;
  const std::int64_t n = data.size();
  if ((!data.a_files.empty() || !data.b_files.empty()) &&
      (data.a_files.size() != static_cast<std::size_t>(n) ||
       data.b_files.size() != static_cast<std::size_t>(n))) {
    throw Error("vlm annotator: the data names " + std::to_string(data.a_files.size()) + " A and " +
                std::to_string(data.b_files.size()) + " B image files for " + std::to_string(n) +
                " pairs");
  }
  if (context.cache_dir.empty()) {
    throw Error(
        "vlm annotator: no cache folder to journal answers in (AnnotatorContext::cache_dir)");
  }
  std::string api_key;
  if (const std::string& variable = options_.string("api_key_env"); !variable.empty()) {
    const char* token = std::getenv(variable.c_str());
    if (!token || !*token) {
      throw Error("vlm annotator: option api_key_env names '" + variable + "', which is not set");
    }
    api_key = token;
  }

  // The journal is keyed by what decides an answer (not by the server's address), so a model
  // served elsewhere reuses it.
  nlohmann::json header = {
      {"dedpo_vlm_journal", 1},
      {"model", question_.model},
      {"question", question_.prompt_template},
      {"first_answers", question_.first_answers},
      {"second_answers", question_.second_answers},
      {"max_tokens", question_.max_tokens},
      {"top_logprobs", question_.top_logprobs},
      {"data", data.fingerprint.empty() ? content_digest(data) : data.fingerprint},
      {"pairs", n}};
  fs::create_directories(context.cache_dir);
  Digest key;
  key.add(header.dump());
  const fs::path journal_file = context.cache_dir / ("vlm-" + key.hex() + ".jsonl");
  // Runs of a grid share the journal: one asks, the others then find the answers.
  FileLock lock(journal_file.string() + ".lock");
  AnswerJournal journal(journal_file, header.dump(), n);

  Run run(*this, data, journal);
  run.api_key = api_key;
  if (!api_key.empty()) run.http.authorization = "Bearer " + api_key;
  for (const JournalEntry& entry : journal.recorded()) {
    Outcome& outcome = run.outcomes[entry.swapped][static_cast<std::size_t>(entry.pair)];
    outcome = {true, entry.p_first, ""};
    if (!entry.p_first) {
      if (!unclear_value_) {
        throw Error("vlm annotator: " + run.describe(entry.pair, entry.swapped) + ": " +
                    unclear_message(entry.answer) + " (recorded in " + journal_file.string() + ")");
      }
      ++run.unclear;
      outcome.problem = run.describe(entry.pair, entry.swapped) + ": unclear answer '" +
                        excerpt(entry.answer, 80) + "' (journal)";
    }
  }
  const bool both_orders = options_.boolean("both_orders");
  std::vector<std::int64_t> pending;
  for (std::int64_t pair = 0; pair < n; ++pair) {
    const std::size_t i = static_cast<std::size_t>(pair);
    if (!run.outcomes[0][i].done || (both_orders && !run.outcomes[1][i].done)) {
      pending.push_back(pair);
    }
  }

  const auto start = std::chrono::steady_clock::now();
  const std::size_t worker_count =
      std::min<std::size_t>(static_cast<std::size_t>(options_.integer("concurrency")),
                            pending.size() * (both_orders ? 2 : 1));
  std::vector<std::thread> workers;
  for (std::size_t w = 0; w < worker_count; ++w) workers.emplace_back([&run] { run.work(); });
  try {
    const std::size_t batch = static_cast<std::size_t>(options_.integer("decode_batch"));
    for (std::size_t begin = 0; begin < pending.size() && !run.stopped(); begin += batch) {
      const std::vector<std::int64_t> pairs(
          pending.begin() + static_cast<std::ptrdiff_t>(begin),
          pending.begin() + static_cast<std::ptrdiff_t>(std::min(pending.size(), begin + batch)));
      const std::vector<std::string> a = image_urls(data, context.backbone, pairs, true);
      const std::vector<std::string> b = image_urls(data, context.backbone, pairs, false);
      for (std::size_t k = 0; k < pairs.size(); ++k) {
        const std::int64_t pair = pairs[k];
        const std::string& prompt =
            data.prompts.at(static_cast<std::size_t>(data.prompt_index[pair].item<std::int64_t>()));
        for (bool swapped : {false, true}) {
          if ((swapped && !both_orders) ||
              run.outcomes[swapped][static_cast<std::size_t>(pair)].done) {
            continue;
          }
          std::string body = swapped ? vlm::chat_request(question_, prompt, b[k], a[k])
                                     : vlm::chat_request(question_, prompt, a[k], b[k]);
          run.queue.push({pair, swapped, std::move(body)});
        }
      }
    }
  } catch (const std::exception& error) {
    run.fail(std::string("vlm annotator: ") + error.what());
  }
  run.queue.close();
  for (std::thread& worker : workers) worker.join();
  if (!run.failure.empty()) throw Error(run.failure);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << "vlm: " << run.sent << " requests (" << run.retried << " retries) in " << seconds
            << " s; journal " << journal_file.string() << "\n";
  // Questions without an answer are counted and named, never silently given the default.
  std::vector<std::string> unanswered;
  for (const std::vector<Outcome>& order : run.outcomes) {
    for (const Outcome& outcome : order) {
      if (!outcome.problem.empty()) unanswered.push_back(outcome.problem);
    }
  }
  if (!unanswered.empty()) {
    std::cerr << "vlm: " << unanswered.size()
              << " question(s) without a clear answer got ĝ = " << *unclear_value_ << " ("
              << run.unclear << " unclear, " << run.refused
              << " refused); first: " << unanswered.front() << "\n";
  }

  at::Tensor prob = at::empty({n}, at::kFloat);
  float* out = prob.data_ptr<float>();
  for (std::int64_t pair = 0; pair < n; ++pair) {
    double sum = 0;
    int count = 0;
    for (bool swapped : {false, true}) {
      if (swapped && !both_orders) continue;
      const Outcome& outcome = run.outcomes[swapped][static_cast<std::size_t>(pair)];
      // Only reachable with a number for `unclear`: any other missing answer failed the run.
      const double p_first = outcome.p_first ? *outcome.p_first : *unclear_value_;
      sum += swapped ? 1.0 - p_first : p_first;
      ++count;
    }
    out[pair] = static_cast<float>(sum / count);
  }
  return prob;
}

}  // namespace
}  // namespace dedpo

DEDPO_PLUGIN_LIBRARY(dedpo::describe<dedpo::VlmAnnotator>(
    "vlm", "1.0.0",
    "A vision-language model behind an OpenAI-compatible chat-completions server judges each "
    "pair; ĝ from the answer's log-probabilities or text. Journaled, resumable.",
    dedpo::kVlmOptions))
