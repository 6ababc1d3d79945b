// dedpo_bench_dpo_step <unet config.json> [--latent N] [--pairs P] [--steps S] [--warmup W]
//                      [--threads T] [--beta B] [--checkpointing 0|1] [--compare-checkpointing]
//
// Times one Diffusion-DPO training step for a diffusers UNet2DConditionModel config, as the Python
// reference side does (../shared/bench/README.md): trainable UNet forward + backward on 2P noisy
// latents (both sides of P pairs, shared timestep and noise per pair), frozen reference forward
// on the same 2P, the DPO loss, gradient-norm clipping at 1.0 and an AdamW step. fp32, random
// weights and inputs (77-token conditioning; an SDXL-layout config, addition_embed_type "text_time",
// also gets random pooled text_embeds and the fixed time_ids (R, R, 0, 0, R, R), R = 8 · latent).
// --checkpointing 1 turns on the UNet's gradient checkpointing; --compare-checkpointing times the
// same steps without and with it and prints both side by side (its recomputation is not counted as
// work: GFLOP/s there is the rate of the same useful step). Prints the median ms/step, the peak RSS, the FLOPs
// of a step (counted per aten op: convolution, mm/addmm = linear, bmm = attention; a step is
// 3 forward-equivalents of training + 1 of reference) and the achieved GFLOP/s next to the
// machine's measured fp32 matmul rate (2048² × 2048²).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <ATen/core/grad_mode.h>
#include <malloc.h>
#include <unistd.h>
#include <torch/types.h>  // before clip_grad.h, which assumes it
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "dedpo/sd/schedulers.hpp"
#include "dedpo/sd/unet.hpp"

