// Test-only plugins for the trainer tests. Small and fast; every random draw comes from the
// generators the core passes in (or a seeded one of their own).
#include <cmath>
#include <chrono>
#include <numbers>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>
#include <torch/serialize.h>

#include "dedpo/annotator.hpp"
#include "dedpo/backbone.hpp"
#include "dedpo/dataset.hpp"
#include "dedpo/loss.hpp"
#include "dedpo/metric.hpp"
#include "dedpo/plugin.hpp"

namespace {

using namespace dedpo;
constexpr std::int64_t kCondDim = 2;

at::Generator seeded(std::uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

struct LinearDenoiser : torch::nn::Module {
  explicit LinearDenoiser(std::int64_t dim) {
    w = register_parameter("w", at::zeros({dim, dim}));
    u = register_parameter("u", at::zeros({dim, kCondDim}));
    v = register_parameter("v", at::zeros({dim}));
    b = register_parameter("b", at::zeros({dim}));
    steps = register_buffer("steps_seen", at::zeros({1}, at::kLong));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& c, const at::Tensor& t) {
    return at::matmul(x, w.t()) + at::matmul(c, u.t()) + t.unsqueeze(1) * v + b;
  }
  at::Tensor w, u, v, b, steps;
};

const OptionSpec kBackboneOptions[] = {
    {"dim", OptionType::integer, "4", "Vector size."},
    {"init_scale", OptionType::real, "0.1", "Scale of the random initial weights."},
};

class TestLinearBackbone final : public Backbone {
 public:
  explicit TestLinearBackbone(const Options& o)
      : dim_(o.integer("dim")), scale_(o.real("init_scale")), model_(dim_), reference_(dim_) {}

  void prepare(const BackboneContext& context) override {
    at::NoGradGuard no_grad;
    if (!context.initial_weights.empty()) {
      std::vector<at::Tensor> weights;
      torch::load(weights, context.initial_weights.string());
      auto params = model_.parameters();
      for (std::size_t i = 0; i < params.size(); ++i) params[i].copy_(weights.at(i));
    } else {
      at::Generator g = seeded(context.seed * 7919 + 17);
      for (auto& p : model_.parameters()) p.copy_(at::randn(p.sizes(), g) * scale_);
    }
    auto src = model_.parameters();
    auto dst = reference_.parameters();
    for (std::size_t i = 0; i < src.size(); ++i) {
      dst[i].copy_(src[i]);
      dst[i].set_requires_grad(false);
    }
    model_.to(context.device);
    reference_.to(context.device);
  }

  torch::nn::Module& model() override { return model_; }

  at::Tensor encode_prompts(const std::vector<std::string>& prompts) override {
    at::Tensor out = at::zeros({static_cast<std::int64_t>(prompts.size()), kCondDim});
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::size_t h = std::hash<std::string>{}(prompts[i]);
      out[static_cast<std::int64_t>(i)][0] = static_cast<double>(h % 97) / 97.0;
      out[static_cast<std::int64_t>(i)][1] = static_cast<double>((h / 97) % 89) / 89.0;
    }
    return out;
  }

  DenoisingErrors denoising_errors(const PairBatch& batch, at::Generator& generator,
                                   bool with_reference) override {
    std::int64_t n = batch.a.size(0);
    at::Tensor t, noise;
    {
      t = at::rand({n}, generator) * 0.96 + 0.02;
      noise = at::randn(batch.a.sizes(), generator);
    }
    DenoisingErrors e;
    e.model_a = error(model_, batch.a, batch.condition, t, noise);
    e.model_b = error(model_, batch.b, batch.condition, t, noise);
    if (with_reference) {
      at::NoGradGuard no_grad;
      e.ref_a = error(reference_, batch.a, batch.condition, t, noise);
      e.ref_b = error(reference_, batch.b, batch.condition, t, noise);
    }
    return e;
  }

  at::Tensor denoising_loss(const at::Tensor& samples, const at::Tensor& condition,
                            at::Generator& generator) override {
    at::Tensor t, noise;
    {
      t = at::rand({samples.size(0)}, generator) * 0.96 + 0.02;
      noise = at::randn(samples.sizes(), generator);
    }
    return error(model_, samples, condition, t, noise);
  }

  at::Tensor sample(const at::Tensor& condition, at::Generator& generator,
                    bool from_reference) override {
    at::Tensor x;
    {
      x = at::randn({condition.size(0), dim_}, generator);
    }
    at::Tensor t = at::full({condition.size(0)}, 0.5);
    LinearDenoiser& m = from_reference ? reference_ : model_;
    return x - m.forward(x, condition, t);
  }

  void save_weights(const std::filesystem::path& file) const override {
    std::vector<at::Tensor> weights;
    for (const auto& p : model_.parameters()) weights.push_back(p.detach().clone());
    torch::save(weights, file.string());
  }

 private:
  static at::Tensor error(LinearDenoiser& m, const at::Tensor& x, const at::Tensor& c,
                          const at::Tensor& t, const at::Tensor& noise) {
    at::Tensor alpha_bar = at::cos(t * (std::numbers::pi / 2)).pow(2).unsqueeze(1);
    at::Tensor xt = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * noise;
    return (m.forward(xt, c, t) - noise).pow(2).mean(1);
  }

  std::int64_t dim_;
  double scale_;
  LinearDenoiser model_;
  LinearDenoiser reference_;
};

const OptionSpec kDatasetOptions[] = {
    {"n", OptionType::integer, "64", "Pairs."},
    {"dim", OptionType::integer, "4", "Vector size."},
    {"unlabelled_every", OptionType::integer, "0", "Every k-th pair has no human label; 0 = none."},
    {"tie_every", OptionType::integer, "0",
     "Every k-th pair (from pair 1) has a tied human label 0.5; 0 = none."},
    {"fail", OptionType::boolean, "false", "Throw when asked for data (grid failure tests)."},
};

class TestPairs final : public Dataset {
 public:
  explicit TestPairs(const Options& o)
      : n_(o.integer("n")), dim_(o.integer("dim")), unlabelled_every_(o.integer("unlabelled_every")),
        tie_every_(o.integer("tie_every")), fail_(o.boolean("fail")) {}

