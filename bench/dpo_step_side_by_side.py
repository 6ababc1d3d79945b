"""One Diffusion-DPO step, dedpo (bench_dpo_step) against diffusers (dpo_step_diffusers.py) on the
same torch, in one invocation, printing one table.

For each UNet config and pair count the two sides run as separate processes in alternating rounds
(the order flips every round, so drift of the machine falls on both), each process timing --steps
steps after --warmup. Each side runs twice per round: out of the box (no MALLOC_* variable: dedpo
then applies its own allocator policy, diffusers runs on glibc's defaults) and with the same glibc
allocator environment (ALLOCATOR_ENV, which dedpo respects instead of its policy).
The table gives the median ms/step over all rounds (an even count takes the mean of the two middle values), the ratio dedpo / diffusers,
the peak memory of the steps (resident set on the CPU, the caching allocator's on a GPU), pairs/s,
and the achieved rate: the step's FLOPs as dedpo counts them over the median time, and its share
of the device's matmul rate in the compute dtype, measured by every process before it builds its
models (the table uses the median over all processes). --lora-rank R times LoRA adapters of rank R,
on dedpo's side alone (with --python-side off). Exit status 1 when any process failed.

Run with the repo's venv after `scripts/setup.sh --bench`, e.g.
  .venv/bin/python bench/dpo_step_side_by_side.py            # the CPU table of issues 11 and 17
  .venv/bin/python bench/dpo_step_side_by_side.py --device cuda --dtype bf16 --latent 64 \
      --pairs 1,2,4,8 --configs ../shared/bench/unet_sd15.json --environments default
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = REPO.parent / "shared" / "bench"
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736", "MALLOC_TOP_PAD_": "1073741824"}
ENVIRONMENTS = {"default": "out of the box", "allocator": "same allocator env"}
SIDES = ("dedpo", "diffusers")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=REPO / "build" / "bin" / "dedpo_bench_dpo_step",
                        help="the dedpo_bench_dpo_step binary")
    parser.add_argument("--configs", type=Path, nargs="+",
                        default=[SHARED_BENCH / "unet_sd15_small.json", SHARED_BENCH / "unet_sdxl_small.json"])
    parser.add_argument("--pairs", default="1,2", help="comma-separated pair counts P")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (default 2: a process's second step still faults memory in, "
                             "dedpo's sd15_small about 50,000 pages, and ran 10-20%% slower than the later ones)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--checkpointing", type=int, choices=[0, 1], default=0)
    parser.add_argument("--lora-rank", type=int, default=0, help="0 = full fine-tuning; > 0: dedpo side only")
    parser.add_argument("--environments", choices=["both", "default", "allocator"], default="both")
    parser.add_argument("--python-side", choices=["auto", "on", "off"], default="auto",
                        help="auto: time diffusers where it is importable")
    parser.add_argument("--rows-out", type=Path,
                        help="also append one 'check|status|details' line per table row (scripts/gpu_check.sh)")
    args = parser.parse_args(argv)
    try:
        args.pairs = [int(p) for p in args.pairs.split(",")]
    except ValueError:
        parser.error(f"--pairs expects comma-separated integers, got {args.pairs!r}")
    if any(p <= 0 for p in args.pairs) or args.rounds <= 0 or args.steps <= 0 or args.latent <= 0:
        parser.error("--pairs, --rounds, --steps and --latent must be > 0")
    for config in args.configs:
        if not config.is_file():
            parser.error(f"no UNet config {config}")
    if not os.access(args.bench, os.X_OK):
        parser.error(f"no dedpo bench binary at {args.bench} (cmake --build build --target dedpo_bench_dpo_step)")
    diffusers_found = importlib.util.find_spec("diffusers") is not None
    if args.python_side == "on" and not diffusers_found:
        parser.error(f"--python-side on: {sys.executable} cannot import diffusers (scripts/setup.sh --bench)")
    args.with_diffusers = args.python_side == "on" or (args.python_side == "auto" and diffusers_found)
    if args.lora_rank and args.with_diffusers:
        parser.error("--lora-rank: the diffusers side times full fine-tuning only; add --python-side off")
    return args


def median(values):
    """statistics.median: for an even count the mean of the two middle values."""
    return statistics.median(values) if values else float("nan")


def worker_command(side, args, config, pairs):
    common = [str(config), "--latent", str(args.latent), "--pairs", str(pairs), "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device,
              "--dtype", args.dtype, "--checkpointing", str(args.checkpointing), "--json"]
    if side == "dedpo":
        return [str(args.bench)] + common + ["--lora-rank", str(args.lora_rank)]
    return [sys.executable, str(Path(__file__).resolve().parent / "dpo_step_diffusers.py")] + common


def worker_env(environment, threads):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if environment == "allocator":
        env.update(ALLOCATOR_ENV)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_worker(side, environment, args, config, pairs):
    """One process; its JSON line, or {"error": ...} with the tail of what it printed."""
    done = subprocess.run(worker_command(side, args, config, pairs), env=worker_env(environment, args.threads),
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        stderr_lines = done.stderr.strip().splitlines() or ["no output"]
        # dedpo's message is its first line (a backtrace may follow); Python's is its last.
        message = stderr_lines[0] if side == "dedpo" else stderr_lines[-1]
        return {"error": f"{side} exited {done.returncode}: {message}"}
    return json.loads(lines[-1])


def cpu_model():
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# The instruction-set flags that decide the speed of these kernels (fp32 and bf16 matmuls).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags():
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return " ".join(flag for flag in SPEED_FLAGS if flag in present) or "none of " + " ".join(SPEED_FLAGS)
    return "unknown"


def load_average():
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def main(argv):
    args = parse_args(argv)
    sides = SIDES if args.with_diffusers else SIDES[:1]
    environments = list(ENVIRONMENTS) if args.environments == "both" else [args.environments]
    variants = [(side, env) for env in environments for side in sides]
    load_before = load_average()
    results = {}  # (config, pairs, side, env) -> list of worker results
    for config in args.configs:
        for pairs in args.pairs:
            for round_index in range(args.rounds):
                order = variants if round_index % 2 == 0 else variants[::-1]
                for side, env in order:
                    result = run_worker(side, env, args, config, pairs)
                    results.setdefault((config, pairs, side, env), []).append(result)
                    status = result.get("error") or f"{median(result['ms']):.0f} ms/step"
                    print(f"  {config.stem} P={pairs} {side:9s} {env:9s} round {round_index + 1}: {status}",
                          file=sys.stderr, flush=True)
    print_table(args, sides, environments, results, (load_before, load_average()))
    return 1 if any("error" in r for runs in results.values() for r in runs) else 0


def print_table(args, sides, environments, results, loads):
    ok = [r for runs in results.values() for r in runs if "error" not in r]
    peak = median([r["matmul_peak_gflops"] for r in ok])
    on_cpu = args.device == "cpu"
    rate_unit, rate_scale = ("GFLOP/s", 1.0) if on_cpu else ("TFLOP/s", 1e-3)
    memory_label = "peak RSS MiB" if on_cpu else "peak GPU MiB"
    torch_versions = sorted({r["torch"].split("+")[0] for r in ok})  # LibTorch's version has no "+cu130"
    print(f"\nDiffusion-DPO step, {args.device} {args.dtype}, {args.threads} threads, {args.latent}x{args.latent} latents, "
          f"checkpointing {'on' if args.checkpointing else 'off'}; {args.rounds} rounds x {args.steps} steps "
          f"(+{args.warmup} warm-up) per side, alternating")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; torch {', '.join(torch_versions) or '?'}; "
          f"{args.dtype} matmul peak {peak * rate_scale:.1f} {rate_unit} (median over {len(ok)} processes)")
    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min) {loads[0]} before, {loads[1]} after")
    computes = sorted({r["compute"] for r in ok if "compute" in r})
    allocators = sorted({f"{ENVIRONMENTS[env]}: {r['allocator']}" for (_, _, side, env), runs in results.items()
                         if side == "dedpo" for r in runs if "allocator" in r})
    print(f"dedpo compute: {', '.join(computes) or '?'}; dedpo allocator: {'; '.join(allocators) or '?'}")
    for config in args.configs:
        first = {side: results[(config, args.pairs[0], side, environments[0])] for side in sides}
        counts = {side: median([r["step_gflop"] for r in first[side] if "error" not in r]) for side in sides}
        print(f"{config.name}: step GFLOP at P={args.pairs[0]}: " +
              ", ".join(f"{side} counts {counts[side]:.1f}" for side in sides))
    header = ["config", "P", "environment"] + [f"{side} ms/step" for side in sides]
    if len(sides) == 2:
        header += ["ratio dedpo/diffusers", "CPU-time ratio"]
    header += [f"{side} {memory_label}" for side in sides] + ["dedpo pairs/s"]
    header += [f"{side} {rate_unit} (% peak)" for side in sides]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    errors = []
    for config in args.configs:
        for pairs in args.pairs:
            for env in environments:
                runs = {side: results[(config, pairs, side, env)] for side in sides}
                good = {side: [r for r in runs[side] if "error" not in r] for side in sides}
                errors += [r["error"] for side in sides for r in runs[side] if "error" in r]
                ms = {side: median([t for r in good[side] for t in r["ms"]]) for side in sides}
                memory = {side: max((r["peak_mib"] for r in good[side]), default=float("nan")) for side in sides}
                counted = good["dedpo"] or good[sides[-1]]  # the useful work of the step, as dedpo counts it
                flops = median([r["step_gflop"] for r in counted])
                row = [config.stem, str(pairs), ENVIRONMENTS[env]] + [f"{ms[side]:,.0f}" for side in sides]
                if len(sides) == 2:
                    # CPU time per step (all threads): the same comparison, less sensitive to other load.
                    cpu = {side: median([t for r in good[side] for t in r.get("cpu_ms", [])]) for side in sides}
                    row += [f"{ms['dedpo'] / ms['diffusers']:.2f}", f"{cpu['dedpo'] / cpu['diffusers']:.2f}"]
                row += [f"{memory[side]:,.0f}" for side in sides]
                row.append(f"{pairs / (ms['dedpo'] / 1e3):.2f}")
                for side in sides:
                    rate = flops / (ms[side] / 1e3)
                    row.append(f"{rate * rate_scale:.1f} ({100 * rate / peak:.0f}%)")
                print("| " + " | ".join(row) + " |")
                if args.rows_out:
                    write_row(args, config, pairs, env, sides, runs, row[3:], header[3:])
    for error in errors:
        print(f"failed: {error}")


def write_row(args, config, pairs, env, sides, runs, cells, names):
    """One row as 'check|status|details', status ok or failed."""
    problems = [r for side in sides for r in runs[side] if "error" in r]
    status = "failed" if problems else "ok"
    check = (f"DPO step {config.stem} {args.latent}x{args.latent} {args.dtype} P={pairs}"
             + (f" LoRA r={args.lora_rank}" if args.lora_rank else "")
             + (" checkpointed" if args.checkpointing else "")
             + (f" ({ENVIRONMENTS[env]})" if args.environments == "both" else ""))
    details = "; ".join(f"{name} {cell}" for name, cell in zip(names, cells) if "nan" not in cell)
    if problems:
        details = problems[0]["error"] + ("; " + details if details else "")
    with open(args.rows_out, "a") as out:
        out.write(f"{check}|{status}|{details}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
