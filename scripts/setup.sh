#!/usr/bin/env bash
# Installs the Debian packages dedpo builds against, only those that are missing (idempotent).
set -euo pipefail
packages=(build-essential cmake ccache libtorch-dev libboost-dev libboost-program-options-dev
          libtomlplusplus-dev libfmt-dev libgtest-dev nlohmann-json3-dev libstb-dev libgloo-dev
          libopenblas0-openmp)
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
  echo "setup: all packages present"
fi