namespace {

struct FlopCount {
  double conv = 0, linear = 0, attention = 0;
  double total() const { return conv + linear + attention; }
};
thread_local FlopCount* g_count = nullptr;

double numel(at::IntArrayRef s) {
  double n = 1;
  for (int64_t d : s) n *= static_cast<double>(d);
  return n;
}

std::unique_ptr<at::ObserverContext> count_op(const at::RecordFunction& fn) {
  if (!g_count) return nullptr;
  const std::string name = fn.name();
  const auto inputs = fn.inputs();
  auto sizes = [&](std::size_t i) { return inputs[i].toTensor().sizes(); };
  if (name == "aten::convolution") {
    // input [N, C, H, W], weight [O, C/g, kh, kw], stride, padding, dilation, transposed, output_padding, groups
    const auto x = sizes(0), w = sizes(1);
    const auto stride = inputs[3].toIntVector(), padding = inputs[4].toIntVector(),
               dilation = inputs[5].toIntVector();
    double out_spatial = 1;
    for (std::size_t d = 0; d < 2; ++d) {
      out_spatial *= static_cast<double>((x[2 + d] + 2 * padding[d] - dilation[d] * (w[2 + d] - 1) - 1) / stride[d] + 1);
    }
    g_count->conv += 2.0 * static_cast<double>(x[0]) * static_cast<double>(w[0]) * out_spatial * numel(w.slice(1));
  } else if (name == "aten::mm") {
    const auto a = sizes(0), b = sizes(1);
    g_count->linear += 2.0 * a[0] * a[1] * static_cast<double>(b[1]);
  } else if (name == "aten::addmm") {
    const auto a = sizes(1), b = sizes(2);
    g_count->linear += 2.0 * a[0] * a[1] * static_cast<double>(b[1]);
  } else if (name == "aten::bmm") {
    const auto a = sizes(0), b = sizes(1);
    g_count->attention += 2.0 * a[0] * a[1] * static_cast<double>(a[2]) * b[2];
  } else if (name == "aten::baddbmm") {
    const auto a = sizes(1), b = sizes(2);
    g_count->attention += 2.0 * a[0] * a[1] * static_cast<double>(a[2]) * b[2];
  } else if (name == "aten::_scaled_dot_product_flash_attention" || name == "aten::_scaled_dot_product_efficient_attention" ||
             name == "aten::_scaled_dot_product_flash_attention_for_cpu") {
    // Fused attention (scaled_attention), q: [B, H, Sq, D], k: [B, H, Sk, D]: q·kᵀ and probs·v
    const auto q = sizes(0), k = sizes(1);
    g_count->attention += 4.0 * q[0] * q[1] * static_cast<double>(q[2]) * static_cast<double>(k[2]) * q[3];
  }
  return nullptr;
}

// FLOPs of one forward of `unet` on `batch` latents.
FlopCount count_forward(dedpo::sd::UNet2DConditionModel& unet, const at::Tensor& x, const at::Tensor& t,
                        const at::Tensor& context, const std::optional<dedpo::sd::UNetAddedCond>& added) {
  FlopCount count;
  at::NoGradGuard no_grad;
  auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(&count_op).needsInputs(true).scopes({at::RecordScope::FUNCTION}));
  g_count = &count;
  unet->forward(x, t, context, added);
  g_count = nullptr;
  at::removeCallback(handle);
  return count;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Resident set size now (/proc/self/statm), MiB.
double current_rss_mib() {
  long pages_total = 0, pages_resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(pages_resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// The process's peak resident set since the last reset_peak_rss() (VmHWM), MiB.
double peak_rss_mib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

// Sets the peak to the current RSS (Linux >= 4.0), after handing back what earlier steps freed, so
// that each configuration's peak is its own.
void reset_peak_rss() {
  malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";
}

double matmul_peak_gflops() {
  const at::Tensor a = at::randn({2048, 2048}), b = at::randn({2048, 2048});
  at::mm(a, b);
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    const double t0 = now_ms();
    at::Tensor c = at::mm(a, b);
    ms.push_back(now_ms() - t0);
  }
  return 2.0 * 2048.0 * 2048.0 * 2048.0 / (median(ms) * 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: dedpo_bench_dpo_step <unet config.json> [--latent N] [--pairs P] [--steps S] "
                 "[--warmup W] [--threads T] [--beta B] [--checkpointing 0|1] [--compare-checkpointing]\n";
    return 2;
  }
  const std::string config_path = argv[1];
  int64_t latent = 32, pairs = 1, steps = 5, warmup = 1, threads = 0, checkpointing = 0;
  double beta = 5000.0;
  bool compare_checkpointing = false;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--compare-checkpointing") {
      compare_checkpointing = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::cerr << "flag " << flag << " needs a value\n";
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "--latent") latent = std::stoll(value);
    else if (flag == "--pairs") pairs = std::stoll(value);
    else if (flag == "--steps") steps = std::stoll(value);
    else if (flag == "--warmup") warmup = std::stoll(value);
    else if (flag == "--threads") threads = std::stoll(value);
    else if (flag == "--beta") beta = std::stod(value);
    else if (flag == "--checkpointing") checkpointing = std::stoll(value);
    else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }
  try {
    if (threads > 0) at::set_num_threads(static_cast<int>(threads));
    at::manual_seed(0);
    const auto config = dedpo::sd::UNet2DConditionConfig::from_file(config_path);
    dedpo::sd::UNet2DConditionModel unet(config);
    dedpo::sd::UNet2DConditionModel reference(config);
    {
      at::NoGradGuard no_grad;
      auto src = unet->named_parameters();
      for (auto& item : reference->named_parameters()) item.value().copy_(src[item.key()]);
    }
    for (at::Tensor& p : reference->parameters()) p.set_requires_grad(false);
    reference->eval();
    int64_t n_params = 0;
    for (const at::Tensor& p : unet->parameters()) n_params += p.numel();

    dedpo::sd::SchedulerConfig scheduler_config;
    scheduler_config.beta_schedule = "scaled_linear";
    scheduler_config.beta_start = 0.00085;
    scheduler_config.beta_end = 0.012;
    const dedpo::sd::NoiseSchedule schedule(scheduler_config);

    const int64_t n = 2 * pairs;
    const at::Tensor a = at::randn({pairs, config.in_channels, latent, latent});
    const at::Tensor b = at::randn({pairs, config.in_channels, latent, latent});
    const at::Tensor context = at::randn({n, 77, config.cross_attention_dim.at(0)});
    // SDXL layout: pooled text embeddings and micro-conditioning, sized from the config.
    std::optional<dedpo::sd::UNetAddedCond> added;
    if (config.addition_embed_type == "text_time") {
      const int64_t pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim;
      const auto side = static_cast<float>(8 * latent);
      added = dedpo::sd::UNetAddedCond{at::randn({n, pooled}),
                                       at::tensor({side, side, 0.f, 0.f, side, side}).expand({n, 6})};
    }
    auto first = [](const std::optional<dedpo::sd::UNetAddedCond>& a) -> std::optional<dedpo::sd::UNetAddedCond> {
      if (!a) return std::nullopt;
      return dedpo::sd::UNetAddedCond{a->text_embeds.slice(0, 0, 1), a->time_ids.slice(0, 0, 1)};
    };
    torch::optim::AdamW optimizer(unet->parameters(), torch::optim::AdamWOptions(1e-5));

    auto step = [&] {
      const at::Tensor t = at::randint(0, scheduler_config.num_train_timesteps, {pairs}, at::kLong);
      const at::Tensor noise = at::randn({pairs, config.in_channels, latent, latent});
      const at::Tensor x0 = at::cat({a, b}), noise2 = at::cat({noise, noise}), t2 = at::cat({t, t});
      const at::Tensor noisy = schedule.add_noise(x0, noise2, t2);
      const at::Tensor err = (unet->forward(noisy, t2, context, added) - noise2).pow(2).mean({1, 2, 3});  // [2P]
      at::Tensor ref;
      {
        at::NoGradGuard no_grad;
        ref = (reference->forward(noisy, t2, context, added) - noise2).pow(2).mean({1, 2, 3});
      }
      const at::Tensor diff = (err.slice(0, 0, pairs) - ref.slice(0, 0, pairs)) -
                              (err.slice(0, pairs, n) - ref.slice(0, pairs, n));
      const at::Tensor loss = -at::log_sigmoid(-0.5 * beta * diff).mean();
      optimizer.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(unet->parameters(), 1.0);
      optimizer.step();
    };

    const double peak = matmul_peak_gflops();
    const at::Tensor t1 = at::full({1}, 500, at::kLong);
    const FlopCount one = count_forward(unet, at::randn({1, config.in_channels, latent, latent}), t1,
                                        context.slice(0, 0, 1), first(added));
    const FlopCount batch = count_forward(unet, at::randn({n, config.in_channels, latent, latent}),
                                          at::full({n}, 500, at::kLong), context, added);
    const double step_flops = 4.0 * batch.total();

    reset_peak_rss();
    const double setup_rss_mib = current_rss_mib();  // weights and reference, before grads and AdamW state
    struct Timing {
      std::string name;
      std::vector<double> ms;
      double peak_rss_mib = 0;
    };
    auto time_steps = [&](bool gradient_checkpointing) {
      unet->set_gradient_checkpointing(gradient_checkpointing);
      reset_peak_rss();
      Timing timing{gradient_checkpointing ? "checkpointed" : "plain"};
      for (int64_t i = 0; i < warmup; ++i) step();
      for (int64_t i = 0; i < steps; ++i) {
        const double t0 = now_ms();
        step();
        timing.ms.push_back(now_ms() - t0);
      }
      timing.peak_rss_mib = peak_rss_mib();
      return timing;
    };
    std::vector<Timing> runs;
    if (compare_checkpointing) {
      // Checkpointed first: what the plain steps freed could otherwise stay mapped and count as its peak.
      runs.push_back(time_steps(true));
      runs.insert(runs.begin(), time_steps(false));
    } else {
      runs.push_back(time_steps(checkpointing != 0));
    }

    std::printf("config            %s\n", config_path.c_str());
    std::printf("parameters        %lld\n", static_cast<long long>(n_params));
    std::printf("layout            %s\n", config.addition_embed_type == "text_time" ? "SDXL (text_time)" : "SD");
    std::printf("latent, pairs     %lldx%lld, P=%lld (2P=%lld images), threads %d\n", static_cast<long long>(latent),
                static_cast<long long>(latent), static_cast<long long>(pairs), static_cast<long long>(n),
                at::get_num_threads());
    std::printf("forward GFLOP, batch 1: %.3f (conv %.3f, linear %.3f, attention %.3f)\n", one.total() / 1e9,
                one.conv / 1e9, one.linear / 1e9, one.attention / 1e9);
    std::printf("step GFLOP        %.2f (4 x forward on 2P = %.2f)\n", step_flops / 1e9, batch.total() / 1e9);
    std::printf("fp32 matmul peak  %.1f GFLOP/s (2048^2 mm)\n", peak);
    std::printf("RSS before steps  %.1f MiB (weights and reference)\n", setup_rss_mib);
    // What the steps add beyond the model state: activations kept for the backward and temporaries.
    const double step_state_mib = 12.0 * static_cast<double>(n_params) / (1024.0 * 1024.0);  // grads, AdamW m, v
    auto row = [&](const char* label, const std::function<std::string(const Timing&)>& cell) {
      std::printf("%-28s", label);
      for (const Timing& run : runs) std::printf("%18s", cell(run).c_str());
      std::printf("\n");
    };
    auto fixed = [](double value, int decimals) {
      char text[32];
      std::snprintf(text, sizeof text, "%.*f", decimals, value);
      return std::string(text);
    };
    row("gradient checkpointing", [](const Timing& r) { return r.name; });
    row("median ms/step", [&](const Timing& r) { return fixed(median(r.ms), 1); });
    row("min / max ms/step", [&](const Timing& r) {
      return fixed(*std::min_element(r.ms.begin(), r.ms.end()), 0) + " / " +
             fixed(*std::max_element(r.ms.begin(), r.ms.end()), 0);
    });
    row("peak RSS MiB", [&](const Timing& r) { return fixed(r.peak_rss_mib, 1); });
    row("  - before, grads, AdamW", [&](const Timing& r) {  // activations and temporaries
      return fixed(r.peak_rss_mib - setup_rss_mib - step_state_mib, 1);
    });
    row("GFLOP/s (% of matmul peak)", [&](const Timing& r) {
      const double rate = step_flops / (median(r.ms) * 1e6);
      return fixed(rate, 1) + " (" + fixed(100.0 * rate / peak, 0) + "%)";
    });
  } catch (const std::exception& e) {
    std::cerr << "dedpo_bench_dpo_step: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
