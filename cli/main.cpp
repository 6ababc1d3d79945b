// dedpo: the command-line program. Each command is a thin layer over the core library.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include "dedpo/backbone.hpp"
#include "dedpo/host/assemble.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/error_message.hpp"
#include "dedpo/files.hpp"
#include "dedpo/host/allocator_policy.hpp"
#include "dedpo/host/registry.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "environment.hpp"

namespace fs = std::filesystem;
namespace po = boost::program_options;

namespace {

constexpr const char* kUsage = R"(usage: dedpo <command> [options]

commands:
  env                          the LibTorch build and libraries this program loaded, devices, CPU
  plugins                      list the loaded plugins, grouped by kind
  plugins show NAME            a plugin's options (types, defaults, help); also the core
                               tables run|train|eval|init|log|report|launcher
  validate EXP.toml [--set K=V]...
                               load and check an experiment, run nothing
  run EXP.toml [--set K=V]... [--run-dir DIR] [--no-progress] [--nproc N]
      [--collective-timeout S] run an experiment in a new run folder (--nproc: data parallel
                               on N local processes; under torchrun or srun: one of its ranks;
                               S: how long a rank waits for the others, default 300 s)
  run --resume RUN_DIR [--nproc N] [--collective-timeout S]
                               continue an interrupted run from its last checkpoint
  grid EXP.toml [--jobs N] [--set K=V]... [--launcher local|slurm [--wait]]
                               run every case of the experiment's [grid]: as child processes
                               (local, N at once), or as one Slurm job array (slurm, N tasks at
                               once, resources from [launcher]; --wait: until they have ended)
  grid --status GRID_DIR       each run's state, from its folder and from Slurm
  report GRID_DIR              rewrite results.csv, summary.md and plots of a grid, its
                               sample sheets (samples_<set>.png) and each run's curves
  plot RUN_DIR                 draw a run's training curves (loss, implicit accuracy, λ,
                               gradient norm, learning rate) from its metrics.jsonl as PNG and
                               SVG into RUN_DIR/plots/
  eval RUN_DIR [--set K=V]...  evaluate a finished run's trained weights with its [[metrics]]
                               and [eval] (overridable); the figures join its results.json and,
                               for a run of a grid, the grid's report
  sample (EXP.toml | --run RUN_DIR) [--set K=V]... --prompt TEXT [--prompt TEXT]...
         [--prompts-file FILE] [--n N] [--seed S] [--reference] --out DIR
                               draw N samples per prompt from the experiment's base weights
                               (EXP.toml: [backbone], [init] weights) or a finished run's
                               trained weights (--run; --reference: the run's initial weights)
                               and write them as <out>/<prompt index>-<n>.png; the sampler,
                               steps and guidance are backbone options (--set backbone.K=V)

Plugins are loaded from the program's plugin folder, then DEDPO_PLUGIN_PATH (colon-separated),
then the folders an experiment names in [plugins] paths.
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void print_problems(const dedpo::PluginRegistry& registry) {
  for (const dedpo::LoadProblem& problem : registry.problems()) {
    std::cerr << "warning: " << problem.message << "\n";
  }
}

std::vector<dedpo::Override> parse_overrides(const std::vector<std::string>& texts) {
  std::vector<dedpo::Override> overrides;
  for (const std::string& text : texts) overrides.push_back(dedpo::parse_override(text));
  return overrides;
}

po::variables_map parse(const std::vector<std::string>& args, const po::options_description& options,
                        const po::positional_options_description& positional) {
  po::variables_map values;
  try {
    po::store(po::command_line_parser(args).options(options).positional(positional).run(), values);
    po::notify(values);
  } catch (const po::error& error) {
    throw UsageError(error.what());
  }
  return values;
}

void print_schema(std::span<const dedpo::OptionSpec> schema) {
  if (schema.empty()) {
    std::cout << "  (no options)\n";
    return;
  }
  for (const dedpo::OptionSpec& spec : schema) {
    std::cout << fmt::format("  {:<20} {:<17} default {}\n      {}\n", spec.name,
                             dedpo::to_string(spec.type),
                             spec.default_value ? spec.default_value : "(required)", spec.help);
  }
}

int command_plugins(const std::vector<std::string>& args, dedpo::PluginRegistry& registry) {
  if (args.empty()) {
    for (dedpo::PluginKind kind : dedpo::kAllPluginKinds) {
      std::cout << dedpo::to_string(kind) << ":\n";
      auto entries = registry.plugins(kind);
      if (entries.empty()) std::cout << "  (none)\n";
      for (const dedpo::PluginEntry* entry : entries) {
        std::cout << fmt::format("  {:<16} {:<8} {}\n", entry->descriptor->name,
                                 entry->descriptor->version, entry->descriptor->description);
      }
    }
    print_problems(registry);
    return 0;
  }
  if (args[0] != "show" || args.size() != 2) throw UsageError("expected: dedpo plugins [show NAME]");
  const std::string& name = args[1];
  struct CoreTable {
    const char* name;
    std::span<const dedpo::OptionSpec> schema;
  };
  const CoreTable core_tables[] = {{"run", dedpo::run_options_schema()},
                                   {"train", dedpo::train_options_schema()},
                                   {"eval", dedpo::eval_options_schema()},
                                   {"init", dedpo::init_options_schema()},
                                   {"log", dedpo::log_options_schema()},
                                   {"report", dedpo::report_options_schema()},
                                   {"launcher", dedpo::launcher_options_schema()}};
  bool shown = false;
  for (const CoreTable& table : core_tables) {
    if (name != table.name) continue;
    std::cout << "[" << table.name << "] (core table)\n";
    print_schema(table.schema);
    shown = true;
  }
  std::vector<std::string> names;
  for (dedpo::PluginKind kind : dedpo::kAllPluginKinds) {
    for (const dedpo::PluginEntry* entry : registry.plugins(kind)) {
      names.emplace_back(entry->descriptor->name);
      if (name != entry->descriptor->name) continue;
      const dedpo::PluginDescriptor& d = *entry->descriptor;
      std::cout << fmt::format("{} '{}' {} ({})\n  {}\n  built with {}, {}, LibTorch {}\noptions:\n",
                               dedpo::to_string(kind), d.name, d.version, entry->library.string(),
                               d.description, entry->build->compiler, entry->build->standard_library,
                               entry->build->libtorch);
      print_schema(std::span(d.options, d.option_count));
      shown = true;
    }
  }
  if (!shown) {
    std::string suggestion = dedpo::closest_match(name, names);
    throw dedpo::Error("no plugin named '" + name + "'" +
                       (suggestion.empty() ? std::string() : "; did you mean '" + suggestion + "'?"));
  }
  return 0;
}

int command_validate(const std::vector<std::string>& args, dedpo::PluginRegistry& registry) {
  po::options_description options("validate");
  options.add_options()("file", po::value<std::string>()->required(), "experiment file")(
      "set", po::value<std::vector<std::string>>()->composing(), "override KEY=VALUE");
  po::positional_options_description positional;
  positional.add("file", 1);
  po::variables_map values = parse(args, options, positional);
  auto overrides = parse_overrides(values.count("set") ? values["set"].as<std::vector<std::string>>()
                                                       : std::vector<std::string>{});
  dedpo::Experiment experiment = dedpo::load_experiment(values["file"].as<std::string>(), overrides, registry);
  print_problems(registry);
  std::cout << "# " << experiment.file.string() << ": valid\n" << experiment.resolved_toml;
  return 0;
}

int command_run(const std::vector<std::string>& args, dedpo::PluginRegistry& registry) {
  po::options_description options("run");
  options.add_options()("file", po::value<std::string>(), "experiment file")(
      "set", po::value<std::vector<std::string>>()->composing(), "override KEY=VALUE")(
      "resume", po::value<std::string>(), "continue the run in this folder")(
      "run-dir", po::value<std::string>(), "use exactly this run folder")(
      "nproc", po::value<int>(), "data parallel: start this many local worker processes")(
      "collective-timeout", po::value<double>(),
      "data parallel: seconds a rank waits for the others (rendezvous, collectives) before failing")(
      "no-progress", "no progress bar");
  po::positional_options_description positional;
  positional.add("file", 1);
  po::variables_map values = parse(args, options, positional);

  dedpo::RunControl control;
  control.progress_bar = !values.count("no-progress");
  control.world = dedpo::read_world_placement();
  std::vector<std::string> worker_arguments;  // what every --nproc worker is given besides
  if (values.count("collective-timeout")) {
    const double seconds = values["collective-timeout"].as<double>();
    if (!(seconds >= 1.0)) {
      throw UsageError(fmt::format("--collective-timeout {}: expected at least 1 second", seconds));
    }
    control.collective_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
    worker_arguments = {"--collective-timeout", fmt::format("{}", seconds)};
  }
  std::optional<dedpo::LocalWorkers> workers;
  if (values.count("nproc")) {
    if (control.world.launcher != "single") {
      throw UsageError("--nproc starts its own workers, but this process already is one (" +
                       control.world.launcher + " launch): give no --nproc under torchrun or srun");
    }
    workers = dedpo::LocalWorkers{values["nproc"].as<int>(), fs::read_symlink("/proc/self/exe"),
                                  worker_arguments};
    if (workers->processes < 1) {
      throw UsageError("--nproc " + std::to_string(workers->processes) + ": expected at least 1");
    }
  }
  dedpo::RunResult result;
  if (values.count("resume")) {
    if (values.count("file") || values.count("set")) {
      throw UsageError("run --resume DIR takes no experiment file and no --set");
    }
    const std::string run_dir = values["resume"].as<std::string>();
    result = workers ? dedpo::resume_on_local_workers(run_dir, *workers)
                     : dedpo::resume_run(run_dir, registry, control);
  } else {
    if (!values.count("file")) throw UsageError("expected: dedpo run EXP.toml");
    auto overrides = parse_overrides(values.count("set") ? values["set"].as<std::vector<std::string>>()
                                                         : std::vector<std::string>{});
    dedpo::Experiment experiment = dedpo::load_experiment(values["file"].as<std::string>(), overrides, registry);
    print_problems(registry);
    if (values.count("run-dir")) control.run_dir = values["run-dir"].as<std::string>();
    if (workers) {
      workers->arguments.push_back(fs::absolute(values["file"].as<std::string>()).string());
      for (const std::string& setting : values.count("set") ? values["set"].as<std::vector<std::string>>()
                                                            : std::vector<std::string>{}) {
        workers->arguments.insert(workers->arguments.end(), {"--set", setting});
      }
      result = dedpo::run_on_local_workers(experiment, control, *workers);
    } else {
      result = dedpo::run_experiment(experiment, registry, control);
    }
  }
  if (workers) return 0;  // rank 0 has printed the summary (its output is this process's)
  std::cout << "run folder: " << result.run_dir.string() << "\n";
  std::cout << fmt::format("steps: {} (skipped by the NaN/inf guard: {})\n", result.steps_done,
                           result.skipped_steps);
  for (const auto& [name, value] : result.metrics) std::cout << fmt::format("{}: {:.6g}\n", name, value);
  return 0;
}

int command_grid(const std::vector<std::string>& args, dedpo::PluginRegistry& registry) {
  po::options_description options("grid");
  options.add_options()("file", po::value<std::string>(), "experiment file")(
      "jobs,j", po::value<int>(), "runs at once")(
      "launcher", po::value<std::string>()->default_value("local"), "local or slurm")(
      "wait", "slurm: wait until the runs have ended, then write the report")(
      "status", po::value<std::string>(), "show the runs of this grid folder")(
      "set", po::value<std::vector<std::string>>()->composing(), "override KEY=VALUE");
  po::positional_options_description positional;
  positional.add("file", 1);
  po::variables_map values = parse(args, options, positional);
  if (values.count("status")) {
    if (values.count("file")) throw UsageError("grid --status GRID_DIR takes no experiment file");
    std::cout << dedpo::grid_status(values["status"].as<std::string>());
    return 0;
  }
  if (!values.count("file")) throw UsageError("expected: dedpo grid EXP.toml");
  auto overrides = parse_overrides(values.count("set") ? values["set"].as<std::vector<std::string>>()
                                                       : std::vector<std::string>{});
  dedpo::GridControl control;
  const std::string launcher = values["launcher"].as<std::string>();
  if (launcher == "slurm") {
    control.launcher = dedpo::GridLauncherKind::slurm;
  } else if (launcher != "local") {
    throw UsageError("--launcher expects local or slurm, got '" + launcher + "'");
  }
  if (values.count("jobs")) {
    control.jobs = values["jobs"].as<int>();
    if (control.jobs < 1) throw UsageError("--jobs expects a positive number");
  }
  control.wait = values.count("wait") > 0;
  if (control.wait && control.launcher == dedpo::GridLauncherKind::local) {
    throw UsageError("--wait is for --launcher slurm (the local launcher always waits)");
  }
  control.program = fs::read_symlink("/proc/self/exe");
  int failures = dedpo::run_grid(values["file"].as<std::string>(), overrides, control, registry);
  return failures == 0 ? 0 : 1;
}

int command_eval(const std::vector<std::string>& args, dedpo::PluginRegistry& registry) {
  po::options_description options("eval");
  options.add_options()("run", po::value<std::string>()->required(), "run folder")(
      "set", po::value<std::vector<std::string>>()->composing(), "override KEY=VALUE");
  po::positional_options_description positional;
  positional.add("run", 1);
  po::variables_map values = parse(args, options, positional);
  auto overrides = parse_overrides(values.count("set") ? values["set"].as<std::vector<std::string>>()
                                                       : std::vector<std::string>{});
  print_problems(registry);
  for (const auto& [name, value] : dedpo::evaluate_run(values["run"].as<std::string>(), overrides, registry)) {
    std::cout << fmt::format("{}: {:.6g}\n", name, value);
  }
  return 0;
}

int command_report(const std::vector<std::string>& args) {
  if (args.size() != 1) throw UsageError("expected: dedpo report GRID_DIR");
  std::cout << dedpo::write_report(args[0]);
  return 0;
}

int command_plot(const std::vector<std::string>& args) {
  if (args.size() != 1) throw UsageError("expected: dedpo plot RUN_DIR");
  for (const fs::path& file : dedpo::plot_run_curves(args[0])) std::cout << file.string() << "\n";
  return 0;
}

// One prompt per non-empty line.
std::vector<std::string> read_prompts(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw dedpo::Error("--prompts-file: cannot read '" + file.string() + "'");
  std::vector<std::string> prompts;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) prompts.push_back(line);
  }
  return prompts;
}

