// Grids of runs: the [grid] table expanded into runs, each run a child process of the dedpo
// program (a few at a time), then the report (grid/report.cpp).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "dedpo/digest.hpp"
#include "dedpo/files.hpp"
#include "dedpo/host/runner.hpp"
#include "dedpo/host/trainer.hpp"
#include "grid/grid_index.hpp"
#include "run/child_process.hpp"
#include "run/inputs.hpp"
#include "run/run_folder.hpp"

namespace dedpo {
namespace fs = std::filesystem;

namespace {

struct GridRun {
  std::string name;                  // folder name
  std::vector<Override> overrides;   // case overrides, then product values
  GridRunLabels labels;
};

// A readable name and the exact settings it stands for: names are made injective by appending a
// digest of the settings where the readable text alone could be shared or lost something.
struct Name {
  std::string text;
  std::string identity;  // the settings, exactly
  bool exact = true;     // the text can be read back into the identity
};

// A name's parts, its case name and `key=value` per axis, joined by "__" without the parts of
// the given axes ("all" when none is left).
struct NameParts {
  struct Part {
    std::string key;      // axis key ("" for the case)
    std::string text;     // readable, fit for a file name
    std::string setting;  // exact: the case name or key=TOML literal
    bool exact;
  };
  std::vector<Part> parts;

