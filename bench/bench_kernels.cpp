// dedpo_bench_kernels [--batch B] [--threads T] [--reps N]
//
// Times dedpo_sd's CPU kernels against the ATen ops diffusers reaches on the same torch, on the
// shapes of unet_sd15_small and unet_sdxl_small at 32×32 latents (../shared/bench), the two
// implementations alternating rep by rep; forward under inference mode (the frozen reference) and
// forward + backward (the trainable UNet); prints the median ms.
// - Small-head attention (dedpo/sd/small_head_attention.hpp) against
//   at::scaled_dot_product_attention (F.scaled_dot_product_attention): unet_sd15_small's 8 heads at
//   every level, self-attention over 1024, 256 and 64 pixels (heads of 8, 16 and 32 channels), and
//   unet_sdxl_small's heads of 64 channels over 256 and 64 pixels, each also as cross-attention over
//   77 text tokens. Also GFLOP/s, 4·B·Sq·Sk·C per forward, twice that for the backward.
// - GEGLU (dedpo/sd/geglu.hpp) against chunk, gelu and product (diffusers' GEGLU): the
//   feed-forward layers at 32×32, 16×16 and 8×8 (both UNets share the last two).
// - The float32 linear layers' three products (dedpo/sd/cpu_matmul.hpp) against oneDNN's, which
//   they took before (dedpo/host/accelerator.hpp: onednn_matmul_transposed): x·Wᵀ + b, dy·W and
//   dyᵀ·x on the feed-forward, attention and cross-attention shapes of both UNets (oneDNN gets dyᵀ
//   ready-made, cpu_matmul reads it in place). Also GFLOP/s.
// - 1×1 convolutions (dedpo/sd/pixel_linear.hpp) against the batched matmul dedpo ran before
//   (baddbmm over [O, C] × [B, C, HW]): unet_sd15_small's projections and resnet shortcuts, from
//   channels first to channels first, and into tokens against baddbmm plus the permuted copy.
// - The linear layers under bf16 autocast (dedpo/sd/cpu_linear.hpp: cpu_linear_bf16, VDPBF16PS)
//   against ATen's autocast linear (oneDNN's bf16 matmul), forward and forward + backward, each rep
//   in its own autocast region as a training step's forward is (the weight's bf16 cast is not
//   reused across reps). Where the CPU has AVX512-BF16 (AMD CPUs).
// - 3×3 convolutions (dedpo/sd/im2col_conv.hpp) against ATen's (oneDNN's, with its weight reorder
//   at every call) on the levels of unet_sd15_small and unet_sdxl_small: where im2col_conv_applies
//   picks the unfolded product (yes/no), and the shapes just outside that rule.
// The cpu_matmul, pixel_linear and im2col tables need cpu_matmul's kernel (AVX-512F); elsewhere they are left out.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "dedpo/sd/blocks.hpp"
#include "dedpo/sd/geglu.hpp"
#include "dedpo/sd/small_head_attention.hpp"
#include "dedpo/host/accelerator.hpp"
#include "dedpo/autocast.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/sd/cpu_linear.hpp"
#include "dedpo/sd/cpu_matmul.hpp"
#include "dedpo/sd/im2col_conv.hpp"
#include "dedpo/sd/pixel_linear.hpp"