  PairDataset pairs(DatasetContext&) override {
    if (fail_) throw Error("test_pairs: deliberate failure (option fail = true)");
    at::Generator g = seeded(4242);
    PairDataset d;
    d.prompts = {"p0", "p1", "p2"};
    d.prompt_index = at::randint(3, {n_}, g, at::kLong);
    d.a = at::randn({n_, dim_}, g);
    d.b = at::randn({n_, dim_}, g);
    d.human_label = (d.a.sum(1) > d.b.sum(1)).to(at::kFloat);
    if (unlabelled_every_ > 0) {
      for (std::int64_t i = 0; i < n_; i += unlabelled_every_) d.human_label[i] = NAN;
    }
    if (tie_every_ > 0) {
      for (std::int64_t i = 1; i < n_; i += tie_every_) {
        if (!std::isnan(d.human_label[i].item<float>())) d.human_label[i] = 0.5f;
      }
    }
    d.fingerprint = "test_pairs:" + std::to_string(n_) + ":" + std::to_string(dim_) + ":" +
                    std::to_string(unlabelled_every_) + ":" + std::to_string(tie_every_);
    return d;
  }

  SampleDataset samples(DatasetContext&) override {
    if (fail_) throw Error("test_pairs: deliberate failure (option fail = true)");
    at::Generator g = seeded(4243);
    SampleDataset d;
    d.prompts = {"p0", "p1", "p2"};
    d.prompt_index = at::randint(3, {n_}, g, at::kLong);
    d.samples = at::randn({n_, dim_}, g) * 0.5 + 1.0;
    return d;
  }

 private:
  std::int64_t n_, dim_, unlabelled_every_, tie_every_;
  bool fail_;
};

const OptionSpec kLossOptions[] = {
    {"beta", OptionType::real, "10.0", "DPO temperature."},
    {"pool", OptionType::string, "\"labelled\"", "\"labelled\" or \"all\"."},
    {"use_annotator", OptionType::boolean, "false", "Targets of unlabelled pairs from ĝ."},
    {"nan_every", OptionType::integer, "0", "Every k-th compute() returns NaN; 0 = never."},
    {"odd_call_figure", OptionType::boolean, "false",
     "Odd-numbered compute() calls report a figure `odd_call` = their number, even ones none (a "
     "figure some micro-batches lack)."},
    {"sleep_ms", OptionType::integer, "0",
     "Each compute() first sleeps this long (a run slow enough for a test to stop it mid-way)."},
};

// DPO-like loss with a running state (calls, mean logit) so checkpoints must carry it.
class TestDpoLoss final : public Loss {
 public:
  explicit TestDpoLoss(const Options& o)
      : beta_(o.real("beta")), all_(o.string("pool") == "all"),
        use_annotator_(o.boolean("use_annotator")), nan_every_(o.integer("nan_every")),
        odd_call_figure_(o.boolean("odd_call_figure")), sleep_(o.integer("sleep_ms")) {
    if (o.string("pool") != "labelled" && !all_) o.fail("pool", "expected labelled or all");
  }
  PairPool pool() const override { return all_ ? PairPool::all : PairPool::labelled; }
  bool needs_annotator() const override { return use_annotator_; }