  Name joined_without(std::initializer_list<std::string_view> axes) const {
    Name name;
    for (const Part& part : parts) {
      if (std::find(axes.begin(), axes.end(), part.key) != axes.end()) continue;
      name.text += (name.text.empty() ? "" : "__") + part.text;
      name.identity += part.setting + "\n";
      name.exact = name.exact && part.exact;
    }
    if (name.text.empty()) name.text = "all";
    return name;
  }
};

// `text` as a part of a folder name; not exact when characters were replaced, when it holds the
// parts' separator or when it would make a hidden folder.
std::pair<std::string, bool> name_part(const std::string& text) {
  std::string safe = file_name_safe(text);
  if (safe.starts_with('.')) safe[0] = '_';
  return {safe, safe == text && safe.find("__") == std::string::npos};
}

constexpr std::size_t kReadableNameLimit = 96;  // longer readable names get a digest instead

std::string with_digest(const Name& name) {
  const std::string text = name.text.size() > kReadableNameLimit
                               ? name.text.substr(0, kReadableNameLimit)
                               : name.text;
  return text + "-" + digest(name.identity).substr(0, 8);
}

std::string printable(std::string identity) {
  std::replace(identity.begin(), identity.end(), '\n', ' ');
  return identity;
}

// Makes `names` injective (one text per identity): names that are not exact or too long, and
// names that different identities share, get the digest of their identity. Error when two
// identities would still share a text. `what` names the names in that error.
std::vector<std::string> injective(const std::vector<Name>& names, const char* what) {
  std::vector<std::string> texts;
  for (const Name& name : names) {
    texts.push_back(name.exact && name.text.size() <= kReadableNameLimit ? name.text
                                                                         : with_digest(name));
  }
  auto shared_texts = [&] {
    std::map<std::string, std::set<std::string>> identities;
    for (std::size_t i = 0; i < names.size(); ++i) identities[texts[i]].insert(names[i].identity);
    std::map<std::string, std::set<std::string>> shared;
    for (auto& [text, ids] : identities) {
      if (ids.size() > 1) shared.emplace(text, std::move(ids));
    }
    return shared;
  };
  const auto shared = shared_texts();
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (shared.contains(texts[i]) && texts[i] == names[i].text) texts[i] = with_digest(names[i]);
  }
  for (const auto& [text, ids] : shared_texts()) {
    throw Error(fmt::format("[grid]: two runs would share the {} '{}' (settings '{}' and '{}'); "
                            "rename a case",
                            what, text, printable(*ids.begin()), printable(*std::next(ids.begin()))));
  }
  return texts;
}

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
  std::vector<Name> folders, methods, lines;
  for (const Case& c : cases) {
    std::vector<std::size_t> index(product.size(), 0);
    while (true) {
      GridRun run{"", c.overrides, {}};
      NameParts name;
      if (!c.name.empty() || product.empty()) {
        const std::string case_name = c.name.empty() ? "run" : c.name;
        const auto [text, exact] = name_part(case_name);
        name.parts.push_back({"", text, "case " + case_name, exact});
      }
      for (std::size_t k = 0; k < product.size(); ++k) {
        const toml::node& value = *product[k].second[index[k]];
        const std::string& key = product[k].first;
        run.overrides.push_back({key, literal(value)});
        const auto [text, exact] = name_part(display_value(value));
        name.parts.push_back({key, key + "=" + text, key + "=" + literal(value), exact});
      }
      folders.push_back(name.joined_without({}));
      methods.push_back(name.joined_without({"run.seed"}));
      lines.push_back(name.joined_without({"run.seed", "train.labelled_fraction"}));
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
  std::set<std::string> settings;
  for (const Name& folder : folders) {
    if (!settings.insert(folder.identity).second) {
      throw Error("[grid]: two runs have the same settings (" + folder.identity +
                  "); a value is listed twice");
    }
  }
  const auto folder_names = injective(folders, "run folder");
  const auto method_names = injective(methods, "summary row");
  const auto line_names = injective(lines, "plot line");
  for (std::size_t i = 0; i < runs.size(); ++i) {
    runs[i].name = folder_names[i];
    runs[i].labels = {method_names[i], line_names[i], {}};
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

struct Job {
  const GridRun* run;
  fs::path dir;
  std::vector<std::string> args;  // the dedpo program's command line
};

// The runs still to do, as commands: finished runs are skipped, interrupted ones resumed, and
// stale ones (made from other inputs) counted and never reused.
struct JobPlan {
  std::deque<Job> queue;
  std::size_t finished = 0;
  int stale = 0;
};

// A run folder's state against the inputs key its run would have now.
bool is_stale(const fs::path& dir, const std::string& key, const std::string& resolved_toml) {
  std::error_code error;
  if (!fs::exists(dir / kConfigFile, error)) return false;  // no run started there yet
  if (read_run_inputs_key(dir) == key) return false;
  const bool config_changed = read_file(dir / kConfigFile) != resolved_toml;
  std::cerr << fmt::format(
      "stale run {}: {}; remove the folder (or change run.name) to run it again\n", dir.string(),
      config_changed ? "its config.toml differs from what the experiment now resolves to"
                     : "what it was trained from changed since it ran (the [init] experiment or "
                       "weights, or a plugin's version)");
  return true;
}

JobPlan plan_jobs(const fs::path& experiment_file, const fs::path& grid_dir,
                  const std::vector<GridRun>& runs, const std::vector<Experiment>& experiments,
                  std::span<const Override> overrides, const GridControl& control) {
  JobPlan plan;
  for (std::size_t i = 0; i < runs.size(); ++i) {
    const GridRun& run = runs[i];
    fs::path dir = grid_dir / run.name;
    std::error_code error;
    if (is_stale(dir, run.labels.inputs, experiments[i].resolved_toml)) {
      ++plan.stale;
      continue;
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

volatile std::sig_atomic_t stop_signal = 0;

extern "C" void note_stop_signal(int signal) { stop_signal = signal; }

// SIGINT and SIGTERM handlers for as long as the grid runs its jobs: a signal stops the launch
// of further runs and is forwarded to the running ones, which the grid then waits for.
class StopSignals {
 public:
  StopSignals() {
    stop_signal = 0;
    struct sigaction action {};
    action.sa_handler = note_stop_signal;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGINT, &action, &previous_int_);
    ::sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    ::sigaction(SIGINT, &previous_int_, nullptr);
    ::sigaction(SIGTERM, &previous_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

struct JobsOutcome {
  int failures = 0;
  int stopped_by = 0;        // the signal that stopped the grid; 0 when none did
  std::size_t not_started = 0;
};

// Runs the queue, control.jobs child processes at a time.
JobsOutcome run_jobs(std::deque<Job> queue, const GridControl& control) {
  const StopSignals signals;
  std::map<pid_t, std::pair<Job, std::chrono::steady_clock::time_point>> running;
  JobsOutcome outcome;
  std::size_t done = 0, total = queue.size();
  while (!queue.empty() || !running.empty()) {
    if (stop_signal != 0 && outcome.stopped_by == 0) {
      outcome.stopped_by = stop_signal;
      outcome.not_started = queue.size();
      queue.clear();
      std::cerr << fmt::format("grid: signal {} ({}): stopping {} running runs\n",
                               static_cast<int>(outcome.stopped_by),
                               strsignal(outcome.stopped_by), running.size());
      for (const auto& entry : running) ::kill(entry.first, outcome.stopped_by);
    }
    while (!queue.empty() && static_cast<int>(running.size()) < std::max(1, control.jobs)) {
      Job job = std::move(queue.front());
      queue.pop_front();
      try {
        claim_run_dir(job.dir);
        pid_t pid = spawn(job.args, job.dir / "stdout.txt");
        running.emplace(pid, std::make_pair(std::move(job), std::chrono::steady_clock::now()));
      } catch (const Error& error) {
        ++outcome.failures;
        ++done;
        std::cerr << fmt::format("[{}/{}] FAILED {}: {}\n", done, total, job.run->name, error.what());
      }
    }
    if (running.empty()) continue;
    int status = 0;
    // Polled, so that a signal arriving at any moment is forwarded within a tenth of a second.
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid == 0 || (pid < 0 && errno == EINTR)) {
      const timespec pause{0, 100'000'000};
      ::nanosleep(&pause, nullptr);
      continue;
    }
    if (pid < 0) throw Error(std::string("waitpid: ") + std::strerror(errno));
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
    } else if (outcome.stopped_by != 0) {
      ++outcome.failures;
      std::cerr << fmt::format("[{}/{}] stopped {} (exit code {})\n", done, total, job.run->name, code);
    } else {
      ++outcome.failures;
      std::cerr << fmt::format("[{}/{}] FAILED {} (exit code {}); last lines of {}:\n{}", done,
                               total, job.run->name, code, (job.dir / "stdout.txt").string(),
                               last_lines(job.dir / "stdout.txt", 10));
    }
  }
  return outcome;
}

}  // namespace

int run_grid(const fs::path& file, std::span<const Override> overrides, const GridControl& control,
             PluginRegistry& registry) {
  Experiment experiment = load_experiment(file, overrides, registry);
  if (experiment.grid_toml.empty()) throw Error(file.string() + ": has no [grid] table");
  if (control.program.empty()) throw Error("run_grid: no program to run the cases with");
  std::vector<GridRun> runs = expand_grid(experiment.grid_toml);
  // Each run's experiment, resolved now: its staleness key goes into grid.json for the report.
  std::vector<Experiment> experiments;
  for (GridRun& run : runs) {
    std::vector<Override> all(overrides.begin(), overrides.end());
    all.insert(all.end(), run.overrides.begin(), run.overrides.end());
    experiments.push_back(load_experiment(file, all, registry));
    run.labels.inputs = run_inputs_key(experiments.back(), registry);
  }
  fs::path experiment_file = experiment.file.empty() ? fs::absolute(file) : experiment.file;
  GridIndex index;
  for (const GridRun& run : runs) {
    index.runs[run.name] = run.labels;
    index.order.push_back(run.name);
  }
  index.report = experiment.report;
  check_report_baseline(index, experiment_file.string());
  fs::path grid_dir = experiment.run.output / (experiment.run.name + "-grid");
  fs::create_directories(grid_dir);
  write_grid_index(grid_dir, index);

  JobPlan plan = plan_jobs(experiment_file, grid_dir, runs, experiments, overrides, control);
  std::cerr << fmt::format("grid {}: {} runs, {} already finished, {} to run ({} at once)\n",
                           grid_dir.string(), runs.size(), plan.finished, plan.queue.size(),
                           std::max(1, control.jobs));
  const JobsOutcome outcome = run_jobs(std::move(plan.queue), control);
  const int failures = plan.stale + outcome.failures;
  std::string summary = write_report(grid_dir);
  std::cout << summary;
  if (outcome.stopped_by != 0) {
    std::cout << fmt::format("\nstopped by signal {}: {} runs not started; `dedpo grid` again "
                             "resumes the stopped runs from their checkpoints\n",
                             static_cast<int>(outcome.stopped_by), outcome.not_started);
  }
  if (failures > 0) {
    std::cout << fmt::format("\n{} of {} runs failed or are stale (see their stdout.txt and "
                             "log.txt)\n",
                             failures, runs.size());
  }
  return failures + static_cast<int>(outcome.not_started);
}

}  // namespace dedpo
