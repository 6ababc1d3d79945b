// Grids of runs: the [grid] table expanded into runs, each run a child process of the dedpo
// program (a few at a time), then the report (grid/report.cpp).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "dedpo/files.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "grid/grid_index.hpp"

extern char** environ;

namespace dedpo {
namespace fs = std::filesystem;

namespace {

struct GridRun {
  std::string name;                  // folder name
  std::vector<Override> overrides;   // case overrides, then product values
  GridRunLabels labels;
};

// A name's parts, its case name and `key=value` per axis, joined by "__" without the parts of
// the given axes ("all" when none is left).
struct NameParts {
  std::vector<std::pair<std::string, std::string>> parts;  // axis key ("" for the case), text

  std::string joined_without(std::initializer_list<std::string_view> axes) const {
    std::string out;
    for (const auto& [key, text] : parts) {
      if (std::find(axes.begin(), axes.end(), key) != axes.end()) continue;
      out += (out.empty() ? "" : "__") + text;
    }
    return out.empty() ? "all" : out;
  }
};

std::string literal(const toml::node& node) {
  std::ostringstream text;
  node.visit([&](const auto& value) {
    if constexpr (toml::is_string<decltype(value)>) {
      text << toml::value<std::string>(value.get());
    } else {
      text << value;
    }
  });
  return text.str();
}

std::string display_value(const toml::node& node) {
  if (const auto* s = node.as_string()) return s->get();
  if (const auto* d = node.as_floating_point()) return fmt::format("{}", d->get());  // 0.05, not 0.05000000000000000277
  return literal(node);
}

void flatten(const toml::table& table, const std::string& prefix,
             std::vector<std::pair<std::string, const toml::node*>>& out) {
  for (const auto& [key, node] : table) {
    std::string name = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (const toml::table* nested = node.as_table()) {
      flatten(*nested, name, out);
    } else {
      out.emplace_back(name, &node);
    }
  }
}

std::vector<GridRun> expand_grid(const std::string& grid_toml) {
  toml::table grid;
  try {
    grid = toml::parse(grid_toml);
  } catch (const toml::parse_error& error) {
    throw Error(std::string("[grid]: ") + std::string(error.description()));
  }
  struct Case {
    std::string name;
    std::vector<Override> overrides;
  };
  std::vector<Case> cases;
  if (const toml::node* node = grid.get("cases")) {
    const toml::array* array = node->as_array();
    if (array == nullptr || !array->is_array_of_tables()) {
      throw Error("[grid] cases: expected [[grid.cases]] tables");
    }
    std::set<std::string> names;
    for (const toml::node& item : *array) {
      const toml::table& table = *item.as_table();
      const toml::node* name = table.get("name");
      if (name == nullptr || !name->is_string()) {
        throw Error("[[grid.cases]]: every case needs name = \"...\"");
      }
      Case c{name->as_string()->get(), {}};
      if (!names.insert(c.name).second) throw Error("[[grid.cases]]: duplicate case '" + c.name + "'");
      std::vector<std::pair<std::string, const toml::node*>> values;
      flatten(table, "", values);
      for (const auto& [key, value] : values) {
        if (key != "name") c.overrides.push_back({key, literal(*value)});
      }
      cases.push_back(std::move(c));
    }
  }
  if (cases.empty()) cases.push_back({"", {}});

  grid.erase("cases");
  std::vector<std::pair<std::string, const toml::node*>> axes;
  flatten(grid, "", axes);
  std::vector<std::pair<std::string, std::vector<const toml::node*>>> product;
  for (const auto& [key, node] : axes) {
    const toml::array* array = node->as_array();
    if (array == nullptr || array->empty()) {
      throw Error("[grid] " + key + ": expected a non-empty array of values");
    }
    std::vector<const toml::node*> values;
    for (const toml::node& value : *array) values.push_back(&value);
    product.emplace_back(key, std::move(values));
  }

  std::vector<GridRun> runs;
  for (const Case& c : cases) {
    std::vector<std::size_t> index(product.size(), 0);
    while (true) {
      GridRun run{"", c.overrides, {}};
      NameParts name;
      if (!c.name.empty() || product.empty()) name.parts.emplace_back("", file_name_safe(c.name.empty() ? "run" : c.name));
      for (std::size_t k = 0; k < product.size(); ++k) {
        const toml::node& value = *product[k].second[index[k]];
        run.overrides.push_back({product[k].first, literal(value)});
        name.parts.emplace_back(product[k].first,
                                product[k].first + "=" + file_name_safe(display_value(value)));
      }
      run.name = name.joined_without({});
      run.labels = {name.joined_without({"run.seed"}),
                    name.joined_without({"run.seed", "train.labelled_fraction"})};
      runs.push_back(std::move(run));
      std::size_t k = product.size();
      while (k > 0) {
        if (++index[k - 1] < product[k - 1].second.size()) break;
        index[k - 1] = 0;
        --k;
      }
      if (k == 0) break;
    }
  }
  return runs;
}

std::string last_lines(const fs::path& file, std::size_t count) {
  std::error_code error;
  if (!fs::exists(file, error)) return {};
  std::ifstream in(file);
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (lines.size() > count) lines.pop_front();
  }
  std::string out;
  for (const auto& l : lines) out += "    " + l + "\n";
  return out;
}

pid_t spawn(const std::vector<std::string>& args, const fs::path& output) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, output.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> argv;
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int status = posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (status != 0) {
    throw Error("cannot start " + args[0] + ": " + std::strerror(status));
  }
  return pid;
}