namespace {

struct Shape {
  const char* what;
  int64_t queries, keys, channels, heads;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double time_ms(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// The median ms of two implementations of one pass, run alternately rep by rep after two warm-up
// reps: the forward under inference mode (the frozen reference), or forward and backward of
// sum(output · upstream) (the trainable UNet).
std::pair<double, double> alternating_medians(int reps, bool backward, const at::Tensor& upstream,
                                              const std::function<at::Tensor(int)>& implementation) {
  std::vector<double> ms[2];
  for (int rep = -2; rep < reps; ++rep) {
    for (int impl = 0; impl < 2; ++impl) {
      const double t = time_ms([&] {
        if (backward) {
          (implementation(impl) * upstream).sum().backward();
        } else {
          c10::InferenceMode inference;
          implementation(impl);
        }
      });
      if (rep >= 0) ms[impl].push_back(t);
    }
  }
  return {median(ms[0]), median(ms[1])};
}

// at::scaled_dot_product_attention on [B, S, C] inputs, as multi_head_attention calls it.
at::Tensor aten_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads) {
  auto split = [heads](const at::Tensor& x) {
    return x.reshape({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2);  // [B, H, S, D]
  };
  return dedpo::sd::scaled_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(q.sizes());
}

int parse_int(const char* flag, const char* value) {
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || n <= 0) {
    std::fprintf(stderr, "dedpo_bench_kernels: %s expects a positive integer, got '%s'\n", flag, value);
    std::exit(2);
  }
  return static_cast<int>(n);
}

void bench_attention(int batch, int reps) {
  const std::vector<Shape> shapes = {
      {"sd15_small self, 32×32", 1024, 1024, 64, 8}, {"sd15_small cross, 32×32", 1024, 77, 64, 8},
      {"sd15_small self, 16×16", 256, 256, 128, 8},  {"sd15_small cross, 16×16", 256, 77, 128, 8},
      {"sd15_small self, 8×8", 64, 64, 256, 8},      {"sd15_small cross, 8×8", 64, 77, 256, 8},
      {"sdxl_small self, 16×16", 256, 256, 128, 2},  {"sdxl_small cross, 16×16", 256, 77, 128, 2},
      {"sdxl_small self, 8×8", 64, 64, 256, 4},      {"sdxl_small cross, 8×8", 64, 77, 256, 4}};
  if (const at::Tensor x = at::zeros({1, 1, 64}); !dedpo::sd::small_head_attention_applies(x, x, x, 8)) {
    std::fprintf(stderr, "dedpo_bench_kernels: this CPU has no AVX-512F, so the small-head kernels never run here\n");
    return;
  }
  std::printf("| call | B×Sq×Sk, H×D | pass | aten ms | small-head ms | ratio | aten GFLOP/s | small-head GFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    if (const at::Tensor x = at::zeros({1, 1, s.channels}); !dedpo::sd::small_head_attention_applies(x, x, x, s.heads)) {
      continue;
    }
    at::manual_seed(0);
    const at::Tensor q = at::randn({batch, s.queries, s.channels}).requires_grad_();
    const at::Tensor k = at::randn({batch, s.keys, s.channels}).requires_grad_();
    const at::Tensor v = at::randn({batch, s.keys, s.channels}).requires_grad_();
    const at::Tensor upstream = at::randn({batch, s.queries, s.channels});
    const double forward_flops = 4.0 * batch * s.queries * static_cast<double>(s.keys) * s.channels;
    using Attention = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
    const Attention implementations[2] = {&aten_attention, &dedpo::sd::small_head_attention};
    for (const bool backward : {false, true}) {
      const auto [aten, small] = alternating_medians(reps, backward, upstream, [&](int impl) { return implementations[impl](q, k, v, s.heads); });
      const double flops = backward ? 3.0 * forward_flops : forward_flops;
      std::printf("| %s | %d×%lld×%lld, %lld×%lld | %s | %.2f | %.2f | %.2f | %.0f | %.0f |\n", s.what, batch,
                  static_cast<long long>(s.queries), static_cast<long long>(s.keys), static_cast<long long>(s.heads),
                  static_cast<long long>(s.channels / s.heads), backward ? "fwd+bwd" : "fwd", aten, small,
                  small / aten, flops / (aten * 1e6), flops / (small * 1e6));
    }
  }
}

// diffusers' GEGLU on [B, tokens, 2·n]: value · gelu(gate).
at::Tensor aten_geglu(const at::Tensor& x) {
  const auto halves = x.chunk(2, -1);
  return halves[0] * at::gelu(halves[1]);
}

void bench_geglu(int batch, int reps) {
  if (!dedpo::sd::geglu_applies(at::zeros({2}))) {
    std::fprintf(stderr, "dedpo_bench_kernels: this CPU has no AVX-512F, so the GEGLU kernel never runs here\n");
    return;
  }
  struct Level {
    const char* what;
    int64_t tokens, inner;
  };
  std::printf("\n| GEGLU | B×tokens×2·inner | pass | aten ms | dedpo_sd ms | ratio |\n|---|---|---|---|---|---|\n");
  for (const Level& level : {Level{"32×32", 1024, 256}, Level{"16×16", 256, 512}, Level{"8×8", 64, 1024}}) {
    at::manual_seed(0);
    const at::Tensor x = at::randn({batch, level.tokens, 2 * level.inner}).requires_grad_();
    const at::Tensor upstream = at::randn({batch, level.tokens, level.inner});
    using Geglu = at::Tensor (*)(const at::Tensor&);
    const Geglu implementations[2] = {&aten_geglu, &dedpo::sd::geglu};
    for (const bool backward : {false, true}) {
      const auto [aten, fused] = alternating_medians(reps, backward, upstream, [&](int impl) { return implementations[impl](x); });
      std::printf("| %s | %d×%lld×%lld | %s | %.3f | %.3f | %.2f |\n", level.what, batch,
                  static_cast<long long>(level.tokens), static_cast<long long>(2 * level.inner),
                  backward ? "fwd+bwd" : "fwd", aten, fused, fused / aten);
    }
  }
}

// Rows = batch × tokens; in, out: the layer's features. The linear layers of both UNets: the
// attention and feed-forward layers at every level, and the cross-attention's keys and values.
struct LinearShape {
  const char* what;
  int64_t tokens, in, out;
};
constexpr LinearShape kLinearShapes[] = {
    {"sd15_small 32×32 attention", 1024, 64, 64}, {"sd15_small 32×32 GEGLU", 1024, 64, 512},
    {"16×16 attention", 256, 128, 128},           {"16×16 GEGLU", 256, 128, 1024},
    {"16×16 feed-forward out", 256, 512, 128},    {"8×8 attention", 64, 256, 256},
    {"8×8 GEGLU", 64, 256, 2048},                 {"8×8 feed-forward out", 64, 1024, 256},
    {"sdxl_small cross-attention k, v", 77, 512, 256}};

void bench_linear(int batch, int reps) {
  std::printf("\n| linear | rows × in → out | product | oneDNN ms | cpu_matmul ms | ratio | oneDNN GFLOP/s | cpu_matmul GFLOP/s |\n"
              "|---|---|---|---|---|---|---|---|\n");
  for (const LinearShape& s : kLinearShapes) {
    const int64_t rows = batch * s.tokens;
    const at::Tensor x = at::randn({rows, s.in}), weight = at::randn({s.out, s.in}), bias = at::randn({s.out});
    const at::Tensor dy = at::randn({rows, s.out});
    const at::Tensor dy_t = dy.t().contiguous();  // oneDNN's first operand must be contiguous: not timed
    const double gflop = 2.0 * static_cast<double>(rows) * static_cast<double>(s.in) * static_cast<double>(s.out) / 1e9;
    // Each product as the linear layer's forward and backward call it, oneDNN's way and cpu_matmul's.
    const std::pair<const char*, std::function<at::Tensor(int)>> products[] = {
        {"x·Wᵀ + b", [&](int impl) { return impl == 0 ? dedpo::onednn_matmul_transposed(x, weight, bias)
                                                      : dedpo::sd::cpu_matmul(x, weight.t(), bias); }},
        {"dy·W", [&](int impl) { return impl == 0 ? dedpo::onednn_matmul_transposed(dy, weight.t())
                                                  : dedpo::sd::cpu_matmul(dy, weight); }},
        {"dyᵀ·x", [&](int impl) { return impl == 0 ? dedpo::onednn_matmul_transposed(dy_t, x.t())
                                                   : dedpo::sd::cpu_matmul(dy.t(), x); }}};
    for (const auto& [name, product] : products) {
      const auto [onednn, ours] = alternating_medians(reps, false, at::Tensor(), product);
      std::printf("| %s | %lld × %lld → %lld | %s | %.3f | %.3f | %.2f | %.0f | %.0f |\n", s.what,
                  static_cast<long long>(rows), static_cast<long long>(s.in), static_cast<long long>(s.out), name, onednn,
                  ours, ours / onednn, gflop / onednn * 1e3, gflop / ours * 1e3);
    }
  }
}

struct PointwiseShape {
  const char* what;
  int64_t in, out, pixels;
};

void bench_pixel_linear(int batch, int reps) {
  using dedpo::sd::PixelLayout;
  std::printf("\n| 1×1 convolution | B × C → O, pixels | pass | baddbmm ms | pixel_linear ms | ratio |"
              " baddbmm + permuted copy, fwd+bwd ms | pixel_linear into tokens, fwd+bwd ms | ratio |\n"
              "|---|---|---|---|---|---|---|---|---|\n");
  const PointwiseShape shapes[] = {{"32×32 projection", 64, 64, 1024},  {"16×16 projection", 128, 128, 256},
                                   {"8×8 projection", 256, 256, 64},     {"32×32 shortcut", 192, 64, 1024},
                                   {"16×16 shortcut", 384, 128, 256},    {"16×16 shortcut, down", 64, 128, 256}};
  for (const PointwiseShape& s : shapes) {
    const at::Tensor x = at::randn({batch, s.in, s.pixels}).requires_grad_();
    const at::Tensor weight = at::randn({s.out, s.in}).requires_grad_(), bias = at::randn({s.out}).requires_grad_();
    auto batched = [&] {
      return at::baddbmm(bias.reshape({1, s.out, 1}).expand({batch, s.out, s.pixels}), weight.expand({batch, s.out, s.in}), x);
    };
    const std::function<at::Tensor(int)> channels_first = [&](int impl) {
      return impl == 0 ? batched()
                       : dedpo::sd::pixel_linear(x, PixelLayout::channels_first, weight, bias, PixelLayout::channels_first);
    };
    const std::function<at::Tensor(int)> into_tokens = [&](int impl) {
      return impl == 0 ? batched().transpose(1, 2).contiguous()
                       : dedpo::sd::pixel_linear(x, PixelLayout::channels_first, weight, bias, PixelLayout::tokens);
    };
    const at::Tensor upstream = at::randn({batch, s.out, s.pixels}), upstream_tokens = at::randn({batch, s.pixels, s.out});
    const auto [tokens_batched, tokens_pixel] = alternating_medians(reps, true, upstream_tokens, into_tokens);
    for (const bool backward : {false, true}) {
      const auto [batched_ms, pixel_ms] = alternating_medians(reps, backward, upstream, channels_first);
      std::printf("| %s | %d × %lld → %lld, %lld | %s | %.3f | %.3f | %.2f |", s.what, batch, static_cast<long long>(s.in),
                  static_cast<long long>(s.out), static_cast<long long>(s.pixels), backward ? "fwd+bwd" : "fwd",
                  batched_ms, pixel_ms, pixel_ms / batched_ms);
      if (backward) {
        std::printf(" %.3f | %.3f | %.2f |\n", tokens_batched, tokens_pixel, tokens_pixel / tokens_batched);
      } else {
        std::printf(" | | |\n");
      }
    }
  }
}

struct ConvShape {
  const char* what;
  int64_t in, out, size, stride;
};

void bench_im2col_conv(int batch, int reps) {
  std::printf("\n| 3×3 convolution | B × C → O, input | im2col_conv_applies | pass | ATen ms | im2col_conv2d ms | ratio |\n"
              "|---|---|---|---|---|---|---|\n");
  const ConvShape shapes[] = {{"32×32 resnet", 64, 64, 32, 1},         {"16×16 resnet", 128, 128, 16, 1},
                              {"16×16 upsampler", 256, 256, 16, 1},    {"8×8 resnet, in", 128, 256, 8, 1},
                              {"8×8 resnet", 256, 256, 8, 1},          {"8×8 resnet, up", 512, 256, 8, 1},
                              {"8×8 downsampler", 256, 256, 8, 2},     {"4×4 resnet", 256, 256, 4, 1},
                              {"4×4 resnet, up", 512, 256, 4, 1}};
  for (const ConvShape& s : shapes) {
    const at::Tensor x = at::randn({batch, s.in, s.size, s.size}).requires_grad_();
    const at::Tensor weight = (at::randn({s.out, s.in, 3, 3}) * 0.05).requires_grad_();
    const at::Tensor bias = at::randn({s.out}).requires_grad_();
    const std::function<at::Tensor(int)> conv = [&](int impl) {
      return impl == 0 ? at::conv2d(x, weight, bias, s.stride, 1) : dedpo::sd::im2col_conv2d(x, weight, bias, s.stride, 1);
    };
    const int64_t out_size = (s.size - 1) / s.stride + 1;
    const at::Tensor upstream = at::randn({batch, s.out, out_size, out_size});
    const bool picked = dedpo::sd::im2col_conv_applies(x, weight, bias, s.stride, 1);
    for (const bool backward : {false, true}) {
      const auto [aten, ours] = alternating_medians(reps, backward, upstream, conv);
      std::printf("| %s | %d × %lld → %lld, %lld×%lld%s | %s | %s | %.3f | %.3f | %.2f |\n", s.what, batch,
                  static_cast<long long>(s.in), static_cast<long long>(s.out), static_cast<long long>(s.size),
                  static_cast<long long>(s.size), s.stride == 2 ? ", stride 2" : "", picked ? "yes" : "no",
                  backward ? "fwd+bwd" : "fwd", aten, ours, ours / aten);
    }
  }
}

void bench_linear_bf16(int batch, int reps) {
  std::printf("\n| linear, bf16 autocast | rows × in → out | pass | ATen (oneDNN bf16) ms | cpu_linear_bf16 ms | ratio |\n"
              "|---|---|---|---|---|---|\n");
  for (const LinearShape& s : kLinearShapes) {
    const int64_t rows = batch * s.tokens;
    const at::Tensor x = at::randn({rows, s.in}).requires_grad_();
    const at::Tensor weight = at::randn({s.out, s.in}).requires_grad_(), bias = at::randn({s.out}).requires_grad_();
    const at::Tensor upstream = at::randn({rows, s.out});
    const std::function<at::Tensor(int)> linear = [&](int impl) {
      dedpo::AutocastRegion autocast(at::kCPU, true);
      return (impl == 0 ? at::linear(x, weight, bias) : dedpo::sd::cpu_linear_bf16(x, weight, bias)).to(at::kFloat);
    };
    for (const bool backward : {false, true}) {
      const auto [aten, ours] = alternating_medians(reps, backward, upstream, linear);
      std::printf("| %s | %lld × %lld → %lld | %s | %.3f | %.3f | %.2f |\n", s.what, static_cast<long long>(rows),
                  static_cast<long long>(s.in), static_cast<long long>(s.out), backward ? "fwd+bwd" : "fwd", aten, ours,
                  ours / aten);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  dedpo::apply_allocator_policy();  // as the CLI does: large temporaries stay in the heap
  int batch = 2, threads = 2, reps = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc || (flag != "--batch" && flag != "--threads" && flag != "--reps")) {
      std::fprintf(stderr, "usage: dedpo_bench_kernels [--batch B] [--threads T] [--reps N]\n");
      return 2;
    }
    const int value = parse_int(argv[i], argv[i + 1]);
    ++i;
    (flag == "--batch" ? batch : flag == "--threads" ? threads : reps) = value;
  }
  at::set_num_threads(threads);
  std::printf("batch %d, %d threads, median of %d alternating reps, float32\n\n", batch, threads, reps);
  bench_attention(batch, reps);
  bench_geglu(batch, reps);
  const at::Tensor probe = at::zeros({1, 1});
  if (!dedpo::sd::cpu_matmul_kernel_applies(probe, probe)) {
    std::printf("\n(cpu_matmul's kernel does not run here: the linear, 1×1 and 3×3 convolution tables are left out)\n");
    return 0;
  }
  if (at::hasMKLDNN()) bench_linear(batch, reps);
  bench_pixel_linear(batch, reps);
  bench_im2col_conv(batch, reps);
  {
    dedpo::AutocastRegion autocast(at::kCPU, true);
    if (!dedpo::sd::cpu_linear_bf16_applies(at::zeros({1, 2}), at::zeros({1, 2}), at::Tensor())) {
      std::printf("\n(cpu_linear_bf16 does not run here: not an AMD CPU with AVX512-BF16)\n");
      return 0;
    }
  }
  bench_linear_bf16(batch, reps);
  return 0;
}
