#pragma once
// Running experiments: single runs (fresh or resumed), grids of runs, and their reports.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dedpo/figures.hpp"
#include "dedpo/host/distributed.hpp"
#include "dedpo/host/experiment.hpp"
#include "dedpo/host/registry.hpp"

namespace dedpo {

struct RunControl {
  // Use exactly this run folder (grids name their runs); empty = a new <output>/<name>-<n>.
  std::filesystem::path run_dir;
  bool progress_bar = true;  // only drawn when stderr is a terminal
  // Stop (as if killed) after this many optimiser steps; 0 = never. Lets tests interrupt a run.
  std::int64_t stop_after_steps = 0;
  // Called after every optimiser step with its number (1-based), in the training thread; lets a
  // caller watch a long run (tests/trainer/test_memory.cpp samples the resident memory).
  std::function<void(std::int64_t step)> after_step;
  // Where this process stands in a data-parallel run (read_world_placement(), once, by the CLI);
  // one process alone by default. Rank 0 writes the run folder, each other rank only its own
  // log-rank<N>.txt in it (docs/distributed.md).
  WorldPlacement world;
  // Bounds the rendezvous, every collective and the other ranks' wait for rank 0's preparation
  // (init run, data, annotations): a rank that dies or hangs ends the others with an Error.
  std::chrono::milliseconds collective_timeout{std::chrono::minutes(5)};
};

struct RunResult {
  std::filesystem::path run_dir;
  Figures metrics;  // final evaluation
  std::int64_t steps_done = 0;
  std::int64_t skipped_steps = 0;  // steps the NaN/inf guard skipped
  bool finished = false;           // false when stopped by RunControl::stop_after_steps
};

RunResult run_experiment(const Experiment& experiment, PluginRegistry& registry,
                         const RunControl& control = {});
// Continues an interrupted run from its last checkpoint to exactly the weights an uninterrupted
// run would have reached.
RunResult resume_run(const std::filesystem::path& run_dir, PluginRegistry& registry,
                     const RunControl& control = {});

// A data-parallel run on this host (`dedpo run --nproc N`, docs/distributed.md): `processes`
// workers of `program`, each started as `program run ... --no-progress` with RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT. Rank 0's output goes to
// this process's, rank k's is appended to RUN/log-rank<k>.txt. When a worker fails, the others
// are stopped and the Error names the worker.
struct LocalWorkers {
  int processes = 1;
  std::filesystem::path program;       // the dedpo executable
  // What every worker is given after `run` (a fresh run's EXP.toml and --set ..., options).
  std::vector<std::string> arguments;
};
// A fresh run in a new run folder (control.run_dir when given), given to each worker.
RunResult run_on_local_workers(const Experiment& experiment, const RunControl& control,
                               const LocalWorkers& workers);
// The run in `run_dir` resumed (the checkpoint's number of processes must be `workers.processes`).
RunResult resume_on_local_workers(const std::filesystem::path& run_dir, const LocalWorkers& workers);

// A run folder's experiment (its config.toml) loaded again, after `overrides`; Error when
// `run_dir` is no run folder.
Experiment load_run_experiment(const std::filesystem::path& run_dir,
                               std::span<const Override> overrides, PluginRegistry& registry);

// Evaluates a finished run's trained weights with its experiment's [[metrics]] and [eval] (after
// `overrides`, e.g. eval.seed=7), the reference being the run's initial weights as in training.
// The figures join the run's results.json (same names are replaced) and, for a run of a grid
// (a results.csv beside it), the grid's report is rewritten. Returns the figures.
Figures evaluate_run(const std::filesystem::path& run_dir, std::span<const Override> overrides,
                     PluginRegistry& registry);

enum class GridLauncherKind {
  local,  // child processes of this program
  slurm,  // one Slurm job array ([launcher] settings; docs/distributed.md)
};

struct GridControl {
  GridLauncherKind launcher = GridLauncherKind::local;
  // Runs at once; 0 = the launcher's default (local: 1; Slurm: no limit but the cluster's).
  int jobs = 0;
  std::filesystem::path program;  // the dedpo executable that runs each case
  // Slurm: wait until the submitted runs have ended, then write the report (local always waits).
  bool wait = false;
};
// Expands the experiment's [grid], runs every case (skipping finished ones, resuming interrupted
// ones) with the chosen launcher and writes the report once the runs have ended. Locally,
// SIGINT/SIGTERM stop it: forwarded to the running runs, which it waits for. Returns the number
// of runs that failed, are stale, were stopped or not started (0: every run is done or, with
// Slurm and no wait, submitted).
int run_grid(const std::filesystem::path& file, std::span<const Override> overrides,
             const GridControl& control, PluginRegistry& registry);

// A table of the grid's runs (in grid.json's order) and their state: from the run folders
// (finished, interrupted, started, not started, stale) and, for runs submitted to Slurm, squeue.
std::string grid_status(const std::filesystem::path& grid_dir);

// (Re)writes results.csv, summary.md and the plots of a grid folder; returns the summary text.
// Runs whose recorded inputs differ from those grid.json expects (stale) are left out and listed.
std::string write_report(const std::filesystem::path& grid_dir);

// Draws a run's training curves from its metrics.jsonl (loss, implicit accuracy, λ, gradient
// norm, learning rate: those the run logged) into RUN_DIR/plots/<curve>.png and .svg; returns
// the files. A malformed line is an Error naming the file and line.
std::vector<std::filesystem::path> plot_run_curves(const std::filesystem::path& run_dir);

}  // namespace dedpo
