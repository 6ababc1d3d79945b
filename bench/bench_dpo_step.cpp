// dedpo_bench_dpo_step <unet config.json> [--latent N] [--pairs P] [--steps S] [--warmup W]
//                      [--threads T] [--beta B] [--device cpu|cuda|cuda:N] [--dtype fp32|bf16]
//                      [--checkpointing 0|1] [--compare-checkpointing] [--lora-rank R] [--json]
//                      [--trace FILE]
//
// Times one Diffusion-DPO training step for a diffusers UNet2DConditionModel config, the same step
// as bench/dpo_step_diffusers.py (../shared/bench/README.md): trainable UNet forward + backward on
// 2P noisy latents (both sides of P pairs, shared timestep and noise per pair), frozen reference
// forward on the same 2P under inference mode, the DPO loss, gradient-norm clipping at 1.0 and an
// AdamW step, both as the trainer runs them (dedpo/host/optimizer.hpp: ATen's fused AdamW kernel,
// the clipping folded into it). Random weights and inputs (77-token conditioning; an SDXL-layout config,
// addition_embed_type "text_time", also gets random pooled text_embeds and the fixed time_ids
// (R, R, 0, 0, R, R), R = 8 · latent). --dtype bf16: autocast to bfloat16 around both forwards,
// the reference stored in bfloat16, the trainable UNet (or LoRA's adapters) in float32.
// --checkpointing 1 turns on the UNet's gradient checkpointing; --compare-checkpointing times the
// same steps without and with it and prints both side by side (its recomputation is not counted as
// work: GFLOP/s there is the rate of the same useful step). Prints the median ms/step (wall clock
// and CPU time of all threads), minor page faults per step, the peak
// memory (resident set on the CPU, the caching allocator's on an accelerator), the FLOPs of a step
// (counted per op: convolution, the 1×1 convolutions' bmm/baddbmm and dedpo_sd's pixel_linear, which
// also serves the transformers' linear projections, and im2col_conv = conv, mm/addmm, oneDNN's linear and dedpo_sd's
// cpu_matmul and cpu_linear_bf16 = linear, fused attention and dedpo_sd's small-head kernels = attention; a step is 3
// forward-equivalents of training + 1 of reference) and the achieved GFLOP/s next to the
// device's matmul rate in the compute dtype (the faster of at::mm and, in float32 on a CPU, oneDNN's
// matmul), measured before the models exist. --json prints one
// JSON line instead, for bench/dpo_step_side_by_side.py. --lora-rank R > 0 trains LoRA adapters of
// rank R (dedpo_sd's, beside the frozen weights) on the attention projections instead of the UNet;
// the reference is then the same UNet without them. --trace FILE runs one more step after the timed
// ones under LibTorch's profiler and writes its ops with their input shapes as a Chrome trace
// (chrome://tracing, Perfetto); bench/trace_summary.py sums it by op, caller or input shapes.
#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <malloc.h>
#include <sys/resource.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>
#include <utility>
#include <stdexcept>
#include <string>
#include <vector>

#include "dedpo/autocast.hpp"
#include "dedpo/host/accelerator.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/optimizer.hpp"
#include "dedpo/sd/lora.hpp"
#include "dedpo/sd/schedulers.hpp"
#include "dedpo/sd/unet.hpp"

