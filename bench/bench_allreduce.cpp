// dedpo_bench_allreduce [--device cpu|cuda|cuda:N] [--unet CONFIG.json] [--ranks 1,2] [--steps S]
//                       [--warmup W] [--dpo-steps N] [--batch B] [--threads T]
//
// What data parallelism costs (docs/distributed.md), a figure and not a timed test:
//  (a) the gradient all-reduce alone: GradientReducer::finish, as the trainer calls it after the
//      backward pass (one all-reduce per bucket of up to 25 MiB, in reverse parameter order, each
//      with its presence flags; no backward pass here, so none overlaps), on float32
//      gradients shaped like the UNet's parameters (default: the tiny SD1.5 UNet that
//      dedpo_make_tiny_sd writes for the tests; --unet another diffusers config), ms per step
//      (median of S after W warm-ups) for each world size of --ranks, T intra-op threads per rank
//      (default 1). The ranks are threads of this process, each a member of the group through its
//      own TCPStore client, as in tests/distributed. Every run checks the result: rank r gives
//      (r + 1) x the same gradients, so each must end as (world + 1) / 2 x them, and sum() must
//      give the world size.
//  (b) (CPU only; --dpo-steps 0 skips it) the scaling efficiency of a data-parallel DPO step:
//      `dedpo run --nproc 1` and `--nproc 2` (real processes, the launcher users run) of a DPO
//      experiment on the tiny SD1.5 folder, the same batch B per rank and T threads per rank. A
//      step's time is (wall time of 2 + N steps - wall time of 2 steps) / N, so start-up and
//      preparation cancel; efficiency t1 / t2 is weak scaling (1 = perfect).
// --device cuda (or cuda:N) runs (a) alone on one rank: a 1-rank NCCL group on that GPU
// (scripts/gpu_check.sh does so). Exit status 1 when a check fails.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/DeviceAccelerator.h>
#include <fmt/format.h>

#include "dedpo/error.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/distributed.hpp"
#include "dedpo/host/gradient_reducer.hpp"
#include "dedpo/host/settings.hpp"
#include "dedpo/sd/unet.hpp"

namespace fs = std::filesystem;

namespace {

constexpr std::chrono::milliseconds kTimeout{60000};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

// Runs a shell command; an Error with the end of its log when it fails.
void run_command(const std::string& command, const fs::path& log) {
  const int status = std::system((command + " > " + quoted(log) + " 2>&1").c_str());
  if (status != 0) {
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    throw dedpo::Error("failed (exit status " + std::to_string(WEXITSTATUS(status)) + "): " +
                       command + "\n" + text.substr(text.size() > 2000 ? text.size() - 2000 : 0));
  }
}

struct AllReduceFigures {
  double ms_per_step = 0;
  double worst_error = 0;  // largest |averaged - expected| over every rank's gradients
  bool sums_right = true;
};

// (a) on `world` ranks (threads of this process) of one group on `device`.
AllReduceFigures time_allreduce(const std::vector<std::vector<std::int64_t>>& shapes, int world,
                                c10::Device device, int warmup, int steps) {
  const int port = dedpo::free_local_port();
  std::vector<std::exception_ptr> failures(world);
  std::vector<double> errors(world, 0.0);
  std::vector<char> sums_right(world, 1);
  std::vector<double> rank0_ms;
  auto rank = [&](int r) {
    try {
      dedpo::WorldPlacement placement{r, world, r, "127.0.0.1", port, "bench"};
      dedpo::Collectives collectives(placement, kTimeout, device);
      // The same values on every rank (one seed), times r + 1.
      at::Generator generator = at::detail::createCPUGenerator(7);
      std::vector<at::Tensor> parameters, expected;
      for (const auto& shape : shapes) {
        const at::Tensor base = at::randn(shape, generator).to(device);
        at::Tensor parameter = at::zeros_like(base);
        parameter.mutable_grad() = base * double(r + 1);
        parameters.push_back(parameter);
        expected.push_back(base * ((world + 1) / 2.0));
      }
      dedpo::GradientReducer reducer(collectives, parameters, dedpo::kGradientBucketBytes);
      for (int step = 0; step < warmup + steps; ++step) {
        const Clock::time_point start = Clock::now();
        reducer.finish();
        if (device.is_cuda()) at::accelerator::synchronizeDevice(device.index());
        if (r == 0 && step >= warmup) rank0_ms.push_back(1000.0 * seconds_since(start));
      }
      // Averaging equal gradients again leaves them as they are: one check after all steps.
      for (std::size_t k = 0; k < parameters.size(); ++k) {
        const double error = (parameters[k].grad() - expected[k]).abs().max().item<double>();
        errors[r] = std::max(errors[r], error);
      }
      const std::vector<double> sums = collectives.sum({1.0, double(r)});
      sums_right[r] = sums == std::vector<double>{double(world), world * (world - 1) / 2.0};
    } catch (...) {
      failures[r] = std::current_exception();
    }
  };
  std::vector<std::thread> others;
  for (int r = 1; r < world; ++r) others.emplace_back(rank, r);
  rank(0);
  for (std::thread& thread : others) thread.join();
  for (const std::exception_ptr& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
  AllReduceFigures figures;
  figures.ms_per_step = median(rank0_ms);
  figures.worst_error = *std::max_element(errors.begin(), errors.end());
  figures.sums_right = std::all_of(sums_right.begin(), sums_right.end(), [](char ok) { return ok; });
  return figures;
}

// A DPO experiment on the tiny SD1.5 folder with `pairs` random 16x16 image pairs.
fs::path write_dpo_experiment(const fs::path& scratch, const fs::path& tiny, int pairs, int batch,
                               int threads) {
  const fs::path data = scratch / "data";
  fs::create_directories(data);
  std::ofstream manifest(data / "pairs.jsonl");
  std::srand(0);
  for (int i = 0; i < pairs; ++i) {
    for (const char side : {'a', 'b'}) {
      std::ofstream image(data / fmt::format("{}{}.ppm", side, i), std::ios::binary);
      image << "P6 16 16 255\n";
      for (int k = 0; k < 16 * 16 * 3; ++k) image.put(static_cast<char>(std::rand() % 256));
    }
    manifest << fmt::format(R"({{"id": "p{0}", "prompt": "prompt {1}", "image_a": "a{0}.ppm", )"
                            R"("image_b": "b{0}.ppm", "label": {1}}})",
                            i, i % 2)
             << "\n";
  }
  const fs::path file = scratch / "dpo.toml";
  std::ofstream(file) << fmt::format(R"([run]
name = "allreduce"
output = "{}"
device = "cpu"
threads = {}
[backbone]
plugin = "sd15"
path = "{}"
resolution = 16
sample_steps = 2
[data]
plugin = "pairs_manifest"
manifest = "{}"
[loss]
plugin = "dpo"
[train]
batch_size = {}
checkpoint_every = 0
[eval]
every = 0
)",
                                     (scratch / "runs").string(), threads, tiny.string(),
                                     (data / "pairs.jsonl").string(), batch);
  return file;
}

}  // namespace