  LossResult compute(const PairTerms& t) override {
    std::this_thread::sleep_for(sleep_);
    ++calls_;
    at::Tensor logit = -beta_ * ((t.model_err_a - t.ref_err_a) - (t.model_err_b - t.ref_err_b));
    at::Tensor target = t.human_label;
    if (use_annotator_) target = at::where(t.is_labelled, t.human_label, t.annotator_prob);
    at::Tensor weight = at::logical_not(at::isnan(target)).to(at::kFloat);
    target = at::nan_to_num(target, 0.0);
    at::Tensor per = -(target * at::log_sigmoid(logit) + (1 - target) * at::log_sigmoid(-logit));
    at::Tensor loss = (per * weight).sum() / weight.sum().clamp_min(1.0);
    double mean_logit = logit.mean().item<double>();
    running_ = 0.9 * running_ + 0.1 * mean_logit;
    if (nan_every_ > 0 && calls_ % nan_every_ == 0) loss = loss * NAN;
    Figures figures = {{"mean_logit", mean_logit}, {"running_logit", running_}};
    if (odd_call_figure_ && calls_ % 2 == 1) figures.emplace_back("odd_call", calls_);
    return {loss, figures};
  }
  std::vector<double> state() const override { return {static_cast<double>(calls_), running_}; }
  void load_state(const std::vector<double>& s) override {
    calls_ = static_cast<std::int64_t>(s.at(0));
    running_ = s.at(1);
  }

 private:
  double beta_;
  bool all_, use_annotator_;
  std::int64_t nan_every_;
  bool odd_call_figure_;
  std::chrono::milliseconds sleep_;
  std::int64_t calls_ = 0;
  double running_ = 0.0;
};

const OptionSpec kAnnotatorOptions[] = {
    {"uses_labels", OptionType::boolean, "false", "Declare a dependency on the labelled set."},
    {"train_steps", OptionType::integer, "0", "Train a fresh backbone through the services first."},
};

class TestAnnotator final : public Annotator {
 public:
  explicit TestAnnotator(const Options& o)
      : uses_labels_(o.boolean("uses_labels")), train_steps_(o.integer("train_steps")) {}
  bool uses_labels() const override { return uses_labels_; }
  at::Tensor annotate(AnnotatorContext& c) override {
    if (c.backbone.model().parameters().front().device() != c.device) {
      throw Error("test_annotator: given device " + c.device.str() + ", the backbone is elsewhere");
    }
    at::Tensor shift = at::zeros({1});
    if (train_steps_ > 0) {
      auto backbone = c.services.fresh_backbone();
      Options loss_options;
      loss_options.set("beta", 5.0);
      auto loss = c.services.make_loss("test_dpo", loss_options);
      c.services.train(*backbone, *loss, c.data, c.is_labelled, at::Tensor(), train_steps_, c.seed);
      at::NoGradGuard no_grad;
      shift = backbone->model().parameters()[3].detach().sum().reshape({1}).to(at::kCPU);
    }
    return at::sigmoid(c.data.a.sum(1) - c.data.b.sum(1) + shift);
  }

 private:
  bool uses_labels_;
  std::int64_t train_steps_;
};

class TestMetric final : public Metric {
 public:
  explicit TestMetric(const Options&) {}
  Figures evaluate(MetricContext& c) override {
    double norm = 0.0;
    for (const auto& p : c.backbone.model().parameters()) norm += p.pow(2).sum().item<double>();
    double error = 0.0;
    if (c.data != nullptr) {
      at::Generator g = seeded(c.seed);
      PairBatch batch{c.data->a, c.data->b,
                      c.backbone.encode_prompts(c.data->prompts).index_select(0, c.data->prompt_index)};
      DenoisingErrors e = c.backbone.denoising_errors(batch, g, true);
      error = (e.model_a.mean() + e.model_b.mean()).item<double>() / 2;
    }
    // 1 when the metric was told the device the backbone trained on.
    const bool same_device = c.backbone.model().parameters().front().device() == c.device;
    return {{"test_weight_norm", std::sqrt(norm)}, {"test_error", error}, {"test_on_run_device", same_device ? 1.0 : 0.0}};
  }
};

}  // namespace

DEDPO_PLUGIN_LIBRARY(
    dedpo::describe<TestLinearBackbone>("test_linear", "1.0.0", "Test-only linear denoiser.",
                                        kBackboneOptions),
    dedpo::describe<TestPairs>("test_pairs", "1.0.0", "Test-only random pairs.", kDatasetOptions),
    dedpo::describe<TestDpoLoss>("test_dpo", "1.0.0", "Test-only DPO-like loss.", kLossOptions),
    dedpo::describe<TestAnnotator>("test_annotator", "1.0.0", "Test-only annotator.",
                                   kAnnotatorOptions),
    dedpo::describe<TestMetric>("test_metric", "1.0.0", "Test-only metric."))