namespace {

// The profiled ops as a Chrome trace: one complete event per op (its start and end matched by
// their RecordFunction handle on each thread), times in µs from the profiler's start, and the
// op's input shapes as "Input Dims" (bench/trace_summary.py --shapes groups by them).
void write_chrome_trace(const torch::autograd::profiler::thread_event_lists& threads, std::ostream& out) {
  using torch::autograd::profiler::LegacyEvent;
  const LegacyEvent* start = nullptr;
  for (const auto& events : threads) {
    for (const LegacyEvent& e : events) {
      if (start == nullptr && e.kindStr() == "mark" && std::string(e.name()) == "__start_profile") start = &e;
    }
  }
  nlohmann::json trace_events = nlohmann::json::array();
  for (const auto& events : threads) {
    std::unordered_map<at::RecordFunctionHandle, const LegacyEvent*> open;
    for (const LegacyEvent& e : events) {
      if (e.kindStr() == "push") {
        open[e.handle()] = &e;
      } else if (e.kindStr() == "pop") {
        const auto pushed = open.find(e.handle());
        if (pushed == open.end()) continue;  // begun before the profiler was
        const LegacyEvent& begin = *pushed->second;
        trace_events.push_back({{"name", begin.name()},
                                {"ph", "X"},
                                {"ts", start != nullptr ? start->cpuElapsedUs(begin) : 0.0},
                                {"dur", begin.cpuElapsedUs(e)},
                                {"pid", "CPU Functions"},
                                {"tid", begin.threadId()},
                                {"args", {{"Input Dims", begin.shapes()}}}});
        open.erase(pushed);
      }
    }
  }
  out << nlohmann::json{{"traceEvents", trace_events}}.dump() << '\n';
}

struct FlopCount {
  double conv = 0, linear = 0, attention = 0;
  double total() const { return conv + linear + attention; }
};
thread_local FlopCount* g_count = nullptr;
// The ops open on this thread, innermost last: under autocast an op with an autocast kernel of its
// own (baddbmm) records twice, the autocast wrapper and, nested in it, the kernel it redispatches
// to; only the outer call counts.
thread_local std::vector<std::string> g_open_ops;

double numel(at::IntArrayRef s) {
  double n = 1;
  for (int64_t d : s) n *= static_cast<double>(d);
  return n;
}

// A 2-D convolution's multiply-adds ×2: x [N, C, H, W], weight [O, C/g, kh, kw].
double convolution_flops(at::IntArrayRef x, at::IntArrayRef w, const std::vector<int64_t>& stride,
                         const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation) {
  double out_spatial = 1;
  for (std::size_t d = 0; d < 2; ++d) {
    out_spatial *= static_cast<double>((x[2 + d] + 2 * padding[d] - dilation[d] * (w[2 + d] - 1) - 1) / stride[d] + 1);
  }
  return 2.0 * static_cast<double>(x[0]) * static_cast<double>(w[0]) * out_spatial * numel(w.slice(1));
}

void close_op(const at::RecordFunction&, at::ObserverContext*) {
  if (g_count && !g_open_ops.empty()) g_open_ops.pop_back();
}

std::unique_ptr<at::ObserverContext> count_op(const at::RecordFunction& fn) {
  if (!g_count) return nullptr;
  const std::string name = fn.name();
  const bool nested_in_itself = !g_open_ops.empty() && g_open_ops.back() == name;
  g_open_ops.push_back(name);
  if (nested_in_itself) return nullptr;
  const auto inputs = fn.inputs();
  auto sizes = [&](std::size_t i) { return inputs[i].toTensor().sizes(); };
  if (name == "aten::convolution") {
    // input [N, C, H, W], weight [O, C/g, kh, kw], stride, padding, dilation, transposed, output_padding, groups
    g_count->conv += convolution_flops(sizes(0), sizes(1), inputs[3].toIntVector(), inputs[4].toIntVector(),
                                       inputs[5].toIntVector());
  } else if (name == "aten::mm") {
    const auto a = sizes(0), b = sizes(1);
    g_count->linear += 2.0 * a[0] * a[1] * static_cast<double>(b[1]);
  } else if (name == "aten::addmm") {
    const auto a = sizes(1), b = sizes(2);
    g_count->linear += 2.0 * a[0] * a[1] * static_cast<double>(b[1]);
  } else if (name == "dedpo::cpu_matmul") {
    // dedpo_sd's float32 kernel (the linear layers on AMD CPUs with AVX-512): a [M, K] · b [K, N];
    // inside pixel_linear or im2col_conv it is a convolution's, counted there.
    for (const char* convolution : {"dedpo::pixel_linear", "dedpo::im2col_conv"}) {
      if (std::find(g_open_ops.begin(), g_open_ops.end(), convolution) != g_open_ops.end()) return nullptr;
    }
    const auto a = sizes(0), b = sizes(1);
    g_count->linear += 2.0 * a[0] * a[1] * static_cast<double>(b[1]);
  } else if (name == "dedpo::pixel_linear") {
    // dedpo_sd's 1×1 convolutions and transformer projections (1×1 convolutions or linear layers)
    // on AMD CPUs: x [B, C, HW] or [B, HW, C], weight [O, C]
    g_count->conv += 2.0 * numel(sizes(0)) * static_cast<double>(sizes(1)[0]);
  } else if (name == "dedpo::im2col_conv") {
    // dedpo_sd's k×k convolutions at the deep levels on AMD CPUs: x [B, C, H, W], weight [O, C, k, k], stride, padding
    const int64_t stride = inputs[2].toInt(), padding = inputs[3].toInt();
    g_count->conv += convolution_flops(sizes(0), sizes(1), {stride, stride}, {padding, padding}, {1, 1});
  } else if (name == "dedpo::cpu_linear_bf16") {
    // dedpo_sd's bf16 linear layers (CPU bf16 autocast on AMD CPUs with AVX512-BF16): x [..., in] · W [out, in]ᵀ
    g_count->linear += 2.0 * numel(sizes(0)) * static_cast<double>(sizes(1)[0]);
  } else if (name == "mkldnn::_linear_pointwise") {
    // dedpo_sd's cpu_linear (AMD CPUs): x [N, in] · W [out, in]ᵀ
    const auto a = sizes(0), w = sizes(1);
    g_count->linear += 2.0 * a[0] * a[1] * static_cast<double>(w[0]);
  } else if (name == "aten::bmm") {
    // dedpo_sd's 1×1 convolutions on the CPU, [O, C] × [B, C, HW] (blocks.cpp: pointwise_conv)
    const auto a = sizes(0), b = sizes(1);
    g_count->conv += 2.0 * a[0] * a[1] * static_cast<double>(a[2]) * b[2];
  } else if (name == "aten::baddbmm") {
    const auto a = sizes(1), b = sizes(2);
    g_count->conv += 2.0 * a[0] * a[1] * static_cast<double>(a[2]) * b[2];
  } else if (name == "aten::_scaled_dot_product_flash_attention" || name == "aten::_scaled_dot_product_efficient_attention" ||
             name == "aten::_scaled_dot_product_cudnn_attention" || name == "aten::_scaled_dot_product_flash_attention_for_cpu") {
    // The fused kernels behind at::scaled_dot_product_attention, q: [B, H, Sq, D], k: [B, H, Sk, D]: q·kᵀ and probs·v
    const auto q = sizes(0), k = sizes(1);
    g_count->attention += 4.0 * q[0] * q[1] * static_cast<double>(q[2]) * static_cast<double>(k[2]) * q[3];
  } else if (name == "dedpo::small_head_attention") {
    // dedpo_sd's kernels for heads of 8 to 64 channels, q: [B, Sq, C], k: [B, Sk, C], C = H·D
    const auto q = sizes(0), k = sizes(1);
    g_count->attention += 4.0 * q[0] * q[1] * static_cast<double>(k[1]) * q[2];
  }
  return nullptr;
}

// FLOPs of one forward of `unet` on `batch` latents (under bf16 autocast when `bf16`: a bf16 base
// needs it, and the op count is the same).
FlopCount count_forward(dedpo::sd::UNet2DConditionModel& unet, const at::Tensor& x, const at::Tensor& t,
                        const at::Tensor& context, const std::optional<dedpo::sd::UNetAddedCond>& added, bool bf16) {
  FlopCount count;
  at::NoGradGuard no_grad;
  dedpo::AutocastRegion autocast(x.device().type(), bf16);
  auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(&count_op, &close_op).needsInputs(true).scopes({at::RecordScope::FUNCTION}));
  g_count = &count;
  g_open_ops.clear();
  unet->forward(x, t, context, added);
  g_count = nullptr;
  at::removeCallback(handle);
  return count;
}