int main(int argc, char** argv) try {
  dedpo::apply_allocator_policy();  // as the CLI does
  c10::Device device(c10::kCPU);
  fs::path unet_config;
  std::vector<int> worlds;
  int steps = 20, warmup = 3, dpo_steps = 20, batch = 2, threads = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw dedpo::Error(arg + " expects a value");
      return argv[++i];
    };
    auto positive = [&](int minimum) {
      const std::string text = value();
      const int number = std::atoi(text.c_str());
      if (number < minimum || std::to_string(number) != text) {
        throw dedpo::Error(arg + " expects an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
      }
      return number;
    };
    if (arg == "--device") {
      device = dedpo::resolve_device(dedpo::parse_device(value()), dedpo::available_cuda_devices());
    } else if (arg == "--unet") {
      unet_config = value();
    } else if (arg == "--ranks") {
      std::string list = value();
      for (std::size_t at = 0; at <= list.size();) {
        const std::size_t comma = std::min(list.find(',', at), list.size());
        const std::string item = list.substr(at, comma - at);
        const int world = std::atoi(item.c_str());
        if (world < 1 || std::to_string(world) != item) {
          throw dedpo::Error("--ranks expects world sizes >= 1 separated by commas, got '" + list + "'");
        }
        worlds.push_back(world);
        at = comma + 1;
      }
    } else if (arg == "--steps") {
      steps = positive(1);
    } else if (arg == "--warmup") {
      warmup = positive(0);
    } else if (arg == "--dpo-steps") {
      dpo_steps = positive(0);
    } else if (arg == "--batch") {
      batch = positive(1);
    } else if (arg == "--threads") {
      threads = positive(1);
    } else {
      std::cout << "usage: dedpo_bench_allreduce [--device cpu|cuda|cuda:N] [--unet CONFIG.json] "
                   "[--ranks 1,2] [--steps S] [--warmup W] [--dpo-steps N] [--batch B] [--threads T]\n";
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  // Intra-op threads of each rank: the ranks of (a) share this process's setting. More than the
  // cores left over slows a rank down at OpenMP's barriers (on a loaded 2-core machine, a 1-rank
  // all-reduce went from 2 to 143 ms/step with 2 threads).
  at::set_num_threads(threads);
  if (worlds.empty()) worlds = device.is_cuda() ? std::vector<int>{1} : std::vector<int>{1, 2};
  if (device.is_cuda() && worlds != std::vector<int>{1}) {
    throw dedpo::Error("--device " + device.str() + " runs one NCCL rank (one GPU per rank): give --ranks 1");
  }

  const fs::path bin = fs::read_symlink("/proc/self/exe").parent_path();
  const fs::path scratch = fs::temp_directory_path() / fmt::format("dedpo-bench-allreduce-{}", ::getpid());
  fs::create_directories(scratch);
  const fs::path tiny = scratch / "tiny_sd15";
  run_command(quoted(bin / "dedpo_make_tiny_sd") + " " + quoted(tiny), scratch / "make_tiny_sd.log");
  if (unet_config.empty()) unet_config = tiny / "unet" / "config.json";

  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  double load[3] = {};
  ::getloadavg(load, 3);
  std::cout << fmt::format("machine: {}, {} cores, load average {:.1f} before; device {}\n", host,
                           std::thread::hardware_concurrency(), load[0], device.str());

  // (a) the gradient all-reduce alone.
  std::vector<std::vector<std::int64_t>> shapes;
  std::int64_t floats = 0;
  {
    dedpo::sd::UNet2DConditionModel unet(dedpo::sd::UNet2DConditionConfig::from_file(unet_config));
    for (const at::Tensor& parameter : unet->parameters()) {
      shapes.push_back(parameter.sizes().vec());
      floats += parameter.numel();
    }
  }
  std::cout << fmt::format("(a) gradient all-reduce (GradientReducer::finish), {} gradients "
                           "of {}: {} tensors, {} floats ({:.2f} MiB), median of {} steps after {}, {} thread(s) per rank\n",
                           device.is_cuda() ? "on " + device.str() : "on the CPU",
                           unet_config.string(), shapes.size(), floats,
                           static_cast<double>(floats) * 4 / (1 << 20), steps, warmup, threads);
  bool all_right = true;
  double one_rank_ms = 0;
  for (const int world : worlds) {
    const AllReduceFigures figures = time_allreduce(shapes, world, device, warmup, steps);
    const bool right = figures.worst_error <= 1e-6 && figures.sums_right;
    all_right = all_right && right;
    if (world == 1) one_rank_ms = figures.ms_per_step;
    std::cout << fmt::format("  {} rank{} ({}, {}): {:.3f} ms/step{}; check {}: averaged gradients "
                             "off by at most {:.2g}, sum() {}\n",
                             world, world == 1 ? "" : "s", device.is_cuda() ? "NCCL" : "Gloo",
                             world == 1 ? "one process" : "threads of one process",
                             figures.ms_per_step,
                             world > 1 && one_rank_ms > 0
                                 ? fmt::format(" ({:.1f}x one rank's)", figures.ms_per_step / one_rank_ms)
                                 : "",
                             right ? "ok" : "FAILED", figures.worst_error,
                             figures.sums_right ? "right" : "wrong");
  }

  // (b) the scaling of a data-parallel DPO step, on the CPU.
  if (!device.is_cuda() && dpo_steps > 0) {
    const int base_steps = 2;
    const fs::path experiment = write_dpo_experiment(scratch, tiny, 8, batch, threads);
    auto timed_run = [&](int processes, int run_steps, const std::string& name) {
      const Clock::time_point start = Clock::now();
      run_command(fmt::format("{} run {} --nproc {} --no-progress --run-dir {} --set train.steps={}",
                              quoted(bin / "dedpo"), quoted(experiment), processes,
                              quoted(scratch / "runs" / name), run_steps),
                  scratch / (name + ".log"));
      return seconds_since(start);
    };
    timed_run(1, 1, "caches");  // latents and prompt encodings, which every later run reads
    std::cout << fmt::format("(b) data-parallel DPO step: `dedpo run --nproc W` of the tiny SD1.5 "
                             "UNet at 16x16 (8x8 latents), batch_size {} pairs per rank, {} "
                             "thread(s) per rank, weak scaling; a step = (wall time of {} steps - wall time of "
                             "{} steps) / {}\n",
                             batch, threads, base_steps + dpo_steps, base_steps, dpo_steps);
    double t1 = 0;
    for (const int processes : {1, 2}) {
      const double short_run = timed_run(processes, base_steps, fmt::format("w{}-short", processes));
      const double long_run = timed_run(processes, base_steps + dpo_steps, fmt::format("w{}-long", processes));
      const double ms = 1000.0 * (long_run - short_run) / dpo_steps;
      if (processes == 1) t1 = ms;
      std::cout << fmt::format("  {} process{}: {:.1f} ms/step ({:.2f} s for {} steps, {:.2f} s for {}){}\n",
                               processes, processes == 1 ? "" : "es", ms, long_run,
                               base_steps + dpo_steps, short_run, base_steps,
                               processes == 1 ? ""
                                              : fmt::format("; scaling efficiency t1 / t2 = {:.2f}", t1 / ms));
    }
  }
  ::getloadavg(load, 3);
  std::cout << fmt::format("load average {:.1f} after\n", load[0]);
  std::error_code error;
  fs::remove_all(scratch, error);
  return all_right ? 0 : 1;
} catch (const std::exception& error) {
  std::cerr << "dedpo_bench_allreduce: " << error.what() << "\n";
  return 1;
}
