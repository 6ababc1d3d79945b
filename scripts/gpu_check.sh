#!/usr/bin/env bash
# scripts/gpu_check.sh [--python PATH] [--device cuda|cuda:N|cpu] [--build DIR]
#                      [--golden DIR] [--jobs N] [--no-build] [--no-bench]
#
# One command for a person with an NVIDIA GPU and a Python torch: builds dedpo against that torch,
# then checks it on the GPU and prints one table:
#   1. the golden parity tests on the device (float32, TF32 off, max abs diff <= 1e-3 from the
#      golden folder: --golden, else $DEDPO_GOLDEN_DIR, else ../shared/golden);
#   2. short DeDPO trainings (`dedpo run`, run.device = the device, train.precision = "bf16") on
#      the tiny SD1.5 and SDXL models of dedpo_make_tiny_sd, three seeds, 80 steps each:
#      the loss, averaged over the seeds, must go down;
#   3. the gradient all-reduce on a 1-rank process group (bench/bench_allreduce.cpp): NCCL on the
#      GPU (Gloo on the CPU) all-reduces the tiny SD1.5 UNet's gradient buckets, which must come back
#      equal to the input; ms per step;
#   4. the DPO-step bench (bench/dpo_step_side_by_side.py): the real SD1.5 UNet config at 64x64
#      latents, bf16, P = 1, 2, 4, 8 (ms/step, pairs/s, peak GPU memory, TFLOP/s, and diffusers on
#      the same GPU with the ratio where that python imports diffusers); then the real SDXL UNet at
#      128x128, LoRA r = 16 on a bf16 base with gradient checkpointing, P = 1.
# --device cpu runs the same checks at tiny sizes (the ctest `gpu_check_cpu` keeps it from rotting).
#
# --python: the python whose torch to build against (default python3); the build needs the Debian
# packages scripts/setup.sh installs. --no-build: use the build folder --build as it is; for a GPU
# machine without those packages, build here and carry what scripts/gpu_bundle.sh packs.
# --no-bench: checks 1 to 3 alone, a rerun that fits in a few minutes of a lent GPU.
# Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=python3
device=cuda
build=""
golden=${DEDPO_GOLDEN_DIR:-$root/../shared/golden}
jobs=$(nproc)
no_build=0
no_bench=0
usage() { sed -n '2,3p' "${BASH_SOURCE[0]}" | sed 's/^# //' >&2; exit 2; }
while (($#)); do
  if [[ $1 == --no-build ]]; then no_build=1; shift; continue; fi
  if [[ $1 == --no-bench ]]; then no_bench=1; shift; continue; fi
  [[ $# -ge 2 ]] || usage
  case $1 in
    --python) python=$2 ;;
    --device) device=$2 ;;
    --build) build=$(realpath -m "$2") ;;
    --golden) golden=$(realpath -m "$2") ;;
    --jobs) jobs=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[[ $device == cpu || $device == cuda || $device =~ ^cuda:[0-9]+$ ]] || { echo "gpu_check: --device expects cuda, cuda:N or cpu, got '$device'" >&2; exit 2; }
build=${build:-$root/build-gpu-check-${device%%:*}}
die() { echo "gpu_check: $*" >&2; exit 1; }

rows=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$rows" "$work"' EXIT
# One line of the final table: check | status (ok or failed) | details.
record() { printf '%s|%s|%s\n' "$1" "$2" "$3" >> "$rows"; echo "gpu_check: $1: $2 $3" >&2; }

# --- the toolchain: this python's torch, the toolkit, the -dev packages -----------------------------
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) ||
  die "$python cannot import torch (give the python of your torch install with --python)"