// Median; for an even count the mean of the two middle values.
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t mid = v.size() / 2;
  return v.size() % 2 ? v[mid] : 0.5 * (v[mid - 1] + v[mid]);
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Waits for the device's queued work, so that a wall-clock interval covers it.
void synchronize(const at::Device& device) {
  if (!device.is_cpu()) at::accelerator::synchronizeDevice(device.index());
}

// Peak memory since the last reset_peak_memory(), MiB: the process's resident set (VmHWM) on the
// CPU, the caching allocator's allocated bytes on an accelerator.
double peak_memory_mib(const at::Device& device) {
  if (!device.is_cpu()) {
    const auto stats = at::accelerator::getDeviceStats(device.index());
    const auto aggregate = static_cast<std::size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    return static_cast<double>(stats.allocated_bytes[aggregate].peak) / (1024.0 * 1024.0);
  }
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  throw std::runtime_error("no VmHWM in /proc/self/status");
}

// Sets the peak to the current use (clear_refs needs Linux >= 4.0), after handing back what earlier
// steps freed, so that each configuration's peak is its own.
void reset_peak_memory(const at::Device& device) {
  if (!device.is_cpu()) {
    at::accelerator::resetPeakStats(device.index());
    return;
  }
  malloc_trim(0);
  std::ofstream("/proc/self/clear_refs") << "5";
}