int command_sample(const std::vector<std::string>& args, dedpo::PluginRegistry& registry) {
  po::options_description options("sample");
  options.add_options()("file", po::value<std::string>(), "experiment file")(
      "set", po::value<std::vector<std::string>>()->composing(), "override KEY=VALUE")(
      "run", po::value<std::string>(), "a finished run folder")(
      "prompt", po::value<std::vector<std::string>>()->composing(), "a prompt")(
      "prompts-file", po::value<std::string>(), "prompts, one per line")(
      "n", po::value<std::int64_t>()->default_value(1), "samples per prompt")(
      "seed", po::value<std::uint64_t>()->default_value(0), "seed of the sampling noise")(
      "reference", "sample the reference model")(
      "out", po::value<std::string>(), "output folder");
  po::positional_options_description positional;
  positional.add("file", 1);
  po::variables_map values = parse(args, options, positional);

  if (values.count("file") && values.count("run")) {
    throw UsageError("give either EXP.toml or --run RUN_DIR, not both");
  }
  if (!values.count("file") && !values.count("run")) {
    throw UsageError("expected an experiment file EXP.toml or --run RUN_DIR");
  }
  if (!values.count("out")) throw UsageError("missing --out DIR (the folder for the samples)");
  const std::int64_t n = values["n"].as<std::int64_t>();
  if (n < 1) throw UsageError("--n expects a positive number");
  std::vector<std::string> prompts;
  if (values.count("prompt")) prompts = values["prompt"].as<std::vector<std::string>>();
  if (values.count("prompts-file")) {
    for (std::string& p : read_prompts(values["prompts-file"].as<std::string>())) prompts.push_back(std::move(p));
  }
  if (prompts.empty()) throw UsageError("no prompt: give --prompt TEXT or --prompts-file FILE");
  const bool reference = values.count("reference") > 0;
  auto overrides = parse_overrides(values.count("set") ? values["set"].as<std::vector<std::string>>()
                                                       : std::vector<std::string>{});

  dedpo::Experiment experiment;
  fs::path initial_weights;
  if (values.count("run")) {
    const fs::path dir = fs::absolute(values["run"].as<std::string>());
    experiment = dedpo::load_run_experiment(dir, overrides, registry);
    if (reference) {
      // The run's reference: the weights it started from.
      if (!experiment.init.experiment.empty()) {
        throw dedpo::Error("--reference: run " + dir.string() + " started from the trained weights of [init] experiment '" +
                           experiment.init.experiment.string() + "'; sample that experiment's run with --run instead");
      }
      initial_weights = experiment.init.weights;
    } else {
      initial_weights = dir / dedpo::kWeightsFile;
      if (!fs::exists(initial_weights)) {
        throw dedpo::Error(dir.string() + ": no " + dedpo::kWeightsFile +
                           " (the run has not finished; `dedpo run --resume " + dir.string() + "` completes it)");
      }
    }
  } else {
    experiment = dedpo::load_experiment(values["file"].as<std::string>(), overrides, registry);
    if (!experiment.init.experiment.empty()) {
      throw dedpo::Error("[init] experiment = '" + experiment.init.experiment.string() +
                         "': sample does not train it; run it (dedpo run) and sample its trained weights with "
                         "`dedpo sample --run RUN_DIR`");
    }
    initial_weights = experiment.init.weights;
  }
  print_problems(registry);
  std::shared_ptr<dedpo::Backbone> backbone = dedpo::assemble(experiment, registry, initial_weights).backbone;

  at::NoGradGuard no_grad;
  const fs::path out = values["out"].as<std::string>();
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(values["seed"].as<std::uint64_t>());
  // One batch of N per prompt: the generator runs on, so the files depend on the prompt order.
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    const at::Tensor condition = backbone->encode_prompts(std::vector<std::string>(static_cast<std::size_t>(n), prompts[p]));
    const at::Tensor samples = backbone->sample(condition, generator, reference);
    std::vector<fs::path> files;
    for (std::int64_t i = 0; i < n; ++i) files.push_back(out / fmt::format("{}-{}.png", p, i));
    backbone->write_samples(samples, files);
    for (const fs::path& file : files) std::cout << file.string() << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  // Declared outside the try: an exception thrown by plugin code must be caught and printed
  // while the plugin libraries are still loaded.
  dedpo::PluginRegistry registry;
  try {
    // First: the runs the grid starts are `dedpo run` processes too, so they get it as well.
    dedpo::apply_allocator_policy();
    registry.load_default_locations();
    if (command == "env") {
      dedpo::cli::print_environment(std::cout);
      return 0;
    }
    if (command == "plugins") return command_plugins(args, registry);
    if (command == "validate") return command_validate(args, registry);
    if (command == "run") return command_run(args, registry);
    if (command == "grid") return command_grid(args, registry);
    if (command == "report") return command_report(args);
    if (command == "plot") return command_plot(args);
    if (command == "eval") return command_eval(args, registry);
    if (command == "sample") return command_sample(args, registry);
    throw UsageError("unknown command '" + command + "'");
  } catch (const UsageError& error) {
    std::cerr << "dedpo " << command << ": " << error.what() << "\n\n" << kUsage;
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "error: " << dedpo::error_message(error) << "\n";
    return 1;
  }
}