struct Job {
  const GridRun* run;
  fs::path dir;
  std::vector<std::string> args;  // the dedpo program's command line
};

// The runs still to do, as commands: finished runs are skipped, interrupted ones resumed, and
// stale ones (made from another configuration) counted and never reused.
struct JobPlan {
  std::deque<Job> queue;
  std::size_t finished = 0;
  int stale = 0;
};

JobPlan plan_jobs(const fs::path& file, const fs::path& experiment_file, const fs::path& grid_dir,
                  const std::vector<GridRun>& runs, std::span<const Override> overrides,
                  const GridControl& control, PluginRegistry& registry) {
  JobPlan plan;
  for (const GridRun& run : runs) {
    fs::path dir = grid_dir / run.name;
    std::error_code error;
    if (fs::exists(dir / kConfigFile, error)) {
      std::vector<Override> all(overrides.begin(), overrides.end());
      all.insert(all.end(), run.overrides.begin(), run.overrides.end());
      if (read_file(dir / kConfigFile) != load_experiment(file, all, registry).resolved_toml) {
        std::cerr << fmt::format(
            "stale run {}: its config.toml differs from what the experiment now resolves to; "
            "remove the folder (or change run.name) to run it again\n",
            dir.string());
        ++plan.stale;
        continue;
      }
    }
    if (fs::exists(dir / kResultsFile, error)) {
      ++plan.finished;
      continue;
    }
    Job job{&run, dir, {control.program.string(), "run"}};
    bool resume = fs::exists(dir / kConfigFile, error) &&
                  fs::exists(dir / kCheckpointDir / "latest", error);
    if (resume) {
      job.args.insert(job.args.end(), {"--resume", dir.string()});
    } else {
      job.args.push_back(experiment_file.string());
      for (const Override& o : overrides) job.args.insert(job.args.end(), {"--set", o.key + "=" + o.value});
      for (const Override& o : run.overrides) job.args.insert(job.args.end(), {"--set", o.key + "=" + o.value});
      job.args.insert(job.args.end(), {"--run-dir", dir.string()});
    }
    job.args.push_back("--no-progress");
    plan.queue.push_back(std::move(job));
  }
  return plan;
}

// Runs the queue, control.jobs child processes at a time; returns the number that failed.
int run_jobs(std::deque<Job> queue, const GridControl& control) {
  std::map<pid_t, std::pair<Job, std::chrono::steady_clock::time_point>> running;
  int failures = 0;
  std::size_t done = 0, total = queue.size();
  while (!queue.empty() || !running.empty()) {
    while (!queue.empty() && static_cast<int>(running.size()) < std::max(1, control.jobs)) {
      Job job = std::move(queue.front());
      queue.pop_front();
      fs::create_directories(job.dir);
      try {
        pid_t pid = spawn(job.args, job.dir / "stdout.txt");
        running.emplace(pid, std::make_pair(std::move(job), std::chrono::steady_clock::now()));
      } catch (const Error& error) {
        ++failures;
        ++done;
        std::cerr << fmt::format("[{}/{}] FAILED {}: {}\n", done, total, job.run->name, error.what());
      }
    }
    if (running.empty()) continue;
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      throw Error(std::string("waitpid: ") + std::strerror(errno));
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    auto [job, started] = std::move(it->second);
    running.erase(it);
    ++done;
    int code = WIFEXITED(status) ? WEXITSTATUS(status)
                                 : (WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::error_code error;
    if (code == 0 && fs::exists(job.dir / kResultsFile, error)) {
      std::cerr << fmt::format("[{}/{}] done {} ({:.1f} s)\n", done, total, job.run->name, seconds);
    } else {
      ++failures;
      std::cerr << fmt::format("[{}/{}] FAILED {} (exit code {}); last lines of {}:\n{}", done,
                               total, job.run->name, code, (job.dir / "stdout.txt").string(),
                               last_lines(job.dir / "stdout.txt", 10));
    }
  }
  return failures;
}

}  // namespace

int run_grid(const fs::path& file, std::span<const Override> overrides, const GridControl& control,
             PluginRegistry& registry) {
  Experiment experiment = load_experiment(file, overrides, registry);
  if (experiment.grid_toml.empty()) throw Error(file.string() + ": has no [grid] table");
  std::vector<GridRun> runs = expand_grid(experiment.grid_toml);
  fs::path grid_dir = experiment.run.output / (experiment.run.name + "-grid");
  fs::create_directories(grid_dir);
  if (control.program.empty()) throw Error("run_grid: no program to run the cases with");
  fs::path experiment_file = experiment.file.empty() ? fs::absolute(file) : experiment.file;
  GridIndex index;
  for (const GridRun& run : runs) index[run.name] = run.labels;
  write_grid_index(grid_dir, index);

  JobPlan plan = plan_jobs(file, experiment_file, grid_dir, runs, overrides, control, registry);
  std::cerr << fmt::format("grid {}: {} runs, {} already finished, {} to run ({} at once)\n",
                           grid_dir.string(), runs.size(), plan.finished, plan.queue.size(),
                           std::max(1, control.jobs));
  const int failures = plan.stale + run_jobs(std::move(plan.queue), control);
  std::string summary = write_report(grid_dir);
  std::cout << summary;
  if (failures > 0) {
    std::cout << fmt::format("\n{} of {} runs failed (see their stdout.txt and log.txt)\n",
                             failures, runs.size());
  }
  return failures;
}

}  // namespace dedpo