torch_version=$("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')
if [[ $device != cpu ]]; then
  "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
    die "torch $torch_version sees no CUDA device; use --device cpu on a machine without a GPU"
fi
prefix_path=$torch_prefix
cmake_flags=()
command -v ninja >/dev/null && cmake_flags+=(-G Ninja)

# --- build -------------------------------------------------------------------------------------------
start=$SECONDS
if ((no_build)); then
  [[ -x $build/bin/dedpo_bench_dpo_step ]] || die "--no-build: $build holds no built dedpo (bin/dedpo_bench_dpo_step)"
  record "build against torch $torch_version" ok "existing build $build"
elif cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$prefix_path" \
     "-DDEDPO_PYTHON=$(command -v "$python")" "${cmake_flags[@]}" > "$work/configure.log" 2>&1 &&
   cmake --build "$build" -j "$jobs" --target dedpo dedpo_all_plugins dedpo_make_tiny_sd test_sd \
     dedpo_bench_dpo_step dedpo_bench_allreduce > "$work/build.log" 2>&1; then
  record "build against torch $torch_version" ok "$((SECONDS - start)) s, $jobs jobs, $build"
else
  tail -n 30 "$work/configure.log" "$work/build.log" >&2
  record "build against torch $torch_version" failed "see the log above"
  exit 1
fi
bin=$build/bin

# --- 1. golden parity on the device ------------------------------------------------------------------
parity_filter='*Matches*:Schedulers.*Steps*:Schedulers.NoiseSchedule*'
if DEDPO_TEST_DEVICE=$device DEDPO_GOLDEN_DIR=$golden "$bin/test_sd" --gtest_filter="$parity_filter" > "$work/parity.log" 2>&1; then
  status=ok
else
  status=failed
  grep -E "Failure|missing|error" "$work/parity.log" | head -n 10 >&2 || true
fi
passed=$(grep -c '^\[       OK \]' "$work/parity.log" || true)
worst=$(grep -o 'max abs diff [^ ]*' "$work/parity.log" | awk '{print $4}' | sort -g | tail -n 1)
record "golden parity on $device (fp32, TF32 off)" "$status" "$passed tests passed, worst max abs diff ${worst:-none} (golden: $golden)"

# --- 2. DeDPO training on the tiny models: the loss goes down ----------------------------------------
# Six pairs of 16x16 images (PPM, which dedpo's reader takes like PNG), half of them labelled.
"$python" - "$work/data" <<'EOF'
import os, random, sys
folder = sys.argv[1]
os.makedirs(f"{folder}/img", exist_ok=True)
rng = random.Random(0)
with open(f"{folder}/pairs.jsonl", "w") as manifest, open(f"{folder}/g.csv", "w") as annotations:
    annotations.write("id,g\n")
    for i in range(6):
        for side in "ab":
            with open(f"{folder}/img/{side}{i}.ppm", "wb") as image:
                image.write(b"P6 16 16 255\n" + bytes(rng.randrange(256) for _ in range(16 * 16 * 3)))
        manifest.write(f'{{"id": "p{i}", "prompt": "prompt {i % 2}", "image_a": "img/a{i}.ppm", '
                       f'"image_b": "img/b{i}.ppm", "label": {i % 2}}}\n')
        annotations.write(f"p{i},{0.2 + 0.1 * i:.1f}\n")
EOF
# One run's loss is noisy (its timesteps and noise are random, six pairs), so the check judges the
# mean over three seeds, over 80 steps. Over 40, one seed of three went up on the H200; on the CPU
# (bf16, EPYC with AVX-512) seeds 3 and 4 of the tiny SD1.5 went up too, and the mean of the three
# with them: a run depends on which kernels the CPU gets (dedpo's own attention needs AVX-512).
# Over 80 steps each of the three seeds fell there, with either attention kernel.
train_steps=80
seeds=(3 4 5)
for layout in sd15 sdxl; do
  "$bin/dedpo_make_tiny_sd" "$work/tiny_$layout" --layout "$layout" > /dev/null
  check="DeDPO training, tiny $layout, $device bf16, $train_steps steps, seeds ${seeds[*]}"
  metrics=()
  for seed in "${seeds[@]}"; do
    cat > "$work/$layout-$seed.toml" <<EOF
[run]
name = "check"
seed = $seed
device = "$device"
output = "$work/runs_$layout-$seed"
[backbone]
plugin = "$layout"
path = "$work/tiny_$layout"
resolution = 16
sample_steps = 2
[data]
plugin = "pairs_manifest"
manifest = "$work/data/pairs.jsonl"
[annotator]
plugin = "file"
path = "$work/data/g.csv"
[loss]
plugin = "dedpo"
beta = 500.0
[train]
steps = $train_steps
batch_size = 6
lr = 1e-3
labelled_fraction = 0.5
precision = "bf16"
log_every = 1
[eval]
every = 0
EOF
    if ! "$bin/dedpo" run "$work/$layout-$seed.toml" > "$work/train_$layout-$seed.log" 2>&1; then
      tail -n 15 "$work/train_$layout-$seed.log" >&2
      record "$check" failed "seed $seed: $(tail -n 1 "$work/train_$layout-$seed.log")"
      continue 2
    fi
    metrics+=("$work/runs_$layout-$seed"/check*/metrics.jsonl)
  done
  # The mean loss of the last quarter of the steps against the first quarter's, over the seeds.
  verdict=$("$python" - "$train_steps" "${metrics[@]}" <<'EOF'
import json, sys
steps, quarter = int(sys.argv[1]), int(sys.argv[1]) // 4
firsts, lasts = [], []
for path in sys.argv[2:]:
    losses = [row["loss"] for row in map(json.loads, open(path)) if "loss" in row]
    assert len(losses) == steps, f"{path}: {len(losses)} losses"
    firsts.append(sum(losses[:quarter]) / quarter)
    lasts.append(sum(losses[-quarter:]) / quarter)
first, last = sum(firsts) / len(firsts), sum(lasts) / len(lasts)
each = ", ".join(f"{a:.2f} -> {b:.2f}" for a, b in zip(firsts, lasts))
print(("ok" if last < first else "failed") +
      f"|mean loss {first:.3f} (first {quarter} steps) -> {last:.3f} (last {quarter}); each seed: {each}")
EOF
) || verdict="failed|no metrics.jsonl with $train_steps losses for every seed"
  record "$check" "${verdict%%|*}" "${verdict#*|}"
done

# --- 3. the gradient all-reduce on a 1-rank process group --------------------------------------------
backend=NCCL
[[ $device == cpu ]] && backend=Gloo
check="gradient all-reduce, 1-rank $backend group on $device, tiny SD1.5 UNet's gradients"
if "$bin/dedpo_bench_allreduce" --device "$device" --ranks 1 --dpo-steps 0 > "$work/allreduce.log" 2>&1; then
  record "$check" ok "$(grep -o '[0-9.]* ms/step' "$work/allreduce.log"); the buckets came back equal to the input"
else
  tail -n 5 "$work/allreduce.log" >&2
  record "$check" failed "$(tail -n 1 "$work/allreduce.log")"
fi

# --- 4. the DPO-step bench ---------------------------------------------------------------------------
bench_args=(--bench "$bin/dedpo_bench_dpo_step" --device "$device" --dtype bf16 --environments default
            --rows-out "$rows" --rounds 1)
if [[ $device == cpu ]]; then
  shared=$root/../shared/bench
  sd15=(--configs "$shared/unet_sd15_small.json" --latent 8 --pairs 1,2 --steps 1 --warmup 0 --threads 2)
  sdxl=(--configs "$shared/unet_sdxl_small.json" --latent 8 --pairs 1 --steps 1 --warmup 0 --threads 2)
else
  shared=$root/../shared/bench
  sd15=(--configs "$shared/unet_sd15.json" --latent 64 --pairs 1,2,4,8 --steps 5 --warmup 2)
  sdxl=(--configs "$shared/unet_sdxl.json" --latent 128 --pairs 1 --steps 3 --warmup 1)
fi
# The driver adds its own rows; one that ends without any (bad arguments, a crash) is a row itself.
bench() {
  local name=$1 before
  shift
  before=$(wc -l < "$rows")
  "$python" "$root/bench/dpo_step_side_by_side.py" "${bench_args[@]}" "$@" > "$work/bench_$name.log" 2>&1 || true
  if (($(wc -l < "$rows") == before)); then
    record "DPO-step bench, $name" failed "$(tail -n 1 "$work/bench_$name.log")"
  fi
}
if ((!no_bench)); then
  bench sd15 "${sd15[@]}"
  bench sdxl "${sdxl[@]}" --python-side off --lora-rank 16 --checkpointing 1
fi

# --- the table ---------------------------------------------------------------------------------------
echo
echo "dedpo GPU check on $device: torch $torch_version; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
[[ $device == cpu ]] || "$python" -c 'import torch; print("GPU:", torch.cuda.get_device_name())'
echo "| check | status | details |"
echo "|---|---|---|"
awk -F'|' '{ printf "| %s | %s | %s |\n", $1, $2, $3 }' "$rows"
failed=$(awk -F'|' '$2 != "ok"' "$rows" | wc -l)
echo "$(awk -F'|' '$2 == "ok"' "$rows" | wc -l) passed, $failed failed"
((failed == 0))
