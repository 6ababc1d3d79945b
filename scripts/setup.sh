#!/usr/bin/env bash
# Installs what dedpo builds against, only what is missing (idempotent):
#   - Debian's -dev packages for everything but LibTorch;
#   - a git-ignored Python environment .venv/ holding the pinned PyTorch wheel, whose LibTorch (a CUDA
#     build that also runs on machines without a GPU) the build links against, and the pinned
#     Python packages of scripts/, the Python-driven tests (ctest label `python`) and the round-trip
#     tests that compare dedpo with diffusers and transformers (ctest label `interop`).
# `--bench` also installs the Python reference stack the benchmarks compare against (never needed by
# the tests); `--sanitize` also installs clang and its sanitizer / libFuzzer runtimes for the
# instrumented build (scripts/build_sanitize.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# torch 2.11.0 is built against CUDA 13.0, the toolkit of the project's machines and of the GPU
# machines it is checked on; a newer wheel would need a newer toolkit for its headers.
torch_pin="torch==2.11.0"
# scripts/parquet_to_manifest.py (pyarrow, pillow), the test that reads TensorBoard event files
# back (tensorboard), and tests/interop: the libraries whose models dedpo writes and reads, at
# their current versions (diffusers, transformers, safetensors; peft, which diffusers'
# load_lora_weights needs for LoRA adapters; open_clip_torch for HPSv2's OpenCLIP layout).
# torchvision is pinned to the release built for torch 2.11.0: unpinned, pip takes the newest, which
# requires a newer torch and replaces the pinned one. timm and ftfy are open_clip_torch's own
# dependencies, pinned so that the environment does not drift.
python_pins=("pyarrow==26.0.1" "pillow==13.0.0" "tensorboard==2.21.0"
             "diffusers==0.42.1" "transformers==5.24.0" "safetensors==0.8.0" "peft==0.21.2"
             "torchvision==0.26.0" "open_clip_torch==3.3.0" "timm==1.0.31" "ftfy==6.3.1")
venv=${DEDPO_VENV:-$root/.venv}
bench=0
sanitize=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    --sanitize) sanitize=1 ;;
    *) echo "setup: unknown argument '$arg' (expected --bench or --sanitize)" >&2; exit 2 ;;
  esac
done

# libcurl4-openssl-dev: the vlm annotator's HTTP(S) client; libssl-dev: its tests' TLS server;
# libprotobuf-dev, protobuf-compiler: TensorBoard event files; libcairo2-dev (found with pkg-config)
# and fonts-dejavu-core: the report's charts; libicu-dev: the CLIP tokenizer's Unicode normalisation
# and character classes; libgloo-dev: the headers c10d's Gloo process group includes (data-parallel
# runs, docs/distributed.md); munge, slurmctld, slurmd, slurm-client (slurm-wlm 22.05 on bookworm):
# the one-node Slurm cluster of the Slurm launcher's tests (tests/slurm).
packages=(build-essential cmake ccache libboost-dev libboost-program-options-dev
          libtomlplusplus-dev libfmt-dev libgtest-dev nlohmann-json3-dev libstb-dev
          libcurl4-openssl-dev libssl-dev libprotobuf-dev protobuf-compiler
          pkg-config libcairo2-dev fonts-dejavu-core libicu-dev libgloo-dev
          munge slurmctld slurmd slurm-client)
((sanitize)) && packages+=(clang-14 libclang-rt-14-dev libomp-14-dev)
python=$(command -v python3 || true)
[[ -n "$python" ]] || packages+=(python3)
[[ -n "$python" ]] && "$python" -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# The wheel's LibTorch is a CUDA build: its CMake package needs the CUDA toolkit's headers even
# where no GPU is present.
if ! command -v nvcc >/dev/null && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "setup: no CUDA toolkit found (nvcc is neither on the PATH nor in /usr/local/cuda/bin); install the CUDA 13.0 toolkit, or build against a LibTorch of your own with -DTorch_DIR=..." >&2
  exit 1
fi

[[ -x "$venv/bin/python" ]] || "$(command -v python3)" -m venv "$venv"
want_torch=${torch_pin#torch==}
have_torch=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [[ "$have_torch" != "$want_torch" ]]; then
  echo "setup: installing $torch_pin into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "$torch_pin" "numpy<3"
else
  echo "setup: $torch_pin present in $venv"
fi
# The pins whose installed version differs (one Python start, so a present set costs ~0.1 s).
missing_pins=$("$venv/bin/python" - "${python_pins[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, wanted = pin.split("==")
    try:
        if version(name) == wanted:
            continue
    except PackageNotFoundError:
        pass
    print(pin)
EOF
)
if [[ -n "$missing_pins" ]]; then
  echo "setup: installing" $missing_pins "into $venv"
  # shellcheck disable=SC2086  # one pin per word
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $missing_pins
else
  echo "setup: ${python_pins[*]} present in $venv"
fi
if ((bench)); then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/bench/requirements.txt"
fi