// Median rate over 10 runs of a square matmul in the compute dtype, GFLOP/s: at::mm, and on a CPU
// in float32 also oneDNN's matmul (onednn_matmul_transposed, what the UNets' linear layers run on
// AMD CPUs, where ATen's MKL path reaches about half of it). The peak is the faster of the two.
struct MatmulPeak {
  double gflops = 0;
  double aten_mm_gflops = 0;
  double onednn_gflops = 0;  // 0: not measured
};

MatmulPeak matmul_peak_gflops(const at::Device& device, at::ScalarType dtype) {
  const int64_t size = device.is_cpu() ? 2048 : 8192;
  const auto options = at::TensorOptions().device(device).dtype(dtype);
  const at::Tensor a = at::randn({size, size}, options), b = at::randn({size, size}, options);
  const auto n = static_cast<double>(size);
  auto rate = [&](const std::function<at::Tensor()>& matmul) {
    matmul();
    synchronize(device);
    std::vector<double> ms;
    for (int i = 0; i < 10; ++i) {
      const double t0 = now_ms();
      matmul();
      synchronize(device);
      ms.push_back(now_ms() - t0);
    }
    return 2.0 * n * n * n / (median(ms) * 1e6);
  };
  MatmulPeak peak;
  peak.aten_mm_gflops = rate([&] { return at::mm(a, b); });
  if (device.is_cpu() && dtype == at::kFloat && at::hasMKLDNN()) {
    peak.onednn_gflops = rate([&] { return dedpo::onednn_matmul_transposed(a, b); });
  }
  peak.gflops = std::max(peak.aten_mm_gflops, peak.onednn_gflops);
  return peak;
}

// The trainer's default LoRA targets (lora_targets): the attention projections.
const std::string kLoraTargets[] = {"to_q", "to_k", "to_v", "to_out.0"};

// The trainable side and the frozen reference. Full fine-tuning: a float32 UNet and a frozen copy
// (bfloat16 under --dtype bf16). LoRA: one frozen UNet (bfloat16 under --dtype bf16) with float32
// adapters on its attention projections, the trainer's default targets; the reference is the same
// UNet with no adapter active.
struct Models {
  dedpo::sd::UNet2DConditionModel unet{nullptr};
  dedpo::sd::UNet2DConditionModel reference{nullptr};
  dedpo::sd::LoraAdapters adapters;  // empty for full fine-tuning
  std::vector<at::Tensor> trainable;
};

Models full_models(const dedpo::sd::UNet2DConditionConfig& config, const at::Device& device, bool bf16) {
  Models m{dedpo::sd::UNet2DConditionModel(config), dedpo::sd::UNet2DConditionModel(config), {}, {}};
  {
    at::NoGradGuard no_grad;
    auto src = m.unet->named_parameters();
    for (auto& item : m.reference->named_parameters()) item.value().copy_(src[item.key()]);
  }
  for (at::Tensor& p : m.reference->parameters()) p.set_requires_grad(false);
  m.reference->eval();
  m.unet->to(device);
  m.reference->to(device, bf16 ? at::kBFloat16 : at::kFloat);
  m.trainable = m.unet->parameters();
  return m;
}

