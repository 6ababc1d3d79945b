// dedpo_bench_toy [EXPERIMENT.toml] [--steps N] [--set K=V]... [--grid FILE [--jobs J]]
//
// Prints the training throughput (pairs/s) of a toy experiment: two runs of the same experiment,
// S and S+N steps, so set-up costs (data, annotation, [init]) cancel. With --grid it also times a
// whole grid (default experiments/toy/paper_table.toml) run by the dedpo program beside this one.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"

namespace fs = std::filesystem;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) try {
  dedpo::apply_allocator_policy();  // as the CLI does
  fs::path experiment_file = fs::path(DEDPO_SOURCE_DIR) / "experiments/toy/default.toml";
  std::int64_t steps = 200;
  std::vector<dedpo::Override> user;
  fs::path grid;
  int jobs = 2;
  bool experiment_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw dedpo::Error(arg + " expects a value");
      return argv[++i];
    };
    if (arg == "--steps") {
      steps = std::stoll(value());
    } else if (arg == "--set") {
      user.push_back(dedpo::parse_override(value()));
    } else if (arg == "--grid") {
      grid = (i + 1 < argc && argv[i + 1][0] != '-') ? fs::path(value())
                                                      : fs::path(DEDPO_SOURCE_DIR) /
                                                            "experiments/toy/paper_table.toml";
    } else if (arg == "--jobs") {
      jobs = std::stoi(value());
    } else if (arg == "--help" || arg == "-h") {
      std::cout << "usage: dedpo_bench_toy [EXPERIMENT.toml] [--steps N] [--set K=V]... "
                   "[--grid [FILE]] [--jobs J]\n";
      return 0;
    } else {
      experiment_file = arg;
      experiment_given = true;
    }
  }
  (void)experiment_given;
  fs::path scratch = fs::temp_directory_path() / fmt::format("dedpo-bench-{}", ::getpid());
  fs::create_directories(scratch);

  dedpo::PluginRegistry registry;
  registry.load_default_locations();

  auto timed_run = [&](std::int64_t run_steps, const std::string& name) {
    std::vector<dedpo::Override> overrides = user;
    overrides.push_back({"train.steps", std::to_string(run_steps)});
    overrides.push_back({"train.checkpoint_every", "0"});
    overrides.push_back({"run.output", "\"" + scratch.string() + "\""});
    dedpo::Experiment experiment = dedpo::load_experiment(experiment_file, overrides, registry);
    dedpo::RunControl control;
    control.progress_bar = false;
    control.run_dir = scratch / name;
    auto start = std::chrono::steady_clock::now();
    dedpo::run_experiment(experiment, registry, control);
    double wall = seconds_since(start);
    std::int64_t pairs_per_step =
        experiment.train.batch_size * experiment.train.grad_accum;
    return std::pair<double, std::int64_t>(wall, pairs_per_step);
  };

  std::int64_t base = std::max<std::int64_t>(1, steps / 10);
  auto [short_wall, pairs_per_step] = timed_run(base, "short");  // also fills the caches
  auto [short_again, unused] = timed_run(base, "short-again");
  auto [long_wall, unused2] = timed_run(base + steps, "long");
  (void)short_wall;
  (void)unused;
  (void)unused2;
  double train_time = long_wall - short_again;
  std::cout << fmt::format("experiment: {}\n", experiment_file.string());
  std::cout << fmt::format("set-up + {} steps: {:.3f} s; set-up + {} steps: {:.3f} s\n", base,
                           short_again, base + steps, long_wall);
  std::cout << fmt::format("training: {} steps x {} pairs in {:.3f} s = {:.1f} steps/s, {:.0f} pairs/s\n",
                           steps, pairs_per_step, train_time, steps / train_time,
                           static_cast<double>(steps * pairs_per_step) / train_time);

  if (!grid.empty()) {
    dedpo::GridControl control;
    control.jobs = jobs;
    control.program = fs::read_symlink("/proc/self/exe").parent_path() / "dedpo";
    std::vector<dedpo::Override> overrides = user;
    overrides.push_back({"run.output", "\"" + (scratch / "grid").string() + "\""});
    auto start = std::chrono::steady_clock::now();
    int failures = dedpo::run_grid(grid, overrides, control, registry);
    std::cout << fmt::format("grid {}: {:.1f} s with {} jobs, {} failed\n", grid.string(),
                             seconds_since(start), jobs, failures);
  }
  std::error_code error;
  fs::remove_all(scratch, error);
  return 0;
} catch (const std::exception& error) {
  std::cerr << "dedpo_bench_toy: " << error.what() << "\n";
  return 1;
}