Models lora_models(const dedpo::sd::UNet2DConditionConfig& config, int64_t rank, const at::Device& device, bool bf16) {
  Models m{dedpo::sd::UNet2DConditionModel(config), nullptr, {}, {}};
  for (at::Tensor& p : m.unet->parameters()) p.set_requires_grad(false);
  m.unet->to(device, bf16 ? at::kBFloat16 : at::kFloat);
  m.reference = m.unet;
  const auto on_device = at::TensorOptions().device(device);
  for (const auto& item : m.unet->named_modules("", /*include_self=*/false)) {
    const std::string& name = item.key();
    const bool target = std::any_of(std::begin(kLoraTargets), std::end(kLoraTargets), [&](const std::string& t) {
      return name.size() > t.size() && name.compare(name.size() - t.size(), t.size(), t) == 0 &&
             name[name.size() - t.size() - 1] == '.';
    });
    auto linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(item.value());
    if (!target || !linear) continue;
    const int64_t out = linear->weight.size(0), in = linear->weight.size(1);
    // B = 0 as at the start of training; A random, so that B gets a gradient.
    at::Tensor down = (at::randn({rank, in}, on_device) / std::sqrt(static_cast<double>(in))).requires_grad_();
    at::Tensor up = at::zeros({out, rank}, on_device).requires_grad_();
    m.adapters.add(*linear, {down, up, 1.0});
  }
  if (m.adapters.empty()) throw std::runtime_error("--lora-rank: the UNet has no attention projection to adapt");
  m.trainable = m.adapters.parameters();
  return m;
}

struct Options {
  std::string config_path;
  int64_t latent = 32, pairs = 1, steps = 5, warmup = 1, threads = 0, lora_rank = 0;
  double beta = 5000.0;
  std::string device = "cpu", dtype = "fp32", trace_path;
  bool checkpointing = false, compare_checkpointing = false, json = false;
};

const char* const kUsage =
    "usage: dedpo_bench_dpo_step <unet config.json> [--latent N] [--pairs P] [--steps S] [--warmup W] "
    "[--threads T] [--beta B] [--device cpu|cuda|cuda:N] [--dtype fp32|bf16] [--checkpointing 0|1] "
    "[--compare-checkpointing] [--lora-rank R] [--json] [--trace FILE]";

int64_t positive(const std::string& flag, const std::string& value, int64_t minimum) {
  std::size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || n < minimum) {
    throw std::invalid_argument(flag + " expects an integer >= " + std::to_string(minimum) + ", got '" + value + "'");
  }
  return n;
}

Options parse(int argc, char** argv) {
  if (argc < 2) throw std::invalid_argument("missing the UNet config.json");
  Options o;
  o.config_path = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--compare-checkpointing") {
      o.compare_checkpointing = true;
      continue;
    }
    if (flag == "--json") {
      o.json = true;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument("flag " + flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--latent") o.latent = positive(flag, value, 1);
    else if (flag == "--pairs") o.pairs = positive(flag, value, 1);
    else if (flag == "--steps") o.steps = positive(flag, value, 1);
    else if (flag == "--warmup") o.warmup = positive(flag, value, 0);
    else if (flag == "--threads") o.threads = positive(flag, value, 0);
    else if (flag == "--beta") o.beta = std::stod(value);
    else if (flag == "--device") o.device = value;
    else if (flag == "--dtype") o.dtype = value;
    else if (flag == "--checkpointing") o.checkpointing = positive(flag, value, 0) != 0;
    else if (flag == "--lora-rank") o.lora_rank = positive(flag, value, 0);
    else if (flag == "--trace") o.trace_path = value;
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (o.dtype != "fp32" && o.dtype != "bf16") throw std::invalid_argument("--dtype expects fp32 or bf16, got '" + o.dtype + "'");
  if (o.json && o.compare_checkpointing) {
    throw std::invalid_argument("--json reports one configuration: use --checkpointing 0|1, not --compare-checkpointing");
  }
  return o;
}

struct Timing {
  std::string name;
  std::vector<double> ms;
  std::vector<double> cpu_ms;  // user + system time of all threads: robust to a loaded machine
  double minor_faults_per_step = 0;
  double peak_mib = 0;
};

// This process's CPU time (user + system, all threads), ms, and minor page faults so far.
std::pair<double, double> cpu_ms_and_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto ms = [](const timeval& t) { return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_usec) / 1e3; };
  return {ms(usage.ru_utime) + ms(usage.ru_stime), static_cast<double>(usage.ru_minflt)};
}

void print_table(const Options& o, const dedpo::sd::UNet2DConditionConfig& config, int64_t n_params,
                 const FlopCount& one, double step_flops, const MatmulPeak& peak, double setup_mib,
                 const std::vector<Timing>& runs, const at::Device& device) {
  const int64_t n = 2 * o.pairs;
  std::printf("config            %s\n", o.config_path.c_str());
  std::printf("parameters        %lld\n", static_cast<long long>(n_params));
  std::printf("layout            %s\n", config.addition_embed_type == "text_time" ? "SDXL (text_time)" : "SD");
  std::printf("device, dtype     %s, %s, threads %d\n", device.str().c_str(), o.dtype.c_str(), at::get_num_threads());
  std::printf("compute           %s\n", dedpo::compute_path(device, o.dtype == "bf16").description.c_str());
  std::printf("allocator         %s\n", dedpo::describe(dedpo::current_allocator_policy()).c_str());
  std::printf("latent, pairs     %lldx%lld, P=%lld (2P=%lld images)\n", static_cast<long long>(o.latent),
              static_cast<long long>(o.latent), static_cast<long long>(o.pairs), static_cast<long long>(n));
  std::printf("forward GFLOP, batch 1: %.3f (conv %.3f, linear %.3f, attention %.3f)\n", one.total() / 1e9,
              one.conv / 1e9, one.linear / 1e9, one.attention / 1e9);
  std::printf("step GFLOP        %.2f (4 x forward on 2P)\n", step_flops / 1e9);
  std::printf("%s matmul peak  %.1f GFLOP/s (median of 10, before the models were built", o.dtype.c_str(), peak.gflops);
  if (peak.onednn_gflops > 0) {
    std::printf("; at::mm %.1f, oneDNN %.1f", peak.aten_mm_gflops, peak.onednn_gflops);
  }
  std::printf(")\n");
  std::printf("memory before steps %.1f MiB (weights and reference)\n", setup_mib);
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
  // What the steps add beyond the model state: activations kept for the backward and temporaries.
  const double step_state_mib = 12.0 * static_cast<double>(n_params) / (1024.0 * 1024.0);  // grads, AdamW m, v
  row("gradient checkpointing", [](const Timing& r) { return r.name; });
  row("median ms/step", [&](const Timing& r) { return fixed(median(r.ms), 1); });
  row("min / max ms/step", [&](const Timing& r) {
    return fixed(*std::min_element(r.ms.begin(), r.ms.end()), 0) + " / " +
           fixed(*std::max_element(r.ms.begin(), r.ms.end()), 0);
  });
  row("median CPU ms/step", [&](const Timing& r) { return fixed(median(r.cpu_ms), 1); });
  row("minor page faults/step", [&](const Timing& r) { return fixed(r.minor_faults_per_step, 0); });
  row("peak memory MiB", [&](const Timing& r) { return fixed(r.peak_mib, 1); });
  row("  - before, grads, AdamW", [&](const Timing& r) { return fixed(r.peak_mib - setup_mib - step_state_mib, 1); });
  row("GFLOP/s (% of matmul peak)", [&](const Timing& r) {
    const double rate = step_flops / (median(r.ms) * 1e6);
    return fixed(rate, 1) + " (" + fixed(100.0 * rate / peak.gflops, 0) + "%)";
  });
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    dedpo::apply_allocator_policy();  // as the CLI does: what a user gets
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "dedpo_bench_dpo_step: " << e.what() << "\n" << kUsage << "\n";
    return 2;
  }
  try {
    if (o.threads > 0) at::set_num_threads(static_cast<int>(o.threads));
    at::Device device(o.device);
    if (!device.is_cpu() && !device.has_index()) device.set_index(0);  // the accelerator calls take an index
    if (device.is_cuda() && !at::hasCUDA()) {
      throw std::runtime_error("--device " + o.device + ": this LibTorch sees no CUDA device");
    }
    std::ofstream trace;  // opened first: a path that cannot be written fails before minutes of timing
    if (!o.trace_path.empty()) {
      trace.open(o.trace_path);
      if (!trace) throw std::runtime_error("--trace: cannot write " + o.trace_path);
    }
    const bool bf16 = o.dtype == "bf16";
    const MatmulPeak matmul_peak = matmul_peak_gflops(device, bf16 ? at::kBFloat16 : at::kFloat);

    at::manual_seed(0);
    const auto config = dedpo::sd::UNet2DConditionConfig::from_file(o.config_path);
    Models models = o.lora_rank > 0 ? lora_models(config, o.lora_rank, device, bf16) : full_models(config, device, bf16);
    dedpo::sd::UNet2DConditionModel& unet = models.unet;
    dedpo::sd::UNet2DConditionModel& reference = models.reference;
    int64_t n_params = 0;
    for (const at::Tensor& p : models.trainable) n_params += p.numel();

    dedpo::sd::SchedulerConfig scheduler_config;
    scheduler_config.beta_schedule = "scaled_linear";
    scheduler_config.beta_start = 0.00085;
    scheduler_config.beta_end = 0.012;
    const dedpo::sd::NoiseSchedule schedule(scheduler_config);

    const int64_t pairs = o.pairs, n = 2 * pairs, latent = o.latent;
    const auto on_device = at::TensorOptions().device(device);
    const at::Tensor a = at::randn({pairs, config.in_channels, latent, latent}, on_device);
    const at::Tensor b = at::randn({pairs, config.in_channels, latent, latent}, on_device);
    const at::Tensor context = at::randn({n, 77, config.cross_attention_dim.at(0)}, on_device);
    // SDXL layout: pooled text embeddings and micro-conditioning, sized from the config.
    std::optional<dedpo::sd::UNetAddedCond> added;
    if (config.addition_embed_type == "text_time") {
      const int64_t pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim;
      const auto side = static_cast<float>(8 * latent);
      added = dedpo::sd::UNetAddedCond{at::randn({n, pooled}, on_device),
                                       at::tensor({side, side, 0.f, 0.f, side, side}).to(device).expand({n, 6})};
    }
    auto first = [](const std::optional<dedpo::sd::UNetAddedCond>& c) -> std::optional<dedpo::sd::UNetAddedCond> {
      if (!c) return std::nullopt;
      return dedpo::sd::UNetAddedCond{c->text_embeds.slice(0, 0, 1), c->time_ids.slice(0, 0, 1)};
    };
    // The trainer's optimiser and clipping (dedpo/host/optimizer.hpp), with torch.optim.AdamW's
    // defaults as on the diffusers side.
    dedpo::TrainSettings optimizer_settings;
    optimizer_settings.lr = 1e-5;
    optimizer_settings.weight_decay = 1e-2;
    optimizer_settings.max_grad_norm = 1.0;
    const std::unique_ptr<dedpo::Optimizer> optimizer = dedpo::make_optimizer(models.trainable, optimizer_settings);

    auto step = [&] {
      const at::Tensor t = at::randint(0, scheduler_config.num_train_timesteps, {pairs}, on_device.dtype(at::kLong));
      const at::Tensor noise = at::randn({pairs, config.in_channels, latent, latent}, on_device);
      const at::Tensor x0 = at::cat({a, b}), noise2 = at::cat({noise, noise}), t2 = at::cat({t, t});
      const at::Tensor noisy = schedule.add_noise(x0, noise2, t2);
      at::Tensor pred;
      {
        dedpo::AutocastRegion autocast(device.type(), bf16);
        dedpo::sd::ActiveAdapters adapters(&models.adapters);
        pred = unet->forward(noisy, t2, context, added);
      }
      const at::Tensor err = (pred.to(at::kFloat) - noise2).pow(2).mean({1, 2, 3});  // [2P]
      at::Tensor ref;
      {
        c10::InferenceMode inference;
        dedpo::AutocastRegion autocast(device.type(), bf16);
        ref = (reference->forward(noisy, t2, context, added).to(at::kFloat) - noise2).pow(2).mean({1, 2, 3});
      }
      const at::Tensor diff = (err.slice(0, 0, pairs) - ref.slice(0, 0, pairs)) -
                              (err.slice(0, pairs, n) - ref.slice(0, pairs, n));
      const at::Tensor loss = -at::log_sigmoid(-0.5 * o.beta * diff).mean();
      for (at::Tensor& p : models.trainable) p.mutable_grad().reset();
      loss.backward();
      const double grad_norm = dedpo::gradient_norm(models.trainable);
      optimizer->step(optimizer_settings.lr, dedpo::clipping_divisor(grad_norm, optimizer_settings.max_grad_norm));
    };

    const at::Tensor t500 = at::full({n}, 500, on_device.dtype(at::kLong));
    const FlopCount one = count_forward(unet, at::randn({1, config.in_channels, latent, latent}, on_device),
                                        t500.slice(0, 0, 1), context.slice(0, 0, 1), first(added), bf16);
    const FlopCount batch = count_forward(unet, at::randn({n, config.in_channels, latent, latent}, on_device), t500,
                                          context, added, bf16);
    // Full fine-tuning: forward, backward to inputs and to weights (2 forwards), reference. LoRA:
    // the backward computes no gradient of the frozen weights, one forward less.
    const double step_flops = (o.lora_rank > 0 ? 3.0 : 4.0) * batch.total();

    reset_peak_memory(device);
    const double setup_mib =
        device.is_cpu() ? static_cast<double>(dedpo::resident_bytes()) / (1024.0 * 1024.0) : peak_memory_mib(device);
    auto time_steps = [&](bool gradient_checkpointing) {
      unet->set_gradient_checkpointing(gradient_checkpointing);
      reset_peak_memory(device);
      Timing timing{gradient_checkpointing ? "checkpointed" : "plain"};
      for (int64_t i = 0; i < o.warmup; ++i) step();
      for (int64_t i = 0; i < o.steps; ++i) {
        synchronize(device);
        const double t0 = now_ms();
        const auto [cpu0, faults0] = cpu_ms_and_faults();
        step();
        synchronize(device);
        timing.ms.push_back(now_ms() - t0);
        const auto [cpu1, faults1] = cpu_ms_and_faults();
        timing.cpu_ms.push_back(cpu1 - cpu0);
        timing.minor_faults_per_step += (faults1 - faults0) / static_cast<double>(o.steps);
      }
      timing.peak_mib = peak_memory_mib(device);
      return timing;
    };
    std::vector<Timing> runs;
    if (o.compare_checkpointing) {
      // Checkpointed first: what the plain steps freed could otherwise stay mapped and count as its peak.
      runs.push_back(time_steps(true));
      runs.insert(runs.begin(), time_steps(false));
    } else {
      runs.push_back(time_steps(o.checkpointing));
    }
    if (trace.is_open()) {
      // LibTorch's legacy CPU profiler with input shapes (Kineto's would also print a failed GPU
      // query as an ERROR on every machine without one).
      torch::autograd::profiler::enableProfilerLegacy(
          torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU, /*report_input_shapes=*/true));
      step();
      synchronize(device);
      write_chrome_trace(torch::autograd::profiler::disableProfilerLegacy(), trace);
      if (!trace.flush()) throw std::runtime_error("--trace: writing " + o.trace_path + " failed");
    }

    if (!o.json) {
      print_table(o, config, n_params, one, step_flops, matmul_peak, setup_mib, runs, device);
      if (!o.trace_path.empty()) std::printf("trace             %s (one more step, not timed)\n", o.trace_path.c_str());
      return 0;
    }
    nlohmann::json out = {{"side", "dedpo"},
                          {"torch", TORCH_VERSION},
                          {"device", device.str()},
                          {"compute", dedpo::compute_path(device, bf16).description},
                          {"allocator", dedpo::describe(dedpo::current_allocator_policy())},
                          {"threads", at::get_num_threads()},
                          {"parameters", n_params},
                          {"matmul_peak_gflops", matmul_peak.gflops},
                          {"matmul_aten_mm_gflops", matmul_peak.aten_mm_gflops},
                          {"matmul_onednn_gflops", matmul_peak.onednn_gflops},
                          {"step_gflop", step_flops / 1e9},
                          {"ms", runs.back().ms},
                          {"cpu_ms", runs.back().cpu_ms},
                          {"minor_faults_per_step", runs.back().minor_faults_per_step},
                          {"peak_mib", runs.back().peak_mib}};
    std::cout << out.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "dedpo_bench_dpo_step: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
